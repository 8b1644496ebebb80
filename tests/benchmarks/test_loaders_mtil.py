"""MTIL and CIFAR-100 loaders on tiny fixtures written in the real on-disk formats."""

import json
import os

import pytest
import torch

from avalanche_mm.benchmarks import get_benchmark
from avalanche_mm.benchmarks.datasets import (
    MTIL_DATASETS,
    DatasetFormatError,
    DatasetNotFoundError,
    legacy_class_order,
    load_mtil_dataset,
    md5sum,
    verify_checksums,
)

from mmbench_fixtures import MTIL_WRITERS, write_cifar100_pickles

EXPECTED_NAMES = {
    "Aircraft": ["707-320", "A300B4"],
    "Caltech101": ["faces easy", "airplanes"],
    "CIFAR100": ["apple", "aquarium fish", "baby"],
    "DTD": ["banded", "blotchy"],
    "EuroSAT": ["annual crop land", "forest"],
    "Food": ["apple pie", "baby back ribs"],
    "MNIST": [str(i) for i in range(10)],
    "OxfordPet": ["abyssinian", "american bulldog"],
    "StanfordCars": ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"],
    "SUN397": ["abbey", "beach"],
}


@pytest.fixture(scope="module")
def mtil_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtil")
    for writer in MTIL_WRITERS.values():
        writer(root)
    return root


@pytest.mark.parametrize("name", MTIL_DATASETS)
def test_each_mtil_dataset_loads_from_its_real_layout(mtil_root, name):
    # the fixture's CIFAR pickles are not the published files: skip the MD5 check (tested below)
    td = load_mtil_dataset(name, root=mtil_root, image_size=16, verify_checksums=False)
    assert td.name == name and len(td.train) > 0 and len(td.test) > 0
    if name == "Flowers":  # the 102 official names, from torchvision
        assert len(td.class_names) == 102 and td.class_names[0] == "pink primrose"
    else:
        assert td.class_names == EXPECTED_NAMES[name]
    x, y, t = td.test[0]
    assert x["image"].shape == (3, 16, 16) and x["image"].dtype == torch.float32
    assert 0 <= y < len(td.class_names)
    assert td.templates and "{}" in td.templates[0]


@pytest.mark.parametrize("name", MTIL_DATASETS)
def test_each_mtil_dataset_reports_missing_files(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as err:
        load_mtil_dataset(name, root=tmp_path)
    msg = str(err.value)
    assert "files are missing" in msg and "Expected layout" in msg and "How to get it" in msg
    assert str(tmp_path) in msg


def test_image_transform_replaces_the_default_preprocessing(mtil_root):
    def transform(img):
        return torch.full((3, 5, 5), float(img.size[0]))

    td = load_mtil_dataset("DTD", root=mtil_root, image_transform=transform)
    assert torch.equal(td.train[0][0]["image"], torch.full((3, 5, 5), 12.0))  # fixture side


def test_partial_files_are_listed(tmp_path):
    MTIL_WRITERS["Food"](tmp_path)
    os.remove(tmp_path / "food-101" / "meta" / "test.json")
    with pytest.raises(DatasetNotFoundError, match=r"food-101/meta/test\.json"):
        load_mtil_dataset("Food", root=tmp_path)


def test_corrupt_annotation_json_is_reported(tmp_path):
    MTIL_WRITERS["Food"](tmp_path)
    (tmp_path / "food-101" / "meta" / "train.json").write_text('{"apple_pie": [')
    with pytest.raises(DatasetNotFoundError, match="JSONDecodeError"):
        load_mtil_dataset("Food", root=tmp_path)


def test_stanford_cars_cannot_be_downloaded_and_says_so(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="URL is dead"):
        load_mtil_dataset("StanfordCars", root=tmp_path, download=True)


def test_mtil_benchmark_orders_and_up_front_test_streams(mtil_root):
    bench = get_benchmark("mtil", root=str(mtil_root), order="II", image_size=16, verify_checksums=False)
    assert bench.dataset_names[0] == "StanfordCars" and len(bench.dataset_names) == 11
    assert len(bench.test_stream) == 11  # every dataset testable before training
    for exp in bench.test_stream:
        assert exp.class_names and exp.templates and len(exp.dataset) > 0
    with pytest.raises(ValueError, match="order"):
        get_benchmark("mtil", root=str(mtil_root), order="III")


def test_mtil_benchmark_lists_every_missing_dataset(tmp_path):
    MTIL_WRITERS["MNIST"](tmp_path)
    with pytest.raises(DatasetNotFoundError, match="10 of 11 datasets are missing"):
        get_benchmark("mtil", root=str(tmp_path))


def test_wrong_root_and_unknown_dataset(tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        load_mtil_dataset("MNIST", root=afile)
    with pytest.raises(KeyError, match="choose among"):
        load_mtil_dataset("ImageNet", root=tmp_path)


def test_cifar100_clip_class_incremental(tmp_path):
    names = [f"class_{i}" for i in range(100)]
    write_cifar100_pickles(tmp_path, n_train=200, n_test=100, names=names)
    with pytest.raises(DatasetFormatError, match="checksum mismatch"):  # published MD5s checked first
        get_benchmark("cifar100-clip", root=str(tmp_path), num_steps=20, image_size=8)
    bench = get_benchmark("cifar100-clip", root=str(tmp_path), num_steps=20, image_size=8, verify_checksums=False)
    order = legacy_class_order(100, 1993)
    assert bench.info["class_order"] == order
    assert len(bench.train_stream) == 20
    assert set(bench.train_stream[0].classes_in_this_experience) == set(order[:5])
    assert bench.class_names[0] == "class 0"
    with pytest.raises(ValueError, match="divide the 100 classes"):
        get_benchmark("cifar100-clip", root=str(tmp_path), num_steps=30, verify_checksums=False)


def test_cifar100_corrupt_and_inconsistent_pickles(tmp_path):
    write_cifar100_pickles(tmp_path)
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    with pytest.raises(DatasetFormatError, match="not a readable CIFAR pickle"):
        load_mtil_dataset("CIFAR100", root=tmp_path, verify_checksums=False)
    import pickle

    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({"data": [[0] * 10], "fine_labels": [0]}, f)
    with pytest.raises(DatasetFormatError, match="expected"):
        load_mtil_dataset("CIFAR100", root=tmp_path, verify_checksums=False)


def test_checksum_verification(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"hello")
    verify_checksums(tmp_path, {"a.bin": md5sum(path)}, dataset="toy")
    with pytest.raises(DatasetFormatError, match="checksum mismatch"):
        verify_checksums(tmp_path, {"a.bin": "0" * 32}, dataset="toy")


def test_legacy_class_order_is_the_numpy_seed_permutation():
    import numpy as np

    np.random.seed(1993)
    assert legacy_class_order(100) == np.random.permutation(100).tolist()
    assert json.dumps(legacy_class_order(5, 0))  # plain ints
