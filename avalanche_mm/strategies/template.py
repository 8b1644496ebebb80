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
  and evaluation is sharded (:attr:`~MultimodalTemplateMixin.distributed_eval`):
  each rank runs the forward pass on its slice of every *global* evaluation
  minibatch (``eval_mb_size`` stays the global size), then the minibatch and the
  outputs are gathered, so the metrics (``after_eval_iteration``) read the
  global minibatch in the 1-process order on every rank. ``train_mb_size`` is
  per process, as in Avalanche's own distributed mode.

Put the mixin first in the bases so its methods take precedence::

    class MyStrategy(MultimodalTemplateMixin, SupervisedTemplate): ...

Each change is small and written so that it could be sent upstream.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

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

        self._eval_plan = None
        if self._sharded_eval_wanted(kwargs, shuffle):
            self._check_sharded_model()
            n, b, w, r = len(self.adapted_dataset), int(self.eval_mb_size), _dist.world_size(), _dist.rank()
            # a rank without rows in a minibatch (smaller than the world) runs its forward on the
            # minibatch's first row as a placeholder and contributes nothing to the gather
            batches = [idx or [k * b] for k, idx in enumerate(_dist.shard_eval_batches(n, b, w, r))]
            args = self._loader_args(
                kwargs, num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers
            )
            self.dataloader = DataLoader(self.adapted_dataset, batch_sampler=batches, **args)
            self._eval_plan = _dist.eval_shard_counts(n, b, w)
            return
        args = self._loader_args(
            kwargs,
            batch_size=self.eval_mb_size,
            num_workers=num_workers,
            shuffle=shuffle,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )
        # 1 process, or replicated evaluation: every rank reads the whole test set
        self.dataloader = SingleDatasetDataLoader(self.adapted_dataset, distributed_sampling=False, **args)

    # -- evaluation under several processes ---------------------------------------
    @property
    def distributed_eval(self) -> str:
        """How several processes evaluate (``distributed.eval``; no effect in 1 process).

        - ``"sharded"`` (default): each rank runs the forward pass on a disjoint,
          contiguous slice of every global evaluation minibatch
          (:func:`avalanche_mm.distributed.shard_eval_batches`); the inputs,
          targets, task labels and outputs are then gathered so that every rank
          holds the global minibatch, in the 1-process order, before
          ``criterion()`` and the ``after_eval_iteration`` callbacks. Metrics
          are those of a 1-process evaluation; a metric that runs the model
          again on the minibatch uses :meth:`map_eval_rows` to shard that pass too.
        - ``"replicated"``: every rank evaluates the whole stream (no collective).
        """
        return getattr(self, "_distributed_eval", "sharded")

    @distributed_eval.setter
    def distributed_eval(self, mode: str) -> None:
        if mode not in _dist.EVAL_MODES:
            raise ValueError(f"distributed.eval: got {mode!r}, expected one of {list(_dist.EVAL_MODES)}")
        self._distributed_eval = mode

    def _sharded_eval_wanted(self, kwargs, shuffle) -> bool:
        return (
            _dist.is_distributed()
            and self.distributed_eval == "sharded"
            and not shuffle
            and "ffcv_args" not in kwargs
        )

    def _check_sharded_model(self) -> None:
        """A module whose output mixes the rows of a minibatch (in-batch similarities) must say
        how to rebuild the global output (``sharded_eval_output``); it can only do so as the
        strategy's model itself."""
        if callable(getattr(self.model, "sharded_eval_output", None)):
            return
        for name, m in self.model.named_modules():
            if name and callable(getattr(m, "sharded_eval_output", None)):
                raise _dist.DistributedError(
                    f"distributed.eval: the model's submodule '{name}' ({type(m).__name__}) computes in-batch "
                    "outputs, which sharded evaluation rebuilds only when it is the strategy's model itself; "
                    "set distributed.eval: replicated"
                )

    def eval_epoch(self, **kwargs):
        """Avalanche's evaluation loop; under sharded evaluation the forward pass runs on this
        rank's slice and the minibatch and outputs are gathered before ``criterion()`` and
        ``after_eval_iteration`` (see :attr:`distributed_eval`)."""
        plan = getattr(self, "_eval_plan", None)
        if plan is None:
            return super().eval_epoch(**kwargs)
        try:
            for k, self.mbatch in enumerate(self.dataloader):
                self._eval_shard = None
                self._unpack_minibatch()
                self._before_eval_iteration(**kwargs)
                self._before_eval_forward(**kwargs)
                # per-sample draws in evaluation (MoE noise_at_eval): those of the global minibatch
                _dist.set_row_mapping(_dist.row_mapping(plan[k], order="rank", local=self.mb_batch_size))
                try:
                    self.mb_output = self.forward()
                finally:
                    _dist.set_row_mapping(None)
                self._after_eval_forward(**kwargs)
                self._gather_eval_minibatch(plan[k])
                self.loss = self.criterion()
                self._after_eval_iteration(**kwargs)
        finally:
            self._eval_plan = None
            self._eval_shard = None

    def _gather_eval_minibatch(self, counts: List[int]) -> None:
        local_x, local_t = self.mb_x, self.mb_task_id
        hook = getattr(self.model, "sharded_eval_output", None)
        if callable(hook):  # in-batch outputs: the model rebuilds the global one
            self.mb_output = hook(self.mb_output, lambda obj: _dist.all_gather_rows(obj, counts, where="model state"))
            self.mbatch = _dist.all_gather_rows(list(self.mbatch), counts, where="evaluation minibatch")
        else:
            both = _dist.all_gather_rows([self.mb_output, list(self.mbatch)], counts, where="evaluation minibatch and output")
            self.mb_output, self.mbatch = both[0], both[1]
        self._eval_shard = (counts, local_x, local_t)

    def map_eval_rows(self, fn: Callable[[Any, Any], Any]) -> Any:
        """``fn(x, task_labels)`` on the current evaluation minibatch, for a row-wise ``fn``
        (an extra forward pass, e.g. with a modality removed).

        Under sharded evaluation each rank applies ``fn`` to its own slice and the results are
        gathered (global minibatch order), so the pass is sharded too; otherwise it is
        ``fn(self.mb_x, self.mb_task_id)``. Every rank must call it (a collective).
        """
        shard = getattr(self, "_eval_shard", None)
        if shard is None:
            return fn(self.mb_x, self.mb_task_id)
        counts, x, t = shard
        return _dist.all_gather_rows(fn(x, t), counts, where="row-wise evaluation pass")

    def gather_eval_rows(self, obj: Any) -> Any:
        """Rows a plugin computed on this rank's slice of the current evaluation minibatch
        (e.g. in ``before_eval_forward``), gathered into the global minibatch's rows (the
        identity outside sharded evaluation). Every rank must call it (a collective)."""
        shard = getattr(self, "_eval_shard", None)
        if shard is None:
            return obj
        return _dist.all_gather_rows(obj, shard[0], where="plugin rows")

    # -- data parallel ---------------------------------------------------------
    def _before_forward(self, **kwargs):
        """Under several processes, when the model draws per-sample noise (MoE router noise,
        sharded dropout: :func:`avalanche_mm.distributed.draws_per_row`), set the row mapping
        of this minibatch (one exchange of the ranks' row counts) so those draws equal a
        1-process run's; plugins may change the minibatch before, so it comes last."""
        super()._before_forward(**kwargs)
        _dist.set_row_mapping(None)
        if not _dist.is_distributed():
            return
        flag = getattr(self, "_draws_per_row", None)  # looked up once per experience (and model)
        if flag is None or flag[0] is not self.model:
            flag = self._draws_per_row = (self.model, _dist.draws_per_row(self.model))
        if flag[1]:
            sizes = _dist._gather_sizes(int(self.mb_batch_size))
            _dist.set_row_mapping(_dist.row_mapping(sizes, order="sampler"))

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        self._draws_per_row = None  # plugins may have attached modules (adapters) meanwhile

    def _after_forward(self, **kwargs):
        _dist.set_row_mapping(None)
        super()._after_forward(**kwargs)

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
