"""Done-when of the architecture: a method added as ONE new file - on sys.path, or in an
installed distribution's entry point - appears in `list`, validates in `check`, runs in
`run` and shows in the report, with no other file touched."""

import os
import sys

import pytest
import yaml

from avalanche_mm.cli import main
from avalanche_mm.strategies.registry import METHODS

METHOD_FILE = '''"""Weight shrinkage: a squared-norm penalty on the trainable weights (a toy method)."""

from typing import Annotated

from avalanche.core import SupervisedPlugin

from avalanche_mm.registry import Range
from avalanche_mm.strategies import MultimodalSupervisedTemplate
from avalanche_mm.strategies.registry import register_method

CALLS = []


class ShrinkPlugin(SupervisedPlugin):
    """Adds ``strength * sum(w ** 2)`` to the loss."""

    def __init__(self, strength):
        super().__init__()
        self.strength = strength

    def before_backward(self, strategy, **kwargs):
        penalty = sum((p ** 2).sum() for p in strategy.model.parameters() if p.requires_grad)
        strategy.loss = strategy.loss + self.strength * penalty
        CALLS.append(float(penalty.detach()))


class Shrink(MultimodalSupervisedTemplate):
    """Fine-tuning with weight shrinkage.

    :param strength: weight of the squared-norm penalty.
    """

    def __init__(self, *, strength: Annotated[float, Range(ge=0.0)] = 0.01, plugins=None, **kwargs):
        self.shrink_plugin = ShrinkPlugin(strength)
        super().__init__(plugins=list(plugins or []) + [self.shrink_plugin], **kwargs)


def _check(ctx, params):
    if params["strength"] >= 10:
        return [f"{ctx.key}.strength: got {params['strength']}, expected < 10 for this toy"]
    return []


@register_method("NAME", summary="toy weight shrinkage", params_from=Shrink, family="regularization", check=_check)
def _build(ctx, params):
    return Shrink(**ctx.common_kwargs(Shrink), **params)
'''


def _config(method, **extra):
    return {
        "name": "ext",
        "device": "cpu",
        "progress_bar": False,
        "loggers": [],
        "report": {"plots": False, "html": False},
        **extra,
        "benchmark": {"name": "toy", "params": {"n_experiences": 2, "n_classes": 4, "n_per_class": 4}},
        "model": {"kind": "fusion", "name": "toy-fusion", "params": {"hidden": 4}, "freeze": []},
        "training": {"iterations": 2, "batch_size": 4},
        "evaluation": {"initial": False},
        "strategies": {"shrink": {"method": method, "strength": 0.5}},
    }


def _cli(capsys, *args):
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.fixture
def forget_methods():
    names, modules = [], []
    yield names, modules
    for n in names:
        METHODS.unregister(n)
    for m in modules:
        sys.modules.pop(m, None)
    METHODS.refresh()


def _list_check_run_report(capsys, tmp_path, method, cfg, list_args=()):
    rc, text = _cli(capsys, *list_args, "list", "strategies")
    assert rc == 0 and method in text and "strength = 0.01" in text and "weight of the squared-norm penalty" in text
    rc, text = _cli(capsys, *list_args, "list", method)
    assert rc == 0 and "Fine-tuning with weight shrinkage." in text and "strength" in text
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc, text = _cli(capsys, "check", str(path), "-q")
    assert rc == 0, text
    rc, text = _cli(capsys, "check", str(path), "-q", "--set", "studies.main.strategies.shrink.strength=20")
    assert rc == 2 and "studies.main.strategies.shrink.strength: got 20.0, expected < 10 for this toy" in text
    rc, text = _cli(capsys, "check", str(path), "-q", "--set", "strategies.shrink.strength=-1")
    assert rc == 2 and "studies.main.strategies.shrink.strength: got -1.0, expected a number >= 0.0" in text
    out = tmp_path / "out"
    rc, text = _cli(capsys, "run", str(path), "--output", str(out))
    assert rc == 0, text
    report = (out / "report.md").read_text()
    assert "shrink" in report and method in report


def test_method_in_one_file_on_sys_path(tmp_path, capsys, monkeypatch, forget_methods):
    names, modules = forget_methods
    (tmp_path / "toy_shrink.py").write_text(METHOD_FILE.replace("NAME", "toy-shrink"))
    monkeypatch.syspath_prepend(str(tmp_path))
    names.append("toy-shrink")
    modules.append("toy_shrink")
    _list_check_run_report(capsys, tmp_path, "toy-shrink", _config("toy-shrink", imports=["toy_shrink"]), ("--import", "toy_shrink"))
    assert sys.modules["toy_shrink"].CALLS  # the penalty was applied while training


def test_method_from_an_installed_distribution(tmp_path, capsys, monkeypatch, forget_methods, fake_distribution):
    names, modules = forget_methods
    dist = fake_distribution(tmp_path / "site", "amm-toy-shrink", {"toy_shrink_ep.py": METHOD_FILE.replace("NAME", "toy-shrink-ep")},
                             {"avalanche_mm.methods": {"toy-shrink-ep": "toy_shrink_ep"}})
    monkeypatch.syspath_prepend(dist)
    names.append("toy-shrink-ep")
    modules.append("toy_shrink_ep")
    METHODS.refresh()
    _list_check_run_report(capsys, tmp_path, "toy-shrink-ep", _config("toy-shrink-ep"))
    assert METHODS.entry("toy-shrink-ep").source == "toy_shrink_ep"
    assert sys.modules["toy_shrink_ep"].CALLS
