"""AV-CIL: the network's attention and every loss term against hand-written references of the
released code, each term's effect on the gradient, where it must be zero, and the exemplar memory."""

import pytest
import torch
import torch.nn.functional as F

from avalanche_mm.models.fusion.avcil import AVCILNet, avcil_feature_problem
from avalanche_mm.strategies.av_cil import (
    AVCILPlugin,
    attention_distillation,
    class_contrastive,
    instance_contrastive,
    split_cross_entropy,
    task_distillation,
)


def _net(seed=0, C=6, Da=5, Dv=4, T=3):
    torch.manual_seed(seed)
    return AVCILNet(num_classes=C, audio_dim=Da, visual_dim=Dv, hidden_dim=7, frames=T)


def _x(B=6, Da=5, Dv=4, T=3, S=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(B, Da, generator=g), "video": torch.randn(B, T, S, Dv, generator=g)}


# ---------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------
def test_attention_and_pooling_match_the_released_model():
    net, x = _net(), _x()
    logits = net(x)
    a, v = x["audio"], x["video"]
    pa = torch.tanh(net.attn_audio_proj(a))
    pv = torch.tanh(net.attn_visual_proj(v))
    s = torch.softmax(torch.einsum("ijkd,id->ijkd", pv, pa), dim=2)
    t = torch.softmax(torch.einsum("ijd,id->ijd", (s * pv).sum(2), pa), dim=1)
    pooled = (t * (s * v).sum(2)).sum(1)
    ha = F.relu(net.encoders["audio"].proj(a))
    hv = F.relu(net.encoders["video"].proj(pooled))
    assert torch.allclose(net.last_spatial_attention, s, atol=1e-6)
    assert torch.allclose(net.last_temporal_attention, t, atol=1e-6)
    assert torch.allclose(logits, net.classifier(ha + hv), atol=1e-5)
    uni = net.last_unimodal_logits
    assert torch.allclose(uni["audio"] + uni["video"], logits, atol=1e-5)
    # [B, T*S, D] tokens are reshaped with frames
    assert torch.allclose(net({"audio": a, "video": v.reshape(6, 6, 4)}), logits, atol=1e-6)


def test_incremental_head_masks_unseen_classes():
    net, x = _net(), _x()
    net.set_active_classes([0, 2])
    out = net(x)
    assert (out[:, [1, 3, 4, 5]] == -1e4).all() and (out[:, [0, 2]] > -1e3).all()
    out.sum().backward()  # masked logits pass no gradient to their rows
    assert net.classifier.weight.grad[[1, 3, 4, 5]].abs().sum() == 0


def test_feature_shape_problem():
    assert avcil_feature_problem([768], [8, 196, 768]) is None
    assert "pre-extracted" in avcil_feature_problem([33, 33], [3, 16, 16])
    assert "pre-extracted" in avcil_feature_problem([129, 100], [3, 4, 32, 32])


# ---------------------------------------------------------------------------
# the loss terms vs the released code (written out)
# ---------------------------------------------------------------------------
def _code_ce(num_classes, logits, label):
    targets = F.one_hot(label, num_classes=num_classes)
    return -torch.mean(torch.sum(F.log_softmax(logits, dim=-1) * targets, dim=1))


def test_split_cross_entropy_equals_the_code():
    torch.manual_seed(0)
    z = torch.randn(10, 6, requires_grad=True)
    y = torch.tensor([3, 4, 5, 3, 4, 5, 0, 1, 2, 1])  # 6 current (classes 3..5), 4 exemplars (0..2)
    got = split_cross_entropy(z, y, 6, [3, 4, 5], [0, 1, 2])
    cur = _code_ce(3, z[:6, 3:], y[:6] % 3)
    prev = _code_ce(3, z[6:, :3], y[6:])
    ref = (cur * 6 + prev * 4) / 10
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    g1 = torch.autograd.grad(got, z)[0]
    g2 = torch.autograd.grad(ref, z)[0]
    assert torch.allclose(g1, g2, atol=1e-7)
    assert g1[:6, :3].abs().sum() == 0 and g1[6:, 3:].abs().sum() == 0  # each part sees only its classes


