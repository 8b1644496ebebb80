"""Modality-imbalance plugin metrics: unimodal accuracy, contributions, Shapley values, the
imbalance index, per-modality forgetting (evaluation) and the OGM-GE discrepancy ratio
(training).

The evaluation metrics ablate modalities through the batch's presence mask
(:meth:`avalanche_mm.data.MultimodalBatch.drop`): after every evaluated minibatch they run the
model again on copies of ``strategy.mb_x`` with some modalities marked absent. Metrics that are
given the same :class:`ModalityAblation` object share those passes (the factory
:func:`modality_imbalance_metrics` does this for you), so each distinct set of dropped
modalities costs one extra forward pass per evaluated minibatch, whatever the number of
metrics.
"""

import itertools
import warnings
from typing import TYPE_CHECKING, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.models.utils import avalanche_forward

from avalanche_mm.data.batch import MultimodalBatch
from avalanche_mm.metrics._utils import (
    TrainingProgress,
    current_stream_name,
    epoch_metric_name,
    exp_metric_name,
    make_value,
    stream_metric_name,
    unwrap_model,
)
from avalanche_mm.metrics.functional.imbalance import (
    correct_predictions,
    imbalance_index,
    modality_contributions,
    ogm_ge_ratios,
    ogm_ge_scores,
    shapley_values,
)
from avalanche_mm.metrics.functional.stream import forgetting

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate

#: exact Shapley values are offered for at most this many modalities (2**M - 1 passes).
MAX_SHAPLEY_MODALITIES = 4


class ModalityAblation:
    """Runs the model on modality-ablated copies of the current minibatch, with a cache.

    ``logits(strategy, dropped)`` returns the model output on ``strategy.mb_x`` with the
    modalities in ``dropped`` marked absent; an empty ``dropped`` returns
    ``strategy.mb_output`` (no extra pass). Results are cached for the current minibatch
    object, so several metrics asking for the same ablation share one pass. ``extra_passes``
    counts the forward passes actually run.
    """

    def __init__(self) -> None:
        self._batch = None
        self._cache: Dict[FrozenSet[str], Tensor] = {}
        self.extra_passes = 0

    def logits(self, strategy: "SupervisedTemplate", dropped: Iterable[str]) -> Tensor:
        """Model output on the current minibatch with ``dropped`` modalities absent.

        :param strategy: the strategy (reads ``mb_x``, ``mb_output``, ``mb_task_id``, ``model``).
        :param dropped: modality names to remove.
        """
        x = strategy.mb_x
        if not isinstance(x, MultimodalBatch):
            raise TypeError(
                "modality-ablation metrics need the model input to be an "
                "avalanche_mm.data.MultimodalBatch (use a multimodal dataset, whose collate "
                "builds one, with a strategy from avalanche_mm.strategies); got "
                f"{type(x).__name__}"
            )
        if x is not self._batch:
            self._batch = x
            self._cache = {}
        key = frozenset(dropped)
        if not key:
            return strategy.mb_output
        if key not in self._cache:
            drop = sorted(key)

            def ablated(xs, ts):
                return avalanche_forward(strategy.model, xs.drop(*drop), ts)

            # sharded evaluation (several processes): each rank runs the pass on its own rows
            # and the outputs are gathered (MultimodalTemplateMixin.map_eval_rows)
            rows = getattr(strategy, "map_eval_rows", None)
            with torch.no_grad():
                self._cache[key] = rows(ablated) if callable(rows) else ablated(x, strategy.mb_task_id)
            self.extra_passes += 1
        return self._cache[key]

    def clear(self) -> None:
        """Drop the cached minibatch and outputs."""
        self._batch = None
        self._cache = {}


class _Counts:
    """Correct-prediction counts of one evaluated experience (or a whole stream)."""

    def __init__(self) -> None:
        self.total = 0
        self.correct: Dict[FrozenSet[str], int] = {}
        self.present_total: Dict[str, int] = {}
        self.present_correct: Dict[str, int] = {}

    def add(self, other: "_Counts") -> None:
        self.total += other.total
        for k, v in other.correct.items():
            self.correct[k] = self.correct.get(k, 0) + v
        for k, v in other.present_total.items():
            self.present_total[k] = self.present_total.get(k, 0) + v
        for k, v in other.present_correct.items():
            self.present_correct[k] = self.present_correct.get(k, 0) + v

    def acc(self, dropped: FrozenSet[str]) -> float:
        return self.correct[dropped] / self.total

    def unimodal_acc(self, m: str) -> Optional[float]:
        n = self.present_total.get(m, 0)
        return self.present_correct[m] / n if n else None


