"""Benchmarks and models as the runner sees them.

:func:`build_benchmark` turns a config's ``benchmark`` section into a
:class:`BenchmarkBundle`: the Avalanche scenario plus what the runner needs
beside it (class names, prompt templates, an optional *reference set* of
image-caption pairs used to pretrain a small backbone, as ZSCL's reference
data and as the alignment probe set).

Benchmarks come from two places: the package registry
(:func:`avalanche_mm.benchmarks.get_benchmark`, when available) and the
studies built in here for the main job (``demo-mtil``, ``demo-av``, ``toy``),
which also carry a reference split. :func:`build_model` builds the model of a
study (a CLIP backbone + zero-shot head, or a fusion network).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from avalanche_mm.schema import _suggest


@dataclass
class ReferenceSet:
    """Reference data outside the task splits (pretraining, ZSCL, probe set).

    :ivar images: ``[N, 3, H, W]`` images already in the model's input format,
        or a dataset of ``({"image": ...}, y, t)`` samples (real data, loaded lazily).
    :ivar texts: sentences (raw strings).
    :ivar paired: True when ``texts[i]`` describes ``images[i]`` (captions).
    :ivar fingerprint: what identifies the data (for the pretraining cache).
    """

    images: Any
    texts: List[str]
    paired: bool = True
    fingerprint: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0]) if isinstance(self.images, Tensor) else len(self.images)


@dataclass
class BenchmarkBundle:
    """A benchmark and its metadata.

    :ivar name: the benchmark name.
    :ivar scenario: the Avalanche ``CLScenario`` (``train_stream``, ``test_stream``).
    :ivar class_names: names by global class id (None when unknown).
    :ivar reference: an optional :class:`ReferenceSet`.
    :ivar modalities: modality names of the samples.
    :ivar description: one line for the report.
    """

    name: str
    scenario: Any
    class_names: Optional[List[str]] = None
    reference: Optional[ReferenceSet] = None
    modalities: Sequence[str] = ()
    description: str = ""

    @property
    def n_experiences(self) -> int:
        return len(self.scenario.train_stream)

    def experience_names(self) -> List[str]:
        """A short name per test experience (dataset name when known)."""
        out = []
        for i, exp in enumerate(self.scenario.test_stream):
            out.append(str(getattr(exp, "dataset_name", None) or f"exp{i}"))
        if len(set(out)) != len(out):  # e.g. class-incremental splits of one dataset
            out = [f"exp{i}" for i in range(len(out))]
        return out


# ---------------------------------------------------------------------------
# built-in studies
# ---------------------------------------------------------------------------
def _world(params: Mapping[str, Any]):
    from avalanche_mm.benchmarks.world import ProceduralWorld

    return ProceduralWorld(**dict(params))


def _reference(world, per_combination: int, world_params: Mapping[str, Any]) -> ReferenceSet:
    samples = world.reference_samples(per_combination=per_combination, modalities=("image", "text"))
    return ReferenceSet(
        images=samples.modalities["image"].float(),
        texts=list(samples.captions),
        fingerprint={"world": dict(world_params), "per_combination": per_combination},
    )


def demo_mtil(
    *,
    world: Optional[Mapping[str, Any]] = None,
    tasks: Optional[Sequence[Mapping[str, Any]]] = None,
    train_per_class: int = 40,
    test_per_class: int = 20,
    reference_per_combination: int = 20,
    seed: int = 0,
) -> BenchmarkBundle:
    """MTIL-style sequence of procedural-world "datasets" with a reference split.

    :param world: keyword arguments of :class:`~avalanche_mm.benchmarks.world.ProceduralWorld`.
    :param tasks: the datasets, as ``WorldTask`` keyword dicts (default: the world's
        four default datasets: shapes, colours, textures, objects).
    :param train_per_class: training samples per class.
    :param test_per_class: test samples per class.
    :param reference_per_combination: reference (pretraining) pairs per object.
    :param seed: seed of the sequence.
    """
    from avalanche_mm.benchmarks.world import WorldTask

    wp = dict(world or {})
    w = _world(wp)
    task_objs = None if tasks is None else [WorldTask(**dict(t)) for t in tasks]
    scenario = w.mtil_benchmark(
        tasks=task_objs,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        modalities=("image",),
        seed=seed,
    )
    return BenchmarkBundle(
        name="demo-mtil",
        scenario=scenario,
        class_names=list(scenario.class_names),
        reference=_reference(w, reference_per_combination, wp),
        modalities=("image",),
        description="MTIL-style sequence of procedural-world datasets ("
        + ", ".join(scenario.dataset_names)
        + "), each with its own class names; a reference split of other objects for pretraining",
    )


def demo_av(
    *,
    world: Optional[Mapping[str, Any]] = None,
    num_classes: int = 8,
    num_experiences: int = 4,
    train_per_class: int = 40,
    test_per_class: int = 20,
    modalities: Sequence[str] = ("image", "audio"),
    seed: int = 0,
) -> BenchmarkBundle:
    """Audio-visual-style class-incremental stream of the procedural world.

    Imbalance is set through ``world`` (e.g. ``noise: {image: 0.8}`` makes the
    image modality weak, ``modality_attributes`` hides attributes from one).

    :param world: keyword arguments of :class:`~avalanche_mm.benchmarks.world.ProceduralWorld`.
    :param num_classes: number of object classes.
    :param num_experiences: number of experiences.
    :param train_per_class: training samples per class.
    :param test_per_class: test samples per class.
    :param modalities: the modalities of the samples.
    :param seed: seed of classes and order.
    """
    wp = dict(world or {})
    w = _world(wp)
    scenario = w.class_incremental_benchmark(
        num_classes=num_classes,
        num_experiences=num_experiences,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        modalities=tuple(modalities),
        seed=seed,
    )
    return BenchmarkBundle(
        name="demo-av",
        scenario=scenario,
        class_names=list(scenario.class_names or []),
        reference=None,
        modalities=tuple(modalities),
        description=f"class-incremental {'+'.join(modalities)} stream of the procedural world "
        f"({num_classes} objects in {num_experiences} experiences); world settings {wp}",
    )


def toy(
    *, n_experiences: int = 2, n_classes: int = 4, n_per_class: int = 24, seed: int = 0,
    missing_audio_rate: float = 0.0,
) -> BenchmarkBundle:
    """The tiny toy stream (image + text + audio) of :mod:`avalanche_mm.benchmarks.toy`."""
    from avalanche_mm.benchmarks.toy import toy_benchmark

    bm = toy_benchmark(
        n_experiences=n_experiences, n_classes=n_classes, n_per_class=n_per_class, seed=seed,
        missing_audio_rate=missing_audio_rate,
    )
    return BenchmarkBundle(
        name="toy",
        scenario=bm,
        class_names=list(bm.class_names),
        modalities=("image", "text", "audio"),
        description="toy colour/tone stream",
    )


#: benchmarks built in the experiments layer (they carry reference sets)
BUILTIN: Dict[str, Callable[..., BenchmarkBundle]] = {
    "demo-mtil": demo_mtil,
    "demo-av": demo_av,
    "toy": toy,
}


def _package_registry():
    """``(list_benchmarks, get_benchmark)`` of the benchmarks package, or None."""
    try:
        from avalanche_mm import benchmarks as pkg
    except ImportError:  # pragma: no cover - the package is part of this distribution
        return None
    lister = getattr(pkg, "list_benchmarks", None)
    getter = getattr(pkg, "get_benchmark", None)
    if callable(lister) and callable(getter):
        return lister, getter
    return None


def list_benchmarks() -> Dict[str, str]:
    """Benchmark name -> one-line description (built-in studies and the package registry)."""
    out = {}
    reg = _package_registry()
    if reg is not None:
        listed = reg[0]()
        if isinstance(listed, Mapping):
            out.update({k: str(getattr(v, "description", v)) for k, v in listed.items()})
        else:
            out.update({str(k): "" for k in listed})
    for name, fn in BUILTIN.items():
        out[name] = (fn.__doc__ or "").strip().splitlines()[0]
    return out


def _factory(name: str) -> Optional[Callable]:
    if name in BUILTIN:
        return BUILTIN[name]
    reg = _package_registry()
    if reg is not None and name in list(reg[0]()):
        return lambda **kw: reg[1](name, **kw)
    return None


def _signature_errors(fn: Callable, params: Mapping[str, Any], key: str) -> List[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return []
    known = [n for n, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    errors = []
    for k in params:
        if k not in known:
            errors.append(
                f"{key}.params.{k}: unknown parameter, expected one of "
                + ", ".join(known)
                + _suggest(k, known)
            )
    return errors


def _package_entry(name: str):
    try:
        from avalanche_mm.benchmarks import benchmark_info
    except ImportError:  # pragma: no cover
        return None
    try:
        return benchmark_info(name)
    except KeyError:
        return None


def check_benchmark(cfg: Mapping[str, Any], key: str) -> List[str]:
    """Problems with a ``benchmark`` section, found without building it:
    unknown name, unknown or missing parameters, missing or absent data root."""
    name = cfg.get("name")
    fn = _factory(name)
    if fn is None:
        known = sorted(list_benchmarks())
        return [f"{key}.name: got {name!r}, expected one of " + ", ".join(known) + _suggest(name, known)]
    params = dict(cfg.get("params") or {})
    root = cfg.get("data_root")
    errors: List[str] = []
    if name in BUILTIN:
        errors.extend(_signature_errors(fn, params, key))
        needs_root = False
    else:
        entry = _package_entry(name)
        valid = dict(entry.parameters) if entry is not None else {}
        for k in params:
            if valid and k not in valid:
                errors.append(f"{key}.params.{k}: unknown parameter of {name!r}, expected one of " + ", ".join(valid) + _suggest(k, list(valid)))
        if "root" in params:
            errors.append(f"{key}.params.root: give the data folder as {key}.data_root instead")
        required = list(entry.required) if entry is not None else []
        needs_root = "root" in required
        for k in required:
            if k != "root" and k not in params:
                errors.append(f"{key}.params.{k}: missing, benchmark {name!r} needs it")
    if root is not None and not os.path.isdir(os.path.expanduser(root)):
        errors.append(f"{key}.data_root: got {root!r}, expected an existing folder with the datasets")
    if needs_root and root is None:
        errors.append(f"{key}.data_root: missing, benchmark {name!r} reads real data: give the folder that holds it")
    return errors


def load_reference(cfg: Mapping[str, Any], *, data_root: Optional[str] = None, image_transform: Optional[Callable] = None, image_size: int = 224, seed: int = 0) -> Optional[ReferenceSet]:
    """The reference data of a ``benchmark.reference`` section (None when it names none).

    Images are read lazily from an ImageFolder-style tree (every image file under
    ``images``, sorted), resized/cropped by the benchmarks' ``ImageFile`` with
    ``image_transform`` (e.g. the backbone's ``preprocess_eval``); sentences
    are the non-empty lines of ``texts`` (the first column of a ``.tsv``, as
    Conceptual Captions ships). ``max_images``/``max_texts`` keep a
    seeded random sample.
    """
    if not cfg or (cfg.get("images") is None and cfg.get("texts") is None):
        return None
    import numpy as np

    from avalanche_mm.data import LazyModality, make_multimodal_dataset

    if cfg.get("images") is None or cfg.get("texts") is None:
        raise ValueError("benchmark.reference: give both images (a folder) and texts (a file of sentences).")
    from .config import resolve_data_path

    root = resolve_data_path(cfg["images"], data_root)
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(exts))
    if not files:
        raise FileNotFoundError(f"benchmark.reference.images: no image files under {root!r}.")
    text_path = resolve_data_path(cfg["texts"], data_root)
    with open(text_path, encoding="utf-8") as fh:
        lines = [line.rstrip("\n") for line in fh]
    if text_path.endswith(".tsv"):  # Conceptual Captions: caption<TAB>url
        texts = [line.split("\t")[0].strip() for line in lines if line.strip()]
    else:
        texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise ValueError(f"benchmark.reference.texts: {cfg['texts']!r} has no sentences.")
    rng = np.random.default_rng(seed)
    if cfg.get("max_images") and len(files) > cfg["max_images"]:
        files = [files[i] for i in sorted(rng.choice(len(files), cfg["max_images"], replace=False))]
    if cfg.get("max_texts") and len(texts) > cfg["max_texts"]:
        texts = [texts[i] for i in sorted(rng.choice(len(texts), cfg["max_texts"], replace=False))]
    from avalanche_mm.benchmarks.datasets._common import ImageFile

    images = make_multimodal_dataset(
        {"image": LazyModality(files, ImageFile(size=image_size, transform=image_transform))}, [0] * len(files)
    )
    return ReferenceSet(images=images, texts=texts, paired=False, fingerprint=dict(cfg))


def build_benchmark(cfg: Mapping[str, Any], *, seed: int, inject: Optional[Mapping[str, Any]] = None) -> BenchmarkBundle:
    """Build the benchmark of a study (see module docstring).

    :param cfg: the ``benchmark`` section.
    :param seed: the run's seed (given to benchmarks that take one and were not given one).
    :param inject: parameters passed when the benchmark accepts them and the
        config does not set them (e.g. the backbone's ``image_transform``).
    """
    name = cfg["name"]
    fn = _factory(name)
    if fn is None:
        raise KeyError(f"benchmark.name: unknown benchmark {name!r}; known: {sorted(list_benchmarks())}")
    params = dict(cfg.get("params") or {})
    if cfg.get("data_root") is not None:
        params.setdefault("root", os.path.expanduser(cfg["data_root"]))
    accepted = set(inspect.signature(fn).parameters) if name in BUILTIN else set(
        getattr(_package_entry(name), "parameters", {}) or {}
    )
    for k, v in (inject or {}).items():
        if k in accepted and k not in params:
            params[k] = v
    if name in BUILTIN:
        if "seed" in accepted:
            params.setdefault("seed", seed)
        return fn(**params)
    scenario = fn(**params)
    if isinstance(scenario, BenchmarkBundle):
        return scenario
    reference = load_reference(
        cfg.get("reference") or {},
        data_root=cfg.get("data_root"),
        image_transform=(inject or {}).get("image_transform"),
        image_size=int((inject or {}).get("image_size", 224)),
        seed=seed,
    )
    return BenchmarkBundle(
        name=name,
        scenario=scenario,
        class_names=getattr(scenario, "class_names", None),
        reference=reference,
        modalities=tuple(getattr(scenario, "modalities", ()) or ()),
        description=str(getattr(scenario, "info", {}).get("description", "")) if hasattr(scenario, "info") else "",
    )


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------
def _task_layout(bundle: BenchmarkBundle):
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


def _apply_freeze(model: nn.Module, backbone: nn.Module, freeze: Sequence[str]) -> None:
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


#: open_clip config of ``demo-clip``: ``tiny-openclip`` with a 16-token text context
#: (captions of the procedural world are shorter), about half the text cost.
DEMO_CLIP_CONFIG: Dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _register_demo_backbone() -> None:
    from avalanche_mm.models import list_backbones, register_backbone

    if "demo-clip" in list_backbones():
        return

    @register_backbone("demo-clip", description="open_clip CLIP, ViT 64x2 (patch 8, 32px) + text 64x2 (ctx 16), CLIP BPE; the demo's backbone")
    def _demo_clip(*, pretrained=None, cache_dir=None, local_files_only=None, device=None, seed=None, **kwargs):
        from avalanche_mm.models.backbones.open_clip_backbone import OpenCLIPBackbone

        if kwargs:
            raise TypeError(f"demo-clip takes no extra arguments, got {sorted(kwargs)}.")
        return OpenCLIPBackbone.from_config(
            DEMO_CLIP_CONFIG, name="demo-clip", pretrained=pretrained, seed=0 if seed is None else seed, device=device
        )


def build_clip_backbone(model_cfg: Mapping[str, Any], *, seed: int, device=None):
    """The backbone of a CLIP-kind study (before any pretraining)."""
    from avalanche_mm.models import build_backbone

    _register_demo_backbone()
    return build_backbone(
        model_cfg["backbone"],
        pretrained=model_cfg.get("pretrained"),
        cache_dir=model_cfg.get("cache_dir"),
        seed=seed,
        **dict(model_cfg.get("params") or {}),
    )


def clip_classifier(backbone, bundle: BenchmarkBundle, model_cfg: Mapping[str, Any]) -> nn.Module:
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
    if train_templates == "benchmark":
        train_templates = getattr(bundle.scenario, "info", {}).get("train_text", "all")
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
                                  train_templates=train_templates)
    _apply_freeze(head, backbone, model_cfg.get("freeze") or [])
    return head


def _auto_encoder(spec, *, hidden: int, conv_channels: Sequence[int], vocab_size: Optional[int]):
    """An encoder of :mod:`avalanche_mm.models.fusion` suited to a modality's shape."""
    from avalanche_mm.models import ConvEncoder, SequenceEncoder, TextEncoder

    shape = tuple(spec.shape)
    if not spec.dtype.is_floating_point:
        if vocab_size is None:
            raise ValueError(
                f"model.params.vocab_size: modality '{spec.name}' holds token ids; give the "
                "vocabulary size of its tokenizer."
            )
        return TextEncoder(vocab_size=int(vocab_size), out_dim=hidden, embed_dim=hidden)
    if len(shape) == 3:
        return ConvEncoder(in_channels=int(shape[0]), out_dim=hidden, channels=tuple(conv_channels))
    if len(shape) == 2:
        return SequenceEncoder(in_channels=int(shape[0]), out_dim=hidden, hidden=hidden)
    if len(shape) == 1:
        return SequenceEncoder(in_channels=1, out_dim=hidden, hidden=hidden)
    raise ValueError(f"no automatic encoder for modality '{spec.name}' of shape {shape}; use model.name 'toy-fusion' or build the model yourself.")


def build_fusion_model(model_cfg: Mapping[str, Any], bundle: BenchmarkBundle, *, seed: int) -> nn.Module:
    """A fusion network for a ``fusion``-kind study.

    - ``fusion``: :class:`~avalanche_mm.models.FusionModel` with one encoder per
      modality chosen from its shape (images ``[C, H, W]``: a small CNN;
      spectrograms ``[F, T]`` and sensors ``[C, L]``: a 1-D conv stack; token
      ids: a learned embedding); ``model.params``: ``fusion`` (``concat``,
      ``sum``, ``gating``, ``attention``), ``hidden`` (32), ``conv_channels``
      ([16, 32]), ``vocab_size`` (text), ``dropout``;
    - ``toy-fusion``: :class:`~avalanche_mm.benchmarks.toy.ToyFusionNet` (the toy stream).
    """
    name = model_cfg["name"]
    params = dict(model_cfg.get("params") or {})
    n_classes = len(bundle.class_names or []) or None
    if n_classes is None:
        raise ValueError(f"benchmark {bundle.name!r} has no class names; a fusion classifier needs the number of classes.")
    torch.manual_seed(seed)
    if name == "toy-fusion":
        from avalanche_mm.benchmarks.toy import ToyFusionNet

        model = ToyFusionNet(n_classes=n_classes, vocab_size=params.pop("vocab_size", 32), **params)
    elif name == "fusion":
        from avalanche_mm.data import get_modality_specs
        from avalanche_mm.models import FusionModel

        specs = get_modality_specs(bundle.scenario.train_stream[0].dataset)
        known = {"fusion", "hidden", "conv_channels", "vocab_size", "dropout", "fusion_dim"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"model.params: unknown keys {unknown} for model 'fusion'; expected some of {sorted(known)}.")
        hidden = int(params.get("hidden", 32))
        encoders = {
            m: _auto_encoder(s, hidden=hidden, conv_channels=params.get("conv_channels", (16, 32)), vocab_size=params.get("vocab_size"))
            for m, s in specs.items()
        }
        model = FusionModel(
            encoders=encoders,
            num_classes=n_classes,
            fusion=params.get("fusion", "concat"),
            fusion_dim=params.get("fusion_dim"),
            dropout=float(params.get("dropout", 0.0)),
        )
    else:
        raise KeyError(f"model.name: got {name!r}, expected 'fusion' or 'toy-fusion'.")
    freeze = [f for f in (model_cfg.get("freeze") or []) if f != "logit_scale"]
    _apply_freeze(model, model, freeze)
    return model


def list_models() -> Dict[str, str]:
    """Model names a config can use (backbones and fusion networks)."""
    out = {}
    _register_demo_backbone()
    try:
        from avalanche_mm.models import list_backbones

        out.update({f"clip: {k}": v for k, v in list_backbones().items()})
    except ImportError:  # pragma: no cover
        pass
    out["clip: <open_clip name> / hf:<id> / folder"] = "any open_clip or HF CLIP model (pretrained weights on disk)"
    out["fusion: fusion"] = "FusionModel with automatic per-modality encoders (params: fusion, hidden, conv_channels, vocab_size)"
    out["fusion: toy-fusion"] = "late-fusion net of the toy stream (image, text, audio)"
    return out


__all__ = [
    "ReferenceSet",
    "BenchmarkBundle",
    "BUILTIN",
    "demo_mtil",
    "demo_av",
    "toy",
    "list_benchmarks",
    "check_benchmark",
    "build_benchmark",
    "load_reference",
    "build_clip_backbone",
    "clip_classifier",
    "build_fusion_model",
    "list_models",
]
