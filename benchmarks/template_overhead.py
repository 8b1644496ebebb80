"""Overhead of the multimodal Avalanche template over a hand-written PyTorch loop.

Both train the same model on the same multimodal data with the same loader
settings (batch size, collate, shuffling) and optimizer for one epoch; the
runs alternate and repeat, and the script prints the median time of each and
the median of the per-repeat ratios (template / plain). Target: <= 1.10 on a
small model where compute dominates.

Usage: ``python benchmarks/template_overhead.py [--repeats 7] [--samples 2048]``
"""

from __future__ import annotations

import argparse
import warnings
import statistics
import time

import torch
from torch.utils.data import DataLoader

from avalanche_mm.data import make_multimodal_dataset, to_device
from avalanche_mm.strategies import Naive


class ComputeBoundFusion(torch.nn.Module):
    """Image CNN + text embedding-bag + MLP head: small, but compute dominates the step."""

    def __init__(self, n_classes=10, vocab=1000, width=64):
        super().__init__()
        self.cnn = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )
        self.emb = torch.nn.Embedding(vocab, width, padding_idx=0)
        self.head = torch.nn.Sequential(torch.nn.Linear(2 * width, 256), torch.nn.ReLU(), torch.nn.Linear(256, n_classes))

    def forward(self, x):
        mask = x.padding_mask("text").float().unsqueeze(-1)
        text = (self.emb(x["text"]) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(torch.cat([self.cnn(x["image"]), text], 1))


def make_data(n):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 16, (n,), generator=g)
    return make_multimodal_dataset(
        {
            "image": torch.randn(n, 3, 16, 16, generator=g),
            "text": [torch.randint(1, 1000, (int(l),), generator=g) for l in lengths],
        },
        torch.randint(0, 10, (n,), generator=g).tolist(),
        variable=["text"],
    )


def plain_epoch(model, opt, dataset, bs, seed):
    loader = DataLoader(
        dataset, batch_size=bs, shuffle=True, collate_fn=dataset.collate_fn,
        generator=torch.Generator().manual_seed(seed),
    )
    crit = torch.nn.CrossEntropyLoss()
    model.train()
    for x, y, _t in loader:
        x, y = to_device(x, "cpu"), y.to("cpu")
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()


def template_epoch(strategy, experience):
    strategy.train(experience)


def main():
    warnings.filterwarnings("ignore", message="No loggers specified")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.training.plugins import EvaluationPlugin

    data = make_data(args.samples)
    bench = class_incremental_benchmark({"train": data, "test": data}, num_experiences=1)
    experience = bench.train_stream[0]

    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    # one model and optimizer for both paths: the loops, not two diverging models, are compared
    model_a = ComputeBoundFusion()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.01)
    strategy = Naive(
        model=model_a, optimizer=opt_a, criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=args.batch_size, train_epochs=1,
        evaluator=EvaluationPlugin(loggers=[]),  # no metrics: measure the loop itself
    )
    # warm-up both paths once
    plain_epoch(model_a, opt_a, experience.dataset, args.batch_size, 0)
    template_epoch(strategy, experience)

    plain_t, tmpl_t, ratios = [], [], []
    for r in range(args.repeats):
        # alternate which path runs first (ABBA) so drift in machine load cancels out
        order = ("plain", "template") if r % 2 == 0 else ("template", "plain")
        times = {}
        for which in order:
            t0 = time.perf_counter()
            if which == "plain":
                plain_epoch(model_a, opt_a, experience.dataset, args.batch_size, r)
            else:
                template_epoch(strategy, experience)
            times[which] = time.perf_counter() - t0
        plain_t.append(times["plain"])
        tmpl_t.append(times["template"])
        ratios.append(times["template"] / times["plain"])
    print(f"samples={args.samples} batch={args.batch_size} repeats={args.repeats} threads={torch.get_num_threads()}")
    print(f"plain PyTorch loop : median {statistics.median(plain_t):.3f} s/epoch")
    print(f"avalanche-mm Naive : median {statistics.median(tmpl_t):.3f} s/epoch")
    print(f"overhead ratio (template / plain), median of {args.repeats}: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
