"""OGM-GE: the coefficient follows its formula, scales only the dominant encoder, the noise's variance."""

import math

import pytest
import torch
from torch import nn

from avalanche_mm.models import FusionModel, MLPEncoder
from avalanche_mm.strategies.ogm_ge import (
    OGMGEPlugin,
    modality_parameters,
    ogm_coefficients,
    ogm_ratios,
    ogm_scores,
)


class _Clock:
    def __init__(self, epoch=0, it=0):
        self.train_exp_epochs, self.train_iterations = epoch, it


class _Strategy:
    """The attributes the plugin reads."""

    def __init__(self, model, y, epoch=0):
        self.model, self.mb_y, self.clock, self.evaluator = model, y, _Clock(epoch), None
        self.mb_task_id = torch.zeros_like(y)


def _model(seed=0):
    torch.manual_seed(seed)
    enc = {"audio": MLPEncoder(in_dim=6, out_dim=5, hidden_dims=(7,)), "visual": MLPEncoder(in_dim=4, out_dim=5, hidden_dims=(7,))}
    return FusionModel(encoders=enc, num_classes=3, fusion="concat")


def _batch(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(n, 6, generator=g), "visual": torch.randn(n, 4, generator=g)}, torch.randint(0, 3, (n,), generator=g)


def _reference_coeffs(z_a, z_v, y, alpha):
    """The released main.py, written out (two modalities)."""
    sa = sum(torch.softmax(z_a, 1)[i][y[i]] for i in range(len(y)))
    sv = sum(torch.softmax(z_v, 1)[i][y[i]] for i in range(len(y)))
    rv = float(sv / sa)
    ra = 1 / rv
    if rv > 1:
        return {"visual": 1 - math.tanh(alpha * max(rv, 0)), "audio": 1.0}
    return {"audio": 1 - math.tanh(alpha * max(ra, 0)), "visual": 1.0}


def test_scores_ratios_coefficients_match_reference():
    torch.manual_seed(0)
    za, zv = torch.randn(10, 4) * 3, torch.randn(10, 4)
    y = torch.randint(0, 4, (10,))
    s = ogm_scores({"audio": za, "visual": zv}, y)
    assert s["audio"] == pytest.approx(float(torch.softmax(za, 1)[torch.arange(10), y].sum()), rel=1e-5)
    r = ogm_ratios(s)
    assert r["audio"] == pytest.approx(s["audio"] / s["visual"]) and r["visual"] == pytest.approx(1 / r["audio"])
    for alpha in (0.1, 0.8):
        got = ogm_coefficients(r, alpha=alpha)
        ref = _reference_coeffs(za, zv, y, alpha)
        assert got == pytest.approx(ref, rel=1e-5)
        shifted = ogm_coefficients(r, alpha=alpha, formula="shifted")
        dom = max(r, key=r.get)
        assert shifted[dom] == pytest.approx(1 - math.tanh(alpha * (r[dom] - 1)))
    # three modalities: each compared with the mean of the others; only those above it slowed
    r3 = ogm_ratios({"a": 6.0, "b": 2.0, "c": 1.0})
    assert r3["a"] == pytest.approx(6 / 1.5) and r3["c"] == pytest.approx(1 / 4)
    k3 = ogm_coefficients(r3, alpha=0.5)
    assert k3["a"] == pytest.approx(1 - math.tanh(0.5 * 4)) and k3["b"] == 1.0 and k3["c"] == 1.0


def _grads(model, x, y):
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_modulation_scales_only_the_dominant_encoder():
    model = _model()
    x, y = _batch()
    with torch.no_grad():  # make audio dominant: a strong audio head, labels it predicts
        model.head.weight[:, :5] *= 20
        model(x)
        y = model.last_unimodal_logits["audio"].argmax(1)
    base = _grads(model, x, y)
    strat = _Strategy(model, y)
    plugin = OGMGEPlugin(alpha=0.5, noise=False)
    plugin.after_backward(strat)
    k = plugin.last_coefficients
    r = plugin.last_ratios
    assert r["audio"] > 1 and k["audio"] == pytest.approx(1 - math.tanh(0.5 * r["audio"])) and k["visual"] == 1.0
    for n, p in model.named_parameters():
        if n.startswith("encoders.audio.") and p.dim() >= 2:
            assert torch.allclose(p.grad, base[n] * k["audio"]), n
        else:  # visual encoder, audio biases, head: untouched, bit for bit
            assert torch.equal(p.grad, base[n]), n
    assert plugin.history and plugin.history[-1][1] == k


def test_modulation_window_and_scope():
    model = _model()
    x, y = _batch()
    base = _grads(model, x, y)
    OGMGEPlugin(alpha=0.5, noise=True, start_epoch=2).after_backward(_Strategy(model, y, epoch=1))
    assert all(torch.equal(p.grad, base[n]) for n, p in model.named_parameters())
    names = {n for ps in modality_parameters(model, scope="all").values() for n, _ in ps}
    assert any(n.endswith("bias") for n in names) and not any(n.startswith("head") for n in names)


def test_ge_noise_has_the_std_of_the_gradient():
    """After modulation g' = k g + N(0, std(g) + 1e-8): the residual's variance is std(g)^2."""
    torch.manual_seed(0)
    enc = {"audio": MLPEncoder(in_dim=64, out_dim=64, hidden_dims=(64,)), "visual": MLPEncoder(in_dim=64, out_dim=64, hidden_dims=(64,))}
    model = FusionModel(encoders=enc, num_classes=3)
    x = {"audio": torch.randn(32, 64), "visual": torch.randn(32, 64)}
    y = torch.randint(0, 3, (32,))
    base = _grads(model, x, y)
    plugin = OGMGEPlugin(alpha=0.3, noise=True)
    torch.manual_seed(123)
    plugin.after_backward(_Strategy(model, y))
    k = plugin.last_coefficients
    checked = 0
    for n, p in model.named_parameters():
        m = n.split(".")[1] if n.startswith("encoders.") else None
        if m is None or p.dim() < 2:
            assert torch.equal(p.grad, base[n])
            continue
        resid = p.grad - k[m] * base[n]
        sd = float(base[n].std()) + 1e-8
        var = float(resid.var())
        # sample variance of N iid normals: relative sd sqrt(2/(N-1)); allow 5 of them
        tol = 5 * math.sqrt(2 / (resid.numel() - 1))
        assert abs(var / sd**2 - 1) < tol, (n, var, sd**2)
        assert abs(float(resid.mean())) < 5 * sd / math.sqrt(resid.numel())
        checked += 1
    assert checked == 4  # two weight matrices per encoder, both modalities get noise


def test_plugin_refuses_a_model_without_per_modality_outputs():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="per-modality logits"):
        OGMGEPlugin().after_backward(_Strategy(model, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="alpha"):
        OGMGEPlugin(alpha=0)