def test_split_cross_entropy_leaves_the_new_classes_logit_level_untrained():
    """Why the code's split CE under-predicts the newest classes (docs/strategies.md): it is
    invariant to a common shift of the new classes' logits (so it never trains their level
    against the old classes'), and its gradient sums to zero over the new columns; the joint CE
    is not invariant and pushes the new classes' logits on exemplar rows down."""
    torch.manual_seed(0)
    z = torch.randn(10, 6, requires_grad=True)
    y = torch.tensor([3, 4, 5, 3, 4, 5, 0, 1, 2, 1])
    shift = torch.zeros(6)
    shift[3:] = 5.0
    split = split_cross_entropy(z, y, 6, [3, 4, 5], [0, 1, 2])
    assert split_cross_entropy(z + shift, y, 6, [3, 4, 5], [0, 1, 2]).item() == pytest.approx(split.item(), rel=1e-6)
    g = torch.autograd.grad(split, z)[0]
    assert torch.allclose(g[:, 3:].sum(1), torch.zeros(10), atol=1e-6)  # no net push on the new group
    joint = F.cross_entropy(z, y)
    assert abs(F.cross_entropy(z + shift, y).item() - joint.item()) > 1.0
    gj = torch.autograd.grad(joint, z)[0]
    assert (gj[6:, 3:].sum(1) > 0).all()  # exemplar rows lower the new classes' logits


def test_task_distillation_equals_the_code_and_is_zero_without_old_tasks():
    torch.manual_seed(0)
    z, zo = torch.randn(8, 6, requires_grad=True), torch.randn(8, 6)
    T = 2.0
    ref = 0
    for start, end in ((0, 2), (2, 4)):
        ref = ref + F.kl_div(F.log_softmax(z[:, start:end] / T, 1), F.softmax(zo[:, start:end] / T, 1), reduction="batchmean") * T**2
    got = task_distillation(z, zo, [[0, 1], [2, 3]], T)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(torch.autograd.grad(got, z)[0], torch.autograd.grad(ref, z)[0], atol=1e-7)
    assert task_distillation(z, zo, [], T).item() == 0.0
    assert task_distillation(zo, zo, [[0, 1]], T).item() == pytest.approx(0.0, abs=1e-7)


def test_contrastive_terms_equal_the_code():
    torch.manual_seed(0)
    a, v = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5, requires_grad=True)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2])
    an, vn = F.normalize(a), F.normalize(v)
    score = an @ vn.t() / 0.05
    ref_i = _code_ce(8, score, torch.arange(8))
    got_i = instance_contrastive(a, v, 0.05)
    assert got_i.item() == pytest.approx(ref_i.item(), rel=1e-6)
    cm = (y.unsqueeze(0).repeat(8, 1) == y.unsqueeze(-1)).float()
    ref_c = -torch.mean(torch.mean(F.log_softmax(score, dim=-1) * cm, dim=-1))
    got_c = class_contrastive(a, v, y, 0.05, "code")
    assert got_c.item() == pytest.approx(ref_c.item(), rel=1e-6)
    ref_p = -torch.mean((torch.sum(F.log_softmax(score, -1) * cm, -1) + 1e-6) / (torch.sum(cm, -1) + 1e-6))
    assert class_contrastive(a, v, y, 0.05, "paper").item() == pytest.approx(ref_p.item(), rel=1e-6)
    for got, ref in ((got_i, ref_i), (got_c, ref_c)):
        ga = torch.autograd.grad(got, (a, v), retain_graph=True)
        gr = torch.autograd.grad(ref, (a, v), retain_graph=True)
        assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(ga, gr)) and ga[0].abs().sum() > 0


def test_attention_distillation_equals_the_code_and_vanishes_for_identical_maps():
    torch.manual_seed(0)
    n, T, S, D = 3, 4, 5, 6
    s = torch.softmax(torch.randn(n, T, S, D, requires_grad=True), 2)
    so = torch.softmax(torch.randn(n, T, S, D), 2)
    t = torch.softmax(torch.randn(n, T, D, requires_grad=True), 1)
    to = torch.softmax(torch.randn(n, T, D), 1)
    es, eso = s.transpose(2, 3).reshape(-1, S), so.transpose(2, 3).reshape(-1, S)
    et, eto = t.transpose(1, 2).reshape(-1, T), to.transpose(1, 2).reshape(-1, T)
    ref = 0.5 * F.kl_div(es.log(), eso, reduction="sum") / n + 0.5 * F.kl_div(et.log(), eto, reduction="sum") / n
    assert attention_distillation(s, so, t, to, 0.5).item() == pytest.approx(ref.item(), rel=1e-6)
    assert attention_distillation(s, s.detach(), t, t.detach()).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_distillation(s[:0], so[:0], t[:0], to[:0]).item() == 0.0


