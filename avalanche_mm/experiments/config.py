"""Experiment configuration: schema, loading, ``--set`` overrides, validation.

A config is a YAML mapping. The full form lists one or more *studies*, each
comparing strategies on one benchmark::

    name: my-study
    seed: 0
    studies:
      mtil:
        benchmark: {name: procedural-mtil, params: {n_tasks: 4}}
        model: {kind: clip, backbone: tiny-openclip}
        training: {iterations: 100, lr: 1.0e-4}
        strategies:
          finetune: {}
          zscl: {we_every: 10}

A config with a single study may put ``benchmark``, ``model``, ``training``,
``evaluation`` and ``strategies`` at the top level (they become the study
``main``). A strategy entry's name is its display name; its ``method`` (default:
the name itself) picks the method from :data:`avalanche_mm.strategies.registry.METHODS`;
its other keys are the method's parameters, plus an optional ``training``
mapping that overrides the study's training settings for that strategy.

:func:`load_config` reads a file (or the built-in default), applies ``--set``
overrides and validates everything, raising one :class:`ConfigError` that
lists every problem with its dotted key, the value given and what was expected.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from avalanche_mm.schema import REQUIRED, ConfigError, MapOf, Opt, Section, _show, _suggest

#: the built-in loggers (any name in :data:`avalanche_mm.metrics.loggers.LOGGERS` is accepted)
LOGGERS = ("text", "tensorboard", "wandb", "csv", "interactive")
MODEL_KINDS = ("clip", "fusion")
#: top-level keys that are moved under ``studies.main`` in the single-study form
STUDY_KEYS = ("title", "benchmark", "model", "training", "evaluation", "strategies")


def _check_device(value: str) -> Optional[str]:
    if value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value):
        return None
    return "expected 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"


def _check_betas(value: List[float]) -> Optional[str]:
    if len(value) != 2 or not all(isinstance(v, float) and 0 <= v < 1 for v in value):
        return "expected two numbers in [0, 1), e.g. [0.9, 0.999]"
    return None


def _check_names(values: Any, registry: Any, key: str, errors: List[str]) -> None:
    """``key[i]: got 'x', expected one of ...`` for list items not in ``registry``."""
    known = list(registry)
    for i, name in enumerate(values if isinstance(values, list) else []):
        if isinstance(name, str) and name not in registry:
            errors.append(f"{key}[{i}]: got {name!r}, expected one of " + (", ".join(map(repr, known)) or "(none registered)") + _suggest(name, known))


EXPECTATION_KINDS = ("above_chance", "greater", "at_least")
SUMMARY_METRICS = (
    "transfer", "avg", "last", "forgetting", "bwt", "fwt", "avg_seen", "avg_incremental", "imbalance_index",
)


def _check_expectations(items: List[Any]) -> Optional[str]:
    for i, item in enumerate(items):
        kind = item.get("kind") if isinstance(item, Mapping) else None
        if kind not in EXPECTATION_KINDS:
            return f"expected items with kind in {EXPECTATION_KINDS} (item {i} has kind {kind!r})"
        need = {"above_chance": ("study", "strategy"), "greater": ("study", "metric", "higher", "lower"),
                "at_least": ("study", "metric", "strategy", "value")}[kind]
        missing = [k for k in need if k not in item]
        if missing:
            return f"expected item {i} ({kind}) to give {', '.join(need)}; missing {', '.join(missing)}"
        study = item["study"]
        if isinstance(study, list) and (kind != "greater" or not study or not all(isinstance(x, str) for x in study)):
            return (f"expected item {i}'s study to be a study name (or, for kind greater, a non-empty list of "
                    f"study names whose means are compared), got {study!r}")
        if "metric" in item and item["metric"] not in SUMMARY_METRICS and not str(item["metric"]).startswith("modality:"):
            return f"expected item {i}'s metric in {SUMMARY_METRICS} or 'modality:<name>', got {item['metric']!r}"
    return None


TRAINING = Section(
    {
        "iterations": Opt(
            "int", None, nullable=True, minimum=1,
            help="optimizer steps per experience (when set, epochs is only an upper bound on passes)",
        ),
        "epochs": Opt("int", 1, minimum=1, help="passes over each experience's training data"),
        "batch_size": Opt("int", 32, minimum=1, help="training minibatch size"),
        "eval_batch_size": Opt("int", 128, minimum=1, help="evaluation minibatch size"),
        "optimizer": Opt("str", "adamw", choices=["adamw", "adam", "sgd"], help="optimizer"),
        "lr": Opt("float", 1e-5, minimum=0.0, help="learning rate"),
        "lr_per_experience": Opt(
            "list", None, nullable=True, item="float",
            help="one learning rate per experience (ZSCL uses 5e-5 for Aircraft and MNIST)",
        ),
        "weight_decay": Opt("float", 0.0, minimum=0.0, help="weight decay"),
        "momentum": Opt("float", 0.9, minimum=0.0, maximum=1.0, help="SGD momentum"),
        "betas": Opt("list", [0.9, 0.999], item="float", check=_check_betas, help="Adam betas"),
        "scheduler": Opt("str", "cosine", choices=["cosine", "constant"], help="per-iteration LR schedule"),
        "warmup": Opt("int", 0, minimum=0, help="linear warm-up iterations"),
        "label_smoothing": Opt("float", 0.0, minimum=0.0, maximum=1.0, help="label smoothing of the CE loss"),
        "grad_clip": Opt("float", None, nullable=True, minimum=0.0, help="clip the gradient norm"),
        "reset_optimizer": Opt(
            "bool", True, help="fresh optimizer state at every experience (as ZSCL's per-task runs)"
        ),
        "num_workers": Opt("int", 0, minimum=0, help="DataLoader workers"),
        "precision": Opt(
            "str", "fp32", choices=["fp32", "bf16"],
            help="'bf16': forward passes and the loss under bfloat16 autocast (weights, gradients, optimizer stay fp32)",
        ),
        "tf32": Opt("bool", True, help="with precision bf16 on an Ampere-or-newer GPU, let float32 matmuls use TF32"),
    },
    help="training settings (a strategy's `training` overrides them)",
)

PRETRAIN = Section(
    {
        "enabled": Opt("bool", False, help="contrastively pretrain the backbone on the benchmark's reference split (cached)"),
        "iterations": Opt("int", 300, minimum=1, help="pretraining steps"),
        "batch_size": Opt("int", 128, minimum=2, help="pretraining batch size"),
        "lr": Opt("float", 2e-3, minimum=0.0, help="pretraining learning rate"),
        "weight_decay": Opt("float", 0.1, minimum=0.0, help="pretraining weight decay"),
        "warmup": Opt("int", 20, minimum=0, help="pretraining warm-up steps"),
        "cache_dir": Opt(
            "str", None, nullable=True,
            help="cache folder (default $AVALANCHE_MM_CACHE or ~/.cache/avalanche_mm)",
        ),
    },
    help="pretraining of a small backbone (CLIP kind only)",
)

MODEL = Section(
    {
        "kind": Opt("str", "clip", choices=list(MODEL_KINDS), help="'clip' (backbone + zero-shot head) or 'fusion'"),
        "backbone": Opt("str", "tiny-openclip", help="backbone name for build_backbone (CLIP kind)"),
        "pretrained": Opt("str", None, nullable=True, help="pretrained tag / checkpoint (CLIP kind)"),
        "cache_dir": Opt("str", None, nullable=True, help="weights cache folder (CLIP kind)"),
        "templates": Opt(
            "list", None, nullable=True, item="str",
            help="prompt templates with '{}' (default: the benchmark's, else 'a photo of a {}.')",
        ),
        "mask_unseen": Opt(
            "bool", False,
            help="single-head class-incremental protocol: classes not trained yet get no logit (MoE-Adapters, AttriCLIP, "
            "RAPF evaluate over the classes seen so far)",
        ),
        "train_templates": Opt(
            "str", "benchmark", choices=["benchmark", "all", "first"],
            help="templates of the training logits: 'first' (ZSCL), 'all', or 'benchmark' "
            "(the benchmark's info['train_text'], e.g. 'first' on mtil; else 'all')",
        ),
        "freeze": Opt(
            "list", ["logit_scale"], item="str",
            help="parameter name prefixes (or 'vision', 'text', 'logit_scale') kept frozen",
        ),
        "name": Opt("str", None, nullable=True, help="fusion model name (fusion kind)"),
        "params": Opt("dict", {}, help="extra keyword arguments of the backbone / fusion model"),
        "pretrain": PRETRAIN,
    },
    help="the model",
)

from avalanche_mm.benchmarks.bundle import resolve_data_path  # noqa: E402  (re-exported)


REFERENCE = Section(
    {
        "images": Opt(
            "str", None, nullable=True,
            help="folder of reference images (ImageFolder layout, e.g. ImageNet train) for ZSCL; relative to data_root",
        ),
        "texts": Opt(
            "str", None, nullable=True,
            help="text file of reference sentences, one per line (e.g. Conceptual Captions); relative to data_root",
        ),
        "max_images": Opt("int", None, nullable=True, minimum=1, help="use at most this many images (a seeded sample)"),
        "max_texts": Opt("int", None, nullable=True, minimum=1, help="use at most this many sentences (a seeded sample)"),
    },
    help="reference data of real-data studies (built-in benchmarks bring their own)",
)

BENCHMARK = Section(
    {
        "name": Opt("str", REQUIRED, help="benchmark name (avalanche-mm list benchmarks)"),
        "params": Opt("dict", {}, help="keyword arguments of the benchmark"),
        "data_root": Opt("str", None, nullable=True, help="folder with the real datasets"),
        "reference": REFERENCE,
    },
    help="the benchmark",
)

EVALUATION = Section(
    {
        "initial": Opt("bool", True, help="evaluate the untrained model on the whole test stream first (FWT baseline)"),
        "per_modality": Opt("bool", False, help="per-modality accuracy / contribution / imbalance metrics (shorthand for metrics: {modality-imbalance: {}})"),
        "alignment": Opt("bool", False, help="cross-modal alignment and drift on a probe set (CLIP kind; shorthand for metrics: {alignment: {}})"),
        "metrics": Opt(
            "dict", {},
            help="metric groups to record besides the core ones, name -> parameters (avalanche-mm list metrics), "
            "e.g. {modality-imbalance: {shapley: true}}",
        ),
        "probe_size": Opt("int", 128, minimum=2, help="probe-set size for alignment metrics"),
    },
    help="what to measure",
)


def _strategy_entry(name: str, value: Any, key: str, errors: List[str]) -> Dict[str, Any]:
    """Validate one strategy entry against its method's parameter schema."""
    import avalanche_mm.strategies  # noqa: F401  (the method files register themselves)
    from avalanche_mm.strategies.registry import METHODS

    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        errors.append(f"{key}: got {_show(value)}, expected a mapping of method parameters (or {{}})")
        return {}
    value = dict(value)
    given = "method" in value
    method = value.pop("method", name)
    if not isinstance(method, str) or method not in METHODS:
        errors.append(
            f"{key}.method: got {method!r}, expected one of "
            + ", ".join(sorted(METHODS))
            + _suggest(method, sorted(METHODS))
            + ("" if given else f" (the strategy name '{name}' is used as the method when `method` is absent)")
        )
        return {"method": method}
    training = value.pop("training", None)
    spec = METHODS[method]
    params = Section(spec.params).validate(value, key, errors)
    out = {"method": method, **params}
    out["training"] = TRAINING.partial().validate(training, f"{key}.training", errors)
    return out


