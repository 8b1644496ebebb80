"""Training and evaluation throughput of 2 processes x 1 thread against 1 process x 1 thread
(fusion study).

Every side runs the same `avalanche-mm run` on the same config (an audio-visual fusion study on
the procedural world, fine-tuning, the same global batch, per-modality metrics on), from a fresh
results folder:

- baseline: one process, one thread (`OMP_NUM_THREADS=1`), as a user runs it;
- data parallel: `avalanche-mm run --nproc-per-node 2` (torchrun, gloo, one thread each), with
  sharded evaluation (`distributed.eval: sharded`, the default);
- data parallel with `distributed.eval: replicated` (every rank evaluates the whole test stream),
  the evaluation reference.

Training throughput = training samples of the whole stream / training seconds (the strategy's
own `train_seconds`: start-up and evaluation excluded). Evaluation throughput = test samples
evaluated (the whole test stream after each experience) / evaluation seconds (`eval_seconds`,
rank 0's wall time of `strategy.eval`, the per-modality ablation passes included). Repeats
rotate the order of the three sides; median and range printed, one line per figure.

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
                    "test_per_class": 48,
                    "modalities": ["image", "audio"],
                },
            },
            "model": {"kind": "fusion", "name": "fusion", "params": {"fusion": "concat", "hidden": 256, "conv_channels": [32, 64]}, "freeze": []},
            "training": {"epochs": 2, "batch_size": 128, "eval_batch_size": 256, "lr": 2.0e-3, "scheduler": "constant"},
            "evaluation": {"initial": False, "per_modality": True},
            "strategies": {"finetune": {}},
        }
    },
    "report": {"plots": False, "html": False},
}


def _run(nproc: int, cfg_path: str, out: str, eval_mode: str = "sharded"):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "avalanche_mm", "run", cfg_path, "--output", out, "--fresh", "--no-report",
           "--set", f"distributed.eval={eval_mode}"]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = json.load(open(os.path.join(out, "av", "finetune", "state.json")))
    return sum(state["train_seconds"]), sum(state["eval_seconds"])


def _line(what: str, v) -> str:
    return f"{what}: median {statistics.median(v):.0f} samples/s (range {min(v):.0f}-{max(v):.0f}, {len(v)} runs)"


def _ratio(what: str, a, b, target: str = "") -> str:
    r = [y / x for x, y in zip(a, b)]
    return f"{what}: median {statistics.median(r):.2f} (range {min(r):.2f}-{max(r):.2f}{target})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ddp-bench-")
    cfg_path = os.path.join(tmp, "study.yaml")
    with open(cfg_path, "w") as fh:
        yaml.safe_dump(CONFIG, fh)
    p = CONFIG["studies"]["av"]["benchmark"]["params"]
    epochs = CONFIG["studies"]["av"]["training"]["epochs"]
    samples = p["num_classes"] * p["train_per_class"] * epochs
    # the whole test stream is evaluated after each of the num_experiences experiences
    eval_samples = p["num_classes"] * p["test_per_class"] * p["num_experiences"]
    sides = [(1, "sharded"), (2, "sharded"), (2, "replicated")]  # 1 process: the mode has no effect
    train = {s: [] for s in sides}
    evals = {s: [] for s in sides}
    for r in range(args.repeats):
        order = sides[r % len(sides):] + sides[: r % len(sides)]
        for side in order:
            t, e = _run(side[0], cfg_path, os.path.join(tmp, f"out-{side[0]}-{side[1]}"), side[1])
            train[side].append(samples / t)
            evals[side].append(eval_samples / e)
    one, two, rep = sides
    print(_line("training throughput 1 process x 1 thread", train[one]))
    print(_line("training throughput 2 processes x 1 thread", train[two]))
    print(_ratio("training ratio 2x1 / 1x1", train[one], train[two], "; target >= 1.6"))
    print(_line("evaluation throughput 1 process x 1 thread", evals[one]))
    print(_line("evaluation throughput 2 processes x 1 thread, sharded", evals[two]))
    print(_line("evaluation throughput 2 processes x 1 thread, replicated", evals[rep]))
    print(_ratio("evaluation ratio 2x1 sharded / 1x1", evals[one], evals[two]))
    print(_ratio("evaluation ratio 2x1 replicated / 1x1", evals[one], evals[rep]))


if __name__ == "__main__":
    main()
