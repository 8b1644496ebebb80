"""ZSCL: each mechanism acts (distillation, L2 to the task start, weight ensemble)."""

import copy
from types import SimpleNamespace

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.strategies import ZSCL, FineTune, ZSCLPlugin
from avalanche_mm.strategies.finetune import distillation_loss, find_backbone


class Recorder(SupervisedPlugin):
    """Records gradients after backward and weights after each step."""

    def __init__(self):
        super().__init__()
        self.grads, self.weights = [], []

    def after_backward(self, strategy, **kw):
        self.grads.append({n: p.grad.detach().clone() for n, p in strategy.model.named_parameters() if p.grad is not None})

    def after_training_iteration(self, strategy, **kw):
        self.weights.append({n: p.detach().clone() for n, p in strategy.model.named_parameters() if p.requires_grad})


def _zscl(bundle, model, rec, **kw):
    ref = bundle.reference
    args = dict(image_weight=1.0, text_weight=1.0, l2_weight=0.0, we_every=0, ref_batch_size=8)
    args.update(kw)
    wd = args.pop("weight_decay", 0.01)  # AdamW's default
    return ZSCL(
        model=model,
        optimizer=torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=wd),
        reference_images=ref.images,
        reference_texts=ref.texts,
        iterations=args.pop("iterations", 2),
        train_mb_size=8,
        plugins=[rec],
        evaluator=EvaluationPlugin(),
        **args,
    )


def _grad_diff(a, b):
    return max(float((a[n] - b[n]).abs().max()) for n in a)


def _spy_losses(strat):
    """Record (total loss, ZSCL's loss parts) at every ``before_backward`` of ``strat``."""
    seen = []
    orig = strat.zscl_plugin.before_backward

    def spy(strategy, **k):
        orig(strategy, **k)
        seen.append((float(strategy.loss.detach()), dict(strategy.zscl_plugin.last_losses)))

    strat.zscl_plugin.before_backward = spy
    return seen

def test_kd_is_zero_gradient_for_identical_logits_and_scales_with_t_squared():
    t = torch.randn(4, 5)
    s = t.clone().requires_grad_(True)
    distillation_loss(t, s, 2.0).backward()
    assert float(s.grad.abs().max()) < 1e-6
    s2 = (t + torch.randn(4, 5)).requires_grad_(True)
    loss = distillation_loss(t, s2, 2.0)
    manual = -(torch.softmax(t / 2, 1) * torch.log_softmax(s2 / 2, 1)).sum(1).mean() * 4
    assert torch.allclose(loss, manual)


def test_distillation_weight_changes_the_gradients(setup):
    bundle, model = setup
    exp = bundle.scenario.train_stream[0]
    grads = {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        rec = Recorder()
        strat = _zscl(bundle, copy.deepcopy(model), rec, image_weight=w, text_weight=w, iterations=2)
        strat.train(exp)
        grads[w] = rec.grads
    # step 0: student == teacher, the KD gradient vanishes; step 1: it acts
    assert _grad_diff(grads[0.0][0], grads[1.0][0]) < 1e-5
    assert _grad_diff(grads[0.0][1], grads[1.0][1]) > 1e-6


def test_both_directions_and_text_features_route_gradients(setup):
    bundle, model = setup
    m = copy.deepcopy(model)
    bb = find_backbone(m)
    plug = ZSCLPlugin(reference_images=bundle.reference.images, reference_texts=bundle.reference.texts, ref_batch_size=8, text_features="student")
    strat = SimpleNamespace(model=m, device=torch.device("cpu"), experience=SimpleNamespace(current_experience=0))
    plug.before_training_exp(strat)
    with torch.no_grad():  # move the student away from the teacher
        for p in bb.tower_parameters("vision") + bb.tower_parameters("text"):
            p.add_(0.05 * torch.randn_like(p))
    d = plug.distillation(strat)
    assert d["image"] > 0 and d["text"] > 0
    (d["image"] + d["text"]).backward()
    vision = sum(float(p.grad.abs().sum()) for p in bb.tower_parameters("vision") if p.grad is not None)
    text = sum(float(p.grad.abs().sum()) for p in bb.tower_parameters("text") if p.grad is not None)
    assert vision > 0 and text > 0  # student sentence features: both towers learn
    # released-code variant: sentence features from the teacher -> no text-tower gradient
    m.zero_grad()
    plug.text_features = "teacher"
    d = plug.distillation(strat)
    (d["image"] + d["text"]).backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in bb.tower_parameters("text"))
    # the teacher never moves
    assert all(not p.requires_grad for p in plug.teacher.parameters())


