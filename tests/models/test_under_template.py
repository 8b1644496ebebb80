"""The zero-shot heads run under the multimodal template (avalanche_mm.strategies.Naive)."""

import math

import torch
from avalanche.core import SupervisedPlugin

from avalanche_mm.benchmarks import class_incremental_scenario
from avalanche_mm.data import make_multimodal_dataset
from avalanche_mm.models import MultiTaskZeroShotClassifier, ZeroShotClassifier
from avalanche_mm.strategies import Naive

NAMES = ["red circle", "blue square", "green triangle", "yellow cross"]


def _data(backbone, n, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    captions = [f"a photo of a {NAMES[i % 4]}" for i in range(n)]
    return make_multimodal_dataset(
        {"image": images, "text": captions},
        [i % 4 for i in range(n)],
        tokenizers={"text": backbone.sample_tokenizer},
        pad_values={"text": backbone.pad_token_id},
        variable=["text"],
    )


def test_zero_shot_classifier_trains_and_evaluates_under_naive(backbone):
    torch.manual_seed(0)
    scenario = class_incremental_scenario(
        _data(backbone, 16, 0), _data(backbone, 12, 1), num_experiences=2,
        class_order=[0, 1, 2, 3], class_names=NAMES,
    )
    clf = ZeroShotClassifier(
        backbone=backbone, class_names=NAMES, templates=["a photo of a {}.", "a {}."],
        mask_unseen=True, text_batch_size=3,
    )
    strategy = Naive(
        model=clf, optimizer=torch.optim.SGD(clf.parameters(), lr=1e-3), train_mb_size=4,
        train_epochs=1, eval_mb_size=2,
    )
    text_before = [p.detach().clone() for p in backbone.tower_parameters("text")]
    strategy.train(scenario.train_stream[0])
    assert clf.seen_classes == {0, 1}  # via Avalanche's model adaptation
    assert any(not torch.equal(a, p) for a, p in zip(text_before, backbone.tower_parameters("text")))
    calls = clf.embedding_cache.num_text_encoder_calls
    results = strategy.eval(scenario.test_stream)  # 12 test samples, batches of 2 -> 6 batches
    per_pass = math.ceil(len(NAMES) * 2 / 3)
    assert clf.embedding_cache.num_text_encoder_calls - calls == per_pass
    accs = [v for k, v in results.items() if k.startswith("Top1_Acc_Exp/eval_phase/test_stream")]
    assert len(accs) == 2
    # classes not trained yet are masked: experience 1 (classes 2, 3) is never predicted
    assert [v for k, v in results.items() if k.endswith("Exp001")][0] == 0.0


def test_multitask_zero_shot_gets_task_labels_from_the_template(backbone):
    torch.manual_seed(0)
    scenario = class_incremental_scenario(
        _data(backbone, 16, 0), _data(backbone, 8, 1), num_experiences=2,
        class_order=[0, 1, 2, 3], task_labels=True,
    )
    clf = MultiTaskZeroShotClassifier(backbone=backbone, class_names=NAMES)
    backbone.freeze("text")

    class Record(SupervisedPlugin):
        outputs = []

        def after_eval_forward(self, strategy, **kwargs):
            self.outputs.append((strategy.mb_task_id.clone(), strategy.mb_output.detach().clone()))

    record = Record()
    strategy = Naive(
        model=clf, optimizer=torch.optim.SGD([p for p in clf.parameters() if p.requires_grad], lr=1e-3),
        train_mb_size=4, train_epochs=1, eval_mb_size=4, evaluator=None, plugins=[record],
    )
    strategy.train(scenario.train_stream[0])
    strategy.eval(scenario.test_stream)  # eval adaptation learns task 1's classes
    assert clf.task_classes == {0: [0, 1], 1: [2, 3]}
    assert {int(t) for tasks, _ in record.outputs for t in tasks} == {0, 1}
    for tasks, out in record.outputs:  # classes outside each row's task are masked
        assert out.shape[1] == 4
        for t, row in zip(tasks.tolist(), out):
            other = [2, 3] if t == 0 else [0, 1]
            assert (row[other] == clf.mask_value).all() and (row[[c for c in range(4) if c not in other]] > -1e3).all()
