"""Retrieval evaluated as a stream, as Avalanche plugin metrics.

:class:`RetrievalStreamMetric` records the recall matrix ``R(t, i)`` (recall@k in both
directions on the test pairs of every phase ``i`` after training phase ``t``) from the
features the model computes anyway during evaluation (a
:class:`~avalanche_mm.models.RetrievalHead` keeps its last image and text features), and
logs per experience and per stream:

- ``Retrieval_i2t_R1_Exp``, ``Retrieval_t2i_R5_Exp``, ... and ``RetrievalR1_Exp`` (mean of the
  two R@1), ``RetrievalMeanRecall_Exp`` (mean of all recalls) for each test phase;
- ``RetrievalR1_AvgSeen``, ``RetrievalR1_FirstPhase``, ``RetrievalR1_Forgetting``,
  ``RetrievalR1_BWT``, ``RetrievalMeanRecall_AvgSeen`` (stream level), and the current row
  of every matrix as ``RetrievalMatrix_i2t_R1_Phase002`` etc. (stream level, one per test phase).

With ``shared_test_sets=True`` the test experiences are fixed test sets evaluated after every
phase (Mod-X: Flickr30K 1K and COCO 5K test splits); the matrix is ``[phases, test sets]``,
``RetrievalMatrix_*_PhaseNNN`` is test set NNN's column, and the stream summaries are
``RetrievalR1_AvgAll``, ``RetrievalR1_Forgetting``, ``RetrievalR1_BWT`` and
``RetrievalR1_FromInitial`` (when the initial model was evaluated) of
:func:`~avalanche_mm.metrics.functional.retrieval_stream.shared_test_summary` (likewise
``RetrievalMeanRecall_*``).

:class:`ZeroShotHeldOut` logs zero-shot classification accuracy on a held-out task
(Mod-X reports zero-shot transfer next to retrieval) after every evaluation.
Formulas: :mod:`avalanche_mm.metrics.functional.retrieval_stream`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from torch import Tensor

from avalanche_mm.metrics._utils import (
    TrainingProgress,
    current_stream_name,
    eval_mode,
    exp_metric_name,
    make_value,
    stream_metric_name,
)
from avalanche_mm.metrics.functional.retrieval_stream import (
    pair_recalls,
    recall_keys,
    recall_matrices,
    retrieval_stream_summary,
    shared_test_summary,
)

#: the per-experience metric the main job reads as the matrix row of a retrieval study
ROW_METRIC = "RetrievalR1_Exp"


def _head(model):
    from avalanche_mm.models.zero_shot import RetrievalHead

    if isinstance(model, RetrievalHead):
        return model
    for m in model.modules():
        if isinstance(m, RetrievalHead):
            return m
    return None


class RetrievalStreamMetric(PluginMetric[Dict[str, np.ndarray]]):
    """The recall matrix ``R(t, i)`` of a pair stream (see the module docstring).

    No extra forward pass: it reads the RetrievalHead's features of each evaluation
    minibatch, and the minibatch targets as image ids (several captions of one image
    share the image's id).

    :param ks: the recall cut-offs.
    :param stream_name: the evaluation stream to track.
    :param shared_test_sets: the test experiences are fixed test sets evaluated after every
        phase (columns = test sets), not one test set per phase.
    """

    def __init__(self, *, ks: Sequence[int] = (1, 5, 10), stream_name: str = "test", shared_test_sets: bool = False):
        super().__init__()
        self.shared_test_sets = bool(shared_test_sets)
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be positive integers, got {ks!r}.")
        self.stream_name = stream_name
        self.reset()

    def reset(self) -> None:
        self._progress = TrainingProgress()
        self.rows: Dict[int, Dict[int, Dict[str, float]]] = {}
        self.baseline: Dict[int, Dict[str, float]] = {}
        self._img: List[Tensor] = []
        self._txt: List[Tensor] = []
        self._ids: List[int] = []

    def state_dict(self):
        return {"started": self._progress.started, "rows": self.rows, "baseline": self.baseline}

    def load_state_dict(self, state):
        self.reset()
        self._progress.started = int(state["started"])
        self.rows = {int(t): {int(i): dict(v) for i, v in r.items()} for t, r in state["rows"].items()}
        self.baseline = {int(i): dict(v) for i, v in state["baseline"].items()}

    def matrices(self) -> Dict[str, np.ndarray]:
        """``{key: [T, N] matrix}`` of every recall key (see ``recall_matrices``)."""
        if not self.rows:
            return {}
        n_rows = max(self.rows) + 1
        n_cols = max(max(r) for r in self.rows.values() if r) + 1
        rows = [[self.rows.get(t, {}).get(i) for i in range(n_cols)] for t in range(n_rows)]
        return recall_matrices(rows, ks=self.ks)

    def result(self) -> Dict[str, np.ndarray]:
        return self.matrices()

    def _tracked(self, strategy) -> bool:
        return current_stream_name(strategy) == self.stream_name

    def before_training_exp(self, strategy) -> None:
        self._progress.on_before_training_exp()

    def before_eval_exp(self, strategy) -> None:
        self._img, self._txt, self._ids = [], [], []

    def after_eval_iteration(self, strategy) -> None:
        if not self._tracked(strategy):
            return
        head = _head(strategy.model)
        if head is None or head.last_image_features is None:
            raise TypeError(
                "RetrievalStreamMetric needs a model with a RetrievalHead (pair benchmarks); "
                f"got {type(strategy.model).__name__}."
            )
        self._img.append(F.normalize(head.last_image_features.detach().float(), dim=-1).cpu())
        self._txt.append(F.normalize(head.last_text_features.detach().float(), dim=-1).cpu())
        self._ids.extend(int(v) for v in strategy.mb_y.view(-1).tolist())

    def after_eval_exp(self, strategy) -> Optional[List[MetricValue]]:
        if not self._tracked(strategy) or not self._img:
            return None
        rec = pair_recalls(torch.cat(self._img), torch.cat(self._txt), pair_ids=self._ids, ks=self.ks)
        col = int(strategy.experience.current_experience)
        row = self._progress.row
        if row is None:
            self.baseline[col] = rec
        else:
            self.rows.setdefault(row, {})[col] = rec
        values = {f"Retrieval_{k.replace('@', '')}_Exp": v for k, v in rec.items() if k in recall_keys(self.ks)}
        if 1 in self.ks:
            values[ROW_METRIC] = 0.5 * (rec["i2t_R@1"] + rec["t2i_R@1"])
        values["RetrievalMeanRecall_Exp"] = float(np.mean([rec[k] for k in recall_keys(self.ks)]))
        return [make_value(self, exp_metric_name(k, strategy), float(v), strategy) for k, v in values.items()]

    def summary(self) -> Dict[str, float]:
        """Stream summaries at the current row."""
        row = self._progress.row
        mats = self.matrices()
        if row is None or not mats or row not in self.rows:
            return {}
        out: Dict[str, float] = {}
        if self.shared_test_sets:
            base = recall_matrices([[self.baseline.get(i) for i in range(mats["R@1"].shape[1])]], ks=self.ks) \
                if self.baseline else None
            names = {"avg_all": "AvgAll", "forgetting": "Forgetting", "bwt": "BWT", "from_initial": "FromInitial"}
            for key, prefix in (("R@1", "RetrievalR1"), ("mean_recall", "RetrievalMeanRecall")):
                try:
                    summ = shared_test_summary(mats[key][: row + 1], step=row,
                                               baseline=None if base is None else base[key][0])
                except ValueError:
                    continue
                out.update({f"{prefix}_{names[k]}": v for k, v in summ.items()})
            return out
        for key, prefix in (("R@1", "RetrievalR1"), ("mean_recall", "RetrievalMeanRecall")):
            mat = mats[key][: row + 1]
            if not np.isfinite(mat[row, : row + 1]).all():
                continue
            try:
                summ = retrieval_stream_summary(mat, step=row)
            except ValueError:
                continue
            names = {"avg_seen": "AvgSeen", "avg_all": "AvgAll", "first_phase": "FirstPhase", "forgetting": "Forgetting", "bwt": "BWT"}
            for k, v in summ.items():
                out[f"{prefix}_{names[k]}"] = v
        return out

    def after_eval(self, strategy) -> Optional[List[MetricValue]]:
        if not self._tracked(strategy):
            return None
        out = dict(self.summary())
        row = self._progress.row
        # the whole current row, one value per (key, test phase): the main job keeps
        # stream-level values per row, so the report can rebuild every recall matrix
        cells = self.rows.get(row, {}) if row is not None else self.baseline
        for col, rec in sorted(cells.items()):
            for k in recall_keys(self.ks):
                out[f"RetrievalMatrix_{k.replace('@', '')}_Phase{col:03d}"] = rec[k]
        vals = [make_value(self, stream_metric_name(k, strategy), float(v), strategy) for k, v in out.items()]
        return vals or None

    def __str__(self) -> str:
        return "RetrievalStream"


class ZeroShotHeldOut(PluginMetric[float]):
    """Zero-shot classification accuracy on a held-out task, after every evaluation.

    Logs ``ZeroShotHeldOut_Acc/eval_phase/<name>_probe``.

    :param images: ``[N, 3, H, W]`` preprocessed images of the held-out task, or a sequence of
        ``[3, H, W]`` images read one by one (e.g. a lazy folder of real images).
    :param labels: ``[N]`` class indices.
    :param class_texts: token ids ``[C, L]`` of one prompt per class (e.g. ``backbone.tokenize``).
    :param name: the task's name in the logged metric.
    :param stream_name: the evaluation stream after which it runs.
    """

    def __init__(self, images, labels: Tensor, class_texts: Tensor, *, name: str = "heldout",
                 stream_name: str = "test", batch_size: int = 256):
        super().__init__()
        if len(images) != labels.shape[0]:
            raise ValueError(f"ZeroShotHeldOut: {len(images)} images but {labels.shape[0]} labels.")
        if int(labels.max()) >= class_texts.shape[0]:
            raise ValueError(
                f"ZeroShotHeldOut: labels go up to {int(labels.max())} but there are "
                f"{class_texts.shape[0]} class prompts."
            )
        self.images, self.labels, self.class_texts = images, labels.long(), class_texts
        self.name, self.stream_name, self.batch_size = name, stream_name, int(batch_size)
        self._last: Optional[float] = None

    def reset(self) -> None:
        self._last = None

    def state_dict(self):
        return {"last": self._last}

    def load_state_dict(self, state):
        self._last = state.get("last")

    def result(self) -> Optional[float]:
        return self._last

    def accuracy(self, model, device) -> float:
        from avalanche_mm.strategies.finetune import find_backbone

        bb = find_backbone(model)
        with eval_mode(model):
            txt = F.normalize(bb.encode_text(self.class_texts.to(device)).float(), dim=-1)
            correct = 0
            n = len(self.images)
            for s in range(0, n, self.batch_size):
                e = min(s + self.batch_size, n)
                batch = self.images[s:e] if isinstance(self.images, Tensor) else torch.stack([self.images[i] for i in range(s, e)])
                img = F.normalize(bb.encode_image(batch.float().to(device)).float(), dim=-1)
                pred = (img @ txt.t()).argmax(1).cpu()
                correct += int((pred == self.labels[s:e]).sum())
        return correct / n

    def after_eval(self, strategy) -> Optional[List[MetricValue]]:
        if current_stream_name(strategy) != self.stream_name:
            return None
        self._last = self.accuracy(strategy.model, strategy.device)
        return [make_value(self, f"ZeroShotHeldOut_Acc/eval_phase/{self.name}_probe", self._last, strategy)]

    def __str__(self) -> str:
        return "ZeroShotHeldOut"


__all__ = ["ROW_METRIC", "RetrievalStreamMetric", "ZeroShotHeldOut"]
