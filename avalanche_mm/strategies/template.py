"""The multimodal template mixin.

:class:`MultimodalTemplateMixin` makes any Avalanche template (``SupervisedTemplate``
and every strategy built on it) accept multimodal inputs:

- the minibatch is moved to the device recursively (dicts, tuples, lists,
  nested, :class:`~avalanche_mm.data.MultimodalBatch`) instead of calling
  ``.to`` on each element (which fails for a dict ``x`` in Avalanche 0.6.0);
- the train loader always uses the dataset's ``collate_fn`` (Avalanche 0.6.0
  drops it on the non task-aware / class-incremental path, upstream issue
  1531) or the ``collate_fn`` passed to ``train(...)``;
- eval loaders keep using the dataset's collate, as in Avalanche;
- ``mb_batch_size`` is dict-aware;
- under ``torchrun`` (a process group of several ranks, see
  :mod:`avalanche_mm.distributed`) gradients are averaged over the ranks before
  each optimizer step (weighted by the ranks' minibatch sizes: the gradient of
  the global batch's mean loss), random generators are reseeded identically
  before the end-of-experience callbacks, replicas are verified after each experience,
  and evaluation loaders are not sharded (each rank evaluates the whole
  stream, so metrics are exact). ``train_mb_size`` is per process, as in
  Avalanche's own distributed mode.

Put the mixin first in the bases so its methods take precedence::

    class MyStrategy(MultimodalTemplateMixin, SupervisedTemplate): ...

Each change is small and written so that it could be sent upstream.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch.utils.data import DataLoader

from avalanche_mm import distributed as _dist
from avalanche_mm.data.batch import batch_size, to_device


class MultimodalTemplateMixin:
    """Mixin that makes an Avalanche template multimodal (see module docstring)."""

    #: collate used when neither the dataset nor ``train(collate_fn=...)`` gives one
    default_collate_fn: Optional[Callable] = None

    # -- device move ---------------------------------------------------------
    def _unpack_minibatch(self):
        """Move every element of the minibatch to the device, recursively."""
        mbatch = self.mbatch
        assert mbatch is not None
        if isinstance(mbatch, tuple):
            mbatch = list(mbatch)
            self.mbatch = mbatch
        for i in range(len(mbatch)):
            mbatch[i] = to_device(mbatch[i], self.device, non_blocking=True)

    # -- loaders ---------------------------------------------------------------
    def _resolve_collate(self, kwargs) -> Optional[Callable]:
        collate = kwargs.pop("collate_fn", None)
        return collate if collate is not None else resolve_collate(self.adapted_dataset, self)

    def _loader_args(self, kwargs, **common):
        """Avalanche's common loader arguments plus the resolved collate and ffcv args."""
        assert self.adapted_dataset is not None
        collate = self._resolve_collate(kwargs)
        args = self._obtain_common_dataloader_parameters(**common)
        if collate is not None:
            args["collate_fn"] = collate
        if "ffcv_args" in kwargs:
            args["ffcv_args"] = kwargs["ffcv_args"]
        return args

    def make_train_dataloader(
        self,
        num_workers=0,
        shuffle=True,
        pin_memory=None,
        persistent_workers=False,
        drop_last=False,
        **kwargs,
    ):
        """Build the train loader with the dataset's (or given) collate.

        Same arguments as Avalanche's ``make_train_dataloader``; additionally a
        ``collate_fn`` given to ``strategy.train(exp, collate_fn=...)`` is used.
        """
        from avalanche.benchmarks.utils.data_loader import TaskBalancedDataLoader

        args = self._loader_args(
            kwargs,
            batch_size=self.train_mb_size,
            num_workers=num_workers,
            shuffle=shuffle,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            drop_last=drop_last,
        )
        if hasattr(self.experience, "task_labels"):
            self.dataloader = TaskBalancedDataLoader(
                self.adapted_dataset, oversample_small_groups=True, **args
            )
        else:
            self.dataloader = DataLoader(self.adapted_dataset, **args)

    def make_eval_dataloader(
        self, num_workers=0, shuffle=False, pin_memory=None, persistent_workers=False, **kwargs
    ):
        """Build the eval loader with the dataset's (or given) collate.

        Avalanche 0.6.0 ignores a ``collate_fn`` passed to ``eval(...)``; here
        it takes precedence over the dataset's.
        """
        from avalanche.benchmarks.utils.data_loader import SingleDatasetDataLoader

        args = self._loader_args(
            kwargs,
            batch_size=self.eval_mb_size,
            num_workers=num_workers,
            shuffle=shuffle,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )
        # replicated evaluation: every rank sees the whole test set (exact metrics, no gather)
        self.dataloader = SingleDatasetDataLoader(self.adapted_dataset, distributed_sampling=False, **args)

    # -- data parallel ---------------------------------------------------------
    def optimizer_step(self):
        """Average the gradients over the ranks (when distributed), then step."""
        if _dist.is_distributed():
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            _dist.average_gradients(params, weight=float(self.mb_batch_size))
        super().optimizer_step()

    def _check_distributed_training_compatibility(self):
        """Avalanche flags every plugin without ``supports_distributed``; here DDP safety is
        declared per method (``register_method(distributed=True)``), checked before launch,
        and verified after each experience (replica checksums), so nothing is printed."""
        return True

    def _after_training_exp(self, **kwargs):
        if not _dist.in_process_group():
            return super()._after_training_exp(**kwargs)
        exp = getattr(self.experience, "current_experience", "?")
        _dist.align_rng("after_training_exp", exp)
        super()._after_training_exp(**kwargs)
        # the model and the plugins' state (buffers, queues, counts, memories)
        _dist.check_strategy_replicas(self, where=f"after training experience {exp}")

    # -- dict-aware helpers ----------------------------------------------------
    @property
    def mb_batch_size(self) -> int:
        """Number of samples in the current minibatch (dict-aware)."""
        return batch_size(self.mb_x)



def resolve_collate(dataset: Any, strategy: Any = None) -> Optional[Callable]:
    """The collate function for a loader built over ``dataset`` (train data, a buffer, ...).

    The dataset's own ``collate_fn`` first (Avalanche datasets always carry one; multimodal
    ones carry a :class:`~avalanche_mm.data.MultimodalCollate`), then the strategy's
    ``default_collate_fn`` (see :class:`MultimodalTemplateMixin`), else None (PyTorch's
    default collate).

    :param dataset: the dataset the loader reads.
    :param strategy: optional strategy, for its ``default_collate_fn``.
    """
    collate = getattr(dataset, "collate_fn", None)
    if collate is None and strategy is not None:
        collate = getattr(strategy, "default_collate_fn", None)
    return collate


__all__ = ["MultimodalTemplateMixin", "resolve_collate"]
