"""`avalanche-mm check` finds what `run` would fail on before training, with the same
message, and `run` reports it without a traceback; the keys in the messages are keys
that `--set` accepts."""

import os

import pytest
import yaml

from avalanche_mm.cli import main
from avalanche_mm.experiments.config import load_config

WORLD = {"seed": 0, "image_size": 16, "shapes": 4, "colours": 4, "textures": 2, "sizes": 2}
FUSION_TOY = {
    "name": "parity",
    "device": "cpu",
    "progress_bar": False,
    "benchmark": {"name": "toy", "params": {"n_experiences": 2, "n_classes": 4, "n_per_class": 4}},
    "model": {"kind": "fusion", "name": "toy-fusion", "freeze": []},
    "training": {"iterations": 1, "batch_size": 4},
    "evaluation": {"initial": False},
    "strategies": {"finetune": {}},
}


def _with(base, **study):
    cfg = yaml.safe_load(yaml.safe_dump(base))
    for k, v in study.items():
        cfg[k] = v
    return cfg


CASES = {
    "uneven class split": (
        _with(FUSION_TOY, benchmark={"name": "digits-class-incremental", "params": {"num_experiences": 3, "modalities": ["image"]}},
              model={"kind": "fusion", "name": "fusion", "params": {"hidden": 4, "conv_channels": [2]}, "freeze": []}),
        "studies.main.benchmark.params.num_experiences: got 3, but 10 classes do not split evenly into 3 experiences",
        "studies.main.benchmark.params.num_experiences=5",
    ),
    "missing fusion parameter": (
        _with(FUSION_TOY, benchmark={"name": "digits-class-incremental", "params": {"num_experiences": 2, "modalities": ["image", "text"]}},
              model={"kind": "fusion", "name": "fusion", "params": {"hidden": 4, "conv_channels": [2]}, "freeze": []}),
        "studies.main.model.params.vocab_size: missing, modality 'text' holds token ids",
        "studies.main.model.params.vocab_size=64",
    ),
    "unknown fusion model": (
        _with(FUSION_TOY, model={"kind": "fusion", "name": "fusoin"}),
        "studies.main.model.name: got 'fusoin', expected one of av-cil, fusion, toy-fusion (did you mean 'fusion'?)",
        "studies.main.model.name=toy-fusion",
    ),
    "freeze matching no parameter": (
        _with(FUSION_TOY, model={"kind": "fusion", "name": "toy-fusion", "freeze": ["encoders.vision"]}),
        "studies.main.model.freeze: 'encoders.vision' matches no parameter",
        "studies.main.model.freeze=[image]",
    ),
    "negative benchmark parameter": (
        _with(FUSION_TOY, benchmark={"name": "toy", "params": {"n_experiences": -2}}),
        "studies.main.benchmark.params.n_experiences: got -2, expected an integer >= 1",
        "studies.main.benchmark.params.n_experiences=2",
    ),
    "non-numeric benchmark parameter": (
        _with(FUSION_TOY, benchmark={"name": "toy", "params": {"n_per_class": "many"}}),
        "studies.main.benchmark.params.n_per_class: got 'many' (str), expected an integer >= 1",
        "studies.main.benchmark.params.n_per_class=4",
    ),
    "pretraining without a reference split": (
        _with(FUSION_TOY,
              benchmark={"name": "demo-av", "params": {"world": dict(WORLD, image_size=32), "num_classes": 2, "num_experiences": 2,
                                                       "train_per_class": 2, "test_per_class": 2, "modalities": ["image"]}},
              model={"kind": "clip", "backbone": "demo-clip", "pretrain": {"enabled": True, "iterations": 1}}),
        "studies.main.model.pretrain.enabled: true, but benchmark 'demo-av' has no reference split",
        "studies.main.model.pretrain.enabled=false",
    ),
    "zscl without a reference split": (
        _with(FUSION_TOY,
              benchmark={"name": "world-class-incremental", "params": {"num_classes": 2, "num_experiences": 2, "train_per_class": 2,
                                                                       "test_per_class": 2, "modalities": ["image", "text"]}},
              model={"kind": "clip", "backbone": "demo-clip"}, strategies={"zscl": {}}),
        "studies.main.strategies.zscl.method: zscl needs a reference set (images and sentences), but benchmark "
        "'world-class-incremental' provides none; use a benchmark with a reference split (e.g. demo-mtil) or, for a "
        "real-data benchmark, name one in benchmark.reference.images and benchmark.reference.texts",
        "studies.main.strategies.zscl.method=finetune",
    ),
    "real-data root without the files": (
        _with(FUSION_TOY, benchmark={"name": "cifar100-clip", "data_root": "DATA_ROOT", "params": {}},
              model={"kind": "clip", "backbone": "demo-clip"}),
        "studies.main.benchmark.params: benchmark 'cifar100-clip' cannot be built with these parameters",
        "studies.main.benchmark.name=demo-mtil",
    ),
    "images the backbone cannot take": (
        _with(FUSION_TOY,
              benchmark={"name": "demo-mtil", "params": {"world": dict(WORLD, shapes=3, colours=4, textures=2),
                                                         "tasks": [{"name": "colours", "target": "colour"}],
                                                         "train_per_class": 2, "test_per_class": 2, "reference_per_combination": 1}},
              model={"kind": "clip", "backbone": "demo-clip", "pretrain": {"enabled": True, "iterations": 1}}),
        "studies.main.benchmark.params: reference split images are 16x16, but studies.main.model.backbone "
        "'demo-clip' takes 32x32",
        "studies.main.benchmark.params.world.image_size=32",
    ),
}


