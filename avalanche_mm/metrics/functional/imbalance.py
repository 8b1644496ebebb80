"""Modality-imbalance math: contributions, exact Shapley values, OGM-GE ratios, imbalance index.

Everything here works on plain numbers or tensors; the plugin metrics in
:mod:`avalanche_mm.metrics.imbalance` collect those numbers during evaluation/training.
"""

import itertools
import math
from typing import Dict, FrozenSet, Iterable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from avalanche_mm.metrics.functional.stream import ArrayLike, forgetting

#: the largest number of modalities :func:`shapley_values` accepts (2**n subset values).
MAX_SHAPLEY_MODALITIES = 12


def correct_predictions(logits: Tensor, targets: Tensor) -> Tensor:
    """Boolean vector: ``argmax(logits) == targets``, validating shapes.

    :param logits: ``[B, C]`` scores (or ``[B]`` already-predicted labels).
    :param targets: ``[B]`` integer targets.
    :return: a ``BoolTensor[B]``.
    """
    if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(
            f"logits and targets must be torch tensors; got {type(logits).__name__} and "
            f"{type(targets).__name__}. Models must return plain logits tensors [B, C]."
        )
    if logits.dim() not in (1, 2):
        raise ValueError(
            f"logits must be [B, C] (or predicted labels [B]); got shape {tuple(logits.shape)}"
        )
    preds = logits if logits.dim() == 1 else logits.argmax(dim=-1)
    if preds.shape[0] != targets.reshape(-1).shape[0]:
        raise ValueError(
            f"logits and targets disagree on the batch size: {tuple(logits.shape)} vs "
            f"{tuple(targets.shape)}"
        )
    return preds.reshape(-1).to(targets.device) == targets.reshape(-1)


def accuracy(logits: Tensor, targets: Tensor) -> float:
    """Top-1 accuracy in [0, 1]. Raises on an empty batch.

    :param logits: ``[B, C]`` scores or ``[B]`` predicted labels.
    :param targets: ``[B]`` integer targets.
    """
    correct = correct_predictions(logits, targets)
    if correct.numel() == 0:
        raise ValueError("accuracy of an empty batch is undefined; got 0 samples")
    return float(correct.float().mean())


def modality_contributions(
    fused_accuracy: float, ablated_accuracies: Mapping[str, float]
) -> Dict[str, float]:
    """Contribution of each modality: ``c_m = acc(all) - acc(all without m)``.

    :param fused_accuracy: accuracy with every modality present.
    :param ablated_accuracies: modality -> accuracy with that modality removed.
    :return: modality -> contribution (negative = removing it helps).
    """
    if not ablated_accuracies:
        raise ValueError("ablated_accuracies is empty; pass modality -> accuracy without it")
    return {m: float(fused_accuracy) - float(a) for m, a in ablated_accuracies.items()}


def _normalise_subset_values(
    subset_values: Mapping[Iterable[str], float],
) -> Dict[FrozenSet[str], float]:
    values: Dict[FrozenSet[str], float] = {}
    for key, val in subset_values.items():
        if isinstance(key, str):
            raise TypeError(
                f"subset keys must be collections of modality names (e.g. frozenset({{'image'}})); "
                f"got the string {key!r}; use frozenset([{key!r}]) or ('{key}',)"
            )
        values[frozenset(key)] = float(val)
    return values


def all_subsets(modalities: Sequence[str]) -> list:
    """Every subset of ``modalities`` as frozensets, from the empty set to the full set.

    :param modalities: modality names.
    """
    mods = list(modalities)
    out = []
    for r in range(len(mods) + 1):
        out.extend(frozenset(c) for c in itertools.combinations(mods, r))
    return out


def shapley_values(
    subset_values: Mapping[Iterable[str], float],
    modalities: Union[Sequence[str], None] = None,
) -> Dict[str, float]:
    """Exact Shapley value of each modality for a value function over modality subsets.

    ``phi_m = sum_{S subset N \\ {m}} |S|! (n - |S| - 1)! / n! * (v(S + {m}) - v(S))``

    With ``v(S)`` = accuracy when only the modalities in ``S`` are present, the values add up to
    ``v(N) - v(empty set)`` (efficiency), are symmetric and give exactly 0 to a modality that
    never changes the accuracy (null player).

    :param subset_values: a value for every subset of ``modalities`` (keys: any collection of
        names; the empty subset included).
    :param modalities: the players; default: the union of all keys.
    :return: modality -> Shapley value.
    """
    if modalities is None:
        names = set()
        for key in subset_values:
            if isinstance(key, str):
                raise TypeError(
                    f"subset keys must be collections of modality names; got the string {key!r}"
                )
            names.update(key)
        modalities = sorted(names)
    mods = list(modalities)
    n = len(mods)
    if n == 0:
        raise ValueError("shapley_values needs at least one modality")
    if n > MAX_SHAPLEY_MODALITIES:
        raise ValueError(
            f"exact Shapley values need 2**n subset values; n={n} exceeds the supported maximum "
            f"{MAX_SHAPLEY_MODALITIES}"
        )
    values = _normalise_subset_values(subset_values)
    missing = [sorted(s) for s in all_subsets(mods) if s not in values]
    if missing:
        raise ValueError(
            f"shapley_values needs the value of every subset of {mods} (2**{n} = {2 ** n}); "
            f"missing: {missing}"
        )
    fact = [math.factorial(k) for k in range(n + 1)]
    out: Dict[str, float] = {}
    for m in mods:
        others = [o for o in mods if o != m]
        phi = 0.0
        for r in range(n):
            weight = fact[r] * fact[n - r - 1] / fact[n]
            for combo in itertools.combinations(others, r):
                s = frozenset(combo)
                phi += weight * (values[s | {m}] - values[s])
        out[m] = phi
    return out