# ---------------------------------------------------------------------------
# the plugin: what it adds, when, and that every term moves the gradient
# ---------------------------------------------------------------------------
class _Exp:
    def __init__(self, classes):
        self.classes_in_this_experience = classes


class _S:
    def __init__(self, model, exp):
        self.model, self.experience = model, exp


def _step(plugin, net, x, y, n_current):
    """What the template does for one minibatch: forward, criterion, the plugin's terms."""
    plugin.training = True
    plugin.replay.n_current = n_current
    s = _S(net, None)
    s.mb_x, s.mb_y = x, y
    s.mb_output = net(x)
    s.loss = plugin.criterion()(s.mb_output, y)
    base = s.loss
    plugin.before_backward(s)
    return s.loss, base


def test_plugin_terms_zero_on_first_task_then_all_present():
    net, x = _net(), _x()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    plugin = AVCILPlugin(mem_size=10, mem_batch_size=2)
    s = _S(net, _Exp([0, 1, 2]))
    plugin.before_training_exp(s)
    loss, base = _step(plugin, net, x, y, 6)
    assert loss is base and not plugin.last_terms  # first task: CE only (the code)
    plugin.after_training_exp(s)
    assert plugin.old_model is not None and plugin.old_tasks == [[0, 1, 2]]
    with torch.no_grad():  # the student moves away from the teacher
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    plugin.before_training_exp(_S(net, _Exp([3, 4, 5])))
    y2 = torch.tensor([3, 4, 5, 3, 0, 1])  # 4 current rows, 2 exemplars
    loss, base = _step(plugin, net, x, y2, 4)
    terms = plugin.last_terms
    assert set(terms) == {"kd", "attention", "instance", "class_aware"} and all(v > 0 for v in terms.values())
    expected = terms["kd"] + 0.5 * terms["instance"] + 1.0 * terms["class_aware"] + terms["attention"]
    assert (loss - base).item() == pytest.approx(expected, rel=1e-5)
    ref_ce = split_cross_entropy(net(x), y2, 4, [3, 4, 5], [0, 1, 2])
    assert base.item() == pytest.approx(ref_ce.item(), rel=1e-5)


def _second_step(**kw):
    """``(plugin, net, loss, base)`` of one step of a second task (classes 3-5, 4 current rows
    and 2 exemplars) after the student moved away from the first task's teacher."""
    net, x = _net(), _x()
    plugin = AVCILPlugin(mem_size=10, mem_batch_size=2, **kw)
    plugin.before_training_exp(_S(net, _Exp([0, 1, 2])))
    plugin.after_training_exp(_S(net, None))
    torch.manual_seed(5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn_like(p))
    plugin.before_training_exp(_S(net, _Exp([3, 4, 5])))
    loss, base = _step(plugin, net, x, torch.tensor([3, 4, 5, 3, 0, 1]), 4)
    return plugin, net, loss, base


@pytest.mark.parametrize("off", ["kd", "instance", "class_aware", "attention"])
def test_each_term_changes_the_gradient(off):
    def grads(**kw):
        _, net, loss, _ = _second_step(**kw)
        net.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])

    full = grads()
    if off == "instance":
        other = grads(lambda_i=0.0)
    elif off == "class_aware":
        other = grads(lambda_c=0.0)
    elif off == "attention":
        # lam = 1 keeps only the spatial part: a different gradient unless the temporal term is inert
        other = grads(lam=1.0)
    else:
        other = grads(temperature=4.0)
    assert (full - other).abs().max() > 1e-5


