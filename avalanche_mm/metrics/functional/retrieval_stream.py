"""Retrieval evaluated as a stream: the recall matrix ``R(t, i)`` and its summaries.

After training phase ``t`` the model embeds the test pairs of every phase ``i``; ``R_k(t, i)``
is recall@k on phase ``i``'s pairs, image-to-text and text-to-image. This is the accuracy
matrix of retrieval, so the stream summaries of :mod:`avalanche_mm.metrics.functional.stream`
(average over seen phases, forgetting, backward transfer) apply to each of its slices.

Two test protocols (the columns of the matrix):

- *per-phase test pairs* (the procedural world, P9D): column ``i`` holds the test pairs of phase
  ``i``; :func:`retrieval_stream_summary` applies (average over seen phases, forgetting and BWT
  against the diagonal, as for the accuracy matrix);
- *shared test sets* (Mod-X on Flickr30K: the Flickr30K 1K test split and the COCO 5K test split,
  evaluated after every phase): column ``j`` is one fixed test set, rows are phases; there is no
  diagonal, so :func:`shared_test_summary` compares each column with its own earlier rows:
  forgetting ``F_j(t) = max_{l<t} R(l, j) - R(t, j)``, backward transfer
  ``B_j(t) = 1/t sum_{l<t} (R(t, j) - R(l, j))`` (the final model against the model after each
  earlier phase) and, when the model was evaluated before the first phase, the change from it
  ``D_j(t) = R(t, j) - R(init, j)``; each averaged over the test sets.

All functions are pure: embeddings in, numbers out.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .alignment import retrieval_recall
from .stream import as_accuracy_matrix, backward_transfer, forgetting

def recall_keys(ks: Sequence[int] = (1, 5, 10)) -> List[str]:
    """``["i2t_R@1", ..., "t2i_R@1", ...]`` for ``ks``."""
    return [f"i2t_R@{k}" for k in ks] + [f"t2i_R@{k}" for k in ks]


def pair_recalls(image_emb, text_emb, *, pair_ids: Optional[Sequence[int]] = None,
                 ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """Recall@k of one test set of (image, caption) pairs, both directions.

    Several captions of one image come as several pairs sharing a ``pair_id`` (Flickr30K and
    COCO: 5 per image); the image is then counted once, and any of its captions is a hit
    (the Karpathy protocol). Without ``pair_ids`` every pair is its own image.

    :param image_emb: ``[N, D]`` image embedding of each pair.
    :param text_emb: ``[N, D]`` text embedding of each pair.
    :param pair_ids: ``[N]`` image id of each pair (optional).
    :param ks: the cut-offs.
    :return: :func:`~avalanche_mm.metrics.functional.alignment.retrieval_recall` keys,
        fractions in [0, 1].
    """
    import torch

    img = torch.as_tensor(image_emb)
    txt = torch.as_tensor(text_emb)
    if img.shape[0] != txt.shape[0]:
        raise ValueError(
            f"pair_recalls: {img.shape[0]} image rows but {txt.shape[0]} text rows; give one of "
            "each per pair."
        )
    if pair_ids is None:
        return retrieval_recall(img, txt, ks=ks)
    ids = [int(v) for v in pair_ids]
    if len(ids) != img.shape[0]:
        raise ValueError(f"pair_recalls: {len(ids)} pair_ids for {img.shape[0]} pairs.")
    first: Dict[int, int] = {}
    for row, pid in enumerate(ids):
        first.setdefault(pid, row)
    order = list(first)
    col = {pid: j for j, pid in enumerate(order)}
    images = img[[first[p] for p in order]]
    owner = [col[p] for p in ids]
    return retrieval_recall(images, txt, ks=ks, text_to_image=owner)


def retrieval_row(test_sets: Sequence[Tuple], *, ks: Sequence[int] = (1, 5, 10)) -> List[Dict[str, float]]:
    """One row of the recall matrix: recalls on each phase's test pairs after one phase.

    :param test_sets: one ``(image_emb, text_emb)`` or ``(image_emb, text_emb, pair_ids)``
        tuple per test phase ``i``.
    :param ks: the cut-offs.
    :return: one recall dict per test phase.
    """
    out = []
    for item in test_sets:
        if len(item) not in (2, 3):
            raise ValueError("each test set is (image_emb, text_emb) or (image_emb, text_emb, pair_ids).")
        ids = item[2] if len(item) == 3 else None
        out.append(pair_recalls(item[0], item[1], pair_ids=ids, ks=ks))
    return out


def recall_matrices(rows: Sequence[Sequence[Mapping[str, float]]], *,
                    ks: Sequence[int] = (1, 5, 10)) -> Dict[str, np.ndarray]:
    """Stack rows of recall dicts into one ``[T, N]`` matrix per key.

    Besides the keys of :func:`recall_keys` it adds ``R@1`` (mean of the two R@1),
    ``mean_recall`` (mean of all ``2 len(ks)`` recalls, CTP's and Mod-X's "R_mean"/"RSUM/6").
    Missing entries are NaN.

    :param rows: ``rows[t][i]`` the recall dict on test phase ``i`` after phase ``t`` (or None).
    """
    keys = recall_keys(ks)
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("recall_matrices: no rows (evaluate after at least one phase).")
    out = {k: np.full((n_rows, n_cols), np.nan) for k in keys + ["R@1", "mean_recall"]}
    for t, row in enumerate(rows):
        for i, rec in enumerate(row):
            if rec is None:
                continue
            for k in keys:
                out[k][t, i] = float(rec[k])
            if 1 in ks:
                out["R@1"][t, i] = 0.5 * (float(rec["i2t_R@1"]) + float(rec["t2i_R@1"]))
            out["mean_recall"][t, i] = float(np.mean([float(rec[k]) for k in keys]))
    return out


def retrieval_stream_summary(matrix, *, step: int = -1) -> Dict[str, float]:
    """Summaries of one recall matrix ``R(t, i)`` (rows: after phase t; columns: test phase i).

    - ``avg_seen``: mean of ``R(t, i)`` over ``i <= t`` (average recall on the phases seen);
    - ``avg_all``: mean of row ``t`` over every column (the whole test stream);
    - ``first_phase``: ``R(t, 0)``, what is kept of the first phase;
    - ``forgetting``: ``1/t sum_{i<t} (max_{l in [i, t-1]} R(l, i) - R(t, i))`` (t >= 1);
    - ``bwt``: ``1/t sum_{i<t} (R(t, i) - R(i, i))`` (t >= 1).

    :param matrix: ``[T, N]`` recall matrix, ``N >= T``.
    :param step: the row ``t``.
    """
    arr = as_accuracy_matrix(matrix, name="recall matrix")
    t = step if step >= 0 else arr.shape[0] + step
    if not 0 <= t < arr.shape[0]:
        raise ValueError(f"step={step} is out of range for a recall matrix with {arr.shape[0]} rows.")
    if arr.shape[1] <= t:
        raise ValueError(
            f"row {t} needs the test pairs of phases 0..{t}, but the matrix has {arr.shape[1]} "
            "columns; evaluate every phase's test pairs after each phase."
        )
    out = {
        "avg_seen": float(np.mean(arr[t, : t + 1])),
        "avg_all": float(np.mean(arr[t])),
        "first_phase": float(arr[t, 0]),
    }
    if t >= 1:
        out["forgetting"] = forgetting(arr[: t + 1], step=t)
        out["bwt"] = backward_transfer(arr[: t + 1], step=t)
    return out


def shared_test_summary(matrix, *, step: int = -1, baseline=None) -> Dict[str, float]:
    """Summaries of a recall matrix over *shared* test sets (rows: after phase ``t``; columns:
    fixed test sets evaluated after every phase), averaged over the columns:

    - ``avg_all``: mean of row ``t`` (every test set);
    - ``forgetting``: ``mean_j (max_{l<t} R(l, j) - R(t, j))`` (t >= 1);
    - ``bwt``: ``mean_j 1/t sum_{l<t} (R(t, j) - R(l, j))`` (t >= 1);
    - ``from_initial``: ``mean_j (R(t, j) - baseline_j)`` when ``baseline`` (the row of the model
      before the first phase) is given.

    :param matrix: ``[T, N]`` recall matrix (any ``N >= 1``).
    :param step: the row ``t``.
    :param baseline: optional ``[N]`` recalls of the initial model.
    """
    arr = np.asarray(matrix, dtype=float)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"shared_test_summary: expected a non-empty [phases, test sets] matrix, got shape {arr.shape}.")
    t = step if step >= 0 else arr.shape[0] + step
    if not 0 <= t < arr.shape[0]:
        raise ValueError(f"step={step} is out of range for a recall matrix with {arr.shape[0]} rows.")
    if not np.isfinite(arr[: t + 1]).all():
        raise ValueError(f"shared_test_summary: rows 0..{t} hold missing values; evaluate every test set after each phase.")
    out = {"avg_all": float(np.mean(arr[t]))}
    if t >= 1:
        out["forgetting"] = float(np.mean(arr[:t].max(axis=0) - arr[t]))
        out["bwt"] = float(np.mean(arr[t] - arr[:t].mean(axis=0)))
    if baseline is not None:
        b = np.asarray(baseline, dtype=float)
        if b.shape != (arr.shape[1],):
            raise ValueError(f"shared_test_summary: baseline has shape {b.shape}, expected ({arr.shape[1]},).")
        if np.isfinite(b).all():
            out["from_initial"] = float(np.mean(arr[t] - b))
    return out


__all__ = [
    "shared_test_summary",
    "recall_keys",
    "pair_recalls",
    "retrieval_row",
    "recall_matrices",
    "retrieval_stream_summary",
]
