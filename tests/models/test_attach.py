import pytest
import torch
import torch.nn.functional as F

from avalanche_mm.models import (
    MixtureOfAdapters,
    ZeroShotClassifier,
    attach_adapters,
    attach_prompts,
    build_backbone,
    trainable_parameter_report,
)

TEXTS = ["a photo of a dog.", "a red circle", "a tree"]


def _outputs(b, images, ids):
    with torch.no_grad():
        return b.encode_image(images), b.encode_text(ids)


def _base_state(b):
    return {n: p.detach().clone() for n, p in b.named_base_parameters()}


def _train_step(b, images, ids, params, lr=0.5):
    opt = torch.optim.SGD(params, lr=lr)
    img, txt = b.encode_image(images[: len(ids)]), b.encode_text(ids)
    logits = b.logit_scale_value() * img @ txt.t()
    loss = F.cross_entropy(logits, torch.arange(len(ids)))
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("num_experts", [0, 3])
def test_zero_init_adapters_leave_outputs_unchanged(backbone, images, num_experts):
    ids = backbone.tokenize(TEXTS)
    before = _outputs(backbone, images, ids)
    adapters = attach_adapters(backbone, num_experts=num_experts, bottleneck=8)
    after = _outputs(backbone, images, ids)
    assert len(adapters.adapters) == len(backbone.vision_blocks) + len(backbone.text_blocks)
    for a, b in zip(before, after):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("num_experts", [0, 3])
def test_adapters_change_output_only_through_their_parameters(backbone, images, num_experts):
    ids = backbone.tokenize(TEXTS)
    adapters = attach_adapters(backbone, num_experts=num_experts, bottleneck=8, scale=1.0)
    base_before = _base_state(backbone)
    assert all(not p.requires_grad for _, p in backbone.named_base_parameters())
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapters.parameters()}
    out0 = _outputs(backbone, images, ids)
    for _ in range(2):
        _train_step(backbone, images, ids, trainable)
    out1 = _outputs(backbone, images, ids)
    assert not torch.allclose(out0[0], out1[0], atol=1e-4)
    assert not torch.allclose(out0[1], out1[1], atol=1e-4)
    assert all(torch.equal(base_before[n], p) for n, p in backbone.named_base_parameters())
    # the base alone (attachments off, or detached) still gives the original outputs
    with backbone.attachments_disabled():
        off = _outputs(backbone, images, ids)
    assert torch.allclose(off[0], out0[0], atol=1e-5) and torch.allclose(off[1], out0[1], atol=1e-5)
    adapters.detach()
    assert "adapters" not in backbone.attachments
    gone = _outputs(backbone, images, ids)
    assert torch.allclose(gone[0], out0[0], atol=1e-5)


def test_adapter_state_dict_round_trip(backbone, images):
    ids = backbone.tokenize(TEXTS)
    attach_adapters(backbone, towers=("vision",), layers={"vision": [-1]}, bottleneck=4, scale=1.0)
    with torch.no_grad():
        for p in backbone.attachments["adapters"].parameters():
            p.normal_()
    state = backbone.state_dict()
    assert any(k.startswith("attachments.adapters.adapters.vision_1.") for k in state)
    other = build_backbone(backbone.name, seed=0)
    attach_adapters(other, towers=("vision",), layers={"vision": [-1]}, bottleneck=4, scale=1.0)
    other.load_state_dict(state)
    assert torch.allclose(other.encode_image(images), backbone.encode_image(images), atol=1e-5)


def test_mixture_routing_topk_usage_and_routers():
    torch.manual_seed(0)
    moe = MixtureOfAdapters(dim=8, num_experts=4, top_k=2, bottleneck=4, num_routers=2)
    with torch.no_grad():
        moe.w_gate.normal_()
        moe.w_noise.normal_()
    x = torch.randn(5, 3, 8)
    moe.train()
    moe(x)
    gates = moe.last_gates
    assert ((gates > 0).sum(1) == 2).all()
    assert torch.allclose(gates.sum(1), torch.ones(5))
    assert moe.expert_usage[0].sum() == 10 and moe.expert_usage[1].sum() == 0
    moe.active_router = 1
    moe(x)
    assert moe.expert_usage[1].sum() == 10
    moe.eval()  # no noise at evaluation: deterministic gates
    g1 = moe.gates(x[:, 0]).clone()
    g2 = moe.gates(x[:, 0])
    assert torch.equal(g1, g2)
    # layout [L, B, D] gives the same result as [B, L, D]
    assert torch.allclose(moe(x.transpose(0, 1), batch_first=False).transpose(0, 1), moe(x), atol=1e-6)
    with pytest.raises(ValueError, match="active_router"):
        moe.active_router = 2
    with pytest.raises(ValueError, match="top_k"):
        MixtureOfAdapters(dim=8, num_experts=2, top_k=3)


