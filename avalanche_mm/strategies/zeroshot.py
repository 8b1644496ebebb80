"""Zero-shot evaluation: the pretrained model, never trained (the survey's upper
reference for transfer and lower one for adaptation).

:class:`ZeroShotPlugin` stops every training epoch before its first step, so a
strategy that carries it goes through Avalanche's whole training loop
(callbacks, loggers, metrics, checkpoints) without touching the weights.
:class:`ZeroShot` is that strategy.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from .finetune import MaskedCrossEntropyLoss
from .twins import MultimodalSupervisedTemplate


class ZeroShotPlugin(SupervisedPlugin):
    """Skips training: every epoch stops before its first minibatch.

    ``experiences_skipped`` counts the experiences skipped (for tests and logs).
    """

    def __init__(self):
        super().__init__()
        self.experiences_skipped = 0

    def before_training_exp(self, strategy, **kwargs):
        self.experiences_skipped += 1

    def before_training_epoch(self, strategy, **kwargs):
        strategy.stop_training()

    def before_training_iteration(self, strategy, **kwargs):
        raise RuntimeError(
            "ZeroShotPlugin: a training iteration started although zero-shot evaluation never "
            "trains; another plugin reset the stop flag."
        )


class ZeroShot(MultimodalSupervisedTemplate):
    """The pretrained model evaluated as it is: training experiences are skipped.

    :param model: the model (e.g. a zero-shot CLIP classifier).
    :param optimizer: unused (an SGD with lr 0 when omitted, as Avalanche needs one).
    :param criterion: the evaluation loss (default cross-entropy).
    :param plugins: more plugins.
    :param base_kwargs: the other ``SupervisedTemplate`` arguments.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Optional[torch.optim.Optimizer] = None,
        criterion: Optional[nn.Module] = None,
        plugins: Optional[List[SupervisedPlugin]] = None,
        **base_kwargs,
    ):
        if optimizer is None:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        self.zeroshot_plugin = ZeroShotPlugin()
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion if criterion is not None else MaskedCrossEntropyLoss(),
            plugins=[self.zeroshot_plugin] + list(plugins or []),
            **base_kwargs,
        )


__all__ = ["ZeroShotPlugin", "ZeroShot"]


# ---------------------------------------------------------------------------
# registration (config name "zeroshot"; no parameters)
# ---------------------------------------------------------------------------
from avalanche_mm.strategies.registry import BuildContext, register_method  # noqa: E402


@register_method(
    "zeroshot",
    summary="the pretrained model, never trained (zero-shot CLIP)",
    params_from=ZeroShot,
    trains=False,
    family="baseline",
    reference="Radford et al., ICML 2021",
)
def _build_zeroshot(ctx: BuildContext, p: dict):
    return ZeroShot(model=ctx.model, criterion=ctx.criterion(), plugins=list(ctx.plugins), **ctx.base_kwargs())
