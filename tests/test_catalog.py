"""avalanche_mm.catalog.describe: every registry as plain dicts (list and the docs tables)."""

import pytest

from avalanche_mm.catalog import KINDS, describe, find

KEYS = {"name", "summary", "family", "params", "needs_data", "needs_weights", "source", "doc"}
PARAM_KEYS = {"name", "kind", "default", "expected", "help"}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_the_documented_fields(kind):
    items = describe(kind)
    assert items
    for item in items:
        assert KEYS <= set(item), (kind, item["name"])
        assert item["summary"], (kind, item["name"])
        for p in item["params"]:
            assert set(p) == PARAM_KEYS, (kind, item["name"], p)


def _one(kind, name):
    return next(i for i in describe(kind) if i["name"] == name)


def test_entries_carry_their_declared_parameters_and_needs():
    zscl = _one("methods", "zscl")
    params = {p["name"]: p for p in zscl["params"]}
    assert params["temperature"]["default"] == 2.0 and params["temperature"]["expected"] == "a number > 0.0"
    assert params["text_features"]["expected"] == "one of 'teacher', 'student'"
    assert params["ref_batch_size"]["default"] is None and "training.batch_size" in params["ref_batch_size"]["help"]
    assert zscl["family"] == "regularization" and zscl["model_kinds"] == ["clip"] and "ZSCL" in zscl["doc"]
    assert {p["name"] for p in _one("methods", "er")["params"]} == {"mem_size", "batch_size_mem", "storage_policy"}
    mtil = _one("benchmarks", "mtil")
    assert mtil["needs_data"] and "root" not in {p["name"] for p in mtil["params"]}
    demo = _one("benchmarks", "demo-mtil")
    assert demo["reference_split"] and not demo["needs_data"]
    toy = {p["name"]: p for p in _one("benchmarks", "toy")["params"]}
    assert toy["n_experiences"]["expected"] == "an integer >= 1"
    fusion = {p["name"]: p for p in _one("models", "fusion")["params"]}
    assert fusion["fusion"]["expected"] == "one of 'concat', 'sum', 'gating', 'attention'"
    assert fusion["vocab_size"]["default"] is None
    assert any(i["needs_weights"] for i in describe("models"))
    assert not _one("models", "tiny-openclip")["needs_weights"]
    imb = {p["name"] for p in _one("metrics", "modality-imbalance")["params"]}
    assert {"unimodal", "contribution", "shapley", "imbalance_index", "modalities"} <= imb
    assert _one("metrics", "accuracy")["family"] == "always recorded"
    assert {i["name"] for i in describe("loggers")} >= {"text", "tensorboard", "csv", "wandb", "interactive"}


def test_find_and_unknown_kind():
    assert [h["kind"] for h in find("toy")] == ["benchmarks"]
    with pytest.raises(KeyError, match="expected one of methods, benchmarks"):
        describe("widgets")


def test_recipes_are_found_from_any_folder(tmp_path, monkeypatch, capsys):
    from avalanche_mm.cli import main
    from avalanche_mm.experiments.config import resolve_config_source

    monkeypatch.chdir(tmp_path)
    assert main(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    assert "mtil/order-I-vitb16" in out and "default" in out
    assert resolve_config_source("mtil/order-II-vitb16").endswith("order-II-vitb16.yaml")
