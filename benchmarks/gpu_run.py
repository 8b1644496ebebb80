"""The demo on a GPU: throughput, peak memory and the ratio to the CPU; ViT-B/16 iterations.

For a machine with a CUDA GPU (on a machine without one it says so and measures nothing).

1. The built-in demo's two studies (the tiny CLIP on the MTIL-style world: fine-tuning and ZSCL;
   the audio-visual fusion study: fine-tuning and ER) run through `avalanche-mm run` on the GPU
   (bf16 autocast, TF32) and on the CPU, from fresh results folders, repeats alternating the
   order. Both sides do the same work (same configs, seeds and steps), so the throughput ratio
   is the ratio of the strategies' own `train_seconds` (start-up, pretraining and evaluation
   excluded on both sides); GPU peak
   memory = `torch.cuda.max_memory_allocated` of the run (read from its environment record).
2. `benchmarks/real_size_cost.py --device cuda`: one fine-tuning and one ZSCL iteration (and a
   MoE-style frozen-backbone one) on CLIP ViT-B/16 at 224 px, bf16, with peak memory and the
   projected MTIL cost.

    python benchmarks/gpu_run.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def _config(device: str) -> dict:
    from avalanche_mm.experiments.config import default_config_path

    cfg = yaml.safe_load(open(default_config_path()))
    cfg.update({"device": device, "progress_bar": False, "loggers": [], "report": {"plots": False, "html": False}})
    cfg["studies"]["mtil"]["strategies"] = {k: v for k, v in cfg["studies"]["mtil"]["strategies"].items() if k in ("finetune", "zscl")}
    for study in cfg["studies"].values():
        study.setdefault("evaluation", {})["alignment"] = False
        if device.startswith("cuda"):
            study["training"]["precision"] = "bf16"
    return cfg


def _train_seconds(folder: str, cfg: dict) -> dict:
    """Training seconds per strategy (the same work on both devices: same configs, seeds, steps)."""
    return {
        f"{sname}/{stname}": sum(json.load(open(os.path.join(folder, sname, stname, "state.json")))["train_seconds"])
        for sname, study in cfg["studies"].items()
        for stname in study["strategies"]
    }


def _run(device: str, folder: str) -> dict:
    cfg = _config(device)
    path = os.path.join(folder, f"{device.replace(':', '_')}.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    out = os.path.join(folder, f"out-{device.replace(':', '_')}")
    code = (
        "import sys, json, torch; from avalanche_mm.experiments import run_experiment; "
        f"run_experiment({path!r}, output_dir={out!r}, fresh=True, report=False, log=lambda *a, **k: None); "
        "print(json.dumps({'peak': torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0}))"
    )
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak"]
    return {"peak": peak, "runs": _train_seconds(out, cfg)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device on this machine: nothing measured (run this script where a GPU is available)")
        return
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    tmp = tempfile.mkdtemp(prefix="gpu-run-")
    results = {"cuda": [], "cpu": []}
    for r in range(args.repeats):
        for dev in (("cuda", "cpu") if r % 2 == 0 else ("cpu", "cuda")):
            results[dev].append(_run(dev, tmp))
    for key in results["cuda"][0]["runs"]:
        thr = {}
        for dev in ("cuda", "cpu"):
            thr[dev] = [res["runs"][key] for res in results[dev]]
        ratio = [c / g for c, g in zip(thr["cpu"], thr["cuda"])]
        print(
            f"{key}: training seconds GPU median {statistics.median(thr['cuda']):.2f} (range {min(thr['cuda']):.2f}-{max(thr['cuda']):.2f}), "
            f"CPU median {statistics.median(thr['cpu']):.2f} (range {min(thr['cpu']):.2f}-{max(thr['cpu']):.2f}); "
            f"GPU/CPU throughput ratio median {statistics.median(ratio):.1f}x (range {min(ratio):.1f}-{max(ratio):.1f})"
        )
    peaks = [res["peak"] / 2**20 for res in results["cuda"]]
    print(f"GPU peak memory of the demo run: median {statistics.median(peaks):.0f} MiB (range {min(peaks):.0f}-{max(peaks):.0f})")
    print("ViT-B/16 iterations (benchmarks/real_size_cost.py --device cuda):", flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, "real_size_cost.py"), "--device", "cuda", "--batch", "64"], check=False)


if __name__ == "__main__":
    main()
