"""Stream-level accuracy summaries computed from an accuracy matrix.

The accuracy matrix ``a`` has one row per training experience and one column per evaluated
(test) experience: ``a[t, i]`` is the accuracy on test experience ``i`` measured after training on
experiences ``0..t``. Experiences not trained yet are included (their entries measure zero-shot or
forward transfer). Missing entries are ``NaN``. Indices are 0-based in the code; the formulas in
``docs/metrics.md`` use the same convention.

All functions are unit-agnostic: pass fractions or percentages, results come back in the same unit.
"""

from typing import Dict, Optional, Sequence, Union

import numpy as np

ArrayLike = Union[np.ndarray, Sequence[Sequence[float]]]


def as_accuracy_matrix(matrix: ArrayLike, *, name: str = "matrix") -> np.ndarray:
    """Convert ``matrix`` to a 2-D float64 numpy array, validating its shape.

    :param matrix: a 2-D array-like (numpy array, torch tensor, nested lists).
    :param name: the argument name used in error messages.
    :return: a new float64 numpy array.
    """
    try:
        arr = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} must be a 2-D array of accuracies (rows = after training experience t, "
            f"columns = evaluated experience i); could not convert {type(matrix).__name__} to a "
            f"float array: {exc}"
        ) from exc
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array (rows = after training experience t, columns "
            f"= evaluated experience i); got shape {arr.shape}. Wrap a single row as [row]."
        )
    return arr


def _resolve_step(arr: np.ndarray, step: int, *, minimum: int = 0) -> int:
    n_rows = arr.shape[0]
    t = step if step >= 0 else n_rows + step
    if not 0 <= t < n_rows:
        raise ValueError(
            f"step={step} is out of range for an accuracy matrix with {n_rows} rows; pass a row "
            f"index in [{-n_rows}, {n_rows - 1}]"
        )
    if t < minimum:
        raise ValueError(
            f"this summary needs at least {minimum + 1} trained experiences (step >= {minimum}); "
            f"got step={step} (row {t}). There is nothing to compare against yet."
        )
    if arr.shape[1] <= t:
        raise ValueError(
            f"row {t} needs columns 0..{t} (the experiences trained so far), but the matrix has "
            f"only {arr.shape[1]} columns; evaluate on every experience of the test stream"
        )
    return t


def _require_finite(values: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"{what} contains missing (NaN) or infinite entries: {values.tolist()}; evaluate on "
            f"the whole test stream after each training experience to fill the matrix"
        )


def average_accuracy(matrix: ArrayLike, *, step: int = -1) -> float:
    """Average accuracy on the experiences seen so far (GEM's ``ACC`` at step ``t``).

    ``A_t = 1/(t+1) * sum_{i<=t} a[t, i]``.

    :param matrix: the accuracy matrix (see module docstring).
    :param step: the row ``t`` (after training experience ``t``); default: the last row.
    :return: the average accuracy.
    """
    arr = as_accuracy_matrix(matrix)
    t = _resolve_step(arr, step)
    row = arr[t, : t + 1]
    _require_finite(row, f"row {t} (columns 0..{t})")
    return float(row.mean())


def average_incremental_accuracy(matrix: ArrayLike) -> float:
    """Mean of :func:`average_accuracy` over all rows (iCaRL's "average incremental accuracy").

    ``(1/T) * sum_t A_t``. This is the "Avg" reported by class-incremental CLIP papers next to
    "Last" (``A_{T-1}``).

    :param matrix: the accuracy matrix; needs at least as many columns as rows.
    :return: the average incremental accuracy.
    """
    arr = as_accuracy_matrix(matrix)
    return float(np.mean([average_accuracy(arr, step=t) for t in range(arr.shape[0])]))


def last_accuracy(matrix: ArrayLike) -> float:
    """Mean of the final row over all columns (MTIL "Last"; equals ``A_{T-1}`` when square).

    :param matrix: the accuracy matrix.
    :return: the mean of the last row.
    """
    arr = as_accuracy_matrix(matrix)
    row = arr[-1]
    _require_finite(row, "the last row")
    return float(row.mean())


