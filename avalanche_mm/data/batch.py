"""The multimodal batch and dict-aware batch helpers.

A collated multimodal input is a :class:`MultimodalBatch`: a ``dict`` mapping
modality name -> batched tensor, plus explicit per-modality presence masks and
true lengths of variable-length modalities. The generic helpers
(:func:`to_device`, :func:`batch_size`, :func:`index_batch`,
:func:`cat_batches`) work on any nesting of tensors, dicts, tuples, lists and
multimodal batches, so plugins can use them instead of tensor-only operations.
"""

from __future__ import annotations

import collections.abc as cabc
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor


class MultimodalBatch(dict):
    """A batch of multimodal inputs: ``modality name -> tensor [B, ...]``.

    Besides the tensors it carries:

    - ``present[m]``: ``BoolTensor[B]`` for every modality (True where the
      sample has the modality). Rows of a missing modality hold pad values and
      must be ignored through this mask.
    - ``lengths[m]``: ``LongTensor[B]`` of true lengths along the last axis,
      for every variable-length (padded) modality.

    ``len(batch)`` is the batch size (not the number of modalities: use
    ``len(batch.modalities)`` for that), so code that sizes a batch with
    ``len(mb_x)`` keeps working.

    :param data: mapping modality name -> tensor with the batch on axis 0.
    :param present: optional mapping modality -> ``BoolTensor[B]``. Modalities
        without an entry are present in every row.
    :param lengths: optional mapping modality -> ``LongTensor[B]``.
    :param pad_values: optional mapping modality -> pad value used when rows
        are padded or blanked (default 0).
    """

    def __init__(
        self,
        data: Optional[Mapping[str, Tensor]] = None,
        *,
        present: Optional[Mapping[str, Tensor]] = None,
        lengths: Optional[Mapping[str, Tensor]] = None,
        pad_values: Optional[Mapping[str, float]] = None,
    ):
        super().__init__(data or {})
        sizes = {}
        for name, value in self.items():
            if not isinstance(name, str):
                raise TypeError(
                    f"MultimodalBatch keys must be modality names (str), got {name!r} "
                    f"of type {type(name).__name__}."
                )
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"MultimodalBatch expects a tensor for modality '{name}', got "
                    f"{type(value).__name__}. Collate samples with MultimodalCollate."
                )
            if value.dim() == 0:
                raise ValueError(
                    f"modality '{name}' is a 0-d tensor; a batch needs the batch on axis 0."
                )
            sizes[name] = value.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"all modalities of a batch must have the same batch size, got {sizes}."
            )
        self._bs = next(iter(sizes.values())) if sizes else 0
        self.pad_values: Dict[str, float] = dict(pad_values or {})
        self.lengths: Dict[str, Tensor] = {}
        for name, value in (lengths or {}).items():
            self._check_known(name, "lengths")
            self.lengths[name] = self._check_row_vector(name, value, "lengths")
        self.present: Dict[str, Tensor] = {}
        for name in self.keys():
            mask = (present or {}).get(name)
            if mask is None:
                mask = torch.ones(self._bs, dtype=torch.bool, device=self[name].device)
            else:
                mask = self._check_row_vector(name, mask, "present").bool()
            self.present[name] = mask
        for name in present or {}:
            self._check_known(name, "present")

    # -- validation helpers -------------------------------------------------
    def _check_known(self, name: str, what: str) -> None:
        if name not in self:
            raise KeyError(
                f"{what} given for modality '{name}', which is not in the batch "
                f"(modalities: {sorted(self.keys())})."
            )

    def _check_row_vector(self, name: str, value: Any, what: str) -> Tensor:
        value = torch.as_tensor(value)
        if value.shape != (self._bs,):
            raise ValueError(
                f"{what}['{name}'] must have shape ({self._bs},) (one entry per row), "
                f"got {tuple(value.shape)}."
            )
        return value

    # -- dict behaviour -----------------------------------------------------
    def __missing__(self, key):
        raise KeyError(
            f"modality {key!r} is not in this batch (modalities: {sorted(self.keys())}). "
            "If some samples lack a modality, keep the key in every sample, set it to "
            "None where it is missing, and read batch.present[modality]."
        )

    def __len__(self) -> int:  # batch size, see class docstring
        return self._bs

    def __bool__(self) -> bool:
        return dict.__len__(self) > 0

    def __repr__(self) -> str:
        parts = []
        for name, value in self.items():
            extra = ""
            if name in self.lengths:
                extra = ", padded"
            n_missing = int((~self.present[name]).sum())
            if n_missing:
                extra += f", {n_missing} missing"
            parts.append(f"{name}: {tuple(value.shape)} {value.dtype}{extra}")
        return f"MultimodalBatch(size={self._bs}; " + "; ".join(parts) + ")"

    def __reduce__(self):
        return (
            _rebuild_batch,
            (dict(self), self.present, self.lengths, self.pad_values),
        )

    def __copy__(self):
        return MultimodalBatch(
            dict(self),
            present=dict(self.present),
            lengths=dict(self.lengths),
            pad_values=dict(self.pad_values),
        )

    def update(self, *args, **kwargs):  # keep masks consistent with the data
        super().update(*args, **kwargs)
        for name in self.keys():
            if name not in self.present:
                self.present[name] = torch.ones(
                    len(self[name]), dtype=torch.bool, device=self[name].device
                )

    # -- accessors ----------------------------------------------------------
    @property
    def modalities(self) -> tuple:
        """Names of the modalities in this batch, in insertion order."""
        return tuple(self.keys())

    @property
    def batch_size(self) -> int:
        """Number of rows."""
        return self._bs

    def padding_mask(self, modality: str) -> Tensor:
        """``BoolTensor[B, L]``: True at real (non-pad) positions of ``modality``.

        For a fixed-size modality every position is real.
        """
        value = self[modality]
        length = value.shape[-1]
        if modality not in self.lengths:
            return torch.ones(self._bs, length, dtype=torch.bool, device=value.device)
        steps = torch.arange(length, device=value.device)
        return steps.unsqueeze(0) < self.lengths[modality].to(value.device).unsqueeze(1)

    # -- transformations (all return new batches) ----------------------------
    def to(self, *args, **kwargs) -> "MultimodalBatch":
        """Move/cast every tensor (data, masks, lengths) like ``Tensor.to``.

        A dtype cast applies to floating-point modalities only: token ids,
        masks and lengths keep their dtype (only their device changes).
        """
        non_blocking = kwargs.pop("non_blocking", False)
        device = torch.empty(0).to(*args, **kwargs).device
        moved = {
            k: (
                v.to(*args, non_blocking=non_blocking, **kwargs)
                if v.is_floating_point()
                else v.to(device, non_blocking=non_blocking)
            )
            for k, v in self.items()
        }

        def _dev(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return MultimodalBatch(
            moved,
            present={k: _dev(v) for k, v in self.present.items()},
            lengths={k: _dev(v) for k, v in self.lengths.items()},
            pad_values=self.pad_values,
        )

    def select(self, idx) -> "MultimodalBatch":
        """Rows ``idx`` (int, slice, index tensor/list or boolean mask)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(idx, None)
        return MultimodalBatch(
            {k: v[idx] for k, v in self.items()},
            present={k: _index_row_vec(v, idx) for k, v in self.present.items()},
            lengths={k: _index_row_vec(v, idx) for k, v in self.lengths.items()},
            pad_values=self.pad_values,
        )

    def drop(self, *modalities: str) -> "MultimodalBatch":
        """A copy with ``modalities`` marked absent in every row.

        Their tensors are replaced by pad values (never silently kept), and
        ``present[m]`` is all False, so a model that honours presence masks
        sees the modality as missing.
        """
        for m in modalities:
            if m not in self:
                raise KeyError(
                    f"cannot drop modality '{m}': the batch has {sorted(self.keys())}."
                )
        data = dict(self)
        present = dict(self.present)
        for m in modalities:
            data[m] = torch.full_like(self[m], self.pad_values.get(m, 0))
            present[m] = torch.zeros_like(self.present[m])
        return MultimodalBatch(
            data, present=present, lengths=dict(self.lengths), pad_values=self.pad_values
        )

    def keep(self, modalities: Iterable[str]) -> "MultimodalBatch":
        """A copy where only ``modalities`` stay present (the others are dropped)."""
        keep = set(modalities)
        unknown = keep - set(self.keys())
        if unknown:
            raise KeyError(
                f"cannot keep modalities {sorted(unknown)}: the batch has {sorted(self.keys())}."
            )
        return self.drop(*[m for m in self.keys() if m not in keep])

    @staticmethod
    def cat(batches: Sequence["MultimodalBatch"]) -> "MultimodalBatch":
        """Concatenate batches row-wise; variable-length modalities are re-padded."""
        batches = list(batches)
        if not batches:
            raise ValueError("MultimodalBatch.cat needs at least one batch, got none.")
        names = batches[0].modalities
        for i, b in enumerate(batches):
            if not isinstance(b, MultimodalBatch):
                raise TypeError(
                    f"MultimodalBatch.cat: item {i} is {type(b).__name__}, expected MultimodalBatch."
                )
            if set(b.modalities) != set(names):
                raise ValueError(
                    f"MultimodalBatch.cat: batch {i} has modalities {sorted(b.modalities)}, "
                    f"batch 0 has {sorted(names)}."
                )
        data, lengths, present = {}, {}, {}
        pad_values = dict(batches[0].pad_values)
        for m in names:
            tensors = [b[m] for b in batches]
            if any(m in b.lengths for b in batches):
                longest = max(t.shape[-1] for t in tensors)
                pv = pad_values.get(m, 0)
                tensors = [_pad_last(t, longest, pv) for t in tensors]
                lengths[m] = torch.cat(
                    [
                        b.lengths[m]
                        if m in b.lengths
                        else torch.full((len(b),), b[m].shape[-1], dtype=torch.long)
                        for b in batches
                    ]
                )
            data[m] = torch.cat(tensors)
            present[m] = torch.cat([b.present[m] for b in batches])
        return MultimodalBatch(data, present=present, lengths=lengths, pad_values=pad_values)


def _rebuild_batch(data, present, lengths, pad_values):
    return MultimodalBatch(data, present=present, lengths=lengths, pad_values=pad_values)


def _index_row_vec(vec: Tensor, idx) -> Tensor:
    if isinstance(idx, Tensor):
        idx = idx.to(vec.device)
    return vec[idx]


def _pad_last(t: Tensor, length: int, value: float) -> Tensor:
    missing = length - t.shape[-1]
    if missing <= 0:
        return t
    pad_shape = tuple(t.shape[:-1]) + (missing,)
    return torch.cat([t, t.new_full(pad_shape, value)], dim=-1)


# --------------------------------------------------------------------------
# generic, nesting-aware helpers
# --------------------------------------------------------------------------
def to_device(obj: Any, device, non_blocking: bool = False) -> Any:
    """Move every tensor in a nested structure to ``device``.

    Handles tensors, :class:`MultimodalBatch`, mappings, named tuples, tuples
    and lists at any depth; other objects are returned unchanged.
    """
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, MultimodalBatch):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, cabc.Mapping):
        moved = {k: to_device(v, device, non_blocking) for k, v in obj.items()}
        try:
            return type(obj)(moved)
        except TypeError:
            return moved
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def batch_size(obj: Any) -> int:
    """Number of rows of a (possibly nested) batch."""
    if isinstance(obj, MultimodalBatch):
        return len(obj)
    if isinstance(obj, Tensor):
        if obj.dim() == 0:
            raise ValueError("batch_size: a 0-d tensor has no batch axis.")
        return obj.shape[0]
    if isinstance(obj, cabc.Mapping):
        for value in obj.values():
            return batch_size(value)
        raise ValueError("batch_size: empty mapping, cannot tell the batch size.")
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise ValueError("batch_size: empty sequence, cannot tell the batch size.")
        if all(isinstance(v, (int, float, str)) for v in obj):
            return len(obj)
        return batch_size(obj[0])
    raise TypeError(f"batch_size: cannot size an object of type {type(obj).__name__}.")


def index_batch(obj: Any, idx) -> Any:
    """Rows ``idx`` of a (possibly nested) batch: int, slice, index tensor or mask."""
    if isinstance(obj, MultimodalBatch):
        return obj.select(idx)
    if isinstance(obj, Tensor):
        if isinstance(idx, Tensor):
            idx = idx.to(obj.device)
        return obj[idx]
    if isinstance(obj, cabc.Mapping):
        return type(obj)({k: index_batch(v, idx) for k, v in obj.items()})
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(index_batch(v, idx) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(index_batch(v, idx) for v in obj)
    raise TypeError(f"index_batch: cannot index an object of type {type(obj).__name__}.")


def cat_batches(batches: Sequence[Any]) -> Any:
    """Concatenate (possibly nested) batches row-wise."""
    batches = list(batches)
    if not batches:
        raise ValueError("cat_batches needs at least one batch, got none.")
    first = batches[0]
    if isinstance(first, MultimodalBatch):
        return MultimodalBatch.cat(batches)
    if isinstance(first, Tensor):
        return torch.cat([b.to(first.device) for b in batches])
    if isinstance(first, cabc.Mapping):
        keys = list(first.keys())
        for i, b in enumerate(batches):
            if list(b.keys()) != keys and set(b.keys()) != set(keys):
                raise ValueError(
                    f"cat_batches: batch {i} has keys {sorted(b.keys())}, batch 0 has {sorted(keys)}."
                )
        return type(first)({k: cat_batches([b[k] for b in batches]) for k in keys})
    if isinstance(first, (list, tuple)):
        return type(first)(cat_batches(list(parts)) for parts in zip(*batches))
    raise TypeError(f"cat_batches: cannot concatenate objects of type {type(first).__name__}.")


__all__ = [
    "MultimodalBatch",
    "to_device",
    "batch_size",
    "index_batch",
    "cat_batches",
]
