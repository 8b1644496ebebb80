"""Progress bars and the Avalanche loggers selected in a config."""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Mapping

from avalanche.core import SupervisedPlugin
from avalanche.logging import BaseLogger


class ProgressBarPlugin(SupervisedPlugin):
    """tqdm progress bars over training iterations and evaluated experiences.

    Bars go to ``stream`` (stderr by default) and disappear when done, so
    the printed tables stay readable.

    :param label: prefix of the bars (e.g. ``"mtil/zscl"``).
    :param enabled: False turns the plugin into a no-op.
    :param stream: where to draw.
    """

    #: the plugin holds no state worth checkpointing
    stateless = True

    def __init__(self, *, label: str = "", enabled: bool = True, stream=None):
        super().__init__()
        self.label = label
        self.enabled = bool(enabled)
        self.stream = stream
        self._train = None
        self._eval = None

    def _tqdm(self, **kwargs):
        from tqdm.auto import tqdm

        return tqdm(file=self.stream or sys.stderr, leave=False, dynamic_ncols=True, **kwargs)

    def before_training_exp(self, strategy, **kwargs):
        if not self.enabled:
            return
        total = None
        for p in strategy.plugins:
            if getattr(p, "iterations", None) and hasattr(p, "lr_at"):
                total = p.iterations
        if total is None:
            try:
                total = len(strategy.dataloader) * strategy.train_epochs
            except TypeError:
                total = None
        exp = strategy.experience.current_experience
        self._train = self._tqdm(total=total, desc=f"{self.label} train exp {exp}", unit="it")

    def after_training_iteration(self, strategy, **kwargs):
        if self._train is not None:
            self._train.update(1)
            self._train.set_postfix(loss=f"{float(strategy.loss.detach()):.3f}", refresh=False)

    def after_training_exp(self, strategy, **kwargs):
        if self._train is not None:
            self._train.close()
            self._train = None

    def before_eval(self, strategy, **kwargs):
        if not self.enabled:
            return
        self._eval = self._tqdm(desc=f"{self.label} eval", unit="exp")

    def after_eval_exp(self, strategy, **kwargs):
        if self._eval is not None:
            self._eval.update(1)

    def after_eval(self, strategy, **kwargs):
        if self._eval is not None:
            self._eval.close()
            self._eval = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_train"] = None
        state["_eval"] = None
        state["stream"] = None
        return state


class MetricCollector(BaseLogger):
    """Keeps the metric values emitted since the last :meth:`clear` (name -> value)."""

    def __init__(self):
        super().__init__()
        self.values: Dict[str, Any] = {}

    def clear(self) -> None:
        self.values = {}

    def log_single_metric(self, name, value, x_plot) -> None:
        self.values[str(name)] = value

    def log_metrics(self, metric_values) -> None:
        for mv in metric_values:
            self.values[str(mv.name)] = mv.value


def make_loggers(names: List[str], folder: str, *, run_name: str, wandb_cfg: Mapping[str, Any], config: Mapping[str, Any]) -> List[BaseLogger]:
    """The Avalanche loggers named in a config, writing under ``folder``
    (:data:`avalanche_mm.metrics.loggers.LOGGERS`: ``avalanche-mm list loggers``)."""
    from avalanche_mm.metrics.loggers import make_loggers as _make

    return _make(names, folder, run_name=run_name, config={**dict(config), "wandb": dict(wandb_cfg)})


def close_loggers(loggers: List[BaseLogger]) -> None:
    """Close the loggers that hold files or runs."""
    for lg in loggers:
        close = getattr(lg, "close", None)
        if callable(close):
            close()
        fh = getattr(lg, "file", None)
        if fh is not None and hasattr(fh, "close") and fh not in (sys.stdout, sys.stderr):
            fh.close()
        run = getattr(lg, "wandb", None)
        if run is not None and getattr(run, "run", None) is not None:
            run.finish()


__all__ = ["ProgressBarPlugin", "MetricCollector", "make_loggers", "close_loggers"]
