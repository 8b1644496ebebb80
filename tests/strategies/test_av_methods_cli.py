"""`avalanche-mm run` with OGM-GE, AV-CIL and SAMM on one tiny study, an interrupted run that
resumes to the same results, and `avalanche-mm check` naming what each method needs."""

import json
import os

import pytest
import yaml
from avalanche.core import SupervisedPlugin

from avalanche_mm.cli import main

BENCH = {"name": "demo-av", "params": {"world": {"seed": 1, "image_size": 8, "noise": {"image": 0.4}}, "num_classes": 4,
                                        "num_experiences": 2, "train_per_class": 4, "test_per_class": 2}}
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "scheduler": "constant"}
CFG = {
    "name": "tiny-av",
    "seed": 0,
    "device": "cpu",
    "progress_bar": False,
    "loggers": [],
    "checkpoints": {"keep": "last"},
    "studies": {
        "late": {
            "benchmark": BENCH,
            "model": {"kind": "fusion", "name": "fusion", "params": {"hidden": 8, "conv_channels": [4]}},
            "training": TRAIN,
            "evaluation": {"initial": False, "per_modality": True},
            "strategies": {"ogm": {"method": "ogm-ge", "alpha": 0.5}, "samm": {"method": "samm", "mem_size": 4}},
        },
        "att": {
            "benchmark": BENCH,
            "model": {"kind": "fusion", "name": "av-cil", "params": {"inputs": "raw", "token_dim": 4, "audio_dim": 4, "conv_channels": [4]}},
            "training": TRAIN,
            "evaluation": {"initial": False, "per_modality": True},
            "strategies": {"avcil": {"method": "av-cil", "mem_size": 4}},
        },
    },
}


def _write(folder, cfg):
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


def _state(out, study, strategy):
    st = json.load(open(os.path.join(out, study, strategy, "state.json")))
    return {k: st[k] for k in ("finished", "rows", "unimodal", "scalars", "complete")}


def _records(out, study, strategy):
    path = os.path.join(out, study, strategy, "metrics.jsonl")
    return [(r["name"], r["x_plot"], r["value"]) for r in map(json.loads, open(path))
            if "Time" not in r["name"] and "Throughput" not in r["name"]]


class _Interrupt(SupervisedPlugin):
    """Stops the run in the 2nd experience (what a kill does, without a subprocess)."""

    stateless = True  # not part of the checkpoint

    def before_training_iteration(self, strategy, **kwargs):
        if strategy.experience.current_experience == 1:
            raise KeyboardInterrupt("simulated interruption")


def test_run_three_methods_and_resume(tmp_path):
    path = _write(str(tmp_path), CFG)
    straight, broken = str(tmp_path / "straight"), str(tmp_path / "broken")
    assert main(["run", path, "--output", straight, "--no-report"]) == 0
    coeffs = [r for r in _records(straight, "late", "ogm") if r[0].startswith("OGMGE_Coeff_")]
    assert {r[0].split("/")[0] for r in coeffs} == {"OGMGE_Coeff_audio_MB", "OGMGE_Coeff_image_MB"}
    assert all(0 < r[2] <= 1 for r in coeffs)
    # the report's modality plots and numbers
    from avalanche_mm.experiments.plots_modality import forgetting_curves, ogm_coefficient_summary, plot_modality_dynamics

    summary = ogm_coefficient_summary(os.path.join(straight, "late", "ogm"))
    audio = [r[2] for r in coeffs if "audio" in r[0]]
    assert summary["ogm_coeff_mean:audio"] == pytest.approx(sum(audio) / len(audio))
    states = [json.load(open(os.path.join(straight, "late", s, "state.json"))) for s in ("ogm", "samm")]
    assert set(forgetting_curves(states[0])) == {"audio", "image"} and len(forgetting_curves(states[0])["audio"]) == 2
    files = plot_modality_dynamics(str(tmp_path / "plots"), "late", straight, states)
    assert len(files) == 2 and all(os.path.getsize(tmp_path / "plots" / f) > 0 for f in files.values())

    from avalanche_mm.experiments.runner import run_experiment

    def interrupt(ctx):
        return _Interrupt() if ctx.strategy in ("samm", "avcil") else None

    with pytest.raises(KeyboardInterrupt):
        run_experiment(path, output_dir=broken, report=False, extra_plugins=[interrupt])
    assert _state(broken, "late", "samm")["finished"] == [0]
    assert main(["run", path, "--output", broken, "--no-report"]) == 0
    for study, strategy in (("late", "ogm"), ("late", "samm"), ("att", "avcil")):
        assert _state(broken, study, strategy) == _state(straight, study, strategy), strategy
        assert _records(broken, study, strategy) == _records(straight, study, strategy), strategy


