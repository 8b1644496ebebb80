"""The ``avalanche-mm`` console command.

``avalanche-mm run [CONFIG] [--set KEY=VALUE ...] [--output DIR] [--only NAME ...] [--fresh]``
    run a study (the built-in default when CONFIG is omitted); rerunning the
    same command resumes an interrupted run.
``avalanche-mm list [benchmarks|strategies|models|metrics|recipes|options]``
    what a config can name.
``avalanche-mm report DIR``
    rebuild the summary, plots and report of a results folder.
``avalanche-mm check [CONFIG] [--set ...]``
    validate a config and print it resolved, without running anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Optional, Sequence

LIST_WHAT = ("benchmarks", "strategies", "models", "metrics", "recipes", "options")

#: the metrics the main job records (name -> what it measures)
METRICS = {
    "Top1_Acc_Exp / Top1_Acc_Stream": "accuracy per test experience / over the test stream (Avalanche)",
    "AccMatrix_* / MTIL_Transfer/Avg/Last": "accuracy matrix a(t,i) summaries: average, forgetting, BWT, FWT, MTIL Transfer/Avg/Last",
    "Loss_Epoch / Loss_Stream": "training and evaluation loss (Avalanche)",
    "TrainingTime": "wall time of training and evaluation",
    "UnimodalAcc_<m> / FusedAcc": "accuracy of each modality alone beside the fused accuracy (evaluation.per_modality)",
    "ModalityContribution_<m>": "accuracy lost when modality m is removed (evaluation.per_modality)",
    "ModalityImbalanceIndex": "0 = modalities contribute equally, 1 = one modality does all the work (evaluation.per_modality)",
    "UnimodalForgetting_<m>": "forgetting of each modality alone (evaluation.per_modality)",
    "OGMGE_Ratio_<m>": "OGM-GE discrepancy ratio during training (fusion models)",
    "Align_* / Retrieval_*": "modality gap, positive-pair cosine, probe retrieval recall (evaluation.alignment)",
    "Drift_*": "drift between consecutive model versions on the probe set (evaluation.alignment)",
    "DriftFromInit_*": "drift from the pretrained model on the probe set: KL, argmax agreement, rotations (evaluation.alignment)",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avalanche-mm", description="Multimodal continual learning studies on Avalanche.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run a study from a config (default: the built-in demo)")
    run.add_argument("config", nargs="?", default=None, help="YAML file or recipe name (avalanche-mm list recipes)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set studies.mtil.training.iterations=50 (repeatable)")
    run.add_argument("--output", "-o", default=None, help="results folder (default: results/<name>)")
    run.add_argument("--only", action="append", default=None, metavar="STRATEGY",
                     help="run only this strategy (name or study/name; repeatable)")
    run.add_argument("--fresh", action="store_true", help="delete the results folder first instead of resuming")
    run.add_argument("--no-report", action="store_true", help="skip the report at the end")
    lst = sub.add_parser("list", help="list benchmarks, strategies, models, metrics, recipes or config options")
    lst.add_argument("what", nargs="?", default=None, choices=LIST_WHAT)
    rep = sub.add_parser("report", help="rebuild the report of a results folder")
    rep.add_argument("folder")
    rep.add_argument("--no-plots", action="store_true", help="skip the plots")
    chk = sub.add_parser("check", help="validate a config and print it resolved")
    chk.add_argument("config", nargs="?", default=None)
    chk.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def _print_map(title: str, items) -> None:
    print(f"{title}:")
    width = max((len(k) for k in items), default=0)
    for k, v in items.items():
        print(f"  {k.ljust(width)}  {v}")
    print()


def cmd_list(what: Optional[str]) -> int:
    from avalanche_mm.experiments import METHODS, list_benchmarks, list_models
    from avalanche_mm.experiments.config import SCHEMA, packaged_recipes, repo_recipes
    from avalanche_mm.schema import describe

    todo = [what] if what else list(LIST_WHAT[:-1])
    for w in todo:
        if w == "benchmarks":
            items = {}
            for k, v in list_benchmarks().items():
                items[k] = getattr(v, "description", v)
            _print_map("benchmarks (benchmark.name)", items)
        elif w == "strategies":
            items = {}
            for name, spec in METHODS.items():
                params = ", ".join(f"{k}={o.default!r}" for k, o in spec.params.items())
                kinds = "/".join(spec.model_kinds)
                items[name] = f"{spec.summary} [{kinds}]" + (f"; params: {params}" if params else "")
            _print_map("strategies (strategies.<name>.method)", items)
        elif w == "models":
            _print_map("models (model.backbone for kind clip, model.name for kind fusion)", list_models())
        elif w == "metrics":
            _print_map("metrics recorded in metrics.jsonl", METRICS)
        elif w == "recipes":
            items = {f"{k}": v for k, v in packaged_recipes().items()}
            items.update({f"{k}": v for k, v in repo_recipes().items()})
            _print_map("recipes (avalanche-mm run <recipe>)", items)
        elif w == "options":
            rows = describe(SCHEMA)
            _print_map("config options (key: default - help)", {k: f"{d} - {h}" for k, d, h in rows})
    return 0


def cmd_run(args) -> int:
    from avalanche_mm.experiments import run_experiment

    start = time.time()
    summary = run_experiment(
        args.config,
        output_dir=args.output,
        overrides=args.overrides,
        only=args.only,
        fresh=args.fresh,
        report=not args.no_report,
    )
    print(f"done in {time.time() - start:.0f}s; results in {summary['output']}")
    return 0


def cmd_report(args) -> int:
    from avalanche_mm.experiments import ConfigError, build_report

    if not os.path.exists(os.path.join(args.folder, "config.yaml")):
        raise ConfigError([f"report: {args.folder!r} is not a results folder (no config.yaml); give the --output of a run"])
    build_report(args.folder, plots=False if args.no_plots else None)
    return 0


def cmd_check(args) -> int:
    from avalanche_mm.experiments.config import dump_yaml, load_config

    cfg = load_config(args.config, overrides=args.overrides)
    print(dump_yaml(cfg))
    print("config OK", file=sys.stderr)
    return 0


def _user_errors() -> tuple:
    from avalanche_mm.experiments.checkpoint import CheckpointError
    from avalanche_mm.experiments.lock import LockError
    from avalanche_mm.experiments.state import RecordError

    return (LockError, RecordError, CheckpointError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``avalanche-mm`` command; returns the exit status."""
    # under CPU contention OpenMP threads that spin-wait burn the cores they share
    # (10x slower steps measured on a busy 2-core machine); wait passively instead
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Avalanche 0.6's own ReplayPlugin calls its deprecated storage-policy API every experience
    warnings.filterwarnings("ignore", message="Call to deprecated function update", category=DeprecationWarning)
    from avalanche_mm.experiments.config import ConfigError

    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "list":
            return cmd_list(args.what)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "check":
            return cmd_check(args)
    except ConfigError as err:
        print(f"avalanche-mm: {err}", file=sys.stderr)
        return 2
    except _user_errors() as err:  # a locked, damaged or foreign results folder: the message says what to do
        print(f"avalanche-mm: {err}", file=sys.stderr)
        return 3
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