class _AblationMetric(PluginMetric[Dict[str, float]]):
    """Base of the evaluation-time ablation metrics: accumulates, per evaluated experience and
    over the stream, how many predictions stay correct under each needed ablation."""

    base_name = "Ablation"
    needs_unimodal = False
    #: when set, the metric stands aside (no passes, nothing logged, one warning) if the batch
    #: has more analysed modalities than this; used by the default set to keep its cost at
    #: one extra pass per modality (see :func:`modality_imbalance_metrics`)
    skip_above: Optional[int] = None
    _warned_skip = False

    def __init__(
        self,
        *,
        modalities: Optional[Sequence[str]] = None,
        ablation: Optional[ModalityAblation] = None,
    ):
        super().__init__()
        if modalities is not None:
            if isinstance(modalities, str) or len(modalities) == 0:
                raise ValueError(
                    f"modalities must be a non-empty list of modality names (or None for all "
                    f"modalities of the batch); got {modalities!r}"
                )
            if len(set(modalities)) != len(modalities):
                raise ValueError(f"modalities has duplicates: {list(modalities)}")
        self.modalities = list(modalities) if modalities is not None else None
        if ablation is not None and not isinstance(ablation, ModalityAblation):
            raise TypeError(f"ablation must be a ModalityAblation; got {type(ablation).__name__}")
        self.ablation = ablation if ablation is not None else ModalityAblation()
        self.reset()

    # -- configuration ----------------------------------------------------
    def _resolve_modalities(self, x: MultimodalBatch) -> List[str]:
        mods = list(x.modalities)
        if self.modalities is None:
            chosen = mods
        else:
            unknown = [m for m in self.modalities if m not in mods]
            if unknown:
                raise ValueError(
                    f"{type(self).__name__}: modalities {unknown} are not in the evaluated "
                    f"batch (it has {mods}); fix the `modalities` argument"
                )
            chosen = list(self.modalities)
        self._check_modalities(chosen)
        return chosen

    def _check_modalities(self, mods: List[str]) -> None:
        if len(mods) < 1:
            raise ValueError(f"{type(self).__name__} needs at least one modality")

    def dropped_sets(self, mods: List[str]) -> List[FrozenSet[str]]:
        """The ablations (sets of removed modalities) this metric needs; ``{}`` = no removal."""
        raise NotImplementedError

    def values(self, counts: _Counts, mods: List[str]) -> Dict[str, float]:
        """Logged values (base name -> value) from the counts."""
        raise NotImplementedError

    # -- state -------------------------------------------------------------
    def reset(self) -> None:
        self._exp = _Counts()
        self._stream = _Counts()
        self._mods: Optional[List[str]] = None
        self._last: Dict[str, float] = {}

    def result(self) -> Dict[str, float]:
        """The values logged at the end of the last evaluated experience or stream."""
        return dict(self._last)

    # -- accumulation --------------------------------------------------------
    def _accumulate(self, strategy: "SupervisedTemplate", counts: _Counts, mods: List[str]) -> None:
        y = strategy.mb_y
        x = strategy.mb_x
        needed = set(self.dropped_sets(mods))
        if self.needs_unimodal:
            needed.update(frozenset(o for o in mods if o != m) for m in mods)
        hits: Dict[FrozenSet[str], Tensor] = {}
        for dropped in needed:
            hits[dropped] = correct_predictions(self.ablation.logits(strategy, dropped), y)
            counts.correct[dropped] = counts.correct.get(dropped, 0) + int(hits[dropped].sum())
        counts.total += int(y.numel())
        if self.needs_unimodal:
            for m in mods:
                alone = hits[frozenset(o for o in mods if o != m)]
                present = x.present[m].to(alone.device)
                counts.present_total[m] = counts.present_total.get(m, 0) + int(present.sum())
                counts.present_correct[m] = counts.present_correct.get(m, 0) + int(
                    (alone & present).sum()
                )

    def before_eval_exp(self, strategy: "SupervisedTemplate") -> None:
        self._exp = _Counts()

    def before_eval(self, strategy: "SupervisedTemplate") -> None:
        self._stream = _Counts()
        self._mods = None

    def after_eval_iteration(self, strategy: "SupervisedTemplate") -> None:
        mods = self._resolve_modalities(strategy.mb_x)
        if self._mods is not None and mods != self._mods:
            raise ValueError(
                f"{type(self).__name__}: the evaluated modalities changed from {self._mods} to "
                f"{mods} within one evaluation; pass `modalities` explicitly"
            )
        self._mods = mods
        if self._skipped(mods):
            return
        self._accumulate(strategy, self._exp, mods)

    def _skipped(self, mods: List[str]) -> bool:
        if self.skip_above is None or len(mods) <= self.skip_above:
            return False
        if not self._warned_skip:
            self._warned_skip = True
            warnings.warn(
                f"{type(self).__name__} is off for {len(mods)} modalities in this default set: "
                f"it would add {len(mods)} forward passes per minibatch on top of the unimodal "
                "ones. Pass it explicitly (e.g. modality_imbalance_metrics(contribution=True, "
                "imbalance_index=True)) to compute it anyway.",
                stacklevel=2,
            )
        return True

    def _emit(self, strategy, counts: _Counts, exp_level: bool) -> Optional[List[MetricValue]]:
        if counts.total == 0 or self._mods is None or self._skipped(self._mods):
            return None
        vals = self.values(counts, self._mods)
        self._last = dict(vals)
        out = []
        for base, v in vals.items():
            suffix = "_Exp" if exp_level else "_Stream"
            name = (exp_metric_name if exp_level else stream_metric_name)(base + suffix, strategy)
            out.append(make_value(self, name, float(v), strategy))
        return out

    def after_eval_exp(self, strategy: "SupervisedTemplate") -> Optional[List[MetricValue]]:
        self._stream.add(self._exp)
        return self._emit(strategy, self._exp, exp_level=True)

    def after_eval(self, strategy: "SupervisedTemplate") -> Optional[List[MetricValue]]:
        out = self._emit(strategy, self._stream, exp_level=False)
        self.ablation.clear()
        return out

    def __str__(self) -> str:
        return self.base_name