def test_kd_and_attention_weights_scale_their_terms_and_zero_removes_them():
    """The ablation weights: the added loss is ``kd_weight * kd + ... + attention_weight * ad``."""

    def added(**kw):
        plugin, _, loss, base = _second_step(**kw)
        return (loss - base).item(), dict(plugin.last_terms)

    full, t = added()
    assert t["kd"] > 0 and t["attention"] > 0
    ctr = 0.5 * t["instance"] + t["class_aware"]
    assert full == pytest.approx(t["kd"] + ctr + t["attention"], rel=1e-5)
    assert added(kd_weight=0.0)[0] == pytest.approx(ctr + t["attention"], rel=1e-5)
    assert added(attention_weight=0.0)[0] == pytest.approx(t["kd"] + ctr, rel=1e-5)
    assert added(kd_weight=2.0, attention_weight=3.0)[0] == pytest.approx(2 * t["kd"] + ctr + 3 * t["attention"], rel=1e-5)
    assert added(kd_weight=0.0, attention_weight=0.0, lambda_i=0.0, lambda_c=0.0)[0] == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="kd_weight"):
        AVCILPlugin(kd_weight=-1.0)


def test_exemplar_memory_is_class_balanced_and_replayed(tmp_path):
    """End to end on a tiny world stream: the memory holds mem // seen classes per class,
    exemplar rows are appended to the minibatch, the old model is frozen."""
    from avalanche_mm.experiments.registry import demo_av
    from avalanche_mm.models.fusion import build_avcil_model
    from avalanche_mm.data import get_modality_specs
    from avalanche_mm.strategies import AVCIL

    bundle = demo_av(world={"seed": 1, "image_size": 8}, num_classes=4, num_experiences=2, train_per_class=6, test_per_class=2)
    specs = get_modality_specs(bundle.scenario.train_stream[0].dataset)
    torch.manual_seed(0)
    net = build_avcil_model(specs, 4, {"inputs": "raw", "token_dim": 8, "audio_dim": 8, "conv_channels": [4]})
    from avalanche.core import SupervisedPlugin

    rows = []

    class Capture(SupervisedPlugin):
        def before_backward(self, strategy, **kw):
            rows.append((strategy.mb_y.shape[0], strat.avcil_plugin.replay.n_current))

    strat = AVCIL(model=net, optimizer=torch.optim.Adam(net.parameters(), lr=1e-3), mem_size=6, mem_batch_size=3,
                  train_mb_size=4, train_epochs=1, eval_mb_size=16, evaluator=None, plugins=[Capture()])
    strat.train(bundle.scenario.train_stream[0])
    mem = strat.avcil_plugin.replay.samples
    counts = {}
    for _, y, _ in mem:
        counts[int(y)] = counts.get(int(y), 0) + 1
    assert sorted(counts.values()) == [3, 3]  # 6 // 2 seen classes
    strat.train(bundle.scenario.train_stream[1])
    counts = {}
    for _, y, _ in strat.avcil_plugin.replay.samples:
        counts[int(y)] = counts.get(int(y), 0) + 1
    assert len(counts) == 4 and max(counts.values()) - min(counts.values()) <= 1 and sum(counts.values()) <= 6
    assert all(b == n for b, n in rows[:3]) and rows[-1][0] == rows[-1][1] + 3  # exemplars from the 2nd experience
    assert all(not p.requires_grad for p in strat.avcil_plugin.old_model.parameters())


# ---------------------------------------------------------------------------
# the growing classifier: fresh rows for a step's new classes (the code's incremental_classifier)
# ---------------------------------------------------------------------------
def test_arriving_classes_get_fresh_rows_and_others_stay():
    net = _net()
    with torch.no_grad():  # what weight decay does to a masked row over a few steps
        net.classifier.weight.zero_()
        net.classifier.bias.zero_()
    torch.manual_seed(3)
    net.reset_classes([3, 4])
    w = net.classifier.weight
    bound = 1 / 7 ** 0.5  # nn.Linear's default initialisation, fan-in 7
    assert (w[[3, 4]] != 0).all() and (w[[3, 4]].abs() <= bound).all()
    assert (w[[0, 1, 2, 5]] == 0).all() and (net.classifier.bias[[0, 1, 2, 5]] == 0).all()
    with pytest.raises(ValueError, match="outside 0..5"):
        net.reset_classes([6])


def test_avcil_plugin_resets_only_classes_of_later_steps():
    net = _net()
    plugin = AVCILPlugin(mem_size=10, mem_batch_size=2)
    first = net.classifier.weight.detach().clone()
    plugin.before_training_exp(_S(net, _Exp([0, 1, 2])))
    assert torch.equal(net.classifier.weight, first)  # step 0: the freshly built model
    plugin.after_training_exp(_S(net, _Exp([0, 1, 2])))
    with torch.no_grad():
        net.classifier.weight[3:].zero_()
    plugin.before_training_exp(_S(net, _Exp([3, 4, 5])))
    assert (net.classifier.weight[3:] != 0).all() and torch.equal(net.classifier.weight[:3], first[:3])
    assert net.active.tolist() == [True] * 6


