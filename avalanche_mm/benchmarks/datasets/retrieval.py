"""COCO and Flickr30K image-caption pairs from the Karpathy-split JSON files.

Expected layouts::

    COCO:      <root>/dataset_coco.json
               <root>/train2014/COCO_train2014_*.jpg
               <root>/val2014/COCO_val2014_*.jpg
    Flickr30K: <root>/dataset_flickr30k.json
               <root>/flickr30k-images/<id>.jpg

The JSON (Karpathy & Fei-Fei's ``caption_datasets.zip``) has
``{"images": [{"filename", "filepath" (COCO only), "split" (train / val /
test / restval), "imgid", "sentences": [{"raw": ...}, ...]}, ...]}``. Each
(image, caption) is one pair whose target is the image's ``imgid``, so the
captions of an image share an instance id and stay in one phase. Neither
source allows scripted download (COCO images are on cocodataset.org, the
Flickr30K images need a signed request form); place the files by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Optional

import torch

from avalanche_mm.data import LazyModality, WordTokenizer, make_pair_dataset

from ..registry import register_benchmark
from ..scenarios import MultimodalScenario, retrieval_phases_scenario
from ._common import DatasetFormatError, ImageFile, as_root, not_found, require

_SPEC = {
    "coco": {
        "json": "dataset_coco.json",
        "layout": "    <root>/dataset_coco.json\n    <root>/train2014/*.jpg\n    <root>/val2014/*.jpg\n",
        "image_dir": None,
        "how": "download caption_datasets.zip (Karpathy splits) for dataset_coco.json and the "
        "COCO 2014 train/val images from cocodataset.org into root.",
    },
    "flickr30k": {
        "json": "dataset_flickr30k.json",
        "layout": "    <root>/dataset_flickr30k.json\n    <root>/flickr30k-images/<id>.jpg\n",
        "image_dir": "flickr30k-images",
        "how": "download caption_datasets.zip (Karpathy splits) for dataset_flickr30k.json and "
        "request the Flickr30K images from its authors; extract into root.",
    },
}


def read_karpathy_json(path: Path) -> List[dict]:
    """Parse and validate a Karpathy-split JSON file; return its image records."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "the file is corrupt or truncated, download it again."
        ) from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetFormatError(
            f"{path}: expected an object with an 'images' list (Karpathy format), got "
            f"{type(data).__name__} with keys {sorted(data)[:5] if isinstance(data, dict) else '-'}."
        )
    for i, rec in enumerate(data["images"]):
        lacking = [k for k in ("filename", "split", "sentences") if k not in rec]
        if lacking:
            raise DatasetFormatError(f"{path}: image record {i} lacks {lacking}.")
        if not isinstance(rec["sentences"], list) or not all(
            isinstance(s, dict) and isinstance(s.get("raw"), str) for s in rec["sentences"]
        ):
            raise DatasetFormatError(
                f"{path}: image record {i} ({rec['filename']}) has sentences without a 'raw' string."
            )
    return data["images"]


