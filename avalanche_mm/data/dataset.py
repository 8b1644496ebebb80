"""Builders of task-aware multimodal Avalanche datasets.

:func:`make_multimodal_dataset` turns per-modality data (tensors, arrays,
lists of variable-length tensors, raw strings with a tokenizer, or file lists
with a loader) plus targets and task labels into an Avalanche
``TaskAwareSupervisedClassificationDataset`` whose samples are
``(x, y, t)`` with ``x`` a modality dict and whose ``collate_fn`` is a
:class:`~avalanche_mm.data.collate.MultimodalCollate`. Because the result is
a regular task-aware Avalanche dataset, ``subset``/``concat``, every storage
policy, LwF, task-balanced replay and the benchmark generators work on it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import (
    TaskAwareSupervisedClassificationDataset,
)
from avalanche.benchmarks.utils.flat_data import ConstantSequence
from avalanche.benchmarks.utils.transform_groups import TransformGroups
from torch import Tensor
from torch.utils.data import Dataset

from .collate import ModalitySpec, MultimodalCollate, as_tensor, infer_specs
from .transforms import ModalityTransform


class LazyModality:
    """A modality stored as a list of items (e.g. file paths) and a loader.

    ``loader(item)`` is called when a sample is read and must return a
    tensor/array (or None for a missing modality).

    :param items: one item per sample (paths, ids, ...); None marks missing.
    :param loader: callable item -> tensor/array.
    """

    def __init__(self, items: Sequence[Any], loader: Callable[[Any], Any]):
        if not callable(loader):
            raise TypeError(f"LazyModality loader must be callable, got {loader!r}.")
        self.items = list(items)
        self.loader = loader

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        if item is None:
            return None
        try:
            return self.loader(item)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"LazyModality: loading item {i} ({item!r}) failed: {err}. Check that the "
                "file exists under the dataset root."
            ) from err


class MultimodalTensorDataset(Dataset):
    """A plain torch dataset of ``(x, y)`` multimodal samples.

    :param columns: mapping modality -> per-sample values (a tensor/array with
        samples on axis 0, a list of tensors/arrays/None, or a
        :class:`LazyModality`).
    :param targets: one int target per sample.
    """

    def __init__(self, columns: Mapping[str, Any], targets: Sequence[int]):
        self.columns = dict(columns)
        self.targets = list(int(t) for t in targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = {}
        for name, col in self.columns.items():
            v = col[i]
            x[name] = None if v is None else as_tensor(v, where=f"sample {i}, modality '{name}': ")
        return x, self.targets[i]


def _to_column(name: str, values: Any, tokenizer: Optional[Callable]) -> Any:
    if isinstance(values, LazyModality):
        return values
    if isinstance(values, Tensor):
        return values
    if isinstance(values, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(values))
        return t.float() if t.dtype == torch.float64 else t
    if isinstance(values, (list, tuple)):
        col = []
        for i, v in enumerate(values):
            if v is None:
                col.append(None)
            elif isinstance(v, str):
                if tokenizer is None:
                    raise TypeError(
                        f"modality '{name}' holds raw strings (sample {i}: {v[:40]!r}); "
                        f"pass tokenizers={{'{name}': callable}} to turn text into token ids."
                    )
                col.append(as_tensor(tokenizer(v), where=f"sample {i}, modality '{name}': "))
            else:
                col.append(as_tensor(v, where=f"sample {i}, modality '{name}': "))
        return col
    raise TypeError(
        f"modality '{name}': expected a tensor, array, list or LazyModality, got "
        f"{type(values).__name__}."
    )


def make_multimodal_dataset(
    modalities: Mapping[str, Any],
    targets: Sequence[int],
    *,
    task_labels: Union[int, Sequence[int]] = 0,
    missing: Optional[Mapping[str, Sequence[bool]]] = None,
    tokenizers: Optional[Mapping[str, Callable[[str], Any]]] = None,
    specs: Optional[Mapping[str, ModalitySpec]] = None,
    variable: Optional[Sequence[str]] = None,
    pad_values: Optional[Mapping[str, float]] = None,
    train_transforms: Optional[Mapping[str, Callable]] = None,
    eval_transforms: Optional[Mapping[str, Callable]] = None,
) -> TaskAwareSupervisedClassificationDataset:
    """Build a task-aware multimodal Avalanche classification dataset.

    :param modalities: mapping modality name -> per-sample data: a tensor or
        array with samples on axis 0, a list of tensors/arrays (lengths may
        differ along the last axis), a list of strings (with a tokenizer) or a
        :class:`LazyModality` (file list + loader). ``None`` entries mark the
        modality missing in that sample.
    :param targets: one int class target per sample.
    :param task_labels: one task label for all samples, or one per sample.
    :param missing: optional mapping modality -> boolean sequence; True marks
        the modality missing in that sample (the value becomes ``None``).
    :param tokenizers: optional modality -> callable(str) -> token ids, applied
        once at build time to raw-string modalities.
    :param specs: explicit :class:`ModalitySpec` per modality; inferred from
        the data when omitted.
    :param variable: modalities to treat as variable-length even if all given
        samples share one length (e.g. text).
    :param pad_values: pad value per modality (default 0).
    :param train_transforms: modality -> transform for the ``train`` group.
    :param eval_transforms: modality -> transform for the ``eval`` group
        (defaults to ``train_transforms``).
    :return: an Avalanche ``TaskAwareSupervisedClassificationDataset`` with
        ``targets``, ``targets_task_labels`` and a ``MultimodalCollate``
        ``collate_fn`` (its ``specs`` describe the modalities).
    """
    if not isinstance(modalities, Mapping) or len(modalities) == 0:
        raise ValueError(
            "make_multimodal_dataset needs a non-empty mapping modality name -> data, got "
            f"{modalities!r:.80}."
        )
    targets = _int_list("targets", targets)
    n = len(targets)
    if n == 0:
        raise ValueError(
            "make_multimodal_dataset: the dataset is empty (0 targets). Give at least one sample."
        )
    tokenizers = dict(tokenizers or {})
    columns = {}
    for name, values in modalities.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"modality names must be non-empty strings, got {name!r}.")
        col = _to_column(name, values, tokenizers.get(name))
        if len(col) != n:
            raise ValueError(
                f"modality '{name}' has {len(col)} samples but there are {n} targets; every "
                "modality needs one entry per sample (None where missing)."
            )
        _check_finite(name, col)
        columns[name] = col
    for name, mask in (missing or {}).items():
        if name not in columns:
            raise KeyError(
                f"missing= names modality '{name}', which is not among {sorted(columns)}."
            )
        mask = [bool(m) for m in mask]
        if len(mask) != n:
            raise ValueError(
                f"missing['{name}'] has {len(mask)} entries, expected {n} (one per sample)."
            )
        columns[name] = _MaskedColumn(columns[name], mask)
    if isinstance(task_labels, (int, np.integer)) and not isinstance(task_labels, (bool, np.bool_)):
        if task_labels < 0:
            raise ValueError(f"task_labels: got {int(task_labels)}, expected an integer >= 0.")
        tl_seq: Sequence[int] = ConstantSequence(int(task_labels), n)
    else:
        tl_seq = _int_list("task_labels", task_labels)
        if len(tl_seq) != n:
            raise ValueError(f"task_labels has {len(tl_seq)} entries, expected {n}.")

    base = MultimodalTensorDataset(columns, targets)
    tgroups = None
    if train_transforms is not None or eval_transforms is not None:
        tgroups = TransformGroups(
            {
                "train": ModalityTransform(train_transforms or {}),
                "eval": ModalityTransform(
                    eval_transforms if eval_transforms is not None else (train_transforms or {})
                ),
            }
        )
    if specs is None:
        specs = _infer_dataset_specs(base, tgroups, variable=variable, pad_values=pad_values)
    else:
        missing_specs = set(columns) - set(specs)
        if missing_specs:
            raise ValueError(f"specs= lacks modalities {sorted(missing_specs)}.")
    collate = MultimodalCollate(specs)
    data = TaskAwareSupervisedClassificationDataset(
        [base],
        data_attributes=[
            DataAttribute(targets, "targets"),
            DataAttribute(tl_seq, "targets_task_labels", use_in_getitem=True),
        ],
        transform_groups=tgroups,
        collate_fn=collate,
    )
    return data


class _MaskedColumn:
    def __init__(self, column, mask):
        self.column, self.mask = column, mask

    def __len__(self):
        return len(self.column)

    def __getitem__(self, i):
        return None if self.mask[i] else self.column[i]


def _int_list(what: str, values) -> List[int]:
    """Non-negative integer labels; floats, bools, strings and negatives raise (naming the sample)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{what} must be a sequence of non-negative ints, got {values!r:.80}.")
    if isinstance(values, (Tensor, np.ndarray)):
        dtype = values.dtype
        is_int = (not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool) if isinstance(values, Tensor) else (
            np.issubdtype(dtype, np.integer)
        )
        if not is_int:
            raise TypeError(
                f"{what} must hold integers, got a {type(values).__name__} of dtype {dtype}; convert the labels "
                "to integer class indices (a float or bool label is not a class index)."
            )
        values = values.tolist()
    out = []
    for i, v in enumerate(values):
        if isinstance(v, (Tensor, np.ndarray)) and getattr(v, "ndim", 1) == 0:
            v = v.item()
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            extra = " (non-finite)" if isinstance(v, float) and not np.isfinite(v) else ""
            raise TypeError(
                f"{what}[{i}]: got {v!r}{extra} of type {type(v).__name__}, expected an integer class index >= 0 "
                "(float, bool and string labels are not accepted; map them to integers first)."
            )
        if v < 0:
            raise ValueError(f"{what}[{i}]: got {int(v)}, expected an integer >= 0.")
        out.append(int(v))
    return out