def test_l2_penalty_is_distance_to_the_task_start(setup):
    bundle, model = setup
    m = copy.deepcopy(model)
    plug = ZSCLPlugin(reference_images=bundle.reference.images, reference_texts=bundle.reference.texts, l2_weight=1.0)
    strat = SimpleNamespace(model=m, device=torch.device("cpu"), experience=SimpleNamespace(current_experience=0))
    plug.before_training_exp(strat)
    assert float(plug.l2_penalty(m).detach()) == 0.0
    name, p = next((n, p) for n, p in m.named_parameters() if p.requires_grad)
    with torch.no_grad():
        p.add_(0.1)
    pen = plug.l2_penalty(m)
    assert torch.isclose(pen, torch.tensor(0.01 * p.numel()), rtol=1e-4)
    pen.backward()
    assert torch.allclose(p.grad, torch.full_like(p, 0.2), atol=1e-5)


def test_l2_weight_changes_training(setup):
    bundle, model = setup
    exp = bundle.scenario.train_stream[0]
    final = {}
    for w in (0.0, 100.0):
        torch.manual_seed(0)
        rec = Recorder()
        strat = _zscl(bundle, copy.deepcopy(model), rec, image_weight=0.0, text_weight=0.0, l2_weight=w, iterations=3)
        strat.train(exp)
        final[w] = rec.grads[-1]
    assert _grad_diff(final[0.0], final[100.0]) > 1e-6


def test_weight_ensemble_is_the_running_average_of_the_snapshots(setup):
    bundle, model = setup
    torch.manual_seed(0)
    rec = Recorder()
    m = copy.deepcopy(model)
    strat = _zscl(bundle, m, rec, image_weight=0.0, text_weight=0.0, we_every=2, iterations=6, we_mode="periodic")
    strat.train(bundle.scenario.train_stream[0])
    snaps = [rec.weights[i] for i in (1, 3, 5)]  # after iterations 2, 4, 6
    assert strat.zscl_plugin.we_count == 3
    for n, p in m.named_parameters():
        if p.requires_grad:
            expected = sum(s[n] for s in snaps) / 3
            assert torch.allclose(p.detach(), expected, atol=1e-6), n
    # without WE the model keeps its last weights
    rec2 = Recorder()
    m2 = copy.deepcopy(model)
    torch.manual_seed(0)
    strat2 = _zscl(bundle, m2, rec2, image_weight=0.0, text_weight=0.0, we_every=0, iterations=6)
    strat2.train(bundle.scenario.train_stream[0])
    for n, p in m2.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), rec2.weights[-1][n])


def test_teacher_is_the_initial_model_across_tasks_and_survives_a_checkpoint(setup):
    bundle, model = setup
    m = copy.deepcopy(model)
    initial = {k: v.clone() for k, v in find_backbone(m).state_dict().items()}
    strat = _zscl(bundle, m, Recorder(), iterations=2)
    for exp in bundle.scenario.train_stream:
        strat.train(exp)
    teacher = strat.zscl_plugin.teacher.state_dict()
    assert all(torch.equal(teacher[k], initial[k]) for k in initial)
    fresh = ZSCLPlugin(reference_images=bundle.reference.images, reference_texts=bundle.reference.texts)
    fresh.load_state_dict(strat.zscl_plugin.state_dict(), model=copy.deepcopy(model))
    assert all(torch.equal(fresh.teacher.state_dict()[k], initial[k]) for k in initial)


