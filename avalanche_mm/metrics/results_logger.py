"""A results logger that records every metric value, whatever its name.

Avalanche's ``CSVLogger`` writes only the metric names it knows; ``ResultsLogger`` writes each
``MetricValue`` it receives from ``EvaluationPlugin`` to ``metrics.jsonl`` (one JSON object per
line) and ``metrics.csv``, appending to existing files so that a resumed run continues them.
"""

import csv
import json
import math
import numbers
import os
import re
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from avalanche.evaluation.metric_results import AlternativeValues, MetricValue
from avalanche.logging import BaseLogger

_TASK = re.compile(r"^Task(\d+)$")
_EXP = re.compile(r"^Exp(\d+)$")

#: columns of ``metrics.csv`` (and keys of each JSON line).
FIELDS = ["time", "x_plot", "name", "metric", "phase", "stream", "task", "experience", "extra", "value"]


def parse_metric_name(name: str) -> Dict[str, Any]:
    """Split an Avalanche-style metric name into its parts.

    ``"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp002"`` gives ``metric="Top1_Acc_Exp"``,
    ``phase="eval"``, ``stream="test"``, ``task=0``, ``experience=2``. A part ending in
    ``_probe`` (probe-set metrics) becomes ``stream="<name>_probe"``. Unrecognised parts are
    joined with ``/`` into ``extra``; missing parts are ``None``.

    :param name: the full metric name.
    """
    parts = str(name).split("/")
    out: Dict[str, Any] = {
        "metric": parts[0],
        "phase": None,
        "stream": None,
        "task": None,
        "experience": None,
        "extra": None,
    }
    extra = []
    for part in parts[1:]:
        if part.endswith("_phase"):
            out["phase"] = part[: -len("_phase")]
        elif part.endswith("_stream"):
            out["stream"] = part[: -len("_stream")]
        elif part.endswith("_probe"):
            out["stream"] = part
        elif _TASK.match(part):
            out["task"] = int(_TASK.match(part).group(1))
        elif _EXP.match(part):
            out["experience"] = int(_EXP.match(part).group(1))
        else:
            extra.append(part)
    out["extra"] = "/".join(extra) if extra else None
    return out


