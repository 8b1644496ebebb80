"""Mod-X: cognition alignment, the loss against a hand-written reference, the plugin's effect."""

import pytest
import torch
import torch.nn.functional as F

from avalanche_mm.strategies.mod_x import ModXPlugin, cognition_align, modx_loss


def test_cognition_align_replaces_exactly_the_wrong_rows():
    old = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.0, 0.1, 0.7]])  # row 1 argmax 0: wrong
    new = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    aligned, wrong = cognition_align(old, new)
    assert wrong.tolist() == [False, True, False]
    assert torch.equal(aligned[0], old[0]) and torch.equal(aligned[2], old[2])
    assert torch.equal(aligned[1], new[1])
    # a row wrong by a tie-free margin anywhere else is replaced too
    old2 = torch.eye(4)
    old2[3] = torch.tensor([0.0, 0.0, 2.0, 1.0])
    _, wrong2 = cognition_align(old2, torch.zeros(4, 4))
    assert wrong2.tolist() == [False, False, False, True]


def _reference(img, txt, img_o, txt_o, scale, alpha):
    """Mod-X's released loop, written out row by row."""
    s_i2t, s_t2i = img @ txt.t(), txt @ img.t()
    o_i2t, o_t2i = (img_o @ txt_o.t()).clone(), (txt_o @ img_o.t()).clone()
    for o, s in ((o_i2t, s_i2t), (o_t2i, s_t2i)):
        for i in range(o.shape[0]):
            if int(o[i].argmax()) != i:
                o[i] = s[i].detach()
    labels = torch.arange(img.shape[0])
    ce = (F.cross_entropy(scale * s_i2t, labels) + F.cross_entropy(scale * s_t2i, labels)) / 2
    kl = 0.0
    for o, s in ((o_i2t, s_i2t), (o_t2i, s_t2i)):
        p, q = o.softmax(1), s.softmax(1)
        kl = kl + (p * (p.log() - q.log())).sum()
    return ce + alpha * kl / 2


def test_modx_loss_matches_reference():
    g = torch.Generator().manual_seed(0)
    img, txt = F.normalize(torch.randn(8, 6, generator=g), dim=1), F.normalize(torch.randn(8, 6, generator=g), dim=1)
    img_o = F.normalize(img + 0.3 * torch.randn(8, 6, generator=g), dim=1)
    txt_o = F.normalize(txt + 0.3 * torch.randn(8, 6, generator=g), dim=1)
    out = modx_loss(img, txt, img_o, txt_o, logit_scale=14.0, alpha=20.0)
    ref = _reference(img, txt, img_o, txt_o, 14.0, 20.0)
    assert torch.allclose(out["loss"], ref, atol=1e-5)
    assert int(out["replaced_i2t"]) + int(out["replaced_t2i"]) > 0  # the fixture exercises alignment
    # batchmean divides the KL by the batch; scaled puts the logit scale inside the softmax
    bm = modx_loss(img, txt, img_o, txt_o, logit_scale=14.0, alpha=1.0, reduction="batchmean")
    sm = modx_loss(img, txt, img_o, txt_o, logit_scale=14.0, alpha=1.0)
    assert torch.allclose(bm["distillation"] * 8, sm["distillation"], atol=1e-6)
    sc = modx_loss(img, txt, img_o, txt_o, logit_scale=14.0, alpha=1.0, kd_logits="scaled")
    assert not torch.allclose(sc["distillation"], sm["distillation"])


def test_modx_distillation_zero_for_identical_models_and_gradient_otherwise():
    g = torch.Generator().manual_seed(1)
    raw_i = torch.randn(6, 5, generator=g, requires_grad=True)
    raw_t = torch.randn(6, 5, generator=g, requires_grad=True)
    img, txt = F.normalize(raw_i, dim=1), F.normalize(raw_t, dim=1)
    same = modx_loss(img, txt, img.detach(), txt.detach(), logit_scale=10.0)
    assert float(same["distillation"].detach()) == pytest.approx(0.0, abs=1e-6)
    other = modx_loss(img, txt, F.normalize(torch.randn(6, 5, generator=g), 1), F.normalize(torch.randn(6, 5, generator=g), 1), logit_scale=10.0)
    (gd,) = torch.autograd.grad(other["distillation"], raw_i, retain_graph=True)
    assert gd.abs().sum() > 0


def test_modx_plugin_rejects_bad_options():
    with pytest.raises(ValueError, match="kd_logits"):
        ModXPlugin(kd_logits="x")
    with pytest.raises(ValueError, match="alpha"):
        ModXPlugin(alpha=-1.0)