STUDY = Section(
    {
        "title": Opt("str", "", help="a title for the report"),
        "benchmark": BENCHMARK,
        "model": MODEL,
        "training": TRAINING,
        "evaluation": EVALUATION,
        "strategies": MapOf(_strategy_entry, min_items=1, help="display name -> method and parameters"),
        "plugins": Opt(
            "list", [], item="str",
            help="extra plugins added to every strategy of this study, after the run's plugins (plugin registry names)",
        ),
    },
    help="one benchmark, one model, several strategies",
)

WANDB = Section(
    {
        "project": Opt("str", "avalanche-mm", help="W&B project"),
        "mode": Opt("str", "offline", choices=["offline", "online", "disabled"], help="W&B mode"),
        "entity": Opt("str", None, nullable=True, help="W&B entity"),
    },
    help="Weights & Biases logger (used when 'wandb' is in loggers)",
)

SCHEMA = Section(
    {
        "name": Opt("str", "experiment", help="name of the run (default output folder results/<name>)"),
        "description": Opt("str", "", help="free text shown in the report"),
        "seed": Opt("int", 0, minimum=0, help="master seed"),
        "device": Opt("str", "auto", check=_check_device, help="'auto', 'cpu', 'cuda', 'cuda:N'"),
        "distributed": Section(
            {
                "backend": Opt("str", "auto", choices=["auto", "gloo", "nccl"], help="process-group backend under torchrun (auto: NCCL on GPUs, else gloo)"),
                "timeout": Opt("float", 300.0, minimum=1.0, help="seconds a rank waits in a collective before the run stops (a dead or hung rank)"),
                "eval": Opt(
                    "str", "sharded", choices=["sharded", "replicated"],
                    help="evaluation under several processes: 'sharded' (each rank evaluates a slice of every global "
                    "evaluation minibatch, the results are gathered: the metrics of a 1-process evaluation) or "
                    "'replicated' (every rank evaluates the whole test stream)",
                ),
            },
            help="data-parallel runs under torchrun / --nproc-per-node (see docs/scaling.md)",
        ),
        "output": Opt("str", None, nullable=True, help="results folder (the CLI's --output wins)"),
        "threads": Opt(
            "int", None, nullable=True, minimum=1,
            help="torch intra-op CPU threads during the run (null: torch's default); demo-size models run "
            "fastest with 1, and a fixed count makes CPU results the same on machines with more cores "
            "(docs/trust.md, Busy machines)",
        ),
        "progress_bar": Opt("bool", True, help="tqdm progress bars on training and evaluation"),
        "loggers": Opt(
            "list", ["text"], item="str",
            help="Avalanche loggers besides the results logger (avalanche-mm list loggers): " + ", ".join(LOGGERS),
        ),
        "imports": Opt(
            "list", [], item="str",
            help="Python modules imported before the config is validated (they register methods, benchmarks, models...)",
        ),
        "plugins": Opt(
            "list", [], item="str",
            help="extra plugins added to every strategy, by name in the plugin registry (entry-point group avalanche_mm.plugins)",
        ),
        "wandb": WANDB,
        "checkpoints": Section(
            {
                "keep": Opt("str", "all", choices=["all", "last"], help="keep every experience's checkpoint or only the last (enough to resume)"),
            },
            help="per-experience checkpoints (needed to resume)",
        ),
        "report": Section(
            {
                "plots": Opt("bool", True, help="draw the plots"),
                "html": Opt("bool", True, help="write report.html besides report.md"),
                "expectations": Opt(
                    "list", [], item="dict", check=_check_expectations,
                    help="phenomena to check and print as yes/no (see docs/main-job.md)",
                ),
            },
            help="the report",
        ),
        "studies": MapOf(STUDY, min_items=1, help="study name -> study"),
    }
)


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
def default_config_path() -> str:
    """Path of the built-in default config (package data)."""
    return str(resources.files("avalanche_mm").joinpath("configs", "default.yaml"))


