"""Mod-X's real-data protocol on a tiny fixture in the Karpathy JSON layout: Flickr30K phases with
the Flickr30K and COCO test splits shared by every phase, captions tokenised by the backbone's own
CLIP BPE, end to end through `avalanche-mm check` and `avalanche-mm run` (tiny-openclip)."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from avalanche_mm.benchmarks import get_benchmark
from avalanche_mm.cli import main

LONG = " ".join(["a very long caption about a dog"] * 12)  # more than 32 and 77 BPE tokens


def _karpathy(root: Path, dataset="flickr30k", n_images=8, n_test=2):
    """A Karpathy-split JSON and its images: train / val / test records, 2 captions each."""
    rng = np.random.default_rng(len(str(root)) + n_images)
    splits = ["train"] * (n_images - n_test - 1) + ["val"] + ["test"] * n_test
    records = []
    for i, split in enumerate(splits):
        if dataset == "coco":
            folder, name = ("train2014" if split == "train" else "val2014"), f"COCO_{i:06d}.jpg"
        else:
            folder, name = "flickr30k-images", f"{1000 + i}.jpg"
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / folder / name)
        caps = [f"{dataset} photo {i} of a dog on grass", LONG if i == 0 else f"picture {i}, a cat!"]
        rec = {"filename": name, "split": split, "imgid": i, "sentences": [{"raw": c} for c in caps]}
        if dataset == "coco":
            rec["filepath"] = folder
        records.append(rec)
    root.mkdir(parents=True, exist_ok=True)
    (root / f"dataset_{dataset}.json").write_text(json.dumps({"images": records, "dataset": dataset}))
    return records


@pytest.fixture(scope="module")
def tiny_backbone():
    from avalanche_mm.models import build_backbone

    return build_backbone("tiny-openclip")


def test_captions_are_open_clip_tokens_and_test_sets_are_shared(tmp_path, tiny_backbone):
    import open_clip

    records = _karpathy(tmp_path / "f30k")
    coco = _karpathy(tmp_path / "coco", dataset="coco", n_images=6, n_test=3)
    tok = tiny_backbone.sample_tokenizer
    calls = []
    real = tok._tokenize
    tok._tokenize = lambda texts: (calls.append(len(texts)), real(texts))[1]
    try:
        bench = get_benchmark("flickr30k-retrieval", root=str(tmp_path / "f30k"), num_phases=2, image_size=32,
                              phase_order="file", coco_root=str(tmp_path / "coco"), backbone_tokenizer=tok)
    finally:
        tok._tokenize = real
    assert bench.info["test_protocol"] == "shared" and bench.info["tokenizer"] == "backbone"
    assert [e.dataset_name for e in bench.test_stream] == ["flickr30k-test", "coco-test"]
    assert len(bench.train_stream) == 2 and len(bench.test_stream[1].dataset) == 6  # 3 COCO test images x 2
    # phase_order="file": contiguous blocks of images in the JSON's order (Mod-X's split)
    assert sorted(set(bench.train_stream[0].dataset.targets.uniques)) == [0, 1, 2]  # 5 images: 3 + 2
    # batched (one call per split) and cached: every distinct caption tokenised exactly once
    distinct = {s["raw"] for r in records for s in r["sentences"]}
    distinct |= {s["raw"] for r in coco if r["split"] == "test" for s in r["sentences"]}
    assert len(calls) == 4 and sum(calls) == len(distinct)  # train, test, coco test, val
    # token ids = open_clip's tokenizer (context 32 for tiny-openclip, EOT kept when truncated)
    exp = bench.train_stream[0]
    caps = [s["raw"] for r in records if r["imgid"] in (0, 1) for s in r["sentences"]]
    want = open_clip.tokenize(caps, context_length=tiny_backbone.context_length)
    got = torch.zeros_like(want)
    for i in range(len(caps)):
        ids = exp.dataset[i][0]["text"]
        got[i, : len(ids)] = ids
    assert torch.equal(got, want)
    assert got[1, -1] == 49407  # the long caption: truncated to the context with EOT last


def test_sample_tokenizer_matches_open_clip_at_context_77():
    import functools

    import open_clip

    from avalanche_mm.models.backbones.base import SampleTokenizer

    tok = SampleTokenizer(tokenize=functools.partial(open_clip.tokenize, context_length=77), pad_token_id=0,
                          eot_token_id=49407)
    caps = ["A dog runs on the beach.", LONG, "A dog runs on the beach."]
    want = open_clip.tokenize(caps)  # context 77
    for row, ids in zip(want, tok.encode_many(caps)):
        assert torch.equal(row[: len(ids)], ids) and not row[len(ids):].any()
    assert tok.encode_many(caps)[0] is tok.encode_many(caps)[2]  # cached, tokenised once
    assert torch.equal(tok(caps[1]), tok.encode_many([caps[1]])[0])


def _config(tmp_path):
    return {
        "name": "tiny-modx",
        "seed": 0,
        "device": "cpu",
        "progress_bar": False,
        "loggers": ["text"],
        "checkpoints": {"keep": "last"},
        "studies": {
            "flickr": {
                "benchmark": {"name": "flickr30k-retrieval", "data_root": str(tmp_path / "f30k"),
                              "params": {"num_phases": 2, "include_val": True, "phase_order": "file",
                                         "coco_root": str(tmp_path / "coco"), "zero_shot_root": str(tmp_path / "zs")}},
                "model": {"kind": "clip", "backbone": "tiny-openclip", "freeze": []},
                "training": {"iterations": 2, "batch_size": 4, "lr": 1e-4, "warmup": 0},
                "evaluation": {"initial": True, "alignment": False},
                "strategies": {"clip_ct": {"method": "contrastive-finetune"},
                               "modx": {"method": "mod-x", "alpha": 20.0, "kd_logits": "cosine", "reduction": "sum"}},
            }
        },
    }


def test_modx_protocol_end_to_end(tmp_path, capsys):
    _karpathy(tmp_path / "f30k")
    _karpathy(tmp_path / "coco", dataset="coco", n_images=6, n_test=3)
    for c, v in (("golden_retriever", 30), ("tabby_cat", 200)):  # a held-out zero-shot task (ImageFolder)
        (tmp_path / "zs" / c).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((16, 16, 3), v + k, dtype=np.uint8)).save(tmp_path / "zs" / c / f"{k}.png")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path), sort_keys=False))
    assert main(["check", str(path), "-q"]) == 0, capsys.readouterr()
    out = str(tmp_path / "out")
    assert main(["run", str(path), "--output", out]) == 0
    text = capsys.readouterr().out
    assert "retrieval on the shared test sets" in text and "coco-test" in text
    for name in ("clip_ct", "modx"):
        with open(os.path.join(out, "flickr", name, "state.json")) as fh:
            st = json.load(fh)
        assert st["complete"] and st["test_protocol"] == "shared"
        assert len(st["rows"]) == 2 and all(len(r) == 2 for r in st["rows"]) and len(st["baseline"]) == 2
        last = st["scalars"][-1]
        assert 0.0 <= last["ZeroShotHeldOut_Acc"] <= 1.0
        for key in ("RetrievalR1_AvgAll", "RetrievalR1_Forgetting", "RetrievalR1_BWT", "RetrievalR1_FromInitial",
                    "RetrievalMatrix_i2t_R10_Phase001", "RetrievalMatrix_t2i_R5_Phase000"):
            assert key in last, (name, key)
        with open(os.path.join(out, "flickr", name, "accuracy_matrix.csv")) as fh:
            lines = fh.read().splitlines()
        assert lines[0].endswith("flickr30k-test,coco-test") and lines[-1].startswith("after phase1")
    with open(os.path.join(out, "report.md")) as fh:
        assert "| clip_ct | contrastive-finetune | coco-test |" in fh.read()


def test_modx_recipe_check_reaches_the_data(tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    rc = main(["check", "vlp/modx-flickr30k", "-q", "--set", f"studies.flickr.benchmark.data_root={empty}",
               "--set", "studies.flickr.benchmark.params.coco_root=null",
               "--set", "studies.flickr.model.backbone=tiny-openclip", "--set", "studies.flickr.model.pretrained=null"])
    text = capsys.readouterr()
    msg = text.out + text.err
    assert rc != 0 and "dataset_flickr30k.json" in msg and "test experience" not in msg