class UnimodalAccuracy(_AblationMetric):
    """Accuracy of each modality alone, beside the fused accuracy.

    For modality ``m`` every other analysed modality is removed through the presence mask and
    the accuracy is measured on the samples where ``m`` is present. Logged (per evaluated
    experience ``..._Exp/eval_phase/<stream>_stream/TaskNNN/ExpNNN`` and per stream
    ``..._Stream/eval_phase/<stream>_stream``): ``FusedAcc`` and ``UnimodalAcc_<m>`` for each
    modality.

    Cost: one extra forward pass per modality per evaluated minibatch (for two modalities
    these passes are the same as :class:`ModalityContribution`'s, and are shared with it when
    both use the same :class:`ModalityAblation`).
    """

    base_name = "UnimodalAcc"
    needs_unimodal = True

    def __init__(self, *, modalities=None, ablation=None):
        """
        :param modalities: modalities to analyse (default: every modality of the batch);
            the others always stay present.
        :param ablation: a shared :class:`ModalityAblation` (default: a private one).
        """
        super().__init__(modalities=modalities, ablation=ablation)

    def dropped_sets(self, mods):
        return [frozenset()]

    def values(self, counts, mods):
        out = {"FusedAcc": counts.acc(frozenset())}
        for m in mods:
            acc = counts.unimodal_acc(m)
            if acc is not None:
                out[f"UnimodalAcc_{m}"] = acc
        return out