def _scalar(value: Any) -> Optional[Any]:
    """A JSON-ready number, or None if ``value`` is not a scalar number."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.number):
        return value.item()
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return value.item()
    return None


def _numeric_list(value: Any) -> Optional[list]:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.number):
        return value.tolist()
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
    ):
        return [float(v) if not isinstance(v, numbers.Integral) else int(v) for v in value]
    return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class ResultsLogger(BaseLogger):
    """Writes every metric value to ``<path>/metrics.jsonl`` and ``<path>/metrics.csv``.

    Each record has the fields in :data:`FIELDS`: wall-clock ``time`` (Unix seconds),
    ``x_plot`` (the step Avalanche gives the value, usually training iterations), the full
    ``name``, and ``metric`` / ``phase`` / ``stream`` / ``task`` / ``experience`` / ``extra``
    parsed from it (:func:`parse_metric_name`), and ``value``.

    Values: numbers are written as numbers (non-finite ones as JSON ``null`` and as ``nan`` /
    ``inf`` in the CSV); dict values are flattened into one record per key, named
    ``<name>/<key>`` (Avalanche reads dict keys as task labels); numeric tensors, arrays and
    lists are written as JSON lists (a JSON string in the CSV); ``AlternativeValues`` are
    reduced to their number alternative if they have one. Images, figures and other
    non-numeric values are skipped and counted in :attr:`skipped` (name -> count).

    Files are opened in append mode and flushed after every record, so a resumed run continues
    them; the CSV header is written only to a new or empty file and an existing header must
    match :data:`FIELDS`.
    """

    def __init__(
        self,
        *,
        path: str,
        jsonl_name: str = "metrics.jsonl",
        csv_name: str = "metrics.csv",
    ):
        """
        :param path: the results folder (created if missing).
        :param jsonl_name: file name of the JSON-lines file inside ``path``.
        :param csv_name: file name of the CSV file inside ``path``.
        """
        super().__init__()
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise ValueError(f"path must be a folder path; got {path!r}")
        for label, fname in (("jsonl_name", jsonl_name), ("csv_name", csv_name)):
            if not fname or os.sep in fname:
                raise ValueError(f"{label} must be a plain file name; got {fname!r}")
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        self.jsonl_path = os.path.join(self.path, jsonl_name)
        self.csv_path = os.path.join(self.path, csv_name)
        self.skipped: Dict[str, int] = {}
        self.written = 0
        self._jsonl = None
        self._csv_file = None
        self._csv = None
        self._check_csv_header()

    # -- files ----------------------------------------------------------------
    def _check_csv_header(self) -> None:
        if not os.path.exists(self.csv_path) or os.path.getsize(self.csv_path) == 0:
            return
        with open(self.csv_path, newline="") as fh:
            header = next(csv.reader(fh), None)
        if header != FIELDS:
            raise ValueError(
                f"{self.csv_path} exists with columns {header}, but ResultsLogger writes "
                f"{FIELDS}; resume into a folder written by ResultsLogger, or choose another "
                f"path / csv_name"
            )

    def _ensure_open(self) -> None:
        if self._jsonl is None:
            self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        if self._csv_file is None:
            new = not os.path.exists(self.csv_path) or os.path.getsize(self.csv_path) == 0
            self._csv_file = open(self.csv_path, "a", newline="", encoding="utf-8")
            self._csv = csv.DictWriter(self._csv_file, fieldnames=FIELDS)
            if new:
                self._csv.writeheader()
                self._csv_file.flush()

    def close(self) -> None:
        """Close the files (they reopen in append mode on the next record)."""
        for fh in (getattr(self, "_jsonl", None), getattr(self, "_csv_file", None)):
            if fh is not None:
                fh.close()
        self._jsonl = None
        self._csv_file = None
        self._csv = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_jsonl"] = None
        state["_csv_file"] = None
        state["_csv"] = None
        return state

    def __del__(self):
        self.close()

    # -- records --------------------------------------------------------------
    def _record(self, name: str, value: Any, x_plot: Any) -> None:
        if isinstance(value, AlternativeValues):
            value = value.best_supported_value(float, int, torch.Tensor, np.ndarray)
            if value is None:
                self.skipped[name] = self.skipped.get(name, 0) + 1
                return
        if isinstance(value, dict):
            for key, sub in value.items():
                self._record(f"{name}/{key}", sub, x_plot)
            return
        number = _scalar(value)
        if number is None:
            number = _numeric_list(value)
        if number is None:
            self.skipped[name] = self.skipped.get(name, 0) + 1
            return
        rec = {"time": time.time(), "x_plot": _scalar(x_plot), "name": name}
        rec.update(parse_metric_name(name))
        rec["value"] = number
        self._ensure_open()
        self._jsonl.write(json.dumps({k: _json_safe(v) for k, v in rec.items()}, allow_nan=False))
        self._jsonl.write("\n")
        self._jsonl.flush()
        row = dict(rec)
        if isinstance(number, list):
            row["value"] = json.dumps(_json_safe(number), allow_nan=False)
        self._csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
        self._csv_file.flush()
        self.written += 1

    def log_single_metric(self, name, value, x_plot) -> None:
        """Record one value (see the class docstring for the accepted types)."""
        self._record(str(name), value, x_plot)

    def log_metrics(self, metric_values: List[MetricValue]) -> None:
        """Record every ``MetricValue`` of the list."""
        for mval in metric_values:
            self._record(str(mval.name), mval.value, mval.x_plot)

    # -- reading back -----------------------------------------------------------
    @staticmethod
    def read(path: str, *, jsonl_name: str = "metrics.jsonl") -> List[Dict[str, Any]]:
        """Load the records of a results folder (or of a ``.jsonl`` file path)."""
        file = path if str(path).endswith(".jsonl") else os.path.join(path, jsonl_name)
        if not os.path.exists(file):
            raise FileNotFoundError(
                f"no results file at {file}; pass the folder given to ResultsLogger(path=...)"
            )
        with open(file, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]


__all__ = ["ResultsLogger", "parse_metric_name", "FIELDS"]
