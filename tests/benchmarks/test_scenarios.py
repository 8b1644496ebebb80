"""Contracts of the scenario generators."""

import pytest
import torch
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from torch.utils.data import DataLoader

from avalanche_mm.benchmarks import (
    MTIL_ORDER_I,
    MTIL_ORDER_II,
    MultimodalScenario,
    TaskDataset,
    class_incremental_scenario,
    domain_incremental_scenario,
    gcil_scenario,
    multi_dataset_scenario,
    retrieval_phases_scenario,
    task_incremental_scenario,
)
from avalanche_mm.data import MultimodalBatch, make_pair_dataset

from mmbench_helpers import make_toy

NAMES = [f"class{i}" for i in range(6)]


def ids(dataset):
    return {int(dataset[i][0]["image"][0, 0, 1]) for i in range(len(dataset))}


def labels(dataset):
    return {int(dataset[i][1]) for i in range(len(dataset))}


def test_class_incremental_contract(toy_pair):
    train, test = toy_pair
    bench = class_incremental_scenario(
        train, test, num_experiences=3, seed=3, class_names=NAMES
    )
    assert isinstance(bench, CLScenario) and isinstance(bench, MultimodalScenario)
    assert bench.class_names == NAMES and bench.n_classes == 6
    assert bench.modalities == ("image", "audio", "text")
    seen, seen_ids = set(), set()
    for tr, te in zip(bench.train_stream, bench.test_stream):
        classes = set(tr.classes_in_this_experience)
        assert len(classes) == 2
        assert labels(tr.dataset) == classes == labels(te.dataset)
        assert not classes & seen  # no class leaks between experiences
        seen |= classes
        assert not ids(tr.dataset) & seen_ids  # no sample leaks
        seen_ids |= ids(tr.dataset)
        assert tr.class_names == [NAMES[c] for c in sorted(classes)]
        assert tr.task_label == 0 and tr.modalities == bench.modalities
    assert seen == set(range(6)) and len(seen_ids) == len(train)
    assert bench.info["class_order"] == [c for e in bench.train_stream for c in
                                         sorted(e.classes_in_this_experience,
                                                key=bench.info["class_order"].index)]


def test_class_incremental_collates_multimodal_batches(toy_pair):
    bench = class_incremental_scenario(*toy_pair, num_experiences=2, seed=0)
    data = bench.train_stream[0].dataset.train()
    x, y, t = next(iter(DataLoader(data, batch_size=5, collate_fn=data.collate_fn)))
    assert isinstance(x, MultimodalBatch) and len(x) == 5
    assert x["text"].dtype == torch.long and "text" in x.lengths


def test_seed_reproduces_and_changes_the_class_order(toy_pair):
    orders = [
        class_incremental_scenario(*toy_pair, num_experiences=3, seed=s).info["class_order"]
        for s in (1, 1, 2)
    ]
    assert orders[0] == orders[1]
    assert orders[0] != orders[2]


