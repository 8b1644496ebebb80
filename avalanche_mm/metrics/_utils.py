"""Shared helpers of the plugin metrics: metric names, training progress, model access."""

import contextlib
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional

import torch
from torch import nn

from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name, phase_and_task, stream_type

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate


def exp_metric_name(base: str, strategy: "SupervisedTemplate") -> str:
    """Avalanche-style experience-level name: ``base/<phase>_phase/<stream>_stream/TaskNNN/ExpNNN``.

    The task part is omitted when the experience has several task labels.
    """
    return get_metric_name(base, strategy, add_experience=True, add_task=True)


def stream_metric_name(base: str, strategy: "SupervisedTemplate") -> str:
    """Avalanche-style stream-level name: ``base/<phase>_phase/<stream>_stream``."""
    return get_metric_name(base, strategy, add_experience=False, add_task=False)


def epoch_metric_name(base: str, strategy: "SupervisedTemplate") -> str:
    """Avalanche-style epoch-level name: ``base/<phase>_phase/<stream>_stream/TaskNNN``."""
    return get_metric_name(base, strategy, add_experience=False, add_task=True)


def current_stream_name(strategy: "SupervisedTemplate") -> str:
    """Name of the stream the current experience belongs to (e.g. ``"test"``)."""
    return stream_type(strategy.experience)


def current_phase(strategy: "SupervisedTemplate") -> str:
    """``"train"`` or ``"eval"``."""
    return phase_and_task(strategy)[0]


def x_plot(strategy: "SupervisedTemplate") -> int:
    """The x position Avalanche's own metrics use: the number of training iterations so far."""
    return int(strategy.clock.train_iterations)


def make_value(origin, name: str, value: Any, strategy: "SupervisedTemplate") -> MetricValue:
    """A :class:`MetricValue` at the strategy's current ``x_plot``."""
    return MetricValue(origin, name, value, x_plot(strategy))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``DataParallel`` / ``DistributedDataParallel`` wrappers."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and under ``torch.no_grad``; restore modes after."""
    modes: Dict[str, bool] = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for name, m in model.named_modules():
            m.train(modes.get(name, True))


class TrainingProgress:
    """Counts training experiences started, from the plugin callbacks.

    ``row`` is the accuracy-matrix row that an evaluation run now belongs to: ``None`` before
    any training (the untrained / zero-shot baseline), else the index of the last training
    experience that started. Evaluations inside an experience (periodic eval) write the same
    row as the evaluation after it, and the last one wins, so the final value of a row is the
    model after that experience.
    """

    def __init__(self) -> None:
        self.started = 0

    def on_before_training_exp(self) -> None:
        self.started += 1

    @property
    def row(self) -> Optional[int]:
        return None if self.started == 0 else self.started - 1


__all__ = [
    "exp_metric_name",
    "stream_metric_name",
    "epoch_metric_name",
    "current_stream_name",
    "current_phase",
    "x_plot",
    "make_value",
    "unwrap_model",
    "eval_mode",
    "TrainingProgress",
]
