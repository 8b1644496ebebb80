"""L2P, DualPrompt, CODA-Prompt, S-liPrompts and AttriCLIP on a tiny frozen CLIP."""

import copy

import pytest
import torch
import torch.nn.functional as F
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.strategies import L2P, AttriCLIP, CODAPrompt, DualPrompt, SLiPrompts
from avalanche_mm.strategies.attriclip import key_matching_loss, prompt_orthogonality_loss
from avalanche_mm.strategies.s_liprompts import centroid_distances, kmeans, select_domain

METHODS = {
    "l2p": (L2P, {"pool_size": 4, "prompt_length": 2, "top_k": 2}),
    "dualprompt": (DualPrompt, {"n_tasks": 2, "g_layers": [0], "e_layers": [1]}),
    "coda-prompt": (CODAPrompt, {"n_tasks": 2, "pool_size": 4, "prompt_length": 2, "layers": [0, 1]}),
    "s-liprompts": (SLiPrompts, {"n_domains": 2, "prompt_length": 2, "n_ctx": 4, "n_clusters": 2}),
    "attriclip": (AttriCLIP, {"bank_size": 4, "prompt_length": 2, "top_k": 2}),
}


class Collector:
    """A logger keeping the last value of every metric."""

    def __init__(self):
        self.values = {}

    def log_metrics(self, values):
        for mv in values:
            self.values[mv.name] = mv.value

    def __getattr__(self, name):  # every other logger callback is a no-op
        if name.startswith(("before_", "after_")):
            return lambda *a, **k: None
        raise AttributeError(name)


@pytest.fixture(scope="module")
def world():
    from avalanche_mm.experiments.registry import build_benchmark, clip_classifier
    from avalanche_mm.models import build_backbone

    bundle = build_benchmark(
        {"name": "world-domain-incremental",
         "params": {"num_classes": 3, "num_domains": 2, "train_per_class": 4, "test_per_class": 2,
                    "modalities": ["image", "text"]}}, seed=0)
    model = clip_classifier(build_backbone("tiny-openclip", seed=0), bundle, {"freeze": ["logit_scale"]})
    return bundle, model


def _strategy(world, name, **over):
    bundle, model = world
    cls, kw = METHODS[name]
    model = copy.deepcopy(model)
    collector = Collector()
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[collector])
    kw = dict(kw, **over)
    s = cls(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=4, eval_mb_size=8,
            iterations=2, evaluator=evaluator, **kw)
    s.collector = collector
    return s


@pytest.mark.parametrize("name", sorted(METHODS))
def test_backbone_stays_bit_identical_and_only_prompts_train(world, name):
    bundle, _ = world
    s = _strategy(world, name)
    backbone = s.prompt_plugin.backbone
    base = {n: p.detach().clone() for n, p in backbone.named_base_parameters()}
    prompts = {n: p.detach().clone() for n, p in backbone.attachments.named_parameters()}
    trained = {}
    for k, exp in enumerate(bundle.scenario.train_stream):
        before = {n: p.detach().clone() for n, p in backbone.attachments.named_parameters()}
        s.train(exp)
        trained[k] = {n for n, p in backbone.attachments.named_parameters() if not torch.equal(before[n], p)}
    s.eval(bundle.scenario.test_stream)
    assert all(torch.equal(base[n], p) for n, p in backbone.named_base_parameters()), "the frozen CLIP changed"
    assert trained[0] and trained[1], "the prompts did not train"
    assert any(not torch.equal(prompts[n], p) for n, p in backbone.attachments.named_parameters())
    if name == "s-liprompts":  # each domain trains only its own pair
        assert trained[0] == {"slip_bank.image_prompts.0", "slip_bank.text_contexts.0"}
        assert trained[1] == {"slip_bank.image_prompts.1", "slip_bank.text_contexts.1"}
        assert s.collector.values["DomainSelectionAcc_Stream/eval_phase/test_stream"] >= 0.0
    if name == "dualprompt":
        assert "dualprompt_pool.prompts.0" in trained[0] and "dualprompt_pool.prompts.1" not in trained[0]
        assert "dualprompt_pool.prompts.0" not in trained[1] and "dualprompt_pool.g_prompt" in trained[1]
    if name == "coda-prompt":
        assert not any(n.endswith(".0") for n in trained[1])  # the first task's components froze