def test_check_names_what_each_method_needs(tmp_path, capsys):
    cfg = json.loads(json.dumps(CFG))
    del cfg["studies"]["att"]
    cfg["studies"]["late"]["model"] = {"kind": "fusion", "name": "toy-fusion"}
    cfg["studies"]["late"]["strategies"] = {"ogm": {"method": "ogm-ge"}}
    assert main(["check", _write(str(tmp_path), cfg)]) != 0
    err = capsys.readouterr().err
    assert "ogm-ge needs per-modality outputs" in err and "'toy-fusion'" in err

    cfg = json.loads(json.dumps(CFG))
    del cfg["studies"]["late"]
    cfg["studies"]["att"]["model"]["params"] = {}  # features expected, the world has raw image + spectrogram
    cfg["studies"]["att"]["strategies"] = {"avcil": {"method": "av-cil", "mem_size": 3}, "samm": {"method": "samm", "mem_size": 2}}
    assert main(["check", _write(str(tmp_path), cfg)]) != 0
    err = capsys.readouterr().err
    assert "av-cil" in err and "pre-extracted" in err and "[3, 8, 8]" in err
    assert "studies.att.strategies.avcil.mem_size: av-cil got a memory of 3 exemplars for 4 classes" in err
    assert "studies.att.strategies.samm.mem_size: samm got a memory of 2 exemplars for 4 classes" in err


@pytest.mark.parametrize("recipe", ["avcil-ave", "avcil-kinetics-sounds", "avcil-vggsound100",
                                    "samm-seq-vggsound", "samm-dom-vggsound", "samm-gcil-vggsound"])
def test_recipes_fail_cleanly_without_data(recipe, capsys, tmp_path):
    assert main(["check", f"av/{recipe}"]) != 0
    err = capsys.readouterr().err
    assert "data_root: missing" in err and "Traceback" not in err
    study = recipe.split("-", 1)[1]
    assert main(["check", f"av/{recipe}", "--set", f"studies.{study}.benchmark.data_root={tmp_path / 'nowhere'}"]) != 0
    assert "expected an existing folder" in capsys.readouterr().err


def test_samm_recipe_builds_its_video_model_on_fixture_clips(tmp_path, capsys):
    """With (tiny generated) VGGSound clips the SAMM recipe passes `check`: its fusion model has an
    encoder for the 4-D video clips [3, F, H, W] (ResNet-18 per frame, as SAMM's code)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mmbench_fixtures.py"
    spec = importlib.util.spec_from_file_location("_mmbench_fixtures", path)
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    fixtures.write_vggsound(tmp_path, ["a", "b"])
    sets = [f"studies.seq-vggsound.benchmark.data_root={tmp_path}",
            "studies.seq-vggsound.benchmark.params.num_experiences=2",
            "studies.seq-vggsound.benchmark.params.image_size=16"]
    assert main(["check", "av/samm-seq-vggsound"] + [a for s in sets for a in ("--set", s)]) == 0, capsys.readouterr().err
    assert "config OK" in capsys.readouterr().err


def test_study_plugins_are_added_to_that_study_only():
    from avalanche_mm.experiments.config import ConfigError, validate_config
    from avalanche_mm.experiments.runner import _extra_plugins
    from avalanche_mm.strategies.av_cil import IncrementalHeadPlugin
    from avalanche_mm.strategies.registry import PluginContext

    cfg = {"plugins": [], "studies": {"s": {"plugins": ["incremental-head"]}, "t": {}}}
    got = {st: _extra_plugins(cfg, [], PluginContext(study=st, strategy="x", output="o", folder="f")) for st in ("s", "t")}
    assert [type(p) for p in got["s"]] == [IncrementalHeadPlugin] and got["t"] == []
    raw = yaml.safe_load(yaml.safe_dump(CFG))
    raw["studies"]["late"]["plugins"] = ["incremental-hed"]
    with pytest.raises(ConfigError, match=r"studies.late.plugins\[0\]: got 'incremental-hed'"):
        validate_config(raw)


def test_avcil_runs_on_demo_av_frozen_features(tmp_path):
    """`check` and `run` with demo-av's pre-extracted features and model av-cil (inputs: features)."""
    cfg = json.loads(json.dumps(CFG))
    del cfg["studies"]["late"]
    att = cfg["studies"]["att"]
    att["benchmark"]["params"]["features"] = {"per_combination": 2, "epochs": 1, "token_dim": 6, "audio_dim": 5, "conv_channels": [4], "frames": 2}
    att["model"]["params"] = {"inputs": "features"}
    att["strategies"] = {"avcil": {"method": "av-cil", "mem_size": 4}, "er": {"mem_size": 4}}
    path = _write(str(tmp_path), cfg)
    assert main(["check", path]) == 0
    out = str(tmp_path / "out")
    assert main(["run", path, "--output", out, "--no-report"]) == 0
    assert len(_state(out, "att", "avcil")["finished"]) == 2 and len(_state(out, "att", "er")["finished"]) == 2