def ogm_ge_scores(unimodal_logits: Mapping[str, Tensor], targets: Tensor) -> Dict[str, float]:
    """OGM-GE per-modality scores: ``s_m = sum_b softmax(z_m[b])[y_b]``.

    :param unimodal_logits: modality -> ``[B, C]`` logits of that modality's branch alone.
    :param targets: ``[B]`` integer targets.
    :return: modality -> score (a sum over the batch, in [0, B]).
    """
    if not isinstance(unimodal_logits, Mapping) or not unimodal_logits:
        raise ValueError(
            f"unimodal_logits must be a non-empty mapping modality -> logits [B, C]; got "
            f"{type(unimodal_logits).__name__}"
        )
    y = targets.reshape(-1).long()
    out: Dict[str, float] = {}
    for m, z in unimodal_logits.items():
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[0] != y.shape[0]:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(
                f"unimodal logits of modality {m!r} must be a tensor [B, C] with B = "
                f"{y.shape[0]} (the number of targets); got {shape}"
            )
        probs = torch.softmax(z.detach().double(), dim=-1)
        out[m] = float(probs.gather(1, y.to(z.device).view(-1, 1)).sum())
    return out


def ogm_ge_ratios(scores: Mapping[str, float]) -> Dict[str, float]:
    """Discrepancy ratio of each modality: ``rho_m = s_m / mean_{j != m} s_j``.

    With two modalities this is exactly OGM-GE's ``rho = s_a / s_v`` (and its inverse for the
    other modality); with more it compares each modality with the average of the others.

    :param scores: modality -> score from :func:`ogm_ge_scores` (accumulated or per batch).
    :return: modality -> ratio (> 1 = this modality dominates).
    """
    if len(scores) < 2:
        raise ValueError(
            f"the OGM-GE discrepancy ratio compares modalities: need at least 2, got "
            f"{list(scores)}"
        )
    out: Dict[str, float] = {}
    for m, s in scores.items():
        others = [float(v) for k, v in scores.items() if k != m]
        denom = sum(others) / len(others)
        out[m] = float(s) / denom if denom > 0 else math.inf
    return out


def ogm_ge_coefficients(ratios: Mapping[str, float], *, alpha: float) -> Dict[str, float]:
    """OGM-GE gradient coefficients: ``k_m = 1 - tanh(alpha * (rho_m - 1))`` if ``rho_m > 1``.

    :param ratios: modality -> discrepancy ratio.
    :param alpha: the modulation strength (> 0).
    :return: modality -> coefficient in (0, 1] (1 = not slowed down).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0; got {alpha}")
    return {
        m: (1.0 - math.tanh(alpha * (float(r) - 1.0))) if r > 1 else 1.0
        for m, r in ratios.items()
    }


def imbalance_index(scores: Union[Mapping[str, float], Sequence[float]]) -> float:
    """Modality imbalance index in [0, 1] from non-negative per-modality scores.

    Negative scores are clipped to 0, the scores are normalised into shares ``p_m`` and

    ``II = (M * max_m p_m - 1) / (M - 1)``

    so 0 means every modality carries the same share and 1 means a single modality carries
    everything. For two modalities ``II = |p_a - p_b|``. The index is invariant to permuting
    the modalities and to scaling all scores by the same positive factor. If no modality has a
    positive score the index is undefined and ``nan`` is returned.

    :param scores: modality -> score (e.g. Shapley values or contributions), or a sequence.
    :return: the index, or ``nan`` when all scores are <= 0.
    """
    vals = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
    arr = np.asarray(vals, dtype=np.float64).reshape(-1)
    if arr.shape[0] < 2:
        raise ValueError(
            f"the imbalance index compares modalities: need scores for at least 2, got "
            f"{arr.shape[0]}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"scores must be finite numbers; got {arr.tolist()}")
    pos = np.clip(arr, 0.0, None)
    total = pos.sum()
    if total <= 0:
        return math.nan
    m = arr.shape[0]
    return float((m * (pos / total).max() - 1.0) / (m - 1.0))


def per_modality_forgetting(
    matrices: Mapping[str, ArrayLike], *, step: int = -1
) -> Dict[str, float]:
    """Forgetting (see :func:`avalanche_mm.metrics.functional.forgetting`) of each modality
    alone, from one unimodal accuracy matrix per modality.

    :param matrices: modality -> accuracy matrix of that modality alone.
    :param step: the row ``t``; must be >= 1.
    :return: modality -> average forgetting.
    """
    if not matrices:
        raise ValueError("matrices is empty; pass modality -> unimodal accuracy matrix")
    return {m: forgetting(mat, step=step) for m, mat in matrices.items()}


__all__ = [
    "MAX_SHAPLEY_MODALITIES",
    "correct_predictions",
    "accuracy",
    "modality_contributions",
    "all_subsets",
    "shapley_values",
    "ogm_ge_scores",
    "ogm_ge_ratios",
    "ogm_ge_coefficients",
    "imbalance_index",
    "per_modality_forgetting",
]