def packaged_recipes() -> Dict[str, str]:
    """Name -> path of the recipes shipped in the package (``avalanche_mm/configs``,
    subfolders included: ``mtil/order-I-vitb16``)."""
    folder = str(resources.files("avalanche_mm").joinpath("configs"))
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            if f.endswith((".yaml", ".yml")):
                rel = os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, "/")
                out[rel.rsplit(".", 1)[0]] = os.path.join(dirpath, f)
    return out


def repo_recipes(root: Optional[str] = None) -> Dict[str, str]:
    """Name -> path of the recipes in a repository's ``configs/`` folder.

    :param root: the folder holding ``configs/`` (default: the current
        directory, then the source checkout this package lives in).
    """
    candidates = [root] if root else [os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    out: Dict[str, str] = {}
    for base in candidates:
        folder = os.path.join(base, "configs")
        if not os.path.isdir(folder):
            continue
        for dirpath, _, files in os.walk(folder):
            for f in sorted(files):
                if f.endswith((".yaml", ".yml")):
                    path = os.path.join(dirpath, f)
                    rel = os.path.relpath(path, folder).rsplit(".", 1)[0]
                    out.setdefault(rel, path)
        if out:
            break
    return out


def resolve_config_source(source: Optional[str]) -> str:
    """Turn a CLI config argument into a file path.

    ``None`` -> the built-in default; an existing path -> itself; otherwise a
    recipe name from the package or the repository ``configs/`` folder.
    """
    if source is None:
        return default_config_path()
    if os.path.exists(source):
        return source
    recipes = {**repo_recipes(), **packaged_recipes()}
    if source in recipes:
        return recipes[source]
    raise ConfigError(
        [
            f"config: got {source!r}, expected a YAML file path or a recipe name ("
            + ", ".join(sorted(recipes))
            + ")"
            + _suggest(source, sorted(recipes))
        ]
    )


def read_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML mapping, with errors that name the file and line.

    Duplicate keys, non-UTF-8 text, folders and unreadable files are
    :class:`ConfigError`\ s, not tracebacks.
    """
    from .safety import StrictYamlLoader

    if os.path.isdir(path):
        raise ConfigError([f"config: {path!r} is a folder, expected a YAML file (or a recipe name: avalanche-mm list recipes)"])
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: not valid YAML: {err}"]) from err
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the config as UTF-8"]) from err
    except OSError as err:
        raise ConfigError([f"{path}: cannot be read ({err.strerror or err})"]) from err
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"{path}: the top level must be a mapping, got {type(data).__name__}"])
    return dict(data)


def parse_override(text: str) -> Tuple[List[str], Any]:
    """Parse ``key.sub=value`` (value read as YAML: numbers, lists, null, ...)."""
    if "=" not in text:
        raise ConfigError([f"--set {text!r}: expected KEY=VALUE, e.g. studies.main.training.lr=1e-4"])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([f"--set {text!r}: the key {key!r} is not a dotted path like training.lr"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError([f"--set {text!r}: the value {raw!r} is not valid YAML ({err})"]) from err
    return key.split("."), value


def apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``--set`` overrides to a raw config (a copy is returned).

    In a single-study config, keys below the study (``training.lr``) work as
    they are written in the file; ``studies.<name>.`` paths work in both forms.
    """
    cfg = copy.deepcopy(raw)
    single = "studies" not in cfg
    for text in overrides or ():
        path, value = parse_override(text)
        if single and path[:2] == ["studies", "main"] and len(path) > 2 and path[2] in STUDY_KEYS:
            path = path[2:]  # the key messages print, in a single-study file
        node = cfg
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                nxt = {}
                node[part] = nxt
            if not isinstance(nxt, dict):
                raise ConfigError(
                    [
                        f"--set {text!r}: {'.'.join(path[: i + 1])} holds {_show(nxt)}, "
                        "not a mapping, so it has no sub-key"
                    ]
                )
            node = nxt
        node[path[-1]] = value
    return cfg


def normalize(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """Turn the single-study form into the ``studies`` form (a copy)."""
    cfg = copy.deepcopy(dict(raw))
    top = [k for k in STUDY_KEYS if k in cfg]
    if top:
        if "studies" in cfg:
            raise ConfigError(
                [
                    f"{top[0]}: found at the top level next to `studies`; put it inside a study "
                    "(studies.<name>.{top[0]}) or drop `studies` for a single-study config".replace("{top[0]}", top[0])
                ]
            )
        study = {k: cfg.pop(k) for k in top}
        cfg["studies"] = {"main": study}
    return cfg


def validate_config(raw: Mapping[str, Any], *, source: Optional[str] = None) -> Dict[str, Any]:
    """Validate a raw config and fill the defaults.

    :param raw: the config as read from YAML (either form).
    :param source: file name used in the error message.
    :return: the resolved config (``studies`` form, every default filled).
    :raises ConfigError: listing every problem found.
    """
    cfg = normalize(raw)
    errors: List[str] = []
    single = not (isinstance(raw, Mapping) and "studies" in raw)
    if single:
        known = list(SCHEMA.fields) + list(STUDY_KEYS)
        for k in [k for k in cfg if k not in SCHEMA.fields]:
            errors.append(f"{k}: unknown key, expected one of " + ", ".join(sorted(known)) + _suggest(k, known))
            cfg.pop(k)
    out = SCHEMA.validate(cfg, "", errors)
    from avalanche_mm.metrics.loggers import LOGGERS as _LOGGERS
    from avalanche_mm.strategies.registry import PLUGINS as _PLUGINS

    _check_names(out.get("loggers"), _LOGGERS, "loggers", errors)
    _check_names(out.get("plugins"), _PLUGINS, "plugins", errors)
    for sname, study in (out.get("studies") or {}).items():
        if isinstance(study, dict):
            _check_names(study.get("plugins"), _PLUGINS, f"studies.{sname}.plugins", errors)
            _check_study(sname, study, errors)
    if errors:
        raise ConfigError(errors, source=source)
    return out


def _check_study(sname: str, study: Dict[str, Any], errors: List[str]) -> None:
    from avalanche_mm.benchmarks.bundle import reference_problems
    from avalanche_mm.metrics.registry import METRICS
    from avalanche_mm.strategies.registry import METHODS

    key = f"studies.{sname}"
    bench = study.get("benchmark") or {}
    if isinstance(bench, dict) and isinstance(bench.get("name"), str):
        errors.extend(benchmark_problems(bench, f"{key}.benchmark"))
    ref = bench.get("reference") if isinstance(bench, dict) else None
    if isinstance(ref, dict):
        errors.extend(reference_problems(ref, bench.get("data_root"), f"{key}.benchmark.reference"))
    model = study.get("model") or {}
    kind = model.get("kind") if isinstance(model, dict) else None
    evaluation = study.get("evaluation") or {}
    for mname, params in (evaluation.get("metrics") or {}).items():
        mkey = f"{key}.evaluation.metrics.{mname}"
        if mname not in METRICS:
            known = list(METRICS)
            errors.append(f"{mkey}: unknown metric group, expected one of " + ", ".join(known) + _suggest(mname, known))
            continue
        spec = METRICS[mname]
        if params is not None and not isinstance(params, Mapping):
            errors.append(f"{mkey}: got {_show(params)}, expected a mapping of parameters (or {{}})")
            continue
        Section(spec.params).validate(params or {}, mkey, errors)
        if kind in MODEL_KINDS and kind not in spec.model_kinds:
            errors.append(f"{mkey}: needs a model of kind " + " or ".join(map(repr, spec.model_kinds)) + f", but {key}.model.kind is {kind!r}")
    if isinstance(model, dict) and kind in MODEL_KINDS:
        from avalanche_mm.models.build import model_problems

        errors.extend(model_problems(model, None, f"{key}.model"))
    training = study.get("training") or {}
    for stname, entry in (study.get("strategies") or {}).items():
        if not isinstance(entry, dict) or entry.get("method") not in METHODS:
            continue
        if isinstance(bench, dict) and isinstance(model, dict) and kind in MODEL_KINDS:
            from avalanche_mm.strategies.registry import CheckContext

            ctx = CheckContext(
                key=f"{key}.strategies.{stname}", kind=kind, model=model, benchmark=bench,
                training={**training, **(entry.get("training") or {})}, bundle=None, model_key=f"{key}.model",
            )
            params = {k: v for k, v in entry.items() if k not in ("method", "training")}
            try:
                errors.extend(METHODS[entry["method"]].problems(ctx, params))
            except Exception as err:  # a method's check must not hide the other problems
                errors.append(f"{ctx.key}.method: the check of {entry['method']!r} failed: {type(err).__name__}: {err}")
        merged = {**training, **{k: v for k, v in (entry.get("training") or {}).items()}}
        lrs = merged.get("lr_per_experience")
        if lrs is not None and any((not isinstance(v, float)) or v < 0 for v in lrs):
            errors.append(f"{key}.strategies.{stname}.training.lr_per_experience: got {lrs!r}, expected numbers >= 0")


def benchmark_problems(cfg: Mapping[str, Any], key: str) -> List[str]:
    """Problems with a ``benchmark`` section found without building it: unknown
    name, unknown, missing, ill-typed or out-of-range parameters, the entry's
    consistency checks (class splits), a missing or absent data root."""
    from avalanche_mm.benchmarks.registry import BENCHMARKS

    name = cfg.get("name")
    if name not in BENCHMARKS:
        known = list(BENCHMARKS)
        return [f"{key}.name: got {name!r}, expected one of " + ", ".join(known) + _suggest(name, known)]
    entry = BENCHMARKS[name]
    errors = entry.problems(dict(cfg.get("params") or {}), f"{key}.params")
    root = cfg.get("data_root")
    if root is not None and not os.path.isdir(os.path.expanduser(root)):
        errors.append(f"{key}.data_root: got {root!r}, expected an existing folder with the datasets")
    if entry.needs_data and root is None:
        errors.append(f"{key}.data_root: missing, benchmark {name!r} reads real data: give the folder that holds it")
    return errors


def load_config(
    source: Optional[str] = None,
    *,
    overrides: Sequence[str] = (),
    raw: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Read, override and validate a config.

    :param source: a YAML path, a recipe name, or None for the built-in default.
    :param overrides: ``KEY=VALUE`` strings (``--set``).
    :param raw: a config mapping to use instead of reading ``source``.
    :return: the resolved config.
    """
    if raw is not None:
        data, where = dict(raw), "<mapping>"
    else:
        where = resolve_config_source(source)
        data = read_yaml(where)
    data = apply_overrides(data, overrides)
    imports = data.get("imports")
    if isinstance(imports, list) and all(isinstance(m, str) for m in imports):
        from avalanche_mm.registry import import_modules

        try:
            import_modules(imports)
        except ImportError as err:
            raise ConfigError([str(err)], source=where) from err
    from .safety import check_names, non_finite_numbers

    bad = non_finite_numbers(data)
    if bad:
        raise ConfigError([f"{k}: got {v!r}, expected a finite number" for k, v in bad], source=where)
    cfg = validate_config(data, source=where)
    errors = check_names(cfg)
    if errors:
        raise ConfigError(errors, source=where)
    return cfg


def strategy_training(study: Mapping[str, Any], entry: Mapping[str, Any]) -> Dict[str, Any]:
    """The training settings of one strategy (study settings + its overrides)."""
    out = dict(study["training"])
    out.update(entry.get("training") or {})
    return out


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object (used to refuse resuming a changed run)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def strategy_fingerprint(config: Mapping[str, Any], study_name: str, strategy_name: str) -> str:
    """Hash of everything that determines one strategy's results."""
    study = config["studies"][study_name]
    return fingerprint(
        {
            "seed": config["seed"],
            "benchmark": study["benchmark"],
            "model": study["model"],
            # evaluation.metrics joined later: left out while empty, so older results still resume
            "evaluation": {k: v for k, v in study["evaluation"].items() if not (k == "metrics" and not v)},
            # precision keys joined later: left out at their defaults, so older results still resume
            "training": {
                k: v
                for k, v in strategy_training(study, study["strategies"][strategy_name]).items()
                if not ((k == "precision" and v == "fp32") or (k == "tf32" and v is True))
            },
            "strategy": study["strategies"][strategy_name],
        }
    )


def dump_yaml(config: Mapping[str, Any]) -> str:
    """The config as YAML text (keys in schema order)."""
    return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)


__all__ = [
    "ConfigError",
    "SCHEMA",
    "TRAINING",
    "MODEL",
    "BENCHMARK",
    "EVALUATION",
    "LOGGERS",
    "load_config",
    "validate_config",
    "apply_overrides",
    "parse_override",
    "normalize",
    "read_yaml",
    "resolve_config_source",
    "default_config_path",
    "packaged_recipes",
    "repo_recipes",
    "strategy_training",
    "resolve_data_path",
    "benchmark_problems",
    "fingerprint",
    "strategy_fingerprint",
    "dump_yaml",
]
