"""ZSCL's iCaRL: herding as released, memory sizes, distillation from the zero-shot model."""

import copy

import numpy as np
import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.strategies import ICaRLCLIP, ICaRLCLIPPlugin
from avalanche_mm.strategies.icarl_clip import herding_order


def _released_construct(image_feature, m):
    """The selection loop of ZSCL's DynamicDataset.constructExampleSet, on indices."""
    image_feature_average = image_feature.mean(axis=0)
    out, cur = [], None
    for k in np.arange(min(m, len(image_feature))):
        if not k:
            index = np.argmin(np.sum((image_feature_average - image_feature) ** 2, axis=1))
            cur = image_feature[index]
        else:
            index = np.argmin(np.sum((image_feature_average - (1 / (k + 1)) * (image_feature + cur)) ** 2, axis=1))
            cur = cur + image_feature[index]
        out.append(int(index))  # update_dataset.append(new_dataset[index]): index into the unshrunk list
        image_feature = np.delete(image_feature, index, axis=0)
    return out


def _paper_herding(f, m):
    mu, chosen, s = f.mean(0), [], np.zeros(f.shape[1])
    for k in range(m):
        d = [np.sum((mu - (s + f[i]) / (k + 1)) ** 2) if i not in chosen else np.inf for i in range(len(f))]
        i = int(np.argmin(d))
        chosen.append(i)
        s = s + f[i]
    return chosen


def test_herding_code_and_paper_equal_their_references():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 8))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    assert herding_order(f, 12, mode="code") == _released_construct(f.copy(), 12)
    assert herding_order(f, 12, mode="paper") == _paper_herding(f, 12)
    assert herding_order(f, 12, mode="code") != herding_order(f, 12, mode="paper")  # the released indexing differs


def test_memory_sizes_distillation_and_teacher(setup):
    bundle, model = setup
    m = copy.deepcopy(model)
    zero_shot = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    strat = ICaRLCLIP(model=m, optimizer=torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3),
                      memory_size=6, iterations=2, train_mb_size=4, evaluator=EvaluationPlugin())
    plug = strat.icarl_plugin
    s0, s1 = bundle.scenario.train_stream[0], bundle.scenario.train_stream[1]
    strat.train(s0)
    assert plug.last_loss is None  # the first task is plain fine-tuning
    assert plug.memory_indices() == [list(range(6))]  # the first K samples, no herding
    strat.train(s1)
    assert plug.last_loss is not None and plug.last_loss > 0
    sizes = [len(i) for i in plug.memory_indices()]
    assert sizes == [3, 3]  # K // t for the old task, K - K // t for the new one
    assert all(torch.equal(plug.teacher.state_dict()[k], v) for k, v in zero_shot.items())
    # the penalty is the both-direction KD of the teacher/student logits against the current prompts
    images = torch.stack([s1.dataset.eval()[i][0]["image"] for i in range(4)])
    loss = plug.penalty(strat, images)
    with torch.no_grad():
        text = plug._teacher_text
        t = m.backbone.logit_scale_value() * plug.teacher.encode_image(images) @ text.t()
    s = m.backbone.logit_scale_value() * m.backbone.encode_image(images) @ text.t()

    def kd(a, b):
        return torch.nn.functional.cross_entropy(b / 2, torch.softmax(a / 2, 1)) * 4

    assert torch.allclose(loss, kd(t, s) + kd(t.t(), s.t()), rtol=1e-5)
    with pytest.raises(ValueError, match="herding"):
        ICaRLCLIPPlugin(herding="x")
