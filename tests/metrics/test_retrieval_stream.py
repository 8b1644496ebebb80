"""Retrieval as a stream: a hand-computed recall matrix and its summaries."""

import numpy as np
import pytest
import torch

from avalanche_mm.metrics.functional.retrieval_stream import (
    pair_recalls,
    recall_matrices,
    retrieval_row,
    retrieval_stream_summary,
)


def test_pair_recalls_known_answer():
    # 3 pairs in 2-D (cosines after normalisation, by hand):
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1]])
    txt = torch.tensor([[1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    r = pair_recalls(img, txt, ks=(1, 2))
    # i2t: image 0 -> text 0 (yes); image 1 -> best text 1 (0,1)=1.0 vs text 2 ~0.995 (yes);
    # image 2 = (-1, .1): its text 2 scores -0.0005, text 1 scores 0.1 -> rank 1: miss at 1, hit at 2
    assert r["i2t_R@1"] == pytest.approx(2 / 3) and r["i2t_R@2"] == pytest.approx(1.0)
    # t2i: text 2 = (.1, 1) scores 0 with its image 2 but .0995 with image 0 and .995 with
    # image 1 -> rank 2: a miss at R@1 and at R@2
    assert r["t2i_R@1"] == pytest.approx(2 / 3) and r["t2i_R@2"] == pytest.approx(2 / 3)


def test_pair_ids_group_captions_of_one_image():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # pairs 0 and 1: the same image
    txt = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    r = pair_recalls(img, txt, pair_ids=[7, 7, 3], ks=(1,))
    assert r["i2t_R@1"] == 1.0 and r["t2i_R@1"] == 1.0
    # without ids the duplicate image ties with itself and misses (pessimistic ties)
    assert pair_recalls(img, txt, ks=(1,))["i2t_R@1"] < 1.0


def test_matrix_and_summaries_hand_computed():
    hit = {"i2t_R@1": 1.0, "t2i_R@1": 1.0}
    half = {"i2t_R@1": 0.5, "t2i_R@1": 0.0}
    zero = {"i2t_R@1": 0.0, "t2i_R@1": 0.0}
    rows = [[hit, zero], [half, hit]]  # phase 0 forgotten from R@1 1.0 to 0.25
    m = recall_matrices(rows, ks=(1,))
    np.testing.assert_allclose(m["R@1"], [[1.0, 0.0], [0.25, 1.0]])
    np.testing.assert_allclose(m["mean_recall"], [[1.0, 0.0], [0.25, 1.0]])
    s = retrieval_stream_summary(m["R@1"])
    assert s["avg_seen"] == pytest.approx(0.625)
    assert s["first_phase"] == pytest.approx(0.25)
    assert s["forgetting"] == pytest.approx(0.75)
    assert s["bwt"] == pytest.approx(-0.75)
    s0 = retrieval_stream_summary(m["R@1"], step=0)
    assert s0 == {"avg_seen": 1.0, "avg_all": 0.5, "first_phase": 1.0}


def test_retrieval_row_and_bad_input():
    e = torch.eye(3)
    row = retrieval_row([(e, e), (e, e, [0, 1, 2])], ks=(1,))
    assert [r["i2t_R@1"] for r in row] == [1.0, 1.0]
    with pytest.raises(ValueError, match="rows"):
        pair_recalls(torch.eye(3), torch.eye(3)[:2], ks=(1,))
    with pytest.raises(ValueError, match="columns"):
        retrieval_stream_summary(np.ones((2, 1)))


def test_shared_test_summary_hand_computed():
    from avalanche_mm.metrics.functional.retrieval_stream import shared_test_summary

    # rows: after phase 0, 1, 2; columns: two fixed test sets (e.g. Flickr30K 1K, COCO 5K)
    R = [[0.50, 0.40],
         [0.60, 0.30],
         [0.55, 0.20]]
    s = shared_test_summary(R, baseline=[0.45, 0.42])
    assert s["avg_all"] == pytest.approx((0.55 + 0.20) / 2)
    # forgetting: column 0 max(0.50, 0.60) - 0.55 = 0.05; column 1 max(0.40, 0.30) - 0.20 = 0.20
    assert s["forgetting"] == pytest.approx((0.05 + 0.20) / 2)
    # BWT: column 0 ((0.55-0.50) + (0.55-0.60)) / 2 = 0; column 1 ((0.20-0.40) + (0.20-0.30)) / 2 = -0.15
    assert s["bwt"] == pytest.approx((0.0 - 0.15) / 2)
    assert s["from_initial"] == pytest.approx(((0.55 - 0.45) + (0.20 - 0.42)) / 2)
    first = shared_test_summary(R, step=0)
    assert set(first) == {"avg_all"}  # no forgetting before a second phase, no baseline given
    with pytest.raises(ValueError, match="missing values"):
        shared_test_summary([[0.5, float("nan")], [0.4, 0.3]])
    with pytest.raises(ValueError, match="baseline has shape"):
        shared_test_summary(R, baseline=[0.1])
