"""The accuracy matrix a(t, i) as an Avalanche plugin metric, with its stream summaries."""

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

from avalanche_mm.metrics._utils import (
    TrainingProgress,
    current_stream_name,
    make_value,
    stream_metric_name,
)
from avalanche_mm.metrics.functional.imbalance import correct_predictions
from avalanche_mm.metrics.functional.stream import stream_summary

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate

#: logged base name of each summary key of :func:`stream_summary`.
SUMMARY_NAMES = {
    "average_accuracy": "AccMatrix_AvgSeen",
    "forgetting": "AccMatrix_Forgetting",
    "bwt": "AccMatrix_BWT",
    "fwt": "AccMatrix_FWT",
    "mtil_transfer": "MTIL_Transfer",
    "mtil_avg": "MTIL_Avg",
    "mtil_last": "MTIL_Last",
}


class AccuracyMatrix(PluginMetric[np.ndarray]):
    """Records ``a(t, i)``: top-1 accuracy on eval experience ``i`` after training experience ``t``.

    Evaluate on the whole test stream after each training experience (including experiences not
    trained yet) and the matrix fills row by row. An evaluation before any training fills the
    ``baseline`` row ``b`` (used for forward transfer). When several evaluations happen for
    the same row (periodic evaluation), the last one wins.

    At the end of each evaluation of the tracked stream it logs, at the current row ``t``:
    ``AccMatrix_AvgSeen`` (mean of ``a(t, i)`` for ``i <= t``), ``AccMatrix_Forgetting``,
    ``AccMatrix_BWT``, ``AccMatrix_FWT`` (only with a baseline row) and, once the matrix is
    square and complete, ``MTIL_Transfer``, ``MTIL_Avg``, ``MTIL_Last``; each name is followed by
    ``/eval_phase/<stream>_stream``. Formulas: ``docs/metrics.md``.

    Cost: no extra forward pass (it reads ``strategy.mb_output``).
    """

    def __init__(self, *, stream_name: str = "test", emit_summary: bool = True):
        """
        :param stream_name: the evaluation stream to track (Avalanche stream name, e.g.
            ``"test"``); evaluations of other streams are ignored.
        :param emit_summary: log the summary values at the end of each evaluation.
        """
        super().__init__()
        if not isinstance(stream_name, str) or not stream_name:
            raise ValueError(
                f"stream_name must be a non-empty stream name such as 'test'; got {stream_name!r}"
            )
        self.stream_name = stream_name
        self.emit_summary = bool(emit_summary)
        self.reset()

    # -- state -------------------------------------------------------------
    def reset(self) -> None:
        """Forget every recorded value and the training progress."""
        self._progress = TrainingProgress()
        self._entries: Dict[Tuple[int, int], float] = {}
        self._baseline: Dict[int, float] = {}
        self._correct = 0
        self._total = 0

    @property
    def matrix(self) -> np.ndarray:
        """``[rows, cols]`` float64 array, NaN where nothing was recorded.

        ``rows`` = number of training experiences started (at least one row per recorded
        entry), ``cols`` = largest evaluated experience id + 1.
        """
        n_rows = max([r for r, _ in self._entries] + [-1]) + 1
        n_rows = max(n_rows, self._progress.started)
        cols = [c for _, c in self._entries] + list(self._baseline)
        n_cols = max(cols + [-1]) + 1
        out = np.full((n_rows, n_cols), np.nan)
        for (r, c), v in self._entries.items():
            out[r, c] = v
        return out

    @property
    def baseline(self) -> Optional[np.ndarray]:
        """Accuracy of the model evaluated before any training, per column (NaN where missing),
        or ``None`` if no evaluation ran before training."""
        if not self._baseline:
            return None
        n_cols = max(self.matrix.shape[1], max(self._baseline) + 1)
        out = np.full(n_cols, np.nan)
        for c, v in self._baseline.items():
            out[c] = v
        return out

    def result(self) -> np.ndarray:
        """The accuracy matrix (see :attr:`matrix`)."""
        return self.matrix

    def summary(self) -> Dict[str, float]:
        """Every summary computable at the current row (:func:`stream_summary` keys)."""
        row = self._progress.row
        if row is None:
            return {}
        mat = self.matrix[: row + 1]
        if mat.shape[0] == 0 or mat.shape[1] == 0:
            return {}
        return stream_summary(mat, baseline=self.baseline)

    # -- callbacks ---------------------------------------------------------
    def _tracked(self, strategy: "SupervisedTemplate") -> bool:
        return current_stream_name(strategy) == self.stream_name

    def before_training_exp(self, strategy: "SupervisedTemplate") -> None:
        self._progress.on_before_training_exp()

    def before_eval_exp(self, strategy: "SupervisedTemplate") -> None:
        self._correct = 0
        self._total = 0

    def after_eval_iteration(self, strategy: "SupervisedTemplate") -> None:
        if not self._tracked(strategy):
            return
        correct = correct_predictions(strategy.mb_output, strategy.mb_y)
        self._correct += int(correct.sum())
        self._total += int(correct.numel())

    def after_eval_exp(self, strategy: "SupervisedTemplate") -> None:
        if not self._tracked(strategy) or self._total == 0:
            return
        acc = self._correct / self._total
        col = int(strategy.experience.current_experience)
        row = self._progress.row
        if row is None:
            self._baseline[col] = acc
        else:
            self._entries[(row, col)] = acc

    def after_eval(self, strategy: "SupervisedTemplate") -> Optional[List[MetricValue]]:
        if not self.emit_summary or not self._tracked(strategy):
            return None
        values = []
        for key, val in self.summary().items():
            name = stream_metric_name(SUMMARY_NAMES[key], strategy)
            values.append(make_value(self, name, float(val), strategy))
        return values or None

    def __str__(self) -> str:
        return "AccMatrix"


__all__ = ["AccuracyMatrix", "SUMMARY_NAMES"]
