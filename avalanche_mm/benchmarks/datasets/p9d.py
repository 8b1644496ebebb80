"""P9D (Zhu et al., CTP, ICCV 2023): product image-title pairs from 9 industries, one task each.

Layout, as the CTP code reads it (``configs/base_seqF.yaml`` and
``data/pretrain_product_dataset.py`` of KevinLight831/CTP)::

    <root>/json/train.json        {industry: {item_id: {"title": ..., "cate_name": ...}}}
    <root>/json/test.json         {item_id: {"title", "cate_name", "industry_name"}}
    <root>/train_images/<item_id>.jpg
    <root>/gallery_images/<item_id>.jpg   (test images)

Each industry is one training phase (its pairs, target = a running pair id); the test stream has
one experience per industry (the test pairs whose ``industry_name`` is that industry), so the
recall matrix of :mod:`avalanche_mm.metrics.retrieval_stream` is CTP's cross-modal table.
The data is distributed by its authors (github.com/KevinLight831/P9D); nothing is downloaded.
The titles are Chinese: the main job passes the CLIP backbone's own tokenizer
(``backbone_tokenizer``); give a backbone whose tokenizer segments Chinese (the CTP model uses
``bert-base-chinese``; CLIP's English BPE only encodes the UTF-8 bytes). Without a backbone the
whitespace :class:`~avalanche_mm.data.WordTokenizer` is a fallback that does not segment Chinese.
Titles are cleaned as CTP's ``pre_caption`` does (lower case, ``.!"()*#:;~`` to spaces, spaces
collapsed, at most ``max_words`` words, 30 in ``configs/base_seqF.yaml``).

Note: CTP's ``product_evaluation.eval_all`` evaluates after task ``t`` on the union of the test
pairs of tasks ``0..t`` (one gallery); here each industry's test pairs are their own test
experience (the recall matrix), so R@k per industry is measured against a smaller gallery.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from avalanche_mm.data import LazyModality, WordTokenizer, make_pair_dataset

from ..registry import register_benchmark
from ..scenarios import MultimodalScenario, _decorate, _modalities_of
from ._common import DatasetFormatError, ImageFile, as_root, not_found, require
from .retrieval import encode_captions

#: CTP's default task order (configs/base_seqF.yaml); the code trains the first 8 of them
P9D_ORDER = ("家居用品", "家装家饰", "食品/保健", "美容护理", "服饰鞋包", "车品配件", "母婴", "运动/户外", "3C数码")

_LAYOUT = (
    "    <root>/json/train.json\n    <root>/json/test.json\n"
    "    <root>/train_images/<item_id>.jpg\n    <root>/gallery_images/<item_id>.jpg\n"
)
_HOW = "request P9D from its authors (github.com/KevinLight831/P9D) and extract it into root."


_PUNCT = re.compile(r"([.!\"()*#:;~])")


def pre_caption(caption: str, max_words: int = 30) -> str:
    """CTP's title cleaning (``data/utils.py``): lower case, ``.!"()*#:;~`` to spaces, runs of
    spaces collapsed, stripped, cut to ``max_words`` space-separated words."""
    caption = re.sub(r"\s{2,}", " ", _PUNCT.sub(" ", caption.lower())).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def _check_train(path: Path, train: dict) -> None:
    """``{industry: {item_id: {"title": str, ...}}}`` or a DatasetFormatError naming the entry."""
    for industry, items in train.items():
        if not isinstance(items, dict):
            raise DatasetFormatError(
                f"{path}: industry {industry!r} maps to {type(items).__name__}; P9D's train.json maps each industry "
                "to {item_id: {\"title\": ..., \"cate_name\": ...}} (CTP, data/pretrain_product_dataset.py)."
            )
        for item_id, info in items.items():
            if not isinstance(info, dict) or not isinstance(info.get("title"), str):
                raise DatasetFormatError(
                    f"{path}: item {item_id!r} of industry {industry!r} has no 'title' string (got {info!r:.80}); "
                    "the file is not P9D's train.json."
                )


def _read(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(
            f"{path} is not valid JSON (line {err.lineno}: {err.msg}); the file is corrupt, download it again."
        ) from err
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    return data


def p9d_pairs(root, *, tasks: Sequence[str] = P9D_ORDER, image_size: int = 224,
              image_transform: Optional[Callable] = None,
              tokenizer: Optional[Callable[[str], torch.Tensor]] = None, max_words: int = 30):
    """``(train_sets, test_sets)``: one pair dataset per industry, in ``tasks`` order (titles
    cleaned by :func:`pre_caption`)."""
    root = as_root(root, "p9d")
    require(root, ["json/train.json", "json/test.json"], dataset="p9d", layout=_LAYOUT, how_to_get=_HOW)
    train = _read(root / "json" / "train.json")
    test = _read(root / "json" / "test.json")
    _check_train(root / "json" / "train.json", train)
    unknown = [t for t in tasks if t not in train]
    if unknown:
        raise DatasetFormatError(
            f"p9d: industries {unknown} are not in json/train.json (it has {sorted(train)}); fix the tasks parameter."
        )
    for item_id, info in test.items():
        lacking = [k for k in ("title", "industry_name") if not isinstance(info, dict) or k not in info]
        if lacking:
            raise DatasetFormatError(
                f"p9d: json/test.json item {item_id} lacks {lacking}; P9D's test.json maps item ids to "
                "{\"title\", \"cate_name\", \"industry_name\"} (CTP, product_crossmodal_eval)."
            )
    titles = [pre_caption(info["title"], max_words) for t in tasks for info in train[t].values()]
    tok = tokenizer or WordTokenizer.fit(titles + [pre_caption(i["title"], max_words) for i in test.values()])
    loader = ImageFile(size=image_size, transform=image_transform)
    plan = []  # (split, paths, titles) in task order
    for t in tasks:
        for split, items, folder in (("train", train[t], "train_images"),
                                     ("test", {k: v for k, v in test.items() if v["industry_name"] == t}, "gallery_images")):
            if not items:
                raise DatasetFormatError(f"p9d: industry {t!r} has no {split} pairs.")
            plan.append((split, [root / folder / f"{item_id}.jpg" for item_id in items],
                         [pre_caption(v["title"], max_words) for v in items.values()]))
    missing = sorted(str(p.relative_to(root)) for _, paths, _ in plan for p in paths if not p.exists())
    if missing:
        raise not_found("p9d", root, missing, layout=_LAYOUT, how_to_get=_HOW)
    next_id = 0
    train_sets, test_sets = [], []
    for split, paths, texts in plan:
        ids = list(range(next_id, next_id + len(paths)))
        next_id += len(paths)
        ds = make_pair_dataset(LazyModality([str(p) for p in paths], loader), encode_captions(tok, texts), pair_ids=ids)
        (train_sets if split == "train" else test_sets).append(ds)
    return train_sets, test_sets


@register_benchmark("p9d")
def p9d(*, root, tasks: Sequence[str] = P9D_ORDER, image_size: int = 224, max_words: int = 30,
        image_transform: Optional[Callable] = None,
        tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
        backbone_tokenizer: Optional[Callable[[str], torch.Tensor]] = None) -> MultimodalScenario:
    """P9D product image-title pairs, one industry per phase (CTP, ICCV 2023).

    :param tasks: the industries, in training order (default: CTP's order).
    :param image_size: image side when no backbone preprocessing is given.
    :param max_words: titles cut to this many words (CTP's ``max_words``).
    """
    train_sets, test_sets = p9d_pairs(root, tasks=tasks, image_size=image_size, max_words=max_words,
                                      image_transform=image_transform, tokenizer=tokenizer or backbone_tokenizer)
    names = list(tasks)
    streams = [
        _decorate(split, sets, [{"dataset_name": n, "modalities": _modalities_of(d), "class_names": None}
                                for n, d in zip(names, sets)], timeline=False)
        for split, sets in (("train", train_sets), ("test", test_sets))
    ]
    return MultimodalScenario(streams, class_names=None, modalities=_modalities_of(train_sets[0]),
                              dataset_names=names, info={"tasks": names})


__all__ = ["P9D_ORDER", "pre_caption", "p9d_pairs", "p9d"]