@pytest.mark.parametrize("deep", [False, True])
def test_visual_prompts_change_image_output_only(backbone, images, deep):
    ids = backbone.tokenize(TEXTS)
    out0 = _outputs(backbone, images, ids)
    prompts = attach_prompts(backbone, vision_tokens=3, vision_deep=deep)["vision"]
    assert prompts.prompts.shape[0] == (len(backbone.vision_blocks) if deep else 1)
    out1 = _outputs(backbone, images, ids)
    assert out1[0].shape == out0[0].shape
    assert not torch.allclose(out0[0], out1[0], atol=1e-4)
    assert torch.allclose(out0[1], out1[1], atol=1e-5)  # text untouched
    base_before = _base_state(backbone)
    _train_step(backbone, images, ids, [prompts.prompts])
    assert prompts.prompts.grad is not None
    if deep:  # every layer's prompts receive gradient
        assert (prompts.prompts.grad.abs().sum(dim=(1, 2)) > 0).all()
    assert all(torch.equal(base_before[n], p) for n, p in backbone.named_base_parameters())
    with torch.no_grad():
        prompts.prompts.zero_()
    with backbone.attachments_disabled():
        assert torch.allclose(_outputs(backbone, images, ids)[0], out0[0], atol=1e-5)


@pytest.mark.parametrize("deep", [False, True])
def test_text_context_only_affects_prompted_texts(backbone, images, deep):
    prompts = attach_prompts(backbone, text_context=4, text_deep=deep)["text"]
    plain = backbone.tokenize(TEXTS)
    prompted = backbone.tokenize(prompts.prepare(TEXTS))
    assert (prompted[:, 1:5] == prompts.placeholder_id).all()
    with backbone.attachments_disabled():
        ref_plain, ref_prompted = _outputs(backbone, images, plain)[1], _outputs(backbone, images, prompted)[1]
    mixed = torch.cat([plain[:1], prompted[1:2]])
    out = _outputs(backbone, images, mixed)[1]
    assert torch.allclose(out[0], ref_plain[0], atol=1e-5)
    assert not torch.allclose(out[1], ref_prompted[1], atol=1e-4)
    # per-row context override
    with prompts.context_override(torch.zeros(2, 4, backbone.width("text"))):
        over = _outputs(backbone, images, prompted[:2])[1]
    assert not torch.allclose(over[1], out[1], atol=1e-4)
    with pytest.raises(ValueError, match="contexts for"):
        with prompts.context_override(torch.zeros(5, 4, backbone.width("text"))):
            backbone.encode_text(prompted[:2])
    if deep:
        loss = backbone.encode_text(prompted).sum()
        loss.backward()
        assert (prompts.ctx.grad.abs().sum(dim=(1, 2)) > 0).all()


