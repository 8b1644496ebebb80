"""A library user's training loop beside a parallel CPU load: does OpenMP spin-waiting cripple it?

Each repeat runs the same small training loop (an MLP, fixed steps) in a fresh
interpreter, beside ``--load`` busy processes (bounded: they stop by
themselves after the run), under three settings, interleaved:

- ``torch-first``: the user's script imports torch before avalanche_mm
  (OpenMP's default wait policy: spinning),
- ``mm-first``: ``import avalanche_mm`` first (it sets OMP_WAIT_POLICY=PASSIVE
  before torch loads the OpenMP runtime),
- ``limit-threads``: torch first, then ``avalanche_mm.limit_threads()``.

Prints one line per setting: median seconds and range over the repeats,
and the ratio to ``mm-first``.

    python benchmarks/busy_machine.py --repeats 3 --load 2 --steps 150
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = r"""
import os, sys, time
mode, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode == "mm-first":
    import avalanche_mm
    import torch
else:
    import torch
    import avalanche_mm
    if mode == "limit-threads":
        avalanche_mm.limit_threads()
if mode != "limit-threads":
    torch.set_num_threads(threads)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
t0 = time.perf_counter()
for _ in range(steps):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    # small sequential work between parallel regions, as in a real loop (logging, metrics)
    sum(range(2000))
print(time.perf_counter() - t0)
"""

LOAD = "import time\nend = time.time() + float(__import__('sys').argv[1])\nwhile time.time() < end:\n    pass\n"


def run_once(mode: str, steps: int, threads: int, load: int, max_seconds: float) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    hogs = [subprocess.Popen([sys.executable, "-c", LOAD, str(max_seconds)]) for _ in range(load)]
    try:
        out = subprocess.run(
            [sys.executable, "-c", TRAIN, mode, str(steps), str(threads)],
            env=env, capture_output=True, text=True, timeout=max_seconds, check=True,
        )
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes beside the run")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads of the user's script")
    p.add_argument("--max-seconds", type=float, default=120.0, help="bound of one run (and of the load)")
    args = p.parse_args(argv)
    modes = ["torch-first", "mm-first", "limit-threads"]
    times = {m: [] for m in modes}
    for r in range(args.repeats):
        for m in (modes if r % 2 == 0 else modes[::-1]):  # interleaved, alternating order
            times[m].append(run_once(m, args.steps, args.threads, args.load, args.max_seconds))
    ref = statistics.median(times["mm-first"])
    print(f"busy machine: {args.load} busy processes, {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"{args.steps} steps, {args.repeats} interleaved repeats")
    for m in modes:
        med = statistics.median(times[m])
        print(f"{m:14s} median {med:7.2f}s  range {min(times[m]):.2f}-{max(times[m]):.2f}s  ratio to mm-first {med / ref:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
