"""The main job: a config in, a results folder and a report out.

:func:`run_experiment` validates the config, builds every study's benchmark
and initial model (pretraining a small backbone once, cached), then trains
each strategy on the stream, evaluating the whole test stream (trained and
not-yet-trained experiences) after every training experience, and finally
writes the summary, plots and report (:mod:`avalanche_mm.experiments.report`).

Results folder::

    OUT/config.yaml            the resolved config
    OUT/environment.json       versions, device, seed, threads, pretraining info
    OUT/run.json               status of the run (running / finished)
    OUT/summary.{json,csv,md}  one row per (study, strategy)
    OUT/report.{md,html}       the side-by-side report; OUT/plots/*.png
    OUT/metrics.jsonl          every metric value of every strategy
    OUT/<study>/<strategy>/    state.json, metrics.jsonl/.csv (ResultsLogger),
                               accuracy_matrix.csv, log.txt, checkpoints/exp_NNN.safetensors,
                               tb/, csv/, wandb/ (when those loggers are on)

Every file is written atomically. A strategy's ``state.json`` lists its
finished experiences; rerunning the same command resumes each strategy after
its last finished experience (restoring model, optimizer, plugin and metric
states, and truncating the logs to what had been committed), and ends with the
same metrics as an uninterrupted run.
"""

from __future__ import annotations

import copy
import datetime
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from avalanche_mm import distributed as D

from .config import (
    ConfigError,
    dump_yaml,
    load_config,
    strategy_fingerprint,
    strategy_training,
)
from .io import atomic_write_csv, atomic_write_json, atomic_write_text, read_json, truncate_file
from avalanche_mm.benchmarks.bundle import BenchmarkBundle, build_bundle
from avalanche_mm.models.build import build_clip_backbone, build_fusion_model, clip_classifier
from avalanche_mm.strategies.registry import METHODS, PLUGINS, BuildContext, PluginContext

from . import retrieval
from .check import StudyCheck, metric_groups, preflight
from .progress import MetricCollector, ProgressBarPlugin, close_loggers, make_loggers
from .lock import RunLock, clean_orphan_temporaries
from .state import (
    committed_digests,
    confined_path,
    derive_seed,
    load_checkpoint,
    new_state,
    read_state,
    save_checkpoint,
    seed_everything,
    verify_record,
    write_state,
)

#: the append-only files of a strategy folder whose committed length is tracked
APPEND_ONLY = ("metrics.jsonl", "metrics.csv", "log.txt")


@dataclass
class PreparedStudy:
    """A study ready to run: its benchmark and its initial model."""

    name: str
    cfg: Dict[str, Any]
    bundle: BenchmarkBundle
    kind: str
    initial_model: torch.nn.Module
    info: Dict[str, Any] = field(default_factory=dict)
    probe: Any = None

    def fresh_model(self) -> torch.nn.Module:
        return copy.deepcopy(self.initial_model)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"device: got {name!r}, but CUDA is not available on this machine; use 'cpu' or 'auto'"])
    return torch.device(name)


