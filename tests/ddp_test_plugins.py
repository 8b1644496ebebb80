"""Plugins the 2-process main-job test injects through a config's ``imports`` + ``plugins``."""

from __future__ import annotations

import json
import os

from avalanche.core import SupervisedPlugin

from avalanche_mm import distributed as D
from avalanche_mm.strategies.registry import register_plugin


def weight_sums(model) -> dict:
    """name -> [sum, position-weighted sum] of every floating-point tensor of the state.

    The key third of an attention ``in_proj_bias`` is left out: its true gradient is zero
    (adding a constant to every key shifts a softmax row by a constant), so Adam normalises
    float rounding noise into full-size steps there, and that noise differs with the order
    in which gradients are summed (1 vs 2 processes).
    """
    import torch

    out = {}
    for name, t in model.state_dict().items():
        if not torch.is_tensor(t) or not t.is_floating_point() or t.numel() == 0:
            continue
        v = t.detach().double().reshape(-1).clone()
        if name.endswith("in_proj_bias"):
            d = v.numel() // 3
            v[d: 2 * d] = 0
        w = torch.arange(1, v.numel() + 1, dtype=torch.float64) / v.numel()
        out[name] = [float(v.sum()), float((v * w).sum())]
    return out


class RecordWeights(SupervisedPlugin):
    """After each training experience, rank 0 writes the weight sums of the model."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def after_training_exp(self, strategy, **kwargs):
        if D.is_main_process():
            k = strategy.experience.current_experience
            with open(os.path.join(self.folder, f"weights_{k}.json"), "w") as fh:
                json.dump(weight_sums(strategy.model), fh)


class KillRank(SupervisedPlugin):
    """Rank 1 dies (SIGKILL-like ``os._exit``) in experience 1, once (a marker file remembers)."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def before_training_iteration(self, strategy, **kwargs):
        if D.rank() == 1 and strategy.experience.current_experience == 1 and not os.path.exists(self.marker):
            if strategy.clock.train_exp_iterations >= 1:
                open(self.marker, "w").close()
                os._exit(9)


@register_plugin("test-record-weights")
def _record(ctx):
    return RecordWeights(ctx.folder)


@register_plugin("test-kill-rank1")
def _kill(ctx):
    marker = os.environ.get("AMM_TEST_KILL_MARKER")
    return KillRank(marker) if marker else None
