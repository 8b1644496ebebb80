"""CIFAR-100 (python version) reader and the class-incremental CIFAR-100 for CLIP.

Expected layout (the official ``cifar-100-python.tar.gz``, extracted)::

    <root>/cifar-100-python/train    (pickle: data uint8 [50000, 3072], fine_labels)
    <root>/cifar-100-python/test     (pickle: data uint8 [10000, 3072], fine_labels)
    <root>/cifar-100-python/meta     (pickle: fine_label_names)

``download=True`` fetches and MD5-checks the archive through
``torchvision.datasets.CIFAR100``. The class-incremental protocol of
Continual-CLIP / PyCIL uses the class order
``np.random.seed(1993); np.random.permutation(100)`` (see
:func:`~avalanche_mm.benchmarks.datasets._common.legacy_class_order`) and
splits it into 10, 20 or 50 equal steps.
"""

from __future__ import annotations

import pickle
from typing import Callable, Optional, Sequence

import numpy as np

from avalanche_mm.data import make_multimodal_dataset

from ..registry import register_benchmark
from ..scenarios import MultimodalScenario, class_incremental_scenario
from ._common import (
    DatasetFormatError,
    ImageFile,
    as_root,
    legacy_class_order,
    require,
)
from ._common import verify_checksums as verify_checksums_of
from ._safety import guarded_torchvision, restricted_load

CIFAR100_LAYOUT = """\
    <root>/cifar-100-python/train
    <root>/cifar-100-python/test
    <root>/cifar-100-python/meta
"""
_HOW = (
    "pass download=True (torchvision downloads https://www.cs.toronto.edu/~kriz/"
    "cifar-100-python.tar.gz and checks its MD5), or extract that archive into root."
)
#: Prompt template of Continual-CLIP's CIFAR-100 zero-shot baseline.
CIFAR100_TEMPLATES = ("a bad photo of a {}.", "a photo of a {}.")


#: published MD5 of the extracted files (as in torchvision's CIFAR100 and the dataset's page)
CIFAR100_MD5 = {
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "cifar-100-python/meta": "7973b15100ade9c7d40fb424638fde48",
}


def _unpickle(path, dataset="CIFAR-100"):
    """A CIFAR batch through the data-only unpickler (it cannot run code, whatever the file holds)."""
    try:
        with open(path, "rb") as f:
            obj = restricted_load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DatasetFormatError(
            f"{dataset}: {path} is not a readable CIFAR pickle ({err}); the file is corrupt or "
            "partial, delete it and download again."
        ) from err
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{dataset}: {path} holds a {type(obj).__name__}, expected a dict.")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar100(root, *, download: bool = False, verify_checksums: bool = True):
    """Read CIFAR-100: ``(train_images, train_labels, test_images, test_labels, names)``.

    Images are ``uint8 [N, 32, 32, 3]``; names are the fine class names with
    underscores replaced by spaces. The files are pickles: their published
    MD5s are checked first (``verify_checksums=False`` skips this for a custom
    copy in the same format), and they are read by a data-only unpickler.
    """
    root = as_root(root, "CIFAR-100")
    if download:
        import torchvision

        with guarded_torchvision():  # archive MD5 checked, extraction confined to root
            for train in (True, False):
                torchvision.datasets.CIFAR100(str(root), train=train, download=True)
    require(
        root,
        ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"],
        dataset="CIFAR-100",
        layout=CIFAR100_LAYOUT,
        how_to_get=_HOW,
    )
    if verify_checksums:
        try:
            verify_checksums_of(root, CIFAR100_MD5, dataset="CIFAR-100")
        except DatasetFormatError as err:
            raise DatasetFormatError(f"{err}\n(For a custom copy in the CIFAR format, pass verify_checksums=False.)") from err
    meta = _unpickle(root / "cifar-100-python" / "meta")
    if "fine_label_names" not in meta:
        raise DatasetFormatError(
            f"CIFAR-100: {root / 'cifar-100-python' / 'meta'} has no 'fine_label_names' entry."
        )
    names = [n.replace("_", " ") for n in meta["fine_label_names"]]
    out = []
    for split in ("train", "test"):
        d = _unpickle(root / "cifar-100-python" / split)
        for key in ("data", "fine_labels"):
            if key not in d:
                raise DatasetFormatError(f"CIFAR-100: the {split} pickle has no '{key}' entry.")
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = [int(v) for v in d["fine_labels"]]
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise DatasetFormatError(
                f"CIFAR-100: the {split} pickle has data of shape {data.shape} and "
                f"{len(labels)} labels; expected [N, 3072] and N labels."
            )
        out.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        out.append(labels)
    return out[0], out[1], out[2], out[3], names