def environment(config: Mapping[str, Any], device: torch.device) -> Dict[str, Any]:
    """Versions, device, seed and threads, for ``environment.json``."""
    import avalanche

    import avalanche_mm

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "avalanche-lib": avalanche.__version__, "avalanche-mm": avalanche_mm.__version__}
    for mod in ("numpy", "open_clip", "transformers", "matplotlib", "yaml"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = None
    env = {
        "versions": versions,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": D.world_size(),
        "device": str(device),
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "seed": config["seed"],
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    return env


# ---------------------------------------------------------------------------
# preparing studies
# ---------------------------------------------------------------------------
def _probe_set(backbone, bundle: BenchmarkBundle, size: int):
    from avalanche_mm.metrics import ProbeSet

    ref = bundle.reference
    if ref is None:
        return None
    n = min(size, len(ref))
    if n < getattr(backbone, "embed_dim", 0):
        import warnings

        warnings.warn(
            f"evaluation.probe_size={n} is below the embedding size {backbone.embed_dim}: the rotation "
            "and deviation measures need at least as many probe pairs as dimensions to be meaningful.",
            stacklevel=2,
        )
    # spread the probe over the whole reference split (it is ordered by object)
    idx = torch.linspace(0, len(ref) - 1, n).round().long().unique()
    images = ref.images[idx]
    texts = backbone.tokenize([ref.texts[i] for i in idx.tolist()])
    return ProbeSet(images, texts)


def _model_or_config_error(study: str, build: Callable, *args, **kwargs):
    """``build(...)``, with a ``model.freeze`` that matches no parameter reported as a config error."""
    try:
        return build(*args, **kwargs)
    except KeyError as err:
        msg = err.args[0] if err.args else ""
        if isinstance(msg, str) and msg.startswith("model.freeze"):
            raise ConfigError([f"studies.{study}.{msg}"]) from err
        raise


def prepare_study(
    config: Mapping[str, Any],
    name: str,
    *,
    device: torch.device,
    log: Callable = print,
    progress: bool = True,
    checked: Optional[StudyCheck] = None,
) -> PreparedStudy:
    """Build a study's benchmark and initial model (pretraining and caching when asked).

    :param checked: the study's :func:`~avalanche_mm.experiments.check.preflight`
        result; the benchmark and backbone it built are used instead of building them again.
    """
    from .pretrain import pretrain_backbone, pretrain_key
    from .safety import build_checked, check_model_memory

    study = config["studies"][name]
    seed = config["seed"]
    bench_cfg = study["benchmark"]
    model_cfg = study["model"]
    kind = model_cfg["kind"]
    backbone = checked.backbone if checked is not None else None
    inject: Dict[str, Any] = {}
    if kind == "clip":
        # built first: real-data benchmarks take the backbone's image preprocessing
        if backbone is None:
            backbone = build_checked(lambda: build_clip_backbone(model_cfg, seed=derive_seed(seed, name, "init")), key=f"studies.{name}.model")
        inject = {"image_transform": backbone.preprocess_eval, "image_size": backbone.image_size,
                  "backbone_tokenizer": backbone.sample_tokenizer}  # caption loaders: CLIP's own BPE
    bundle = checked.bundle if checked is not None else None
    if bundle is None:
        try:
            bundle = build_bundle(bench_cfg, seed=seed, inject=inject)
        except FileNotFoundError as err:
            raise ConfigError([f"studies.{name}.benchmark: the data is not where the config says: {err}"]) from err
        except (ValueError, TypeError, KeyError, IndexError) as err:
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise ConfigError(
                [f"studies.{name}.benchmark.params: benchmark {bench_cfg['name']!r} cannot be built with these parameters: {msg}"]
            ) from err
    labels = [int(list(getattr(e, "task_labels", [0]))[0]) for e in bundle.scenario.test_stream]
    info: Dict[str, Any] = {
        "benchmark": bundle.name,
        "description": bundle.description,
        "n_experiences": bundle.n_experiences,
        "experiences": bundle.experience_names(),
        # "shared": the test experiences are fixed test sets evaluated after every training
        # experience (rows: phases, columns: test sets); "per-experience": test i is experience i's
        "test_protocol": "shared" if bundle.shared_test_sets else "per-experience",
        "phases": bundle.phase_names(),
        # one task label per experience: MTIL-style (Transfer/Avg/Last are meaningful)
        "multi_task": len(set(labels)) == len(labels) > 1,
        # accuracy of a uniform guess on each test experience (among the classes a
        # sample can be given: its task's for MTIL-style streams, all classes otherwise)
        "chance": [
            1.0 / max(1, len(e.classes_in_this_experience) if len(set(labels)) == len(labels) > 1 else len(bundle.class_names or []) or 1)
            for e in bundle.scenario.test_stream
        ],
    }
    probe = None
    if kind == "clip":
        if model_cfg["pretrain"]["enabled"]:
            if bundle.reference is None or not bundle.reference.paired:
                raise ConfigError(
                    [f"studies.{name}.model.pretrain.enabled: true, but benchmark {bundle.name!r} has no reference split of image-caption pairs to pretrain on"]
                )
            key = pretrain_key(model_cfg, bundle.reference, seed)
            backbone.to(device)
            backbone, pinfo = pretrain_backbone(backbone, bundle.reference, model_cfg["pretrain"], seed=seed, key=key, progress=progress, log=log)
            info["pretraining"] = pinfo
        backbone.eval()
        model = _model_or_config_error(name, retrieval.build_retrieval_model if retrieval.is_retrieval_bundle(bundle) else clip_classifier, backbone, bundle, model_cfg)
        if study["evaluation"]["alignment"]:
            if bundle.reference is not None and bundle.reference.paired:
                probe = _probe_set(backbone, bundle, study["evaluation"]["probe_size"])
            else:
                log(f"  studies.{name}.evaluation.alignment: the benchmark has no paired reference captions; alignment metrics are skipped")
    else:
        check_model_memory(lambda: build_fusion_model(model_cfg, bundle, seed=0), key=f"studies.{name}.model")
        model = _model_or_config_error(name, build_fusion_model, model_cfg, bundle, seed=derive_seed(seed, name, "init"))
    model.to(device)
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info["parameters"] = {"total": n_total, "trainable": n_train}
    _check_finite_batches(bundle)
    return PreparedStudy(name=name, cfg=study, bundle=bundle, kind=kind, initial_model=model.cpu(), info=info, probe=probe)


def _check_finite_batches(bundle) -> None:
    """The main job turns on the collate's NaN/Inf check (lazily loaded data is checked as it
    is read: the message names the sample and the modality)."""
    from avalanche_mm.data.collate import MultimodalCollate

    scenario = getattr(bundle, "scenario", None)
    for stream in (getattr(scenario, "train_stream", ()), getattr(scenario, "test_stream", ())):
        for exp in stream:
            collate = getattr(exp.dataset, "collate_fn", None)
            if isinstance(collate, MultimodalCollate):
                collate.check_finite = True


# ---------------------------------------------------------------------------
# running one strategy
# ---------------------------------------------------------------------------
def _metrics_for(prepared: PreparedStudy, model) -> List[Any]:
    """The study's metrics: the core groups, then the groups its ``evaluation`` selects
    (:data:`avalanche_mm.metrics.registry.METRICS`)."""
    from avalanche_mm.metrics.registry import METRICS, MetricContext

    if retrieval.is_retrieval_bundle(prepared.bundle):  # pair phases: the recall matrix (issue 14)
        return retrieval.retrieval_metrics(prepared, model)
    ctx = MetricContext(
        kind=prepared.kind,
        model=model,
        initial_model=prepared.initial_model,
        modalities=tuple(prepared.bundle.modalities or ()),
        probe=prepared.probe,
    )
    groups = [(e.name, {}) for e in METRICS.entries() if e.obj.core]
    groups.sort(key=lambda g: _CORE_ORDER.index(g[0]) if g[0] in _CORE_ORDER else len(_CORE_ORDER))
    groups += list(metric_groups(prepared.cfg["evaluation"]).items())
    out: List[Any] = []
    for name, params in groups:
        spec = METRICS[name]
        if prepared.kind not in spec.model_kinds:
            continue
        out.extend(spec.factory(ctx, **params))
    return out


#: the order of the core metric groups (as before the registry: accuracy first)
_CORE_ORDER = ("accuracy", "loss", "accuracy-matrix", "training-time")


def _extra_plugins(config: Mapping[str, Any], extra: Sequence[Any], ctx: PluginContext) -> List[Any]:
    """The plugins a config's ``plugins`` and the study's ``plugins`` name
    (:data:`~avalanche_mm.strategies.registry.PLUGINS`) and those given to
    :func:`run_experiment` (factories ``ctx -> plugin`` or names)."""
    out = []
    study = (config.get("studies") or {}).get(ctx.study) or {}
    for item in list(config.get("plugins") or []) + list(study.get("plugins") or []) + list(extra or []):
        factory = PLUGINS[item] if isinstance(item, str) else item
        plugin = factory(ctx)
        if plugin is not None:
            out.append(plugin)
    return out


def _parse_eval(values: Mapping[str, Any], n_exp: int):
    """Split the metric values of one evaluation into a row, per-modality rows and scalars."""
    from avalanche_mm.metrics import parse_metric_name

    row = [float("nan")] * n_exp
    unimodal: Dict[str, List[float]] = {}
    scalars: Dict[str, float] = {}
    for name, value in values.items():
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        p = parse_metric_name(name)
        metric, exp = p["metric"], p["experience"]
        if p["phase"] not in (None, "eval"):
            continue
        if exp is not None and p["stream"] == "test":
            if metric in ("Top1_Acc_Exp", "RetrievalR1_Exp"):  # the latter: retrieval studies
                row[exp] = v
            elif metric.startswith("UnimodalAcc_") and metric.endswith("_Exp"):
                m = metric[len("UnimodalAcc_") : -len("_Exp")]
                unimodal.setdefault(m, [float("nan")] * n_exp)[exp] = v
            elif metric == "FusedAcc_Exp":
                unimodal.setdefault("fused", [float("nan")] * n_exp)[exp] = v
            continue
        key = metric if p["task"] is None else f"{metric}/Task{p['task']:03d}"
        if p["stream"] and p["stream"].endswith("_probe"):
            key = metric
        scalars[key] = v
    return row, unimodal, scalars


def _committed_sizes(folder: str) -> Dict[str, int]:
    return {f: os.path.getsize(os.path.join(folder, f)) for f in APPEND_ONLY if os.path.exists(os.path.join(folder, f))}


def run_strategy(
    config: Mapping[str, Any],
    prepared: PreparedStudy,
    strategy_name: str,
    *,
    out: str,
    device: torch.device,
    log: Callable = print,
    extra_plugins: Sequence[Any] = (),
) -> Dict[str, Any]:
    """Train and evaluate one strategy of a study, resuming from its state file.

    :param extra_plugins: plugin factories ``(PluginContext) -> plugin`` (or names
        in :data:`~avalanche_mm.strategies.registry.PLUGINS`) added to the strategy.

    :return: the final state (see :func:`~avalanche_mm.experiments.state.new_state`).
    """
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_mm.metrics import ResultsLogger

    study_name = prepared.name
    entry = prepared.cfg["strategies"][strategy_name]
    spec = METHODS[entry["method"]]
    folder = os.path.join(out, study_name, strategy_name)
    main = D.is_main_process()  # under torchrun only rank 0 writes; every rank reads
    if main:
        os.makedirs(folder, exist_ok=True)
    fp = strategy_fingerprint(config, study_name, strategy_name)
    scenario = prepared.bundle.scenario
    n_exp = len(scenario.train_stream)
    shared = prepared.bundle.shared_test_sets  # fixed test sets evaluated after every experience
    n_cols = len(scenario.test_stream) if shared else n_exp
    if not shared and len(scenario.test_stream) != n_exp:
        raise ValueError(
            f"studies.{study_name}.benchmark: the train stream has {n_exp} experiences and the test "
            f"stream {len(scenario.test_stream)}; the accuracy matrix needs one test experience per "
            "training experience."
        )
    state = read_state(folder)
    if state is not None and state["fingerprint"] != fp:
        raise ConfigError(
            [
                f"studies.{study_name}.strategies.{strategy_name}: {folder} holds results of a different "
                f"configuration (fingerprint {state['fingerprint']}, now {fp}); rerun with --fresh to "
                "start over, or choose another --output"
            ]
        )
    if state is not None:
        verify_record(folder, state)  # finished strategies included: never keep a damaged record
    if state is not None and state["complete"]:
        log(f"  {study_name}/{strategy_name}: already complete, kept (record verified)")
        return state
    if state is None or not state["finished"]:
        state = new_state(study=study_name, strategy=strategy_name, method=entry["method"], fingerprint=fp, n_experiences=n_exp)
        if shared:  # rows are [test sets], not [experiences]: the report summarises them differently
            state["test_protocol"] = "shared"
        for f in APPEND_ONLY if main else ():
            truncate_file(os.path.join(folder, f), 0)
    else:
        for f in APPEND_ONLY if main else ():
            truncate_file(os.path.join(folder, f), state["committed"].get(f, 0))

    seed = derive_seed(config["seed"], study_name, strategy_name)
    seed_everything(derive_seed(seed, "build"))
    model = prepared.fresh_model()
    training = strategy_training(prepared.cfg, entry)
    params = {k: v for k, v in entry.items() if k not in ("method", "training")}
    if D.world_size() > 1:  # the configured batches are global: each rank takes its share (BuildContext.base_kwargs)
        D.per_rank_batch(training["batch_size"], what=f"studies.{study_name}.strategies.{strategy_name}.training.batch_size")
        if params.get("batch_size_mem"):
            params["batch_size_mem"] = D.per_rank_batch(params["batch_size_mem"], what=f"studies.{study_name}.strategies.{strategy_name}.batch_size_mem")
    # Avalanche refuses loggers outside rank 0: the other ranks evaluate (replicas stay
    # identical, eval-time model adaptation included) but record nothing
    collector = MetricCollector() if main else _NullCollector()
    if main:
        results_logger = ResultsLogger(path=folder)
        loggers = make_loggers(
            config["loggers"], folder, run_name=f"{config['name']}/{study_name}/{strategy_name}", wandb_cfg=config["wandb"], config=config
        )
        writers = [results_logger]
    else:
        results_logger, loggers, writers = None, [], []
    evaluator = EvaluationPlugin(*_metrics_for(prepared, model), loggers=writers + ([collector] if main else []) + loggers)
    plugins = [ProgressBarPlugin(label=f"{study_name}/{strategy_name}", enabled=config["progress_bar"] and main)]
    if training.get("precision", "fp32") != "fp32":
        from avalanche_mm.strategies.mixed_precision import MixedPrecisionPlugin

        plugins.append(MixedPrecisionPlugin(precision=training["precision"], tf32=training.get("tf32", True)))
    plugins += _extra_plugins(config, extra_plugins, PluginContext(study=study_name, strategy=strategy_name, output=out, folder=folder, bundle=prepared.bundle))
    ctx = BuildContext(model=model, kind=prepared.kind, training=training, device=device, evaluator=evaluator, plugins=plugins, bundle=prepared.bundle, seed=seed, world_size=D.world_size())
    strategy = spec.build(ctx, params)
    if hasattr(type(strategy), "distributed_eval"):  # our templates (MultimodalTemplateMixin)
        strategy.distributed_eval = config["distributed"]["eval"]
    workers = training["num_workers"]
    sources = [e.dataset for e in scenario.train_stream]  # replay buffers are saved as indices into these
    try:
        if state["finished"]:
            load_checkpoint(confined_path(folder, state["checkpoint"]), strategy, sources=sources)
            log(f"  {study_name}/{strategy_name}: resuming after experience {state['finished'][-1]}")
        elif prepared.cfg["evaluation"]["initial"]:
            seed_everything(derive_seed(seed, "initial-eval"))
            collector.clear()
            strategy.eval(scenario.test_stream, num_workers=workers)
            row, uni, scalars = _parse_eval(collector.values, n_cols)
            state["baseline"] = row
            state["baseline_unimodal"] = uni
            state["baseline_scalars"] = scalars
        start = len(state["finished"])
        for k in range(start, n_exp):
            seed_everything(derive_seed(seed, "experience", k))
            t0 = time.time()
            strategy.train(scenario.train_stream[k], eval_streams=[], num_workers=workers)
            t1 = time.time()
            collector.clear()
            strategy.eval(scenario.test_stream, num_workers=workers)
            t2 = time.time()
            row, uni, scalars = _parse_eval(collector.values, n_cols)
            state["rows"].append(row)
            state["unimodal"].append(uni)
            state["scalars"].append(scalars)
            state["train_seconds"].append(t1 - t0)
            state["eval_seconds"].append(t2 - t1)
            state["finished"].append(k)
            state["complete"] = k == n_exp - 1
            ckpt_rel = os.path.join("checkpoints", f"exp_{k:03d}.safetensors")
            previous = state["checkpoint"]
            state["checkpoint"] = ckpt_rel
            if not main:  # rank 0 writes the experience's record; wait until it has
                D.barrier()
                continue
            results_logger.close()
            save_checkpoint(os.path.join(folder, ckpt_rel), strategy, extra={"experience": k, "fingerprint": fp}, sources=sources)
            for lg in loggers:
                fh = getattr(lg, "file", None)
                if fh is not None and hasattr(fh, "flush"):
                    fh.flush()
            state["committed"] = _committed_sizes(folder)
            state["digests"] = committed_digests(folder, state["committed"])
            write_state(folder, state)
            _write_matrix(folder, state, prepared.bundle.experience_names(), phases=prepared.bundle.phase_names())
            if config["checkpoints"]["keep"] == "last" and previous and previous != ckpt_rel:
                old = confined_path(folder, previous)
                if os.path.exists(old):
                    os.remove(old)
            D.barrier()
            log(
                f"  {study_name}/{strategy_name}: experience {k + 1}/{n_exp} done "
                f"(train {t1 - t0:.1f}s, eval {t2 - t1:.1f}s, mean acc {_nanmean(row):.3f})"
            )
    finally:
        if results_logger is not None:
            results_logger.close()
        close_loggers(loggers)
    return state


class _NullCollector:
    """What rank > 0 has instead of a :class:`MetricCollector`: nothing is recorded."""

    values: Dict[str, Any] = {}

    def clear(self) -> None:
        pass


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]
    return sum(vals) / len(vals) if vals else float("nan")


def _write_matrix(folder: str, state: Mapping[str, Any], names: Sequence[str], *, phases: Optional[Sequence[str]] = None) -> None:
    """``accuracy_matrix.csv``: one column per test experience (``names``), one row per
    finished training experience (``phases``, default ``names``: test experience i is
    experience i's; with shared test sets they differ)."""
    phases = list(phases) if phases is not None else list(names)
    rows = []
    if state.get("baseline") is not None:
        rows.append(["initial"] + list(state["baseline"]))
    for k, row in zip(state["finished"], state["rows"]):
        rows.append([f"after {phases[k]}"] + list(row))
    atomic_write_csv(os.path.join(folder, "accuracy_matrix.csv"), rows, header=["row"] + list(names))


# ---------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------
def _check_output(out: str) -> None:
    """The results folder can be created and written (a clear error otherwise)."""
    from .safety import check_output_folder

    check_output_folder(out)


def _prepare_output(out: str, fresh: bool) -> None:
    """With ``--fresh``, empty the (locked) results folder, keeping the lock file."""
    from .lock import LOCK_FILE

    if not fresh:
        return
    for entry in os.listdir(out):
        if entry == LOCK_FILE:
            continue
        p = os.path.join(out, entry)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.remove(p)


def _refuse_foreign_folder(out: str, fresh: bool) -> None:
    from .lock import LOCK_FILE

    if fresh and os.path.isdir(out):
        entries = [e for e in os.listdir(out) if e != LOCK_FILE]
        if entries and not os.path.exists(os.path.join(out, "run.json")):
            raise ConfigError(
                [f"--output {out!r}: the folder exists and is not an avalanche-mm results folder (no run.json); refusing to delete it with --fresh"]
            )


def run_experiment(
    config: Union[None, str, Mapping[str, Any]] = None,
    *,
    output_dir: Optional[str] = None,
    overrides: Sequence[str] = (),
    only: Optional[Sequence[str]] = None,
    fresh: bool = False,
    log: Callable = print,
    report: bool = True,
    extra_plugins: Sequence[Any] = (),
) -> Dict[str, Any]:
    """Run a whole study from a config and write its results folder.

    :param config: a YAML path, a recipe name, a config mapping (raw or
        resolved) or None for the built-in default.
    :param output_dir: the results folder (default: the config's ``output``,
        else ``results/<name>``).
    :param overrides: ``KEY=VALUE`` overrides (the CLI's ``--set``).
    :param only: run only these strategies (names, or ``study/name``).
    :param fresh: delete an existing results folder first (instead of resuming).
    :param log: where progress lines and tables are printed.
    :param report: write the summary, plots and report at the end.
    :param extra_plugins: plugin factories ``(PluginContext) -> plugin or None`` (or
        names in :data:`~avalanche_mm.strategies.registry.PLUGINS`) added to every
        strategy, besides the config's ``plugins``.
    :return: the summary: ``{"output": ..., "rows": [per (study, strategy) summary], "tables": text}``.
    """
    if isinstance(config, Mapping):
        cfg = load_config(raw=config, overrides=overrides)
    else:
        cfg = load_config(config, overrides=overrides)
    out = os.path.abspath(output_dir or cfg["output"] or os.path.join("results", cfg["name"]))
    selected = _select(cfg, only)
    if D.launched_by_torchrun():  # one of N processes started by torchrun
        try:
            device = D.init_from_env(backend=cfg["distributed"]["backend"], device=cfg["device"], timeout_s=cfg["distributed"]["timeout"])
        except D.DistributedError as err:
            raise ConfigError([str(err)]) from err
        from .launch import check_distributed

        problems = check_distributed(cfg, world=D.world_size(), selected=selected)
        if problems:
            raise ConfigError(problems)
    else:
        device = resolve_device(cfg["device"])
    main = D.is_main_process()
    if not main:  # progress lines and tables once, from rank 0
        log = lambda *a, **k: None  # noqa: E731
    # everything `avalanche-mm check` validates, before any output is written
    checks = preflight(cfg, studies=sorted({s for s, _ in selected}), source=None if isinstance(config, Mapping) else config)
    checks.raise_problems()
    for note in checks.notes:
        log(f"note: {note}")
    threads_before = torch.get_num_threads()
    if cfg.get("threads") is not None:  # restored when the run ends (a process-wide setting)
        torch.set_num_threads(int(cfg["threads"]))
    env = environment(cfg, device)
    run_info = {"status": "running", "output": out, "started": env["started"], "studies": list(cfg["studies"])}
    lock = None
    if main:
        _check_output(out)
        _refuse_foreign_folder(out, fresh)
        lock = RunLock(out, log=log).acquire()  # one run per results folder; released however the run ends
    try:
        if main:
            _prepare_output(out, fresh)
            for tmp in clean_orphan_temporaries(out):
                log(f"removed an orphan temporary file of an interrupted write: {tmp}")
            atomic_write_text(os.path.join(out, "config.yaml"), dump_yaml(cfg))
            atomic_write_json(os.path.join(out, "run.json"), run_info)
        D.barrier()  # the folder is ready (and, with --fresh, emptied) before any rank reads it
        return _run_locked(cfg, out, device, selected, env, run_info, checks, main, log=log, report=report, extra_plugins=extra_plugins)
    except BaseException as err:
        if main:
            run_info.update(
                {
                    "status": "interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
                    "error": f"{type(err).__name__}: {err}"[:4000],
                    "ended": datetime.datetime.now().isoformat(timespec="seconds"),
                }
            )
            atomic_write_json(os.path.join(out, "run.json"), run_info)
        raise
    finally:
        torch.set_num_threads(threads_before)
        if lock is not None:
            lock.release()


def _run_locked(cfg, out: str, device, selected, env, run_info, checks, main: bool, *, log: Callable, report: bool, extra_plugins) -> Dict[str, Any]:
    from .report import build_report

    start = time.time()
    # build everything first: bad data roots or models fail before any training
    prepared: Dict[str, PreparedStudy] = {}
    if not main:  # rank 0 prepares first (pretraining writes the shared cache), the others then read it
        D.barrier()
    for sname in cfg["studies"]:
        if not any(s == sname for s, _ in selected):
            continue
        log(f"preparing study {sname!r} ...")
        prepared[sname] = prepare_study(cfg, sname, device=device, log=log, progress=cfg["progress_bar"], checked=checks.studies.get(sname))
    if main:
        D.barrier()
    previous = read_json(os.path.join(out, "environment.json")) if os.path.exists(os.path.join(out, "environment.json")) else {}
    studies_info = {k: v for k, v in (previous.get("studies") or {}).items() if k in cfg["studies"]}
    studies_info.update({k: v.info for k, v in prepared.items()})  # --only keeps the other studies' info
    env["studies"] = studies_info
    if main:
        atomic_write_json(os.path.join(out, "environment.json"), env)
    for sname, stname in selected:
        log(f"[{sname}] {stname} ({cfg['studies'][sname]['strategies'][stname]['method']})")
        run_strategy(cfg, prepared[sname], stname, out=out, device=device, log=log, extra_plugins=extra_plugins)
    run_info.update({"status": "finished", "seconds": time.time() - start, "finished": datetime.datetime.now().isoformat(timespec="seconds")})
    summary: Dict[str, Any] = {"output": out}
    if main:
        atomic_write_json(os.path.join(out, "run.json"), run_info)
        if report:
            summary.update(build_report(out, log=log))
    D.barrier()
    return summary


def _select(cfg: Mapping[str, Any], only: Optional[Sequence[str]]):
    pairs = [(s, st) for s, study in cfg["studies"].items() for st in study["strategies"]]
    if not only:
        return pairs
    chosen = []
    for item in only:
        hits = [(s, st) for s, st in pairs if item in (st, f"{s}/{st}")]
        if not hits:
            raise ConfigError(
                [f"--only: got {item!r}, expected a strategy name or study/strategy among " + ", ".join(f"{s}/{st}" for s, st in pairs)]
            )
        chosen.extend(h for h in hits if h not in chosen)
    return [p for p in pairs if p in chosen]


__all__ = ["run_experiment", "run_strategy", "prepare_study", "PreparedStudy", "resolve_device", "environment"]
