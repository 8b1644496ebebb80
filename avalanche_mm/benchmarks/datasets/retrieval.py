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

The registered benchmarks deal the training images into phases and evaluate *shared* test
sets after every phase (the dataset's Karpathy test split, optionally the other dataset's):
the recall matrix is ``[phases, test sets]`` (Mod-X's protocol; see
:func:`avalanche_mm.metrics.functional.retrieval_stream.shared_test_summary`). Captions are
tokenised by the CLIP backbone's own tokenizer, which the main job passes as
``backbone_tokenizer`` (CLIP's BPE, context length 77, truncated as open_clip does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Literal, Optional

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


def encode_captions(tokenizer: Callable[[str], torch.Tensor], captions: List[str]) -> List[torch.Tensor]:
    """Token ids of each caption: through ``tokenizer.encode_many`` when it has one (a
    backbone's :class:`~avalanche_mm.models.backbones.base.SampleTokenizer`: batched, each
    distinct caption tokenised once and cached), else one call per caption."""
    many = getattr(tokenizer, "encode_many", None)
    if callable(many):
        return many(captions)
    return [tokenizer(c) for c in captions]


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
    :param tokenizer: str -> token ids; give the CLIP backbone's own
        (``backbone.sample_tokenizer``: CLIP's BPE, context 77, truncated as
        open_clip does). Default: a WordTokenizer fitted on the captions of the
        requested splits (for models with a learned word embedding only).
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
    return make_pair_dataset(images, encode_captions(tok, captions), pair_ids=ids), captions


_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_zero_shot_folder(root, *, image_size: int = 224, image_transform: Optional[Callable] = None,
                          per_class: Optional[int] = None, template: str = "a photo of a {}.") -> dict:
    """A held-out zero-shot classification task from an ImageFolder tree (``<root>/<class>/<image>``,
    e.g. CIFAR-100 or ImageNet validation images sorted into class folders): ``{"images"
    (lazy), "labels", "prompts" (one per class, ``template`` with ``_`` as spaces), "name"}``,
    as :class:`~avalanche_mm.metrics.retrieval_stream.ZeroShotHeldOut` reads it.

    :param per_class: keep the first k images of each class (sorted by name).
    """
    path = as_root(root, "zero-shot task")
    if not path.is_dir():
        raise not_found("zero-shot task", path, ["<class>/<image>.jpg"],
                        layout="    <root>/<class name>/<image>.jpg\n",
                        how_to_get="sort the held-out task's images into one folder per class.")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    files, labels = [], []
    for k, c in enumerate(classes):
        imgs = sorted(f for f in (path / c).iterdir() if f.suffix.lower() in _IMAGE_EXTS)
        imgs = imgs[:per_class] if per_class else imgs
        files += [str(f) for f in imgs]
        labels += [k] * len(imgs)
    if len(classes) < 2 or not files:
        raise DatasetFormatError(
            f"zero-shot task {str(path)!r}: expected at least 2 class folders with images "
            f"({', '.join(_IMAGE_EXTS)}), found {len(classes)} folders and {len(files)} images."
        )
    return {"images": LazyModality(files, ImageFile(size=image_size, transform=image_transform)),
            "labels": torch.tensor(labels), "prompts": [template.format(c.replace("_", " ")) for c in classes],
            "name": path.name}


def _karpathy_captions(dataset: str, root, splits) -> List[str]:
    records_root = as_root(root, dataset)
    require(records_root, [_SPEC[dataset]["json"]], dataset=dataset,
            layout=_SPEC[dataset]["layout"], how_to_get=_SPEC[dataset]["how"])
    return [s["raw"] for r in read_karpathy_json(records_root / _SPEC[dataset]["json"])
            if r["split"] in splits for s in r["sentences"]]


def _retrieval(dataset, *, root, num_phases, seed, captions_per_image, image_size, image_transform,
               train_splits, phase_order, extra_test, tokenizer, backbone_tokenizer,
               zero_shot_root=None, zero_shot_per_class=None) -> MultimodalScenario:
    """Phases of the ``train_splits`` pairs; the test stream holds *shared* test sets (the
    dataset's Karpathy test split, then ``extra_test``), evaluated after every phase."""
    if phase_order not in ("shuffled", "file"):
        raise ValueError(f"{dataset}: phase_order must be 'shuffled' or 'file', got {phase_order!r}.")
    tok = tokenizer or backbone_tokenizer
    kind = "backbone" if tok is not None else "word"
    if tok is None:  # no CLIP backbone (a fusion model): a word vocabulary of the training captions
        captions_all = _karpathy_captions(dataset, root, train_splits)
        tok = WordTokenizer.fit(captions_all) if captions_all else None
    common = dict(captions_per_image=captions_per_image, image_size=image_size,
                  image_transform=image_transform, tokenizer=tok)
    train, _ = load_karpathy_pairs(dataset, root=root, splits=train_splits, **common)
    tests = {f"{dataset}-test": load_karpathy_pairs(dataset, root=root, splits=("test",), **common)[0]}
    for name, (other, other_root) in (extra_test or {}).items():
        tests[name] = load_karpathy_pairs(other, root=other_root, splits=("test",), **common)[0]
    zero_shot = None
    if zero_shot_root:  # validated before the long caption loads
        zero_shot = load_zero_shot_folder(zero_shot_root, image_size=image_size, image_transform=image_transform,
                                          per_class=zero_shot_per_class)
    valid = None
    if "val" not in train_splits:
        valid = {f"{dataset}-val": load_karpathy_pairs(dataset, root=root, splits=("val",), **common)[0]}
    scenario = retrieval_phases_scenario(
        train,
        tests,
        valid_sets=valid,
        num_phases=num_phases,
        seed=seed,
        name=dataset,
        shared_test_sets=True,
        shuffle=phase_order == "shuffled",
        info={"tokenizer": kind, "karpathy_train_splits": list(train_splits), "phase_order": phase_order},
    )
    scenario.zero_shot = zero_shot  # read by the main job's retrieval metrics (ZeroShotHeldOut)
    return scenario


@register_benchmark("flickr30k-retrieval")
def flickr30k_retrieval(
    *,
    root,
    num_phases: int = 5,
    seed: int = 0,
    captions_per_image: Optional[int] = None,
    image_size: int = 224,
    include_val: bool = False,
    phase_order: Literal["shuffled", "file"] = "shuffled",
    coco_root: Optional[str] = None,
    zero_shot_root: Optional[str] = None,
    zero_shot_per_class: Optional[int] = None,
    image_transform: Optional[Callable] = None,
    tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
    backbone_tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
) -> MultimodalScenario:
    """Flickr30K image-caption retrieval phases (Mod-X: 5 phases), Karpathy splits; the Flickr30K
    1K test split (and the COCO 5K test split with ``coco_root``) evaluated after every phase.

    :param num_phases: training phases (images dealt into disjoint phases).
    :param seed: seed of the shuffled phase split.
    :param captions_per_image: keep the first k captions of each image (default all 5).
    :param image_size: image side when no backbone preprocessing is given.
    :param include_val: train on the train and val splits (Mod-X's code does); else val is a
        validation stream.
    :param phase_order: ``shuffled`` (seeded) or ``file`` (contiguous blocks in the JSON's order,
        as Mod-X's code splits).
    :param coco_root: folder of COCO's Karpathy files: adds its 5K test split as a second
        shared test set (``coco-test``; Mod-X's old domain).
    :param zero_shot_root: an ImageFolder tree (``<class>/<image>``) of a held-out
        classification task, evaluated zero-shot after every phase (``ZeroShotHeldOut_Acc``).
    :param zero_shot_per_class: keep at most this many images per class of that task.
    """
    splits = ("train", "val") if include_val else ("train",)
    extra = {"coco-test": ("coco", coco_root)} if coco_root else None
    return _retrieval("flickr30k", root=root, num_phases=num_phases, seed=seed,
                      captions_per_image=captions_per_image, image_size=image_size,
                      image_transform=image_transform, train_splits=splits, phase_order=phase_order,
                      extra_test=extra, tokenizer=tokenizer, backbone_tokenizer=backbone_tokenizer,
                      zero_shot_root=zero_shot_root, zero_shot_per_class=zero_shot_per_class)


@register_benchmark("coco-retrieval")
def coco_retrieval(
    *,
    root,
    num_phases: int = 5,
    seed: int = 0,
    captions_per_image: Optional[int] = None,
    image_size: int = 224,
    include_restval: bool = True,
    phase_order: Literal["shuffled", "file"] = "shuffled",
    flickr30k_root: Optional[str] = None,
    image_transform: Optional[Callable] = None,
    tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
    backbone_tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
) -> MultimodalScenario:
    """COCO image-caption retrieval phases, Karpathy splits (train + restval); the COCO 5K test
    split (and the Flickr30K 1K test split with ``flickr30k_root``) evaluated after every phase.

    :param num_phases: training phases (images dealt into disjoint phases).
    :param seed: seed of the shuffled phase split.
    :param captions_per_image: keep the first k captions of each image (default all 5).
    :param image_size: image side when no backbone preprocessing is given.
    :param include_restval: train on train + restval (the usual 113K Karpathy training set).
    :param phase_order: ``shuffled`` (seeded) or ``file`` (contiguous blocks in the JSON's order).
    :param flickr30k_root: folder of Flickr30K's Karpathy files: adds its 1K test split as a
        second shared test set (``flickr30k-test``).
    """
    splits = ("train", "restval") if include_restval else ("train",)
    extra = {"flickr30k-test": ("flickr30k", flickr30k_root)} if flickr30k_root else None
    return _retrieval("coco", root=root, num_phases=num_phases, seed=seed,
                      captions_per_image=captions_per_image, image_size=image_size,
                      image_transform=image_transform, train_splits=splits, phase_order=phase_order,
                      extra_test=extra, tokenizer=tokenizer, backbone_tokenizer=backbone_tokenizer)


__all__ = ["read_karpathy_json", "encode_captions", "load_karpathy_pairs", "load_zero_shot_folder", "flickr30k_retrieval", "coco_retrieval"]