def test_zscl_validates_its_arguments(setup):
    bundle, _ = setup
    ref = bundle.reference
    with pytest.raises(ValueError, match="text_features"):
        ZSCLPlugin(reference_images=ref.images, reference_texts=ref.texts, text_features="both")
    with pytest.raises(ValueError, match="we_every"):
        ZSCLPlugin(reference_images=ref.images, reference_texts=ref.texts, we_every=-1)
    with pytest.raises(ValueError, match="reference_texts is empty"):
        ZSCLPlugin(reference_images=ref.images, reference_texts=[])
    with pytest.raises(TypeError, match="single string"):
        ZSCLPlugin(reference_images=ref.images, reference_texts="a photo")


def test_plain_finetune_and_zscl_without_mechanisms_train_identically(setup):
    bundle, model = setup
    exp = bundle.scenario.train_stream[0]
    torch.manual_seed(0)
    rec_a = Recorder()
    ma = copy.deepcopy(model)
    FineTune(model=ma, optimizer=torch.optim.AdamW([p for p in ma.parameters() if p.requires_grad], lr=1e-3),
             iterations=3, train_mb_size=8, plugins=[rec_a], evaluator=EvaluationPlugin()).train(exp)
    torch.manual_seed(0)
    rec_b = Recorder()
    _zscl(bundle, copy.deepcopy(model), rec_b, image_weight=0.0, text_weight=0.0, l2_weight=0.0, we_every=0, iterations=3).train(exp)
    assert _grad_diff(rec_a.grads[-1], rec_b.grads[-1]) < 1e-6


def _merge_we(model_0, model_1, sma_count):
    """ZSCL's released ``merge_we`` (mtil/src/models/helpers.py), written out on dicts."""
    for k in model_1:
        model_1[k] = (model_1[k] * sma_count + model_0[k]) / (1.0 + sma_count)


@pytest.mark.parametrize("iterations", [6, 5])
def test_weight_ensemble_default_is_the_released_code(setup, iterations):
    """Default WE: we_model = task start, we_n = 0, merge after iteration 0 and every we_every of the
    released loop ``for iteration in range(total + 1)`` (its last step runs at learning rate 0)."""
    bundle, model = setup
    torch.manual_seed(0)
    rec = Recorder()
    m = copy.deepcopy(model)
    start = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    strat = _zscl(bundle, m, rec, image_weight=0.0, text_weight=0.0, we_every=2, iterations=iterations)
    strat.train(bundle.scenario.train_stream[0])
    we_model, we_n = {k: v.clone() for k, v in start.items()}, 0
    for iteration in range(iterations + 1):
        # weights after the released loop's step `iteration`: ours after step iteration, and the
        # extra step at iteration == total has lr 0 (cosine end), so it keeps the last weights
        weights = rec.weights[min(iteration, iterations - 1)]
        if iteration % 2 == 0:
            we_n += 1
            _merge_we(weights, we_model, we_n)
    if iterations % 2:  # released code merges at `total` only when total % avg_freq == 0
        we_model, we_n = {k: v.clone() for k, v in start.items()}, 0
        for iteration in range(iterations):
            if iteration % 2 == 0:
                we_n += 1
                _merge_we(rec.weights[iteration], we_model, we_n)
    for n, p in m.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.detach(), we_model[n], atol=1e-6), n
    # 6 iterations: task start + after steps 0, 2, 4 + the end -> 5 snapshots
    assert strat.zscl_plugin.we_count == (5 if iterations == 6 else 4)


