"""bf16 autocast plugin: forward under bf16, weights and grads stay fp32, context never leaks."""

from __future__ import annotations

import pytest
import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from avalanche_mm.data import make_multimodal_dataset
from avalanche_mm.strategies import MultimodalSupervisedTemplate
from avalanche_mm.strategies.mixed_precision import MixedPrecisionPlugin, bf16_supported


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        return self.lin(x["a"])


class _Spy(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.train_dtypes, self.eval_dtypes, self.grad_dtypes, self.autocast_after = [], [], [], []

    def after_forward(self, strategy, **kw):
        self.train_dtypes.append(strategy.mb_output.dtype)

    def after_backward(self, strategy, **kw):
        self.grad_dtypes.append(strategy.model.lin.weight.grad.dtype)

    def after_training_iteration(self, strategy, **kw):
        self.autocast_after.append(torch.is_autocast_enabled("cpu"))

    def after_eval_forward(self, strategy, **kw):
        self.eval_dtypes.append(strategy.mb_output.dtype)


def _run(precision):
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets

    g = torch.Generator().manual_seed(0)
    ds = make_multimodal_dataset({"a": torch.randn(16, 6, generator=g)}, torch.randint(0, 3, (16,), generator=g))
    bm = benchmark_from_datasets(train=[ds], test=[ds])
    spy = _Spy()
    strat = MultimodalSupervisedTemplate(
        model=_Net(), optimizer=torch.optim.SGD(_Net().parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
        train_mb_size=8, eval_mb_size=8, device="cpu", plugins=[MixedPrecisionPlugin(precision=precision), spy], evaluator=None,
    )
    strat.optimizer = torch.optim.SGD(strat.model.parameters(), lr=0.1)
    strat.train(bm.train_stream[0])
    strat.eval(bm.test_stream)
    return strat, spy


def test_bf16_autocast_on_forward_only():
    assert bf16_supported(torch.device("cpu"))
    strat, spy = _run("bf16")
    assert spy.train_dtypes and set(spy.train_dtypes) == {torch.bfloat16}
    assert set(spy.eval_dtypes) == {torch.bfloat16}
    assert set(spy.grad_dtypes) == {torch.float32}
    assert strat.model.lin.weight.dtype == torch.float32
    assert spy.autocast_after and not any(spy.autocast_after)
    assert not torch.is_autocast_enabled("cpu")


def test_fp32_is_a_no_op_and_bad_precision_rejected():
    _, spy = _run("fp32")
    assert set(spy.train_dtypes) == {torch.float32}
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp16'"):
        MixedPrecisionPlugin(precision="fp16")
