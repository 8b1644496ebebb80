"""Every drop-in twin trains two experiences of the toy multimodal stream
(variable-length text, missing audio) and is evaluated through Avalanche's
EvaluationPlugin with a TextLogger (accuracy, loss and forgetting)."""

import inspect
import io

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics, loss_metrics
from avalanche.logging import TextLogger
from avalanche.training import supervised as stock
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins import EWCPlugin as StockEWCPlugin

import avalanche_mm.strategies as mm
from avalanche_mm.benchmarks.toy import ToyFusionNet, toy_benchmark
from avalanche_mm.data import MultimodalBatch

N_CLASSES = 4


@pytest.fixture(scope="module")
def bench():
    return toy_benchmark(n_experiences=2, n_classes=N_CLASSES, n_per_class=6, missing_audio_rate=0.25)


class _Features(torch.nn.Module):
    """iCaRL feature extractor: the toy fusion net's fused scores as features."""

    def __init__(self, vocab_size):
        super().__init__()
        self.net = ToyFusionNet(n_classes=8, vocab_size=vocab_size, hidden=16)

    def forward(self, x):
        return self.net(x)


class _Spy(SupervisedPlugin):
    """Records the training inputs the model receives."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def after_forward(self, strategy, **kwargs):
        if strategy.is_training:
            self.inputs.append(strategy.mb_x)


# name -> extra constructor arguments
TWINS = {
    "Naive": {},
    "Cumulative": {},
    "JointTraining": {},
    "Replay": {"mem_size": 8},
    "GDumb": {"mem_size": 8},
    "LwF": {"alpha": 1.0, "temperature": 2.0},
    "SynapticIntelligence": {"si_lambda": 0.1},
    "FromScratchTraining": {},
    "EWC": {"ewc_lambda": 1.0},
    "MAS": {"lambda_reg": 1.0},
    "GEM": {"patterns_per_exp": 6},
    "AGEM": {"patterns_per_exp": 6, "sample_size": 6},
    "DER": {"mem_size": 8, "batch_size_mem": 4},
    "ER_ACE": {"mem_size": 8, "batch_size_mem": 4},
    "ICaRL": {"memory_size": 8, "buffer_transform": None, "fixed_memory": True},
}


def _build(name, bench, spy, log):
    cls = getattr(mm, name)
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        loss_metrics(stream=True),
        forgetting_metrics(experience=True, stream=True),
        loggers=[TextLogger(log)],
    )
    common = dict(train_mb_size=6, eval_mb_size=24, evaluator=evaluator, plugins=[spy])
    vocab = bench.tokenizer.vocab_size
    if name == "ICaRL":
        fe = _Features(vocab)
        clf = torch.nn.Linear(8, N_CLASSES)
        opt = torch.optim.SGD(list(fe.parameters()) + list(clf.parameters()), lr=0.05)
        return cls(feature_extractor=fe, classifier=clf, optimizer=opt, **TWINS[name], **common)
    model = ToyFusionNet(n_classes=N_CLASSES, vocab_size=vocab, hidden=16)
    return cls(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        criterion=torch.nn.CrossEntropyLoss(),
        **TWINS[name],
        **common,
    )


def test_every_supported_twin_is_covered():
    assert set(TWINS) == set(mm.SUPPORTED)


@pytest.mark.parametrize("name", list(TWINS))
def test_twin_trains_two_experiences_and_logs_metrics(name, bench):
    log, spy = io.StringIO(), _Spy()
    strategy = _build(name, bench, spy, log)
    if name == "JointTraining":
        strategy.train(bench.train_stream)
    else:
        for exp in bench.train_stream:
            strategy.train(exp)
    results = strategy.eval(bench.test_stream)

    # the model was fed multimodal batches, with padded variable-length text
    assert spy.inputs and all(isinstance(x, MultimodalBatch) for x in spy.inputs)
    assert any("text" in x.lengths and x.lengths["text"].unique().numel() > 1 for x in spy.inputs)

    acc_key = "Top1_Acc_Stream/eval_phase/test_stream"
    assert acc_key in results and 0.0 <= results[acc_key] <= 1.0
    assert "StreamForgetting/eval_phase/test_stream" in results
    text = log.getvalue()
    assert "Top1_Acc_Stream" in text
    assert "Loss_Stream" in text
    assert "StreamForgetting" in text


@pytest.mark.parametrize("name", ["EWC", "MAS", "GEM", "AGEM", "DER", "ER_ACE", "ICaRL"])
def test_twin_constructor_is_avalanches(name):
    ours, theirs = getattr(mm, name), getattr(stock, name)
    assert issubclass(ours, theirs) and issubclass(ours, mm.MultimodalTemplateMixin)
    assert inspect.signature(ours) == inspect.signature(theirs)


def test_twin_does_not_mutate_the_callers_plugin_list(bench):
    model = ToyFusionNet(n_classes=N_CLASSES, vocab_size=bench.tokenizer.vocab_size)
    mine = [_Spy()]
    s = mm.EWC(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=torch.nn.CrossEntropyLoss(),
        ewc_lambda=1.0,
        plugins=mine,
        evaluator=None,
    )
    assert len(mine) == 1
    assert isinstance(s.ewc_plugin, mm.plugins.EWCPlugin)
    ewc_plugins = [p for p in s.plugins if isinstance(p, StockEWCPlugin)]
    assert ewc_plugins == [s.ewc_plugin]  # the stock plugin was replaced, not added to
