"""GEM (Lopez-Paz & Ranzato, 2017), dict-aware: episodic memory stored with ``cat_batches``."""

from __future__ import annotations

import torch
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import GEMPlugin as _GEMPlugin

from avalanche_mm.data.batch import batch_size as batch_rows
from avalanche_mm.data.batch import cat_batches, index_batch, to_device

from ._common import _clone, _param_grads, make_plugin_loader, split_batch


class GEMPlugin(_GEMPlugin):
    """Dict-aware :class:`avalanche.training.plugins.GEMPlugin`.

    Same constructor and projection. The episodic memory of each experience
    is one collated batch: ``memory_x[t]`` is a
    :class:`~avalanche_mm.data.MultimodalBatch` (built with
    :func:`~avalanche_mm.data.cat_batches`, so variable-length modalities are
    re-padded) or a tensor for tensor data; reference gradients are computed on
    it with ``avalanche_forward``.

    :param patterns_per_experience: memory rows per experience.
    :param memory_strength: offset of the projection (gamma in the paper).
    """

    def before_training_iteration(self, strategy, **kwargs):
        """Reference gradients of every past experience's memory."""
        n_exp = strategy.clock.train_exp_counter
        if n_exp == 0:
            return
        refs = []
        for t in range(n_exp):
            if t not in self.memory_x:
                raise RuntimeError(
                    f"GEMPlugin: no memory for experience {t}; the plugin must see "
                    "after_training_exp of every experience (was it added mid-stream?)."
                )
            strategy.model.train()
            strategy.optimizer.zero_grad()
            xref, yref, tref = to_device(
                (self.memory_x[t], self.memory_y[t], self.memory_tid[t]), strategy.device
            )
            out = avalanche_forward(strategy.model, xref, tref)
            loss = strategy._criterion(out, yref)
            loss.backward()
            refs.append(_param_grads(strategy.model, strategy.device))
        self.G = torch.stack(refs)  # (experiences, parameters)

    @torch.no_grad()
    def update_memory(self, dataset, t, batch_size):
        """Store up to ``patterns_per_experience`` rows of ``dataset`` as memory ``t``.

        :param dataset: the experience's dataset.
        :param t: the experience index.
        :param batch_size: loader batch size.
        """
        loader = make_plugin_loader(dataset, batch_size=batch_size, shuffle=True)
        xs, ys, ts = [], [], []
        total = 0
        for mbatch in loader:
            x, y, tid, _ = split_batch(mbatch, where="GEMPlugin: ")
            take = min(batch_rows(x), self.patterns_per_experience - total)
            if take <= 0:
                break
            xs.append(index_batch(x, slice(0, take)))
            ys.append(y[:take])
            ts.append(tid[:take])
            total += take
        if not xs:
            raise ValueError(
                f"GEMPlugin: experience {t} has no samples (or patterns_per_experience="
                f"{self.patterns_per_experience}); GEM needs at least one memory row."
            )
        self.memory_x[t] = _clone(cat_batches(xs))
        self.memory_y[t] = torch.cat(ys).clone()
        self.memory_tid[t] = torch.cat(ts).clone()


__all__ = ['GEMPlugin']
