"""The fine-tuning recipe (step budget, warm-up + cosine, fresh optimizer), zero-shot and CLIP-LwF."""

import copy
import math

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.strategies import CLIPLwF, CLIPLwFPlugin, FineTune, IterationSchedulePlugin, ZeroShot


class Count(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.steps, self.lrs, self.grads = 0, [], []

    def before_update(self, strategy, **kw):
        self.lrs.append(strategy.optimizer.param_groups[0]["lr"])

    def after_backward(self, strategy, **kw):
        self.grads.append({n: p.grad.detach().clone() for n, p in strategy.model.named_parameters() if p.grad is not None})

    def after_training_iteration(self, strategy, **kw):
        self.steps += 1


def _opt(m, lr=1e-3):
    return torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr)


def test_schedule_warmup_then_cosine():
    p = IterationSchedulePlugin(lr=1.0, warmup=2, iterations=6)
    p.base_lr, p.total = 1.0, 6
    assert [round(p.lr_at(i), 4) for i in range(2)] == [0.5, 1.0]
    assert p.lr_at(2) == pytest.approx(1.0)
    assert p.lr_at(4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    c = IterationSchedulePlugin(lr=1.0, schedule="constant")
    c.base_lr, c.total = 1.0, 10
    assert c.lr_at(7) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        IterationSchedulePlugin(schedule="step")
    with pytest.raises(ValueError, match="iterations"):
        IterationSchedulePlugin(iterations=0)


@pytest.mark.parametrize("iterations", [3, 7])
def test_iteration_budget_is_exact_and_optimizer_is_fresh(setup, iterations):
    bundle, model = setup
    m = copy.deepcopy(model)
    count = Count()
    strat = FineTune(model=m, optimizer=_opt(m), iterations=iterations, warmup=1, train_mb_size=8,  # 4 batches/exp
                     lr_per_experience=[1e-3, 5e-4], plugins=[count], evaluator=EvaluationPlugin())
    strat.train(bundle.scenario.train_stream[0])
    assert count.steps == iterations
    assert count.lrs[0] == pytest.approx(1e-3)  # warm-up of 1 step reaches the base lr
    assert not strat._stop_training
    strat.train(bundle.scenario.train_stream[1])
    assert count.steps == 2 * iterations
    assert count.lrs[iterations] == pytest.approx(5e-4)  # second experience: its own lr, restarted


def test_zeroshot_never_changes_the_weights(setup):
    bundle, model = setup
    m = copy.deepcopy(model)
    before = copy.deepcopy(m.state_dict())
    count = Count()
    strat = ZeroShot(model=m, train_mb_size=8, plugins=[count], evaluator=EvaluationPlugin())
    for exp in bundle.scenario.train_stream:
        strat.train(exp)
    assert count.steps == 0 and strat.zeroshot_plugin.experiences_skipped == 2
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_clip_lwf_distils_the_task_start_model(setup):
    bundle, model = setup
    exp = bundle.scenario.train_stream[1]
    grads = {}
    for alpha in (0.0, 1.0):
        torch.manual_seed(0)
        m = copy.deepcopy(model)
        count = Count()
        strat = CLIPLwF(model=m, optimizer=_opt(m, 1e-2), alpha=alpha, iterations=2, train_mb_size=8,
                        plugins=[count], evaluator=EvaluationPlugin())
        strat.train(exp)
        grads[alpha] = count.grads
        if alpha:
            assert strat.lwf_plugin.last_loss is not None and strat.lwf_plugin.teacher is None
    diff = [max(float((a[n] - b[n]).abs().max()) for n in a) for a, b in zip(grads[0.0], grads[1.0])]
    assert diff[0] < 1e-5  # the first step: student == teacher, no distillation gradient
    assert diff[1] > 1e-6  # then the teacher pulls


def test_clip_lwf_penalty_restricts_to_current_classes(setup):
    bundle, model = setup
    plug = CLIPLwFPlugin(alpha=1.0, mode="minibatch")
    with pytest.raises(ValueError, match="temperature"):
        CLIPLwFPlugin(temperature=0)
    from types import SimpleNamespace

    from avalanche_mm.data import MultimodalBatch

    exp = bundle.scenario.train_stream[1]
    m = copy.deepcopy(model)
    plug.before_training_exp(SimpleNamespace(model=m))
    x, y, t = exp.dataset.collate_fn([exp.dataset[i] for i in range(4)])
    out = m(x, t)
    strat = SimpleNamespace(mb_output=out, mb_x=x, mb_task_id=t, experience=exp)
    loss = plug.penalty(strat)
    assert torch.isfinite(loss)  # masked columns of other tasks would make it explode
    assert isinstance(x, MultimodalBatch)


def test_masked_cross_entropy_ignores_masked_columns():
    from avalanche_mm.strategies.finetune import MaskedCrossEntropyLoss

    logits = torch.randn(5, 4)
    y = torch.randint(0, 4, (5,))
    ref = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.2)
    assert torch.allclose(MaskedCrossEntropyLoss(label_smoothing=0.2)(logits, y), ref)
    masked = torch.cat([logits, torch.full((5, 3), -1e4)], 1)  # 3 columns of other tasks
    assert torch.allclose(MaskedCrossEntropyLoss(label_smoothing=0.2)(masked, y), ref, atol=1e-5)
    assert torch.nn.functional.cross_entropy(masked, y, label_smoothing=0.2) > 100  # the stock loss explodes


