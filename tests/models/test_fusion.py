import pytest
import torch
import torch.nn.functional as F

from avalanche_mm.data import MultimodalBatch, make_multimodal_dataset
from avalanche_mm.models import (
    FUSIONS,
    ConvEncoder,
    FusionModel,
    MLPEncoder,
    SequenceEncoder,
    TextEncoder,
)


def _pad_garbage(x, extra, value=7.0):
    pad_shape = tuple(x.shape[:-1]) + (extra,)
    return torch.cat([x, torch.full(pad_shape, value, dtype=x.dtype)], dim=-1)


@pytest.mark.parametrize(
    "encoder, x",
    [
        (lambda: MLPEncoder(in_dim=6, out_dim=5), torch.randn(3, 6, 9)),
        (lambda: ConvEncoder(in_channels=1, out_dim=5, channels=(4, 4)), torch.randn(3, 8, 12)),
        (lambda: SequenceEncoder(in_channels=2, out_dim=5, hidden=8), torch.randn(3, 2, 10)),
        (lambda: SequenceEncoder(in_channels=2, out_dim=5, hidden=8, kind="gru"), torch.randn(3, 2, 10)),
        (lambda: TextEncoder(vocab_size=20, out_dim=5, embed_dim=8), torch.randint(1, 20, (3, 7))),
        (lambda: TextEncoder(vocab_size=20, out_dim=5, embed_dim=8, kind="gru"), torch.randint(1, 20, (3, 7))),
    ],
)
def test_encoders_ignore_padding(encoder, x):
    torch.manual_seed(0)
    enc = encoder()
    lengths = torch.tensor([x.shape[-1], x.shape[-1] - 3, 4])
    # the same sequences, padded further with garbage: identical features
    value = 3 if not x.is_floating_point() else 7.0
    longer = _pad_garbage(x, 5, value)
    out = enc(x, lengths=lengths)
    assert out.shape == (3, 5)
    assert torch.allclose(out, enc(longer, lengths=lengths), atol=1e-5)
    # and the padded part of a shorter row does not matter either
    x2 = x.clone()
    x2[2, ..., 4:] = value
    assert torch.allclose(out[2], enc(x2, lengths=lengths)[2], atol=1e-5)


def test_encoder_input_validation():
    with pytest.raises(ValueError, match="built for 6 features"):
        MLPEncoder(in_dim=6, out_dim=2)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="channel-first"):
        SequenceEncoder(in_channels=3, out_dim=2)(torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match="vocab_size"):
        TextEncoder(vocab_size=5, out_dim=2)(torch.tensor([[1, 9]]))
    with pytest.raises(ValueError, match="kind"):
        SequenceEncoder(in_channels=1, out_dim=2, kind="lstm")


def _model(fusion, seed=0):
    torch.manual_seed(seed)
    return FusionModel(
        encoders={
            "audio": ConvEncoder(in_channels=1, out_dim=8, channels=(4,)),
            "visual": MLPEncoder(in_dim=6, out_dim=6, hidden_dims=(8,)),
            "sensor": SequenceEncoder(in_channels=2, out_dim=8, hidden=8, kind="gru"),
        },
        num_classes=4,
        fusion=fusion,
        fusion_dim=8,
        attention_heads=2,
    )


