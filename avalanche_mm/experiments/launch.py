"""Start a run on several processes through PyTorch's own launcher (torchrun).

``avalanche-mm run CONFIG --nproc-per-node N`` validates the config and the
distributed settings in the calling process (so a bad setting fails before
any process trains), then hands the command to ``torch.distributed.run`` -
the same code path as::

    torchrun --standalone --nproc_per_node N -m avalanche_mm run CONFIG ...

Each worker runs ``avalanche-mm run`` and joins the process group
(:func:`avalanche_mm.distributed.init_from_env`). For several nodes, call
torchrun directly with its rendezvous flags (``--nnodes``, ``--node_rank``,
``--rdzv_endpoint``; see docs/scaling.md).

If a rank dies, torchrun stops the others and this returns a non-zero code
with a message naming the failed rank; if a rank hangs, the others leave the
collective after ``distributed.timeout`` seconds. Either way the results
folder resumes with the same command.
"""

from __future__ import annotations

import os
import sys
from typing import List, Mapping, Optional, Sequence

from avalanche_mm import distributed as D


def check_distributed(cfg: Mapping, *, world: int, selected: Optional[Sequence] = None, key_prefix: str = "") -> List[str]:
    """Every problem with running ``cfg`` on ``world`` processes (before any process starts).

    Checks that each selected strategy's method is DDP-safe, that the global
    batch sizes split evenly over the ranks, and that every training
    experience has at least one sample per rank (when the benchmark is cheap
    to build, the runner checks this again on the built scenario).
    """
    from avalanche_mm.strategies.registry import METHODS

    problems: List[str] = []
    if world <= 1:
        return problems
    pairs = selected if selected is not None else [(s, st) for s, study in cfg["studies"].items() for st in study["strategies"]]
    for sname, stname in pairs:
        study = cfg["studies"][sname]
        entry = study["strategies"][stname]
        key = f"studies.{sname}.strategies.{stname}"
        spec = METHODS[entry["method"]]
        if not getattr(spec, "distributed", False):
            safe = sorted(n for n, s in METHODS.items() if getattr(s, "distributed", False))
            problems.append(
                f"{key}.method: {entry['method']!r} is not DDP-safe yet (it keeps state computed from rank-local "
                f"data); run it with one process, or use one of: {', '.join(safe)}"
            )
        training = {**study["training"], **(entry.get("training") or {})}
        for what in ("batch_size",):
            value = training[what]
            if value % world or value < world:
                problems.append(
                    f"{key}.training.{what}: got {value}, which cannot be split evenly over {world} processes; "
                    f"use a multiple of {world} (it is the global batch; each process takes {what}/{world})"
                )
        mem_bs = entry.get("batch_size_mem")
        if isinstance(mem_bs, int) and mem_bs % world:
            problems.append(f"{key}.batch_size_mem: got {mem_bs}, expected a multiple of {world} (the global replay batch)")
    return problems


def check_scenario(bundle, *, world: int, study: str) -> List[str]:
    """Training experiences with fewer samples than ranks cannot be sharded."""
    out = []
    if world <= 1:
        return out
    for k, exp in enumerate(bundle.scenario.train_stream):
        n = len(exp.dataset)
        if n < world:
            out.append(
                f"studies.{study}.benchmark: training experience {k} has {n} sample(s), fewer than the {world} "
                "processes; use fewer processes or a larger experience"
            )
    return out


def torchrun_args(nproc: int, argv: Sequence[str]) -> List[str]:
    """torchrun's arguments for ``avalanche-mm <argv>`` on ``nproc`` local processes."""
    return ["--standalone", "--nproc_per_node", str(nproc), "--max_restarts", "0", "-m", "avalanche_mm", *argv]


def launch(nproc: int, argv: Sequence[str], *, log=lambda m: print(m, file=sys.stderr)) -> int:
    """Run ``avalanche-mm <argv>`` on ``nproc`` processes of this node; return the exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process unless the user says otherwise
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = parse_args(torchrun_args(nproc, argv))
    try:
        run(args)
    except ChildFailedError as err:
        failures = getattr(err, "failures", {}) or {}
        lines = []
        for local_rank, failure in sorted(failures.items()):
            code = getattr(failure, "exitcode", "?")
            msg = ""
            data = getattr(failure, "error_file_data", None) or {}
            if isinstance(data, Mapping):
                msg = str((data.get("message") or {}).get("message", "") if isinstance(data.get("message"), Mapping) else data.get("message", ""))
            msg = "" if msg.strip() in ("", "<NONE>") else msg.strip().splitlines()[0]
            lines.append(f"rank {local_rank} exited with code {code}" + (f" ({msg})" if msg else ""))
        log(
            "avalanche-mm: the distributed run failed ("
            + "; ".join(lines or [str(err).splitlines()[0]])
            + "); the other ranks were stopped. Rerun the same command to resume from the last finished experience."
        )
        return 1
    return 0


__all__ = ["check_distributed", "check_scenario", "torchrun_args", "launch"]