def per_experience_forgetting(matrix: ArrayLike, *, step: int = -1) -> np.ndarray:
    """Forgetting of each old experience ``i < t`` at step ``t``.

    ``f_t(i) = max_{l in [i, t-1]} a[l, i] - a[t, i]``: the best accuracy the experience had
    after it was learned, minus its current accuracy (Chaudhry et al., 2018, restricted to steps
    at or after learning ``i`` so that zero-shot accuracy before learning is not counted).

    :param matrix: the accuracy matrix.
    :param step: the row ``t``; must be >= 1.
    :return: a float64 array of length ``t``.
    """
    arr = as_accuracy_matrix(matrix)
    t = _resolve_step(arr, step, minimum=1)
    block = arr[: t + 1, :t]
    out = np.empty(t, dtype=np.float64)
    for i in range(t):
        history = block[i:t, i]
        _require_finite(history, f"column {i} (rows {i}..{t - 1})")
        _require_finite(block[t : t + 1, i], f"entry a[{t}, {i}]")
        out[i] = history.max() - block[t, i]
    return out


def forgetting(matrix: ArrayLike, *, step: int = -1) -> float:
    """Average forgetting at step ``t``: ``F_t = 1/t * sum_{i<t} f_t(i)``.

    See :func:`per_experience_forgetting` for ``f_t(i)``.

    :param matrix: the accuracy matrix.
    :param step: the row ``t``; must be >= 1.
    :return: the average forgetting (positive = forgotten).
    """
    return float(per_experience_forgetting(matrix, step=step).mean())


def backward_transfer(matrix: ArrayLike, *, step: int = -1) -> float:
    """Backward transfer (GEM): ``BWT_t = 1/t * sum_{i<t} (a[t, i] - a[i, i])``.

    :param matrix: the accuracy matrix.
    :param step: the row ``t``; must be >= 1.
    :return: BWT (negative = forgetting).
    """
    arr = as_accuracy_matrix(matrix)
    t = _resolve_step(arr, step, minimum=1)
    current = arr[t, :t]
    diag = np.diagonal(arr)[:t]
    _require_finite(current, f"row {t} (columns 0..{t - 1})")
    _require_finite(diag, f"the diagonal a[i, i] for i < {t}")
    return float(np.mean(current - diag))


def forward_transfer(
    matrix: ArrayLike, baseline: Sequence[float], *, step: int = -1
) -> float:
    """Forward transfer (GEM): ``FWT_t = 1/t * sum_{1<=i<=t} (a[i-1, i] - b[i])``.

    ``b[i]`` is the accuracy on experience ``i`` of the model before any training (random
    initialisation, or the pretrained zero-shot model).

    :param matrix: the accuracy matrix.
    :param baseline: ``b``, one value per column (at least ``t + 1`` values).
    :param step: the last row ``t`` used; must be >= 1.
    :return: FWT (positive = learning earlier experiences helped on later ones).
    """
    arr = as_accuracy_matrix(matrix)
    t = _resolve_step(arr, step, minimum=1)
    b = np.asarray(baseline, dtype=np.float64).reshape(-1)
    if b.shape[0] < t + 1:
        raise ValueError(
            f"baseline must hold one accuracy per evaluated experience (at least {t + 1} values "
            f"for step {t}); got {b.shape[0]} values"
        )
    above = np.array([arr[i - 1, i] for i in range(1, t + 1)])
    _require_finite(above, f"the entries a[i-1, i] for 1 <= i <= {t}")
    _require_finite(b[1 : t + 1], "baseline")
    return float(np.mean(above - b[1 : t + 1]))


def mtil_summary(matrix: ArrayLike) -> Dict[str, float]:
    """The MTIL summary of ZSCL (Zheng et al., ICCV 2023): Transfer, Avg and Last.

    For a complete ``T x T`` matrix ``A`` (row ``t`` = after training task ``t``, column ``i`` =
    dataset ``i``):

    - ``transfer = 1/(T-1) * sum_{i>=1} [ 1/i * sum_{t<i} A[t, i] ]``: accuracy on datasets not
      learned yet (zero-shot transfer), averaged per dataset first;
    - ``avg = 1/T^2 * sum_{t,i} A[t, i]``: the mean of all entries;
    - ``last = 1/T * sum_i A[T-1, i]``: the mean of the final row.

    :param matrix: a square ``T x T`` matrix with ``T >= 2`` and no missing entries.
    :return: ``{"transfer": ..., "avg": ..., "last": ...}`` in the unit of ``matrix``.
    """
    arr = as_accuracy_matrix(matrix)
    n_rows, n_cols = arr.shape
    if n_rows != n_cols or n_rows < 2:
        raise ValueError(
            f"mtil_summary needs a square T x T accuracy matrix with T >= 2 (one row per "
            f"training task, one column per dataset, same order); got shape {arr.shape}. "
            f"Evaluate on every dataset after every task."
        )
    _require_finite(arr, "the MTIL matrix")
    per_dataset_transfer = [arr[:i, i].mean() for i in range(1, n_cols)]
    return {
        "transfer": float(np.mean(per_dataset_transfer)),
        "avg": float(arr.mean()),
        "last": float(arr[-1].mean()),
    }


