"""Cost metrics, periodic evaluation, and the errors the plugin metrics raise."""

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.benchmarks.toy import ToyFusionNet, make_toy_datasets, toy_benchmark
from avalanche_mm.data import MultimodalBatch
from avalanche_mm.metrics import (
    AccuracyMatrix,
    CrossModalAlignment,
    ModalityAblation,
    ModalityImbalanceIndex,
    ModalityShapley,
    OGMGERatio,
    ProbeSet,
    UnimodalAccuracy,
    ZeroShotRetention,
    cost_metrics,
    modality_imbalance_metrics,
    resolve_encoders,
)
from avalanche_mm.metrics.functional import (
    cost_summary,
    count_parameters,
    parameter_growth,
    throughput,
)
from avalanche_mm.strategies import Naive


@pytest.fixture(scope="module")
def bench():
    return toy_benchmark(n_experiences=2, n_classes=4, n_per_class=4)


def _naive(bench, evaluator, model=None, **kw):
    model = model or ToyFusionNet(n_classes=4, vocab_size=bench.tokenizer.vocab_size, hidden=8)
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=8,
        eval_mb_size=8,
        evaluator=evaluator,
        **kw,
    )


def test_count_parameters_growth_throughput():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    net[0].weight.requires_grad_(False)
    assert count_parameters(net) == (4 + 8 + 2, 12 + 4 + 8 + 2)
    shared = torch.nn.Linear(2, 2)
    assert count_parameters(torch.nn.Sequential(shared, shared)) == (6, 6)
    assert parameter_growth([10, 15, 20]).tolist() == [1.0, 1.5, 2.0]
    assert throughput(100, 4.0) == 25.0
    assert cost_summary([5, 3], [10, 12]) == {
        "trainable_sum": 8.0, "total_last": 12.0, "total_growth": 1.2, "trainable_growth": 0.6
    }
    with pytest.raises(ValueError, match="positive duration"):
        throughput(10, 0.0)
    with pytest.raises(TypeError, match="nn.Module"):
        count_parameters("model")


class GrowEachExperience(SupervisedPlugin):
    """Adds a 10-parameter module to the model at the start of each experience."""

    def before_training_exp(self, strategy, **kwargs):
        strategy.model.add_module(f"extra{len(list(strategy.model.children()))}",
                                  torch.nn.Linear(3, 2, bias=True).requires_grad_(False))


def test_parameter_count_follows_a_growing_model(bench):
    params, timing, memory = cost_metrics()
    strategy = _naive(bench, EvaluationPlugin(params, timing, memory, loggers=[]),
                      plugins=[GrowEachExperience()])
    base_total = sum(p.numel() for p in strategy.model.parameters())
    for exp in bench.train_stream:
        strategy.train(exp)
    assert params.total == [base_total + 8, base_total + 16]
    assert params.trainable == [base_total, base_total]
    assert params.result()["total_growth"] == pytest.approx((base_total + 16) / (base_total + 8))
    assert timing.samples == [8, 8] and len(memory.rss_mb) == 2


def test_accuracy_matrix_rows_survive_periodic_evaluation(bench):
    # periodic evaluation inside experience 1 must not overwrite the row of experience 0
    matrix = AccuracyMatrix()
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), matrix, loggers=[])
    strategy = _naive(bench, evaluator, train_epochs=2, eval_every=1)
    strategy.train(bench.train_stream[0], eval_streams=[bench.test_stream])
    row0 = matrix.matrix[0].copy()
    last = evaluator.get_last_metrics()
    assert row0.tolist() == pytest.approx(
        [last[f"Top1_Acc_Exp/eval_phase/test_stream/Exp{i:03d}"] for i in range(2)]
    )
    strategy.train(bench.train_stream[1], eval_streams=[bench.test_stream])
    assert matrix.matrix.shape == (2, 2)
    assert matrix.matrix[0].tolist() == pytest.approx(row0.tolist())
    # PeriodicEval's initial evaluation (before any training) filled the baseline row
    assert matrix.baseline is not None and matrix.baseline.shape == (2,)
    assert "fwt" in matrix.summary()


