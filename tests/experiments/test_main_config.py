"""Config loading, overrides and validation of the main job (no training)."""

import os

import pytest
import yaml

from avalanche_mm.experiments.config import (
    ConfigError,
    apply_overrides,
    load_config,
    parse_override,
    strategy_fingerprint,
    validate_config,
)
from avalanche_mm.experiments.io import atomic_write_json, atomic_write_text, read_json, truncate_file

BASE = {
    "name": "t",
    "benchmark": {"name": "toy"},
    "model": {"kind": "fusion", "name": "toy-fusion"},
    "strategies": {"finetune": {}, "er": {"mem_size": 10}},
}


def _errors(raw):
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    return "\n".join(info.value.errors)


def test_single_study_form_and_defaults():
    cfg = validate_config(BASE)
    study = cfg["studies"]["main"]
    assert study["strategies"]["er"] == {"method": "er", "mem_size": 10, "batch_size_mem": None,
                                         "storage_policy": "experience_balanced", "training": {}}
    assert study["training"]["optimizer"] == "adamw" and cfg["loggers"] == ["text"]
    assert study["evaluation"]["initial"] is True


def test_builtin_default_and_recipes_validate(tmp_path):
    from avalanche_mm.experiments.config import packaged_recipes, repo_recipes

    cfg = load_config(None)
    assert set(cfg["studies"]) == {"mtil", "av"}
    assert set(cfg["studies"]["mtil"]["strategies"]) >= {"zeroshot", "finetune", "lwf", "er", "wiseft", "zscl"}
    recipes = {**packaged_recipes(), **repo_recipes()}
    assert {"default", "mtil/order-I-vitb16", "mtil/order-II-vitb16"} <= set(recipes)
    for name, path in recipes.items():
        raw = yaml.safe_load(open(path))
        for sname, study in raw.get("studies", {}).items():
            bench = study["benchmark"]
            if "data_root" in bench:  # real data: validate against a folder holding the named paths
                assert "data_root: missing" in _errors(apply_overrides(raw, [f"studies.{sname}.benchmark.data_root=null"]))
                bench["data_root"] = str(tmp_path)
                ref = bench.get("reference") or {}
                if ref.get("images"):
                    (tmp_path / ref["images"]).mkdir(parents=True, exist_ok=True)
                if ref.get("texts"):
                    (tmp_path / ref["texts"]).parent.mkdir(parents=True, exist_ok=True)
                    (tmp_path / ref["texts"]).write_text("a sentence\n")
            if study.get("model", {}).get("pretrained"):  # weights: a checkpoint file stands in
                ckpt = tmp_path / "weights.pt"
                ckpt.write_bytes(b"")
                study["model"]["pretrained"] = str(ckpt)
        validate_config(raw)


def test_unknown_strategy_benchmark_and_keys_are_named():
    msg = _errors({**BASE, "strategies": {"zscll": {}}})
    assert "studies.main.strategies.zscll.method: got 'zscll'" in msg and "did you mean 'zscl'" in msg
    msg = _errors({**BASE, "benchmark": {"name": "nope"}})
    assert "studies.main.benchmark.name: got 'nope', expected one of" in msg
    msg = _errors({**BASE, "trainig": {}})
    assert "trainig: unknown key" in msg and "did you mean 'training'" in msg
    msg = _errors({**BASE, "strategies": {"er": {"mem_sise": 3}}})
    assert "studies.main.strategies.er.mem_sise: unknown key" in msg


def test_wrong_types_name_the_key_the_value_and_the_expectation():
    raw = {**BASE, "seed": "zero", "training": {"lr": "fast", "batch_size": 0, "iterations": 2.5},
           "loggers": ["text", "tensorbord"], "strategies": {"lwf": {"alpha": True}}}
    msg = _errors(raw)
    assert "seed: got 'zero' (str), expected an integer >= 0" in msg
    assert "studies.main.training.lr: got 'fast' (str), expected a number >= 0.0" in msg
    assert "studies.main.training.batch_size: got 0, expected an integer >= 1" in msg
    assert "studies.main.training.iterations: got 2.5 (float), expected an integer" in msg
    assert "loggers[1]: got 'tensorbord'" in msg
    assert "studies.main.strategies.lwf.alpha: got True (bool), expected a number" in msg


