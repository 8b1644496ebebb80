"""WiSE-FT: the weights after a task are the interpolation of fine-tuned and reference weights."""

import copy

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.strategies import WiSEFT, WiSEFTPlugin
from avalanche_mm.strategies.wiseft import interpolate_weights


class Snap(SupervisedPlugin):
    """Weights at the start of each experience and just before WiSE-FT acts."""

    def __init__(self):
        super().__init__()
        self.start, self.tuned = [], []

    def before_training_exp(self, strategy, **kw):
        self.start.append(copy.deepcopy(strategy.model.state_dict()))

    def after_training_exp(self, strategy, **kw):
        self.tuned.append(copy.deepcopy(strategy.model.state_dict()))


def _run(bundle, model, *, alpha, reference, n_exp=1):
    snap = Snap()
    strat = WiSEFT(
        model=model,
        optimizer=torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2),
        alpha=alpha,
        reference=reference,
        iterations=2,
        train_mb_size=8,
        plugins=[snap],  # runs before the WiSE-FT plugin
        evaluator=EvaluationPlugin(),
    )
    for exp in list(bundle.scenario.train_stream)[:n_exp]:
        strat.train(exp)
    return snap


def _close(model, expected):
    state = model.state_dict()
    return all(torch.allclose(state[k], v, atol=1e-6) for k, v in expected.items() if v.is_floating_point())


def test_interpolates_with_the_task_start(setup):
    bundle, model = setup
    m = copy.deepcopy(model)
    snap = _run(bundle, m, alpha=0.8, reference="task_start", n_exp=2)
    s, f = snap.start[1], snap.tuned[1]
    expected = {k: 0.8 * f[k] + 0.2 * s[k] for k in f if f[k].is_floating_point()}
    assert _close(m, expected)
    assert not _close(m, {k: v for k, v in f.items() if v.is_floating_point()})  # it did act


def test_interpolates_with_the_initial_model(setup):
    bundle, model = setup
    m = copy.deepcopy(model)
    init = copy.deepcopy(model.state_dict())
    snap = _run(bundle, m, alpha=0.5, reference="initial", n_exp=2)
    f = snap.tuned[1]
    assert _close(m, {k: 0.5 * f[k] + 0.5 * init[k] for k in f if f[k].is_floating_point()})


def test_alpha_one_keeps_the_fine_tuned_weights(setup):
    bundle, model = setup
    m = copy.deepcopy(model)
    snap = _run(bundle, m, alpha=1.0, reference="task_start")
    assert _close(m, {k: v for k, v in snap.tuned[0].items() if v.is_floating_point()})


def test_interpolate_weights_checks_shapes_and_validation():
    lin = torch.nn.Linear(2, 2)
    ref = {k: torch.zeros_like(v) for k, v in lin.state_dict().items()}
    w = lin.weight.detach().clone()
    interpolate_weights(lin, ref, 0.25)
    assert torch.allclose(lin.weight, 0.25 * w)
    with pytest.raises(ValueError, match="shape"):
        interpolate_weights(lin, {"weight": torch.zeros(3, 3)}, 0.5)
    with pytest.raises(KeyError, match="lacks"):
        interpolate_weights(lin, {"nope": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        WiSEFTPlugin(alpha=1.5)
    with pytest.raises(ValueError, match="reference"):
        WiSEFTPlugin(reference="previous")
