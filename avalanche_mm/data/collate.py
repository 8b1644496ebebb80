"""Modality specifications and the multimodal collate function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

from .batch import MultimodalBatch


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality of a sample looks like.

    :param name: the modality name (key in the sample's ``x`` dict).
    :param dtype: the tensor dtype every sample must have.
    :param shape: the per-sample shape. For a variable-length modality the
        last entry is ``None`` (padded by the collate, lengths recorded).
    :param pad_value: value used to pad variable-length rows and to fill rows
        where the modality is missing.
    """

    name: str
    dtype: torch.dtype
    shape: Tuple[Optional[int], ...]
    pad_value: float = 0

    @property
    def variable(self) -> bool:
        """True when the last axis has variable length."""
        return len(self.shape) > 0 and self.shape[-1] is None

    def describe(self) -> str:
        dims = ", ".join("L" if d is None else str(d) for d in self.shape)
        return f"{self.name}: [{dims}] {str(self.dtype).replace('torch.', '')}"


def as_tensor(value: Any, *, where: str = "") -> Tensor:
    """Convert arrays/lists to tensors (numpy float64 becomes float32)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(value))
        return t.float() if t.dtype == torch.float64 else t
    if isinstance(value, (list, tuple)):
        return as_tensor(np.asarray(value), where=where)
    raise TypeError(
        f"{where}expected a tensor, numpy array or list for a modality value, got "
        f"{type(value).__name__}. Tokenise text and load files before building the dataset "
        "(or give a loader/tokenizer to make_multimodal_dataset)."
    )


def infer_specs(
    samples: Sequence[Mapping[str, Any]],
    *,
    variable: Optional[Sequence[str]] = None,
    pad_values: Optional[Mapping[str, float]] = None,
) -> Dict[str, ModalitySpec]:
    """Infer one :class:`ModalitySpec` per modality from example samples.

    A modality whose last axis differs between samples is variable-length;
    any other difference (rank, leading axes, dtype) is an error.

    :param samples: sample ``x`` dicts (None values mark missing modalities).
    :param variable: modalities to declare variable-length even if the given
        samples happen to agree on their length.
    :param pad_values: optional pad value per modality.
    """
    if len(samples) == 0:
        raise ValueError("infer_specs needs at least one sample, got none.")
    names = list(samples[0].keys())
    variable = set(variable or ())
    unknown = variable - set(names)
    if unknown:
        raise ValueError(
            f"variable-length modalities {sorted(unknown)} are not in the samples' modalities {names}."
        )
    specs = {}
    for name in names:
        ref = None
        last_lengths = set()
        for i, x in enumerate(samples):
            if set(x.keys()) != set(names):
                raise ValueError(_key_mismatch_message(i, x.keys(), names))
            value = x[name]
            if value is None:
                continue
            value = as_tensor(value, where=f"sample {i}, modality '{name}': ")
            if ref is None:
                ref = (i, value)
            else:
                _check_compatible(name, ref, (i, value), allow_last=True)
            last_lengths.add(value.shape[-1] if value.dim() else None)
        if ref is None:
            raise ValueError(
                f"modality '{name}' is missing (None) in every sample: its shape and dtype "
                "cannot be inferred. Give an explicit ModalitySpec for it."
            )
        shape = list(ref[1].shape)
        if (len(last_lengths) > 1 or name in variable) and shape:
            shape[-1] = None
        specs[name] = ModalitySpec(
            name=name,
            dtype=ref[1].dtype,
            shape=tuple(shape),
            pad_value=(pad_values or {}).get(name, 0),
        )
    return specs


def _key_mismatch_message(index: int, keys, expected) -> str:
    keys, expected = set(keys), set(expected)
    parts = []
    if expected - keys:
        parts.append(f"lacks {sorted(expected - keys)}")
    if keys - expected:
        parts.append(f"has unexpected {sorted(keys - expected)}")
    return (
        f"sample {index} {' and '.join(parts)} (expected modalities {sorted(expected)}). "
        "Every sample must have the same modality keys; mark a missing modality with None."
    )


def _check_compatible(name: str, ref, other, *, allow_last: bool) -> None:
    (i0, a), (i, b) = ref, other
    if a.dtype != b.dtype:
        raise TypeError(
            f"sample {i}, modality '{name}': dtype {b.dtype} differs from {a.dtype} "
            f"(sample {i0}). Convert every sample of a modality to the same dtype."
        )
    if a.dim() != b.dim() or (
        a.shape[:-1] != b.shape[:-1] if allow_last else a.shape != b.shape
    ):
        raise ValueError(
            f"sample {i}, modality '{name}': shape {tuple(b.shape)} is incompatible with "
            f"{tuple(a.shape)} (sample {i0}); only the last axis may vary in length."
        )


def _collate_column(column: Sequence[Any]):
    """Labels and task labels: ints (the usual case) in one ``torch.tensor`` call."""
    if all(type(v) is int for v in column):
        return torch.tensor(column, dtype=torch.long)
    return default_collate(list(column))


class NonFiniteValueError(ValueError):
    """A floating-point modality of a batch holds NaN or Inf (``check_finite=True``)."""


def _raise_if_not_finite(name: str, out: Tensor, *, present: Sequence[bool]) -> None:
    finite = torch.isfinite(out)
    if bool(finite.all()):
        return
    bad_rows = (~finite).reshape(out.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
    row = bad_rows[0]
    values = out[row][~finite[row]]
    kind = "NaN" if bool(torch.isnan(values).any()) else "Inf"
    raise NonFiniteValueError(
        f"sample {row} of the batch, modality '{name}': {int((~finite[row]).sum())} {kind} value(s) "
        f"(samples with non-finite values: {bad_rows[:10]}). Check the data source or its transforms; "
        "check_finite=False skips this check."
    )


class MultimodalCollate:
    """Collate ``(x, y, t, ...)`` samples whose ``x`` is a modality dict.

    Fixed-size modalities are stacked; variable-length ones are padded along
    the last axis with their pad value and their true lengths recorded; a
    modality that is ``None`` in a sample is filled with pad values and marked
    absent in the batch's presence mask. Samples that disagree on modality
    names, ranks, fixed sizes or dtypes are rejected with an error naming the
    sample index, the modality and what differed.

    :param specs: optional mapping modality name -> :class:`ModalitySpec`.
        When given, every sample is checked against it (and fully missing
        modalities can still be materialised); otherwise the first sample of
        each batch is the reference and any last-axis length difference means
        padding.
    :param check_finite: raise when a floating-point modality holds NaN or
        Inf, naming the sample index (in the batch) and the modality.
    """

    def __init__(self, specs: Optional[Mapping[str, ModalitySpec]] = None, *, check_finite: bool = False):
        self.check_finite = bool(check_finite)
        if specs is not None:
            for k, s in specs.items():
                if not isinstance(s, ModalitySpec) or s.name != k:
                    raise TypeError(
                        f"specs must map modality name -> ModalitySpec with the same name, got "
                        f"{k!r} -> {s!r}."
                    )
        self.specs: Optional[Dict[str, ModalitySpec]] = dict(specs) if specs is not None else None

    def __repr__(self) -> str:
        if self.specs is None:
            return "MultimodalCollate()"
        return "MultimodalCollate(" + "; ".join(s.describe() for s in self.specs.values()) + ")"

    def __eq__(self, other):
        return (isinstance(other, MultimodalCollate) and self.specs == other.specs
                and self.check_finite == getattr(other, "check_finite", False))

    def __hash__(self):
        return hash(tuple(sorted((self.specs or {}).items())))

    def __call__(self, samples: Sequence[Sequence[Any]]):
        if len(samples) == 0:
            raise ValueError("MultimodalCollate received an empty list of samples.")
        first = samples[0]
        if not isinstance(first, (tuple, list)) or len(first) < 2:
            raise TypeError(
                f"MultimodalCollate expects samples (x, y, t, ...), got {type(first).__name__}."
            )
        n = len(first)
        xs = []
        for i, s in enumerate(samples):
            if len(s) != n:
                raise ValueError(
                    f"sample {i} has {len(s)} elements, sample 0 has {n}."
                )
            x = s[0]
            if type(x) is not dict and not isinstance(x, Mapping):
                raise TypeError(
                    f"sample {i}: x must be a dict modality -> tensor, got {type(x).__name__}."
                )
            xs.append(x)
        x = self.collate_x(xs)
        rest = [_collate_column([s[j] for s in samples]) for j in range(1, n)]
        return [x] + rest

    def collate_x(self, xs: Sequence[Mapping[str, Any]]) -> MultimodalBatch:
        """Collate only the modality dicts into a :class:`MultimodalBatch`.

        Vectorised: values of one modality that agree on shape and dtype are
        stacked in one call (variable-length ones padded by ``pad_sequence``);
        the per-sample checks, which name the offending sample, run only when
        they disagree.
        """
        names = list(self.specs.keys()) if self.specs is not None else list(xs[0].keys())
        expected = set(names)
        for i, x in enumerate(xs):
            if x.keys() != expected:
                raise ValueError(_key_mismatch_message(i, x.keys(), names))
        data, present, lengths, pads = {}, {}, {}, {}
        for name in names:
            spec = self.specs.get(name) if self.specs is not None else None
            values = [x[name] for x in xs]
            mask = [v is not None for v in values]
            values = [
                v if v is None or isinstance(v, Tensor) else as_tensor(v, where=f"sample {i}, modality '{name}': ")
                for i, v in enumerate(values)
            ]
            real = [v for v in values if v is not None]
            pad = spec.pad_value if spec is not None else 0
            if real:
                d0, s0 = real[0].dtype, real[0].shape
                variable_spec = spec is not None and spec.variable
                # fixed size: torch.stack checks the shapes; only dtypes are compared here
                same = all(v.dtype is d0 for v in real) and (
                    not variable_spec and spec is not None or all(v.shape == s0 for v in real))
                if not same or spec is not None:
                    self._check_values(name, values, spec, {(d0, s0)} if same else {None, (d0, s0)})
                sample_shape = list(real[0].shape)
                dtype = real[0].dtype
            elif spec is not None:
                sample_shape = [0 if d is None else d for d in spec.shape]
                dtype = spec.dtype
            else:
                raise ValueError(
                    f"modality '{name}' is missing in every sample of this batch and no "
                    "ModalitySpec tells its shape; build the dataset with "
                    "make_multimodal_dataset (which records specs) or pass specs=."
                )
            if spec is not None:
                is_variable = spec.variable
            else:
                is_variable = len({v.shape[-1] for v in real}) > 1 if real and real[0].dim() else False
            all_present = len(real) == len(values)
            if is_variable:
                longest = max((v.shape[-1] for v in real), default=0)
                sample_shape[-1] = longest
                lengths[name] = torch.tensor(
                    [0 if v is None else v.shape[-1] for v in values], dtype=torch.long
                )
                if real:
                    padded = torch.nn.utils.rnn.pad_sequence(
                        [v.movedim(-1, 0) for v in real], batch_first=True, padding_value=pad
                    ).movedim(1, -1)
                    if padded.shape[-1] < longest:  # pragma: no cover - pad_sequence pads to the longest
                        padded = torch.nn.functional.pad(padded, (0, longest - padded.shape[-1]), value=pad)
            elif real:
                try:
                    padded = torch.stack(real)
                except RuntimeError:  # shapes differ: name the sample
                    self._check_values(name, values, spec, {None})
                    raise
            else:
                padded = None
            if all_present and padded is not None:
                out = padded.to(dtype) if padded.dtype != dtype else padded
            else:
                out = torch.full((len(xs), *sample_shape), pad, dtype=dtype)
                if padded is not None:
                    rows = torch.tensor([i for i, m in enumerate(mask) if m], dtype=torch.long)
                    out[rows] = padded
            if self.check_finite and out.is_floating_point():
                _raise_if_not_finite(name, out, present=mask)
            data[name] = out
            present[name] = (torch.ones(len(mask), dtype=torch.bool) if all_present
                             else torch.tensor(mask, dtype=torch.bool))
            pads[name] = pad
        return MultimodalBatch(data, present=present, lengths=lengths, pad_values=pads)

    def _check_values(self, name: str, values, spec: Optional[ModalitySpec], kinds) -> None:
        """Per-sample checks (only when the values disagree, or against a spec)."""
        if spec is not None and len(kinds) == 1:
            dtype, shape = next(iter(kinds))
            if dtype == spec.dtype and len(shape) == len(spec.shape) and all(
                d is None or d == s for d, s in zip(spec.shape, shape)
            ):
                return  # every sample matches the spec: no per-sample pass
        ref = None
        for i, v in enumerate(values):
            if v is None:
                continue
            if spec is not None:
                self._check_against_spec(i, v, spec)
            elif ref is None:
                ref = (i, v)
            else:
                _check_compatible(name, ref, (i, v), allow_last=True)

    @staticmethod
    def _check_against_spec(i: int, v: Tensor, spec: ModalitySpec) -> None:
        if v.dtype != spec.dtype:
            raise TypeError(
                f"sample {i}, modality '{spec.name}': dtype {v.dtype}, expected {spec.dtype} "
                f"({spec.describe()}). Convert it (e.g. .float() or .long()) before batching."
            )
        ok = v.dim() == len(spec.shape) and all(
            d is None or d == s for d, s in zip(spec.shape, v.shape)
        )
        if not ok:
            raise ValueError(
                f"sample {i}, modality '{spec.name}': shape {tuple(v.shape)}, expected "
                f"{spec.describe()} (L = any length)."
            )


__all__ = ["ModalitySpec", "MultimodalCollate", "NonFiniteValueError", "infer_specs", "as_tensor"]
