"""CTP: the compatible momentum update, the key queue, the topology terms."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avalanche_mm.strategies.ctp import (
    CTPPlugin,
    KeyQueue,
    compatible_momentum_update,
    momentum_contrast_loss,
    topology_terms,
)


def test_compatible_momentum_update_follows_its_formula():
    torch.manual_seed(0)
    cur, prev, mom = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in mom.parameters()]
    compatible_momentum_update(mom, cur, prev, 0.9)
    for pm, b, pc, pp in zip(mom.parameters(), before, cur.parameters(), prev.parameters()):
        assert torch.allclose(pm, 0.9 * b + 0.05 * pc + 0.05 * pp, atol=1e-7)
    # first phase: from the current model only
    before = [p.detach().clone() for p in mom.parameters()]
    compatible_momentum_update(mom, cur, None, 0.995)
    for pm, b, pc in zip(mom.parameters(), before, cur.parameters()):
        assert torch.allclose(pm, 0.995 * b + 0.005 * pc, atol=1e-7)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compatible_momentum_update(mom, cur, prev, 1.5)


def test_queue_holds_the_last_n_keys_fifo_with_wrap_around():
    q = KeyQueue(5, 2, init="empty")
    assert q.get().shape == (0, 2)
    keys = torch.arange(16, dtype=torch.float32).view(8, 2)  # key k = [2k, 2k+1]
    q.enqueue(keys[:3])
    assert torch.equal(q.get(), keys[:3])
    q.enqueue(keys[3:7])  # 7 keys into 5 slots: wraps around
    assert torch.equal(q.get(), keys[2:7])
    q.enqueue(keys[7:8])
    assert torch.equal(q.get(), keys[3:8])
    state = q.state_dict()
    q2 = KeyQueue(0, 1, init="empty")
    q2.load_state_dict(state)
    assert torch.equal(q2.get(), keys[3:8])
    # random init (the code's): full from the start, unit keys
    r = KeyQueue(4, 3, init="random")
    assert r.get().shape == (4, 3) and torch.allclose(r.get().norm(dim=1), torch.ones(4))


def _feats(seed, n=6, d=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def test_each_topology_term_is_zero_for_identical_models_and_moves_the_gradient_otherwise():
    ri, rt = _feats(0)
    ri.requires_grad_(True)
    rt.requires_grad_(True)
    img, txt = F.normalize(ri, dim=1), F.normalize(rt, dim=1)
    same = topology_terms(img, txt, img.detach(), txt.detach(), 0.07)
    for k, v in same.items():
        assert float(v.detach()) == pytest.approx(0.0, abs=1e-6), k
    pi, pt = _feats(1)
    other = topology_terms(img, txt, F.normalize(pi, dim=1), F.normalize(pt, dim=1), 0.07)
    for k, v in other.items():
        assert float(v.detach()) > 0, k
        gi, gt = torch.autograd.grad(v, (ri, rt), retain_graph=True, allow_unused=True)
        moved = (gi is not None and gi.abs().sum() > 0) or (gt is not None and gt.abs().sum() > 0)
        assert moved, k
    # the intra-modal terms touch their own tower only; the diagonal is masked
    gi, gt = torch.autograd.grad(other["i2i"], (ri, rt), retain_graph=True, allow_unused=True)
    assert gt is None or gt.abs().sum() == 0


def test_momentum_contrast_uses_the_queue():
    img, txt = (F.normalize(x, dim=1) for x in _feats(2))
    qi, qt = (F.normalize(x, dim=1) for x in _feats(3, n=4))
    with_q = momentum_contrast_loss(img, txt, img, txt, qi, qt, 0.07)
    without = momentum_contrast_loss(img, txt, img, txt, qi[:0], qt[:0], 0.07)
    assert float(with_q) > float(without)


def test_ctp_plugin_rejects_bad_momentum_and_queue():
    with pytest.raises(ValueError, match="momentum"):
        CTPPlugin(momentum=1.2)
    with pytest.raises(ValueError, match="queue_size"):
        CTPPlugin(queue_size=-1)
