"""The plugin metrics inside EvaluationPlugin with the multimodal template on a tiny stream.

One module-scoped run (baseline eval, then train + eval on each of two experiences) feeds the
text logger, the TensorBoard logger and our ResultsLogger; the tests check what reached each
of them and recompute values independently.
"""

import io

import numpy as np
import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import TensorboardLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin
from torch.utils.data import DataLoader

from avalanche_mm.benchmarks.toy import ToyFusionNet, make_toy_datasets, toy_benchmark
from avalanche_mm.metrics import (
    AccuracyMatrix,
    CrossModalAlignment,
    ProbeSet,
    ResultsLogger,
    ZeroShotRetention,
    cost_metrics,
    modality_imbalance_metrics,
    mtil_summary,
)
from avalanche_mm.metrics.functional import forgetting
from avalanche_mm.strategies import Naive

N_PER_CLASS = 8
EVAL_MB = 16


class TinyVL(ToyFusionNet):
    """The toy fusion net plus CLIP-style encoders (image tower and text tower)."""

    def encode_image(self, images):
        return torch.nn.functional.normalize(self.image(images), dim=-1)

    def encode_text(self, tokens):
        mask = (tokens != 0).float().unsqueeze(-1)
        emb = (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(emb, dim=-1)


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("metrics_run")
    bench = toy_benchmark(n_experiences=2, n_classes=4, n_per_class=N_PER_CLASS, missing_audio_rate=0.3)
    _, control, _ = make_toy_datasets(n_classes=4, n_per_class=4, seed=7)
    model = TinyVL(n_classes=4, vocab_size=bench.tokenizer.vocab_size, hidden=16)
    for p in model.audio.parameters():  # frozen part: trainable < total
        p.requires_grad_(False)
    imbalance = modality_imbalance_metrics(contribution=True, imbalance_index=True, shapley=True, ogm_ge=True)
    acc_matrix = AccuracyMatrix()
    retention = ZeroShotRetention(control, name="toyctl", batch_size=16)
    probe = ProbeSet(dataset=bench.test_stream[0].dataset, batch_size=16)
    align = CrossModalAlignment(probe, ks=(1, 5))
    costs = cost_metrics()
    text_out = io.StringIO()
    tb = TensorboardLogger(tb_log_dir=str(tmp / "tb"))
    results = ResultsLogger(path=str(tmp / "results"))
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        acc_matrix,
        imbalance,
        retention,
        align,
        costs,
        loggers=[TextLogger(text_out), tb, results],
    )
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=8,
        eval_mb_size=EVAL_MB,
        train_epochs=1,
        evaluator=evaluator,
    )
    counter = ForwardCounter(model)
    strategy.eval(bench.test_stream)  # before training: baseline row
    calls_before = counter.calls
    for exp in bench.train_stream:
        strategy.train(exp)
        strategy.eval(bench.test_stream)
    tb.writer.flush()
    return dict(
        bench=bench,
        model=model,
        strategy=strategy,
        evaluator=evaluator,
        acc_matrix=acc_matrix,
        imbalance=imbalance,
        retention=retention,
        align=align,
        costs=costs,
        text=text_out.getvalue(),
        tb_dir=tmp / "tb",
        results=results,
        baseline_eval_calls=calls_before,
    )


EXPECTED_NAMES = [
    "MTIL_Transfer/eval_phase/test_stream",
    "AccMatrix_Forgetting/eval_phase/test_stream",
    "AccMatrix_FWT/eval_phase/test_stream",
    "FusedAcc_Exp/eval_phase/test_stream/Exp001",
    "UnimodalAcc_audio_Exp/eval_phase/test_stream/Exp000",
    "UnimodalAcc_image_Stream/eval_phase/test_stream",
    "ModalityContribution_text_Stream/eval_phase/test_stream",
    "ModalityShapley_image_Exp/eval_phase/test_stream/Exp000",
    "ModalityImbalanceIndex_Stream/eval_phase/test_stream",
    "UnimodalForgetting_image_Stream/eval_phase/test_stream",
    "OGMGE_Ratio_audio_Epoch/train_phase/train_stream",
    "ZeroShot_Retention/toyctl",
    "Retrieval_i2t_R1/eval_phase/probe_probe",
    "Align_ModalityGap/eval_phase/probe_probe",
    "Drift_ModXKL/eval_phase/probe_probe",
    "Drift_InterModalDeviation/eval_phase/probe_probe",
    "Params_Trainable_Exp/train_phase/train_stream/Exp001",
    "TrainThroughput_Exp/train_phase/train_stream/Exp000",
    "PeakRSS_MB_Exp/train_phase/train_stream/Exp001",
]


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_metric_reaches_text_tensorboard_and_results_loggers(run, name):
    assert name in run["text"], f"{name} missing from the TextLogger output"
    assert name in _tb_tags(run["tb_dir"]), f"{name} missing from TensorBoard"
    assert name in {r["name"] for r in ResultsLogger.read(run["results"].path)}


_TB_CACHE = {}


def _tb_tags(path):
    if path not in _TB_CACHE:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        _TB_CACHE[path] = set(acc.Tags()["scalars"])
    return _TB_CACHE[path]


def _all(run, name):
    return run["evaluator"].get_all_metrics()[name][1]


