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

LEGACY_NAMES = {
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

# ZSCL's names (mtil/src/datasets/collections.py): CLIP's Caltech101 names by folder,
# torchvision's names with '_' -> ' ' (case and slashes kept), MNIST "0 - zero", ...
ZSCL_NAMES = {
    "Aircraft": ["707-320", "A300B4"],
    "Caltech101": ["centered face", "airplane"],
    "CIFAR100": ["apple", "aquarium fish", "baby"],
    "DTD": ["banded", "blotchy"],
    "EuroSAT": ["annual crop land", "forest"],
    "Food": ["apple pie", "baby back ribs"],
    "MNIST": ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
              "7 - seven", "8 - eight", "9 - nine"],
    "OxfordPet": ["Abyssinian", "American Bulldog"],
    "StanfordCars": ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"],
    "SUN397": ["abbey", "beach"],
}
# number of prompt templates per dataset in ZSCL's code
ZSCL_TEMPLATE_COUNTS = {"Aircraft": 2, "Caltech101": 34, "CIFAR100": 18, "DTD": 8, "EuroSAT": 3, "Flowers": 1,
                        "Food": 1, "MNIST": 1, "OxfordPet": 1, "StanfordCars": 9, "SUN397": 2}
EXPECTED_NAMES = LEGACY_NAMES


@pytest.fixture(autouse=True)
def _fixture_cifar_is_not_the_published_one(monkeypatch):
    # the generated CIFAR pickles cannot match CIFAR-100's published MD5s (checked by default:
    # tests/benchmarks/test_dataset_safety.py); they are still read by the data-only unpickler
    from avalanche_mm.benchmarks.datasets import cifar

    monkeypatch.setattr(cifar, "CIFAR100_MD5", {})


@pytest.fixture(scope="module")
def mtil_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtil")
    for writer in MTIL_WRITERS.values():
        writer(root)
    return root


@pytest.mark.parametrize("name", MTIL_DATASETS)
def test_each_mtil_dataset_loads_from_its_real_layout(mtil_root, name):
    td = load_mtil_dataset(name, root=mtil_root, image_size=16, class_names="legacy", prompts="legacy",
                           split="legacy")
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
    assert torch.equal(td.test.eval()[0][0]["image"], torch.full((3, 5, 5), 12.0))


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
    bench = get_benchmark("mtil", root=str(mtil_root), order="II", image_size=16)
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
    bench = get_benchmark("cifar100-clip", root=str(tmp_path), num_steps=20, image_size=8)
    order = legacy_class_order(100, 1993)
    assert bench.info["class_order"] == order
    assert len(bench.train_stream) == 20
    assert set(bench.train_stream[0].classes_in_this_experience) == set(order[:5])
    assert bench.class_names[0] == "class 0"
    with pytest.raises(ValueError, match="divide the 100 classes"):
        get_benchmark("cifar100-clip", root=str(tmp_path), num_steps=30)


def test_cifar100_corrupt_and_inconsistent_pickles(tmp_path):
    write_cifar100_pickles(tmp_path)
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    with pytest.raises(DatasetFormatError, match="not a readable CIFAR pickle"):
        load_mtil_dataset("CIFAR100", root=tmp_path)
    import pickle

    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({"data": [[0] * 10], "fine_labels": [0]}, f)
    with pytest.raises(DatasetFormatError, match="expected"):
        load_mtil_dataset("CIFAR100", root=tmp_path)


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


@pytest.mark.parametrize("name", MTIL_DATASETS)
def test_zscl_class_names_and_template_counts(mtil_root, name):
    td = load_mtil_dataset(name, root=mtil_root, image_size=16)
    if name == "Flowers":
        assert len(td.class_names) == 102 and td.class_names[:2] == ["pink primrose", "hard-leaved pocket orchid"]
    else:
        assert td.class_names == ZSCL_NAMES[name]
    assert len(td.templates) == ZSCL_TEMPLATE_COUNTS[name]
    from avalanche_mm.benchmarks.datasets.mtil import mtil_metadata

    meta = mtil_metadata("zscl")
    assert len(meta["Caltech101"]["class_names"]) == 101 and meta["Caltech101"]["class_names"][0] == "off-center face"
    assert len(meta["Flowers"]["class_names"]) == 102 and len(meta["EuroSAT"]["class_names"]) == 10


