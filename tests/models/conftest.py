"""Shared fixtures: the two tiny backbones, built once per test session."""

import pytest
import torch

from avalanche_mm.models import build_backbone

BACKBONES = ("tiny-openclip", "tiny-hfclip")


@pytest.fixture(scope="session")
def _backbone_cache():
    return {}


@pytest.fixture(params=BACKBONES)
def backbone(request, _backbone_cache):
    """A fresh copy (state restored) of each tiny backbone."""
    name = request.param
    if name not in _backbone_cache:
        b = build_backbone(name, seed=0)
        _backbone_cache[name] = (b, {k: v.clone() for k, v in b.state_dict().items()})
    b, state = _backbone_cache[name]
    for key in list(b.attachments.keys()):
        b.remove_attachment(key)
    b.load_state_dict(state)
    for p in b.parameters():
        p.requires_grad_(True)
    b.eval()
    return b


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=g)
