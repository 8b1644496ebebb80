"""Known answers and invariances of the cross-modal alignment and drift math."""

import math

import pytest
import torch

from avalanche_mm.metrics.functional import (
    alignment_loss,
    alignment_summary,
    argmax_consistency,
    inter_modal_deviation,
    intra_modal_rotation,
    modality_gap,
    positive_pair_cosine,
    procrustes_residual,
    representation_drift,
    retrieval_recall,
    rotation_angles,
    similarity_kl,
    uniformity_loss,
)

E = torch.eye(3, dtype=torch.float64)
IMAGES = E.clone()  # image i = e_i
TEXTS = torch.stack([E[0], torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64), E[1]])


def _rot2(deg):
    th = math.radians(deg)
    return torch.tensor(
        [[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float64
    )


def _random_orthogonal(d, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def test_recall_known_answer_with_pessimistic_ties():
    # S = [[1, .6, 0], [0, .8, 1], [0, 0, 0]]: image 1 loses to text 2; image 2 ties everywhere
    r = retrieval_recall(IMAGES, TEXTS, ks=(1, 2, 3))
    assert r["i2t_R@1"] == pytest.approx(1 / 3)
    assert r["i2t_R@2"] == pytest.approx(2 / 3)
    assert r["i2t_R@3"] == pytest.approx(1.0)
    assert r["t2i_R@1"] == pytest.approx(2 / 3)
    assert r["t2i_R@2"] == pytest.approx(2 / 3)
    assert r["t2i_R@3"] == pytest.approx(1.0)
    assert r["mean_recall"] == pytest.approx(13 / 18)


def test_recall_with_several_captions_per_image():
    images = E[:2]
    texts = torch.stack([E[1], E[0], E[1]])  # texts 0 and 1 describe image 0, text 2 image 1
    r = retrieval_recall(images, texts, ks=(1,), text_to_image=[0, 0, 1])
    # image 0: best correct text (text 1, score 1) ties with nothing wrong -> hit;
    # image 1: text 2 (1.0) ties with wrong text 0 (1.0) -> pessimistic miss
    assert r["i2t_R@1"] == pytest.approx(0.5)
    # text 0 (= e1) prefers image 1 over its image 0 -> miss; texts 1 and 2 hit
    assert r["t2i_R@1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at least one text"):
        retrieval_recall(E, texts, text_to_image=[0, 0, 1])


def test_alignment_metrics_are_invariant_to_pair_order_scaling_and_common_rotation():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(40, 8, generator=g, dtype=torch.float64)
    txt = img + 0.8 * torch.randn(40, 8, generator=g, dtype=torch.float64)
    ref = alignment_summary(img, txt, ks=(1, 5))
    perm = torch.randperm(40, generator=g)
    q = _random_orthogonal(8, 2)
    variants = [
        (img[perm], txt[perm]),
        (3.0 * img, 0.5 * txt),
        (img @ q, txt @ q),
    ]
    for a, b in variants:
        got = alignment_summary(a, b, ks=(1, 5))
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, abs=1e-9), k


def test_geometry_known_answers():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
    assert modality_gap(a, b) == pytest.approx(math.sqrt(2))
    assert positive_pair_cosine(a, b) == pytest.approx(0.0)
    assert positive_pair_cosine(a, a) == pytest.approx(1.0)
    assert alignment_loss(a, b) == pytest.approx(2.0)
    assert alignment_loss(a, a) == pytest.approx(0.0)
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity_loss(antipodal) == pytest.approx(-8.0)


def test_similarity_kl_and_argmax_consistency_known_answers():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[math.log(3.0), 0.0]])
    assert similarity_kl(old, new, logit_scale=1.0) == pytest.approx(0.5 * math.log(4 / 3))
    assert similarity_kl(new, new) == pytest.approx(0.0)
    s_old = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.4]])
    s_new = torch.tensor([[0.7, 0.1], [0.9, 0.8], [0.1, 0.4]])
    assert argmax_consistency(s_old, s_new) == pytest.approx(1 / 3)


