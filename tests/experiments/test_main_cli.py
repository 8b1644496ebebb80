"""End to end: the `avalanche-mm` command on a tiny config (every strategy, 2 experiences)."""

import json
import os

import pytest
import yaml

from avalanche_mm.cli import main

WORLD = {"seed": 0, "image_size": 32, "shapes": 4, "colours": 4, "textures": 2, "sizes": 2}
TINY = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "progress_bar": True,
    "loggers": ["text", "csv", "tensorboard"],
    "checkpoints": {"keep": "all"},
    "report": {"expectations": [
        {"study": "mtil", "kind": "above_chance", "strategy": "zeroshot", "margin": -1.0, "description": "zs"},
        {"study": "mtil", "kind": "greater", "metric": "avg", "higher": "zeroshot", "lower": "nope", "description": "missing"},
        {"study": "av", "kind": "at_least", "metric": "modality:audio", "strategy": "er", "value": 2.0, "description": "too high"},
    ]},
    "studies": {
        "mtil": {
            "benchmark": {
                "name": "demo-mtil",
                "params": {
                    "world": WORLD,
                    "tasks": [{"name": "colours", "target": "colour"}, {"name": "shapes", "target": "shape"}],
                    "train_per_class": 4,
                    "test_per_class": 3,
                    "reference_per_combination": 2,
                },
            },
            "model": {"kind": "clip", "backbone": "demo-clip", "pretrain": {"enabled": True, "iterations": 3, "batch_size": 16}},
            "training": {"iterations": 2, "batch_size": 8, "lr": 1e-4, "warmup": 1, "label_smoothing": 0.2},
            "evaluation": {"alignment": True, "probe_size": 16},
            "strategies": {
                "zeroshot": {},
                "finetune": {},
                "lwf": {},
                "er": {"mem_size": 8},
                "wiseft": {},
                "zscl": {"we_every": 1, "ref_batch_size": 4},
            },
        },
        "av": {
            "benchmark": {
                "name": "demo-av",
                "params": {"world": {"seed": 1, "image_size": 16, "noise": {"image": 0.6}}, "num_classes": 4,
                           "num_experiences": 2, "train_per_class": 4, "test_per_class": 3},
            },
            "model": {"kind": "fusion", "name": "fusion", "params": {"hidden": 8, "conv_channels": [4]}, "freeze": []},
            "training": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "scheduler": "constant"},
            "evaluation": {"initial": False, "per_modality": True},
            "strategies": {"finetune": {}, "er": {"mem_size": 4}},
        },
    },
}


def write_config(folder, cfg=TINY):
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    out = str(folder / "out")
    assert main(["run", write_config(str(folder)), "--output", out]) == 0
    return out


def test_results_folder_contents(finished_run, capsys):
    out = finished_run
    for name in ("config.yaml", "environment.json", "run.json", "summary.json", "summary.csv", "summary.md",
                 "report.md", "report.html", "metrics.jsonl"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    env = json.load(open(os.path.join(out, "environment.json")))
    assert env["seed"] == 0 and env["device"] == "cpu" and env["versions"]["avalanche-lib"].startswith("0.6")
    assert env["studies"]["mtil"]["pretraining"]["iterations"] == 3
    assert json.load(open(os.path.join(out, "run.json")))["status"] == "finished"
    rows = json.load(open(os.path.join(out, "summary.json")))["rows"]
    assert [(r["study"], r["strategy"]) for r in rows] == [
        ("mtil", s) for s in ("zeroshot", "finetune", "lwf", "er", "wiseft", "zscl")
    ] + [("av", "finetune"), ("av", "er")]
    for r in rows:
        assert r["complete"] and 0 <= r["avg"] <= 1 and 0 <= r["last"] <= 1
    zs = rows[0]
    assert zs["forgetting"] == 0 and zs["bwt"] == 0  # zero-shot never changes
    for s in ("zeroshot", "finetune", "lwf", "er", "wiseft", "zscl"):
        folder = os.path.join(out, "mtil", s)
        assert sorted(os.listdir(os.path.join(folder, "checkpoints"))) == ["exp_000.pt", "exp_001.pt"]
        matrix = open(os.path.join(folder, "accuracy_matrix.csv")).read().splitlines()
        assert matrix[0] == "row,colours,shapes" and matrix[1].startswith("initial,") and len(matrix) == 4
        assert os.path.getsize(os.path.join(folder, "log.txt")) > 0
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(folder, "tb")))
        assert os.path.exists(os.path.join(folder, "csv", "eval_results.csv"))
        names = {json.loads(line)["name"].split("/")[0] for line in open(os.path.join(folder, "metrics.jsonl"))}
        assert {"Top1_Acc_Exp", "MTIL_Transfer", "DriftFromInit_modx_kl", "Align_ModalityGap"} <= names
    av = {json.loads(line)["name"].split("/")[0] for line in open(os.path.join(out, "av", "er", "metrics.jsonl"))}
    assert {"UnimodalAcc_image_Exp", "UnimodalAcc_audio_Exp", "ModalityImbalanceIndex_Stream"} <= av
    plots = sorted(os.listdir(os.path.join(out, "plots")))
    assert plots == ["av_accuracy_matrix.png", "av_modalities.png", "av_modality_signals.png", "av_transfer.png",
                     "mtil_accuracy_matrix.png", "mtil_alignment.png", "mtil_transfer.png"]
    report = open(os.path.join(out, "report.md")).read()
    for text in ("| zscl | zscl |", "Transfer", "imbalance index", "KL drift from init", "plots/mtil_transfer.png"):
        assert text in report, text
    assert "<table>" in open(os.path.join(out, "report.html")).read()
    assert "- yes: zs: zeroshot" in report and "- **no**: missing: zeroshot or nope has not run" in report
    assert "- **no**: too high: er" in report


