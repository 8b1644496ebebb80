"""Multimodal scenario generators in the Avalanche 0.6 style.

Every generator takes task-aware multimodal datasets (built with
:func:`avalanche_mm.data.make_multimodal_dataset` or
:func:`~avalanche_mm.data.make_pair_dataset`), splits them with ``subset``,
wraps the parts in ``DatasetExperience`` -> ``EagerCLStream`` and returns a
:class:`MultimodalScenario` (a ``CLScenario``) decorated with Avalanche's
``with_classes_timeline`` and ``with_task_labels``. Arguments are keyword-only
and every random choice comes from ``seed``.

Besides Avalanche's attributes (``classes_in_this_experience``,
``previous_classes``, ``classes_seen_so_far``, ``future_classes``,
``task_label``/``task_labels``), each experience carries:

- ``class_names``: names of ``sorted(classes_in_this_experience)``, in that
  order (for zero-shot heads);
- ``dataset_name``: the dataset the experience comes from (multi-dataset and
  real-data benchmarks; otherwise the benchmark's name or ``None``);
- ``modalities``: the modality names the experience's samples carry.

The scenario itself carries ``class_names`` (indexed by global class id),
``n_classes``, ``modalities``, ``dataset_names`` and ``info`` (protocol
metadata: class order, memory sizes, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels

from avalanche_mm.data import get_modality_specs

from ._datasets import (
    _require_task_aware,
    indices_of_classes,
    remap_targets,
    split_class_balanced,
    with_task_label,
)


class MultimodalScenario(CLScenario):
    """A ``CLScenario`` that also knows class names, modalities and protocol.

    :param streams: the streams (``EagerCLStream``).
    :param class_names: names indexed by global class id (None for pair data
        or local label spaces).
    :param modalities: modality names of the samples.
    :param dataset_names: names of the datasets used, in experience order.
    :param info: free protocol metadata (class order, memory size, ...).
    """

    def __init__(
        self,
        streams,
        *,
        class_names: Optional[Sequence[str]] = None,
        modalities: Sequence[str] = (),
        dataset_names: Sequence[str] = (),
        info: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__(streams)
        self.class_names: Optional[List[str]] = (
            list(class_names) if class_names is not None else None
        )
        self.modalities: Tuple[str, ...] = tuple(modalities)
        self.dataset_names: List[str] = list(dataset_names)
        self.info: Dict[str, Any] = dict(info or {})

    @property
    def n_classes(self) -> Optional[int]:
        """Number of classes in the global class space (None if unknown)."""
        return None if self.class_names is None else len(self.class_names)

    def derive(self, streams) -> "MultimodalScenario":
        """A scenario with other ``streams`` and the same metadata."""
        return MultimodalScenario(
            streams,
            class_names=self.class_names,
            modalities=self.modalities,
            dataset_names=self.dataset_names,
            info=self.info,
        )

    def __repr__(self) -> str:
        parts = [f"{name}: {len(s)} exps" for name, s in self.streams.items()]
        return (
            f"MultimodalScenario({', '.join(parts)}; modalities={list(self.modalities)}; "
            f"classes={self.n_classes})"
        )


@dataclass
class TaskDataset:
    """One dataset of a multi-dataset (MTIL-style) sequence.

    :param name: the dataset name (``experience.dataset_name``).
    :param train: its training dataset (targets ``0..len(class_names)-1``).
    :param test: its test dataset (same label space).
    :param class_names: its class names, indexed by its local class id.
    :param templates: prompt templates (``"a photo of a {}."``) for zero-shot.
    """

    name: str
    train: Any
    test: Any
    class_names: Sequence[str]
    templates: Sequence[str] = field(default_factory=lambda: ("a photo of a {}.",))


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    return int(seed)


def _modalities_of(dataset) -> Tuple[str, ...]:
    try:
        return tuple(get_modality_specs(dataset).keys())
    except TypeError:
        return ()


def _decorate(name, datasets, extras, *, timeline=True):
    exps = [DatasetExperience(dataset=d) for d in datasets]
    stream = EagerCLStream(name, exps)
    if timeline:
        stream = with_classes_timeline(stream)
    stream = with_task_labels(stream)
    for exp, extra in zip(stream, extras):
        for key, value in extra.items():
            setattr(exp, key, value)
    return stream


def _names_for(exp_classes, class_names):
    if class_names is None:
        return None
    return [class_names[c] for c in sorted(exp_classes)]


def _stream_extras(datasets, class_names, base_extra, per_exp=None):
    extras = []
    for i, d in enumerate(datasets):
        extra = dict(base_extra)
        extra["modalities"] = _modalities_of(d)
        extra["class_names"] = _names_for(d.targets.uniques, class_names)
        if per_exp is not None:
            extra.update(per_exp[i])
        extras.append(extra)
    return extras


def _check_class_names(class_names, classes, where):
    if class_names is None:
        return None
    names = list(class_names)
    if classes and max(classes) >= len(names):
        raise ValueError(
            f"{where}: class_names has {len(names)} entries but the data has class id "
            f"{max(classes)}; give one name per class id 0..{max(classes)}."
        )
    return names


def _validation(train_sets, validation_size, seed):
    if not validation_size:
        return train_sets, None
    rng = np.random.default_rng([seed, 7919])
    rest, valid = [], []
    for d in train_sets:
        a, b = split_class_balanced(d, validation_size, rng)
        rest.append(a)
        valid.append(b)
    return rest, valid


def _assemble(
    train_sets,
    test_sets,
    *,
    class_names,
    seed,
    validation_size,
    valid_sets=None,
    extra=None,
    per_exp_train=None,
    per_exp_test=None,
    timeline=True,
    modalities=(),
    dataset_names=(),
    info=None,
):
    if valid_sets is None:
        train_sets, valid_sets = _validation(train_sets, validation_size, seed)
    extra = dict(extra or {})
    streams = [
        _decorate(
            "train",
            train_sets,
            _stream_extras(train_sets, class_names, extra, per_exp_train),
            timeline=timeline,
        )
    ]
    if valid_sets is not None:
        streams.append(
            _decorate(
                "valid",
                valid_sets,
                _stream_extras(valid_sets, class_names, extra, per_exp_train),
                timeline=timeline,
            )
        )
    streams.append(
        _decorate(
            "test",
            test_sets,
            _stream_extras(test_sets, class_names, extra, per_exp_test),
            timeline=timeline,
        )
    )
    return MultimodalScenario(
        streams,
        class_names=class_names,
        modalities=modalities,
        dataset_names=dataset_names,
        info=info,
    )


def _resolve_class_split(classes, *, num_experiences, classes_per_experience, where):
    n = len(classes)
    if (num_experiences is None) == (classes_per_experience is None):
        raise ValueError(
            f"{where}: give exactly one of num_experiences or classes_per_experience "
            f"(got num_experiences={num_experiences!r}, "
            f"classes_per_experience={classes_per_experience!r})."
        )
    if num_experiences is not None:
        if int(num_experiences) < 1 or int(num_experiences) > n:
            raise ValueError(
                f"{where}: num_experiences must be between 1 and the number of classes "
                f"({n}), got {num_experiences}."
            )
        if n % int(num_experiences):
            raise ValueError(
                f"{where}: {n} classes cannot be split evenly into {num_experiences} "
                "experiences; pass classes_per_experience=[...] with one count per "
                "experience instead."
            )
        sizes = [n // int(num_experiences)] * int(num_experiences)
    elif isinstance(classes_per_experience, (int, np.integer)):
        if classes_per_experience < 1 or n % int(classes_per_experience):
            raise ValueError(
                f"{where}: classes_per_experience={classes_per_experience} does not divide "
                f"the {n} classes; give a list of counts that sums to {n}."
            )
        sizes = [int(classes_per_experience)] * (n // int(classes_per_experience))
    else:
        sizes = [int(s) for s in classes_per_experience]
        if any(s < 1 for s in sizes) or sum(sizes) != n:
            raise ValueError(
                f"{where}: classes_per_experience={sizes} must be positive and sum to the "
                f"number of classes ({n})."
            )
    return sizes


def _resolve_class_order(classes, class_order, seed, where):
    if class_order is None:
        rng = np.random.default_rng(seed)
        return [classes[i] for i in rng.permutation(len(classes))]
    order = [int(c) for c in class_order]
    if sorted(order) != sorted(classes):
        extra = sorted(set(order) - set(classes))
        lacking = sorted(set(classes) - set(order))
        dup = len(order) != len(set(order))
        raise ValueError(
            f"{where}: class_order must be a permutation of the dataset's classes "
            f"{sorted(classes)[:20]}{'...' if len(classes) > 20 else ''}; it has unknown "
            f"{extra}, lacks {lacking}{', and repeats classes' if dup else ''}."
        )
    return order


# --------------------------------------------------------------------------
# class- and task-incremental
# --------------------------------------------------------------------------
def class_incremental_scenario(
    train_dataset,
    test_dataset,
    *,
    num_experiences: Optional[int] = None,
    classes_per_experience: Optional[Union[int, Sequence[int]]] = None,
    class_order: Optional[Sequence[int]] = None,
    seed: int = 0,
    class_names: Optional[Sequence[str]] = None,
    task_labels: bool = False,
    validation_size: float = 0.0,
    valid_dataset=None,
    name: Optional[str] = None,
    info: Optional[Mapping[str, Any]] = None,
) -> MultimodalScenario:
    """Class-incremental (or, with ``task_labels``, task-incremental) split.

    Experience ``i`` holds the training samples of the ``i``-th group of
    classes in ``class_order``; test experience ``i`` holds the test samples
    of the same classes. Class ids stay global.

    :param train_dataset: task-aware multimodal training dataset.
    :param test_dataset: task-aware multimodal test dataset (its classes must
        be among the training classes).
    :param num_experiences: number of experiences (must divide the classes).
    :param classes_per_experience: an int, or one count per experience.
    :param class_order: a permutation of the classes; random by ``seed``
        when omitted.
    :param seed: seed for the class order and the validation split.
    :param class_names: names indexed by class id.
    :param task_labels: if True, experience ``i`` has task label ``i``.
    :param validation_size: fraction of each training class moved to a
        ``valid`` stream (0 = no validation stream).
    :param valid_dataset: an official validation set, split by the same
        class groups into the ``valid`` stream (instead of
        ``validation_size``).
    :param name: value of ``experience.dataset_name``.
    :param info: extra protocol metadata stored in ``scenario.info``.
    """
    seed = _check_seed(seed)
    where = "class_incremental_scenario"
    _require_task_aware(train_dataset, where)
    _require_task_aware(test_dataset, where)
    classes = sorted(int(c) for c in train_dataset.targets.uniques)
    unknown = set(int(c) for c in test_dataset.targets.uniques) - set(classes)
    if unknown:
        raise ValueError(
            f"{where}: the test set has classes {sorted(unknown)} that the training set "
            "lacks; every test class must also be a training class."
        )
    class_names = _check_class_names(class_names, classes, where)
    order = _resolve_class_order(classes, class_order, seed, where)
    sizes = _resolve_class_split(
        classes,
        num_experiences=num_experiences,
        classes_per_experience=classes_per_experience,
        where=where,
    )
    groups, start = [], 0
    for s in sizes:
        groups.append(order[start : start + s])
        start += s
    train_sets, test_sets = [], []
    for i, group in enumerate(groups):
        tr_idx = indices_of_classes(train_dataset, group)
        te_idx = indices_of_classes(test_dataset, group)
        if not te_idx:
            raise ValueError(
                f"{where}: experience {i} (classes {group}) has no test samples; every "
                "experience needs test data for its classes."
            )
        tr, te = train_dataset.subset(tr_idx), test_dataset.subset(te_idx)
        if task_labels:
            tr, te = with_task_label(tr, i), with_task_label(te, i)
        train_sets.append(tr)
        test_sets.append(te)
    meta = {"class_order": order, "classes_per_experience": sizes, "seed": seed}
    meta.update(info or {})
    valid_sets = None
    if valid_dataset is not None:
        if validation_size:
            raise ValueError(f"{where}: give validation_size or valid_dataset, not both.")
        _require_task_aware(valid_dataset, where)
        valid_sets = []
        for i, group in enumerate(groups):
            va = valid_dataset.subset(indices_of_classes(valid_dataset, group))
            valid_sets.append(with_task_label(va, i) if task_labels else va)
    return _assemble(
        train_sets,
        test_sets,
        class_names=class_names,
        seed=seed,
        validation_size=validation_size,
        valid_sets=valid_sets,
        extra={"dataset_name": name},
        modalities=_modalities_of(train_dataset),
        dataset_names=[name] if name else [],
        info=meta,
    )


def task_incremental_scenario(train_dataset, test_dataset, **kwargs) -> MultimodalScenario:
    """Task-incremental split: :func:`class_incremental_scenario` with task labels.

    Experience ``i`` (train and test) has task label ``i``; class ids stay
    global. Takes the same keyword arguments as
    :func:`class_incremental_scenario` except ``task_labels``.
    """
    if "task_labels" in kwargs:
        raise TypeError(
            "task_incremental_scenario always sets task labels; do not pass task_labels= "
            "(use class_incremental_scenario for the class-incremental variant)."
        )
    return class_incremental_scenario(train_dataset, test_dataset, task_labels=True, **kwargs)


# --------------------------------------------------------------------------
# domain-incremental
# --------------------------------------------------------------------------
def domain_incremental_scenario(
    train_datasets: Sequence[Any],
    test_datasets: Sequence[Any],
    *,
    domain_names: Optional[Sequence[str]] = None,
    class_names: Optional[Sequence[str]] = None,
    domain_order: Optional[Sequence[int]] = None,
    task_labels: bool = False,
    seed: int = 0,
    validation_size: float = 0.0,
    info: Optional[Mapping[str, Any]] = None,
) -> MultimodalScenario:
    """Domain-incremental: one experience per domain, same label space.

    :param train_datasets: one training dataset per domain.
    :param test_datasets: one test dataset per domain (same order).
    :param domain_names: one name per domain (``experience.dataset_name``
        and ``experience.domain_name``).
    :param class_names: names indexed by class id (shared by all domains).
    :param domain_order: a permutation of the domain indices.
    :param task_labels: if True, experience ``i`` has task label ``i``.
    :param seed: seed of the validation split.
    :param validation_size: fraction of each class moved to ``valid``.
    :param info: extra protocol metadata.
    """
    seed = _check_seed(seed)
    where = "domain_incremental_scenario"
    train_datasets, test_datasets = list(train_datasets), list(test_datasets)
    if not train_datasets or len(train_datasets) != len(test_datasets):
        raise ValueError(
            f"{where}: give one training and one test dataset per domain; got "
            f"{len(train_datasets)} training and {len(test_datasets)} test datasets."
        )
    for d in train_datasets + test_datasets:
        _require_task_aware(d, where)
    n = len(train_datasets)
    names = list(domain_names) if domain_names is not None else [f"domain{i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{where}: {len(names)} domain_names for {n} domains.")
    order = list(range(n)) if domain_order is None else [int(i) for i in domain_order]
    if sorted(order) != list(range(n)):
        raise ValueError(f"{where}: domain_order must be a permutation of 0..{n - 1}, got {order}.")
    all_classes = sorted(set().union(*[set(d.targets.uniques) for d in train_datasets]))
    class_names = _check_class_names(class_names, all_classes, where)
    train_sets, test_sets, per_exp = [], [], []
    for i, k in enumerate(order):
        tr, te = train_datasets[k], test_datasets[k]
        if task_labels:
            tr, te = with_task_label(tr, i), with_task_label(te, i)
        train_sets.append(tr)
        test_sets.append(te)
        per_exp.append({"dataset_name": names[k], "domain_name": names[k], "domain": k})
    meta = {"domain_order": [names[k] for k in order], "seed": seed}
    meta.update(info or {})
    return _assemble(
        train_sets,
        test_sets,
        class_names=class_names,
        seed=seed,
        validation_size=validation_size,
        per_exp_train=per_exp,
        per_exp_test=per_exp,
        modalities=_modalities_of(train_datasets[0]),
        dataset_names=[names[k] for k in order],
        info=meta,
    )


# --------------------------------------------------------------------------
# multi-dataset (MTIL)
# --------------------------------------------------------------------------
#: MTIL order I (ZSCL): the datasets in alphabetical order.
MTIL_ORDER_I: Tuple[str, ...] = (
    "Aircraft",
    "Caltech101",
    "CIFAR100",
    "DTD",
    "EuroSAT",
    "Flowers",
    "Food",
    "MNIST",
    "OxfordPet",
    "StanfordCars",
    "SUN397",
)
#: MTIL order II (ZSCL).
MTIL_ORDER_II: Tuple[str, ...] = (
    "StanfordCars",
    "Food",
    "MNIST",
    "OxfordPet",
    "Flowers",
    "SUN397",
    "Aircraft",
    "Caltech101",
    "DTD",
    "EuroSAT",
    "CIFAR100",
)


def multi_dataset_scenario(
    datasets: Sequence[TaskDataset],
    *,
    order: Optional[Sequence[str]] = None,
    label_space: str = "global",
    task_labels: bool = True,
    seed: int = 0,
    validation_size: float = 0.0,
    info: Optional[Mapping[str, Any]] = None,
) -> MultimodalScenario:
    """Multi-dataset incremental (MTIL style): one experience per dataset.

    The test stream has one experience per dataset in the same order; it is
    complete from the start, so a model can be evaluated on datasets it has
    not trained on yet (zero-shot transfer).

    :param datasets: the :class:`TaskDataset` s (local targets ``0..C-1``).
    :param order: dataset names in experience order (default: as given);
        :data:`MTIL_ORDER_I` / :data:`MTIL_ORDER_II` are the MTIL orders.
    :param label_space: ``"global"`` (default): dataset ``k``'s classes get
        ids ``offset_k .. offset_k + C_k - 1`` and ``scenario.class_names``
        concatenates the datasets' names; ``"local"``: targets stay local
        (``0..C_k-1``) and ``scenario.class_names`` is None.
    :param task_labels: if True (default), experience ``i`` has task label
        ``i`` (the dataset identity MTIL evaluation uses).
    :param seed: seed of the validation split.
    :param validation_size: fraction of each class moved to ``valid``.
    :param info: extra protocol metadata.

    Experiences carry ``dataset_name``, ``class_names`` (the dataset's own
    names in local order), ``templates`` and ``class_offset`` (first global
    id of the dataset; 0 with local labels).
    """
    seed = _check_seed(seed)
    where = "multi_dataset_scenario"
    datasets = list(datasets)
    if not datasets:
        raise ValueError(f"{where}: give at least one TaskDataset.")
    by_name: Dict[str, TaskDataset] = {}
    for d in datasets:
        if not isinstance(d, TaskDataset):
            raise TypeError(f"{where}: expected TaskDataset items, got {type(d).__name__}.")
        if d.name in by_name:
            raise ValueError(f"{where}: dataset name {d.name!r} appears twice.")
        _require_task_aware(d.train, f"{where} ({d.name} train)")
        _require_task_aware(d.test, f"{where} ({d.name} test)")
        n_cls = len(d.class_names)
        for split, data in (("train", d.train), ("test", d.test)):
            bad = [c for c in data.targets.uniques if not 0 <= int(c) < n_cls]
            if bad:
                raise ValueError(
                    f"{where}: dataset {d.name!r} ({split}) has targets {sorted(bad)[:5]} outside "
                    f"0..{n_cls - 1} (it has {n_cls} class names); targets must be local ids."
                )
        by_name[d.name] = d
    names = [d.name for d in datasets] if order is None else list(order)
    unknown = [n for n in names if n not in by_name]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"{where}: order {names} must list distinct names among {sorted(by_name)}; "
            f"unknown: {unknown}."
        )
    if label_space not in ("global", "local"):
        raise ValueError(f"{where}: label_space must be 'global' or 'local', got {label_space!r}.")
    train_sets, test_sets, per_exp, global_names = [], [], [], []
    offset = 0
    for i, name in enumerate(names):
        d = by_name[name]
        tr, te = d.train, d.test
        off = offset if label_space == "global" else 0
        if off:
            mapping = {c: c + off for c in range(len(d.class_names))}
            tr, te = remap_targets(tr, mapping), remap_targets(te, mapping)
        if task_labels:
            tr, te = with_task_label(tr, i), with_task_label(te, i)
        train_sets.append(tr)
        test_sets.append(te)
        per_exp.append(
            {
                "dataset_name": name,
                "class_names": list(d.class_names),
                "templates": list(d.templates),
                "class_offset": off,
            }
        )
        global_names.extend(d.class_names)
        offset += len(d.class_names)
    meta = {"order": names, "label_space": label_space, "seed": seed}
    meta.update(info or {})
    return _assemble(
        train_sets,
        test_sets,
        class_names=global_names if label_space == "global" else None,
        seed=seed,
        validation_size=validation_size,
        per_exp_train=per_exp,
        per_exp_test=per_exp,
        modalities=_modalities_of(train_sets[0]),
        dataset_names=names,
        info=meta,
    )


# --------------------------------------------------------------------------
# instance-incremental image-text pairs (retrieval phases)
# --------------------------------------------------------------------------
def retrieval_phases_scenario(
    train_pairs,
    test_sets: Mapping[str, Any],
    *,
    num_phases: int,
    group_ids: Optional[Sequence[int]] = None,
    seed: int = 0,
    valid_sets: Optional[Mapping[str, Any]] = None,
    name: Optional[str] = None,
    info: Optional[Mapping[str, Any]] = None,
    shared_test_sets: bool = False,
    shuffle: bool = True,
) -> MultimodalScenario:
    """Instance-incremental image-text pairs: ``num_phases`` disjoint phases.

    Pairs are shuffled by ``seed`` and dealt into phases of equal size (up to
    one); pairs sharing a group id (e.g. the captions of one image) always
    land in the same phase, so no image leaks between phases.

    :param train_pairs: a pair dataset (:func:`~avalanche_mm.data.make_pair_dataset`).
    :param test_sets: mapping name -> pair dataset; the test stream has one
        experience per entry (``experience.dataset_name`` = the name).
    :param num_phases: number of training phases (Mod-X: 5 on Flickr30K).
    :param group_ids: one group id per pair (default: the pair's target).
    :param seed: seed of the shuffle.
    :param valid_sets: optional mapping name -> pair dataset for a
        ``valid`` stream.
    :param name: ``experience.dataset_name`` of the training phases.
    :param info: extra protocol metadata.
    :param shared_test_sets: the test experiences are fixed test sets evaluated after every
        phase (Mod-X: the Flickr30K 1K and COCO 5K test splits), not one test set per phase;
        recorded as ``info["test_protocol"] = "shared"`` (else ``"per-phase"``), which lets the
        main job accept a test stream of another length than the train stream.
    :param shuffle: deal the groups in a seeded random order (default); False keeps their
        order of first appearance (Mod-X's code: contiguous fifths of the annotation file).
    """
    seed = _check_seed(seed)
    where = "retrieval_phases_scenario"
    _require_task_aware(train_pairs, where)
    if not isinstance(test_sets, Mapping) or not test_sets:
        raise ValueError(f"{where}: test_sets must be a non-empty mapping name -> pair dataset.")
    groups = list(train_pairs.targets) if group_ids is None else [int(g) for g in group_ids]
    if len(groups) != len(train_pairs):
        raise ValueError(f"{where}: {len(groups)} group_ids for {len(train_pairs)} pairs.")
    uniq = sorted(set(groups)) if shuffle else list(dict.fromkeys(groups))
    if not isinstance(num_phases, (int, np.integer)) or not 1 <= num_phases <= len(uniq):
        raise ValueError(
            f"{where}: num_phases must be an int between 1 and the number of distinct "
            f"groups ({len(uniq)}), got {num_phases!r}."
        )
    rng = np.random.default_rng(seed)
    perm = [uniq[i] for i in rng.permutation(len(uniq))] if shuffle else uniq
    phase_of = {g: i * num_phases // len(perm) for i, g in enumerate(perm)}
    phase_idx: List[List[int]] = [[] for _ in range(num_phases)]
    for i, g in enumerate(groups):
        phase_idx[phase_of[g]].append(i)
    train_sets = [train_pairs.subset(idx) for idx in phase_idx]
    streams = [
        _decorate(
            "train",
            train_sets,
            [{"dataset_name": name, "modalities": _modalities_of(d), "class_names": None}
             for d in train_sets],
            timeline=False,
        )
    ]
    for stream_name, sets in (("valid", valid_sets), ("test", test_sets)):
        if sets is None:
            continue
        for key, d in sets.items():
            _require_task_aware(d, f"{where} ({stream_name} {key})")
        streams.append(
            _decorate(
                stream_name,
                list(sets.values()),
                [{"dataset_name": k, "modalities": _modalities_of(d), "class_names": None}
                 for k, d in sets.items()],
                timeline=False,
            )
        )
    meta = {"num_phases": int(num_phases), "seed": seed,
            "test_protocol": "shared" if shared_test_sets else "per-phase"}
    meta.update(info or {})
    return MultimodalScenario(
        streams,
        class_names=None,
        modalities=_modalities_of(train_pairs),
        dataset_names=[name] if name else [],
        info=meta,
    )


# --------------------------------------------------------------------------
# generalised class-incremental (GCIL)
# --------------------------------------------------------------------------
def gcil_scenario(
    train_dataset,
    test_dataset,
    *,
    num_experiences: int,
    samples_per_experience: int,
    max_classes_per_experience: int,
    distribution: str = "uniform",
    seed: int = 0,
    class_names: Optional[Sequence[str]] = None,
    name: Optional[str] = None,
    info: Optional[Mapping[str, Any]] = None,
) -> MultimodalScenario:
    """Generalised class-incremental learning (GCIL): blurry, recurring classes.

    Each experience draws its number of classes uniformly in
    ``1..max_classes_per_experience`` among classes that still have unused
    training samples, then ``samples_per_experience`` class draws with
    weights given by ``distribution`` (``"uniform"``, ``"longtail"``: weight
    ``0.984 ** class_id``, or ``"noise"``: uniform plus Gaussian jitter), each
    class capped by its remaining samples. Samples are drawn without
    replacement across the whole stream, so classes recur with new samples.
    Test experience ``i`` holds the test samples of experience ``i``'s classes.

    :param train_dataset: task-aware multimodal training dataset.
    :param test_dataset: task-aware multimodal test dataset.
    :param num_experiences: number of experiences.
    :param samples_per_experience: class draws per experience (an upper
        bound on its size).
    :param max_classes_per_experience: upper bound of classes per experience.
    :param distribution: ``"uniform"``, ``"longtail"`` or ``"noise"``.
    :param seed: the seed of every draw.
    :param class_names: names indexed by class id.
    :param name: ``experience.dataset_name``.
    :param info: extra protocol metadata.
    """
    seed = _check_seed(seed)
    where = "gcil_scenario"
    _require_task_aware(train_dataset, where)
    _require_task_aware(test_dataset, where)
    if distribution not in ("uniform", "longtail", "noise"):
        raise ValueError(
            f"{where}: distribution must be 'uniform', 'longtail' or 'noise', got {distribution!r}."
        )
    for pname, value in (
        ("num_experiences", num_experiences),
        ("samples_per_experience", samples_per_experience),
        ("max_classes_per_experience", max_classes_per_experience),
    ):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{where}: {pname} must be a positive int, got {value!r}.")
    classes = sorted(int(c) for c in train_dataset.targets.uniques)
    class_names = _check_class_names(class_names, classes, where)
    rng = np.random.default_rng(seed)
    pools = {c: list(rng.permutation(train_dataset.targets.val_to_idx[c])) for c in classes}
    train_sets, test_sets = [], []
    for i in range(num_experiences):
        alive = [c for c in classes if pools[c]]
        if not alive:
            raise ValueError(
                f"{where}: the training data ran out after {i} experiences; lower "
                "num_experiences or samples_per_experience."
            )
        k = int(rng.integers(1, min(len(alive), max_classes_per_experience) + 1))
        chosen = [alive[j] for j in rng.choice(len(alive), size=k, replace=False)]
        if distribution == "longtail":
            w = np.array([0.984 ** c for c in chosen])
        elif distribution == "noise":
            w = np.maximum(1.0 + rng.normal(0.0, 0.2, size=k), 0.01)
        else:
            w = np.ones(k)
        counts = rng.multinomial(samples_per_experience, w / w.sum())
        idx = []
        for c, n in zip(chosen, counts):
            n = max(1, min(int(n), len(pools[c])))
            idx.extend(int(j) for j in pools[c][:n])
            pools[c] = pools[c][n:]
        te_idx = indices_of_classes(test_dataset, chosen)
        if not te_idx:
            raise ValueError(f"{where}: classes {chosen} have no test samples.")
        train_sets.append(train_dataset.subset(sorted(idx)))
        test_sets.append(test_dataset.subset(te_idx))
    meta = {
        "distribution": distribution,
        "samples_per_experience": int(samples_per_experience),
        "max_classes_per_experience": int(max_classes_per_experience),
        "seed": seed,
    }
    meta.update(info or {})
    return _assemble(
        train_sets,
        test_sets,
        class_names=class_names,
        seed=seed,
        validation_size=0.0,
        extra={"dataset_name": name},
        modalities=_modalities_of(train_dataset),
        dataset_names=[name] if name else [],
        info=meta,
    )


__all__ = [
    "MultimodalScenario",
    "TaskDataset",
    "class_incremental_scenario",
    "task_incremental_scenario",
    "domain_incremental_scenario",
    "multi_dataset_scenario",
    "retrieval_phases_scenario",
    "gcil_scenario",
    "MTIL_ORDER_I",
    "MTIL_ORDER_II",
]