def test_teacher_image_cache_gives_the_same_losses_and_encodes_each_image_once(setup):
    bundle, model = setup
    exp = bundle.scenario.train_stream[0]
    losses, plugins = {}, {}
    for cache in (False, True):
        torch.manual_seed(0)
        rec = Recorder()
        strat = _zscl(bundle, copy.deepcopy(model), rec, iterations=6, l2_weight=1.0, we_every=2,
                      cache_teacher_images=cache, precompute_teacher_images=False)
        seen = []
        orig = strat.zscl_plugin.before_backward

        def spy(strategy, _orig=orig, _seen=seen, **kw):
            _orig(strategy, **kw)
            _seen.append(dict(strategy.zscl_plugin.last_losses))

        strat.zscl_plugin.before_backward = spy
        strat.train(exp)
        losses[cache], plugins[cache] = seen, strat.zscl_plugin
    for a, b in zip(losses[False], losses[True]):
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])), (k, a[k], b[k])
    n_ref = len(bundle.reference.images)
    assert plugins[True].num_teacher_image_encodings <= n_ref
    assert plugins[False].num_teacher_image_encodings == 6 * min(8, n_ref)


def test_fused_forward_fast_l2_and_precomputed_teacher_give_the_same_losses_and_gradients(setup):
    """The cost optimisations (one student forward, L2 gradient without autograd, teacher features
    precomputed) leave the losses and gradients of every step equal to float precision."""
    bundle, model = setup
    exp = bundle.scenario.train_stream[0]
    runs = {}
    for name, kw in {"plain": dict(fused_forward=False, fast_l2=False, cache_teacher_images=False,
                                   precompute_teacher_images=False),
                     "fast": dict(fused_forward=True, fast_l2=True, precompute_teacher_images=True)}.items():
        torch.manual_seed(0)
        rec = Recorder()
        strat = _zscl(bundle, copy.deepcopy(model), rec, iterations=4, l2_weight=1.0, we_every=2, **kw)
        seen = _spy_losses(strat)
        strat.train(exp)
        runs[name] = (seen, rec.grads)
    (la, ga), (lb, gb) = runs["plain"], runs["fast"]
    for (ta, da), (tb, db) in zip(la, lb):
        assert abs(ta - tb) <= 1e-4 * max(1.0, abs(ta))
        for k in da:
            assert abs(da[k] - db[k]) <= 1e-4 * max(1.0, abs(da[k])), k  # float32 after Adam steps
    # the recorder runs after the plugin: it sees the L2 gradient too. The first two steps start from
    # (nearly) the same weights; later ones drift apart by float32 rounding amplified by Adam.
    for a, b in zip(ga[:2], gb[:2]):
        for n in a:
            assert float((a[n] - b[n]).norm()) <= 1e-3 * float(a[n].norm()) + 1e-7, n
    assert la[-1][1]["l2"] > 0


@pytest.fixture(scope="module")
def hf_setup(setup):
    """The same bundle with a tiny transformers CLIP (the second backbone family)."""
    from avalanche_mm.models import build_backbone
    from avalanche_mm.models.build import clip_classifier

    bundle, _ = setup
    return bundle, clip_classifier(build_backbone("tiny-hfclip", seed=0), bundle, {"freeze": ["logit_scale"]})


class _TowerCalls:
    """Counts the student backbone's image- and text-tower passes (the teacher's are not counted)."""

    def __init__(self, monkeypatch, backbone):
        self.image = self.text = 0
        cls, counter = type(backbone), self
        orig_img, orig_txt = cls._encode_image, cls._encode_text

        def img(self_, x):
            counter.image += self_ is backbone
            return orig_img(self_, x)

        def txt(self_, x):
            counter.text += self_ is backbone
            return orig_txt(self_, x)

        monkeypatch.setattr(cls, "_encode_image", img)
        monkeypatch.setattr(cls, "_encode_text", txt)


