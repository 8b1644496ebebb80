"""Dict-aware multi-head models on a task-incremental multimodal stream."""

import pytest
import torch
from avalanche.models import MultiTaskModule

from avalanche_mm.benchmarks import task_incremental_scenario
from avalanche_mm.benchmarks.toy import make_toy_datasets
from avalanche_mm.data import MultimodalBatch
from avalanche_mm.models import MultiHeadFusionClassifier
from avalanche_mm.strategies import Naive


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.lin(x["audio"].flatten(1))


def _task_incremental():
    train, test, _ = make_toy_datasets(n_classes=4, n_per_class=6)
    return task_incremental_scenario(train, test, num_experiences=2, class_order=[0, 1, 2, 3])


def _mixed_batch():
    return MultimodalBatch({"audio": torch.randn(4, 1, 32)}), torch.tensor([0, 1, 0, 1])


def test_mixed_task_batch_is_routed_per_row():
    model = MultiHeadFusionClassifier(encoder=_Encoder(), in_features=8)
    bm = _task_incremental()
    from avalanche.models.dynamic_modules import avalanche_model_adaptation

    for exp in bm.train_stream:
        avalanche_model_adaptation(model, exp)
    x, t = _mixed_batch()
    out = model(x, t)
    assert out.shape[0] == 4
    for row, task in enumerate(t.tolist()):
        single = model.forward_single_task(x.select([row]), task)
        assert torch.allclose(out[row, : single.shape[1]], single[0])
    assert set(model(x, None)) == {0, 1}


def test_stock_multitask_module_fails_on_dict_batches():
    class Stock(MultiTaskModule):
        def forward_single_task(self, x, task_label):
            return torch.zeros(len(x["audio"]), 2)

    x, t = _mixed_batch()
    with pytest.raises((AttributeError, TypeError, IndexError)):
        Stock()(dict(x), t)


def test_trains_under_the_template_with_task_labels():
    bm = _task_incremental()
    model = MultiHeadFusionClassifier(encoder=_Encoder(), in_features=8)
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=torch.nn.CrossEntropyLoss(), train_mb_size=8, eval_mb_size=8,
    )
    for exp in bm.train_stream:
        strategy.train(exp)
    res = strategy.eval(bm.test_stream)
    assert set(model.heads.classifiers.keys()) == {"0", "1"}
    assert {"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000",
            "Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001"} <= set(res)


def test_bad_task_labels_shape():
    model = MultiHeadFusionClassifier(encoder=_Encoder(), in_features=8)
    x, _ = _mixed_batch()
    with pytest.raises(ValueError, match=r"expected shape \(4,\)"):
        model(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="nn.Module"):
        MultiHeadFusionClassifier(encoder=lambda x: x, in_features=3)
