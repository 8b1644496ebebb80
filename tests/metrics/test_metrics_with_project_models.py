"""The metrics against the project's own models: FusionModel (per-modality logits for OGM-GE and
ablation) and a ZeroShotClassifier over the tiny open_clip backbone (encoders for alignment)."""

import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.data import make_multimodal_dataset
from avalanche_mm.metrics import (
    CrossModalAlignment,
    ProbeSet,
    ResultsLogger,
    modality_imbalance_metrics,
)
from avalanche_mm.models import FusionModel, ZeroShotClassifier, build_backbone
from avalanche_mm.models.fusion import MLPEncoder
from avalanche_mm.strategies import Naive


def _stream(modalities, n_classes=4, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    splits = {}
    for split in ("train", "test"):
        data = {name: make(y, g) for name, make in modalities.items()}
        splits[split] = make_multimodal_dataset(data, y.tolist())
    return class_incremental_benchmark(splits, num_experiences=2, class_order=list(range(n_classes)))


def test_fusion_model_feeds_ogm_ge_and_ablation_metrics(tmp_path):
    centres = torch.randn(4, 6, generator=torch.Generator().manual_seed(1)) * 3
    bench = _stream({
        "audio": lambda y, g: centres[y] + 0.3 * torch.randn(len(y), 6, generator=g),
        "visual": lambda y, g: torch.randn(len(y), 6, generator=g),  # pure noise
    })
    model = FusionModel(
        encoders={m: MLPEncoder(in_dim=6, out_dim=8, hidden_dims=(16,)) for m in ("audio", "visual")},
        num_classes=4,
    )
    metrics = modality_imbalance_metrics(ogm_ge=True, forgetting=False)
    logger = ResultsLogger(path=str(tmp_path))
    strategy = Naive(
        model=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.02),
        criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=15,
        eval_mb_size=32, evaluator=EvaluationPlugin(metrics, loggers=[logger]),
    )
    strategy.train(bench.train_stream[0])
    strategy.eval(bench.test_stream[:1])
    ratios = metrics[-1].result()
    assert ratios["audio"] > 1.0 > ratios["visual"]  # the informative modality dominates
    contrib = metrics[1].result()
    assert contrib["ModalityContribution_audio"] > contrib["ModalityContribution_visual"]
    names = {r["name"] for r in ResultsLogger.read(str(tmp_path))}
    assert "OGMGE_Ratio_audio_Epoch/train_phase/train_stream" in names
    assert "UnimodalAcc_visual_Exp/eval_phase/test_stream/Exp000" in names


@pytest.fixture(scope="module")
def tiny_clip():
    return build_backbone("tiny-openclip", seed=0)


def test_zero_shot_clip_classifier_feeds_alignment_and_drift(tiny_clip, tmp_path):
    bench = _stream({"image": lambda y, g: torch.randn(len(y), 3, 32, 32, generator=g)}, n=16)
    names = ["red", "green", "blue", "yellow"]
    model = ZeroShotClassifier(backbone=tiny_clip, class_names=names)
    g = torch.Generator().manual_seed(2)
    probe = ProbeSet(torch.randn(8, 3, 32, 32, generator=g),
                     tiny_clip.tokenize([f"a photo of a {c} thing" for c in names * 2]))
    metric = CrossModalAlignment(probe, ks=(1, 5))
    logger = ResultsLogger(path=str(tmp_path))
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        criterion=torch.nn.CrossEntropyLoss(), train_mb_size=8, eval_mb_size=8,
        evaluator=EvaluationPlugin(metric, loggers=[logger]),
    )
    strategy.eval(bench.test_stream)
    strategy.eval(bench.test_stream)  # same model version: no drift
    assert not any(k.startswith("modx") for k in metric.result())
    strategy.train(bench.train_stream[0])
    strategy.eval(bench.test_stream)
    res = metric.result()
    assert res["modx_kl"] > 0 and res["rotation_image"] > 0
    assert 0.0 <= res["argmax_consistency"] <= 1.0
    assert metric.probe_passes == 3  # one per evaluation; the reference came from an evaluation
    logged = {r["name"] for r in ResultsLogger.read(str(tmp_path))}
    assert "Drift_Rotation_text/eval_phase/probe_probe" in logged
    assert "Retrieval_t2i_R5/eval_phase/probe_probe" in logged
