"""The ``avalanche-mm`` console command.

``avalanche-mm run [CONFIG] [--set KEY=VALUE ...] [--output DIR] [--only NAME ...] [--fresh]``
    run a study (the built-in default when CONFIG is omitted); rerunning the
    same command resumes an interrupted run.
``avalanche-mm list [benchmarks|strategies|models|metrics|loggers|plugins|recipes|options|NAME]``
    what a config can name, with parameters and defaults; ``list NAME`` shows
    one entry's documentation.
``avalanche-mm report DIR``
    rebuild the summary, plots and report of a results folder.
``avalanche-mm check [CONFIG] [--set ...]``
    validate a config as ``run`` does before training (every problem at once),
    print it resolved, without training anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Optional, Sequence

LIST_WHAT = ("benchmarks", "strategies", "models", "metrics", "loggers", "plugins", "recipes", "options")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avalanche-mm", description="Multimodal continual learning studies on Avalanche.")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module that registers methods, benchmarks, models... (repeatable)")
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
    run.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                     help="train data-parallel on N processes of this machine, started by torchrun (see docs/scaling.md)")
    lst = sub.add_parser("list", help="list benchmarks, strategies, models, metrics, loggers, plugins, recipes or config options; or show one entry")
    lst.add_argument("what", nargs="?", default=None, metavar="WHAT|NAME",
                     help=", ".join(LIST_WHAT) + ", or the name of one entry (a method, benchmark, model, metric group, logger or recipe)")
    rep = sub.add_parser("report", help="rebuild the report of a results folder")
    rep.add_argument("folder")
    rep.add_argument("--no-plots", action="store_true", help="skip the plots")
    chk = sub.add_parser("check", help="validate a config as run does before training, and print it resolved")
    chk.add_argument("config", nargs="?", default=None)
    chk.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    chk.add_argument("--quiet", "-q", action="store_true", help="do not print the resolved config")
    return p


def _print_map(title: str, items) -> None:
    print(f"{title}:")
    width = max((len(k) for k in items), default=0)
    for k, v in items.items():
        print(f"  {k.ljust(width)}  {v}")
    print()


def _flags(item) -> str:
    flags = []
    if item.get("needs_data"):
        flags.append("needs data on disk")
    if item.get("needs_weights"):
        flags.append("needs pretrained weights")
    if item.get("reference_split"):
        flags.append("reference split")
    if item.get("model_kinds"):
        flags.append("models: " + "/".join(item["model_kinds"]))
    if item.get("distributed"):
        flags.append("DDP-safe")
    return f" [{'; '.join(flags)}]" if flags else ""


def _print_entries(title: str, items) -> None:
    print(f"{title}:")
    for item in items:
        print(f"  {item['name']}  - {item['summary']}{_flags(item)}")
        if item.get("logged"):
            print(f"      logs: {item['logged']}")
        for p in item["params"]:
            default = p["default"]
            print(f"      {p['name']} = {default!r}  ({p['expected']})" + (f"  {p['help']}" if p["help"] else ""))
    print()


def _recipes():
    from avalanche_mm.experiments.config import packaged_recipes, repo_recipes

    items = dict(packaged_recipes())
    items.update({k: v for k, v in repo_recipes().items() if k not in items})
    return items


def _show_entry(name: str) -> int:
    from avalanche_mm.catalog import find

    hits = find(name)
    recipes = _recipes()
    if not hits and name not in recipes:
        from avalanche_mm.catalog import KINDS, describe

        from avalanche_mm.experiments.config import ConfigError
        from avalanche_mm.schema import _suggest

        known = sorted({i["name"] for k in KINDS for i in describe(k)} | set(recipes))
        raise ConfigError([f"list: got {name!r}, expected one of {', '.join(LIST_WHAT)} or an entry name" + _suggest(name, known)])
    for item in hits:
        print(f"{item['name']} ({item['kind'][:-1]}, {item['source']}){_flags(item)}")
        print(f"  {item['summary']}")
        if item.get("reference"):
            print(f"  reference: {item['reference']}")
        if item.get("logged"):
            print(f"  logged: {item['logged']}")
        if item["params"]:
            print("  parameters:")
            for p in item["params"]:
                print(f"    {p['name']} = {p['default']!r}  ({p['expected']})" + (f"  {p['help']}" if p["help"] else ""))
        if item["doc"]:
            print()
            print("  " + item["doc"].replace("\n", "\n  "))
        print()
    if name in recipes:
        print(f"{name} (recipe, {recipes[name]}):")
        with open(recipes[name], encoding="utf-8") as fh:
            print(fh.read())
    return 0


def cmd_list(what: Optional[str]) -> int:
    from avalanche_mm.catalog import describe
    from avalanche_mm.experiments.config import SCHEMA
    from avalanche_mm.schema import describe as describe_schema

    if what is not None and what not in LIST_WHAT:
        return _show_entry(what)
    todo = [what] if what else [w for w in LIST_WHAT if w != "options"]
    for w in todo:
        if w == "benchmarks":
            _print_entries("benchmarks (benchmark.name; parameters in benchmark.params)", describe("benchmarks"))
        elif w == "strategies":
            _print_entries("strategies (strategies.<name>.method; parameters beside it)", describe("methods"))
        elif w == "models":
            _print_entries("models (model.backbone for kind clip, model.name for kind fusion; parameters in model.params)", describe("models"))
        elif w == "metrics":
            _print_entries("metric groups (core ones always; others in evaluation.metrics.<name>)", describe("metrics"))
        elif w == "loggers":
            _print_entries("loggers (loggers: [...])", describe("loggers"))
        elif w == "plugins":
            from avalanche_mm.strategies.registry import PLUGINS

            _print_map("plugins (plugins: [...]; entry-point group avalanche_mm.plugins)",
                       {e.name: e.meta.get("summary", "") for e in PLUGINS.entries()} or {"(none registered)": ""})
        elif w == "recipes":
            _print_map("recipes (avalanche-mm run <recipe>)", _recipes())
        elif w == "options":
            rows = describe_schema(SCHEMA)
            _print_map("config options (key: default - help)", {k: f"{d} - {h}" for k, d, h in rows})
    return 0


def _launch(args, argv: Sequence[str]) -> int:
    """``run --nproc-per-node N``: validate here, then start N processes through torchrun."""
    from avalanche_mm import distributed as D
    from avalanche_mm.experiments.config import ConfigError, load_config
    from avalanche_mm.experiments.launch import check_distributed, launch
    from avalanche_mm.experiments.runner import _select

    n = args.nproc_per_node
    cfg = load_config(args.config, overrides=args.overrides)
    try:
        D.check_launch(n, device=cfg["device"], backend=cfg["distributed"]["backend"],
                       threads_per_proc=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    except D.DistributedError as err:
        raise ConfigError([str(err)]) from err
    problems = check_distributed(cfg, world=n, selected=_select(cfg, args.only))
    if problems:
        raise ConfigError(problems)
    rest = list(argv)
    i = rest.index("--nproc-per-node") if "--nproc-per-node" in rest else None
    if i is not None:
        del rest[i: i + 2]
    else:
        rest = [a for a in rest if not a.startswith("--nproc-per-node=")]
    return launch(n, rest)


def cmd_run(args, argv: Sequence[str] = ()) -> int:
    from avalanche_mm import distributed as D
    from avalanche_mm.experiments import run_experiment

    if args.nproc_per_node is not None and not D.launched_by_torchrun():
        return _launch(args, argv)
    start = time.time()
    summary = run_experiment(
        args.config,
        output_dir=args.output,
        overrides=args.overrides,
        only=args.only,
        fresh=args.fresh,
        report=not args.no_report,
    )
    if D.is_main_process():
        print(f"done in {time.time() - start:.0f}s; results in {summary['output']}")
    return 0


def cmd_report(args) -> int:
    from avalanche_mm.experiments import ConfigError, build_report

    if not os.path.exists(os.path.join(args.folder, "config.yaml")):
        raise ConfigError([f"report: {args.folder!r} is not a results folder (no config.yaml); give the --output of a run"])
    build_report(args.folder, plots=False if args.no_plots else None)
    return 0


def cmd_check(args) -> int:
    from avalanche_mm.experiments.check import preflight
    from avalanche_mm.experiments.config import dump_yaml, load_config, resolve_config_source

    cfg = load_config(args.config, overrides=args.overrides)
    source = resolve_config_source(args.config)
    result = preflight(cfg, source=source)
    result.raise_problems()
    if not args.quiet:
        print(dump_yaml(cfg))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print("config OK: run will train with it", file=sys.stderr)
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
    from avalanche_mm.distributed import DistributedError
    from avalanche_mm.distributed import rank as _dist_rank
    from avalanche_mm.experiments.config import ConfigError

    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.imports:
            from avalanche_mm.registry import import_modules

            try:
                import_modules(args.imports, key="--import")
            except ImportError as err:
                raise ConfigError([str(err)]) from err
        if args.command == "run":
            return cmd_run(args, argv)
        if args.command == "list":
            return cmd_list(args.what)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "check":
            return cmd_check(args)
    except ConfigError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds it: say it once
            print(f"avalanche-mm: {err}", file=sys.stderr)
        return 2
    except _user_errors() as err:  # a locked, damaged or foreign results folder: the message says what to do
        print(f"avalanche-mm: {err}", file=sys.stderr)
        return 3
    except DistributedError as err:
        print(f"avalanche-mm: rank {_dist_rank()}: {err}", file=sys.stderr)
        return 1
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