def _run_cli(capsys, args):
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def _problems(text):
    return sorted(line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- "))


@pytest.mark.parametrize("case", list(CASES))
def test_check_and_run_fail_alike_without_traceback(case, tmp_path, capsys):
    raw, message, fix = CASES[case]
    if raw["benchmark"].get("data_root") == "DATA_ROOT":  # an existing, empty data folder
        raw = _with(raw, benchmark=dict(raw["benchmark"], data_root=str(tmp_path / "data")))
        (tmp_path / "data").mkdir()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    rc, checked = _run_cli(capsys, ["check", str(path), "-q"])
    assert rc == 2 and message in checked, checked
    rc, ran = _run_cli(capsys, ["run", str(path), "--output", str(tmp_path / "out"), "--no-report"])
    assert rc == 2 and "Traceback" not in ran
    assert _problems(ran) == _problems(checked) and message in ran
    assert not os.path.exists(tmp_path / "out" / "main")  # nothing trained
    # the key the message names is the key --set takes: setting it fixes the config
    rc, fixed = _run_cli(capsys, ["check", str(path), "-q", "--set", fix])
    assert rc == 0, fixed


def test_real_data_recipe_reports_data_and_weights_together(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no cached weights
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/data/mtil and ~/.cache are absent
    rc, text = _run_cli(capsys, ["check", "mtil/order-I-vitb16", "-q"])
    assert rc == 2
    assert "studies.mtil.benchmark.data_root: got '~/data/mtil', expected an existing folder" in text
    assert "studies.mtil.model.pretrained: open_clip weights 'ViT-B-16' / 'openai' are not in the cache" in text
    assert "studies.mtil.benchmark.reference.images" in text and "reference_root" not in text


def test_check_states_extra_evaluation_passes_for_any_number_of_modalities(tmp_path, capsys):
    raw = _with(FUSION_TOY, evaluation={"initial": False, "metrics": {"modality-imbalance": {"shapley": True, "contribution": True}}})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    rc, text = _run_cli(capsys, ["check", str(path), "-q"])
    assert rc == 0, text
    # 3 modalities: singletons (3) + "without m" pairs (3) + the empty set for Shapley = 7 = 2**3 - 1
    assert "metric group 'modality-imbalance' adds 7 forward passes per evaluated minibatch (3 modalities: image, text, audio)" in text
    bad = _with(FUSION_TOY, evaluation={"metrics": {"modality-imbalance": {"shapely": True}, "nope": {}}})
    with pytest.raises(Exception) as info:
        load_config(raw=bad)
    assert "studies.main.evaluation.metrics.modality-imbalance.shapely: unknown key" in str(info.value)
    assert "studies.main.evaluation.metrics.nope: unknown metric group" in str(info.value)
