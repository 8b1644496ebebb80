"""Mod-X and CTP as Avalanche strategies: with their mechanisms off they train exactly like
contrastive fine-tuning; with them on, the weights differ; CTP's queue fills with keys."""

import pytest
import torch

from avalanche_mm.strategies import CTP, ContrastiveFineTune, ModX


def _train(cls, bundle, make, **kw):
    torch.manual_seed(0)
    model = make()
    strategy = cls(model=model, optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5),
                   iterations=2, train_mb_size=16, **kw)
    for exp in bundle.scenario.train_stream:
        torch.manual_seed(1)
        strategy.train(exp, num_workers=0)
    return strategy, [p.detach().clone() for p in model.parameters()]


def _same(a, b):
    return all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def ft(pairs_setup):
    bundle, make = pairs_setup
    return _train(ContrastiveFineTune, bundle, make)[1]


def test_modx_off_equals_finetune_and_on_differs(pairs_setup, ft):
    bundle, make = pairs_setup
    _, off = _train(ModX, bundle, make, alpha=0.0)
    s, on = _train(ModX, bundle, make, alpha=20.0)
    assert _same(ft, off)
    assert not _same(ft, on)
    assert "replaced_i2t" in s.modx_plugin.last


def test_ctp_off_equals_finetune_and_each_mechanism_acts(pairs_setup, ft):
    bundle, make = pairs_setup
    _, off = _train(CTP, bundle, make, momentum_weight=0.0, topology_weight=0.0, queue_size=8)
    assert _same(ft, off)
    s, topo = _train(CTP, bundle, make, momentum_weight=0.0, topology_weight=1.0, queue_size=8)
    assert not _same(ft, topo) and "topology" in s.ctp_plugin.last
    s, mom = _train(CTP, bundle, make, momentum_weight=1.0, topology_weight=0.0, queue_size=8, queue_init="empty")
    assert not _same(ft, mom)
    assert s.ctp_plugin.image_queue.filled == 8 and s.ctp_plugin.phases_seen == 2
