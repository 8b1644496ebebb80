"""A tiny offline multimodal class-incremental stream (the vertical slice).

Each class is a (colour, tone) pair. A sample has

- ``image``: a 3x8x8 RGB patch whose colour encodes the class (plus noise),
- ``text``: a variable-length caption ("a red blob humming low ...") as word
  token ids (:class:`~avalanche_mm.data.WordTokenizer`),
- ``audio``: a 1x32 waveform whose frequency encodes the class.

It is generated in milliseconds, deterministic by seed, and used by the
foundation tests and as the default stream until the procedural world of
:mod:`avalanche_mm.benchmarks` is used.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

from avalanche_mm.data import WordTokenizer, make_multimodal_dataset

_COLOURS = [
    (1.0, 0.1, 0.1),
    (0.1, 1.0, 0.1),
    (0.1, 0.1, 1.0),
    (1.0, 1.0, 0.1),
    (1.0, 0.1, 1.0),
    (0.1, 1.0, 1.0),
    (0.6, 0.6, 0.6),
    (1.0, 0.5, 0.0),
]
_COLOUR_NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan", "grey", "orange"]
_FILLERS = ["a", "small", "blob", "that", "is", "quite", "softly", "seen", "here", "humming"]


def toy_class_names(n_classes: int) -> list:
    """Names of the toy classes (``"red"``, ``"green"``, ...)."""
    return _COLOUR_NAMES[:n_classes]


def make_toy_datasets(
    *,
    n_classes: int = 4,
    n_per_class: int = 24,
    seed: int = 0,
    missing_audio_rate: float = 0.0,
    image_size: int = 8,
) -> Tuple[object, object, WordTokenizer]:
    """Train and test multimodal datasets of the toy world.

    :param n_classes: number of classes (2 to 8).
    :param n_per_class: samples per class in each of train and test.
    :param seed: random seed (same seed, same data).
    :param missing_audio_rate: fraction of samples whose audio is missing.
    :param image_size: side of the square images.
    :return: ``(train_dataset, test_dataset, tokenizer)``.
    """
    if not 2 <= n_classes <= len(_COLOURS):
        raise ValueError(f"n_classes must be in [2, {len(_COLOURS)}], got {n_classes}.")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}.")
    if not 0.0 <= missing_audio_rate < 1.0:
        raise ValueError(f"missing_audio_rate must be in [0, 1), got {missing_audio_rate}.")
    tokenizer = WordTokenizer(_COLOUR_NAMES + _FILLERS + ["low", "high"])
    rng = np.random.default_rng(seed)
    out = []
    for split in range(2):
        n = n_classes * n_per_class
        y = np.repeat(np.arange(n_classes), n_per_class)
        colours = np.asarray(_COLOURS, dtype=np.float32)[y]
        images = colours[:, :, None, None] + 0.35 * rng.standard_normal(
            (n, 3, image_size, image_size)
        ).astype(np.float32)
        t = np.linspace(0, 1, 32, dtype=np.float32)
        freq = 2.0 + 2.0 * y[:, None]
        audio = np.sin(2 * np.pi * freq * t[None, :]) + 0.5 * rng.standard_normal((n, 32))
        audio = audio.astype(np.float32)[:, None, :]
        captions = []
        for label in y:
            n_fill = int(rng.integers(1, 6))
            words = list(rng.choice(_FILLERS, size=n_fill))
            words.insert(int(rng.integers(0, n_fill + 1)), _COLOUR_NAMES[label])
            captions.append(" ".join(words))
        missing = rng.random(n) < missing_audio_rate
        ds = make_multimodal_dataset(
            {"image": images, "text": captions, "audio": audio},
            y.tolist(),
            tokenizers={"text": tokenizer},
            missing={"audio": missing} if missing_audio_rate > 0 else None,
            variable=["text"],
        )
        out.append(ds)
    return out[0], out[1], tokenizer


def toy_benchmark(
    *,
    n_experiences: int = 2,
    n_classes: int = 4,
    n_per_class: int = 24,
    seed: int = 0,
    missing_audio_rate: float = 0.0,
    class_order: Optional[list] = None,
):
    """Class-incremental CLScenario over the toy world.

    :param n_experiences: number of experiences (must divide ``n_classes``).
    :param n_classes: number of classes.
    :param n_per_class: samples per class per split.
    :param seed: seed of the data and of the class order.
    :param missing_audio_rate: fraction of samples whose audio is missing.
    :param class_order: optional explicit class order.
    :return: an Avalanche ``CLScenario`` with ``train_stream``/``test_stream``;
        ``benchmark.class_names`` and ``benchmark.tokenizer`` are attached.
    """
    if n_experiences < 1 or n_classes % n_experiences:
        raise ValueError(
            f"n_experiences={n_experiences} must be >= 1 and divide n_classes={n_classes}."
        )
    train, test, tok = make_toy_datasets(
        n_classes=n_classes,
        n_per_class=n_per_class,
        seed=seed,
        missing_audio_rate=missing_audio_rate,
    )
    bm = class_incremental_benchmark(
        {"train": train, "test": test},
        num_experiences=n_experiences,
        class_order=class_order if class_order is not None else list(range(n_classes)),
    )
    bm.class_names = toy_class_names(n_classes)
    bm.tokenizer = tok
    return bm


class ToyFusionNet(torch.nn.Module):
    """A small late-fusion classifier for the toy world (image, text, audio).

    Each modality has its own encoder and linear head; the fused logits are
    the sum of the heads of the modalities present in each row. Per-modality
    logits are exposed as ``last_unimodal_logits`` after every forward.

    :param n_classes: number of output classes.
    :param vocab_size: text vocabulary size.
    :param hidden: width of each modality's embedding.
    """

    def __init__(self, *, n_classes: int, vocab_size: int, hidden: int = 32):
        super().__init__()
        self.image = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(8, hidden), torch.nn.ReLU(),
        )
        self.embed = torch.nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.audio = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, hidden), torch.nn.ReLU())
        self.heads = torch.nn.ModuleDict(
            {m: torch.nn.Linear(hidden, n_classes) for m in ("image", "text", "audio")}
        )
        self.last_unimodal_logits = {}

    def __getstate__(self):
        # the side channel holds non-leaf tensors: never copy or pickle it
        state = super().__getstate__().copy()
        state["last_unimodal_logits"] = {}
        return state

    def forward(self, x):
        feats = {"image": self.image(x["image"])}
        mask = x.padding_mask("text").float()
        emb = self.embed(x["text"]) * mask.unsqueeze(-1)
        feats["text"] = emb.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        feats["audio"] = self.audio(x["audio"])
        fused = 0
        self.last_unimodal_logits = {}
        for m, f in feats.items():
            logits = self.heads[m](f)
            self.last_unimodal_logits[m] = logits
            fused = fused + logits * x.present[m].unsqueeze(1).to(logits.dtype)
        return fused


__all__ = ["make_toy_datasets", "toy_benchmark", "toy_class_names", "ToyFusionNet"]