def test_rerun_resumes_nothing_and_report_is_rebuilt(finished_run, tmp_path, capsys):
    out = finished_run
    before = json.load(open(os.path.join(out, "summary.json")))
    assert main(["run", os.path.join(os.path.dirname(out), "tiny.yaml"), "--output", out, "--no-report"]) == 0
    assert "already complete" in capsys.readouterr().out
    os.remove(os.path.join(out, "report.md"))
    assert main(["report", out, "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "Transfer" in printed and "fused acc" in printed and "imbalance index" in printed
    assert json.load(open(os.path.join(out, "summary.json"))) == before
    assert os.path.exists(os.path.join(out, "report.md"))
    assert main(["report", str(tmp_path)]) == 2


def test_list_and_check(capsys, tmp_path):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in ("demo-mtil", "world-mtil", "mtil", "zscl", "wiseft", "demo-clip", "UnimodalAcc_<m>", "default"):
        assert name in text, name
    assert main(["list", "options"]) == 0
    assert "studies.<name>.training.iterations" in capsys.readouterr().out
    assert main(["check", write_config(str(tmp_path)), "--set", "studies.mtil.training.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


@pytest.mark.parametrize(
    "override, expected",
    [
        ("studies.mtil.strategies.zsc={}", "studies.mtil.strategies.zsc.method: got 'zsc'"),
        ("studies.mtil.benchmark.name=demo-mtl", "studies.mtil.benchmark.name: got 'demo-mtl'"),
        ("studies.av.training.batch_size=many", "studies.av.training.batch_size: got 'many' (str), expected an integer"),
        ("studies.mtil.benchmark.data_root=/nonexistent/data", "studies.mtil.benchmark.data_root: got '/nonexistent/data'"),
    ],
)
def test_bad_configs_fail_before_any_training(tmp_path, capsys, override, expected):
    out = tmp_path / "out"
    assert main(["run", write_config(str(tmp_path)), "--output", str(out), "--set", override]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_missing_real_data_fails_before_any_training(tmp_path, capsys):
    cfg = {"name": "real", "benchmark": {"name": "mtil", "data_root": str(tmp_path), "params": {"order": ["DTD"]}},
           "model": {"kind": "clip", "backbone": "demo-clip"}, "strategies": {"finetune": {}}}
    out = tmp_path / "out"
    assert main(["run", write_config(str(tmp_path), cfg), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "studies.main.benchmark" in err and "DTD" in err
    assert not (out / "main").exists()  # nothing trained


def test_wandb_offline_and_interactive_loggers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = {"name": "wb", "device": "cpu", "progress_bar": False, "loggers": ["wandb", "interactive"],
           "benchmark": {"name": "toy", "params": {"n_per_class": 4}},
           "model": {"kind": "fusion", "name": "toy-fusion"},
           "training": {"epochs": 1, "batch_size": 8, "lr": 0.01, "scheduler": "constant"},
           "strategies": {"finetune": {}}}
    out = tmp_path / "out"
    assert main(["run", write_config(str(tmp_path), cfg), "--output", str(out), "--no-report"]) == 0
    runs = [f for d, _, fs in os.walk(out / "main" / "finetune" / "wandb") for f in fs if f.endswith(".wandb")]
    assert runs and os.path.getsize(os.path.join(str(out), "main", "finetune", "metrics.jsonl")) > 0
    assert "Top1_Acc_Stream" in capsys.readouterr().out  # Avalanche's InteractiveLogger prints the metrics