def test_zscl_random_split_is_torch_random_split_with_seed_42():
    from torch.utils.data import random_split

    from avalanche_mm.benchmarks.datasets.mtil import zscl_random_split

    for n in (2, 7, 30, 1001):
        tr, te = zscl_random_split(n)
        a, b = random_split(range(n), [int(0.8 * n), n - int(0.8 * n)], generator=torch.Generator().manual_seed(42))
        assert tr == list(a.indices) and te == list(b.indices)


@pytest.mark.parametrize("name,sizes", [
    ("Aircraft", (3, 2)),      # ZSCL trains on `train`, not `trainval` (4)
    ("Caltech101", (4, 2)),    # 6 images, random_split 80/20: int(4.8) = 4
    ("EuroSAT", (4, 2)),
    ("SUN397", (4, 2)),
    ("DTD", None), ("OxfordPet", None),
])
def test_zscl_split_sizes(mtil_root, name, sizes):
    from avalanche_mm.benchmarks.datasets.mtil import zscl_random_split

    td = load_mtil_dataset(name, root=mtil_root, image_size=16)
    legacy = load_mtil_dataset(name, root=mtil_root, image_size=16, split="legacy")
    if sizes is None:  # official splits: same as before
        assert (len(td.train), len(td.test)) == (len(legacy.train), len(legacy.test))
        return
    assert (len(td.train), len(td.test)) == sizes
    if name in ("Caltech101", "EuroSAT"):  # torchvision lists these fixtures class by class
        tr, te = zscl_random_split(6)
        assert list(td.train.targets) == [int(i >= 3) for i in tr]
        assert list(td.test.targets) == [int(i >= 3) for i in te]


def test_zscl_train_augmentation_and_eval_view(mtil_root):
    from avalanche_mm.models.backbones.preprocess import ImagePreprocess

    td = load_mtil_dataset("EuroSAT", root=mtil_root, image_size=8)
    torch.manual_seed(0)
    views = {tuple(td.train[0][0]["image"].flatten().tolist()) for _ in range(6)}
    assert len(views) > 1  # random resized crop
    ev = td.train.eval()
    assert torch.equal(ev[0][0]["image"], ev[0][0]["image"])  # deterministic evaluation view
    assert ev[0][0]["image"].shape == (3, 8, 8)
    plain = load_mtil_dataset("EuroSAT", root=mtil_root, image_size=8, train_augmentation=False)
    assert torch.equal(plain.train[0][0]["image"], plain.train.eval()[0][0]["image"])
    pre = ImagePreprocess(size=8)
    td2 = load_mtil_dataset("EuroSAT", root=mtil_root, image_transform=pre)
    assert torch.allclose(td2.test[0][0]["image"], td2.test.eval()[0][0]["image"])


def test_mtil_benchmark_switches_and_train_text(mtil_root):
    bench = get_benchmark("mtil", root=str(mtil_root), order="I", image_size=8)
    assert bench.info["train_text"] == "first" and bench.info["split"] == "zscl"
    legacy = get_benchmark("mtil", root=str(mtil_root), order="I", image_size=8, class_names="legacy",
                           prompts="legacy", split="legacy", train_augmentation=False, train_text="all")
    assert legacy.info["train_text"] == "all"
    assert [e.templates for e in legacy.test_stream][1] == ["a photo of a {}.", "a painting of a {}.", "a sketch of a {}."]
    with pytest.raises(ValueError, match="split"):
        get_benchmark("mtil", root=str(mtil_root), split="mine")
