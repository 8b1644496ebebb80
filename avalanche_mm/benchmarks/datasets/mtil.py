"""The 11 MTIL datasets (ZSCL's multi-domain task-incremental learning).

Each dataset is read from its official on-disk layout (through the
corresponding ``torchvision.datasets`` class where its presence check allows
it, by our own reader for CIFAR-100 and Flowers-102, whose torchvision
classes insist on MD5 sums) and returned as a
:class:`~avalanche_mm.benchmarks.TaskDataset` with cleaned class names and
prompt templates. ``download=True`` uses torchvision's downloaders, which
verify MD5 checksums; StanfordCars can no longer be downloaded (its URL is
dead) and must be placed by hand. Datasets without an official test split
(Caltech101, EuroSAT, SUN397) are split per class by ``seed``
(``test_fraction``). The expected layouts are in :data:`MTIL_LAYOUTS` and in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from avalanche_mm.data import LazyModality, make_multimodal_dataset

from ..registry import register_benchmark
from ..scenarios import MTIL_ORDER_I, MTIL_ORDER_II, TaskDataset, multi_dataset_scenario
from ._common import (
    DatasetFormatError,
    DatasetNotFoundError,
    ImageFile,
    IndexedImage,
    as_root,
    missing_paths,
    not_found,
    require,
    seeded_split,
)
from .cifar import CIFAR100_LAYOUT, read_cifar100

MTIL_DATASETS: Tuple[str, ...] = MTIL_ORDER_I

#: Expected layout per dataset (paths under ``root``).
MTIL_LAYOUTS: Dict[str, str] = {
    "Aircraft": "    <root>/fgvc-aircraft-2013b/data/images/<id>.jpg\n"
    "    <root>/fgvc-aircraft-2013b/data/variants.txt\n"
    "    <root>/fgvc-aircraft-2013b/data/images_variant_{trainval,test}.txt\n",
    "Caltech101": "    <root>/caltech101/101_ObjectCategories/<category>/image_0001.jpg\n"
    "    (including the BACKGROUND_Google folder, which is not a class)\n",
    "CIFAR100": CIFAR100_LAYOUT,
    "DTD": "    <root>/dtd/dtd/images/<class>/<name>.jpg\n"
    "    <root>/dtd/dtd/labels/{train,val,test}<partition>.txt\n",
    "EuroSAT": "    <root>/eurosat/2750/<ClassName>/<name>.jpg\n",
    "Flowers": "    <root>/flowers-102/jpg/image_00001.jpg ...\n"
    "    <root>/flowers-102/imagelabels.mat\n"
    "    <root>/flowers-102/setid.mat\n",
    "Food": "    <root>/food-101/images/<class>/<id>.jpg\n"
    "    <root>/food-101/meta/{train,test}.json\n",
    "MNIST": "    <root>/MNIST/raw/{train,t10k}-images-idx3-ubyte\n"
    "    <root>/MNIST/raw/{train,t10k}-labels-idx1-ubyte\n",
    "OxfordPet": "    <root>/oxford-iiit-pet/images/<Breed>_<n>.jpg\n"
    "    <root>/oxford-iiit-pet/annotations/{trainval,test}.txt\n",
    "StanfordCars": "    <root>/stanford_cars/devkit/cars_meta.mat\n"
    "    <root>/stanford_cars/devkit/cars_train_annos.mat\n"
    "    <root>/stanford_cars/cars_test_annos_withlabels.mat\n"
    "    <root>/stanford_cars/cars_train/<fname>.jpg, cars_test/<fname>.jpg\n",
    "SUN397": "    <root>/SUN397/ClassName.txt\n"
    "    <root>/SUN397/<letter>/<class>[/<subclass>]/sun_<id>.jpg\n",
}

_REQUIRED: Dict[str, List[str]] = {
    "Aircraft": [
        "fgvc-aircraft-2013b/data/images",
        "fgvc-aircraft-2013b/data/variants.txt",
        "fgvc-aircraft-2013b/data/images_variant_trainval.txt",
        "fgvc-aircraft-2013b/data/images_variant_test.txt",
    ],
    "Caltech101": [
        "caltech101/101_ObjectCategories",
        "caltech101/101_ObjectCategories/BACKGROUND_Google",
    ],
    "CIFAR100": ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"],
    "DTD": ["dtd/dtd/images", "dtd/dtd/labels/train1.txt", "dtd/dtd/labels/test1.txt"],
    "EuroSAT": ["eurosat/2750"],
    "Flowers": ["flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"],
    "Food": ["food-101/images", "food-101/meta/train.json", "food-101/meta/test.json"],
    "MNIST": [
        "MNIST/raw/train-images-idx3-ubyte",
        "MNIST/raw/train-labels-idx1-ubyte",
        "MNIST/raw/t10k-images-idx3-ubyte",
        "MNIST/raw/t10k-labels-idx1-ubyte",
    ],
    "OxfordPet": [
        "oxford-iiit-pet/images",
        "oxford-iiit-pet/annotations/trainval.txt",
        "oxford-iiit-pet/annotations/test.txt",
    ],
    "StanfordCars": [
        "stanford_cars/devkit/cars_meta.mat",
        "stanford_cars/devkit/cars_train_annos.mat",
        "stanford_cars/cars_test_annos_withlabels.mat",
        "stanford_cars/cars_train",
        "stanford_cars/cars_test",
    ],
    "SUN397": ["SUN397/ClassName.txt"],
}

_HOW: Dict[str, str] = {
    "StanfordCars": "download=True is impossible (the official URL is dead); obtain the "
    "Stanford Cars images and devkit (with cars_test_annos_withlabels.mat) and place them "
    "as shown.",
}
_DEFAULT_HOW = (
    "pass download=True (torchvision fetches the official archive and verifies its MD5), "
    "or download and extract it into root as shown."
)

#: Prompt templates per dataset (CLIP-style wording).
MTIL_TEMPLATES: Dict[str, Tuple[str, ...]] = {
    "Aircraft": ("a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."),
    "Caltech101": ("a photo of a {}.", "a painting of a {}.", "a sketch of a {}."),
    "CIFAR100": ("a photo of a {}.", "a blurry photo of a {}.", "a low resolution photo of a {}."),
    "DTD": ("a photo of a {} texture.", "a photo of a {} pattern.", "a photo of a {} object."),
    "EuroSAT": ("a centered satellite photo of {}.", "a satellite photo of {}."),
    "Flowers": ("a photo of a {}, a type of flower.",),
    "Food": ("a photo of {}, a type of food.",),
    "MNIST": ('a photo of the number: "{}".',),
    "OxfordPet": ("a photo of a {}, a type of pet.",),
    "StanfordCars": ("a photo of a {}.", "a photo of my {}.", "a photo of the {}, a type of car."),
    "SUN397": ("a photo of a {}.", "a photo of the {}."),
}

_EUROSAT_NAMES = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}


def _clean(name: str) -> str:
    name = name.replace("_", " ").replace("/", " ")
    return re.sub(r"\s+", " ", name).strip()


def _targets_of(ds) -> List[int]:
    for attr in ("_labels", "targets", "y"):
        if hasattr(ds, attr):
            return [int(t) for t in getattr(ds, attr)]
    if hasattr(ds, "_samples"):
        return [int(t) for _, t in ds._samples]
    raise AttributeError(f"cannot read the targets of {type(ds).__name__}.")


def _tv(name: str, root, factory: Callable, download: bool):
    """Build a torchvision dataset, turning its errors into a clear message."""
    try:
        if not download:
            return factory(False)
        from ._safety import guarded_torchvision

        with guarded_torchvision():  # every archive MD5-checked before extraction, extraction confined
            return factory(True)
    except DatasetFormatError:
        raise
    except (RuntimeError, FileNotFoundError, ValueError, OSError) as err:
        missing = missing_paths(root, _REQUIRED[name]) or ["(files present but unreadable)"]
        raise DatasetNotFoundError(
            str(not_found(name, root, missing, layout=MTIL_LAYOUTS[name],
                          how_to_get=_HOW.get(name, _DEFAULT_HOW)))
            + f"\nThe reader said: {type(err).__name__}: {err}"
        ) from err


def _read_flowers(root):
    from scipy.io import loadmat

    base = root / "flowers-102"
    try:
        labels = np.asarray(loadmat(str(base / "imagelabels.mat"))["labels"]).reshape(-1)
        setid = loadmat(str(base / "setid.mat"))
        split_ids = {k: np.asarray(setid[k]).reshape(-1) for k in ("trnid", "valid", "tstid")}
    except (KeyError, ValueError, OSError) as err:
        raise DatasetFormatError(
            f"Flowers: {base}/imagelabels.mat or setid.mat is unreadable or lacks "
            f"'labels'/'trnid'/'valid'/'tstid' ({err})."
        ) from err
    import torchvision

    names = list(torchvision.datasets.Flowers102.classes)
    out = {}
    for split, key in (("train", "trnid"), ("test", "tstid")):
        ids = split_ids[key].astype(int)
        files = [base / "jpg" / f"image_{i:05d}.jpg" for i in ids]
        missing = [str(f.relative_to(root)) for f in files if not f.exists()]
        if missing:
            raise not_found("Flowers", root, missing, layout=MTIL_LAYOUTS["Flowers"],
                            how_to_get=_DEFAULT_HOW)
        out[split] = (files, [int(labels[i - 1]) - 1 for i in ids])
    return out["train"], out["test"], names


def _files_dataset(files, targets, image: ImageFile):
    return make_multimodal_dataset({"image": LazyModality([str(f) for f in files], image)}, targets)


def _tv_dataset(ds, indices, image: ImageFile, targets):
    loader = IndexedImage(ds, image)
    return make_multimodal_dataset(
        {"image": LazyModality(list(indices), loader)}, [targets[i] for i in indices]
    )


def load_mtil_dataset(
    name: str,
    *,
    root,
    download: bool = False,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    verify_checksums: bool = True,
) -> TaskDataset:
    """Load one MTIL dataset as a :class:`~avalanche_mm.benchmarks.TaskDataset`.

    :param name: one of :data:`MTIL_DATASETS`.
    :param root: folder that holds the dataset in its official layout.
    :param download: download (with MD5 checks) where torchvision can.
    :param image_size: side of the resized, centre-cropped images.
    :param image_transform: PIL -> tensor transform replacing the default.
    :param test_fraction: test fraction for datasets without a test split.
    :param seed: seed of those splits.
    :param verify_checksums: CIFAR-100 (a pickle format): check the published
        MD5s of its files before reading them.
    """
    import torchvision.datasets as tvd

    if name not in MTIL_LAYOUTS:
        raise KeyError(f"unknown MTIL dataset {name!r}; choose among {list(MTIL_DATASETS)}.")
    root = as_root(root, name)
    image = ImageFile(size=image_size, transform=image_transform)
    r = str(root)

    if name == "CIFAR100":
        from .cifar import _ArrayImage

        tr_x, tr_y, te_x, te_y, names = read_cifar100(root, download=download, verify_checksums=verify_checksums)
        train = make_multimodal_dataset(
            {"image": LazyModality(range(len(tr_y)), _ArrayImage(tr_x, image))}, tr_y)
        test = make_multimodal_dataset(
            {"image": LazyModality(range(len(te_y)), _ArrayImage(te_x, image))}, te_y)
    elif name == "Flowers":
        if download:
            _tv(name, root, lambda d: tvd.Flowers102(r, split="train", download=d), True)
        require(root, _REQUIRED[name], dataset=name, layout=MTIL_LAYOUTS[name],
                how_to_get=_DEFAULT_HOW)
        (trf, trt), (tef, tet), names = _read_flowers(root)
        train, test = _files_dataset(trf, trt, image), _files_dataset(tef, tet, image)
    elif name in ("Caltech101", "EuroSAT", "SUN397"):
        factory = {
            "Caltech101": lambda d: tvd.Caltech101(r, download=d),
            "EuroSAT": lambda d: tvd.EuroSAT(r, download=d),
            "SUN397": lambda d: tvd.SUN397(r, download=d),
        }[name]
        ds = _tv(name, root, factory, download)
        targets = _targets_of(ds)
        if not targets:
            raise not_found(name, root, [_REQUIRED[name][0] + "/<class>/<images>"],
                            layout=MTIL_LAYOUTS[name], how_to_get=_DEFAULT_HOW)
        raw = ds.categories if name == "Caltech101" else ds.classes
        names = (
            [_EUROSAT_NAMES.get(c, _clean(c)) for c in raw] if name == "EuroSAT"
            else [_clean(c).lower() if name == "Caltech101" else _clean(c) for c in raw]
        )
        tr_idx, te_idx = seeded_split(targets, test_fraction=test_fraction, seed=seed)
        train = _tv_dataset(ds, tr_idx, image, targets)
        test = _tv_dataset(ds, te_idx, image, targets)
    else:
        split_args = {
            "Aircraft": (lambda s, d: tvd.FGVCAircraft(r, split=s, download=d), "trainval", "test"),
            "DTD": (lambda s, d: tvd.DTD(r, split=s, download=d), "train", "test"),
            "Food": (lambda s, d: tvd.Food101(r, split=s, download=d), "train", "test"),
            "MNIST": (lambda s, d: tvd.MNIST(r, train=(s == "train"), download=d), "train", "test"),
            "OxfordPet": (lambda s, d: tvd.OxfordIIITPet(r, split=s, download=d), "trainval", "test"),
            "StanfordCars": (lambda s, d: tvd.StanfordCars(r, split=s, download=d), "train", "test"),
        }[name]
        make, tr_split, te_split = split_args
        parts = []
        for split in (tr_split, te_split):
            ds = _tv(name, root, lambda d, _s=split: make(_s, d), download)
            targets = _targets_of(ds)
            parts.append((ds, targets))
        ds_train = parts[0][0]
        if name == "MNIST":
            names = [str(i) for i in range(10)]
        elif name == "OxfordPet":
            names = [c.lower() for c in ds_train.classes]
        else:
            names = [_clean(c) for c in ds_train.classes]
        train = _tv_dataset(parts[0][0], range(len(parts[0][1])), image, parts[0][1])
        test = _tv_dataset(parts[1][0], range(len(parts[1][1])), image, parts[1][1])
    n = len(names)
    for split, d in (("train", train), ("test", test)):
        bad = [c for c in d.targets.uniques if not 0 <= c < n]
        if bad:
            raise DatasetFormatError(
                f"{name}: the {split} split has labels {sorted(bad)[:5]} outside the {n} classes "
                "named by its metadata; the annotation files are inconsistent."
            )
    return TaskDataset(name, train, test, names, templates=MTIL_TEMPLATES[name])


@register_benchmark("mtil")
def mtil_benchmark(
    *,
    root,
    order: Union[str, Sequence[str]] = "I",
    download: bool = False,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    label_space: str = "global",
    test_fraction: float = 0.2,
    seed: int = 0,
    validation_size: float = 0.0,
    verify_checksums: bool = True,
):
    """MTIL: the 11 datasets in order I or II (or a custom list), test streams up front.

    :param root: the folder holding every dataset in its official layout.
    :param order: ``"I"``, ``"II"`` or a list of dataset names.
    :param download: download (with MD5 checks) where torchvision can.
    :param image_size: side of the resized, centre-cropped images.
    :param image_transform: PIL -> tensor transform replacing the default.
    :param label_space: ``"global"`` or ``"local"`` targets.
    :param test_fraction: test fraction for Caltech101, EuroSAT and SUN397.
    :param seed: seed of those splits.
    :param validation_size: fraction of each class in a ``valid`` stream.
    :param verify_checksums: check CIFAR-100's published MD5s before unpickling it.
    """
    if isinstance(order, str):
        if order not in ("I", "II"):
            raise ValueError(f"mtil: order must be 'I', 'II' or a list of names, got {order!r}.")
        names = list(MTIL_ORDER_I if order == "I" else MTIL_ORDER_II)
    else:
        names = list(order)
    missing_errors = []
    parts = []
    for name in names:
        try:
            parts.append(
                load_mtil_dataset(
                    name, root=root, download=download, image_size=image_size,
                    image_transform=image_transform, test_fraction=test_fraction, seed=seed,
                    verify_checksums=verify_checksums,
                )
            )
        except DatasetNotFoundError as err:
            missing_errors.append(err)
    if missing_errors:
        raise DatasetNotFoundError(
            f"mtil: {len(missing_errors)} of {len(names)} datasets are missing or incomplete "
            f"under {str(root)!r}.\n\n" + "\n\n".join(str(e) for e in missing_errors)
        ) from missing_errors[0]
    return multi_dataset_scenario(
        parts, order=names, label_space=label_space, seed=seed, validation_size=validation_size,
        info={"benchmark": "MTIL", "order": order if isinstance(order, str) else "custom"},
    )


__all__ = [
    "MTIL_DATASETS",
    "MTIL_LAYOUTS",
    "MTIL_TEMPLATES",
    "load_mtil_dataset",
    "mtil_benchmark",
]