def load_karpathy_pairs(
    dataset: str,
    *,
    root,
    splits=("train",),
    captions_per_image: Optional[int] = None,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
):
    """Image-caption pairs of the given Karpathy splits.

    :param dataset: ``"coco"`` or ``"flickr30k"``.
    :param root: folder with the JSON and the images (see module doc).
    :param splits: Karpathy split names to include (``"train"``, ``"restval"``,
        ``"val"``, ``"test"``).
    :param captions_per_image: keep the first k captions of each image
        (default: all).
    :param image_size: side of the resized, centre-cropped images.
    :param image_transform: PIL -> tensor transform replacing the default.
    :param tokenizer: str -> token ids (default: a WordTokenizer fitted on
        the captions of the requested splits).
    :return: ``(pairs, captions)``: the pair dataset (target = ``imgid``) and
        the raw caption strings in pair order.
    """
    if dataset not in _SPEC:
        raise ValueError(f"dataset must be 'coco' or 'flickr30k', got {dataset!r}.")
    spec = _SPEC[dataset]
    root = as_root(root, dataset)
    require(root, [spec["json"]], dataset=dataset, layout=spec["layout"], how_to_get=spec["how"])
    records = read_karpathy_json(root / spec["json"])
    known = {r["split"] for r in records}
    unknown = sorted(set(splits) - {"train", "restval", "val", "test"})
    if unknown:
        raise ValueError(f"{dataset}: unknown splits {unknown}; Karpathy splits are train, restval, val, test.")
    paths, captions, ids = [], [], []
    for i, rec in enumerate(records):
        if rec["split"] not in splits:
            continue
        folder = spec["image_dir"] or rec.get("filepath", "")
        path = root / folder / rec["filename"]
        sentences = rec["sentences"][:captions_per_image] if captions_per_image else rec["sentences"]
        for s in sentences:
            paths.append(path)
            captions.append(s["raw"])
            ids.append(int(rec.get("imgid", i)))
    if not paths:
        raise DatasetFormatError(
            f"{dataset}: no pairs in splits {list(splits)} (the JSON has splits {sorted(known)})."
        )
    missing = sorted({str(p.relative_to(root)) for p in paths if not p.exists()})
    if missing:
        raise not_found(dataset, root, missing, layout=spec["layout"], how_to_get=spec["how"])
    tok = tokenizer or WordTokenizer.fit(captions)
    images = LazyModality([str(p) for p in paths], ImageFile(size=image_size, transform=image_transform))
    return make_pair_dataset(images, captions, pair_ids=ids, tokenizer=tok), captions


def _retrieval(dataset, *, root, num_phases, seed, captions_per_image, image_size,
               image_transform, include_restval) -> MultimodalScenario:
    train_splits = ("train", "restval") if include_restval else ("train",)
    records_root = as_root(root, dataset)
    require(records_root, [_SPEC[dataset]["json"]], dataset=dataset,
            layout=_SPEC[dataset]["layout"], how_to_get=_SPEC[dataset]["how"])
    captions_all = [
        s["raw"]
        for r in read_karpathy_json(records_root / _SPEC[dataset]["json"])
        if r["split"] in train_splits
        for s in r["sentences"]
    ]
    tok = WordTokenizer.fit(captions_all) if captions_all else None
    common = dict(root=root, captions_per_image=captions_per_image, image_size=image_size,
                  image_transform=image_transform, tokenizer=tok)
    train, _ = load_karpathy_pairs(dataset, splits=train_splits, **common)
    val, _ = load_karpathy_pairs(dataset, splits=("val",), **common)
    test, _ = load_karpathy_pairs(dataset, splits=("test",), **common)
    return retrieval_phases_scenario(
        train,
        {f"{dataset}-test": test},
        valid_sets={f"{dataset}-val": val},
        num_phases=num_phases,
        seed=seed,
        name=dataset,
        info={"tokenizer": tok, "karpathy_train_splits": list(train_splits)},
    )


@register_benchmark("flickr30k-retrieval")
def flickr30k_retrieval(
    *,
    root,
    num_phases: int = 5,
    seed: int = 0,
    captions_per_image: Optional[int] = None,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
) -> MultimodalScenario:
    """Flickr30K image-caption retrieval phases (Mod-X: 5 phases), Karpathy splits."""
    return _retrieval("flickr30k", root=root, num_phases=num_phases, seed=seed,
                      captions_per_image=captions_per_image, image_size=image_size,
                      image_transform=image_transform, include_restval=False)


@register_benchmark("coco-retrieval")
def coco_retrieval(
    *,
    root,
    num_phases: int = 5,
    seed: int = 0,
    captions_per_image: Optional[int] = None,
    image_size: int = 224,
    image_transform: Optional[Callable] = None,
    include_restval: bool = True,
) -> MultimodalScenario:
    """COCO image-caption retrieval phases, Karpathy splits (train + restval)."""
    return _retrieval("coco", root=root, num_phases=num_phases, seed=seed,
                      captions_per_image=captions_per_image, image_size=image_size,
                      image_transform=image_transform, include_restval=include_restval)


__all__ = ["read_karpathy_json", "load_karpathy_pairs", "flickr30k_retrieval", "coco_retrieval"]
