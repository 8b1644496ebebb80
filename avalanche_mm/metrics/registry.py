"""The metric groups a run records: one :class:`~avalanche_mm.registry.Registry`.

A metric factory ``(ctx: MetricContext, **params) -> [PluginMetric, ...]``
adds its metrics to a strategy's ``EvaluationPlugin``. Its keyword parameters
are its config parameters (``evaluation.metrics.<name>: {...}``), declared once
in the signature. ``core`` groups are always recorded; the others are chosen in
the config (``evaluation.metrics``, or the shorthands ``evaluation.per_modality``
and ``evaluation.alignment``). ``passes(n_modalities, params)`` states the extra
forward passes per evaluated minibatch, which ``avalanche-mm check`` prints.
Other distributions add groups through the entry-point group ``avalanche_mm.metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Dict, List, Literal, Optional, Sequence

from avalanche_mm.registry import Range, Registry, params_from_signature
from avalanche_mm.schema import Opt


@dataclass
class MetricContext:
    """What a metric factory sees.

    :ivar kind: the model kind (``"clip"`` or ``"fusion"``).
    :ivar model: the model the strategy trains.
    :ivar initial_model: the model before any training.
    :ivar modalities: the benchmark's modalities.
    :ivar probe: the alignment probe set (CLIP kind with a reference split), or None.
    """

    kind: str
    model: Any = None
    initial_model: Any = None
    modalities: Sequence[str] = ()
    probe: Any = None


@dataclass
class MetricSpec:
    """A registered metric group.

    :ivar name: the config name.
    :ivar factory: ``(ctx, **params) -> [PluginMetric, ...]``.
    :ivar summary: one line.
    :ivar logged: the logged names (``UnimodalAcc_<m>``...), for ``list``.
    :ivar params: the config schema of its parameters.
    :ivar core: always recorded.
    :ivar model_kinds: model kinds it applies to.
    :ivar passes: ``(n_modalities, params) -> extra forward passes per minibatch``.
    :ivar needs: what it needs besides the model (``"reference split"``), for messages.
    """

    name: str
    factory: Callable[..., List[Any]]
    summary: str
    logged: str = ""
    params: Dict[str, Opt] = field(default_factory=dict)
    core: bool = False
    model_kinds: Sequence[str] = ("clip", "fusion")
    passes: Optional[Callable[[int, Dict[str, Any]], int]] = None
    needs: str = ""


#: every metric group (entry-point group ``avalanche_mm.metrics``)
METRICS: Registry = Registry("metric")


def register_metric(
    name: str,
    *,
    summary: str,
    logged: str = "",
    core: bool = False,
    model_kinds: Sequence[str] = ("clip", "fusion"),
    passes: Optional[Callable[[int, Dict[str, Any]], int]] = None,
    needs: str = "",
):
    """Decorator registering a metric factory ``(ctx, **params) -> [metric, ...]``."""

    def deco(factory):
        spec = MetricSpec(
            name=name, factory=factory, summary=summary, logged=logged,
            params=params_from_signature(factory, exclude=("ctx",)), core=core,
            model_kinds=tuple(model_kinds), passes=passes, needs=needs,
        )
        METRICS.register(name, spec, source=factory.__module__, summary=summary)
        return factory

    return deco


@register_metric("accuracy", summary="accuracy per test experience and over the test stream (Avalanche)",
                 logged="Top1_Acc_Exp, Top1_Acc_Stream", core=True)
def accuracy(ctx: MetricContext) -> List[Any]:
    from avalanche.evaluation.metrics import accuracy_metrics

    return list(accuracy_metrics(experience=True, stream=True))


@register_metric("loss", summary="training and evaluation loss (Avalanche)", logged="Loss_Epoch, Loss_Stream", core=True)
def loss(ctx: MetricContext) -> List[Any]:
    from avalanche.evaluation.metrics import loss_metrics

    return list(loss_metrics(epoch=True, stream=True))


@register_metric("accuracy-matrix", core=True, logged="AccMatrix_*, MTIL_Transfer/Avg/Last",
                 summary="accuracy matrix a(t,i): average, forgetting, BWT, FWT, MTIL Transfer/Avg/Last")
def accuracy_matrix(ctx: MetricContext) -> List[Any]:
    from avalanche_mm.metrics.accuracy_matrix import AccuracyMatrix

    return [AccuracyMatrix(stream_name="test")]


@register_metric("training-time", summary="wall time of training and evaluation", logged="TrainingTime", core=True)
def training_time(ctx: MetricContext) -> List[Any]:
    from avalanche_mm.metrics.cost import TrainingTime

    return [TrainingTime()]


def imbalance_passes(n: int, p: Dict[str, Any]) -> int:
    """Extra forward passes per minibatch of :func:`modality_imbalance` for ``n`` modalities."""
    if n < 2:
        return 0
    subsets = set()
    full = frozenset(range(n))
    if p.get("unimodal", True) or p.get("forgetting", True):
        subsets |= {frozenset([i]) for i in range(n)}
    contribution = p.get("contribution")
    index = p.get("imbalance_index")
    source = p.get("imbalance_source", "contribution")
    if contribution or (contribution is None and n == 2) or (index and source == "contribution") or (index is None and n == 2 and source == "contribution"):
        subsets |= {full - {i} for i in range(n)}
    if p.get("shapley") or (index and source == "shapley"):
        import itertools

        subsets |= {frozenset(c) for k in range(0, n) for c in itertools.combinations(range(n), k)}
    if (index or index is None) and source == "unimodal":
        subsets |= {frozenset([i]) for i in range(n)}
    return len(subsets - {full})


@register_metric(
    "modality-imbalance",
    summary="per-modality accuracy, contributions, Shapley values, imbalance index, unimodal forgetting",
    logged="UnimodalAcc_<m>, FusedAcc, ModalityContribution_<m>, ModalityShapley_<m>, ModalityImbalanceIndex, UnimodalForgetting_<m>, OGMGE_Ratio_<m>",
    passes=imbalance_passes,
)
def modality_imbalance(
    ctx: MetricContext,
    *,
    unimodal: bool = True,
    contribution: Optional[bool] = None,
    shapley: bool = False,
    imbalance_index: Optional[bool] = None,
    imbalance_source: Literal["contribution", "unimodal", "shapley"] = "contribution",
    forgetting: bool = True,
    modalities: Optional[List[str]] = None,
) -> List[Any]:
    """The modality-imbalance metrics of :func:`~avalanche_mm.metrics.modality_imbalance_metrics`.

    :param unimodal: accuracy of each modality alone (one pass per modality).
    :param contribution: accuracy lost without each modality; null = only when free (2 modalities).
    :param shapley: Shapley value of each modality (2**M - 1 passes, at most 4 modalities).
    :param imbalance_index: the imbalance index; null = as contribution's default.
    :param imbalance_source: what the index is computed from.
    :param forgetting: forgetting of each modality alone.
    :param modalities: the modalities to analyse (default: all).
    """
    from avalanche_mm.metrics.imbalance import modality_imbalance_metrics

    return modality_imbalance_metrics(
        unimodal=unimodal, contribution=contribution, shapley=shapley, imbalance_index=imbalance_index,
        imbalance_source=imbalance_source, forgetting=forgetting, modalities=modalities,
        ogm_ge=hasattr(ctx.model, "last_unimodal_logits"),
    )


@register_metric(
    "alignment",
    summary="cross-modal alignment and drift (from the previous and the initial model) on a probe set",
    logged="Align_*, Retrieval_*, Drift_*, DriftFromInit_*",
    model_kinds=("clip",),
    needs="reference split",
)
def alignment(ctx: MetricContext) -> List[Any]:
    import torch

    from avalanche_mm.metrics.alignment import CrossModalAlignment
    from avalanche_mm.metrics.drift import DriftFromInitial
    from avalanche_mm.strategies.finetune import find_backbone, logit_scale_of

    if ctx.probe is None:
        return []
    with torch.no_grad():  # the KL terms use the model's own temperature
        scale = float(logit_scale_of(find_backbone(ctx.initial_model)))
    return [CrossModalAlignment(ctx.probe, ks=(1, 5), logit_scale=scale), DriftFromInitial(ctx.probe, logit_scale=scale)]


__all__ = ["METRICS", "MetricSpec", "MetricContext", "register_metric", "imbalance_passes"]
