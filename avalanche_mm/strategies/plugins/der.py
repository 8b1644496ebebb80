"""DER's buffer (Buzzega et al., 2020), dict-aware: logits computed on collated multimodal batches."""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Sequence, SupportsInt

import torch
from avalanche.benchmarks.utils import make_avalanche_dataset
from avalanche.benchmarks.utils.data import AvalancheDataset
from avalanche.benchmarks.utils.data_attribute import TensorDataAttribute
from avalanche.benchmarks.utils.flat_data import FlatData
from avalanche.models.utils import avalanche_forward
from avalanche.training.storage_policy import ReservoirSamplingBuffer
from avalanche.training.supervised.der import ClassBalancedBufferWithLogits as _ClassBalancedBufferWithLogits
from torch import Tensor

from avalanche_mm.data.batch import to_device
from avalanche_mm.strategies.template import resolve_collate

from ._common import make_plugin_loader, split_batch


@torch.no_grad()
def compute_dataset_logits(
    dataset, model, batch_size, device, num_workers=0, collate_fn=None
) -> List[Tensor]:
    """Logits of ``model`` on every sample of ``dataset`` (dict-aware).

    Dict-aware replacement of ``avalanche.training.supervised.der.compute_dataset_logits``:
    the loader uses the dataset's collate, the batch is moved with
    :func:`~avalanche_mm.data.to_device` and the forward goes through
    ``avalanche_forward`` with the task labels.

    :param dataset: the dataset (rows ``(x, y, t, ...)``).
    :param model: the model.
    :param batch_size: loader batch size.
    :param device: model device.
    :param num_workers: loader workers.
    :param collate_fn: optional explicit collate.
    :return: one logits row (on CPU) per sample, in dataset order.
    """
    was_training = model.training
    model.eval()
    logits: List[Tensor] = []
    loader = make_plugin_loader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn
    )
    try:
        for batch in loader:
            x, _, t, _ = split_batch(batch, where="compute_dataset_logits: ")
            x, t = to_device((x, t), device)
            out = avalanche_forward(model, x, t).detach().cpu()
            logits.extend(torch.clone(row) for row in out)
    finally:
        if was_training:
            model.train()
    return logits


class ClassBalancedBufferWithLogits(_ClassBalancedBufferWithLogits):
    """Dict-aware DER buffer (class-balanced reservoir storing logits).

    Same constructor as Avalanche's. The logits of new samples are computed
    with :func:`compute_dataset_logits` (collated dict batches); stored rows
    are ``(x, y, t, logits)`` and keep the data's multimodal collate.

    :param max_size: buffer capacity.
    :param adaptive_size: divide the capacity over the classes seen so far.
    :param total_num_classes: fixed number of classes when not adaptive.
    """

    def update(self, strategy, **kwargs):
        """Add the current experience (with its logits) to the buffer."""
        assert strategy.experience is not None
        new_data: AvalancheDataset = strategy.experience.dataset
        logits = compute_dataset_logits(
            new_data.eval(),
            strategy.model,
            strategy.train_mb_size,
            strategy.device,
            num_workers=kwargs.get("num_workers", 0),
            collate_fn=resolve_collate(new_data, strategy),
        )
        with_logits = make_avalanche_dataset(
            new_data,
            data_attributes=[
                TensorDataAttribute(
                    FlatData([logits], discard_elements_not_in_indices=True),
                    name="logits",
                    use_in_getitem=True,
                )
            ],
        )
        cl_idxs: Dict[int, List[int]] = defaultdict(list)
        targets: Sequence[SupportsInt] = getattr(new_data, "targets")
        for idx, target in enumerate(targets):
            cl_idxs[int(target)].append(idx)
        cl_datasets = {c: with_logits.subset(idxs) for c, idxs in cl_idxs.items()}
        self.seen_classes.update(cl_datasets.keys())
        lens = self.get_group_lengths(len(self.seen_classes))
        class_to_len = dict(zip(self.seen_classes, lens))
        for class_id, new_data_c in cl_datasets.items():
            size = class_to_len[class_id]
            if class_id in self.buffer_groups:
                old = self.buffer_groups[class_id]
                old.update_from_dataset(new_data_c)
                old.resize(strategy, size)
            else:
                new_buffer = ReservoirSamplingBuffer(size)
                new_buffer.update_from_dataset(new_data_c)
                self.buffer_groups[class_id] = new_buffer
        for class_id in self.buffer_groups:
            self.buffer_groups[class_id].resize(strategy, class_to_len[class_id])


__all__ = ['compute_dataset_logits', 'ClassBalancedBufferWithLogits']
