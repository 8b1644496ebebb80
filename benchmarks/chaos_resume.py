"""Chaos test of resume: kill a tiny run (SIGKILL) at N random moments, resume each time, compare.

A tiny two-study config (a CLIP study with ER and ZSCL, a fusion study with ER)
is run once without interruption. Then the same command is started in a
fresh folder and killed with SIGKILL after a random delay, N times, each time
resumed by rerunning the command (the last run is let finish). The final
state files and every deterministic metric record are compared with the
uninterrupted run; any difference, a resume error, or leftover temporary
files fail the script.

    python benchmarks/chaos_resume.py --kills 8 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = {
    "name": "chaos",
    "seed": 1,
    "device": "cpu",
    "progress_bar": False,
    "checkpoints": {"keep": "last"},
    "report": {"plots": False, "html": False},
    "studies": {
        "mtil": {
            "benchmark": {"name": "demo-mtil", "params": {
                "world": {"seed": 0, "image_size": 32, "shapes": 3, "colours": 3, "textures": 2, "sizes": 2},
                "tasks": [{"name": "colours", "target": "colour"}, {"name": "shapes", "target": "shape"}],
                "train_per_class": 3, "test_per_class": 2, "reference_per_combination": 2}},
            "model": {"kind": "clip", "backbone": "demo-clip", "pretrain": {"enabled": True, "iterations": 2, "batch_size": 8}},
            "training": {"iterations": 3, "batch_size": 4, "lr": 1e-3, "warmup": 1},
            "evaluation": {"alignment": False},
            "strategies": {"er": {"mem_size": 4}, "zscl": {"we_every": 2, "ref_batch_size": 4}, "lwf": {}},
        },
        "av": {
            "benchmark": {"name": "demo-av", "params": {"world": {"seed": 1, "image_size": 8}, "num_classes": 6,
                                                         "num_experiences": 3, "train_per_class": 4, "test_per_class": 2}},
            "model": {"kind": "fusion", "name": "fusion", "params": {"hidden": 8, "conv_channels": [4]}, "freeze": []},
            "training": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "scheduler": "constant"},
            "evaluation": {"initial": False},
            "strategies": {"er": {"mem_size": 4}, "finetune": {}},
        },
    },
}


def _cmd(cfg_path, out):
    return [sys.executable, "-m", "avalanche_mm.cli", "run", cfg_path, "--output", out, "--no-report"]


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _snapshot(out):
    snap = {}
    for study, strategies in ((s, CFG["studies"][s]["strategies"]) for s in CFG["studies"]):
        for st in strategies:
            folder = os.path.join(out, study, st)
            state = json.load(open(os.path.join(folder, "state.json")))
            recs = [(r["name"], r["x_plot"], r["value"]) for r in map(json.loads, open(os.path.join(folder, "metrics.jsonl")))
                    if "Time" not in r["name"] and "Throughput" not in r["name"]]
            snap[f"{study}/{st}"] = ({k: state[k] for k in ("finished", "rows", "baseline", "scalars", "complete")}, recs)
    return snap


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=8, help="N: how many times the run is killed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", default=None, help="folder to keep the runs in (default: a temporary one)")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    work = args.keep or tempfile.mkdtemp(prefix="chaos-")
    os.makedirs(work, exist_ok=True)
    cfg_path = os.path.join(work, "chaos.yaml")
    with open(cfg_path, "w") as fh:
        yaml.safe_dump(CFG, fh, sort_keys=False)
    env = _env()
    env["AVALANCHE_MM_CACHE"] = os.path.join(work, "cache")
    straight, chaos = os.path.join(work, "straight"), os.path.join(work, "chaos")
    t0 = time.time()
    subprocess.run(_cmd(cfg_path, straight), env=env, check=True, capture_output=True)
    full = time.time() - t0
    kills, resumed_errors = 0, []
    while kills < args.kills:
        proc = subprocess.Popen(_cmd(cfg_path, chaos), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        delay = rng.uniform(0.5, max(1.0, full))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            print(f"kill {kills}/{args.kills} after {delay:.1f}s", flush=True)
        err = proc.stderr.read().decode()
        proc.stderr.close()
        if proc.returncode not in (0, -signal.SIGKILL):
            resumed_errors.append(err[-2000:])
            break
        if proc.returncode == 0:  # finished before the kill: start over to keep killing
            if kills < args.kills:
                subprocess.run(["rm", "-rf", chaos], check=True)
    final = subprocess.run(_cmd(cfg_path, chaos), env=env, capture_output=True, text=True)
    if final.returncode != 0:
        resumed_errors.append(final.stderr[-2000:])
    tmp_left = [os.path.join(r, f) for r, _, fs in os.walk(chaos) for f in fs if f.endswith(".tmp")]
    same = not resumed_errors and _snapshot(chaos) == _snapshot(straight)
    print(f"chaos: N={kills} SIGKILLs at random moments (seed {args.seed}), uninterrupted run {full:.1f}s; "
          f"final metrics identical to the uninterrupted run: {'yes' if same else 'NO'}; "
          f"resume errors: {len(resumed_errors)}; leftover .tmp files: {len(tmp_left)}")
    for e in resumed_errors:
        print(e)
    return 0 if same and not tmp_left else 1


if __name__ == "__main__":
    sys.exit(main())