def test_coop_zero_shot_classifier_trains_context_and_refreshes_cache(backbone, images):
    prompts = attach_prompts(backbone, text_context=4, text_init="a photo of a")["text"]
    names = ["dog", "cat", "tree", "car"]
    clf = ZeroShotClassifier(backbone=backbone, class_names=names, templates=prompts.templates())
    ref_ids = backbone.tokenize(["a photo of a dog."])
    prompted_ids = backbone.tokenize(prompts.templates()[0].format("dog"))
    with torch.no_grad():  # CoOp init: the context starts as the phrase's embeddings
        assert torch.allclose(backbone.encode_text(ref_ids), backbone.encode_text(prompted_ids), atol=1e-5)
    clf.eval()
    with torch.no_grad():
        before = clf(images)
    opt = torch.optim.SGD([prompts.ctx], lr=1.0)
    clf.train()
    loss = F.cross_entropy(clf(images), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert prompts.ctx.grad is not None and prompts.ctx.grad.abs().sum() > 0
    opt.step()
    clf.eval()
    calls = clf.embedding_cache.num_text_encoder_calls
    with torch.no_grad():
        after = clf(images)
        clf(images)
    assert clf.embedding_cache.num_text_encoder_calls == calls + 1  # re-encoded once
    assert not torch.allclose(before, after, atol=1e-4)


def test_parameter_report_counts(backbone):
    adapters = attach_adapters(backbone, towers=("text",), bottleneck=4)
    report = trainable_parameter_report(backbone)
    n_adapter = sum(p.numel() for p in adapters.parameters())
    assert report.rows["attachments.adapters"] == (n_adapter, n_adapter)
    assert report.rows["vision"][0] == 0 and report.rows["text"][0] == 0
    assert report.trainable == n_adapter
    assert report.total == sum(p.numel() for p in backbone.parameters())
    clf = ZeroShotClassifier(backbone=backbone, class_names=["a", "b"])
    assert "backbone.attachments.adapters" in trainable_parameter_report(clf).rows
    assert "TOTAL" in str(report)


def test_attach_validation(backbone):
    with pytest.raises(ValueError, match="out of range"):
        attach_adapters(backbone, layers={"vision": [7]})
    attach_adapters(backbone, towers=("vision",))
    with pytest.raises(KeyError, match="already"):
        attach_adapters(backbone, towers=("vision",))
    with pytest.raises(ValueError, match="tower"):
        attach_adapters(backbone, name="x", towers=("audio",))
    with pytest.raises(ValueError, match="num_experts > 0"):
        attach_adapters(backbone, name="y", top_k=2)
    with pytest.raises(ValueError, match="tokens"):
        attach_prompts(backbone, text_context=4, text_init="a photo")


def test_remove_attachment_also_removes_hooks(backbone, images):
    ids = backbone.tokenize(TEXTS)
    out0 = _outputs(backbone, images, ids)
    adapters = attach_adapters(backbone, bottleneck=4, scale=1.0)
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_()
    assert not torch.allclose(_outputs(backbone, images, ids)[0], out0[0], atol=1e-4)
    removed = backbone.remove_attachment("adapters")
    assert removed is adapters and adapters.backbone is None
    out = _outputs(backbone, images, ids)
    assert torch.allclose(out[0], out0[0], atol=1e-5) and torch.allclose(out[1], out0[1], atol=1e-5)


def test_deepcopy_gives_an_independent_model_with_its_own_attachments(backbone, images):
    """LwF/ZSCL keep deep copies as teachers: hooks must follow the copy."""
    import copy

    ids = backbone.tokenize(TEXTS)
    adapters = attach_adapters(backbone, bottleneck=4, scale=1.0)
    prompts = attach_prompts(backbone, name="p", vision_tokens=2, text_context=3)
    clf = ZeroShotClassifier(backbone=backbone, class_names=["a", "b"]).eval()
    with torch.no_grad():
        clf(images)
    twin = copy.deepcopy(clf)
    out = _outputs(backbone, images, ids)
    with torch.no_grad():
        for p in twin.backbone.attachments["adapters"].parameters():
            p.normal_()
    assert torch.allclose(_outputs(backbone, images, ids)[0], out[0])  # original untouched
    assert not torch.allclose(_outputs(twin.backbone, images, ids)[0], out[0], atol=1e-4)
    twin.backbone.remove_attachment("adapters")
    twin.backbone.remove_attachment("p_vision")
    assert "adapters" in backbone.attachments
    assert torch.allclose(_outputs(backbone, images, ids)[0], out[0])
    assert adapters.backbone is backbone and prompts["vision"].backbone is backbone
    with torch.no_grad():  # the copy's own classifier cache works on its own weights
        assert twin(images).shape == (4, 2)


def test_visual_prompts_and_adapters_under_gradient_checkpointing(backbone, images):
    prompts = attach_prompts(backbone, vision_tokens=2, vision_deep=True)["vision"]
    adapters = attach_adapters(backbone, towers=("vision",), bottleneck=4, scale=1.0)
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_(std=0.1)
    backbone.train()

    def grads():
        backbone.zero_grad()
        backbone.encode_image(images).pow(2).sum().backward()
        return [prompts.prompts.grad.clone()] + [p.grad.clone() for p in adapters.parameters()]

    plain = grads()
    if backbone.backend == "open_clip":
        backbone.model.set_grad_checkpointing(True)
    else:
        backbone.model.gradient_checkpointing_enable()
    try:
        ckpt = grads()
    finally:
        if backbone.backend == "open_clip":
            backbone.model.set_grad_checkpointing(False)
        else:
            backbone.model.gradient_checkpointing_disable()
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain, ckpt))


def test_context_override_with_a_parameter_does_not_register_it(backbone):
    """A bank's prompts (an nn.Parameter) used as override stay the bank's (AttriCLIP)."""
    prompts = attach_prompts(backbone, text_context=3)["text"]
    bank = torch.nn.Parameter(torch.randn(2, 3, backbone.width("text")))
    names = {n for n, _ in prompts.named_parameters()}
    ids = backbone.tokenize(prompts.prepare(["a", "b"]))
    with prompts.context_override(bank):
        out = backbone.encode_text(ids)
        assert {n for n, _ in prompts.named_parameters()} == names
    out.sum().backward()
    assert bank.grad is not None and bank.grad.abs().sum() > 0
    assert {n for n, _ in prompts.named_parameters()} == names and prompts._override is None
