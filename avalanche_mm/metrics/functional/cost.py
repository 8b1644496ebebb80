"""Cost accounting helpers: parameter counts, growth and throughput."""

from typing import Dict, Sequence, Tuple

import numpy as np
from torch import nn


def count_parameters(model: nn.Module) -> Tuple[int, int]:
    """Number of trainable (``requires_grad``) and total parameter elements of ``model``.

    Shared parameters are counted once (``model.parameters()`` deduplicates them).

    :param model: any ``torch.nn.Module``.
    :return: ``(trainable, total)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"count_parameters expects a torch.nn.Module; got {type(model).__name__}"
        )
    trainable = 0
    total = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def parameter_growth(counts: Sequence[int]) -> np.ndarray:
    """Growth of a parameter count over the stream, relative to the first experience.

    :param counts: the count after each experience (first must be > 0).
    :return: ``counts[t] / counts[0]`` for every ``t``.
    """
    arr = np.asarray(counts, dtype=np.float64).reshape(-1)
    if arr.shape[0] == 0 or arr[0] <= 0:
        raise ValueError(
            f"parameter_growth needs a positive first count; got {arr.tolist()}"
        )
    return arr / arr[0]


def throughput(num_samples: int, seconds: float) -> float:
    """Samples per second. Raises when ``seconds`` is not positive.

    :param num_samples: number of processed samples.
    :param seconds: elapsed wall-clock time.
    """
    if seconds <= 0:
        raise ValueError(
            f"throughput needs a positive duration; got {seconds} s for {num_samples} samples"
        )
    return float(num_samples) / float(seconds)


def cost_summary(trainable: Sequence[int], total: Sequence[int]) -> Dict[str, float]:
    """Stream-level parameter summary from per-experience counts.

    :return: ``{"trainable_sum", "total_last", "total_growth", "trainable_growth"}``: the sum of
        trainable parameters over experiences (parameters a method had to update), the final
        total, and final / first ratios.
    """
    tr = np.asarray(trainable, dtype=np.float64).reshape(-1)
    to = np.asarray(total, dtype=np.float64).reshape(-1)
    if tr.shape != to.shape or tr.shape[0] == 0:
        raise ValueError(
            f"trainable and total need one count per experience, same length; got "
            f"{tr.shape[0]} and {to.shape[0]}"
        )
    return {
        "trainable_sum": float(tr.sum()),
        "total_last": float(to[-1]),
        "total_growth": float(parameter_growth(to)[-1]),
        "trainable_growth": float(tr[-1] / tr[0]) if tr[0] > 0 else float("nan"),
    }


__all__ = ["count_parameters", "parameter_growth", "throughput", "cost_summary"]