def _released_distillation(t, s, T=2):
    """ZSCL's ``distillation`` (mtil/src/models/helpers.py)."""
    p = torch.softmax(t / T, dim=1)
    return torch.nn.functional.cross_entropy(s / T, p, reduction="mean") * (T ** 2)


def test_clip_lwf_default_is_zscl_released_lwf(setup):
    """Default LwF = ZSCL's lwf.sh: separate batch of the current task, first template, teacher
    text features, teacher = task-start model, both directions, student's logit scale."""
    from types import SimpleNamespace

    from avalanche_mm.strategies.finetune import find_backbone, images_of

    bundle, model = setup
    exp = bundle.scenario.train_stream[1]
    m = copy.deepcopy(model)
    plug = CLIPLwFPlugin(alpha=1.0)
    assert plug.mode == "zscl"
    strat = SimpleNamespace(model=m, device=torch.device("cpu"), experience=exp, train_mb_size=8)
    plug.before_training_exp(strat)
    assert plug.prompts == [exp.templates[0].format(c) for c in exp.class_names]
    teacher = copy.deepcopy(find_backbone(m))  # the task-start model
    bb = find_backbone(m)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in bb.tower_parameters("vision") + bb.tower_parameters("text"):
            p.add_(0.05 * torch.randn_like(p))
    images = plug.next_reference_images(strat)
    assert images.shape[0] == 8
    loss = plug.penalty(strat, images)
    # hand-written reference of finetune.py's ZSCL loss with ref_texts = the task's first-template prompts
    with torch.no_grad():
        ref_emb = teacher.encode_text(teacher.tokenize(plug.prompts))
        ref_out = teacher.encode_image(images)
    cur = bb.encode_image(images)
    scale = bb.logit_scale_value()
    logits_current, logits_ref = scale * cur @ ref_emb.t(), scale * ref_out @ ref_emb.t()
    expected = _released_distillation(logits_ref, logits_current) + _released_distillation(
        logits_ref.t(), logits_current.t())
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()  # the teacher's text features: no text-tower gradient
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in bb.tower_parameters("text"))
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in bb.tower_parameters("vision"))
    # the separate batch uses the evaluation view of the task's data
    x = images_of(next(plug._ref_iter))
    assert x.shape[1:] == exp.dataset.eval()[0][0]["image"].shape


def test_clip_lwf_minibatch_mode_is_kept(setup):
    bundle, model = setup
    exp = bundle.scenario.train_stream[1]
    torch.manual_seed(0)
    m = copy.deepcopy(model)
    strat = CLIPLwF(model=m, optimizer=_opt(m, 1e-2), mode="minibatch", iterations=2, train_mb_size=8,
                    evaluator=EvaluationPlugin())
    strat.train(exp)
    assert strat.lwf_plugin.last_loss is not None
    with pytest.raises(ValueError, match="mode"):
        CLIPLwFPlugin(mode="paper")


def test_teacher_copies_share_the_tokenizer_and_optimizers_take_the_fast_path(setup):
    from avalanche_mm.strategies.finetune import find_backbone, frozen_copy, make_clip_optimizer

    _, model = setup
    bb = find_backbone(model)
    t = frozen_copy(bb)
    assert t.tokenizer is bb.tokenizer  # shared, not deep-copied
    p0, q0 = next(bb.parameters()), next(t.parameters())
    assert q0 is not p0 and torch.equal(q0, p0) and not q0.requires_grad
    assert torch.equal(t.tokenize(["a photo"]), bb.tokenize(["a photo"]))
    opt = make_clip_optimizer(model, name="adamw", lr=1e-4)
    assert opt.defaults.get("fused") or opt.defaults.get("foreach")
    sgd = make_clip_optimizer(model, name="sgd", lr=1e-2)
    assert sgd.defaults.get("foreach")


def test_optimizer_steps_make_cached_class_embeddings_stale(setup):
    """A fused AdamW updates weights without bumping version counters; the zero-shot head's
    cache of class embeddings keys on them, so without the step hook evaluation after training
    used the text embeddings of the old weights (found by the 2-process resume test)."""
    from avalanche_mm.strategies.finetune import find_backbone, make_clip_optimizer

    _, model = setup
    bb = find_backbone(model)
    for name in ("adamw", "adam", "sgd"):
        opt = make_clip_optimizer(model, name=name, lr=1e-3)
        before = bb.text_state_key()
        for p in bb.tower_parameters("text"):
            p.grad = torch.ones_like(p)
        opt.step()
        assert bb.text_state_key() != before, name
