"""A-GEM (Chaudhry et al., 2019), dict-aware: buffer loader with the data's collate."""

from __future__ import annotations

import random
import warnings

import torch
from avalanche.benchmarks.utils.data_loader import GroupBalancedInfiniteDataLoader
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import AGEMPlugin as _AGEMPlugin

from avalanche_mm.data.batch import to_device
from avalanche_mm.strategies.template import resolve_collate

from ._common import split_batch


class AGEMPlugin(_AGEMPlugin):
    """Dict-aware :class:`avalanche.training.plugins.AGEMPlugin`.

    Same constructor and projection. The buffer loader always uses the stored
    data's ``collate_fn``; the reference minibatch is moved with
    :func:`~avalanche_mm.data.to_device` and forwarded with its task labels.
    When there are more experiences than ``sample_size``, each experience still
    contributes one row (instead of a zero-sized loader).

    :param patterns_per_experience: buffer rows per experience.
    :param sample_size: rows of the reference minibatch.
    """

    def __init__(self, patterns_per_experience: int, sample_size: int):
        if int(patterns_per_experience) < 1 or int(sample_size) < 1:
            raise ValueError(
                "AGEMPlugin: patterns_per_experience and sample_size must be >= 1, got "
                f"{patterns_per_experience} and {sample_size}."
            )
        super().__init__(patterns_per_experience, sample_size)

    def before_training_iteration(self, strategy, **kwargs):
        """Reference gradient on a minibatch sampled from the buffer."""
        if len(self.buffers) == 0:
            return
        strategy.model.train()
        strategy.optimizer.zero_grad()
        xref, yref, tref, _ = split_batch(self.sample_from_memory(), where="AGEMPlugin: ")
        xref, yref, tref = to_device((xref, yref, tref), strategy.device)
        out = avalanche_forward(strategy.model, xref, tref)
        loss = strategy._criterion(out, yref)
        loss.backward()
        self.reference_gradients = torch.cat(
            [
                p.grad.view(-1) if p.grad is not None else torch.zeros(p.numel(), device=strategy.device)
                for _, p in strategy.model.named_parameters()
            ]
        )
        strategy.optimizer.zero_grad()

    @torch.no_grad()
    def update_memory(self, dataset, num_workers=0, **kwargs):
        """Add a random subset of ``dataset`` to the buffer and rebuild the loader.

        :param dataset: the experience's dataset.
        :param num_workers: loader workers.
        """
        if num_workers > 0:
            warnings.warn("Num workers > 0 is known to cause heavy slowdowns in AGEM.")
        if len(dataset) == 0:
            raise ValueError("AGEMPlugin: cannot add an empty experience to the buffer.")
        if len(dataset) > self.patterns_per_experience:
            indices = list(range(len(dataset)))
            random.shuffle(indices)  # Python's RNG, as Avalanche's A-GEM
            dataset = dataset.subset(indices[: self.patterns_per_experience])
        self.buffers.append(dataset)
        self.buffer_dataloader = GroupBalancedInfiniteDataLoader(
            self.buffers,
            batch_size=max(1, self.sample_size // len(self.buffers)),
            num_workers=num_workers,
            pin_memory=False,
            persistent_workers=num_workers > 0,
            collate_fn=resolve_collate(self.buffers[0]),
        )
        self.buffer_dliter = iter(self.buffer_dataloader)


__all__ = ['AGEMPlugin']