def test_incremental_head_plugin_for_other_strategies():
    from avalanche_mm.models.fusion import ConvEncoder, FusionModel
    from avalanche_mm.strategies.av_cil import AVCIL, IncrementalHeadPlugin

    net = _net()
    head, other = IncrementalHeadPlugin(), IncrementalHeadPlugin()
    s = _S(net, _Exp([0, 1]))
    s.plugins = [head, other]
    head.before_training_exp(s)
    other.before_training_exp(s)  # only the first such plugin of a strategy acts
    assert net.active.tolist() == [True, True, False, False, False, False] and other.seen_classes == []
    with torch.no_grad():
        net.classifier.weight.zero_()
    s.experience = _Exp([2, 3])
    head.before_training_exp(s)
    assert (net.classifier.weight[[2, 3]] != 0).all() and (net.classifier.weight[[0, 1, 4, 5]] == 0).all()
    net.set_active_classes(None)
    head.before_eval_exp(s)
    assert net.active.tolist() == [True] * 4 + [False] * 2
    # a model without the incremental head: nothing happens
    fm = FusionModel(encoders={"image": ConvEncoder(in_channels=3, out_dim=4, channels=(4,))}, num_classes=3)
    f = _S(fm, _Exp([0]))
    f.plugins = [head]
    IncrementalHeadPlugin().before_training_exp(f)
    # AV-CIL's own plugin grows the head: a run's incremental-head plugin then stands aside
    strategy = AVCIL(model=_net(), optimizer=torch.optim.SGD(_net().parameters(), lr=0.1), mem_size=4, train_mb_size=4)
    heads = [p for p in strategy.plugins if isinstance(p, IncrementalHeadPlugin)]
    assert heads == [strategy.avcil_plugin.head]
    late = IncrementalHeadPlugin()
    strategy.plugins.append(late)
    assert strategy.avcil_plugin.head._acts(strategy) and not late._acts(strategy)


# ---------------------------------------------------------------------------
# the released code's model selection (best validation epoch)
# ---------------------------------------------------------------------------
class _ValidExp:
    def __init__(self, dataset):
        self.dataset = dataset


def test_best_valid_epoch_restores_the_best_epoch_and_the_old_model_is_it():
    from avalanche_mm.strategies.av_cil import BestValidEpochPlugin

    net = _net(C=2)
    x = _x(B=4)
    y = torch.tensor([0, 1, 0, 1])

    class _DictData(torch.utils.data.Dataset):  # the network reads {"audio", "video"} batches
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"audio": x["audio"][i], "video": x["video"][i]}, y[i]

    bv = BestValidEpochPlugin([_ValidExp(_DictData())], eval_batch_size=3)
    s = _S(net, _Exp([0, 1]))
    s.experience.current_experience, s.device = 0, "cpu"
    bv.before_training_exp(s)
    states, accs = [], []
    for seed in range(6):  # six "epochs": random heads, each validated
        torch.manual_seed(seed)
        net.classifier.reset_parameters()
        bv.after_training_epoch(s)
        states.append({k: v.clone() for k, v in net.state_dict().items()})
        accs.append(bv.history[-1])
    best = max(range(6), key=lambda i: (accs[i], -i))  # the first epoch reaching the best accuracy
    assert bv.best_acc == accs[best] and len(set(accs)) > 1
    expected = (net(x).argmax(1) == y).float().mean().item()
    assert expected == accs[-1]  # the validation accuracy is the model's top-1
    plugin = AVCILPlugin(mem_size=4, mem_batch_size=2)
    s.plugins = [plugin, bv]  # AV-CIL's old model must be the kept epoch, whatever the plugin order
    plugin.after_training_exp(s)
    for k, v in states[best].items():
        assert torch.equal(net.state_dict()[k], v) and torch.equal(plugin.old_model.state_dict()[k], v)
    with pytest.raises(ValueError, match="no 'valid' stream"):
        BestValidEpochPlugin(None)