def test_l2p_selects_the_prompts_of_the_most_similar_keys(world):
    s = _strategy(world, "l2p")
    plugin = s.prompt_plugin
    images = next(iter(torch.utils.data.DataLoader(world[0].scenario.test_stream[0].dataset, batch_size=4,
                                                    collate_fn=world[0].scenario.test_stream[0].dataset.collate_fn)))[0]
    q = plugin.query(type("S", (), {"mb_x": images})())
    with torch.no_grad():  # keys 3 and 1 are (nearly) the queries of images 0 and 1
        plugin.pool.keys[3].copy_(q[0])
        plugin.pool.keys[1].copy_(q[1] + 1e-3)
    plugin.prepare(None, q, training=False)
    assert plugin.last_selection[0, 0] == 3 and plugin.last_selection[1, 0] == 1
    expect = plugin.pool.similarity(q).topk(2, dim=1).indices
    assert torch.equal(plugin.last_selection, expect)
    # the prepended tokens are those prompts, in that order
    prepend = plugin.injector._prepend
    assert torch.equal(prepend[0, :2], plugin.pool.prompts[3][0]) and torch.equal(prepend[1, :2], plugin.pool.prompts[1][0])
    plugin.clear()


def test_dualprompt_uses_task_prompt_in_training_and_nearest_trained_key_at_test(world):
    s = _strategy(world, "dualprompt")
    plugin = s.prompt_plugin
    q = F.normalize(torch.randn(6, plugin.pool.keys[0].shape[0]), dim=-1)
    plugin.pool.current_task.fill_(1)
    with torch.no_grad():
        plugin.pool.keys[0].copy_(q[0])
        plugin.pool.keys[1].copy_(q[1])
    plugin.prepare(None, q, training=True)
    assert (plugin.last_selection == 1).all()
    plugin.prepare(None, q[:2], training=False)
    assert plugin.last_selection.tolist() == [0, 1]
    plugin.pool.current_task.fill_(0)  # only task 0 learned: its key is the only candidate
    plugin.prepare(None, q[:2], training=False)
    assert plugin.last_selection.tolist() == [0, 0]
    plugin.clear()


def test_kmeans_and_nearest_centroid_selection():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    x = torch.cat([c + 0.1 * torch.randn(30, 2) for c in centres])
    found = kmeans(x, 3, seed=0)
    assert torch.cdist(found, centres).min(dim=1).values.max() < 0.1
    with pytest.raises(ValueError, match="k must be in 1..90"):
        kmeans(x, 91)
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x, 0)
    # domain 0 has centroids near the origin, domain 1 far away
    cents = torch.stack([torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[10.0, 10.0], [3.0, 0.0]])])
    q = torch.tensor([[0.2, 0.1], [2.9, 0.2], [9.0, 9.0]])
    assert select_domain(q, cents).tolist() == [0, 1, 1]
    d = centroid_distances(q, cents, "l2")
    hand = torch.tensor([[min((q[b] - c).norm() for c in cents[k]) for k in range(2)] for b in range(3)])
    assert torch.allclose(d, hand)
    # L1 (released code) and L2 can disagree: the distance option matters
    cents2 = torch.tensor([[[1.0, 1.0]], [[1.45, 0.0]]])
    p = torch.tensor([[0.0, 0.0]])
    assert select_domain(p, cents2, "l1").item() == 1 and select_domain(p, cents2, "l2").item() == 0


def test_s_liprompts_plugin_picks_the_nearest_centroid_and_that_domains_prompts(world):
    s = _strategy(world, "s-liprompts")
    plugin = s.prompt_plugin
    e = plugin.bank.centroids.shape[-1]
    q = F.normalize(torch.randn(4, e), dim=-1)
    with torch.no_grad():
        plugin.bank.centroids[0] = torch.stack([q[0], q[1]])
        plugin.bank.centroids[1] = torch.stack([q[2], q[3]])
    plugin.bank.learned.fill_(1)
    assert plugin.select(q).tolist() == [0, 0, 0, 0]  # only domain 0 learned yet
    plugin.bank.learned.fill_(2)
    assert plugin.select(q).tolist() == [0, 0, 1, 1]
    # the logits of a row use its domain's image prompt and text context
    images = torch.randn(2, 3, 32, 32)
    scale = s.model.scale()
    for d in range(2):
        ref = scale * plugin.image_features(images, d) @ plugin.text_features(d).t()
        s.model.eval()
        plugin.select = lambda query, d=d: torch.full((query.shape[0],), d, dtype=torch.long)
        fake = type("S", (), {"mb_x": {"image": images}, "model": s.model, "is_training": False})()
        with torch.no_grad():
            assert torch.allclose(plugin.logits(fake), ref, atol=1e-5)


