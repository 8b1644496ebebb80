"""Tiny multimodal datasets shared by the benchmarks tests."""

import torch

from avalanche_mm.data import make_multimodal_dataset


def make_toy(n_per_class=6, n_classes=6, *, offset=0, text=True):
    """A tiny dataset whose image encodes (class, sample index) exactly."""
    n = n_per_class * n_classes
    targets = [c for c in range(n_classes) for _ in range(n_per_class)]
    image = torch.zeros(n, 1, 2, 2)
    image[:, 0, 0, 0] = torch.tensor(targets, dtype=torch.float)
    image[:, 0, 0, 1] = torch.arange(n, dtype=torch.float) + offset
    audio = torch.randn(n, 4, generator=torch.Generator().manual_seed(offset))
    cols = {"image": image, "audio": audio}
    if text:
        cols["text"] = [torch.tensor([c + 2] * (1 + i % 3)) for i, c in enumerate(targets)]
    return make_multimodal_dataset(cols, targets, variable=["text"] if text else None)
