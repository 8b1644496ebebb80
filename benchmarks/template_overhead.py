"""Overhead of the multimodal Avalanche template over a hand-written PyTorch loop.

Three paths train the same model (one model and optimizer, so no two diverging
copies are compared) for one epoch on the same samples with the same batch size,
shuffling and optimizer:

- **plain PyTorch** (the fair baseline): a plain ``torch.utils.data.Dataset`` of
  tensors (text pre-padded, with its mask) and torch's ``default_collate``;
- **plain loop over our data path**: the same loop over
  ``make_multimodal_dataset`` + ``MultimodalCollate`` (its own line: the cost of
  the multimodal data layer);
- **avalanche-mm Naive**: the multimodal Avalanche template on that dataset.

The paths rotate over ``--repeats`` rounds; one line per figure, median and range
of the epoch times and of the per-round ratios to the plain baseline.

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
        return self.core(x["image"], x["text"], x.padding_mask("text"))

    def core(self, image, tokens, mask):
        mask = mask.float().unsqueeze(-1)
        text = (self.emb(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(torch.cat([self.cnn(image), text], 1))


class PlainDataset(torch.utils.data.Dataset):
    """What a plain PyTorch user writes: tensors, text pre-padded with its mask."""

    def __init__(self, images, texts, targets):
        longest = max(len(t) for t in texts)
        self.images = images
        self.tokens = torch.zeros(len(texts), longest, dtype=torch.long)
        self.mask = torch.zeros(len(texts), longest, dtype=torch.bool)
        for i, t in enumerate(texts):
            self.tokens[i, : len(t)] = t
            self.mask[i, : len(t)] = True
        self.targets = torch.as_tensor(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.tokens[i], self.mask[i], self.targets[i]


def make_data(n):
    """``(our multimodal dataset, the plain dataset)`` of the same samples."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 16, (n,), generator=g)
    images = torch.randn(n, 3, 16, 16, generator=g)
    texts = [torch.randint(1, 1000, (int(l),), generator=g) for l in lengths]
    targets = torch.randint(0, 10, (n,), generator=g).tolist()
    ours = make_multimodal_dataset({"image": images, "text": texts}, targets, variable=["text"])
    return ours, PlainDataset(images, texts, targets)


def plain_epoch(model, opt, dataset, bs, seed):
    """The fair baseline: plain Dataset, torch's default collate."""
    loader = DataLoader(dataset, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(seed))
    crit = torch.nn.CrossEntropyLoss()
    model.train()
    for image, tokens, mask, y in loader:
        opt.zero_grad()
        loss = crit(model.core(image, tokens, mask), y)
        loss.backward()
        opt.step()


def our_data_epoch(model, opt, dataset, bs, seed):
    """The same loop over our dataset and collate."""
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

    data, plain_data = make_data(args.samples)
    bench = class_incremental_benchmark({"train": data, "test": data}, num_experiences=1)
    experience = bench.train_stream[0]

    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    # one model and optimizer for every path: the loops, not diverging models, are compared
    model_a = ComputeBoundFusion()
    opt_a = torch.optim.SGD(model_a.parameters(), lr=0.01)
    strategy = Naive(
        model=model_a, optimizer=opt_a, criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=args.batch_size, train_epochs=1,
        evaluator=EvaluationPlugin(loggers=[]),  # no metrics: measure the loop itself
    )
    paths = {
        "plain": lambda r: plain_epoch(model_a, opt_a, plain_data, args.batch_size, r),
        "data": lambda r: our_data_epoch(model_a, opt_a, experience.dataset, args.batch_size, r),
        "template": lambda r: template_epoch(strategy, experience),
    }
    for fn in paths.values():  # warm-up
        fn(0)

    times = {k: [] for k in paths}
    ratios = {"data": [], "template": []}
    names = list(paths)
    for r in range(args.repeats):
        order = names[r % 3:] + names[: r % 3]  # rotate which path runs first
        if r % 2:
            order.reverse()
        t = {}
        for which in order:
            t0 = time.perf_counter()
            paths[which](r)
            t[which] = time.perf_counter() - t0
            times[which].append(t[which])
        for k in ratios:
            ratios[k].append(t[k] / t["plain"])

    def fig(label, xs, unit):
        print(f"{label}: median {statistics.median(xs):.3f}{unit} (range {min(xs):.3f}-{max(xs):.3f}, "
              f"{len(xs)} interleaved repeats)")

    print(f"# samples={args.samples} batch={args.batch_size} threads={torch.get_num_threads()}")
    fig("plain PyTorch (plain Dataset + default_collate) epoch", times["plain"], " s")
    fig("plain loop over avalanche-mm data (make_multimodal_dataset + MultimodalCollate) epoch", times["data"], " s")
    fig("avalanche-mm Naive epoch", times["template"], " s")
    fig("data-path ratio (our data / plain)", ratios["data"], "")
    fig("template overhead ratio (Naive / plain)", ratios["template"], "")


if __name__ == "__main__":
    main()
