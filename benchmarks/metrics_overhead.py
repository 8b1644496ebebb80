"""Evaluation overhead of the per-modality metrics of avalanche_mm.metrics.

Runs ``strategy.eval(test_stream)`` on the toy multimodal stream (image, text, audio) with
``ToyFusionNet`` under several metric sets and reports the median wall-clock time of one
evaluation, its ratio to the accuracy-only baseline, and the number of extra forward passes
per evaluated minibatch counted by the shared ``ModalityAblation``.

Usage::

    python benchmarks/metrics_overhead.py [--n-per-class 64] [--eval-mb 32] [--repeats 5]
"""

import argparse
import statistics
import time
import warnings

import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.benchmarks.toy import ToyFusionNet, toy_benchmark
from avalanche_mm.metrics import modality_imbalance_metrics
from avalanche_mm.strategies import Naive


def _configs():
    two = ["image", "audio"]
    return [
        ("accuracy only", lambda: []),
        ("unimodal acc (M=3)", lambda: modality_imbalance_metrics(
            contribution=False, imbalance_index=False, forgetting=False)),
        ("contribution (M=3)", lambda: modality_imbalance_metrics(
            unimodal=False, contribution=True, imbalance_index=False, forgetting=False)),
        ("default set (M=2)", lambda: modality_imbalance_metrics(modalities=two)),
        ("default set (M=3)", lambda: modality_imbalance_metrics()),
        ("everything asked (M=3)", lambda: modality_imbalance_metrics(
            contribution=True, imbalance_index=True)),
        ("everything + Shapley (M=3)", lambda: modality_imbalance_metrics(
            contribution=True, imbalance_index=True, shapley=True)),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=64)
    parser.add_argument("--eval-mb", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="No loggers specified")

    torch.manual_seed(0)
    bench = toy_benchmark(n_experiences=2, n_classes=4, n_per_class=args.n_per_class)
    n_batches = sum(-(-len(e.dataset) // args.eval_mb) for e in bench.test_stream)
    print(f"toy stream: {sum(len(e.dataset) for e in bench.test_stream)} test samples, "
          f"{n_batches} eval minibatches of {args.eval_mb}; torch threads "
          f"{torch.get_num_threads()}; median of {args.repeats} evaluations")
    strategies = []
    for label, make in _configs():
        metrics = make()
        model = ToyFusionNet(n_classes=4, vocab_size=bench.tokenizer.vocab_size, hidden=args.hidden)
        strategy = Naive(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
            criterion=torch.nn.CrossEntropyLoss(),
            eval_mb_size=args.eval_mb,
            evaluator=EvaluationPlugin(accuracy_metrics(experience=True), metrics, loggers=[]),
        )
        strategy.eval(bench.test_stream)  # warm-up
        strategies.append((label, metrics, strategy, []))
    # round-robin so that load changes on a shared machine hit every configuration alike
    for _ in range(args.repeats):
        for _, _, strategy, times in strategies:
            start = time.perf_counter()
            strategy.eval(bench.test_stream)
            times.append(time.perf_counter() - start)
    rows = []
    baseline = statistics.median(strategies[0][3])
    for label, metrics, _, times in strategies:
        med = statistics.median(times)
        passes = metrics[0].ablation.extra_passes / ((args.repeats + 1) * n_batches) if metrics else 0
        rows.append((label, med, med / baseline, passes))
    print(f"{'metric set':28s} {'eval s':>8s} {'x base':>7s} {'extra passes/mb':>16s}")
    for label, med, ratio, passes in rows:
        print(f"{label:28s} {med:8.3f} {ratio:7.2f} {passes:16.1f}")


if __name__ == "__main__":
    main()
