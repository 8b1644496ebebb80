"""EWC (Kirkpatrick et al., 2017), dict-aware: the importance loop handles multimodal batches."""

from __future__ import annotations

import warnings

import torch
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import EWCPlugin as _EWCPlugin
from avalanche.training.utils import zerolike_params_dict

from avalanche_mm.data.batch import to_device

from ._common import make_plugin_loader, split_batch, _check_nonempty


class EWCPlugin(_EWCPlugin):
    """Dict-aware :class:`avalanche.training.plugins.EWCPlugin`.

    Same constructor and penalty; the Fisher importance pass collates the
    experience's data with its own ``collate_fn``, moves the batch with
    :func:`~avalanche_mm.data.to_device` and forwards through
    ``avalanche_forward`` (task labels included), so multimodal batches with
    variable-length modalities work.

    :param ewc_lambda: weight of the penalty.
    :param mode: ``"separate"`` or ``"online"``.
    :param decay_factor: decay of the importances (``"online"`` mode only).
    :param keep_importance_data: keep importances of every experience.
    """

    def compute_importances(
        self, model, criterion, optimizer, dataset, device, batch_size, num_workers=0
    ):
        """Diagonal Fisher importances on ``dataset`` (dict-aware).

        :param model: the model.
        :param criterion: the loss (called as ``criterion(out, y)``).
        :param optimizer: the optimizer (only used to zero gradients).
        :param dataset: the experience's dataset.
        :param device: device of the model.
        :param batch_size: minibatch size of the importance pass.
        :param num_workers: loader workers.
        :return: dict parameter name -> ``ParamData`` of importances.
        """
        model.eval()
        if torch.device(device).type == "cuda":
            for module in model.modules():
                if isinstance(module, torch.nn.RNNBase):
                    warnings.warn(
                        "RNN-like modules do not support backward calls while in `eval` "
                        "mode on CUDA devices. Setting all `RNNBase` modules to `train` mode."
                    )
                    module.train()
        importances = zerolike_params_dict(model)
        loader = make_plugin_loader(dataset, batch_size=batch_size, num_workers=num_workers)
        _check_nonempty(len(loader), "EWCPlugin")
        for batch in loader:
            x, y, t, _ = split_batch(batch, where="EWCPlugin: ")
            x, y, t = to_device((x, y, t), device)
            optimizer.zero_grad()
            out = avalanche_forward(model, x, t)
            loss = criterion(out, y)
            loss.backward()
            for (k1, p), (k2, imp) in zip(model.named_parameters(), importances.items()):
                assert k1 == k2, f"parameter order changed during EWC ({k1} != {k2})"
                if p.grad is not None:
                    imp.data += p.grad.data.clone().pow(2)
        for imp in importances.values():
            imp.data /= float(len(loader))
        model.train()
        return importances


__all__ = ['EWCPlugin']