def test_attriclip_loss_functions_match_hand_formulas():
    torch.manual_seed(0)
    f, k = torch.randn(5, 8), torch.randn(5, 3, 8)
    hand = 1 - sum(F.cosine_similarity(f[b], k[b, i], dim=0) for b in range(5) for i in range(3)) / 15
    assert torch.allclose(key_matching_loss(f, k), hand, atol=1e-6)
    t = torch.randn(4, 8)
    pairs = [abs(F.cosine_similarity(t[i], t[j], dim=0)) for i in range(4) for j in range(4) if i != j]
    assert torch.allclose(prompt_orthogonality_loss(t), sum(pairs) / 12, atol=1e-6)


def _attriclip_grads(world, **weights):
    torch.manual_seed(0)  # the same bank for both weightings
    s = _strategy(world, "attriclip", **weights)
    plugin = s.prompt_plugin
    ds = world[0].scenario.train_stream[0].dataset
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=ds.collate_fn)))[:2]
    s.model.train()
    fake = type("S", (), {"mb_x": x, "model": s.model, "is_training": True})()
    logits = plugin.logits(fake)
    loss = F.cross_entropy(logits, y) + (plugin.extra_loss if plugin.extra_loss is not None else 0.0)
    plugin.extra_loss = None
    loss.backward()
    return plugin, x


def test_attriclip_losses_change_gradients_as_their_formulas_say(world):
    base, x = _attriclip_grads(world, matching_weight=0.0, orthogonality_weight=0.0)
    full, _ = _attriclip_grads(world, matching_weight=0.7, orthogonality_weight=0.3)
    assert base.bank.keys.grad is None or base.bank.keys.grad.abs().sum() == 0  # CE: no gradient to keys
    # hand-written reference of the two terms, differentiated by autograd
    keys = full.bank.keys.detach().clone().requires_grad_(True)
    f = F.normalize(full.backbone.encode_image(x["image"]).detach(), dim=-1)
    idx = (f @ keys.detach().t()).topk(2, dim=1).indices
    cos = torch.stack([torch.stack([F.cosine_similarity(f[b], keys[i], dim=0) for i in idx[b]]) for b in range(4)])
    (0.7 * (1 - cos.mean())).backward()
    assert torch.allclose(full.bank.keys.grad, keys.grad, atol=1e-6)
    prompts = full.bank.prompts.detach().clone().requires_grad_(True)
    with full.single.context_override(prompts):
        full.single.enabled = True
        t = full.backbone.encode_text(full._single_ids.repeat(prompts.shape[0], 1))
        full.single.enabled = False
    t = F.normalize(t, dim=-1)
    ortho = sum((t[i] @ t[j]).abs() for i in range(4) for j in range(4) if i != j) / 12
    (0.3 * ortho).backward()
    assert torch.allclose(full.bank.prompts.grad - base.bank.prompts.grad, prompts.grad, atol=1e-6)


def test_prompt_methods_train_under_one_percent_of_vit_b16():
    """Counted on ViT-B/16 shapes: the open_clip model built on the meta device, the
    methods' modules at ViT-B/16 sizes (vision width 768, text width 512, embedding 512)."""
    import open_clip

    from avalanche_mm.models.attach.prompt_pool import CodaPromptPool, PromptPool
    from avalanche_mm.strategies.attriclip import AttributeBank
    from avalanche_mm.strategies.s_liprompts import SLiPromptBank

    with torch.device("meta"):  # shapes only, no memory, no weights
        clip = open_clip.CLIP(**open_clip.get_model_config("ViT-B-16"))
    total = sum(p.numel() for p in clip.parameters())
    assert 149e6 < total < 151e6
    from avalanche_mm.strategies._prompting import vit_b16_prompt_parameters

    table = vit_b16_prompt_parameters()
    assert set(table) == {"l2p", "dualprompt", "coda-prompt", "s-liprompts", "attriclip"}
    for name, row in table.items():
        assert row["backbone"] == total
        assert row["trainable_per_task"] / total < 0.01, (name, row)
    # stored in total (all tasks): under 1% except CODA's 100-component pool (about 2.4%)
    assert table["coda-prompt"]["stored"] / total > 0.01
    assert all(r["stored"] / total < 0.01 for k, r in table.items() if k != "coda-prompt")
