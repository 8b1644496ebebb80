"""Everything ``run`` validates before training, in one place (``avalanche-mm check``).

:func:`preflight` takes a resolved config (after :func:`~avalanche_mm.experiments.config.load_config`,
which checked the schema, benchmark parameters, data roots and reference files) and
checks, for every study, what needs the registries or a cheap build:

- the benchmark: offline benchmarks are built (cheap) and any error they raise
  becomes a problem naming ``benchmark.params``; real-data benchmarks are not read;
- the model: backbone name, pretrained weights on disk, fusion model name and
  parameters, what the fusion model needs from the benchmark (a vocabulary size
  for token-id modalities) - :func:`~avalanche_mm.models.build.model_problems`;
- pretraining and alignment metrics: a reference split to pretrain on / probe with;
- every strategy: its method's :meth:`~avalanche_mm.strategies.registry.MethodSpec.problems`;
- the metric groups: the extra evaluation passes they cost (notes).

Every problem is collected, then :meth:`Preflight.raise_problems` raises one
:class:`~avalanche_mm.schema.ConfigError`. ``run`` calls :func:`preflight` first and
reuses what it built, so a config ``check`` accepts does not fail in ``run`` before
its first training step, with the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from avalanche_mm.schema import ConfigError


@dataclass
class StudyCheck:
    """What :func:`preflight` found and built for one study.

    :ivar bundle: the benchmark bundle when it was built (offline benchmarks), else None.
    :ivar backbone: the CLIP backbone when it was built (registered backbones), else None.
    :ivar problems: messages, each starting with a config key ``--set`` accepts.
    :ivar notes: facts worth printing (extra evaluation passes, skipped metrics).
    """

    bundle: Any = None
    backbone: Any = None
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


@dataclass
class Preflight:
    """The result of :func:`preflight`: one :class:`StudyCheck` per study."""

    source: Optional[str] = None
    studies: Dict[str, StudyCheck] = field(default_factory=dict)

    @property
    def problems(self) -> List[str]:
        return [p for s in self.studies.values() for p in s.problems]

    @property
    def notes(self) -> List[str]:
        return [n for s in self.studies.values() for n in s.notes]

    def raise_problems(self) -> None:
        """Raise one :class:`ConfigError` listing every problem (if any)."""
        if self.problems:
            raise ConfigError(self.problems, source=self.source)


def metric_groups(evaluation: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The non-core metric groups a study records, name -> parameters
    (``evaluation.metrics`` plus the ``per_modality``/``alignment`` shorthands)."""
    groups: Dict[str, Dict[str, Any]] = {}
    if evaluation.get("per_modality"):
        groups["modality-imbalance"] = {}
    if evaluation.get("alignment"):
        groups["alignment"] = {}
    for name, params in (evaluation.get("metrics") or {}).items():
        groups[name] = dict(params or {})
    return groups


