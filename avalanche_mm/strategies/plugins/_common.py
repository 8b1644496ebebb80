"""Helpers shared by the dict-aware plugins: loaders with the data's collate, batch splitting, replay iterators."""

from __future__ import annotations

import collections.abc as cabc
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from avalanche_mm.data.batch import MultimodalBatch, to_device
from avalanche_mm.strategies.template import resolve_collate


def make_plugin_loader(
    dataset: Any,
    *,
    batch_size: int,
    shuffle: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
    strategy: Any = None,
    collate_fn: Optional[Callable] = None,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` that uses the dataset's collate.

    This is what plugins should use instead of a bare ``DataLoader(dataset)``,
    which falls back to PyTorch's default collate and cannot pad
    variable-length modalities.

    :param dataset: the dataset (e.g. an experience's dataset or a buffer).
    :param batch_size: rows per batch (>= 1).
    :param shuffle: shuffle the rows.
    :param drop_last: drop the last incomplete batch.
    :param num_workers: loader workers.
    :param strategy: optional strategy, used for its ``default_collate_fn``
        when the dataset has no collate.
    :param collate_fn: explicit collate; overrides the dataset's.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"make_plugin_loader: batch_size must be an int >= 1, got {batch_size!r}."
        )
    collate = collate_fn if collate_fn is not None else resolve_collate(dataset, strategy)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate,
    )


def split_batch(batch: Any, *, where: str = "") -> tuple:
    """Split a collated minibatch ``(x, y, t, ...)`` into ``(x, y, t, rest)``.

    :param batch: a list/tuple with at least input, target and task label.
    :param where: name of the caller, for the error message.
    """
    if not isinstance(batch, (list, tuple)) or len(batch) < 3:
        got = f"{len(batch)} elements" if isinstance(batch, (list, tuple)) else type(batch).__name__
        raise ValueError(
            f"{where}expected minibatches (x, y, t, ...) from an Avalanche classification "
            f"dataset, got {got}. Build the dataset with make_multimodal_dataset (or give it "
            "targets and targets_task_labels)."
        )
    return batch[0], batch[1], batch[2], list(batch[3:])


def _param_grads(model: torch.nn.Module, device) -> Tensor:
    return torch.cat(
        [
            p.grad.flatten() if p.grad is not None else torch.zeros(p.numel(), device=device)
            for p in model.parameters()
        ]
    )


def _check_nonempty(loader_len: int, what: str) -> None:
    if loader_len == 0:
        raise ValueError(f"{what}: the dataset is empty, cannot compute importances.")


# --------------------------------------------------------------------------
# replay iterators used by the DER / ER-ACE twins
# --------------------------------------------------------------------------
class _MovableDict(dict):
    """A plain dict batch with a ``.to`` (stock code calls ``x.to(device)``)."""

    def to(self, *args, **kwargs):
        device = torch.empty(0).to(*args, **kwargs).device
        return _MovableDict(to_device(dict(self), device))


def device_cycle(loader: DataLoader, device) -> Iterator[list]:
    """Endless iterator over ``loader`` yielding minibatches moved to ``device``.

    A plain ``dict`` input is wrapped so that it also has ``.to`` (stock
    Avalanche code moves replayed inputs with ``x.to(device)``).

    :param loader: the (buffer) loader.
    :param device: target device.
    """
    while True:
        n = 0
        for batch in loader:
            n += 1
            batch = list(to_device(list(batch), device))
            if isinstance(batch[0], dict) and not hasattr(batch[0], "to"):
                batch[0] = _MovableDict(batch[0])
            yield batch
        if n == 0:
            raise RuntimeError(
                "device_cycle: the replay loader produced no batch (buffer smaller than "
                "the replay batch size with drop_last=True)."
            )


def _clone(obj: Any) -> Any:
    """Deep-copy the tensors of a nested batch (detach from loader storage)."""
    if isinstance(obj, Tensor):
        return obj.clone()
    if isinstance(obj, MultimodalBatch):
        return MultimodalBatch(
            {k: v.clone() for k, v in obj.items()},
            present={k: v.clone() for k, v in obj.present.items()},
            lengths={k: v.clone() for k, v in obj.lengths.items()},
            pad_values=obj.pad_values,
        )
    if isinstance(obj, cabc.Mapping):
        return type(obj)({k: _clone(v) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


__all__ = ['make_plugin_loader', 'split_batch', 'device_cycle']