def test_accuracy_matrix_matches_avalanche_experience_accuracy(run):
    mat = run["acc_matrix"].matrix
    base = run["acc_matrix"].baseline
    assert mat.shape == (2, 2) and np.all(np.isfinite(mat))
    for i in range(2):
        history = _all(run, f"Top1_Acc_Exp/eval_phase/test_stream/Exp{i:03d}")
        np.testing.assert_allclose(history, [base[i], mat[0, i], mat[1, i]], atol=1e-6)
    logged = _all(run, "MTIL_Transfer/eval_phase/test_stream")[-1]
    assert logged == pytest.approx(mtil_summary(mat)["transfer"])
    assert _all(run, "AccMatrix_Forgetting/eval_phase/test_stream")[-1] == pytest.approx(
        forgetting(mat)
    )


def _manual_unimodal_accuracy(run, exp_id, modality):
    strategy, model = run["strategy"], run["model"]
    ds = run["bench"].test_stream[exp_id].dataset.eval()
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for x, y, _ in DataLoader(ds, batch_size=EVAL_MB, collate_fn=ds.collate_fn):
            others = [m for m in x.modalities if m != modality]
            pred = model(x.drop(*others)).argmax(1)
            present = x.present[modality]
            correct += int(((pred == y) & present).sum())
            total += int(present.sum())
    return correct / total


def test_unimodal_accuracy_counts_only_samples_where_the_modality_is_present(run):
    for m in ("audio", "image"):
        logged = _all(run, f"UnimodalAcc_{m}_Exp/eval_phase/test_stream/Exp001")[-1]
        assert logged == pytest.approx(_manual_unimodal_accuracy(run, 1, m))


def test_ablation_passes_are_shared_and_counted(run):
    # 3 modalities with Shapley: 2**3 - 1 = 7 distinct ablations per evaluated minibatch,
    # shared by all five evaluation metrics (without sharing it would be 7 + 3 + 3 + 3 + 3)
    n_batches = sum(len(e.dataset) // EVAL_MB + bool(len(e.dataset) % EVAL_MB)
                    for e in run["bench"].test_stream)
    ablation = run["imbalance"][0].ablation
    assert all(m.ablation is ablation for m in run["imbalance"][:5])
    assert ablation.extra_passes == 3 * n_batches * 7
    # the baseline eval: 1 normal + 7 ablated forwards per minibatch, +1 control-set pass
    # before training would come later (before_training), probe encoders bypass forward()
    assert run["baseline_eval_calls"] == n_batches * (1 + 7)


def test_shapley_and_contribution_relations(run):
    res = {}
    for m in run["imbalance"]:
        res.update(m.result())
    phi = {k: v for k, v in res.items() if k.startswith("ModalityShapley_")}
    unimodal = run["imbalance"][0].result()
    assert len(phi) == 3
    # efficiency: sum of Shapley values = acc(all) - acc(none)
    assert sum(phi.values()) <= unimodal["FusedAcc"] + 1e-9
    assert 0.0 <= res["ModalityImbalanceIndex"] <= 1.0 or np.isnan(res["ModalityImbalanceIndex"])


def test_unimodal_forgetting_matrices(run):
    forget = run["imbalance"][4]
    mats = forget.matrices
    assert set(mats) == {"image", "text", "audio"}
    for m, mat in mats.items():
        assert mat.shape == (2, 2)
        logged = _all(run, f"UnimodalForgetting_{m}_Stream/eval_phase/test_stream")[-1]
        assert logged == pytest.approx(forgetting(mat))


def test_ogm_ge_ratio_values(run):
    ratios = run["imbalance"][5].result()
    assert set(ratios) == {"image", "text", "audio"}
    assert all(r > 0 for r in ratios.values())
    score = _all(run, "OGMGE_Score_image_Epoch/train_phase/train_stream")
    assert all(0.0 < s < 1.0 for s in score)


def test_zero_shot_retention_history(run):
    ret = run["retention"]
    assert ret.initial is not None and len(ret.history) == 2
    logged = _all(run, "ZeroShot_Retention/toyctl")
    assert logged[-1] == pytest.approx(ret.history[-1] / ret.initial)


def test_cross_modal_alignment_and_drift(run):
    res = run["align"].result()
    assert 0.0 <= res["i2t_R@1"] <= 1.0 and 0.0 <= res["mean_recall"] <= 1.0
    # drift is logged after each training experience (versions 1 and 2), not at the baseline
    kl = _all(run, "Drift_ModXKL/eval_phase/probe_probe")
    assert len(kl) == 2 and all(v > 0 for v in kl)
    assert len(_all(run, "Retrieval_i2t_R1/eval_phase/probe_probe")) == 3


def test_cost_metrics_values(run):
    params, timing, memory = run["costs"]
    model = run["model"]
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.audio.parameters())
    assert params.trainable == [total - frozen] * 2
    assert params.total == [total] * 2
    assert params.result()["trainable_cumulative"] == 2 * (total - frozen)
    assert timing.samples == [2 * N_PER_CLASS, 2 * N_PER_CLASS]
    assert all(s > 0 for s in timing.seconds)
    assert memory.result()["rss_mb"] > 10


def test_results_logger_records_are_parsed(run):
    recs = ResultsLogger.read(run["results"].path)
    rec = next(r for r in recs if r["name"] == "UnimodalAcc_audio_Exp/eval_phase/test_stream/Exp000")
    assert rec["metric"] == "UnimodalAcc_audio_Exp"
    assert rec["phase"] == "eval" and rec["stream"] == "test"
    assert rec["task"] is None and rec["experience"] == 0  # class-incremental: no task part
    assert isinstance(rec["value"], float) and isinstance(rec["x_plot"], int)
    assert run["results"].written == len(recs)