@pytest.mark.parametrize("family", ["tiny-openclip", "tiny-hfclip"])
@pytest.mark.parametrize("text_features,ref_text_batch_size", [("student", 5), ("teacher", None)])
def test_fused_tower_passes_equal_separate_passes(setup, hf_setup, monkeypatch, family, text_features,
                                                  ref_text_batch_size):
    """One student pass per tower over [training batch; reference batch] (images, and with
    text_features="student" [class prompts; reference sentences]) gives the losses and the
    gradients of separate passes, on both backbone families; the fused run really makes one
    pass per tower per step."""
    bundle, model = setup if family == "tiny-openclip" else hf_setup
    exp = bundle.scenario.train_stream[0]
    out = {}
    for fused in (False, True):
        torch.manual_seed(0)
        rec, m = Recorder(), copy.deepcopy(model)
        strat = _zscl(bundle, m, rec, iterations=1, l2_weight=1.0, text_features=text_features,
                      ref_text_batch_size=ref_text_batch_size, fused_forward=fused)
        seen = _spy_losses(strat)
        with monkeypatch.context() as mp:
            calls = _TowerCalls(mp, find_backbone(m))
            strat.train(exp)
        out[fused] = seen[0], rec.grads[0], (calls.image, calls.text)
    (loss_a, parts_a), grads_a, _ = out[False]
    (loss_b, parts_b), grads_b, calls_b = out[True]
    assert abs(loss_a - loss_b) <= 1e-5 * max(1.0, abs(loss_a))
    assert parts_a.keys() == parts_b.keys() == {"image", "text", "l2"}
    for k in parts_a:
        assert abs(parts_a[k] - parts_b[k]) <= 1e-5 * max(1.0, abs(parts_a[k])), k
    assert grads_a.keys() == grads_b.keys()
    for n in grads_a:
        err = float((grads_a[n] - grads_b[n]).abs().max())
        assert err <= 1e-5 * float(grads_a[n].abs().max()) + 1e-8, (n, err)
    # the training step: one image pass, one text pass (class prompts, fused with the sentences)
    assert calls_b == (1, 1)
    assert out[False][2] == (2, 2 if text_features == "student" else 1)


def test_fast_l2_value_and_gradient_equal_autograd_including_gradless_parameters():
    """``fast_l2``: the value computed without autograd before the backward pass and the
    gradient ``2 w (theta - theta_start)`` added after it equal the autograd L2 term, for a
    parameter with a task gradient, one without any (``grad is None``) and a frozen one."""
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.big = torch.nn.Parameter(torch.randn(37, 11))
    model.small = torch.nn.Parameter(torch.randn(5))
    model.unused = torch.nn.Parameter(torch.randn(3, 2))
    model.frozen = torch.nn.Parameter(torch.randn(4), requires_grad=False)
    plug = ZSCLPlugin(reference_images=torch.zeros(1, 3, 4, 4), reference_texts=["a"], l2_weight=0.7,
                      image_weight=0.0, text_weight=0.0)
    plug.start_weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ref = {n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in model.named_parameters()}
    task_ref = (ref["big"] ** 3).sum() + ref["small"].sin().sum()
    l2_ref = 0.7 * sum(((ref[n] - plug.start_weights[n]) ** 2).sum() for n in plug.start_weights)
    (task_ref + l2_ref).backward()
    strat = SimpleNamespace(model=model, loss=(model.big ** 3).sum() + model.small.sin().sum())
    plug.before_backward(strat)
    assert plug.last_losses["l2"] == pytest.approx(float(l2_ref), rel=1e-6)
    assert float(strat.loss) == pytest.approx(float(task_ref + l2_ref), rel=1e-6)
    strat.loss.backward()
    assert model.unused.grad is None  # the L2 term added no autograd path
    plug.after_backward(strat)
    for n in ("big", "small", "unused"):
        assert torch.allclose(getattr(model, n).grad, ref[n].grad, rtol=1e-6, atol=1e-6), n
    assert model.frozen.grad is None


def test_fast_l2_reuses_its_difference_buffers_within_a_task_and_rebuilds_them_for_the_next():
    model = torch.nn.Linear(3, 2)
    plug = ZSCLPlugin(reference_images=torch.zeros(1, 3, 4, 4), reference_texts=["a"], l2_weight=1.0)
    plug.start_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    first = plug._l2_operands(model)[2]
    plug._l2_direct(model)
    assert all(a is b for a, b in zip(first, plug._l2_operands(model)[2]))  # one allocation per task
    with torch.no_grad():
        model.weight.add_(1.0)
    assert float(plug._l2_direct(model)) == pytest.approx(6.0)  # the buffer holds this step's difference
    plug.start_weights = {n: p.detach().clone() for n, p in model.named_parameters()}  # the next task
    assert float(plug._l2_direct(model)) == 0.0
    assert not any(a is b for a, b in zip(first, plug._l2_operands(model)[2]))


