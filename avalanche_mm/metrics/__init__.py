"""Metrics for multimodal continual learning, as Avalanche plugin metrics.

- stream accuracy: :class:`AccuracyMatrix` (a(t, i), average accuracy, forgetting, BWT, FWT,
  MTIL Transfer/Avg/Last) and :func:`mtil_summary`; :class:`ZeroShotRetention`;
- modality imbalance: :class:`UnimodalAccuracy`, :class:`ModalityContribution`,
  :class:`ModalityShapley`, :class:`ModalityImbalanceIndex`, :class:`UnimodalForgetting`,
  :class:`OGMGERatio`, :func:`modality_imbalance_metrics`;
- cross-modal alignment: :class:`ProbeSet`, :class:`CrossModalAlignment`;
- cost: :class:`ParameterCount`, :class:`TrainingTime`, :class:`PeakMemory`,
  :func:`cost_metrics`;
- :class:`ResultsLogger`: every metric value to JSON lines and CSV.

The math lives in :mod:`avalanche_mm.metrics.functional`. Logged names and formulas:
``docs/metrics.md``.
"""

from avalanche_mm.metrics import functional
from avalanche_mm.metrics.functional.stream import mtil_summary
from avalanche_mm.metrics.accuracy_matrix import AccuracyMatrix
from avalanche_mm.metrics.zero_shot import ZeroShotRetention
from avalanche_mm.metrics.imbalance import (
    ModalityAblation,
    ModalityContribution,
    ModalityImbalanceIndex,
    ModalityShapley,
    OGMGERatio,
    UnimodalAccuracy,
    UnimodalForgetting,
    modality_imbalance_metrics,
)
from avalanche_mm.metrics.alignment import CrossModalAlignment, ProbeSet, resolve_encoders
from avalanche_mm.metrics.cost import ParameterCount, PeakMemory, TrainingTime, cost_metrics
from avalanche_mm.metrics.results_logger import ResultsLogger, parse_metric_name

__all__ = [
    "functional",
    "mtil_summary",
    "AccuracyMatrix",
    "ZeroShotRetention",
    "ModalityAblation",
    "UnimodalAccuracy",
    "ModalityContribution",
    "ModalityShapley",
    "ModalityImbalanceIndex",
    "UnimodalForgetting",
    "OGMGERatio",
    "modality_imbalance_metrics",
    "ProbeSet",
    "CrossModalAlignment",
    "resolve_encoders",
    "ParameterCount",
    "TrainingTime",
    "PeakMemory",
    "cost_metrics",
    "ResultsLogger",
    "parse_metric_name",
]