def _check_finite(name: str, col: Any) -> None:
    """Raise naming the first sample of an in-memory column holding NaN or Inf (lazy columns are skipped)."""
    if isinstance(col, Tensor):
        if col.is_floating_point() or col.is_complex():
            bad = ~torch.isfinite(col.reshape(len(col), -1)).all(dim=1) if len(col) and col.dim() > 0 else None
            if bad is not None and bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"sample {i}, modality '{name}': holds NaN or infinite values ({int(bad.sum())} samples in all); "
                    "clean or drop them before building the dataset."
                )
        return
    if isinstance(col, list):
        for i, v in enumerate(col):
            if isinstance(v, Tensor) and (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
                raise ValueError(
                    f"sample {i}, modality '{name}': holds NaN or infinite values; clean or drop it before building the dataset."
                )


def _infer_dataset_specs(base, tgroups, *, variable, pad_values, probe: int = 64):
    """Infer specs from up to ``probe`` samples (after eval transforms if any)."""
    n = len(base)
    idx = np.unique(np.linspace(0, n - 1, num=min(n, probe)).astype(int))
    xs = []
    for i in idx:
        x, _ = base[int(i)]
        if tgroups is not None:
            x = tgroups(([x, 0]), group_name="eval")[0]
        xs.append(x)
    # variable length is also detected on the raw, fully materialised columns
    variable = set(variable or ())
    for name, col in base.columns.items():
        if isinstance(col, list):
            lens = {v.shape[-1] for v in col if isinstance(v, Tensor) and v.dim()}
            if len(lens) > 1:
                variable.add(name)
    try:
        return infer_specs(xs, variable=sorted(variable), pad_values=pad_values)
    except ValueError as err:
        if "missing (None) in every sample" in str(err):
            # look at every sample before giving up
            xs = [base[i][0] for i in range(n)]
            return infer_specs(xs, variable=sorted(variable), pad_values=pad_values)
        raise


def get_modality_specs(dataset) -> Dict[str, ModalitySpec]:
    """The :class:`ModalitySpec` of each modality of a multimodal dataset."""
    collate = getattr(dataset, "collate_fn", None)
    if not isinstance(collate, MultimodalCollate) or collate.specs is None:
        raise TypeError(
            "this dataset has no multimodal collate with specs; build it with "
            "avalanche_mm.data.make_multimodal_dataset."
        )
    return dict(collate.specs)


def make_pair_dataset(
    images: Any,
    texts: Any,
    *,
    pair_ids: Optional[Sequence[int]] = None,
    task_labels: Union[int, Sequence[int]] = 0,
    tokenizer: Optional[Callable[[str], Any]] = None,
    image_transforms: Optional[Callable] = None,
    eval_image_transforms: Optional[Callable] = None,
) -> TaskAwareSupervisedClassificationDataset:
    """Image-text pair dataset (no class labels) for retrieval-style CL.

    Samples are ``({"image": ..., "text": ...}, pair_id, t)``; the target is
    the pair's instance id (unique per pair, by default its index), so
    storage policies and subsetting still work.

    :param images: per-sample images (tensor ``[N, C, H, W]``, list or
        :class:`LazyModality`).
    :param texts: per-sample token ids (list of 1-D tensors) or raw strings
        with ``tokenizer``.
    :param pair_ids: optional instance ids (default ``0..N-1``).
    :param task_labels: one task label for all pairs or one per pair.
    :param tokenizer: callable(str) -> token ids for raw-string captions.
    :param image_transforms: train transform of the image modality.
    :param eval_image_transforms: eval transform of the image modality.
    """
    n = len(images)
    if len(texts) != n:
        raise ValueError(f"make_pair_dataset: {n} images but {len(texts)} texts.")
    ids = list(range(n)) if pair_ids is None else _int_list("pair_ids", pair_ids)
    if len(ids) != n:
        raise ValueError(f"pair_ids has {len(ids)} entries, expected {n}.")
    train_t = {"image": image_transforms} if image_transforms is not None else None
    eval_t = {"image": eval_image_transforms} if eval_image_transforms is not None else None
    return make_multimodal_dataset(
        {"image": images, "text": texts},
        ids,
        task_labels=task_labels,
        tokenizers={"text": tokenizer} if tokenizer is not None else None,
        variable=["text"],
        train_transforms=train_t,
        eval_transforms=eval_t,
    )


__all__ = [
    "LazyModality",
    "MultimodalTensorDataset",
    "make_multimodal_dataset",
    "make_pair_dataset",
    "get_modality_specs",
]
