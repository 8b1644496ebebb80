"""Training throughput of 2 processes x 1 thread against 1 process x 1 thread (fusion study).

Both sides run the same `avalanche-mm run` on the same config (an audio-visual fusion study on
the procedural world, fine-tuning, the same global batch), from a fresh results folder:

- baseline: one process, one thread (`OMP_NUM_THREADS=1`), as a user runs it;
- data parallel: `avalanche-mm run --nproc-per-node 2` (torchrun, gloo, one thread each).

Throughput = training samples of the whole stream / training seconds (the strategy's own
`train_seconds`, so start-up and evaluation are excluded on both sides; evaluation is
replicated on every rank). Repeats alternate the order (ABBA ...); median and range printed,
one line per figure.

    python benchmarks/ddp_throughput.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import yaml

CONFIG = {
    "name": "ddp-throughput",
    "seed": 0,
    "device": "cpu",
    "progress_bar": False,
    "loggers": [],
    "checkpoints": {"keep": "last"},
    "studies": {
        "av": {
            "benchmark": {
                "name": "demo-av",
                "params": {
                    "world": {"seed": 1, "image_size": 32, "noise": {"image": 0.4, "audio": 0.1}},
                    "num_classes": 8,
                    "num_experiences": 2,
                    "train_per_class": 64,
                    "test_per_class": 8,
                    "modalities": ["image", "audio"],
                },
            },
            "model": {"kind": "fusion", "name": "fusion", "params": {"fusion": "concat", "hidden": 256, "conv_channels": [32, 64]}, "freeze": []},
            "training": {"epochs": 2, "batch_size": 128, "eval_batch_size": 256, "lr": 2.0e-3, "scheduler": "constant"},
            "evaluation": {"initial": False, "per_modality": False},
            "strategies": {"finetune": {}},
        }
    },
    "report": {"plots": False, "html": False},
}


def _run(nproc: int, cfg_path: str, out: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "avalanche_mm", "run", cfg_path, "--output", out, "--fresh", "--no-report"]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = json.load(open(os.path.join(out, "av", "finetune", "state.json")))
    seconds = sum(state["train_seconds"])
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ddp-bench-")
    cfg_path = os.path.join(tmp, "study.yaml")
    with open(cfg_path, "w") as fh:
        yaml.safe_dump(CONFIG, fh)
    p = CONFIG["studies"]["av"]["benchmark"]["params"]
    samples = p["num_classes"] * p["train_per_class"] * CONFIG["studies"]["av"]["training"]["epochs"]
    times = {1: [], 2: []}
    for r in range(args.repeats):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        for n in order:
            times[n].append(_run(n, cfg_path, os.path.join(tmp, f"out-{n}")))
    thr = {n: [samples / t for t in ts] for n, ts in times.items()}
    for n in (1, 2):
        v = thr[n]
        print(f"throughput {n} process(es) x 1 thread: median {statistics.median(v):.0f} samples/s (range {min(v):.0f}-{max(v):.0f}, {len(v)} runs)")
    ratios = [b / a for a, b in zip(thr[1], thr[2])]
    print(f"ratio 2x1 / 1x1: median {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}; target >= 1.6)")


if __name__ == "__main__":
    main()