# -- sparse_embedding_l2: the L2 term (and the WE merge) of an embedding table over its looked-up rows --
class _Emb(torch.nn.Module):
    def __init__(self, tie=False):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 4)
        self.lin = torch.nn.Linear(4, 3)
        if tie:
            self.other = torch.nn.Embedding(20, 4)
            self.other.weight = self.emb.weight

    def forward(self, ids):
        return self.lin(self.emb(ids).mean(1))


def _emb_plugin(model, **kw):
    plug = ZSCLPlugin(reference_images=torch.zeros(1, 3, 4, 4), reference_texts=["a"], image_weight=0.0,
                      text_weight=0.0, **kw)
    plug.start_weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return plug


def test_sparse_embedding_l2_is_used_only_where_it_is_exact():
    from avalanche_mm.strategies.zscl import _row_sparse_tables

    def tracked(model, opt):
        params = [p for p in model.parameters()]
        out = _row_sparse_tables(model, opt, params, [p.detach().clone() for p in params])
        for t in out.values():
            t.remove()
        return {id(params[i]) for i in out}

    m = _Emb()
    emb = {id(m.emb.weight)}
    assert tracked(m, torch.optim.AdamW(m.parameters(), weight_decay=0.0)) == emb
    assert tracked(m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)) == emb
    assert tracked(m, torch.optim.AdamW(m.parameters(), weight_decay=0.01)) == set()  # decay moves every row
    assert tracked(m, torch.optim.RMSprop(m.parameters())) == set()  # not one of the checked optimizers

    class MyAdam(torch.optim.Adam):
        pass

    assert tracked(m, MyAdam(m.parameters())) == set()  # a subclass may change the step
    assert tracked(m, None) == set()
    tied = _Emb(tie=True)
    assert tracked(tied, torch.optim.Adam(tied.parameters())) == set()  # shared by two modules
    m.emb.max_norm = 1.0  # renormalises rows in the forward pass
    assert tracked(m, torch.optim.Adam(m.parameters())) == set()


def test_sparse_embedding_l2_value_gradient_and_carried_state_equal_the_dense_term():
    """Rows looked up with gradient, and rows with optimizer state from an earlier task, are
    tracked; over them the value and the gradient equal the dense autograd term."""
    torch.manual_seed(0)
    model = _Emb()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    opt.state[model.emb.weight] = {"exp_avg": torch.zeros(20, 4).index_fill_(0, torch.tensor([7]), 0.5),
                                   "exp_avg_sq": torch.ones(20, 4), "step": torch.tensor(3.0)}
    plug = _emb_plugin(model, l2_weight=0.3)
    ids = torch.tensor([[1, 2, 2], [9, 1, 3]])
    strat = SimpleNamespace(model=model, optimizer=opt, device="cpu")
    plug.before_forward(strat)  # builds the tracker before the model's forward
    strat.loss = model(ids).sum()
    plug.before_backward(strat)
    (tracker,) = plug._l2_rows.values()
    assert sorted(tracker.rows().tolist()) == [1, 2, 3, 7, 9]
    strat.loss.backward()
    plug.after_backward(strat)
    opt.step()
    opt.zero_grad()
    assert torch.equal(model.emb.weight[[0, 4, 5]], plug.start_weights["emb.weight"][[0, 4, 5]])  # untouched rows
    for step in (1, 2, 3):
        plug.iteration = step
        ids = torch.tensor([[4, 2, 2], [1, 1, 11]])
        plug.before_forward(strat)
        strat.loss = model(ids).sum()
        plug.before_backward(strat)
        ref = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
        l2_ref = 0.3 * sum(((ref[n] - plug.start_weights[n]) ** 2).sum() for n in ref)
        l2_ref.backward()
        assert plug.last_losses["l2"] == pytest.approx(float(l2_ref), rel=1e-6)
        task_loss = model(ids).sum()  # the same task loss, for its gradient alone
        task = dict(zip([n for n, _ in model.named_parameters()],
                        torch.autograd.grad(task_loss, list(model.parameters()))))
        strat.loss.backward()
        plug.after_backward(strat)
        for n, p in model.named_parameters():
            assert torch.allclose(p.grad, task[n] + ref[n].grad, rtol=1e-6, atol=1e-7), n
        opt.step()
        opt.zero_grad()
    assert list(plug._l2_rows.values()) == [tracker]  # the checks at steps 1 and 2 passed
    assert len(tracker.rows()) == 7  # 1, 2, 3, 4, 7, 9, 11 of 20


