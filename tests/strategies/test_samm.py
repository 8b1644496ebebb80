"""SAMM: the relational alignment term equals the released RKD distance loss, pulls one modality's
relational similarities towards the other's (and not the other way), and the plugin's terms."""

import pytest
import torch
import torch.nn.functional as F

from avalanche_mm.models import FusionModel, MLPEncoder
from avalanche_mm.strategies.samm import SAMMPlugin, distance_potential, relational_alignment


def _code_rkd(source, target):
    """The released RKD.eval_loss (distance term), written out."""

    def pot(x):
        xs = x.pow(2).sum(dim=-1)
        d = torch.sqrt(torch.clamp(xs.unsqueeze(1) + xs.unsqueeze(0) - 2 * x @ x.t(), min=1e-12))
        mu = torch.sum(d) / torch.sum(torch.where(d > 0.0, torch.ones_like(d), torch.zeros_like(d)))
        return d / (mu + 1e-8)

    s = F.normalize(source.reshape(source.shape[0], -1), dim=1)
    t = F.normalize(target.reshape(target.shape[0], -1), dim=1)
    return torch.nn.SmoothL1Loss()(pot(s), pot(t))


def test_relational_alignment_equals_the_code():
    torch.manual_seed(0)
    a, v = torch.randn(9, 5, requires_grad=True), torch.randn(9, 5)
    got, ref = relational_alignment(a, v), _code_rkd(a, v)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(torch.autograd.grad(got, a)[0], torch.autograd.grad(ref, a)[0], atol=1e-7)
    # invariant to scaling a modality's outputs (rows are normalised; distances by their mean)
    assert relational_alignment(3 * v, v).item() == pytest.approx(0.0, abs=1e-6)


def test_alignment_pulls_relational_similarities_together():
    torch.manual_seed(0)
    a = torch.randn(12, 6, requires_grad=True)
    v = torch.randn(12, 6, requires_grad=True)
    v0 = v.detach().clone()
    opt = torch.optim.Adam([a, v], lr=0.05)

    def gap():
        with torch.no_grad():
            pa = distance_potential(F.normalize(a, dim=1))
            pv = distance_potential(F.normalize(v, dim=1))
            return float((pa - pv).abs().mean())

    before = gap()
    for _ in range(200):
        opt.zero_grad()
        relational_alignment(a, v.detach()).backward()  # as SAMM: the target modality gets no gradient
        opt.step()
    assert gap() < 0.5 * before
    assert torch.equal(v.detach(), v0)  # the stop-gradient: only the source moved


def _model():
    torch.manual_seed(0)
    enc = {"audio": MLPEncoder(in_dim=6, out_dim=5, hidden_dims=(7,)), "image": MLPEncoder(in_dim=4, out_dim=5, hidden_dims=(7,))}
    return FusionModel(encoders=enc, num_classes=3)


class _S:
    pass


def test_plugin_adds_unimodal_and_alignment_terms():
    model = _model()
    g = torch.Generator().manual_seed(1)
    x = {"audio": torch.randn(8, 6, generator=g), "image": torch.randn(8, 4, generator=g)}
    y = torch.randint(0, 3, (8,), generator=g)
    plugin = SAMMPlugin(mem_size=4, mem_batch_size=2, reg_weight=0.01, alignment_weight=25.0)
    plugin.training, plugin.replay.n_current = True, 8
    s = _S()
    s.model, s.mb_y, s.mb_output = model, y, model(x)
    s.loss = plugin.criterion()(s.mb_output, y)
    base = s.loss
    plugin.before_backward(s)
    za, zi = model.last_unimodal_logits["audio"], model.last_unimodal_logits["image"]
    ref = F.cross_entropy(za, y) + F.cross_entropy(zi, y) + 25.0 * (_code_rkd(za, zi.detach()) + _code_rkd(zi, za.detach()))
    assert (s.loss - base).item() == pytest.approx(0.01 * ref.item(), rel=1e-5)
    # the alignment term reaches the encoders' gradient
    model.zero_grad()
    (s.loss - base).backward(retain_graph=True)
    with_align = model.encoders["image"].net[0].weight.grad.clone()
    plugin.alignment_weight = 0.0
    model.zero_grad()
    s.mb_output = model(x)
    s.loss = plugin.criterion()(s.mb_output, y)
    b2 = s.loss
    plugin.before_backward(s)
    (s.loss - b2).backward()
    assert not torch.allclose(with_align, model.encoders["image"].net[0].weight.grad)


def test_consistency_selects_the_most_trusted_stored_output():
    plugin = SAMMPlugin()
    fused = torch.tensor([[5.0, 0.0], [0.0, 0.0]])
    uni = {"audio": torch.tensor([[0.0, 0.0], [0.0, 5.0]]), "image": torch.tensor([[0.0, 0.0], [0.0, 0.0]])}
    y = torch.tensor([0, 1])
    targets = {"audio": torch.full((2, 2), 1.0), "image": torch.full((2, 2), 2.0), "fused": torch.full((2, 2), 3.0)}
    loss = plugin.consistency(fused, uni, y, targets)
    # row 0: fused is the most confident of the true class -> target 3; row 1: audio -> target 1
    target = torch.tensor([[3.0, 3.0], [1.0, 1.0]])
    ref = F.mse_loss(fused, target) + 0.01 * (F.mse_loss(uni["audio"], target) + F.mse_loss(uni["image"], target))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
