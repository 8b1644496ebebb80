"""Replay with every Avalanche storage policy on multimodal data, and the
dict-aware herding / closest-to-center exemplar selection."""

from types import SimpleNamespace

import pytest
import torch
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import (
    TaskAwareSupervisedClassificationDataset,
)
from avalanche.core import SupervisedPlugin
from avalanche.training.storage_policy import (
    ClassBalancedBuffer,
    ExperienceBalancedBuffer,
    HerdingSelectionStrategy as StockHerding,
    ParametricBuffer,
    ReservoirSamplingBuffer,
)

from avalanche_mm.benchmarks.toy import ToyFusionNet, toy_benchmark
from avalanche_mm.data import MultimodalBatch, MultimodalTensorDataset, make_multimodal_dataset
from avalanche_mm.strategies import Replay
from avalanche_mm.strategies.plugins import (
    ClosestToCenterSelectionStrategy,
    HerdingSelectionStrategy,
)

N_CLASSES = 4
MEM = 8


@pytest.fixture(scope="module")
def bench():
    return toy_benchmark(n_experiences=2, n_classes=N_CLASSES, n_per_class=6, missing_audio_rate=0.25)


class BatchSpy(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.seen = []

    def after_forward(self, strategy, **kwargs):
        if strategy.is_training:
            self.seen.append((strategy.clock.train_exp_counter, strategy.mb_x, strategy.mb_y.clone()))


POLICIES = {
    "reservoir": lambda model: ReservoirSamplingBuffer(max_size=MEM),
    "class_balanced": lambda model: ClassBalancedBuffer(max_size=MEM, adaptive_size=True),
    "experience_balanced": lambda model: ExperienceBalancedBuffer(max_size=MEM, adaptive_size=True),
    "parametric_herding": lambda model: ParametricBuffer(
        max_size=MEM, groupby="class", selection_strategy=HerdingSelectionStrategy(model, "image")
    ),
}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_replay_with_storage_policy_replays_old_multimodal_samples(bench, policy):
    model = ToyFusionNet(n_classes=N_CLASSES, vocab_size=bench.tokenizer.vocab_size, hidden=16)
    spy = BatchSpy()
    storage = POLICIES[policy](model)
    s = Replay(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        criterion=torch.nn.CrossEntropyLoss(),
        mem_size=MEM,
        storage_policy=storage,
        train_mb_size=6,
        eval_mb_size=24,
        evaluator=None,
        plugins=[spy],
    )
    for exp in bench.train_stream:
        s.train(exp)
    s.eval(bench.test_stream)

    old = set(bench.train_stream[0].classes_in_this_experience)
    new = set(bench.train_stream[1].classes_in_this_experience)
    buffer = storage.buffer
    assert len(buffer) == MEM
    stored = {int(t) for t in buffer.targets}
    assert stored & old and stored & new  # the buffer spans both experiences
    second = [(x, y) for e, x, y in spy.seen if e == 1]
    assert second and all(isinstance(x, MultimodalBatch) for x, _ in second)
    replayed = set().union(*(set(y.tolist()) for _, y in second))
    assert replayed & old  # old classes come back through the replay loader
    assert model.training  # the policy left the model in training mode


# --------------------------------------------------------------------------
# herding on a hand-made case
# --------------------------------------------------------------------------
class FeatureNet(torch.nn.Module):
    """Returns the "feat" modality as features; ignores the padded text."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x["feat"] * self.scale


def _hand_made_dataset():
    # 1-D features 0, 10, 4.5, 7 (mean 5.375) and variable-length text
    feats = torch.tensor([[0.0], [10.0], [4.5], [7.0]])
    text = [torch.tensor([1, 2, 3]), torch.tensor([4]), torch.tensor([5, 6]), torch.tensor([7, 8, 9, 1])]
    return make_multimodal_dataset({"feat": feats, "text": text}, [0, 0, 0, 0], variable=["text"])


def _fake_strategy():
    return SimpleNamespace(device=torch.device("cpu"), eval_mb_size=3, train_mb_size=3)


def test_herding_picks_the_expected_exemplars_on_multimodal_batches():
    # herding: the point that keeps the running mean closest to 5.375:
    # 4.5 (|4.5-5.375|), then 7 (mean 5.75), then 0 (mean 3.83), then 10
    model = FeatureNet().train()
    herding = HerdingSelectionStrategy(model, "")
    assert herding.make_sorted_indices(_fake_strategy(), _hand_made_dataset()) == [2, 3, 0, 1]
    assert model.training  # restored (the stock strategy leaves the model in eval mode)

    closest = ClosestToCenterSelectionStrategy(FeatureNet(), "")
    assert closest.make_sorted_indices(_fake_strategy(), _hand_made_dataset()) == [2, 3, 1, 0]


def test_stock_herding_leaves_model_in_eval_mode():
    model = FeatureNet().train()
    StockHerding(model, "").make_sorted_indices(_fake_strategy(), _hand_made_dataset())
    assert not model.training


def test_stock_herding_fails_on_plain_dict_batches_ours_works():
    n = 4
    base = MultimodalTensorDataset({"feat": torch.tensor([[0.0], [10.0], [4.5], [7.0]])}, [0] * n)
    plain = TaskAwareSupervisedClassificationDataset(  # default collate: plain dict batches
        [base],
        data_attributes=[
            DataAttribute([0] * n, "targets"),
            DataAttribute([0] * n, "targets_task_labels", use_in_getitem=True),
        ],
    )
    with pytest.raises(AttributeError, match="'dict' object has no attribute 'to'"):
        StockHerding(FeatureNet(), "").make_sorted_indices(_fake_strategy(), plain)
    assert HerdingSelectionStrategy(FeatureNet(), "").make_sorted_indices(
        _fake_strategy(), plain
    ) == [2, 3, 0, 1]


def test_herding_explains_a_feature_layer_that_gives_no_tensor():
    class Unused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Linear(1, 1)  # never called in forward

        def forward(self, x):
            return x["feat"]

    herding = HerdingSelectionStrategy(Unused(), "unused")
    with pytest.raises(TypeError, match="layer 'unused' produced NoneType"):
        herding.make_sorted_indices(_fake_strategy(), _hand_made_dataset())