def _short(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    return text or type(err).__name__


def _image_size_problems(bundle: Any, backbone: Any, key: str, name: str) -> List[str]:
    """Images of the benchmark (reference split, first training sample) that the backbone cannot take."""
    import torch

    want = backbone.image_size
    want = tuple(want) if isinstance(want, (tuple, list)) else (int(want), int(want))
    seen = []
    ref = getattr(bundle, "reference", None)
    if ref is not None and isinstance(ref.images, torch.Tensor) and ref.images.dim() == 4:
        seen.append(("reference split", tuple(ref.images.shape[-2:])))
    try:
        x = bundle.scenario.train_stream[0].dataset[0][0]
        img = x.get("image") if isinstance(x, dict) else x
        if isinstance(img, torch.Tensor) and img.dim() == 3:
            seen.append(("training samples", tuple(img.shape[-2:])))
    except (IndexError, KeyError, TypeError, AttributeError):
        pass
    return [
        f"{key}.benchmark.params: {what} images are {h}x{w}, but {key}.model.backbone {name!r} takes "
        f"{want[0]}x{want[1]}; make the benchmark's images {want[0]} px (e.g. world.image_size) or choose a backbone for {h} px"
        for what, (h, w) in seen
        if (h, w) != want
    ]


def _freeze_problems(model_cfg: Mapping[str, Any], bundle: Any, key: str, *, seed: int) -> List[str]:
    """A fusion model is cheap: built once (global RNG untouched) to check ``model.freeze``."""
    import torch

    from avalanche_mm.models.build import build_fusion_model

    with torch.random.fork_rng(devices=[]):
        try:
            build_fusion_model(model_cfg, bundle, seed=seed)
        except KeyError as err:
            msg = err.args[0] if err.args else ""
            if isinstance(msg, str) and msg.startswith("model.freeze"):
                return [f"{key.rsplit('.', 1)[0]}.{msg}"]
            raise
    return []


def check_study(config: Mapping[str, Any], name: str, *, build: bool = True) -> StudyCheck:
    """Check one study of a resolved config (see the module docstring).

    :param build: build the offline benchmark and registered backbone (cheap); without,
        only the checks that need no bundle run.
    """
    from avalanche_mm.benchmarks.bundle import build_bundle
    from avalanche_mm.benchmarks.registry import BENCHMARKS
    from avalanche_mm.metrics.registry import METRICS
    from avalanche_mm.models.build import build_clip_backbone, model_problems
    from avalanche_mm.strategies.registry import METHODS, CheckContext

    from .config import strategy_training
    from .state import derive_seed

    study = config["studies"][name]
    key = f"studies.{name}"
    out = StudyCheck()
    seed = config["seed"]
    bench_cfg = study["benchmark"]
    model_cfg = study["model"]
    kind = model_cfg["kind"]
    entry = BENCHMARKS[bench_cfg["name"]]
    # the checks that need no bundle ran in validate_config (load_config): names,
    # parameters, weights; those below need the built benchmark
    static_model = model_problems(model_cfg, None, f"{key}.model")
    if static_model:  # a config that did not go through validate_config
        out.problems.extend(static_model)
    inject: Dict[str, Any] = {}
    if build and kind == "clip" and not static_model:
        try:  # built once here (weights present: static checks passed) and reused by run
            out.backbone = build_clip_backbone(model_cfg, seed=derive_seed(seed, name, "init"))
            inject = {"image_transform": out.backbone.preprocess_eval, "image_size": out.backbone.image_size,
                      "backbone_tokenizer": out.backbone.sample_tokenizer}
        except (ValueError, TypeError, KeyError, OSError, RuntimeError) as err:
            out.problems.append(f"{key}.model.backbone: {model_cfg['backbone']!r} could not be built: {_short(err)}")
    # real data too (its root exists: validate_config checked it): the files inside, their
    # format and checksums are found here, not when run starts; run reuses the bundle
    if build and (kind != "clip" or out.backbone is not None):
        try:
            out.bundle = build_bundle(bench_cfg, seed=seed, inject=inject)
        except (ValueError, TypeError, KeyError, IndexError, OSError) as err:
            out.problems.append(f"{key}.benchmark.params: benchmark {bench_cfg['name']!r} cannot be built with these parameters: {_short(err)}")
    bundle = out.bundle
    if bundle is not None and not static_model:
        found = [p for p in model_problems(model_cfg, bundle, f"{key}.model") if p not in static_model]
        out.problems.extend(found)
        if not found and kind == "fusion" and model_cfg.get("freeze"):
            out.problems.extend(_freeze_problems(model_cfg, bundle, f"{key}.model", seed=derive_seed(seed, name, "init")))
    if bundle is not None and kind == "clip" and out.backbone is not None:
        out.problems.extend(_image_size_problems(bundle, out.backbone, key, model_cfg["backbone"]))
    if bundle is not None and not bundle.shared_test_sets and len(bundle.scenario.test_stream) != bundle.n_experiences:
        out.problems.append(
            f"{key}.benchmark: the train stream has {bundle.n_experiences} experiences and the test stream "
            f"{len(bundle.scenario.test_stream)}; the accuracy matrix needs one test experience per training experience"
        )
    # reference split: pretraining and alignment need paired captions
    if bundle is not None:
        paired = bundle.reference is not None and bundle.reference.paired
    else:
        paired = entry.reference
    if kind == "clip" and model_cfg["pretrain"]["enabled"] and not paired:
        out.problems.append(
            f"{key}.model.pretrain.enabled: true, but benchmark {bench_cfg['name']!r} has no reference split of "
            "image-caption pairs to pretrain on; use a benchmark that carries one (avalanche-mm list benchmarks: "
            "demo-mtil) or set it to false"
        )
    # metric groups
    modalities = list(getattr(bundle, "modalities", ()) or ())
    for gname, params in metric_groups(study["evaluation"]).items():
        spec = METRICS[gname]
        if kind not in spec.model_kinds:
            if gname == "alignment":
                out.notes.append(f"{key}.evaluation.alignment: model kind {kind!r}; alignment metrics need a CLIP model and are skipped")
            continue
        if spec.needs == "reference split" and not paired:
            out.notes.append(
                f"{key}.evaluation.{'alignment' if gname == 'alignment' else 'metrics.' + gname}: the benchmark has no "
                "paired reference captions; alignment metrics are skipped"
            )
            continue
        if spec.passes is not None and modalities:
            wanted = params.get("modalities") or modalities
            n = len(wanted)
            p = spec.passes(n, params)
            if n > 4 and params.get("shapley"):
                out.problems.append(f"{key}.evaluation.metrics.{gname}.shapley: at most 4 modalities, the benchmark has {n}; set modalities to at most 4")
            out.notes.append(
                f"{key}: metric group {gname!r} adds {p} forward pass{'es' if p != 1 else ''} per evaluated minibatch "
                f"({n} modalities: {', '.join(wanted)})"
            )
    # strategies
    for stname, sentry in study["strategies"].items():
        spec = METHODS[sentry["method"]]
        ctx = CheckContext(
            key=f"{key}.strategies.{stname}",
            kind=kind,
            model=model_cfg,
            benchmark=bench_cfg,
            training=strategy_training(study, sentry),
            bundle=bundle,
            model_key=f"{key}.model",
        )
        params = {k: v for k, v in sentry.items() if k not in ("method", "training")}
        if bundle is None:
            continue  # checked without a bundle by validate_config
        try:
            out.problems.extend(spec.problems(ctx, params))
        except Exception as err:  # a method's check must not hide the other problems
            out.problems.append(f"{ctx.key}.method: the check of {sentry['method']!r} failed: {type(err).__name__}: {_short(err)}")
    return out


def preflight(config: Mapping[str, Any], *, studies: Optional[Sequence[str]] = None, build: bool = True, source: Optional[str] = None) -> Preflight:
    """Check every study (or ``studies``) of a resolved config; see the module docstring."""
    result = Preflight(source=source)
    for name in config["studies"]:
        if studies is not None and name not in studies:
            continue
        result.studies[name] = check_study(config, name, build=build)
    return result


__all__ = ["Preflight", "StudyCheck", "preflight", "check_study", "metric_groups"]
