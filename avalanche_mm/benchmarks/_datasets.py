"""Dataset operations the scenario generators share.

Everything here works on task-aware multimodal Avalanche datasets (built by
:func:`avalanche_mm.data.make_multimodal_dataset`) and returns new datasets,
leaving the input untouched.

:class:`SampleMap` is the one mechanism that changes samples after they are
built (target remapping, missing modalities, corruptions): a node of
Avalanche's flat-data tree that receives every element *with its index and
the active transform group*, so train/eval transform switching keeps working
through it and per-sample decisions stay attached to the sample when the
dataset is later subset or concatenated (replay buffers, validation splits).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import (
    TaskAwareSupervisedClassificationDataset,
)
from avalanche.benchmarks.utils.data import AvalancheDataset, _FlatDataWithTransform
from avalanche.benchmarks.utils.data_attribute import TaskLabels
from avalanche.benchmarks.utils.flat_data import ConstantSequence
from avalanche.benchmarks.utils.transform_groups import EmptyTransformGroups

#: ``fn(element, index, read) -> element``; ``read(j)`` returns element ``j``
#: of the same dataset (same transform group), before this map.
ElementFn = Callable[[list, int, Callable[[int], list]], list]


class SampleMap(_FlatDataWithTransform):
    """A flat-data node applying ``fn`` to each element with its index.

    Only the node built with ``fn`` applies it; nodes that Avalanche derives
    from it by ``subset``/``concat`` (which re-instantiate the class) get
    ``fn=None`` and only forward to their children, so ``fn`` runs exactly
    once per read, with the index the sample had when the map was attached.
    """

    def __init__(self, datasets, *, fn: Optional[ElementFn] = None, **kwargs):
        if fn is not None and kwargs.get("transform_groups") is None:
            # an (empty) transform group disables flattening of this node, so
            # the index seen by ``fn`` is stable under later subset/concat
            kwargs["transform_groups"] = EmptyTransformGroups()
        super().__init__(datasets, **kwargs)
        self._fn = fn

    def _getitem_recursive_call(self, idx, group_name):
        element = super()._getitem_recursive_call(idx, group_name)
        if self._fn is None:
            return element

        def read(j: int):
            return list(super(SampleMap, self)._getitem_recursive_call(j, group_name))

        return self._fn(list(element), int(idx), read)


def map_samples(
    dataset: AvalancheDataset,
    fn: ElementFn,
    *,
    targets: Optional[Sequence[int]] = None,
    task_labels: Optional[Union[int, Sequence[int]]] = None,
) -> TaskAwareSupervisedClassificationDataset:
    """A new task-aware dataset whose elements are ``fn(element, index, read)``.

    :param dataset: the source dataset (must have ``targets`` and
        ``targets_task_labels``).
    :param fn: element mapper, see :data:`ElementFn`. The element is
        ``[x, y]`` (task labels are appended afterwards by Avalanche).
    :param targets: the new targets when ``fn`` changes ``y``.
    :param task_labels: new task labels (one int or one per sample).
    """
    _require_task_aware(dataset, "map_samples")
    node = SampleMap([dataset._flat_data], fn=fn)
    n = len(dataset)
    new_targets = list(dataset.targets) if targets is None else [int(t) for t in targets]
    if len(new_targets) != n:
        raise ValueError(f"map_samples: {len(new_targets)} targets for {n} samples.")
    if task_labels is None:
        tl = list(dataset.targets_task_labels)
    elif isinstance(task_labels, (int, np.integer)):
        tl = ConstantSequence(int(task_labels), n)
    else:
        tl = [int(t) for t in task_labels]
    return TaskAwareSupervisedClassificationDataset(
        [node],
        data_attributes=[
            DataAttribute(new_targets, "targets"),
            DataAttribute(tl, "targets_task_labels", use_in_getitem=True),
        ],
        collate_fn=dataset.collate_fn,
    )


def remap_targets(dataset: AvalancheDataset, mapping: Dict[int, int]):
    """A copy of ``dataset`` whose targets are ``mapping[y]`` (in samples too)."""
    missing = set(int(t) for t in dataset.targets.uniques) - set(mapping)
    if missing:
        raise KeyError(
            f"remap_targets: no new id for classes {sorted(missing)}; give a mapping for "
            "every class in the dataset."
        )
    new_targets = [mapping[int(t)] for t in dataset.targets]

    def _fn(element, index, read):
        element[1] = mapping[int(element[1])]
        return element

    return map_samples(dataset, _fn, targets=new_targets)


def with_task_label(dataset: AvalancheDataset, task_label: int):
    """A copy of ``dataset`` where every sample has task label ``task_label``."""
    return dataset.update_data_attribute(
        "targets_task_labels", TaskLabels(ConstantSequence(int(task_label), len(dataset)))
    )


def indices_of_classes(dataset: AvalancheDataset, classes) -> List[int]:
    """Indices of the samples whose target is in ``classes`` (ascending)."""
    wanted = set(int(c) for c in classes)
    idx = []
    for c in sorted(wanted):
        idx.extend(dataset.targets.val_to_idx.get(c, []))
    return sorted(idx)


def split_class_balanced(dataset: AvalancheDataset, size: float, rng: np.random.Generator):
    """Split off ``size`` (a fraction in (0, 1)) of each class, chosen by ``rng``.

    :return: ``(rest, split)``.
    """
    if not 0.0 < float(size) < 1.0:
        raise ValueError(
            f"validation_size must be a fraction strictly between 0 and 1, got {size!r}."
        )
    keep, take = [], []
    for c in sorted(dataset.targets.uniques):
        idx = np.array(dataset.targets.val_to_idx[c])
        idx = idx[rng.permutation(len(idx))]
        k = int(round(size * len(idx)))
        if len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        take.extend(idx[:k].tolist())
        keep.extend(idx[k:].tolist())
    if not take:
        raise ValueError(
            f"validation_size={size} leaves the validation split empty (every class has "
            "a single sample); use more data or no validation stream."
        )
    return dataset.subset(sorted(keep)), dataset.subset(sorted(take))


def _require_task_aware(dataset, where: str) -> None:
    if not isinstance(dataset, AvalancheDataset):
        raise TypeError(
            f"{where} expects an Avalanche dataset built with "
            "avalanche_mm.data.make_multimodal_dataset (or make_pair_dataset), got "
            f"{type(dataset).__name__}."
        )
    for attr in ("targets", "targets_task_labels"):
        if not hasattr(dataset, attr):
            raise TypeError(
                f"{where}: the dataset has no '{attr}' attribute; build it with "
                "avalanche_mm.data.make_multimodal_dataset."
            )


__all__ = [
    "SampleMap",
    "map_samples",
    "remap_targets",
    "with_task_label",
    "indices_of_classes",
    "split_class_balanced",
]