def _batch(present=None):
    g = torch.Generator().manual_seed(1)
    data = {
        "audio": torch.randn(5, 6, 10, generator=g),
        "visual": torch.randn(5, 6, generator=g),
        "sensor": torch.randn(5, 2, 12, generator=g),
    }
    lengths = {"audio": torch.tensor([10, 8, 6, 10, 4]), "sensor": torch.tensor([12, 3, 12, 7, 5])}
    return MultimodalBatch(data, present=present, lengths=lengths)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_forward_and_unimodal_side_channel(fusion):
    model = _model(fusion)
    logits = model(_batch())
    assert logits.shape == (5, 4)
    assert set(model.last_unimodal_logits) == {"audio", "visual", "sensor"}
    assert all(v.shape == (5, 4) for v in model.last_unimodal_logits.values())
    assert model.last_features["audio"].shape == (5, 8)
    if fusion in ("concat", "sum"):  # exact decomposition of the fused logits
        total = sum(model.last_unimodal_logits.values())
        assert torch.allclose(total, logits, atol=1e-5)
    else:
        assert model.last_fusion_weights.shape == (5, 3)
        assert torch.allclose(model.last_fusion_weights.sum(1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_missing_modality_contributes_nothing(fusion):
    model = _model(fusion)
    present = {"visual": torch.tensor([True, False, True, True, False]),
               "sensor": torch.tensor([True, True, False, True, False])}
    batch = _batch(present)
    out = model(batch)
    unimodal = {k: v.clone() for k, v in model.last_unimodal_logits.items()}
    # garbage in the missing rows changes nothing
    garbage = dict(batch)
    garbage["visual"] = batch["visual"].clone()
    garbage["visual"][~present["visual"]] = 1e3
    garbage["sensor"] = batch["sensor"].clone()
    garbage["sensor"][~present["sensor"]] = -1e3
    out2 = model(MultimodalBatch(garbage, present=present, lengths=batch.lengths))
    assert torch.allclose(out, out2, atol=1e-5)
    assert (model.last_features["visual"][~present["visual"]] == 0).all()
    # row 4 has audio only: its fused prediction is the audio-only prediction
    assert torch.allclose(out[4], unimodal["audio"][4] + (
        sum(unimodal[m][4] for m in ("visual", "sensor")) if fusion in ("concat", "sum") else 0
    ), atol=1e-5)
    if fusion in ("gating", "attention"):
        assert torch.allclose(out[4], unimodal["audio"][4], atol=1e-5)
        assert model.last_fusion_weights[4, 1:].abs().max() == 0
    # a modality missing everywhere gets no gradient
    none_visual = dict(present, visual=torch.zeros(5, dtype=torch.bool))
    model.zero_grad()
    model(MultimodalBatch(dict(batch), present=none_visual, lengths=batch.lengths)).sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoders["visual"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders["audio"].parameters())


def test_all_modalities_missing_row_is_finite():
    for fusion in FUSIONS:
        model = _model(fusion)
        none = torch.tensor([False, True, True, True, True])
        present = {"audio": none, "visual": none, "sensor": none}
        out = model(_batch(present))
        assert torch.isfinite(out).all()
        assert torch.allclose(out[0], model.head.bias, atol=1e-6)


def test_fusion_with_data_layer_collate_and_training_step():
    torch.manual_seed(0)
    n = 8
    audio = [torch.randn(6, 5 + i) for i in range(n)]
    visual = [torch.randn(6) if i % 3 else None for i in range(n)]
    data = make_multimodal_dataset(
        {"audio": audio, "visual": visual}, [i % 4 for i in range(n)], variable=["audio"]
    )
    batch_x, y, _ = data.collate_fn([data[i] for i in range(n)])
    assert not batch_x.present["visual"].all()
    model = FusionModel(
        encoders={"audio": ConvEncoder(in_channels=1, out_dim=8, channels=(4,)),
                  "visual": MLPEncoder(in_dim=6, out_dim=8)},
        num_classes=4,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss0 = F.cross_entropy(model(batch_x), y)
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(model(batch_x), y)
        loss.backward()
        opt.step()
    assert loss.item() < loss0.item()


def test_fusion_validation():
    with pytest.raises(ValueError, match="fusion must be"):
        FusionModel(encoders={"a": MLPEncoder(in_dim=2, out_dim=2)}, num_classes=2, fusion="max")
    with pytest.raises(TypeError, match="out_dim"):
        FusionModel(encoders={"a": torch.nn.Linear(2, 2)}, num_classes=2)
    model = FusionModel(encoders={"a": MLPEncoder(in_dim=2, out_dim=2)}, num_classes=2)
    with pytest.raises(KeyError, match="lacks modalities"):
        model(MultimodalBatch({"b": torch.zeros(2, 2)}))