class ModalityContribution(_AblationMetric):
    """Contribution of each modality: ``c_m = acc(all) - acc(all without m)``.

    Logged: ``ModalityContribution_<m>`` per experience (``_Exp``) and stream (``_Stream``).

    Cost: one extra forward pass per analysed modality per evaluated minibatch.
    """

    base_name = "ModalityContribution"

    def __init__(self, *, modalities=None, ablation=None):
        """
        :param modalities: modalities to analyse (default: every modality of the batch).
        :param ablation: a shared :class:`ModalityAblation` (default: a private one).
        """
        super().__init__(modalities=modalities, ablation=ablation)

    def _check_modalities(self, mods):
        if len(mods) < 2:
            raise ValueError(
                f"ModalityContribution needs at least two modalities to remove one; got {mods}"
            )

    def dropped_sets(self, mods):
        return [frozenset()] + [frozenset([m]) for m in mods]

    def values(self, counts, mods):
        contrib = modality_contributions(
            counts.acc(frozenset()), {m: counts.acc(frozenset([m])) for m in mods}
        )
        return {f"ModalityContribution_{m}": v for m, v in contrib.items()}


def _subset_accuracies(counts: _Counts, mods: List[str]) -> Dict[FrozenSet[str], float]:
    """v(S) = accuracy with only S present (among ``mods``)."""
    all_mods = frozenset(mods)
    return {
        frozenset(s): counts.acc(all_mods - frozenset(s))
        for r in range(len(mods) + 1)
        for s in itertools.combinations(mods, r)
    }


def _all_dropped_sets(mods: List[str]) -> List[FrozenSet[str]]:
    return [frozenset(s) for r in range(len(mods) + 1) for s in itertools.combinations(mods, r)]


class ModalityShapley(_AblationMetric):
    """Exact Shapley value of each modality for the accuracy (up to 4 modalities).

    ``v(S)`` is the accuracy when only the modalities in ``S`` are present (the empty set
    included: every analysed modality removed). The values sum to
    ``v(all) - v(empty)``. Logged: ``ModalityShapley_<m>`` (``_Exp`` and ``_Stream``).

    Cost: ``2**M - 1`` extra forward passes per evaluated minibatch for ``M`` modalities
    (3 for two modalities, 7 for three, 15 for four): more than one pass per modality, so it is
    opt-in (:func:`modality_imbalance_metrics` ``shapley=True``).
    """

    base_name = "ModalityShapley"

    def __init__(self, *, modalities=None, ablation=None):
        """
        :param modalities: modalities to analyse, at most 4 (default: every modality of the
            batch, which must then have at most 4).
        :param ablation: a shared :class:`ModalityAblation` (default: a private one).
        """
        if modalities is not None and len(modalities) > MAX_SHAPLEY_MODALITIES:
            raise ValueError(
                f"exact Shapley values are supported for up to {MAX_SHAPLEY_MODALITIES} "
                f"modalities (2**M - 1 passes per minibatch); got {len(modalities)}: "
                f"{list(modalities)}. Pass `modalities` with at most {MAX_SHAPLEY_MODALITIES}."
            )
        super().__init__(modalities=modalities, ablation=ablation)

    def _check_modalities(self, mods):
        if len(mods) > MAX_SHAPLEY_MODALITIES:
            raise ValueError(
                f"the batch has {len(mods)} modalities {mods}; exact Shapley values are "
                f"supported for up to {MAX_SHAPLEY_MODALITIES}: pass `modalities` to choose them"
            )

    def dropped_sets(self, mods):
        return _all_dropped_sets(mods)

    def values(self, counts, mods):
        phi = shapley_values(_subset_accuracies(counts, mods), mods)
        return {f"ModalityShapley_{m}": v for m, v in phi.items()}