class _ArrayImage:
    """Picklable loader: index -> resized image tensor from a uint8 array."""

    def __init__(self, images: np.ndarray, image: ImageFile):
        self.images, self.image = images, image

    def __call__(self, i):
        from PIL import Image

        return self.image.from_pil(Image.fromarray(self.images[int(i)]))


def cifar100_datasets(
    *, root, download: bool = False, image_size: int = 224, image_transform: Optional[Callable] = None,
    verify_checksums: bool = True,
):
    """CIFAR-100 train/test as multimodal datasets with an ``image`` modality.

    :return: ``(train, test, class_names)``.
    """
    from avalanche_mm.data import LazyModality

    tr_x, tr_y, te_x, te_y, names = read_cifar100(root, download=download, verify_checksums=verify_checksums)
    img = ImageFile(size=image_size, transform=image_transform)
    train = make_multimodal_dataset(
        {"image": LazyModality(range(len(tr_y)), _ArrayImage(tr_x, img))}, tr_y
    )
    test = make_multimodal_dataset(
        {"image": LazyModality(range(len(te_y)), _ArrayImage(te_x, img))}, te_y
    )
    return train, test, names


@register_benchmark("cifar100-clip")
def cifar100_class_incremental(
    *,
    root,
    num_steps: int = 10,
    class_order: Optional[Sequence[int]] = None,
    download: bool = False,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    validation_size: float = 0.0,
    verify_checksums: bool = True,
) -> MultimodalScenario:
    """CIFAR-100 class-incremental for CLIP (10/20/50 steps, fixed class order).

    :param root: folder holding ``cifar-100-python/``.
    :param num_steps: 10, 20 or 50 (any divisor of 100 is accepted).
    :param class_order: default: the seed-1993 order of Continual-CLIP/PyCIL.
    :param download: fetch and MD5-check the archive via torchvision.
    :param image_size: side of the resized, centre-cropped images.
    :param image_transform: PIL -> tensor transform replacing the default.
    :param validation_size: fraction of each class in a ``valid`` stream.
    :param verify_checksums: check the files' published MD5s before reading
        them (False for a custom copy in the CIFAR format; it is still read
        by a data-only unpickler).
    """
    if not isinstance(num_steps, int) or num_steps < 1 or 100 % num_steps:
        raise ValueError(
            f"cifar100-clip: num_steps must divide the 100 classes (10, 20 or 50 in the "
            f"protocol), got {num_steps!r}."
        )
    train, test, names = cifar100_datasets(
        root=root, download=download, image_size=image_size, image_transform=image_transform,
        verify_checksums=verify_checksums,
    )
    order = legacy_class_order(100, 1993) if class_order is None else list(class_order)
    return class_incremental_scenario(
        train,
        test,
        num_experiences=num_steps,
        class_order=order,
        class_names=names,
        validation_size=validation_size,
        name="CIFAR100",
        info={"templates": list(CIFAR100_TEMPLATES), "protocol": "Continual-CLIP seed 1993"},
    )


__all__ = [
    "CIFAR100_LAYOUT",
    "CIFAR100_TEMPLATES",
    "read_cifar100",
    "cifar100_datasets",
    "cifar100_class_incremental",
]
