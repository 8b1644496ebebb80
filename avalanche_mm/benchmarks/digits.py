"""Real handwritten digits (scikit-learn's 8x8 digits) as a multimodal dataset.

scikit-learn ships the UCI optical-recognition digits (1797 images, 8x8,
intensities 0..16) inside the package, so this benchmark is real data that
works offline. Each sample has:

- ``image``: ``FloatTensor[1, 8, 8]`` in ``[0, 1]``;
- ``text``: a caption naming the digit (``"a handwritten digit seven"``);
  ``caption_noise`` replaces the named digit by a random one with that
  probability (a less informative text modality);
- ``audio``: a sonification of the image (columns scanned left to right as
  time, rows as frequency bands, intensity as loudness), as a log
  spectrogram ``[33, T]`` or the waveform ``[L]``.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from avalanche_mm.data import WordTokenizer, make_multimodal_dataset

from .scenarios import MultimodalScenario, class_incremental_scenario

DIGIT_NAMES: Tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)
_TEMPLATES = (
    "a handwritten digit {}",
    "the number {}",
    "a scanned {}",
    "a small image of the digit {}",
    "someone wrote a {}",
)


def digits_tokenizer(*, max_length: Optional[int] = None) -> WordTokenizer:
    """A :class:`~avalanche_mm.data.WordTokenizer` covering every digit caption."""
    words = list(DIGIT_NAMES)
    for t in _TEMPLATES:
        words.extend(t.replace("{}", " ").split())
    return WordTokenizer(words, max_length=max_length)


def _sonify(images: np.ndarray, *, audio_format: str) -> torch.Tensor:
    """Images ``[N, 8, 8]`` in [0, 1] -> waveforms or log spectrograms."""
    sr, per_col = 4096.0, 128
    n, rows, cols = images.shape
    t = torch.arange(cols * per_col, dtype=torch.float32) / sr
    freqs = torch.linspace(1600.0, 300.0, rows)  # top row = high pitch
    tones = torch.sin(2 * np.pi * freqs[:, None] * t[None])  # [rows, L]
    amps = torch.from_numpy(images.astype(np.float32)).repeat_interleave(per_col, dim=2)
    wave = (amps * tones[None]).sum(dim=1) / rows  # [N, L]
    if audio_format == "waveform":
        return wave
    spec = torch.stft(
        wave, n_fft=64, hop_length=32, window=torch.hann_window(64), return_complex=True
    ).abs()
    return torch.log1p(4.0 * spec)


def load_digits_multimodal(
    *,
    modalities: Sequence[str] = ("image", "text", "audio"),
    test_fraction: float = 0.25,
    seed: int = 0,
    caption_noise: float = 0.0,
    audio_format: str = "spectrogram",
    tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
):
    """The multimodal digits train and test datasets.

    :param modalities: subset of ``("image", "text", "audio")``.
    :param test_fraction: fraction of each class in the test split.
    :param seed: seed of the split and of the captions.
    :param caption_noise: probability that a caption names a random digit.
    :param audio_format: ``"spectrogram"`` or ``"waveform"``.
    :param tokenizer: text tokenizer (default :func:`digits_tokenizer`).
    :return: ``(train, test)`` task-aware multimodal datasets.
    """
    from sklearn.datasets import load_digits

    valid = ("image", "text", "audio")
    unknown = [m for m in modalities if m not in valid]
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {valid}, got {list(modalities)}.")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    if not 0.0 <= float(caption_noise) <= 1.0:
        raise ValueError(f"caption_noise must be in [0, 1], got {caption_noise!r}.")
    if audio_format not in ("spectrogram", "waveform"):
        raise ValueError(f"audio_format must be 'spectrogram' or 'waveform', got {audio_format!r}.")
    raw = load_digits()
    images = (raw.images / 16.0).astype(np.float32)
    targets = raw.target.astype(int)
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(test_fraction * len(idx)))
        test_idx.extend(idx[:k].tolist())
        train_idx.extend(idx[k:].tolist())
    said = targets.copy()
    flip = rng.random(len(targets)) < caption_noise
    said[flip] = rng.integers(0, 10, int(flip.sum()))
    tpl = rng.integers(0, len(_TEMPLATES), len(targets))
    captions = [_TEMPLATES[tpl[i]].format(DIGIT_NAMES[said[i]]) for i in range(len(targets))]
    columns = {}
    if "image" in modalities:
        columns["image"] = torch.from_numpy(images[:, None])
    if "text" in modalities:
        columns["text"] = captions
    if "audio" in modalities:
        columns["audio"] = _sonify(images, audio_format=audio_format)
    tok = tokenizer or digits_tokenizer()

    def build(idx):
        idx = sorted(idx)
        cols = {
            k: ([v[i] for i in idx] if isinstance(v, list) else v[idx]) for k, v in columns.items()
        }
        return make_multimodal_dataset(
            cols,
            targets[idx].tolist(),
            tokenizers={"text": tok} if "text" in cols else None,
            variable=["text"] if "text" in cols else None,
        )

    return build(train_idx), build(test_idx)


def digits_class_incremental(
    *,
    num_experiences: int = 5,
    class_order: Optional[Sequence[int]] = None,
    seed: int = 0,
    modalities: Sequence[str] = ("image", "text", "audio"),
    test_fraction: float = 0.25,
    caption_noise: float = 0.0,
    audio_format: str = "spectrogram",
    task_labels: bool = False,
    validation_size: float = 0.0,
    tokenizer: Optional[Callable[[str], torch.Tensor]] = None,
) -> MultimodalScenario:
    """Class-incremental multimodal digits (real scikit-learn 8x8 digits).

    :param num_experiences: number of experiences (divides 10).
    :param class_order: fixed class order (default: random by ``seed``).
    :param seed: seed of the split, captions and class order.
    :param modalities: subset of ``("image", "text", "audio")``.
    :param test_fraction: fraction of each class in the test split.
    :param caption_noise: probability that a caption names a random digit.
    :param audio_format: ``"spectrogram"`` or ``"waveform"``.
    :param task_labels: task-incremental variant.
    :param validation_size: fraction of each class in a ``valid`` stream.
    :param tokenizer: text tokenizer (default :func:`digits_tokenizer`).
    """
    train, test = load_digits_multimodal(
        modalities=modalities,
        test_fraction=test_fraction,
        seed=seed,
        caption_noise=caption_noise,
        audio_format=audio_format,
        tokenizer=tokenizer,
    )
    return class_incremental_scenario(
        train,
        test,
        num_experiences=num_experiences,
        class_order=class_order,
        seed=seed if class_order is None else 0,
        class_names=list(DIGIT_NAMES),
        task_labels=task_labels,
        validation_size=validation_size,
        name="digits",
    )


__all__ = ["DIGIT_NAMES", "digits_tokenizer", "load_digits_multimodal", "digits_class_incremental"]
