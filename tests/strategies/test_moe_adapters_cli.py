"""`avalanche-mm run` with moe-adapters on a tiny config: killed mid-stream, resumed, identical."""

import json
import os

import torch
import yaml

from avalanche_mm.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = {
    "name": "moe",
    "seed": 1,
    "device": "cpu",
    "progress_bar": False,
    "checkpoints": {"keep": "last"},
    "studies": {
        "mtil": {
            "benchmark": {
                "name": "demo-mtil",
                "params": {
                    "world": {"seed": 0, "image_size": 32, "shapes": 4, "colours": 4, "textures": 2, "sizes": 2,
                              "num_domains": 2},
                    "tasks": [{"name": "colours", "target": "colour"},
                              {"name": "shapes", "target": "shape", "domain": 1}],
                    "train_per_class": 4,
                    "test_per_class": 3,
                    "reference_per_combination": 1,
                },
            },
            "model": {"kind": "clip", "backbone": "tiny-openclip"},
            "training": {"iterations": 3, "batch_size": 8, "lr": 1e-2, "warmup": 1},
            "evaluation": {"alignment": False, "metrics": {"parameters": {}}},
            "strategies": {"moe": {"method": "moe-adapters", "num_experts": 3, "bottleneck": 4,
                                   "ddas_iterations": 4, "ddas_reference_iterations": 4, "ddas_threshold": None,
                                   "ddas_granularity": "sample"}},
        }
    },
}
STABLE = lambda name: "Time" not in name and "Throughput" not in name  # noqa: E731


def _records(out):
    path = os.path.join(out, "mtil", "moe", "metrics.jsonl")
    return [(r["name"], r["x_plot"], r["value"]) for r in map(json.loads, open(path)) if STABLE(r["name"])]


def _state(out):
    st = json.load(open(os.path.join(out, "mtil", "moe", "state.json")))
    return {k: st[k] for k in ("finished", "rows", "baseline", "scalars", "complete")}


def test_cli_run_killed_and_resumed_matches_straight_run(tmp_path, kill_at_hang):
    cfg_path = tmp_path / "moe.yaml"
    cfg_path.write_text(yaml.safe_dump(CFG, sort_keys=False))
    assert main(["check", str(cfg_path)]) == 0
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    assert main(["run", str(cfg_path), "--output", straight, "--no-report"]) == 0
    names = {r[0].split("/")[0] for r in _records(straight)}
    assert {"DDAS_ZeroShot_Exp", "DDAS_Task0_Exp", "Params_Trainable_Exp", "Params_TrainableCumulative_Exp"} <= names

    kill_at_hang(cfg_path, killed, "mtil/moe/1/1")  # killed in the 2nd experience
    assert json.load(open(os.path.join(killed, "mtil", "moe", "state.json")))["finished"] == [0]

    assert main(["run", str(cfg_path), "--output", killed, "--no-report"]) == 0
    assert _state(killed) == _state(straight)
    assert _records(killed) == _records(straight)
    from avalanche_mm.experiments.checkpoint import load_entry

    a = {"model": load_entry(os.path.join(straight, "mtil", "moe", "checkpoints", "exp_001.safetensors"), "model")}
    b = {"model": load_entry(os.path.join(killed, "mtil", "moe", "checkpoints", "exp_001.safetensors"), "model")}
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert any("moe_adapters" in k and "expert_frozen" in k for k in a["model"])
