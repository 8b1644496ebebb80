"""The 11 MTIL datasets (ZSCL's multi-domain task-incremental learning).

Each dataset is read from its official on-disk layout (through the
corresponding ``torchvision.datasets`` class where its presence check allows
it, by our own reader for CIFAR-100 and Flowers-102, whose torchvision
classes insist on MD5 sums) and returned as a
:class:`~avalanche_mm.benchmarks.TaskDataset` with cleaned class names and
prompt templates. ``download=True`` uses torchvision's downloaders, which
verify MD5 checksums; StanfordCars can no longer be downloaded (its URL is
dead) and must be placed by hand. The expected layouts are in
:data:`MTIL_LAYOUTS` and in ``docs/benchmarks.md``.

By default every choice is ZSCL's released code (``mtil/src/datasets/collections.py``),
kept as data in ``data/mtil_zscl.json``:

- ``class_names="zscl"``: ZSCL's names (CLIP's Caltech101 names such as
  "off-center face", MNIST "0 - zero", torchvision's class names with ``_`` ->
  space, slashes kept); ``"legacy"``: this package's earlier cleaned names;
- ``prompts="zscl"``: ZSCL's templates per dataset (Caltech101 34, CIFAR100 18,
  DTD 8, StanfordCars 9, ...); ``"legacy"``: ``data/mtil_legacy.json``;
- ``split="zscl"``: Aircraft ``train`` (not ``trainval``) and, for Caltech101,
  EuroSAT and SUN397, ``torch.utils.data.random_split(dataset, [int(0.8 n),
  n - int(0.8 n)], generator=torch.Generator().manual_seed(42))`` (reproduced
  exactly by :func:`zscl_random_split`); ``"legacy"``: a per-class split by
  ``seed`` with ``test_fraction``;
- ``train_augmentation=True``: the training images get ZSCL's
  ``RandomResizedCrop(224, scale=(0.9, 1.0), bicubic)`` (Avalanche's ``train``
  transform group; the ``eval`` group, used for testing and by LwF's separate
  batch, resizes (bicubic) and centre-crops);
- ``train_text="first"``: the training logits use the first template only
  (``dataset.template`` in ZSCL), evaluation all templates; recorded in
  ``scenario.info["train_text"]`` for the zero-shot head.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from avalanche_mm.data import LazyModality, make_multimodal_dataset

from ..registry import register_benchmark
from ..scenarios import MTIL_ORDER_I, MTIL_ORDER_II, TaskDataset, multi_dataset_scenario
from ._common import (
    DatasetFormatError,
    DatasetNotFoundError,
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

@lru_cache(maxsize=None)
def mtil_metadata(protocol: str = "zscl") -> Dict[str, Dict[str, Any]]:
    """Per-dataset metadata of ``data/mtil_<protocol>.json`` (``"zscl"`` or ``"legacy"``).

    ``zscl``: ``class_names`` (or ``class_names_from: "reader"``), optional
    ``class_names_by_folder``, ``templates`` and ``split`` per dataset, from
    ZSCL's released code. ``legacy``: ``templates`` only.
    """
    if protocol not in ("zscl", "legacy"):
        raise ValueError(f"MTIL metadata protocol must be 'zscl' or 'legacy', got {protocol!r}.")
    from importlib.resources import files

    path = files("avalanche_mm.benchmarks.datasets").joinpath("data", f"mtil_{protocol}.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))["datasets"]
    except (OSError, ValueError, KeyError) as err:
        raise DatasetFormatError(
            f"the packaged MTIL metadata {path} is missing or unreadable ({err}); reinstall "
            "avalanche-mm (the file ships as package data)."
        ) from err


def mtil_templates(name: str, prompts: str = "zscl") -> Tuple[str, ...]:
    """The prompt templates of MTIL dataset ``name`` (``prompts``: ``"zscl"`` or ``"legacy"``)."""
    meta = mtil_metadata(prompts)
    if name not in meta:
        raise KeyError(f"unknown MTIL dataset {name!r}; choose among {list(MTIL_DATASETS)}.")
    return tuple(meta[name]["templates"])


#: Prompt templates per dataset as ZSCL's released code has them (from ``data/mtil_zscl.json``).
MTIL_TEMPLATES: Dict[str, Tuple[str, ...]] = {n: mtil_templates(n, "zscl") for n in MTIL_DATASETS}
#: This package's earlier templates (``prompts="legacy"``).
MTIL_LEGACY_TEMPLATES: Dict[str, Tuple[str, ...]] = {n: mtil_templates(n, "legacy") for n in MTIL_DATASETS}


def zscl_random_split(n: int, *, ratio: float = 0.8, seed: int = 42) -> Tuple[List[int], List[int]]:
    """``(train, test)`` indices of ZSCL's ``split_dataset``: ``torch.utils.data.random_split(
    dataset, [int(ratio n), n - int(ratio n)], generator=torch.Generator().manual_seed(seed))``.

    ``random_split`` draws ``torch.randperm(n, generator=...)`` and cuts it; the same
    permutation is drawn here, so the indices are identical.
    """
    if n < 1:
        raise ValueError(f"zscl_random_split: the dataset is empty (n={n}).")
    train_size = int(ratio * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return perm[:train_size], perm[train_size:]


def _underline_to_space(name: str) -> str:
    return name.replace("_", " ")


class RawImage:
    """Picklable loader: a path, or an index into a torchvision dataset, -> ``uint8 [3, H, W]``
    at the image's own size (the train/eval transform groups resize and crop it).

    :param dataset: a torchvision dataset returning ``(PIL image, target)``, or None for paths.
    """

    def __init__(self, dataset=None):
        self.dataset = dataset

    def __call__(self, item):
        from PIL import Image
        from torchvision.transforms import functional as TF

        if self.dataset is None:
            with Image.open(item) as img:
                return TF.pil_to_tensor(img.convert("RGB"))
        img = self.dataset[int(item)][0]
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        if isinstance(img, torch.Tensor):
            return img if img.dtype == torch.uint8 else (img.clamp(0, 1) * 255).to(torch.uint8)
        return TF.pil_to_tensor(img.convert("RGB"))


class ZSCLImageTransform:
    """ZSCL's image transforms on ``uint8 [C, H, W]`` images, output float in [0, 1].

    ``train=True``: ``RandomResizedCrop(size, scale=(0.9, 1.0), ratio=(3/4, 4/3),
    bicubic)``; ``train=False``: ``Resize(size, bicubic)`` + ``CenterCrop(size)``
    (``_transform`` in ZSCL's ``clip/clip.py``, less the normalisation, which the
    backbone's preprocessing or the model applies).

    :param size: output side.
    :param train: training augmentation or evaluation transform.
    :param scale: area range of the random crop.
    """

    def __init__(self, size: int = 224, *, train: bool = False, scale: Tuple[float, float] = (0.9, 1.0)):
        self.size = int(size)
        self.train = bool(train)
        self.scale = (float(scale[0]), float(scale[1]))

    def __call__(self, img):
        from torchvision.transforms import InterpolationMode, RandomResizedCrop
        from torchvision.transforms import functional as TF

        if not isinstance(img, torch.Tensor):
            img = TF.pil_to_tensor(img.convert("RGB"))
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        bicubic = InterpolationMode.BICUBIC
        if self.train:
            i, j, h, w = RandomResizedCrop.get_params(img, self.scale, (3.0 / 4.0, 4.0 / 3.0))
            img = TF.resized_crop(img, i, j, h, w, [self.size, self.size], bicubic, antialias=True)
        else:
            img = TF.center_crop(TF.resize(img, self.size, bicubic, antialias=True), [self.size, self.size])
        return img.float().div_(255.0).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"ZSCLImageTransform(size={self.size}, train={self.train}, scale={self.scale})"


class _OnPIL:
    """Adapts a PIL -> tensor transform to the ``uint8`` tensors of :class:`RawImage`."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, img):
        from torchvision.transforms import functional as TF

        return self.transform(TF.to_pil_image(img) if isinstance(img, torch.Tensor) else img)


def _is_tensor_preprocess(t) -> bool:
    """A backbone's ``ImagePreprocess`` (duck-typed: the benchmarks layer sits below models):
    it takes uint8 tensors and has a ``train`` switch and a crop ``scale``."""
    return all(hasattr(t, a) for a in ("size", "mean", "std", "train", "scale", "interpolation"))


def _image_transforms(image_size: int, image_transform: Optional[Callable],
                      train_image_transform: Optional[Callable], augment: bool):
    """``(train, eval)`` transforms of the image modality."""
    import copy

    if image_transform is None:
        eval_t: Callable = ZSCLImageTransform(image_size, train=False)
    elif _is_tensor_preprocess(image_transform):
        eval_t = image_transform
    else:
        eval_t = _OnPIL(image_transform)
    if train_image_transform is not None:
        train_t = (train_image_transform if _is_tensor_preprocess(train_image_transform)
                   else _OnPIL(train_image_transform))
    elif not augment:
        train_t = eval_t
    elif image_transform is None:
        train_t = ZSCLImageTransform(image_size, train=True)
    elif _is_tensor_preprocess(image_transform):
        train_t = copy.copy(image_transform)  # ZSCL: RandomResizedCrop(scale 0.9-1, bicubic), then normalise
        train_t.train, train_t.scale, train_t.interpolation = True, (0.9, 1.0), "bicubic"
    else:  # a custom transform cannot be made random: train as evaluated
        train_t = eval_t
    return train_t, eval_t


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


class _RawArray:
    """Picklable loader: index -> ``uint8 [3, H, W]`` from a ``uint8 [N, H, W, 3]`` array."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __call__(self, i):
        return torch.from_numpy(np.ascontiguousarray(self.images[int(i)])).permute(2, 0, 1).contiguous()


def _dataset(items, loader, targets, transforms):
    train_t, eval_t = transforms
    return make_multimodal_dataset(
        {"image": LazyModality(list(items), loader)}, [int(t) for t in targets],
        train_transforms={"image": train_t}, eval_transforms={"image": eval_t},
    )


def _required(name: str, split: str) -> List[str]:
    req = list(_REQUIRED[name])
    if name == "Aircraft" and split == "zscl":
        req = [r.replace("images_variant_trainval.txt", "images_variant_train.txt") for r in req]
    return req


def _names(name: str, raw: Sequence[str], class_names: str) -> List[str]:
    """Class names from the reader's raw names (``raw``) under ``class_names`` ('zscl'/'legacy')."""
    if class_names == "zscl":
        meta = mtil_metadata("zscl")[name]
        by_folder = meta.get("class_names_by_folder")
        if by_folder is not None:
            return [by_folder.get(c, _underline_to_space(c)) for c in raw]
        if "class_names" in meta:
            listed = list(meta["class_names"])
            if len(raw) > len(listed):
                raise DatasetFormatError(
                    f"{name}: the data has {len(raw)} classes but ZSCL names {len(listed)}."
                )
            return listed[: len(raw)] if raw else listed
        return [_underline_to_space(c) for c in raw]
    if name == "EuroSAT":
        return [_EUROSAT_NAMES.get(c, _clean(c)) for c in raw]
    if name == "Caltech101":
        return [_clean(c).lower() for c in raw]
    if name == "MNIST":
        return [str(i) for i in range(10)]
    if name == "OxfordPet":
        return [c.lower() for c in raw]
    return [_clean(c) for c in raw]


def _check_choice(what: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"mtil: {what} must be one of {list(choices)}, got {value!r}.")


def load_mtil_dataset(
    name: str,
    *,
    root,
    download: bool = False,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    train_image_transform: Optional[Callable] = None,
    class_names: str = "zscl",
    prompts: str = "zscl",
    split: str = "zscl",
    train_augmentation: bool = True,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> TaskDataset:
    """Load one MTIL dataset as a :class:`~avalanche_mm.benchmarks.TaskDataset`.

    :param name: one of :data:`MTIL_DATASETS`.
    :param root: folder that holds the dataset in its official layout.
    :param download: download (with MD5 checks) where torchvision can.
    :param image_size: side of the resized, centre-cropped images.
    :param image_transform: evaluation image transform (a
        :class:`~avalanche_mm.models.backbones.preprocess.ImagePreprocess`, or a
        PIL -> tensor callable) replacing the default resize + centre crop.
    :param train_image_transform: training image transform (default: ZSCL's
        augmentation when ``train_augmentation``, else the evaluation transform).
    :param class_names: ``"zscl"`` (ZSCL's names) or ``"legacy"``.
    :param prompts: ``"zscl"`` (ZSCL's templates) or ``"legacy"``.
    :param split: ``"zscl"`` (Aircraft ``train``; 80/20 ``random_split`` with
        seed 42) or ``"legacy"`` (Aircraft ``trainval``; per-class split by ``seed``).
    :param train_augmentation: ZSCL's random resized crop on training images.
    :param test_fraction: ``split="legacy"``: test fraction of the split datasets.
    :param seed: ``split="legacy"``: seed of those splits.
    """
    import torchvision.datasets as tvd

    if name not in MTIL_LAYOUTS:
        raise KeyError(f"unknown MTIL dataset {name!r}; choose among {list(MTIL_DATASETS)}.")
    for what, value in (("class_names", class_names), ("prompts", prompts), ("split", split)):
        _check_choice(what, value, ("zscl", "legacy"))
    root = as_root(root, name)
    transforms = _image_transforms(image_size, image_transform, train_image_transform, train_augmentation)
    r = str(root)
    required = _required(name, split)

    def tv(factory):
        try:
            if not download:
                return factory(False)
            from ._safety import guarded_torchvision

            with guarded_torchvision():  # every archive MD5-checked before extraction, extraction confined
                return factory(True)
        except DatasetFormatError:
            raise
        except (RuntimeError, FileNotFoundError, ValueError, OSError) as err:
            missing = missing_paths(root, required) or ["(files present but unreadable)"]
            raise DatasetNotFoundError(
                str(not_found(name, root, missing, layout=MTIL_LAYOUTS[name],
                              how_to_get=_HOW.get(name, _DEFAULT_HOW)))
                + f"\nThe reader said: {type(err).__name__}: {err}"
            ) from err

    if name == "CIFAR100":
        tr_x, tr_y, te_x, te_y, raw = read_cifar100(root, download=download)
        train = _dataset(range(len(tr_y)), _RawArray(tr_x), tr_y, transforms)
        test = _dataset(range(len(te_y)), _RawArray(te_x), te_y, transforms)
    elif name == "Flowers":
        if download:
            tv(lambda d: tvd.Flowers102(r, split="train", download=d))
        require(root, required, dataset=name, layout=MTIL_LAYOUTS[name], how_to_get=_DEFAULT_HOW)
        (trf, trt), (tef, tet), raw = _read_flowers(root)
        loader = RawImage()
        train = _dataset([str(f) for f in trf], loader, trt, transforms)
        test = _dataset([str(f) for f in tef], loader, tet, transforms)
    elif name in ("Caltech101", "EuroSAT", "SUN397"):
        factory = {
            "Caltech101": lambda d: tvd.Caltech101(r, download=d),
            "EuroSAT": lambda d: tvd.EuroSAT(r, download=d),
            "SUN397": lambda d: tvd.SUN397(r, download=d),
        }[name]
        ds = tv(factory)
        targets = _targets_of(ds)
        if not targets:
            raise not_found(name, root, [required[0] + "/<class>/<images>"],
                            layout=MTIL_LAYOUTS[name], how_to_get=_DEFAULT_HOW)
        raw = list(ds.categories if name == "Caltech101" else ds.classes)
        if split == "zscl":
            tr_idx, te_idx = zscl_random_split(len(targets), ratio=0.8, seed=42)
        else:
            tr_idx, te_idx = seeded_split(targets, test_fraction=test_fraction, seed=seed)
        loader = RawImage(ds)
        train = _dataset(tr_idx, loader, [targets[i] for i in tr_idx], transforms)
        test = _dataset(te_idx, loader, [targets[i] for i in te_idx], transforms)
    else:
        split_args = {
            "Aircraft": (lambda s, d: tvd.FGVCAircraft(r, split=s, download=d),
                         "train" if split == "zscl" else "trainval", "test"),
            "DTD": (lambda s, d: tvd.DTD(r, split=s, download=d), "train", "test"),
            "Food": (lambda s, d: tvd.Food101(r, split=s, download=d), "train", "test"),
            "MNIST": (lambda s, d: tvd.MNIST(r, train=(s == "train"), download=d), "train", "test"),
            "OxfordPet": (lambda s, d: tvd.OxfordIIITPet(r, split=s, download=d), "trainval", "test"),
            "StanfordCars": (lambda s, d: tvd.StanfordCars(r, split=s, download=d), "train", "test"),
        }[name]
        make, tr_split, te_split = split_args
        parts = []
        for part in (tr_split, te_split):
            ds = tv(lambda d, _s=part: make(_s, d))
            parts.append((ds, _targets_of(ds)))
        raw = list(parts[0][0].classes)
        train = _dataset(range(len(parts[0][1])), RawImage(parts[0][0]), parts[0][1], transforms)
        test = _dataset(range(len(parts[1][1])), RawImage(parts[1][0]), parts[1][1], transforms)
    names = _names(name, raw, class_names)
    n = len(names)
    for part, d in (("train", train), ("test", test)):
        bad = [c for c in d.targets.uniques if not 0 <= c < n]
        if bad:
            raise DatasetFormatError(
                f"{name}: the {part} split has labels {sorted(bad)[:5]} outside the {n} classes "
                "named by its metadata; the annotation files are inconsistent."
            )
    # the test split is read with the evaluation transforms whatever the caller's mode
    return TaskDataset(name, train, test.eval(), names, templates=mtil_templates(name, prompts))


@register_benchmark("mtil")
def mtil_benchmark(
    *,
    root,
    order: Union[str, Sequence[str]] = "I",
    download: bool = False,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    train_image_transform: Optional[Callable] = None,
    label_space: str = "global",
    class_names: str = "zscl",
    prompts: str = "zscl",
    split: str = "zscl",
    train_augmentation: bool = True,
    train_text: str = "first",
    test_fraction: float = 0.2,
    seed: int = 0,
    validation_size: float = 0.0,
):
    """MTIL: the 11 datasets in order I or II (or a custom list), test streams up front.

    Every default is ZSCL's released code (see the module docstring); each is switchable.

    :param root: the folder holding every dataset in its official layout.
    :param order: ``"I"``, ``"II"`` or a list of dataset names.
    :param download: download (with MD5 checks) where torchvision can.
    :param image_size: side of the resized, centre-cropped images.
    :param image_transform: evaluation image transform replacing the default.
    :param train_image_transform: training image transform (default: derived, see
        ``train_augmentation``).
    :param label_space: ``"global"`` or ``"local"`` targets.
    :param class_names: ``"zscl"`` or ``"legacy"`` class names.
    :param prompts: ``"zscl"`` or ``"legacy"`` prompt templates.
    :param split: ``"zscl"`` or ``"legacy"`` train/test splits.
    :param train_augmentation: ZSCL's ``RandomResizedCrop(scale=(0.9, 1), bicubic)`` on training images.
    :param train_text: ``"first"`` (ZSCL: training logits from the first template) or
        ``"all"`` (the template ensemble); stored in ``scenario.info["train_text"]``.
    :param test_fraction: ``split="legacy"``: test fraction for Caltech101, EuroSAT and SUN397.
    :param seed: ``split="legacy"``: seed of those splits; seed of the validation split.
    :param validation_size: fraction of each class in a ``valid`` stream.
    """
    _check_choice("train_text", train_text, ("first", "all"))
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
                    image_transform=image_transform, train_image_transform=train_image_transform,
                    class_names=class_names, prompts=prompts, split=split,
                    train_augmentation=train_augmentation, test_fraction=test_fraction, seed=seed,
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
        info={"benchmark": "MTIL", "order": order if isinstance(order, str) else "custom",
              "train_text": train_text, "class_names": class_names, "prompts": prompts, "split": split,
              "train_augmentation": bool(train_augmentation)},
    )


__all__ = [
    "MTIL_DATASETS",
    "MTIL_LAYOUTS",
    "MTIL_TEMPLATES",
    "MTIL_LEGACY_TEMPLATES",
    "mtil_metadata",
    "mtil_templates",
    "zscl_random_split",
    "ZSCLImageTransform",
    "RawImage",
    "load_mtil_dataset",
    "mtil_benchmark",
]
