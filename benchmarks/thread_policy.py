"""OpenMP thread settings on the demo recipe: idle machine vs. a busy one.

Each run trains the demo recipe's fine-tuning and ZSCL (``benchmarks/zscl_cost.py``'s
setting: ``demo-clip``, batch 32, 2 tasks x ``--iterations``) in a fresh interpreter (the
OpenMP runtime reads its settings once, when torch loads it) under one of:

- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (what ``import avalanche_mm`` before torch and the
  ``avalanche-mm`` command set): worker threads sleep between parallel regions;
- ``spin``: the variable unset (libgomp's default: spin about 300,000 rounds, then sleep);
- ``spin1k``: ``GOMP_SPINCOUNT=1000`` (a short spin, then sleep);
- ``threads1``: ``OMP_NUM_THREADS=1`` (no worker threads to wait for);

beside ``--load`` busy processes (0: an idle machine). Settings alternate per repeat; the
script prints, one line per setting and figure, the median and range of the per-iteration
times and of the ZSCL / fine-tune ratio.

    python benchmarks/thread_policy.py --repeats 3 --load 0
    python benchmarks/thread_policy.py --repeats 3 --load 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from busy_machine import LOAD  # a bounded busy process (this script's folder is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin": {},
    "spin1k": {"GOMP_SPINCOUNT": "1000"},
    "threads1": {"OMP_NUM_THREADS": "1"},
}

ARM = r"""
import sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
import torch
import zscl_cost as zc
torch.set_flush_denormal(True)
iterations = int(sys.argv[2])
bundle, model = zc.demo_setup()
zc.run(bundle, model, "finetune", 5, 32, 1)  # warm-up
ms = [zc.run(bundle, model, which, iterations, 32, 2)["wall"] * 1e3 for which in ("finetune", "zscl")]
print(torch.get_num_threads(), *ms)
"""



def run_once(setting: str, iterations: int, load: int, max_seconds: float):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    env.update(SETTINGS[setting])
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    hogs = [subprocess.Popen([sys.executable, "-c", LOAD, str(max_seconds)]) for _ in range(load)]
    try:
        out = subprocess.run([sys.executable, "-c", ARM, os.path.join(ROOT, "benchmarks"), str(iterations)],
                             env=env, capture_output=True, text=True, timeout=max_seconds, check=True)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    threads, ft, zscl = out.stdout.strip().splitlines()[-1].split()
    return int(threads), float(ft), float(zscl)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--load", type=int, default=0, help="busy processes beside each run (0: idle)")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from " + ", ".join(SETTINGS))
    p.add_argument("--max-seconds", type=float, default=300.0, help="bound of one run (and of the load)")
    args = p.parse_args(argv)
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown or not names:
        p.error(f"--settings: unknown {unknown or names}; choose from {', '.join(SETTINGS)}")
    res = {s: [] for s in names}
    for r in range(args.repeats):
        for s in (names if r % 2 == 0 else names[::-1]):
            res[s].append(run_once(s, args.iterations, args.load, args.max_seconds))

    def fig(label, xs, unit=""):
        print(f"{label}: median {statistics.median(xs):.2f}{unit} (range {min(xs):.2f}-{max(xs):.2f}, "
              f"{len(xs)} interleaved repeats)")

    print(f"# demo recipe, 2 tasks x {args.iterations} iterations, {os.cpu_count()} CPUs, "
          f"{args.load} busy process(es) beside each run")
    for s in names:
        threads = res[s][0][0]
        fig(f"{s} (torch threads {threads}) fine-tune iteration", [x[1] for x in res[s]], " ms")
        fig(f"{s} (torch threads {threads}) ZSCL iteration", [x[2] for x in res[s]], " ms")
        fig(f"{s} (torch threads {threads}) ZSCL / fine-tune ratio", [x[2] / x[1] for x in res[s]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
