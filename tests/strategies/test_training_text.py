"""Training text encoding covers the step's task only; tokenisation is cached; evaluation stays O(classes)."""

import copy

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.models.zero_shot import render_prompts
from avalanche_mm.strategies import FineTune
from avalanche_mm.strategies.finetune import find_backbone


class PromptSpy(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.per_step = []

    def before_forward(self, strategy, **kw):
        self._n = strategy.model.embedding_cache.num_prompts_encoded

    def after_forward(self, strategy, **kw):
        cache = strategy.model.embedding_cache
        self.per_step.append((cache.num_prompts_encoded - self._n, list(cache.last_prompts)))


@pytest.mark.parametrize("train_templates", ["all", "first"])
def test_prompts_encoded_per_training_step_are_the_task_classes_x_templates(setup, train_templates):
    bundle, model = setup
    m = copy.deepcopy(model)
    m.train_templates = train_templates
    exp = bundle.scenario.train_stream[1]
    bb = find_backbone(m)
    calls = {"n": 0}
    orig = bb.tokenize

    def counting(texts):
        calls["n"] += 1
        return orig(texts)

    bb.tokenize = counting
    spy = PromptSpy()
    FineTune(model=m, optimizer=torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4),
             iterations=3, train_mb_size=8, plugins=[spy], evaluator=EvaluationPlugin()).train(exp)
    templates = list(exp.templates) if train_templates == "all" else list(exp.templates)[:1]
    expected = render_prompts(exp.class_names, templates)
    assert len(bundle.class_names) > len(exp.class_names)  # the benchmark has more classes than the task
    assert [n for n, _ in spy.per_step] == [len(expected)] * 3
    assert all(p == expected for _, p in spy.per_step)
    assert calls["n"] == 1  # tokenised once, reused by every step
    # evaluation: each task's classes x its templates (all of them), once for all batches
    m.eval()
    cache = m.embedding_cache
    before = cache.num_prompts_encoded
    with torch.no_grad():
        for e in bundle.scenario.test_stream:
            x, _, t = e.dataset.collate_fn([e.dataset[i] for i in range(len(e.dataset))])
            m(x, t)
            m(x, t)
    total = sum(len(e.class_names) * len(e.templates) for e in bundle.scenario.test_stream)
    assert cache.num_prompts_encoded - before == total


def test_global_head_logits_equal_the_full_encoding_with_masking(setup):
    """Per-task encoding gives the same logits as encoding every class and masking the others."""
    bundle, model = setup
    m = copy.deepcopy(model).eval()
    exp = bundle.scenario.test_stream[1]
    x, _, t = exp.dataset.collate_fn([exp.dataset[i] for i in range(4)])
    with torch.no_grad():
        logits = m(x, t)
        feats, _ = m.image_features(x)
        full = m.embedding_cache.encode(m.backbone, m.global_names, m.templates_of(1))
        ref = m.scale() * feats.float() @ full.t()
        mask = torch.ones(ref.shape[1], dtype=torch.bool)
        mask[m.task_classes[1]] = False
        ref = ref.masked_fill(mask, m.mask_value)
    assert torch.allclose(logits, ref, atol=1e-5)