def test_fixed_class_order_and_uneven_split(toy_pair):
    bench = class_incremental_scenario(
        *toy_pair, classes_per_experience=[1, 2, 3], class_order=[5, 4, 3, 2, 1, 0]
    )
    got = [set(e.classes_in_this_experience) for e in bench.train_stream]
    assert got == [{5}, {4, 3}, {2, 1, 0}]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_experiences": 4}, "cannot be split evenly"),
        ({"num_experiences": 7}, "between 1 and the number of classes"),
        ({"num_experiences": 2, "classes_per_experience": 3}, "exactly one"),
        ({"classes_per_experience": [2, 2]}, "sum to the number of classes"),
        ({"num_experiences": 2, "class_order": [0, 1, 2]}, "permutation"),
        ({"num_experiences": 2, "class_order": [0, 0, 1, 2, 3, 4]}, "repeats"),
        ({"num_experiences": 2, "class_names": ["a"]}, "one name per class"),
        ({"num_experiences": 2, "validation_size": 1.5}, "strictly between 0 and 1"),
    ],
)
def test_impossible_split_parameters_are_explained(toy_pair, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        class_incremental_scenario(*toy_pair, **kwargs)


def test_test_classes_must_be_training_classes():
    train = make_toy(n_classes=4)
    test = make_toy(n_classes=6)
    with pytest.raises(ValueError, match="the training set lacks"):
        class_incremental_scenario(train, test, num_experiences=2)


def test_non_avalanche_input_is_rejected():
    with pytest.raises(TypeError, match="make_multimodal_dataset"):
        class_incremental_scenario([1, 2], [3], num_experiences=1)


def test_task_incremental_sets_task_labels(toy_pair):
    bench = task_incremental_scenario(*toy_pair, num_experiences=3, seed=0)
    for i, (tr, te) in enumerate(zip(bench.train_stream, bench.test_stream)):
        assert tr.task_label == i == te.task_label
        assert {int(tr.dataset[j][2]) for j in range(len(tr.dataset))} == {i}
    with pytest.raises(TypeError, match="always sets task labels"):
        task_incremental_scenario(*toy_pair, num_experiences=3, task_labels=False)


def test_validation_stream_is_class_balanced_and_disjoint(toy_pair):
    bench = class_incremental_scenario(*toy_pair, num_experiences=3, seed=0, validation_size=0.34)
    assert set(bench.streams) == {"train", "valid", "test"}
    for tr, va in zip(bench.train_stream, bench.valid_stream):
        assert not ids(tr.dataset) & ids(va.dataset)
        assert set(va.classes_in_this_experience) == set(tr.classes_in_this_experience)
        assert len(va.dataset) == 4 and len(tr.dataset) == 8  # 2 of 6 per class


def test_domain_incremental():
    trains = [make_toy(n_classes=3, offset=100 * d) for d in range(3)]
    tests = [make_toy(n_per_class=2, n_classes=3, offset=1000 + 100 * d) for d in range(3)]
    bench = domain_incremental_scenario(
        trains, tests, domain_names=["a", "b", "c"], domain_order=[2, 0, 1],
        class_names=["x", "y", "z"],
    )
    assert [e.dataset_name for e in bench.train_stream] == ["c", "a", "b"]
    for e in bench.train_stream:
        assert set(e.classes_in_this_experience) == {0, 1, 2}
        assert e.class_names == ["x", "y", "z"]
    assert min(ids(bench.train_stream[0].dataset)) == 200
    with pytest.raises(ValueError, match="one training and one test dataset per domain"):
        domain_incremental_scenario(trains, tests[:2])
    with pytest.raises(ValueError, match="permutation"):
        domain_incremental_scenario(trains, tests, domain_order=[0, 0, 1])


def _mtil_parts():
    parts = []
    for k, (name, n_cls) in enumerate((("A", 2), ("B", 3), ("C", 2))):
        parts.append(
            TaskDataset(
                name,
                make_toy(n_per_class=3, n_classes=n_cls, offset=100 * k),
                make_toy(n_per_class=2, n_classes=n_cls, offset=1000 + 100 * k),
                [f"{name}{i}" for i in range(n_cls)],
                templates=("a {}.",),
            )
        )
    return parts


def test_multi_dataset_test_streams_exist_before_training():
    bench = multi_dataset_scenario(_mtil_parts(), order=["B", "A", "C"])
    # every dataset's test data is there from the start (zero-shot transfer)
    assert len(bench.test_stream) == 3 and len(bench.train_stream) == 3
    assert [e.dataset_name for e in bench.test_stream] == ["B", "A", "C"]
    assert bench.dataset_names == ["B", "A", "C"]
    assert bench.class_names == ["B0", "B1", "B2", "A0", "A1", "C0", "C1"]
    offsets = [0, 3, 5]
    for i, (tr, te) in enumerate(zip(bench.train_stream, bench.test_stream)):
        assert tr.class_offset == offsets[i] == te.class_offset
        assert tr.task_label == i == te.task_label
        n = len(tr.class_names)
        assert labels(te.dataset) == set(range(offsets[i], offsets[i] + n))
        assert sorted(tr.classes_in_this_experience) == list(range(offsets[i], offsets[i] + n))
        assert te.templates == ["a {}."]
        assert len(te.dataset) > 0


def test_multi_dataset_local_label_space():
    bench = multi_dataset_scenario(_mtil_parts(), label_space="local")
    assert bench.class_names is None
    for e in bench.test_stream:
        assert labels(e.dataset) == set(range(len(e.class_names)))
        assert e.class_offset == 0


def test_multi_dataset_errors():
    parts = _mtil_parts()
    with pytest.raises(ValueError, match="unknown"):
        multi_dataset_scenario(parts, order=["A", "Z"])
    bad = TaskDataset("bad", make_toy(n_classes=3), make_toy(n_classes=3), ["only", "two"])
    with pytest.raises(ValueError, match="outside 0..1"):
        multi_dataset_scenario([bad])
    with pytest.raises(ValueError, match="label_space"):
        multi_dataset_scenario(parts, label_space="other")


def test_mtil_orders_are_permutations_of_the_eleven_datasets():
    assert len(MTIL_ORDER_I) == 11 and sorted(MTIL_ORDER_I) == sorted(MTIL_ORDER_II)
    assert MTIL_ORDER_II[0] == "StanfordCars" and MTIL_ORDER_I[0] == "Aircraft"


def _pairs(n_images, caps_per_image, offset=0):
    images = torch.rand(n_images * caps_per_image, 3, 4, 4)
    texts = [torch.tensor([2 + i % 5]) for i in range(len(images))]
    image_ids = [offset + i // caps_per_image for i in range(len(images))]
    return make_pair_dataset(images, texts, pair_ids=image_ids)


def test_retrieval_phases_keep_images_together_and_disjoint():
    train = _pairs(20, 3)
    bench = retrieval_phases_scenario(train, {"t": _pairs(4, 2, offset=100)}, num_phases=4, seed=1)
    groups = [labels(e.dataset) for e in bench.train_stream]
    assert sum(len(g) for g in groups) == 20  # every image in exactly one phase
    for i in range(4):
        assert len(groups[i]) == 5
        for j in range(i):
            assert not groups[i] & groups[j]
    assert all(len(e.dataset) == 15 for e in bench.train_stream)  # 3 captions each
    assert bench.test_stream[0].dataset_name == "t"
    again = retrieval_phases_scenario(train, {"t": _pairs(4, 2)}, num_phases=4, seed=1)
    assert [labels(e.dataset) for e in again.train_stream] == groups
    with pytest.raises(ValueError, match="num_phases"):
        retrieval_phases_scenario(train, {"t": train}, num_phases=21)


def test_gcil_draws_without_replacement_and_reproduces(toy_pair):
    train, test = toy_pair
    kwargs = dict(num_experiences=4, samples_per_experience=6, max_classes_per_experience=3)
    bench = gcil_scenario(train, test, seed=5, **kwargs)
    used = set()
    for tr, te in zip(bench.train_stream, bench.test_stream):
        got = ids(tr.dataset)
        assert got and not got & used
        used |= got
        assert 1 <= len(tr.classes_in_this_experience) <= 3
        assert labels(te.dataset) == set(tr.classes_in_this_experience)
    same = gcil_scenario(train, test, seed=5, **kwargs)
    assert [ids(e.dataset) for e in same.train_stream] == [
        ids(e.dataset) for e in bench.train_stream
    ]
    longtail = gcil_scenario(train, test, seed=5, distribution="longtail", **kwargs)
    assert len(longtail.train_stream) == 4
    with pytest.raises(ValueError, match="ran out"):
        gcil_scenario(train, test, num_experiences=50, samples_per_experience=30,
                      max_classes_per_experience=6)
    with pytest.raises(ValueError, match="distribution"):
        gcil_scenario(train, test, distribution="zipf", **kwargs)
