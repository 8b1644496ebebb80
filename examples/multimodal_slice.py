"""Multimodal continual learning with stock Avalanche code and one changed import.

The only difference from an ordinary Avalanche script is
``from avalanche_mm.strategies import Naive, Replay, LwF`` instead of
``from avalanche.training import ...``: the data are image + variable-length
text + audio samples, the evaluation plugin, metrics and loggers are
Avalanche's own.

Run: ``python examples/multimodal_slice.py``
"""

import io
import sys

import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics, loss_metrics
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_mm.benchmarks.toy import ToyFusionNet, toy_benchmark
from avalanche_mm.strategies import LwF, Naive, Replay


def main(log=sys.stdout):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    benchmark = toy_benchmark(n_experiences=4, n_classes=8, n_per_class=32, seed=0)
    results = {}
    for name, cls, extra in [
        ("Naive", Naive, {}),
        ("Replay", Replay, {"mem_size": 64}),
        ("LwF", LwF, {"alpha": 2.0, "temperature": 2.0}),
    ]:
        torch.manual_seed(0)
        model = ToyFusionNet(n_classes=8, vocab_size=benchmark.tokenizer.vocab_size)
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            loss_metrics(stream=True),
            forgetting_metrics(stream=True),
            loggers=[TextLogger(io.StringIO())],  # any Avalanche logger works here
        )
        strategy = cls(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
            criterion=torch.nn.CrossEntropyLoss(),
            train_mb_size=16,
            train_epochs=2,
            eval_mb_size=64,
            evaluator=evaluator,
            **extra,
        )
        for experience in benchmark.train_stream:
            strategy.train(experience)
            metrics = strategy.eval(benchmark.test_stream)
        results[name] = (
            metrics["Top1_Acc_Stream/eval_phase/test_stream"],
            metrics["StreamForgetting/eval_phase/test_stream"],
        )
    print(f"{'strategy':<10} {'accuracy':>9} {'forgetting':>11}", file=log)
    for name, (acc, fgt) in results.items():
        print(f"{name:<10} {acc:>9.3f} {fgt:>11.3f}", file=log)
    return results


if __name__ == "__main__":
    main()
