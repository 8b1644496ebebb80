"""The Avalanche loggers a config can name (``loggers: [text, tensorboard, ...]``).

One :class:`~avalanche_mm.registry.Registry`; a factory takes the strategy's
results ``folder``, the ``run_name`` and the resolved ``config`` and returns a
``BaseLogger``. Other distributions add loggers through the entry-point group
``avalanche_mm.loggers``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, List, Mapping

from avalanche.logging import BaseLogger

from avalanche_mm.registry import Registry

#: every logger a config can name (entry-point group ``avalanche_mm.loggers``)
LOGGERS: Registry = Registry("logger")


def register_logger(name: str, *, summary: str = "", needs: str = ""):
    """Decorator registering ``factory(*, folder, run_name, config) -> BaseLogger``.

    :param name: the config name (an item of ``loggers``).
    :param summary: one line for ``avalanche-mm list``.
    :param needs: an optional package it needs (shown by ``list``).
    """

    def deco(factory: Callable[..., BaseLogger]):
        doc = (factory.__doc__ or "").strip().splitlines()
        LOGGERS.register(name, factory, summary=summary or (doc[0] if doc else name), needs=needs)
        return factory

    return deco


@register_logger("text", summary="avalanche.logging.TextLogger to log.txt")
def _text(*, folder: str, run_name: str, config: Mapping[str, Any]) -> BaseLogger:
    from avalanche.logging import TextLogger

    return TextLogger(open(os.path.join(folder, "log.txt"), "a", encoding="utf-8"))


@register_logger("tensorboard", summary="TensorboardLogger in tb/", needs="tensorboard")
def _tensorboard(*, folder: str, run_name: str, config: Mapping[str, Any]) -> BaseLogger:
    from avalanche.logging import TensorboardLogger

    return TensorboardLogger(tb_log_dir=os.path.join(folder, "tb"))


@register_logger("csv", summary="CSVLogger in csv/ (Avalanche's fixed columns)")
def _csv(*, folder: str, run_name: str, config: Mapping[str, Any]) -> BaseLogger:
    from avalanche.logging import CSVLogger

    return CSVLogger(log_folder=os.path.join(folder, "csv"))


@register_logger("interactive", summary="InteractiveLogger (Avalanche's own bars, on stdout)")
def _interactive(*, folder: str, run_name: str, config: Mapping[str, Any]) -> BaseLogger:
    from avalanche.logging import InteractiveLogger

    return InteractiveLogger()


def wandb_logger_class():
    """Avalanche's ``WandBLogger`` made to work with the installed wandb.

    Avalanche 0.6 calls ``wandb.util.generate_id`` and reads ``wandb.viz``, both
    gone from recent wandb releases; this subclass sets the run id itself and
    logs numbers (scalars, 0-d tensors) only.
    """
    import uuid

    from avalanche.evaluation.metric_results import AlternativeValues
    from avalanche.logging import WandBLogger
    from torch import Tensor

    class CompatWandBLogger(WandBLogger):
        def before_run(self):
            if self.wandb is None:
                self.import_wandb()
            self.init_kwargs = dict(self.init_kwargs or {})
            self.init_kwargs.setdefault("id", os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:12])
            self.wandb.init(**self.init_kwargs)

        def log_single_metric(self, name, value, x_plot):
            self.step = x_plot
            if isinstance(value, AlternativeValues):
                value = value.best_supported_value(float, int, Tensor)
            if isinstance(value, Tensor) and value.dim() == 0:
                value = value.item()
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.wandb.log({name: value}, step=self.step)

    return CompatWandBLogger


@register_logger("wandb", summary="WandBLogger in wandb/ (offline unless wandb.mode says otherwise)", needs="wandb")
def _wandb(*, folder: str, run_name: str, config: Mapping[str, Any]) -> BaseLogger:
    wandb_cfg = config.get("wandb") or {}
    WandBLogger = wandb_logger_class()
    os.environ.setdefault("WANDB_MODE", wandb_cfg.get("mode", "offline"))
    os.environ.setdefault("WANDB_SILENT", "true")
    wdir = os.path.join(folder, "wandb")
    os.makedirs(wdir, exist_ok=True)
    params = {"mode": wandb_cfg.get("mode", "offline")}
    if wandb_cfg.get("entity"):
        params["entity"] = wandb_cfg["entity"]
    return WandBLogger(
        project_name=wandb_cfg.get("project", "avalanche-mm"),
        run_name=run_name,
        dir=wdir,
        path=os.path.join(folder, "wandb", "artifacts"),
        config=dict(config),
        save_code=False,
        params=params,
    )


def make_loggers(names: List[str], folder: str, *, run_name: str, config: Mapping[str, Any]) -> List[BaseLogger]:
    """The loggers named in a config, writing under ``folder``."""
    return [LOGGERS[name](folder=folder, run_name=run_name, config=config) for name in names]


__all__ = ["LOGGERS", "register_logger", "make_loggers", "wandb_logger_class"]
