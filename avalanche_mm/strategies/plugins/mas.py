"""MAS (Aljundi et al., 2018), dict-aware: the importance loop handles multimodal batches."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import MASPlugin as _MASPlugin
from avalanche.training.utils import zerolike_params_dict

from avalanche_mm.data.batch import to_device

from ._common import make_plugin_loader, split_batch, _check_nonempty


class MASPlugin(_MASPlugin):
    """Dict-aware :class:`avalanche.training.plugins.MASPlugin`.

    Same constructor and penalty; the importance pass collates the experience
    with its ``collate_fn``, moves batches with
    :func:`~avalanche_mm.data.to_device` and forwards through
    ``avalanche_forward``.

    :param lambda_reg: weight of the penalty.
    :param alpha: weight of the previous importances in the update.
    :param verbose: show a progress bar during the importance pass.
    """

    def _get_importance(self, strategy):
        importance = dict(zerolike_params_dict(strategy.model))
        if not strategy.experience:
            raise ValueError("MASPlugin: the current experience is not available.")
        dataset = strategy.experience.dataset
        if dataset is None:
            raise ValueError("MASPlugin: the current experience has no dataset.")
        strategy.model.train()
        loader = make_plugin_loader(dataset, batch_size=strategy.train_mb_size, strategy=strategy)
        _check_nonempty(len(loader), "MASPlugin")
        batches: Any = loader
        if self.verbose:
            from tqdm.auto import tqdm

            print("Computing importance")
            batches = tqdm(loader)
        for batch in batches:
            x, _, t, _ = split_batch(batch, where="MASPlugin: ")
            x, t = to_device((x, t), strategy.device)
            strategy.optimizer.zero_grad()
            out = avalanche_forward(strategy.model, x, t)
            loss = torch.norm(out, p="fro", dim=1).pow(2).mean()
            loss.backward()
            for name, param in strategy.model.named_parameters():
                if param.requires_grad and param.grad is not None:
                    importance[name].data += param.grad.abs()
        for k in importance:
            importance[k].data /= float(len(loader))
        return importance


__all__ = ['MASPlugin']
