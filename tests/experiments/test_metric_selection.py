"""Per-modality metric groups chosen in the YAML, for three modalities."""

import json

import yaml

from avalanche_mm.cli import main


def test_contributions_and_index_for_three_modalities_from_the_config(tmp_path, capsys):
    cfg = {
        "name": "m3",
        "device": "cpu",
        "progress_bar": False,
        "loggers": [],
        "report": {"plots": False, "html": False},
        "benchmark": {"name": "toy", "params": {"n_experiences": 2, "n_classes": 4, "n_per_class": 4}},
        "model": {"kind": "fusion", "name": "toy-fusion", "params": {"hidden": 4}, "freeze": []},
        "training": {"iterations": 1, "batch_size": 4},
        "evaluation": {"initial": False, "metrics": {"modality-imbalance": {"contribution": True, "imbalance_index": True}}},
        "strategies": {"finetune": {}},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--output", str(tmp_path / "out"), "--no-report"]) == 0
    out = capsys.readouterr()
    # singletons (3) + "without m" (3)
    assert "metric group 'modality-imbalance' adds 6 forward passes per evaluated minibatch (3 modalities" in out.out + out.err
    names = {json.loads(line)["name"].split("/")[0] for line in open(tmp_path / "out" / "main" / "finetune" / "metrics.jsonl")}
    for m in ("image", "text", "audio"):
        assert f"ModalityContribution_{m}_Exp" in names or f"ModalityContribution_{m}_Stream" in names, sorted(names)
        assert f"UnimodalAcc_{m}_Exp" in names
    assert any(n.startswith("ModalityImbalanceIndex") for n in names)
