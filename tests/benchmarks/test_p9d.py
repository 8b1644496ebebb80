"""P9D loader: the documented layout builds one phase per industry; gaps fail clearly."""

import json

import numpy as np
import pytest
from PIL import Image

from avalanche_mm.benchmarks import get_benchmark
from avalanche_mm.benchmarks.datasets._common import DatasetNotFoundError


def _fixture(root, *, drop=None):
    (root / "json").mkdir()
    (root / "train_images").mkdir()
    (root / "gallery_images").mkdir()
    train = {"家居用品": {"a1": {"title": "red chair", "cate_name": "c"}, "a2": {"title": "blue sofa", "cate_name": "c"}},
             "母婴": {"b1": {"title": "baby bottle", "cate_name": "d"}, "b2": {"title": "toy car", "cate_name": "d"}}}
    test = {"t1": {"title": "green chair", "cate_name": "c", "industry_name": "家居用品"},
            "t2": {"title": "small toy", "cate_name": "d", "industry_name": "母婴"}}
    (root / "json" / "train.json").write_text(json.dumps(train, ensure_ascii=False), encoding="utf-8")
    (root / "json" / "test.json").write_text(json.dumps(test, ensure_ascii=False), encoding="utf-8")
    img = Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8))
    for i in ("a1", "a2", "b1", "b2"):
        if i != drop:
            img.save(root / "train_images" / f"{i}.jpg")
    for i in ("t1", "t2"):
        img.save(root / "gallery_images" / f"{i}.jpg")


def test_p9d_phases_per_industry(tmp_path):
    _fixture(tmp_path)
    bench = get_benchmark("p9d", root=str(tmp_path), tasks=["家居用品", "母婴"], image_size=8)
    assert len(bench.train_stream) == 2 and len(bench.test_stream) == 2
    assert [len(e.dataset) for e in bench.train_stream] == [2, 2]
    x, y, _ = bench.test_stream[1].dataset[0]
    assert x["image"].shape == (3, 8, 8) and x["text"].numel() > 0


def test_p9d_missing_files_name_the_file_and_remedy(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train.json"):
        get_benchmark("p9d", root=str(tmp_path))
    _fixture(tmp_path, drop="b2")
    with pytest.raises(DatasetNotFoundError, match="b2.jpg"):
        get_benchmark("p9d", root=str(tmp_path), tasks=["家居用品", "母婴"])


def test_p9d_format_errors_and_ctp_title_cleaning(tmp_path):
    from avalanche_mm.benchmarks.datasets import DatasetFormatError
    from avalanche_mm.benchmarks.datasets.p9d import pre_caption

    assert pre_caption("Red  CHAIR (new)!  x", max_words=3) == "red chair new"
    _fixture(tmp_path)
    (tmp_path / "json" / "train.json").write_text(json.dumps({"家居用品": [1, 2]}, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="maps each industry"):
        get_benchmark("p9d", root=str(tmp_path), tasks=["家居用品"])
    (tmp_path / "json" / "train.json").write_text(json.dumps({"家居用品": {"a1": {"name": "x"}}}, ensure_ascii=False),
                                                  encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="no 'title'"):
        get_benchmark("p9d", root=str(tmp_path), tasks=["家居用品"])