class ModalityImbalanceIndex(_AblationMetric):
    """One number in [0, 1] summarising how unequally the modalities contribute.

    ``II = (M * max_m p_m - 1) / (M - 1)`` with shares ``p_m = u_m^+ / sum_j u_j^+`` of
    non-negative per-modality scores ``u_m`` (see :func:`imbalance_index`): 0 = balanced,
    1 = one modality does all the work; NaN when no modality has a positive score. The score
    ``u_m`` depends on ``source``:

    - ``"contribution"`` (default): ``acc(all) - acc(all without m)``; ``M`` extra passes;
    - ``"shapley"``: the exact Shapley value; ``2**M - 1`` extra passes, at most 4 modalities;
    - ``"unimodal"``: ``acc(only m) - acc(none)`` (gain of each modality alone over the empty
      input); ``M + 1`` extra passes.

    Logged: ``ModalityImbalanceIndex`` (``_Exp`` and ``_Stream``).
    """

    base_name = "ModalityImbalanceIndex"
    SOURCES = ("contribution", "shapley", "unimodal")

    def __init__(self, *, source: str = "contribution", modalities=None, ablation=None):
        """
        :param source: ``"contribution"``, ``"shapley"`` or ``"unimodal"`` (see above).
        :param modalities: modalities to analyse (default: every modality of the batch).
        :param ablation: a shared :class:`ModalityAblation` (default: a private one).
        """
        if source not in self.SOURCES:
            raise ValueError(f"source must be one of {self.SOURCES}; got {source!r}")
        if source == "shapley" and modalities is not None and len(modalities) > MAX_SHAPLEY_MODALITIES:
            raise ValueError(
                f"source='shapley' supports up to {MAX_SHAPLEY_MODALITIES} modalities; got "
                f"{list(modalities)}"
            )
        self.source = source
        super().__init__(modalities=modalities, ablation=ablation)

    def _check_modalities(self, mods):
        if len(mods) < 2:
            raise ValueError(f"the imbalance index needs at least two modalities; got {mods}")
        if self.source == "shapley" and len(mods) > MAX_SHAPLEY_MODALITIES:
            raise ValueError(
                f"source='shapley' supports up to {MAX_SHAPLEY_MODALITIES} modalities; the batch "
                f"has {mods}: pass `modalities` or use source='contribution'"
            )

    def dropped_sets(self, mods):
        if self.source == "contribution":
            return [frozenset()] + [frozenset([m]) for m in mods]
        if self.source == "shapley":
            return _all_dropped_sets(mods)
        all_mods = frozenset(mods)
        return [all_mods] + [all_mods - {m} for m in mods]

    def scores(self, counts: _Counts, mods: List[str]) -> Dict[str, float]:
        """The per-modality scores ``u_m`` the index is computed from."""
        if self.source == "contribution":
            return modality_contributions(
                counts.acc(frozenset()), {m: counts.acc(frozenset([m])) for m in mods}
            )
        if self.source == "shapley":
            return shapley_values(_subset_accuracies(counts, mods), mods)
        all_mods = frozenset(mods)
        empty = counts.acc(all_mods)
        return {m: counts.acc(all_mods - {m}) - empty for m in mods}

    def values(self, counts, mods):
        return {"ModalityImbalanceIndex": imbalance_index(self.scores(counts, mods))}


class UnimodalForgetting(_AblationMetric):
    """Forgetting of each modality alone, from one unimodal accuracy matrix per modality.

    Like :class:`avalanche_mm.metrics.AccuracyMatrix` but with the accuracy of modality ``m``
    alone (others removed, measured where ``m`` is present); at the end of each evaluation of
    the tracked stream, from the second training experience on, it logs
    ``UnimodalForgetting_<m>_Stream/eval_phase/<stream>_stream`` = the average forgetting of
    that modality (``docs/metrics.md``). Per-modality matrices: :attr:`matrices`.

    Cost: one extra forward pass per modality per evaluated minibatch (shared with
    :class:`UnimodalAccuracy` through a common :class:`ModalityAblation`).
    """

    base_name = "UnimodalForgetting"
    needs_unimodal = True

    def __init__(self, *, modalities=None, ablation=None, stream_name: str = "test"):
        """
        :param modalities: modalities to analyse (default: every modality of the batch).
        :param ablation: a shared :class:`ModalityAblation` (default: a private one).
        :param stream_name: the evaluation stream whose matrix is tracked.
        """
        self.stream_name = stream_name
        super().__init__(modalities=modalities, ablation=ablation)

    def reset(self) -> None:
        super().reset()
        self._progress = TrainingProgress()
        self._entries: Dict[str, Dict[Tuple[int, int], float]] = {}

    @property
    def matrices(self) -> Dict[str, np.ndarray]:
        """modality -> unimodal accuracy matrix (rows = training experiences, NaN = missing)."""
        out = {}
        for m, entries in self._entries.items():
            if not entries:
                continue
            n_rows = max(r for r, _ in entries) + 1
            n_cols = max(c for _, c in entries) + 1
            mat = np.full((n_rows, n_cols), np.nan)
            for (r, c), v in entries.items():
                mat[r, c] = v
            out[m] = mat
        return out

    def dropped_sets(self, mods):
        return []

    def values(self, counts, mods):
        return {}

    def before_training_exp(self, strategy: "SupervisedTemplate") -> None:
        self._progress.on_before_training_exp()

    def after_eval_iteration(self, strategy: "SupervisedTemplate") -> None:
        if current_stream_name(strategy) == self.stream_name:
            super().after_eval_iteration(strategy)

    def after_eval_exp(self, strategy: "SupervisedTemplate") -> None:
        row = self._progress.row
        if row is None or self._mods is None or self._exp.total == 0:
            return None
        if current_stream_name(strategy) != self.stream_name:
            return None
        col = int(strategy.experience.current_experience)
        for m in self._mods:
            acc = self._exp.unimodal_acc(m)
            if acc is not None:
                self._entries.setdefault(m, {})[(row, col)] = acc
        return None

    def after_eval(self, strategy: "SupervisedTemplate") -> Optional[List[MetricValue]]:
        self.ablation.clear()
        row = self._progress.row
        if row is None or row < 1 or current_stream_name(strategy) != self.stream_name:
            return None
        out = []
        last = {}
        for m, mat in self.matrices.items():
            if mat.shape[0] <= row or mat.shape[1] <= row:
                continue
            block = mat[: row + 1, : row + 1]
            if not np.all(np.isfinite(block[np.tril_indices(row + 1)])):
                continue
            val = forgetting(mat[: row + 1], step=row)
            last[f"UnimodalForgetting_{m}"] = val
            name = stream_metric_name(f"UnimodalForgetting_{m}_Stream", strategy)
            out.append(make_value(self, name, float(val), strategy))
        self._last = last
        return out or None


