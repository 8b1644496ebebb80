"""A run killed mid-stream (SIGKILL) resumes and ends with the metrics of an uninterrupted run."""

import json
import os

import torch
import yaml
from safetensors.torch import load_file

from avalanche_mm.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = {
    "name": "resume",
    "seed": 3,
    "device": "cpu",
    "progress_bar": False,
    "checkpoints": {"keep": "last"},
    "studies": {
        "mtil": {
            "benchmark": {
                "name": "demo-mtil",
                "params": {
                    "world": {"seed": 0, "image_size": 32, "shapes": 4, "colours": 4, "textures": 2, "sizes": 2},
                    "tasks": [{"name": "colours", "target": "colour"}, {"name": "shapes", "target": "shape"}],
                    "train_per_class": 4,
                    "test_per_class": 3,
                    "reference_per_combination": 2,
                },
            },
            "model": {"kind": "clip", "backbone": "demo-clip", "pretrain": {"enabled": True, "iterations": 2, "batch_size": 16}},
            # 16 samples / batch 8 = 2 batches: 3 iterations span two epochs, so metrics are
            # logged in the middle of an experience (the kill leaves uncommitted lines behind)
            "training": {"iterations": 3, "batch_size": 8, "lr": 1e-3, "warmup": 1, "label_smoothing": 0.2},
            "evaluation": {"alignment": True, "probe_size": 8},
            "strategies": {"er": {"mem_size": 8}, "zscl": {"we_every": 2, "ref_batch_size": 4}},
        }
    },
}
DETERMINISTIC = lambda name: "Time" not in name and "Throughput" not in name  # noqa: E731


def _records(out, strategy):
    path = os.path.join(out, "mtil", strategy, "metrics.jsonl")
    return [(r["name"], r["x_plot"], r["value"]) for r in map(json.loads, open(path)) if DETERMINISTIC(r["name"])]


def _state(out, strategy):
    st = json.load(open(os.path.join(out, "mtil", strategy, "state.json")))
    return {k: st[k] for k in ("finished", "rows", "baseline", "unimodal", "scalars", "complete")}


def test_killed_run_resumes_to_identical_metrics(tmp_path, kill_at_hang):
    cfg_path = tmp_path / "resume.yaml"
    cfg_path.write_text(yaml.safe_dump(CFG, sort_keys=False))
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    assert main(["run", str(cfg_path), "--output", straight, "--no-report"]) == 0

    kill_at_hang(cfg_path, killed, "mtil/zscl/1/2")  # killed in the 2nd experience

    st = json.load(open(os.path.join(killed, "mtil", "zscl", "state.json")))
    assert st["finished"] == [0] and not st["complete"]
    assert _state(killed, "er")["complete"]
    jsonl = os.path.join(killed, "mtil", "zscl", "metrics.jsonl")
    assert os.path.getsize(jsonl) > st["committed"]["metrics.jsonl"]  # uncommitted lines to drop

    assert main(["run", str(cfg_path), "--output", killed]) == 0
    for strategy in ("er", "zscl"):
        assert _state(killed, strategy) == _state(straight, strategy), strategy
        assert _records(killed, strategy) == _records(straight, strategy), strategy
        a = load_file(os.path.join(straight, "mtil", strategy, "checkpoints", "exp_001.safetensors"))
        b = load_file(os.path.join(killed, "mtil", strategy, "checkpoints", "exp_001.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), strategy
    assert os.listdir(os.path.join(killed, "mtil", "zscl", "checkpoints")) == ["exp_001.safetensors"]  # keep: last