def test_rotation_by_a_known_angle():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 2, generator=g, dtype=torch.float64)
    assert intra_modal_rotation(x, x @ _rot2(30).T) == pytest.approx(30.0, abs=1e-6)
    # a 30 degree rotation of one plane inside 4-D: eigen-angles (30, 30, 0, 0)
    x4 = torch.randn(50, 4, generator=g, dtype=torch.float64)
    r4 = torch.eye(4, dtype=torch.float64)
    r4[:2, :2] = _rot2(30)
    assert intra_modal_rotation(x4, x4 @ r4.T) == pytest.approx(15.0, abs=1e-6)
    assert rotation_angles(r4).sort().values.tolist() == pytest.approx([0, 0, 30, 30], abs=1e-6)
    assert procrustes_residual(x4, x4 @ r4.T) == pytest.approx(0.0, abs=1e-12)
    assert procrustes_residual(x4, torch.randn(50, 4, generator=g)) > 0.1


def test_identical_embeddings_give_zero_rotation_even_with_fewer_samples_than_dims():
    # without restricting Procrustes to the data subspace, the null space gives ~65 degrees
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 16, generator=g)
    assert intra_modal_rotation(x, x.clone()) == pytest.approx(0.0, abs=1e-5)


def test_inter_modal_deviation_measures_relative_rotation_only():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(30, 2, generator=g, dtype=torch.float64)
    txt = torch.randn(30, 2, generator=g, dtype=torch.float64)
    r = _rot2(40).T
    assert inter_modal_deviation(img, img @ r, txt, txt @ r) == pytest.approx(0.0, abs=1e-6)
    assert inter_modal_deviation(img, img @ r, txt, txt) == pytest.approx(40.0, abs=1e-6)
    assert inter_modal_deviation(img, img @ _rot2(25).T, txt, txt @ _rot2(-15).T) == pytest.approx(
        40.0, abs=1e-6
    )


def test_identical_models_give_zero_drift_and_common_rotation_keeps_similarities():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(24, 6, generator=g)
    txt = img + 0.5 * torch.randn(24, 6, generator=g)
    d = representation_drift(img, txt, img.clone(), txt.clone())
    for k in ("modx_kl", "modx_kl_i2t", "modx_kl_t2i", "rotation_image", "rotation_text",
              "inter_modal_deviation"):
        assert d[k] == pytest.approx(0.0, abs=1e-5), k
    assert d["argmax_consistency"] == 1.0
    q = _random_orthogonal(6, 5).float()
    rotated = representation_drift(img, txt, img @ q, txt @ q)
    assert rotated["modx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert rotated["inter_modal_deviation"] == pytest.approx(0.0, abs=1e-4)
    assert rotated["rotation_image"] > 1.0
    changed = representation_drift(img, txt, img, torch.randn(24, 6, generator=g))
    assert changed["modx_kl"] > 0.1 and changed["argmax_consistency"] < 1.0


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: retrieval_recall(E, E[:2]), ValueError, "one-to-one"),
        (lambda: retrieval_recall(E, torch.ones(3, 4)), ValueError, "width"),
        (lambda: retrieval_recall(E, E, ks=(0,)), ValueError, "positive"),
        (lambda: modality_gap(torch.zeros(2, 3), E), ValueError, "all-zero"),
        (lambda: uniformity_loss(E[:1]), ValueError, "at least 2"),
        (lambda: similarity_kl(E, E[:2]), ValueError, "same shape"),
        (lambda: intra_modal_rotation(E, E[:2]), ValueError, "same samples"),
        (lambda: retrieval_recall(torch.ones(3), E), ValueError, r"\[N, D\]"),
        (lambda: retrieval_recall("abc", E), TypeError, "embedding matrix"),
    ],
)
def test_invalid_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_inter_modal_deviation_is_zero_for_identical_models_with_few_probe_pairs():
    # fewer pairs than dimensions: the two modalities span different subspaces
    from avalanche_mm.metrics.functional.alignment import inter_modal_deviation

    g = torch.Generator().manual_seed(3)
    img = torch.randn(8, 64, generator=g)
    txt = torch.randn(8, 64, generator=g)
    assert inter_modal_deviation(img, img, txt, txt) < 1e-6
    # rotating only the text modality is a deviation
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))
    assert inter_modal_deviation(img, img, txt, txt @ q) > 10.0


def test_small_decompositions_run_on_one_thread_and_restore_the_count(monkeypatch):
    """Probe-sized SVDs run single-threaded (multi-threaded LAPACK stalls when cores are shared)."""
    import torch

    from avalanche_mm.metrics.functional import alignment as A

    seen = []
    real_svd = torch.linalg.svd

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_svd(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(40, 8, generator=g, dtype=torch.float64)
        angle = A.intra_modal_rotation(x, x + 0.01 * torch.randn(40, 8, generator=g, dtype=torch.float64))
        assert angle >= 0 and seen and all(n == 1 for n in seen)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