class OGMGERatio(PluginMetric[Dict[str, float]]):
    """OGM-GE discrepancy ratio during training, from the model's per-modality logits.

    After every training iteration it reads ``model.last_unimodal_logits`` (a dict modality ->
    ``[B, C]`` logits of each modality's branch alone, set by the model on every forward) and
    ``strategy.mb_y``, and accumulates ``s_m = sum_b softmax(z_m[b])[y_b]`` over the epoch. At
    the end of each training epoch it logs, for every modality:

    - ``OGMGE_Score_<m>_Epoch/train_phase/<stream>_stream/TaskNNN``: ``s_m`` averaged per sample;
    - ``OGMGE_Ratio_<m>_Epoch/...``: ``rho_m = s_m / mean_{j != m} s_j`` (for two modalities,
      exactly OGM-GE's ``rho``; > 1 = dominant).

    Cost: none (reads logits the forward pass already computed).
    """

    def __init__(self, *, attribute: str = "last_unimodal_logits"):
        """
        :param attribute: name of the model attribute holding the per-modality logits.
        """
        super().__init__()
        if not isinstance(attribute, str) or not attribute:
            raise ValueError(f"attribute must be an attribute name; got {attribute!r}")
        self.attribute = attribute
        self.reset()

    def reset(self) -> None:
        self._scores: Dict[str, float] = {}
        self._n = 0
        self._last: Dict[str, float] = {}

    def result(self) -> Dict[str, float]:
        """The ratios logged at the end of the last epoch (modality -> rho)."""
        return dict(self._last)

    def _unimodal_logits(self, strategy: "SupervisedTemplate") -> Dict[str, Tensor]:
        model = unwrap_model(strategy.model)
        logits = getattr(model, self.attribute, None)
        if logits is None:
            raise AttributeError(
                f"OGMGERatio needs per-modality logits: the model must set "
                f"`model.{self.attribute}` (a dict modality -> Tensor[B, num_classes] of each "
                f"modality's branch alone) on every forward. {type(model).__name__} has no such "
                f"attribute (or it is None). Use a fusion model from avalanche_mm.models, or set "
                f"the attribute in your model's forward."
            )
        if not isinstance(logits, dict) or len(logits) < 2:
            raise ValueError(
                f"model.{self.attribute} must be a dict with logits for at least two "
                f"modalities; got {type(logits).__name__} "
                f"{list(logits) if isinstance(logits, dict) else ''}"
            )
        return logits

    def before_training_epoch(self, strategy: "SupervisedTemplate") -> None:
        self._scores = {}
        self._n = 0

    def after_training_iteration(self, strategy: "SupervisedTemplate") -> None:
        scores = ogm_ge_scores(self._unimodal_logits(strategy), strategy.mb_y)
        for m, s in scores.items():
            self._scores[m] = self._scores.get(m, 0.0) + s
        self._n += int(strategy.mb_y.numel())

    def after_training_epoch(self, strategy: "SupervisedTemplate") -> Optional[List[MetricValue]]:
        if self._n == 0:
            return None
        ratios = ogm_ge_ratios(self._scores)
        self._last = dict(ratios)
        out = []
        for m in sorted(self._scores):
            out.append(
                make_value(
                    self,
                    epoch_metric_name(f"OGMGE_Score_{m}_Epoch", strategy),
                    self._scores[m] / self._n,
                    strategy,
                )
            )
            out.append(
                make_value(
                    self, epoch_metric_name(f"OGMGE_Ratio_{m}_Epoch", strategy), ratios[m], strategy
                )
            )
        return out

    def __str__(self) -> str:
        return "OGMGE"


