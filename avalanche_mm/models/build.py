"""The model of a study, built from a config's ``model`` section and a benchmark.

- kind ``clip``: a backbone (:func:`build_clip_backbone`, any name
  :func:`~avalanche_mm.models.build_backbone` resolves) under a zero-shot head
  over the benchmark's classes (:func:`clip_classifier`);
- kind ``fusion``: a registered fusion model (:data:`~avalanche_mm.models.fusion.registry.FUSION_MODELS`,
  :func:`build_fusion_model`).

:func:`model_problems` finds, without building anything, what would stop
these builders (unknown names, parameters, missing weights, a vocabulary size
the benchmark's token ids need); ``avalanche-mm check`` and ``run`` call it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from avalanche_mm.schema import _suggest


def _task_layout(bundle):
    """``(task_classes, templates)`` by task label, from the test stream."""
    task_classes: Dict[int, List[int]] = {}
    templates: Dict[int, List[str]] = {}
    for exp in bundle.scenario.test_stream:
        labels = list(getattr(exp, "task_labels", [0]))
        t = int(labels[0])
        task_classes.setdefault(t, [])
        task_classes[t] = sorted(set(task_classes[t]) | {int(c) for c in exp.classes_in_this_experience})
        tmpl = getattr(exp, "templates", None)
        if tmpl:
            templates[t] = list(tmpl)
    return task_classes, templates


def apply_freeze(model: nn.Module, backbone: nn.Module, freeze: Sequence[str]) -> None:
    """Freeze ``'vision'``, ``'text'``, ``'logit_scale'`` or parameters by name prefix."""
    for item in freeze:
        if item in ("vision", "text") and hasattr(backbone, "tower_parameters"):
            for p in backbone.tower_parameters(item):
                p.requires_grad_(False)
        elif item == "logit_scale" and hasattr(backbone, "logit_scale"):
            backbone.logit_scale.requires_grad_(False)
        else:
            hit = False
            for name, p in model.named_parameters():
                if name.startswith(item):
                    p.requires_grad_(False)
                    hit = True
            if not hit:
                raise KeyError(
                    f"model.freeze: {item!r} matches no parameter; give 'vision', 'text', "
                    "'logit_scale' or a parameter name prefix."
                )


def build_clip_backbone(model_cfg: Mapping[str, Any], *, seed: int, device=None):
    """The backbone of a CLIP-kind study (before any pretraining)."""
    from avalanche_mm.models.backbones import build_backbone

    return build_backbone(
        model_cfg["backbone"],
        pretrained=model_cfg.get("pretrained"),
        cache_dir=model_cfg.get("cache_dir"),
        seed=seed,
        **dict(model_cfg.get("params") or {}),
    )


def clip_classifier(backbone, bundle, model_cfg: Mapping[str, Any]) -> nn.Module:
    """A zero-shot head over the benchmark's classes for ``backbone``.

    Streams whose experiences have distinct task labels (MTIL, task-incremental)
    get a :class:`~avalanche_mm.models.MultiTaskZeroShotClassifier` in global
    mode (each sample's logits restricted to its task's classes); other streams
    a :class:`~avalanche_mm.models.ZeroShotClassifier` over every class.
    """
    from avalanche_mm.models.zero_shot import (
        DEFAULT_TEMPLATES,
        MultiTaskZeroShotClassifier,
        ZeroShotClassifier,
    )

    if not bundle.class_names:
        raise ValueError(
            f"benchmark {bundle.name!r} has no class names; a CLIP zero-shot head needs them "
            "(model.kind 'clip')."
        )
    task_classes, templates = _task_layout(bundle)
    given = model_cfg.get("templates")
    train_templates = model_cfg.get("train_templates") or "benchmark"
    if train_templates == "benchmark":  # e.g. mtil: 'first', as ZSCL trains
        train_templates = (getattr(bundle.scenario, "info", None) or {}).get("train_text", "all")
    if len(task_classes) > 1:
        tmpl = {t: list(given) for t in task_classes} if given else {
            t: templates.get(t, list(DEFAULT_TEMPLATES)) for t in task_classes
        }
        head = MultiTaskZeroShotClassifier(
            backbone=backbone, class_names=list(bundle.class_names), templates=tmpl, task_classes=task_classes,
            train_templates=train_templates,
        )
    else:
        tmpl = list(given) if given else next(iter(templates.values()), list(DEFAULT_TEMPLATES))
        head = ZeroShotClassifier(backbone=backbone, class_names=list(bundle.class_names), templates=tmpl,
                                  train_templates=train_templates, mask_unseen=bool(model_cfg.get("mask_unseen", False)))
    apply_freeze(head, backbone, model_cfg.get("freeze") or [])
    return head


def _specs(bundle):
    from avalanche_mm.data import get_modality_specs

    return get_modality_specs(bundle.scenario.train_stream[0].dataset)


def build_fusion_model(model_cfg: Mapping[str, Any], bundle, *, seed: int) -> nn.Module:
    """The registered fusion model ``model.name`` over the benchmark's modalities
    and classes (see ``avalanche-mm list models``)."""
    from avalanche_mm.models.fusion.registry import FUSION_MODELS

    spec = FUSION_MODELS[model_cfg["name"]]
    n_classes = len(bundle.class_names or []) or None
    if n_classes is None:
        raise ValueError(f"benchmark {bundle.name!r} has no class names; a fusion classifier needs the number of classes.")
    torch.manual_seed(seed)
    model = spec.build(specs=_specs(bundle), num_classes=n_classes, params=dict(model_cfg.get("params") or {}))
    freeze = [f for f in (model_cfg.get("freeze") or []) if f != "logit_scale"]
    apply_freeze(model, model, freeze)
    return model


def _resolvable(name: Any) -> bool:
    import os

    from avalanche_mm.models.backbones.registry import BACKBONES

    if not isinstance(name, str) or not name:
        return False
    if name in BACKBONES or os.path.isdir(os.path.expanduser(name)) or "/" in name:
        return True
    if name.startswith(("open_clip:", "openclip:", "hf:", "hf-hub:", "local-dir:")):
        return True
    try:
        import open_clip
    except ImportError:  # pragma: no cover
        return True
    return open_clip.get_model_config(name) is not None


def model_problems(model_cfg: Mapping[str, Any], bundle: Optional[Any], key: str) -> List[str]:
    """What would stop building the model of ``model_cfg``, found without building it.

    :param model_cfg: the resolved ``model`` section.
    :param bundle: the benchmark bundle when built (its modalities and classes
        are then checked too), else None.
    :param key: the config path of the section (``studies.S.model``).
    """
    kind = model_cfg.get("kind")
    out: List[str] = []
    if kind == "clip":
        from avalanche_mm.models.backbones.registry import BACKBONES, weights_problem

        name = model_cfg.get("backbone")
        if not _resolvable(name):
            known = list(BACKBONES)
            return [
                f"{key}.backbone: got {name!r}, expected a registered backbone ("
                + ", ".join(known) + ")" + _suggest(name, known)
                + ", an open_clip model name (e.g. 'ViT-B-16'), 'hf:<hub id>' or a folder"
            ]
        problem = weights_problem(name, model_cfg.get("pretrained"), model_cfg.get("cache_dir"))
        if problem:
            out.append(f"{key}.pretrained: {problem}")
        if name in BACKBONES and model_cfg.get("params"):
            out.append(f"{key}.params: backbone {name!r} takes no extra parameters, got {sorted(model_cfg['params'])}")
        pairs = bundle is not None and {"image", "text"} <= set(bundle.modalities or ())  # retrieval (issue 14)
        if bundle is not None and not bundle.class_names and not pairs:
            out.append(f"{key}.kind: 'clip' needs class names, but benchmark {bundle.name!r} has none")
    elif kind == "fusion":
        from avalanche_mm.models.fusion.registry import FUSION_MODELS

        name = model_cfg.get("name")
        if not name:
            return [f"{key}.name: missing, expected a fusion model name for kind 'fusion' (one of {', '.join(FUSION_MODELS)})"]
        if name not in FUSION_MODELS:
            known = list(FUSION_MODELS)
            return [f"{key}.name: got {name!r}, expected one of " + ", ".join(known) + _suggest(name, known)]
        specs = None
        if bundle is not None:
            if not bundle.class_names:
                out.append(f"{key}.kind: a fusion classifier needs the number of classes, but benchmark {bundle.name!r} names none")
            specs = _specs(bundle)
        out.extend(FUSION_MODELS[name].problems(specs, dict(model_cfg.get("params") or {}), f"{key}.params"))
    return out


__all__ = ["build_clip_backbone", "clip_classifier", "build_fusion_model", "apply_freeze", "model_problems"]
