"""End to end: `avalanche-mm run` on a tiny pair benchmark with Mod-X, CTP and the baseline,
resume included, and `avalanche-mm check` refusing what the pair methods cannot use."""

import json
import os

import pytest
import yaml

from avalanche_mm.cli import main

BENCH = {"name": "world-retrieval-stream",
         "params": {"num_phases": 2, "pairs_per_combination": 2, "reference_per_combination": 2,
                    "shapes": 3, "colours": 3, "textures": 2, "sizes": 2, "heldout_classes": 4, "heldout_per_class": 2}}
TINY = {
    "name": "tiny-pairs",
    "seed": 0,
    "device": "cpu",
    "progress_bar": False,
    "loggers": ["text"],
    "checkpoints": {"keep": "all"},
    "studies": {
        "pairs": {
            "benchmark": BENCH,
            "model": {"kind": "clip", "backbone": "demo-clip", "freeze": ["logit_scale"],
                      "pretrain": {"enabled": True, "iterations": 2, "batch_size": 16}},
            "training": {"iterations": 2, "batch_size": 8, "lr": 1e-4, "warmup": 0},
            "evaluation": {"alignment": True, "probe_size": 64},
            "strategies": {
                "finetune": {"method": "contrastive-finetune"},
                "modx": {"method": "mod-x"},
                "ctp": {"method": "ctp", "queue_size": 8},
            },
        },
    },
}


def write(folder, cfg):
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


def _state(out, name):
    with open(os.path.join(out, "pairs", name, "state.json")) as fh:
        return json.load(fh)


def test_run_each_pair_method_and_resume(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["run", write(str(tmp_path), TINY), "--output", out]) == 0
    text = capsys.readouterr().out
    assert "retrieval as a stream" in text and "Phenomena" in text
    for name in ("finetune", "modx", "ctp"):
        st = _state(out, name)
        assert st["complete"] and len(st["rows"]) == 2
        last = st["scalars"][-1]
        for key in ("RetrievalR1_FirstPhase", "RetrievalR1_Forgetting", "RetrievalMatrix_t2i_R10_Phase001",
                    "ZeroShotHeldOut_Acc", "DriftFromInit_rotation_image"):
            assert key in last, (name, key)
    with open(os.path.join(out, "report.md")) as fh:
        assert "text-to-image R@1 matrix" in fh.read()
    # resume: forget the last phase of CTP (queue state and all) and run again
    final = _state(out, "ctp")
    st = dict(final)
    for k in ("finished", "rows", "unimodal", "scalars", "train_seconds", "eval_seconds"):
        st[k] = st[k][:-1]
    st["complete"] = False
    st["checkpoint"] = os.path.join("checkpoints", "exp_000.safetensors")
    with open(os.path.join(out, "pairs", "ctp", "state.json"), "w") as fh:
        json.dump(st, fh)
    assert main(["run", os.path.join(str(tmp_path), "tiny.yaml"), "--output", out, "--no-report"]) == 0
    again = _state(out, "ctp")
    assert again["complete"]
    for a, b in zip(again["rows"], final["rows"]):
        assert a == pytest.approx(b, abs=1e-6)
    assert again["scalars"][-1]["RetrievalR1_AvgSeen"] == pytest.approx(final["scalars"][-1]["RetrievalR1_AvgSeen"], abs=1e-6)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("studies.pairs.strategies.ctp.queue_size=4096", ["ctp", "queue of 4096", "queue_size <="]),
        ("studies.pairs.strategies.ctp.momentum=1.5", ["ctp", "momentum of 1.5", "[0, 1]"]),
    ],
)
def test_check_refuses_bad_pair_settings(tmp_path, capsys, override, expected):
    assert main(["check", write(str(tmp_path), TINY), "--set", override]) == 2
    err = capsys.readouterr()
    msg = err.out + err.err
    for piece in expected:
        assert piece in msg, msg


def test_check_refuses_pair_methods_on_a_classification_benchmark(tmp_path, capsys):
    cfg = json.loads(json.dumps(TINY))
    cfg["studies"]["pairs"]["benchmark"] = {
        "name": "demo-mtil",
        "params": {"world": {"seed": 0, "image_size": 32, "shapes": 4, "colours": 4, "textures": 2, "sizes": 2},
                   "tasks": [{"name": "colours", "target": "colour"}], "train_per_class": 2, "test_per_class": 1,
                   "reference_per_combination": 1},
    }
    assert main(["check", write(str(tmp_path), cfg)]) == 2
    err = capsys.readouterr()
    msg = err.out + err.err
    for method in ("'mod-x'", "'ctp'", "'contrastive-finetune'"):
        assert method in msg, msg
    assert "image-text pairs" in msg and "classes" in msg
