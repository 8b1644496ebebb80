"""MoE-Adapters4CL: each mechanism acts (frozen backbone, per-task routers, activate-freeze,
DDAS), the gate equals the released code's formula, bad configurations fail in the check."""

import pytest
import torch
import torch.nn.functional as F
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.experiments.registry import clip_classifier
from avalanche_mm.models import MixtureOfAdapters, build_backbone
from avalanche_mm.strategies import MoEAdapters
from avalanche_mm.strategies.finetune import find_backbone
from avalanche_mm.strategies.moe_adapters import (
    DDAS,
    ZERO_SHOT,
    DDASAutoencoder,
    MoEAdaptersPlugin,
    _train_autoencoder,
)
from avalanche_mm.strategies.registry import METHODS, CheckContext


# ---------------------------------------------------------------------------
# the gate: a hand-written reference of the released code (mtil/clip/model.py)
# ---------------------------------------------------------------------------
def released_noisy_top_k_gating(x, w_gate, w_noise, top_k, train, noise_epsilon=1e-2):
    """ResidualAttentionBlock.noisy_top_k_gating of JiazuoYu/MoE-Adapters4CL, rewritten."""
    clean_logits = x @ w_gate
    if train:
        raw_noise_stddev = x @ w_noise
        noise_stddev = F.softplus(raw_noise_stddev) + noise_epsilon
        logits = clean_logits + torch.randn_like(clean_logits) * noise_stddev
    else:
        logits = clean_logits
    experts = w_gate.shape[1]
    top_logits, top_indices = logits.topk(min(top_k + 1, experts), dim=1)
    top_k_logits, top_k_indices = top_logits[:, :top_k], top_indices[:, :top_k]
    top_k_gates = torch.softmax(top_k_logits, dim=1)
    return torch.zeros_like(logits).scatter(1, top_k_indices, top_k_gates)


@pytest.mark.parametrize("experts,top_k", [(22, 2), (4, 2), (2, 2), (5, 1)])
def test_noisy_top_k_gate_equals_released_formula(experts, top_k):
    g = torch.Generator().manual_seed(experts * 10 + top_k)
    moe = MixtureOfAdapters(dim=16, num_experts=experts, top_k=top_k, bottleneck=4, num_routers=3)
    with torch.no_grad():
        moe.w_gate.copy_(torch.randn(moe.w_gate.shape, generator=g))
        moe.w_noise.copy_(torch.randn(moe.w_noise.shape, generator=g))
    x = torch.randn(7, 16, generator=g)
    for router in (0, 2):
        moe.active_router = router
        for train in (True, False):
            moe.train(train)
            torch.manual_seed(123)
            ours = moe.gates(x)
            torch.manual_seed(123)
            ref = released_noisy_top_k_gating(x, moe.w_gate[router], moe.w_noise[router], top_k, train)
            assert torch.allclose(ours, ref, atol=1e-6), (router, train)
    # the class-incremental code keeps the noise at evaluation
    moe.noise_at_eval = True
    moe.eval()
    torch.manual_seed(5)
    ours = moe.gates(x)
    torch.manual_seed(5)
    assert torch.allclose(ours, released_noisy_top_k_gating(x, moe.w_gate[2], moe.w_noise[2], top_k, True), atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-openclip", "tiny-hfclip"])
def test_experts_read_the_residual_stream_like_the_released_block(name):
    """x + MLP(LN x) + sum g_i E_i(x) (code), not E_i(LN x) (the normalized option)."""
    from avalanche_mm.models.attach import attach_adapters

    backbone = build_backbone(name, seed=0)
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))
    captured = {}
    adapters = attach_adapters(backbone, towers=("vision",), layers={"vision": [0]}, num_experts=2, top_k=2,
                               bottleneck=4, adapter_input="residual")
    moe = adapters.adapters["vision_0"]
    seen = {}

    def keep(store):
        def hook(module, args, *rest):
            store.setdefault("x", args[0].detach().clone())
        return hook

    moe.register_forward_pre_hook(keep(seen))
    block = backbone.blocks("vision")[0]
    ln = getattr(block, "ln_2", None) or getattr(block, "layer_norm2")
    ln.register_forward_pre_hook(keep(captured))
    with torch.no_grad():
        backbone.encode_image(images)
    assert torch.equal(seen["x"], captured["x"])  # the stream before the layer norm, not LN(x)