def mtil_transfer_per_dataset(matrix: ArrayLike) -> np.ndarray:
    """Per-dataset transfer column of the MTIL table: ``1/i * sum_{t<i} A[t, i]`` for ``i >= 1``.

    :param matrix: a square ``T x T`` matrix with no missing entries above the diagonal.
    :return: a float64 array of length ``T - 1``.
    """
    arr = as_accuracy_matrix(matrix)
    n_rows, n_cols = arr.shape
    if n_rows != n_cols or n_rows < 2:
        raise ValueError(
            f"mtil_transfer_per_dataset needs a square T x T matrix with T >= 2; got {arr.shape}"
        )
    values = np.array([arr[:i, i].mean() for i in range(1, n_cols)])
    _require_finite(values, "the entries above the diagonal")
    return values


def zero_shot_retention(
    accuracies: Sequence[float], *, initial: float
) -> np.ndarray:
    """Retention of accuracy on a held-out control set: ``r_t = acc_t / acc_initial``.

    :param accuracies: control-set accuracy after each training experience.
    :param initial: control-set accuracy of the model before any training (must be > 0).
    :return: the retention ratio after each experience (1 = nothing lost).
    """
    acc = np.asarray(accuracies, dtype=np.float64).reshape(-1)
    if not np.isfinite(initial) or initial <= 0:
        raise ValueError(
            f"initial must be the control-set accuracy before training, a positive number; "
            f"got {initial}. A model at 0 accuracy has no zero-shot ability to retain."
        )
    return acc / float(initial)


def stream_summary(
    matrix: ArrayLike, *, baseline: Optional[Sequence[float]] = None
) -> Dict[str, float]:
    """Every summary that the (possibly partial) accuracy matrix supports at its last row.

    Keys (present only when computable): ``average_accuracy``, ``forgetting``, ``bwt``, ``fwt``
    (needs ``baseline``), ``mtil_transfer``, ``mtil_avg``, ``mtil_last`` (need a complete square
    matrix).

    :param matrix: the accuracy matrix; rows may be fewer than columns.
    :param baseline: the accuracy of the untrained model on each column, for FWT.
    :return: a dict of floats.
    """
    arr = as_accuracy_matrix(matrix)
    t = arr.shape[0] - 1
    out: Dict[str, float] = {}
    if arr.shape[1] > t and np.all(np.isfinite(arr[t, : t + 1])):
        out["average_accuracy"] = average_accuracy(arr, step=t)
    if t >= 1 and arr.shape[1] > t:
        block = arr[: t + 1, : t + 1]
        lower = block[np.tril_indices(t + 1)]
        if np.all(np.isfinite(lower)):
            out["forgetting"] = forgetting(arr, step=t)
            out["bwt"] = backward_transfer(arr, step=t)
        if baseline is not None:
            b = np.asarray(baseline, dtype=np.float64).reshape(-1)
            above = np.array([arr[i - 1, i] for i in range(1, t + 1)])
            if b.shape[0] > t and np.all(np.isfinite(above)) and np.all(
                np.isfinite(b[1 : t + 1])
            ):
                out["fwt"] = forward_transfer(arr, b, step=t)
    if arr.shape[0] == arr.shape[1] and arr.shape[0] >= 2 and np.all(np.isfinite(arr)):
        summary = mtil_summary(arr)
        out["mtil_transfer"] = summary["transfer"]
        out["mtil_avg"] = summary["avg"]
        out["mtil_last"] = summary["last"]
    return out


__all__ = [
    "as_accuracy_matrix",
    "average_accuracy",
    "average_incremental_accuracy",
    "last_accuracy",
    "per_experience_forgetting",
    "forgetting",
    "backward_transfer",
    "forward_transfer",
    "mtil_summary",
    "mtil_transfer_per_dataset",
    "zero_shot_retention",
    "stream_summary",
]
