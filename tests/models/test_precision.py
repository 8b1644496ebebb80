"""Every model runs forward + backward under bf16 autocast (CPU here; CUDA the same code)."""

import pytest
import torch
import torch.nn.functional as F

from avalanche_mm.data import MultimodalBatch
from avalanche_mm.models import (
    FUSIONS,
    ContrastiveRetrievalLoss,
    ConvEncoder,
    FusionModel,
    LinearProbe,
    MLPEncoder,
    MultiTaskZeroShotClassifier,
    RetrievalHead,
    SequenceEncoder,
    TextEncoder,
    ZeroShotClassifier,
    attach_adapters,
    attach_prompts,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _bf16():
    return torch.autocast(device_type=DEVICE, dtype=torch.bfloat16)


def _check_grads(params):
    params = [p for p in params if p.requires_grad]
    assert params, "nothing to train"
    assert any(p.grad is not None for p in params)
    for p in params:
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("attach", ["none", "adapters", "prompts"])
def test_backbone_and_heads_under_bf16(backbone, images, attach):
    backbone.to(DEVICE)
    images = images.to(DEVICE)
    if attach == "adapters":
        ad = attach_adapters(backbone, num_experts=2, bottleneck=4, scale=1.0)
        with torch.no_grad():
            for p in ad.parameters():
                p.normal_(std=0.1)
    elif attach == "prompts":
        attach_prompts(backbone, vision_tokens=2, vision_deep=True, text_context=3, text_deep=True)
    backbone.train()
    names = ["dog", "cat", "tree", "car"]
    templates = ["a photo of a {}."]
    if attach == "prompts":
        templates = backbone.attachments["prompts_text"].templates()
    clf = ZeroShotClassifier(backbone=backbone, class_names=names, templates=templates).train()
    with _bf16():
        logits = clf(images)
        loss = F.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 3], device=DEVICE))
    assert torch.isfinite(loss)
    loss.backward()
    _check_grads(backbone.parameters())
    mt = MultiTaskZeroShotClassifier(backbone=backbone, class_names={0: names[:2], 1: names[2:]})
    head = RetrievalHead(backbone=backbone)
    ids = backbone.tokenize(["a dog", "a cat", "a tree", "a car"]).to(DEVICE)
    backbone.zero_grad()
    with _bf16():
        out = mt(images, torch.tensor([0, 1, 0, 1], device=DEVICE))
        sim = head(MultimodalBatch({"image": images, "text": ids}))
        loss = ContrastiveRetrievalLoss()(sim.float()) + out.float().logsumexp(1).mean()
    assert torch.isfinite(loss)
    loss.backward()
    _check_grads(backbone.parameters())
    backbone.to("cpu")


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fusion_models_under_bf16(fusion):
    torch.manual_seed(0)
    model = FusionModel(
        encoders={
            "image": ConvEncoder(in_channels=3, out_dim=8, channels=(4,)),
            "audio": MLPEncoder(in_dim=5, out_dim=8),
            "sensor": SequenceEncoder(in_channels=2, out_dim=8, hidden=8, kind="gru"),
            "accel": SequenceEncoder(in_channels=2, out_dim=8, hidden=8, kind="conv"),
            "text": TextEncoder(vocab_size=30, out_dim=8, kind="gru"),
        },
        num_classes=3,
        fusion=fusion,
        attention_heads=2,
    ).to(DEVICE)
    b = 4
    present = {"audio": torch.tensor([True, False, True, True])}
    batch = MultimodalBatch(
        {
            "image": torch.randn(b, 3, 8, 8),
            "audio": torch.randn(b, 5, 6),
            "sensor": torch.randn(b, 2, 9),
            "accel": torch.randn(b, 2, 9),
            "text": torch.randint(1, 30, (b, 5)),
        },
        present=present,
        lengths={"sensor": torch.tensor([9, 4, 7, 2]), "text": torch.tensor([5, 2, 3, 1]),
                 "audio": torch.tensor([6, 6, 3, 2])},
    ).to(DEVICE)
    with _bf16():
        logits = model(batch)
        loss = F.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 0], device=DEVICE))
    assert torch.isfinite(loss)
    assert all(torch.isfinite(v.float()).all() for v in model.last_unimodal_logits.values())
    loss.backward()
    _check_grads(model.parameters())


def test_linear_probe_under_bf16(backbone, images):
    probe = LinearProbe(encoder=backbone.encode_image, in_features=backbone.embed_dim, num_classes=3)
    with _bf16():
        loss = F.cross_entropy(probe(images).float(), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert probe.head.weight.grad is not None and torch.isfinite(probe.head.weight.grad).all()