# ---------------------------------------------------------------------------
# training: frozen backbone, per-task routers, activate-freeze
# ---------------------------------------------------------------------------
def _strategy(bundle, backbone_name, **kw):
    model = clip_classifier(build_backbone(backbone_name, seed=0), bundle, {"freeze": ["logit_scale"]})
    args = dict(num_experts=4, num_tasks=2, iterations=3, ddas=False)
    args.update(kw)
    opt = torch.optim.AdamW(model.parameters(), lr=kw.pop("lr", 5e-2), weight_decay=0.1)
    args.pop("lr", None)
    return MoEAdapters(model=model, optimizer=opt, train_mb_size=8, eval_mb_size=32,
                       evaluator=EvaluationPlugin(), **args), model


def _snap(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


@pytest.mark.parametrize("name", ["tiny-openclip", "tiny-hfclip"])
def test_only_current_router_and_unfrozen_experts_train(setup, name):
    bundle, _ = setup
    strategy, model = _strategy(bundle, name)
    plugin = strategy.moe_plugin
    bb = find_backbone(model)
    base0 = {n: p.detach().clone() for n, p in bb.named_base_parameters()}
    s0 = _snap(model)
    strategy.train(bundle.scenario.train_stream[0])
    s1 = _snap(model)
    frozen = {k: m.expert_frozen.nonzero().flatten().tolist() for k, m in plugin.mixtures().items()}
    assert all(len(v) == 2 for v in frozen.values())  # top-2 per block, both towers
    strategy.train(bundle.scenario.train_stream[1])
    s2 = _snap(model)
    # the pretrained weights never move (bit-identical), the logit scale included
    assert all(torch.equal(base0[n], p) for n, p in bb.named_base_parameters())
    assert not any(p.requires_grad for _, p in bb.named_base_parameters())
    changed_router1 = False
    for key, moe in plugin.mixtures().items():
        pre = f"backbone.attachments.moe_adapters.adapters.{key}."
        for w in ("w_gate", "w_noise"):
            # task 0's router trained in task 0 and stays bit-identical in task 1 (weight decay 0.1)
            assert not torch.equal(s0[pre + w][0], s1[pre + w][0]) or w == "w_noise"
            assert torch.equal(s1[pre + w][0], s2[pre + w][0]), (key, w)
            assert torch.equal(s0[pre + w][1], s1[pre + w][1]), (key, w)  # task 1's router untouched in task 0
        changed_router1 |= not torch.equal(s1[pre + "w_gate"][1], s2[pre + "w_gate"][1])
        for e in range(moe.num_experts):
            names = [n for n in s1 if n.startswith(f"{pre}experts.{e}.")]
            same = all(torch.equal(s1[n], s2[n]) for n in names)
            if e in frozen[key]:
                assert same, (key, e)  # frozen after task 0: stays frozen
                assert not any(p.requires_grad for p in moe.experts[e].parameters())
    assert changed_router1
    # some unfrozen expert did train in task 1
    assert any(not torch.equal(s1[n], s2[n]) for n in s1 if ".experts." in n)
    # trainable count: unfrozen experts + one router (+ no autoencoder), logged per experience
    trainable, total = plugin.parameter_counts(model)
    mix = list(plugin.mixtures().values())
    expert = sum(p.numel() for p in mix[0].experts[0].parameters())
    assert trainable < total
    assert trainable == sum(
        int((~m.expert_frozen).sum()) * sum(p.numel() for p in m.experts[0].parameters()) + 2 * m.w_gate[0].numel()
        for m in mix
    ) and expert > 0


def test_activate_freeze_freezes_the_most_used_experts_of_the_task():
    moe = MixtureOfAdapters(dim=8, num_experts=5, top_k=2, bottleneck=4, num_routers=2)
    plugin = MoEAdaptersPlugin(num_experts=5, num_tasks=2, freeze_top=2, ddas=False)
    plugin.adapters = type("A", (), {"mixtures": lambda self: {"vision_0": moe}})()
    moe.expert_usage[1] = torch.tensor([50.0, 0.0, 10.0, 0.0, 0.0])  # counts from an earlier task
    plugin.current_router = 1
    plugin._usage_start = {"vision_0": moe.expert_usage[1].clone()}
    moe.expert_usage[1] += torch.tensor([1.0, 7.0, 0.0, 9.0, 2.0])  # this task's routing
    assert plugin.activate_freeze() == {"vision_0": [1, 3]}
    assert moe.expert_frozen.tolist() == [False, True, False, True, False]
    assert [p.requires_grad for e in moe.experts for p in e.parameters()][::4] == [True, False, True, False, True]
    # the frozen set is saved with the model and re-applied after loading
    other = MixtureOfAdapters(dim=8, num_experts=5, top_k=2, bottleneck=4, num_routers=2)
    other.load_state_dict(moe.state_dict())
    other.sync_frozen()
    assert not any(p.requires_grad for p in other.experts[1].parameters())


# ---------------------------------------------------------------------------
# DDAS
# ---------------------------------------------------------------------------
def _cluster(center, n, g):
    return DDAS.features(center + 0.3 * torch.randn(n, center.shape[0], generator=g))


@pytest.mark.parametrize("granularity,threshold", [("batch", None), ("sample", 0.0655)])
def test_ddas_sends_known_tasks_to_their_router_and_far_inputs_to_zero_shot(granularity, threshold):
    g = torch.Generator().manual_seed(0)
    dim = 32
    centers = [torch.randn(dim, generator=g) * 2 for _ in range(3)]
    ddas = DDAS(dim=dim, num_tasks=3, code_dims=8, threshold=threshold, granularity=granularity)
    plugin = MoEAdaptersPlugin(num_tasks=3, ddas_quantile=0.99)
    for t in range(2):  # tasks 0 and 1 learned; task 2 never seen
        plugin.ddas = ddas
        plugin._fit(t, _cluster(centers[t], 128, g), iterations=200, salt=t)
    for t in range(2):
        routes = ddas.select(_cluster(centers[t], 16, g))
        assert (routes == t).float().mean() >= 0.9, (t, routes)
    far = DDAS.features(-4.0 * F.normalize(centers[0] + centers[1], dim=0).expand(16, dim) * dim**0.5
                        + torch.randn(16, dim, generator=g))
    assert (ddas.select(far) == ZERO_SHOT).all()
    if threshold is None:  # calibrated thresholds also reject a nearby unseen distribution
        unseen = ddas.select(_cluster(centers[2], 16, g))
        assert (unseen == ZERO_SHOT).float().mean() >= 0.9
    # the reference autoencoder: inputs like the reference data go to zero-shot
    plugin._fit(ddas.reference_index, _cluster(centers[2], 128, g), iterations=200, salt=99)
    assert (ddas.select(_cluster(centers[2], 16, g)) == ZERO_SHOT).all()
    assert (ddas.select(_cluster(centers[0], 16, g)) == 0).float().mean() >= 0.9


def test_autoencoder_recipe_decays_the_learning_rate_every_ten_epochs():
    ae = DDASAutoencoder(dim=4, code_dims=2)
    feats = torch.rand(8, 4)
    seen = []
    orig = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        _train_autoencoder(ae, feats, iterations=50, batch_size=4, lr=0.01, lr_decay_epochs=10,
                           weight_decay=1e-4, generator=torch.Generator().manual_seed(0))
    finally:
        torch.optim.Adam.step = orig
    # 2 batches per epoch: epochs 0-9 = iterations 0-19 at 0.01, then 0.001, then 1e-4
    assert seen[0] == 0.01 and seen[19] == 0.01 and abs(seen[20] - 0.001) < 1e-12 and abs(seen[40] - 1e-4) < 1e-12


def test_ddas_routes_evaluation_and_zero_shot_path_is_the_untouched_model(setup):
    bundle, _ = setup
    strategy, model = _strategy(bundle, "tiny-openclip", ddas=True, ddas_threshold=0.0, ddas_iterations=5,
                                ddas_reference_iterations=0, ddas_batch_size=8)
    plugin = strategy.moe_plugin
    strategy.train(bundle.scenario.train_stream[0])
    test = bundle.scenario.test_stream[0]
    # threshold 0: every input is "too far" -> zero-shot, i.e. the pretrained model's logits
    strategy.eval(test)
    assert plugin.route_fractions() == {ZERO_SHOT: 1.0}
    x = next(iter(torch.utils.data.DataLoader(test.dataset, batch_size=6, collate_fn=test.dataset.collate_fn)))
    bb = find_backbone(model)
    with torch.no_grad(), bb.attachments_disabled():
        zero_shot = model(x[0], x[2])
    strategy.model.eval()
    strategy.mbatch, strategy.experience = list(x), test
    strategy.moe_plugin.before_eval_forward(strategy)
    with torch.no_grad():
        out = strategy.forward()
    strategy.moe_plugin.after_eval_forward(strategy)
    assert torch.allclose(out, zero_shot, atol=1e-5)
    # a huge threshold: the task's own router
    plugin.ddas.threshold = 1e9
    strategy.eval(test)
    assert plugin.route_fractions() == {0: 1.0}


# ---------------------------------------------------------------------------
# registration and check
# ---------------------------------------------------------------------------
def _problems(kind="clip", benchmark=None, **params):
    spec = METHODS["moe-adapters"]
    full = {k: o.default for k, o in spec.params.items()}
    full.update(params)
    ctx = CheckContext(key="studies.s.strategies.moe", kind=kind, model={"backbone": "tiny-openclip"},
                       benchmark=benchmark or {"name": "demo-mtil", "params": {}}, training={}, model_key="studies.s.model")
    return spec.problems(ctx, full)


def test_registration_and_check_messages(setup):
    spec = METHODS["moe-adapters"]
    assert spec.family == "architecture" and spec.model_kinds == ("clip",)
    assert spec.params["num_experts"].minimum == 1 and spec.params["freeze_top"].minimum == 0
    assert spec.params["routers"].choices == ["per_task", "shared"]
    assert "num_tasks" not in spec.params and "reference_images" not in spec.params
    assert _problems() == []
    (msg,) = _problems(kind="fusion")
    assert "moe-adapters" in msg and "clip" in msg and "studies.s.model" in msg
    (msg,) = _problems(top_k=5, num_experts=4)
    assert msg.startswith("studies.s.strategies.moe.top_k") and "tiny-openclip" in msg and "num_experts=4" in msg
    (msg,) = _problems(bottleneck=0)
    assert "bottleneck" in msg and "moe-adapters" in msg and "positive" in msg
    (msg,) = _problems(benchmark={"name": "demo-av", "params": {"modalities": ["audio"]}})
    assert "frozen image features" in msg and "moe-adapters" in msg
    assert _problems(benchmark={"name": "demo-av", "params": {"modalities": ["audio"]}}, ddas=False) == []
    with pytest.raises(ValueError, match="top_k=3 exceeds num_experts=2"):
        MoEAdaptersPlugin(num_experts=2, top_k=3, num_tasks=1)
    with pytest.raises(ValueError, match="num_tasks"):
        MoEAdaptersPlugin(num_experts=2).setup(clip_classifier(build_backbone("tiny-openclip", seed=0), setup[0], {}))


def test_parameter_count_takes_a_counter_and_keeps_it_out_of_its_state():
    from avalanche_mm.metrics import ParameterCount

    metric = ParameterCount(counter=lambda model: (3, 10))
    assert metric._count(type("S", (), {"model": torch.nn.Linear(2, 2)})()) == (3, 10)
    metric.trainable, metric.total = [3, 2], [10, 10]
    state = metric.state_dict()
    assert state == {"trainable": [3, 2], "total": [10, 10]}  # no callable in a checkpoint
    other = ParameterCount()
    other.load_state_dict(state)
    assert other.result()["trainable_cumulative"] == 5.0
    with pytest.raises(TypeError, match="counter"):
        ParameterCount(counter=3)