def test_ogm_ge_needs_the_per_modality_logits(bench):
    class Plain(ToyFusionNet):
        def forward(self, x):
            out = super().forward(x)
            del self.last_unimodal_logits
            return out

    model = Plain(n_classes=4, vocab_size=bench.tokenizer.vocab_size, hidden=8)
    strategy = _naive(bench, EvaluationPlugin(OGMGERatio(), loggers=[]), model=model)
    with pytest.raises(AttributeError, match="last_unimodal_logits"):
        strategy.train(bench.train_stream[0])


def test_ablation_metrics_need_a_multimodal_batch():
    class Strat:
        mb_x = torch.zeros(2, 3)

    with pytest.raises(TypeError, match="MultimodalBatch"):
        ModalityAblation().logits(Strat(), ["image"])


def test_ablation_cache_reuses_passes_within_a_minibatch():
    calls = []

    class Model(torch.nn.Module):
        def forward(self, x):
            calls.append(tuple(m for m in x.modalities if x.present[m].any()))
            return torch.zeros(len(x), 2)

    class Strat:
        model = Model()
        mb_task_id = torch.zeros(2, dtype=torch.long)
        mb_x = MultimodalBatch({"a": torch.ones(2, 1), "b": torch.ones(2, 1)})
        mb_output = torch.zeros(2, 2)

    abl = ModalityAblation()
    s = Strat()
    assert abl.logits(s, []) is s.mb_output
    abl.logits(s, ["a"])
    abl.logits(s, {"a"})
    abl.logits(s, ["b"])
    assert calls == [("b",), ("a",)] and abl.extra_passes == 2
    s.mb_x = MultimodalBatch({"a": torch.ones(2, 1), "b": torch.ones(2, 1)})  # next minibatch
    abl.logits(s, ["a"])
    assert abl.extra_passes == 3