def modality_imbalance_metrics(
    *,
    unimodal: bool = True,
    contribution: Optional[bool] = None,
    shapley: bool = False,
    imbalance_index: Optional[bool] = None,
    imbalance_source: str = "contribution",
    forgetting: bool = True,
    ogm_ge: bool = False,
    modalities: Optional[Sequence[str]] = None,
    stream_name: str = "test",
) -> List[PluginMetric]:
    """The modality-imbalance metrics, sharing one :class:`ModalityAblation`.

    The defaults cost at most one extra forward pass per modality per evaluated minibatch:
    unimodal accuracy and per-modality forgetting always (``M`` passes, shared); contributions
    and the imbalance index (from contributions) automatically when there are two modalities,
    where "without m" is "only the other one" and they reuse the same passes. With three or more
    modalities "only m" and "without m" differ, so contributions and the index would add ``M``
    passes: they stand aside (with a warning) unless asked for with ``True``, which costs ``2M``.
    ``shapley=True`` costs ``2**M - 1``.

    :param unimodal: add :class:`UnimodalAccuracy`.
    :param contribution: add :class:`ModalityContribution`; ``None`` (default) = only when it
        is free (two modalities), ``True`` = always.
    :param shapley: add :class:`ModalityShapley` (at most 4 modalities).
    :param imbalance_index: add :class:`ModalityImbalanceIndex`; ``None`` (default) = as
        ``contribution``'s default, ``True`` = always.
    :param imbalance_source: the index's ``source``.
    :param forgetting: add :class:`UnimodalForgetting`.
    :param ogm_ge: add :class:`OGMGERatio` (training-time; the model must expose
        ``last_unimodal_logits``).
    :param modalities: modalities to analyse (default: all of the batch).
    :param stream_name: the evaluation stream tracked by :class:`UnimodalForgetting`.
    :return: a list to pass to ``EvaluationPlugin``.
    """
    ablation = ModalityAblation()
    out: List[PluginMetric] = []
    if unimodal:
        out.append(UnimodalAccuracy(modalities=modalities, ablation=ablation))
    if contribution is None or contribution:
        metric = ModalityContribution(modalities=modalities, ablation=ablation)
        metric.skip_above = 2 if contribution is None else None
        out.append(metric)
    if shapley:
        out.append(ModalityShapley(modalities=modalities, ablation=ablation))
    if imbalance_index is None or imbalance_index:
        metric = ModalityImbalanceIndex(
            source=imbalance_source, modalities=modalities, ablation=ablation
        )
        metric.skip_above = 2 if imbalance_index is None and imbalance_source == "contribution" else None
        out.append(metric)
    if forgetting:
        out.append(
            UnimodalForgetting(modalities=modalities, ablation=ablation, stream_name=stream_name)
        )
    if ogm_ge:
        out.append(OGMGERatio())
    if not out:
        raise ValueError("modality_imbalance_metrics: every metric is disabled; enable one")
    return out


__all__ = [
    "MAX_SHAPLEY_MODALITIES",
    "ModalityAblation",
    "UnimodalAccuracy",
    "ModalityContribution",
    "ModalityShapley",
    "ModalityImbalanceIndex",
    "UnimodalForgetting",
    "OGMGERatio",
    "modality_imbalance_metrics",
]