def test_method_and_model_kind_must_match_and_required_keys():
    msg = _errors({**BASE, "strategies": {"zscl": {}}})
    assert "'zscl' needs a model of kind 'clip'" in msg
    msg = _errors({"strategies": {"finetune": {}}})
    assert "studies.main.benchmark.name: missing" in msg
    msg = _errors({**BASE, "model": {"kind": "fusion"}})
    assert "studies.main.model.name: missing" in msg


def test_data_root_is_checked_before_anything_is_built(tmp_path):
    raw = {"benchmark": {"name": "mtil"}, "model": {"kind": "clip"}, "strategies": {"finetune": {}}}
    msg = _errors(raw)
    assert "studies.main.benchmark.data_root: missing" in msg
    raw["benchmark"]["data_root"] = str(tmp_path / "absent")
    msg = _errors(raw)
    assert "benchmark.data_root: got" in msg and "expected an existing folder" in msg


def test_overrides():
    assert parse_override("a.b=1e-4") == (["a", "b"], "1e-4")
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("nothing")
    cfg = load_config(raw=BASE, overrides=["training.lr=1e-4", "strategies.er.mem_size=7", "seed=3"])
    study = cfg["studies"]["main"]
    assert study["training"]["lr"] == 1e-4 and study["strategies"]["er"]["mem_size"] == 7 and cfg["seed"] == 3
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_overrides(BASE, ["name.x=1"])


def test_fingerprint_tracks_what_changes_results():
    a = validate_config(BASE)
    b = validate_config({**BASE, "loggers": ["text", "csv"], "progress_bar": False})
    c = validate_config({**BASE, "training": {"lr": 0.5}})
    fp = lambda cfg: strategy_fingerprint(cfg, "main", "er")  # noqa: E731
    assert fp(a) == fp(b) != fp(c)


def test_atomic_writes_leave_old_content_on_failure(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(str(path), {"a": float("nan")})
    assert read_json(str(path)) == {"a": None}

    from avalanche_mm.experiments.io import _atomic

    def half_then_crash(fh):
        fh.write('{"b": ')
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        _atomic(str(path), half_then_crash, binary=False)
    assert read_json(str(path)) == {"a": None}
    assert sorted(os.listdir(tmp_path)) == ["x.json"]  # no temporary file left
    atomic_write_text(str(tmp_path / "log"), "line1\nline2\n")
    truncate_file(str(tmp_path / "log"), 6)
    assert open(tmp_path / "log").read() == "line1\n"
    with pytest.raises(ValueError, match="inconsistent"):
        truncate_file(str(tmp_path / "log"), 100)


def test_model_mask_unseen_reaches_the_class_incremental_head():
    """The class-incremental protocol of MoE-Adapters / AttriCLIP: classes not trained yet get no logit."""
    from avalanche_mm.benchmarks.bundle import build_bundle
    from avalanche_mm.models.build import build_clip_backbone, clip_classifier

    backbone = build_clip_backbone({"backbone": "demo-clip"}, seed=0)
    bench = {"name": "world-class-incremental", "params": {"num_classes": 4, "num_experiences": 2, "train_per_class": 2,
                                                           "test_per_class": 1, "modalities": ["image", "text"]}}
    bundle = build_bundle(bench, seed=0, inject={"image_transform": backbone.preprocess_eval, "image_size": backbone.image_size})
    for flag in (False, True):
        head = clip_classifier(backbone, bundle, {"kind": "clip", "backbone": "demo-clip", "mask_unseen": flag})
        assert head.mask_unseen is flag


def test_threads_is_validated_applied_for_the_run_and_restored(tmp_path):
    import torch

    from avalanche_mm.experiments import runner

    assert "threads" in _errors({**BASE, "threads": 0})
    assert "threads" in _errors({**BASE, "threads": "two"})
    assert validate_config(BASE)["threads"] is None
    seen = []

    class Spy:
        def __call__(self, ctx):
            seen.append(torch.get_num_threads())
            return None

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    cfg = {**BASE, "threads": target, "device": "cpu", "progress_bar": False,
           "report": {"plots": False, "html": False}, "strategies": {"finetune": {}}}
    runner.run_experiment(cfg, output_dir=str(tmp_path / "out"), report=False, log=lambda *a: None,
                          extra_plugins=[Spy()])
    assert seen and set(seen) == {target}  # the strategies were built under the run's count
    assert read_json(str(tmp_path / "out" / "environment.json"))["torch_threads"] == target
    assert torch.get_num_threads() == before  # a process-wide setting, restored after the run