def test_constructor_validation():
    with pytest.raises(ValueError, match="up to 4"):
        ModalityShapley(modalities=["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match="source"):
        ModalityImbalanceIndex(source="gini")
    with pytest.raises(ValueError, match="non-empty list"):
        UnimodalAccuracy(modalities="image")
    with pytest.raises(ValueError, match="disabled"):
        modality_imbalance_metrics(unimodal=False, contribution=False, imbalance_index=False,
                                   forgetting=False)
    with pytest.raises(ValueError, match="non-empty dataset"):
        ZeroShotRetention([])
    with pytest.raises(ValueError, match="either images and texts"):
        ProbeSet(images=torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="one-to-one"):
        ProbeSet(images=torch.zeros(3, 3, 4, 4), texts=torch.zeros(2, 5, dtype=torch.long))
    probe = ProbeSet(images=torch.zeros(2, 3, 4, 4), texts=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one"):
        CrossModalAlignment(probe, retrieval=False, geometry=False, drift=False)
    with pytest.raises(TypeError, match="ProbeSet"):
        CrossModalAlignment("probe")
    with pytest.raises(AttributeError, match="encode_image"):
        resolve_encoders(torch.nn.Linear(2, 2))


def test_modalities_argument_must_match_the_batch(bench):
    metric = UnimodalAccuracy(modalities=["image", "depth"])
    strategy = _naive(bench, EvaluationPlugin(metric, loggers=[]))
    with pytest.raises(ValueError, match="depth"):
        strategy.eval(bench.test_stream[:1])


def test_zero_shot_retention_with_custom_forward(bench):
    _, control, _ = make_toy_datasets(n_classes=4, n_per_class=2, seed=3)
    seen = []

    def forward(model, x):
        seen.append(len(x))
        return model(x)

    metric = ZeroShotRetention(control, name="ctl", batch_size=4, forward=forward)
    strategy = _naive(bench, EvaluationPlugin(metric, loggers=[]))
    strategy.train(bench.train_stream[0])
    assert seen == [4, 4, 4, 4] and metric.initial is not None and len(metric.history) == 1
    assert set(metric.result()) == {"initial", "last", "retention"}


def test_alignment_with_explicit_encoders_and_tensor_probe(bench):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 8, 8, generator=g)
    texts = torch.randint(1, 5, (9, 4), generator=g)

    calls = {"image": 0, "text": 0}

    def enc_i(x):
        calls["image"] += 1
        return x.flatten(1)[:, :5]

    def enc_t(t):
        calls["text"] += 1
        return t.float()[:, :4] @ torch.ones(4, 5)

    probe = ProbeSet(images, texts, text_to_image=[0, 1, 2, 3, 4, 5, 0, 1, 2], batch_size=4)
    metric = CrossModalAlignment(probe, encode_image=enc_i, encode_text=enc_t, drift=False,
                                 ks=(1,))
    strategy = _naive(bench, EvaluationPlugin(metric, loggers=[]))
    strategy.eval(bench.test_stream)
    assert calls == {"image": 2, "text": 3}  # ceil(6 / 4) and ceil(9 / 4) batches
    assert set(metric.result()) >= {"i2t_R@1", "t2i_R@1", "modality_gap"}


def test_imbalance_index_sources_match_their_definitions(bench):
    from torch.utils.data import DataLoader

    from avalanche_mm.metrics import ModalityContribution
    from avalanche_mm.metrics.functional import imbalance_index

    ablation = ModalityAblation()
    index = {
        s: ModalityImbalanceIndex(source=s, ablation=ablation)
        for s in ("contribution", "shapley", "unimodal")
    }
    contrib = ModalityContribution(ablation=ablation)
    shapley = ModalityShapley(ablation=ablation)
    strategy = _naive(bench, EvaluationPlugin(*index.values(), contrib, shapley, loggers=[]))
    strategy.train(bench.train_stream[0])
    strategy.eval(bench.test_stream[:1])

    def strip(res, prefix):
        return {k[len(prefix):]: v for k, v in res.items()}

    def close(a, b):
        return (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b)

    got = {s: m.result()["ModalityImbalanceIndex"] for s, m in index.items()}
    assert close(got["contribution"], imbalance_index(strip(contrib.result(), "ModalityContribution_")))
    assert close(got["shapley"], imbalance_index(strip(shapley.result(), "ModalityShapley_")))
    # unimodal: gain of each modality alone over the empty input, recomputed by hand
    model = strategy.model.eval()
    ds = bench.test_stream[0].dataset.eval()
    hits = {}
    with torch.no_grad():
        for x, y, _ in DataLoader(ds, batch_size=8, collate_fn=ds.collate_fn):
            for keep in (("image",), ("text",), ("audio",), ()):
                pred = model(x.keep(keep)).argmax(1)
                hits[keep] = hits.get(keep, 0) + int((pred == y).sum())
    acc = {k: v / len(ds) for k, v in hits.items()}
    expected = imbalance_index({m: acc[(m,)] - acc[()] for m in ("image", "text", "audio")})
    assert close(got["unimodal"], expected)
    # 7 distinct ablations (Shapley's subsets include every other source's), shared by all
    assert ablation.extra_passes == 7 * 1  # one evaluated minibatch of 8 samples


@pytest.mark.parametrize("modalities, expected_passes, contribution_logged", [
    (None, 3, False),                 # three modalities: unimodal passes only
    (["image", "audio"], 2, True),    # two: contributions and index reuse the unimodal passes
])
def test_default_imbalance_set_costs_one_pass_per_modality(modalities, expected_passes, contribution_logged):
    import warnings

    from avalanche_mm.metrics import modality_imbalance_metrics

    bench = toy_benchmark(n_experiences=2, n_classes=4, n_per_class=4)
    metrics = modality_imbalance_metrics(modalities=modalities)
    ablation = metrics[0].ablation
    strategy = _naive(bench, EvaluationPlugin(*metrics, loggers=[]))
    strategy.train(bench.train_stream[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = strategy.eval(bench.test_stream[:1])
    n_batches = -(-len(bench.test_stream[0].dataset) // 8)
    assert ablation.extra_passes == expected_passes * n_batches
    assert any(k.startswith("ModalityContribution_") for k in res) == contribution_logged
    assert any(k.startswith("UnimodalAcc_") for k in res)
    if not contribution_logged:
        assert any("would add 3 forward passes" in str(w.message) for w in caught)
