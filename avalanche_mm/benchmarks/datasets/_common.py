"""Shared pieces of the real-data loaders: errors, file checks, image loading."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is absent or incomplete under its root.

    The message lists the missing files, the expected layout and how to get
    the data.
    """


class DatasetFormatError(ValueError):
    """A dataset's files exist but their content is not what was expected."""


def as_root(root: PathLike, dataset: str) -> Path:
    """Validate and expand a dataset root."""
    if root is None or (isinstance(root, str) and not root.strip()):
        raise ValueError(f"{dataset}: give root= (the folder that holds the dataset).")
    path = Path(os.path.expanduser(str(root)))
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{dataset}: root {str(path)!r} is a file, expected a folder.")
    return path


def missing_paths(root: Path, required: Iterable[str]) -> list:
    """The entries of ``required`` (paths relative to ``root``) that do not exist."""
    return [p for p in required if not (root / p).exists()]


def not_found(
    dataset: str,
    root: Path,
    missing: Sequence[str],
    *,
    layout: str,
    how_to_get: str,
) -> DatasetNotFoundError:
    """Build the :class:`DatasetNotFoundError` of a dataset."""
    shown = "\n".join(f"  - {root / m}" for m in list(missing)[:20])
    more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
    return DatasetNotFoundError(
        f"{dataset}: files are missing under root {str(root)!r}:\n{shown}{more}\n"
        f"Expected layout:\n{layout.rstrip()}\n"
        f"How to get it: {how_to_get}"
    )


def require(root: Path, required: Sequence[str], *, dataset: str, layout: str, how_to_get: str):
    """Raise :class:`DatasetNotFoundError` unless every required path exists."""
    missing = missing_paths(root, required)
    if missing:
        raise not_found(dataset, root, missing, layout=layout, how_to_get=how_to_get)


def md5sum(path: PathLike, chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksums(root: Path, checksums: Mapping[str, str], *, dataset: str) -> None:
    """Compare files with their expected MD5; raise listing every mismatch."""
    bad = []
    for rel, expected in checksums.items():
        got = md5sum(root / rel)
        if got != expected:
            bad.append(f"  - {root / rel}: md5 {got}, expected {expected}")
    if bad:
        raise DatasetFormatError(
            f"{dataset}: checksum mismatch (corrupt or partial download):\n" + "\n".join(bad)
            + "\nDelete these files and download them again."
        )


class ImageFile:
    """Picklable loader: image path -> ``FloatTensor[3, S, S]`` in [0, 1].

    The image is resized (shorter side to ``size``) and centre-cropped, or
    passed to ``transform`` (PIL image -> tensor) when given.

    :param size: output side.
    :param transform: optional PIL -> tensor transform (e.g. a CLIP
        preprocess), replacing the default.
    """

    def __init__(self, *, size: int = 224, transform: Optional[Callable] = None):
        self.size = int(size)
        self.transform = transform

    def __call__(self, path):
        from PIL import Image

        with Image.open(path) as img:
            return self.from_pil(img)

    def from_pil(self, img):
        img = img.convert("RGB")
        if self.transform is not None:
            return self.transform(img)
        from torchvision.transforms import functional as TF

        img = TF.center_crop(TF.resize(img, self.size), self.size)
        return TF.pil_to_tensor(img).float().div_(255.0)


class IndexedImage:
    """Picklable loader: index ``i`` -> the image of ``dataset[i]`` as a tensor.

    :param dataset: a dataset returning ``(PIL image or array, target)``.
    :param image: the :class:`ImageFile` doing resize/crop/transform.
    """

    def __init__(self, dataset, image: ImageFile):
        self.dataset = dataset
        self.image = image

    def __call__(self, i):
        img = self.dataset[int(i)][0]
        if isinstance(img, np.ndarray):
            from PIL import Image

            img = Image.fromarray(img)
        if isinstance(img, torch.Tensor):
            from torchvision.transforms import functional as TF

            img = TF.to_pil_image(img)
        return self.image.from_pil(img)


def seeded_split(targets: Sequence[int], *, test_fraction: float, seed: int):
    """Per-class split of indices into ``(train, test)``, reproducible by seed."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(test_fraction * len(idx)))
        if len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        test.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return sorted(train), sorted(test)


def legacy_class_order(num_classes: int, seed: int = 1993) -> list:
    """The class order ``np.random.seed(seed); np.random.permutation(n)``.

    This is the fixed order of the iCaRL/PyCIL/Continual-CLIP protocols
    (seed 1993) for CIFAR-100 and UESTC-MMEA-CL, computed, not copied.
    """
    return np.random.RandomState(seed).permutation(num_classes).tolist()


__all__ = [
    "DatasetNotFoundError",
    "DatasetFormatError",
    "as_root",
    "missing_paths",
    "not_found",
    "require",
    "md5sum",
    "verify_checksums",
    "ImageFile",
    "IndexedImage",
    "seeded_split",
    "legacy_class_order",
]