def test_sparse_embedding_l2_falls_back_to_dense_when_an_untracked_row_moves():
    torch.manual_seed(0)
    model = _Emb()
    opt = torch.optim.AdamW(model.parameters(), weight_decay=0.0)
    plug = _emb_plugin(model, l2_weight=1.0)
    strat = SimpleNamespace(model=model, optimizer=opt, device="cpu")
    plug.before_forward(strat)
    strat.loss = model(torch.tensor([[1, 2]])).sum()
    plug.before_backward(strat)
    assert plug._l2_rows
    with torch.no_grad():
        model.emb.weight[15].add_(1.0)  # not looked up: moved by something else than the optimizer
    plug.iteration = 1
    with pytest.warns(RuntimeWarning, match="1 row"):
        plug.before_backward(strat)
    assert not plug._l2_rows and not model.emb._forward_hooks  # dense from now on, hook removed
    assert plug.last_losses["l2"] == pytest.approx(4.0)  # the dense term sees row 15


@pytest.mark.parametrize("family", ["tiny-openclip", "tiny-hfclip"])
def test_sparse_embedding_l2_trains_as_the_dense_term_and_tracks_few_rows(setup, hf_setup, family):
    """On both CLIP families (AdamW without weight decay, as the MTIL recipe), ZSCL with the
    embedding tables' L2 term and WE merge over their looked-up rows gives the dense run's
    losses and final (merged) weights; the tracked rows are a small part of each table."""
    bundle, model = setup if family == "tiny-openclip" else hf_setup
    exp = bundle.scenario.train_stream[0]
    out = {}
    for sparse in (False, True):
        torch.manual_seed(0)
        rec = Recorder()
        strat = _zscl(bundle, copy.deepcopy(model), rec, iterations=5, l2_weight=1.0, we_every=2,
                      weight_decay=0.0, sparse_embedding_l2=sparse)
        seen = _spy_losses(strat)
        sizes = []
        orig = strat.zscl_plugin.after_backward

        def spy(strategy, _orig=orig, **k):
            sizes.extend((len(t.rows()), len(t.mask)) for t in strategy.zscl_plugin._l2_rows.values())
            _orig(strategy, **k)

        strat.zscl_plugin.after_backward = spy
        strat.train(exp)
        out[sparse] = seen, {n: p.detach().clone() for n, p in strat.model.named_parameters()}, sizes
    (la, wa, _), (lb, wb, sizes) = out[False], out[True]
    tables = len(sizes) // 5
    assert tables >= 1 and len(sizes) == 5 * tables  # every step ran sparse
    assert any(r < n // 10 for r, n in sizes)  # the token table: few rows (positions: all of them)
    assert not out[False][2]
    for (ta, da), (tb, db) in zip(la, lb):
        assert abs(ta - tb) <= 1e-5 * max(1.0, abs(ta))
        assert abs(da["l2"] - db["l2"]) <= 1e-5 * max(1e-6, abs(da["l2"]))
    assert la[-1][1]["l2"] > 0
    for n in wa:
        assert torch.allclose(wa[n], wb[n], rtol=1e-5, atol=1e-6), n
