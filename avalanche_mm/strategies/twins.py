"""Drop-in multimodal twins of Avalanche's stock strategies.

Each twin has the same name and constructor as its Avalanche original and
adds :class:`~avalanche_mm.strategies.template.MultimodalTemplateMixin`, so
changing ``from avalanche.training import Naive`` into
``from avalanche_mm.strategies import Naive`` is all it takes to train on
multimodal batches.

The strategies here need nothing beyond the mixin: their plugins only read
``y``, task labels, logits or parameters. Strategies whose plugins handle
``x`` themselves (EWC, MAS, GEM, AGEM, DER, ER-ACE, iCaRL, herding) get
dict-aware plugins in :mod:`avalanche_mm.strategies.plugins`.
"""

from __future__ import annotations

from typing import List, Optional

from avalanche.training import supervised as _sup
from avalanche.training.storage_policy import ExemplarsBuffer
from avalanche.training.templates import SupervisedTemplate

from .plugins import ReplayPlugin
from .template import MultimodalTemplateMixin


class MultimodalSupervisedTemplate(MultimodalTemplateMixin, SupervisedTemplate):
    """Avalanche's ``SupervisedTemplate`` with multimodal batches."""


class Naive(MultimodalTemplateMixin, _sup.Naive):
    """Multimodal twin of :class:`avalanche.training.Naive` (fine-tuning)."""


class Cumulative(MultimodalTemplateMixin, _sup.Cumulative):
    """Multimodal twin of :class:`avalanche.training.Cumulative`."""


class JointTraining(MultimodalTemplateMixin, _sup.JointTraining):
    """Multimodal twin of :class:`avalanche.training.JointTraining`."""


class GDumb(MultimodalTemplateMixin, _sup.GDumb):
    """Multimodal twin of :class:`avalanche.training.GDumb`."""


class LwF(MultimodalTemplateMixin, _sup.LwF):
    """Multimodal twin of :class:`avalanche.training.LwF` (needs task-aware data,
    which every :func:`~avalanche_mm.data.make_multimodal_dataset` dataset is)."""


class SynapticIntelligence(MultimodalTemplateMixin, _sup.SynapticIntelligence):
    """Multimodal twin of :class:`avalanche.training.SynapticIntelligence`."""


#: Short alias, as in the literature.
SI = SynapticIntelligence


class FromScratchTraining(MultimodalTemplateMixin, _sup.FromScratchTraining):
    """Multimodal twin of :class:`avalanche.training.FromScratchTraining`."""


class Replay(MultimodalTemplateMixin, SupervisedTemplate):
    """Multimodal twin of :class:`avalanche.training.Replay`.

    Same constructor, plus an optional ``storage_policy`` so that every
    Avalanche storage policy can be used directly (reservoir
    ``ReservoirSamplingBuffer``, ``ClassBalancedBuffer``,
    ``ExperienceBalancedBuffer`` - the default, as in Avalanche - and
    ``ParametricBuffer``). Buffers keep the multimodal collate of the data
    they store, so replayed batches are padded and masked like fresh ones.

    :param mem_size: replay buffer size.
    :param storage_policy: optional storage policy; its ``max_size`` must
        equal ``mem_size`` when both are given.
    """

    def __init__(
        self,
        *,
        model,
        optimizer,
        criterion,
        mem_size: int = 200,
        storage_policy: Optional[ExemplarsBuffer] = None,
        plugins: Optional[List] = None,
        **base_kwargs,
    ):
        if storage_policy is not None and storage_policy.max_size != mem_size:
            raise ValueError(
                f"Replay: mem_size={mem_size} but storage_policy.max_size="
                f"{storage_policy.max_size}; give the same size to both (or only the policy "
                "and mem_size=policy.max_size)."
            )
        rp = ReplayPlugin(mem_size, storage_policy=storage_policy)
        plugins = list(plugins or []) + [rp]
        super().__init__(model=model, optimizer=optimizer, criterion=criterion, plugins=plugins, **base_kwargs)
        self.replay_plugin = rp


class _Unsupported:
    """Base of stock strategies that cannot work on multimodal inputs."""

    reason = ""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} cannot train on multimodal (dict) inputs: {self.reason} "
            "Use a supported twin (see avalanche_mm.strategies.SUPPORTED) or a multimodal "
            "method from avalanche_mm.strategies."
        )


def _refuse_dicts(strategy, experiences) -> list:
    """The experiences as a list; raise the multimodal error if one holds dict inputs."""
    exps = [experiences] if hasattr(experiences, "dataset") else list(experiences)
    for exp in exps:
        ds = getattr(exp, "dataset", None)
        if ds is not None and len(ds) and isinstance(ds[0][0], dict):
            raise NotImplementedError(
                f"{type(strategy).__name__} cannot train on multimodal (dict) inputs: {strategy.reason} "
                "Use a supported twin (see avalanche_mm.strategies.SUPPORTED) or a multimodal "
                "method from avalanche_mm.strategies. (On single-tensor data it is Avalanche's own class.)"
            )
    return exps


class _StockOnTensors:
    """Mixin over a stock Avalanche strategy: unchanged on tensor data, a clear error on dict data."""

    reason = ""

    def train(self, experiences, eval_streams=None, **kwargs):
        exps = _refuse_dicts(self, experiences)
        if eval_streams is not None:
            for s in eval_streams:
                _refuse_dicts(self, s)
        return super().train(experiences if hasattr(experiences, "dataset") else exps, eval_streams=eval_streams, **kwargs)

    def eval(self, exp_list, **kwargs):
        exps = _refuse_dicts(self, exp_list)
        return super().eval(exp_list if hasattr(exp_list, "dataset") else exps, **kwargs)


def _unsupported(name: str, reason: str):
    """Avalanche's stock ``name`` (exactly, on tensor data) that refuses multimodal dict data.

    Falls back to a class that always raises when this Avalanche has no such strategy.
    """
    import avalanche.training as stock_training

    try:
        stock = getattr(stock_training, name)
    except (AttributeError, ImportError) as err:
        why = f"{reason} (Avalanche's {name} is not available here: {err})"
        return type(name, (_Unsupported,), {"reason": why, "__doc__": f"Unsupported: {why}", "__module__": __name__})
    doc = (
        f"Avalanche's :class:`avalanche.training.{name}`, unchanged on single-tensor data. On multimodal "
        f"(dict) inputs ``train``/``eval`` raise ``NotImplementedError``: {reason}"
    )
    return type(name, (_StockOnTensors, stock), {"reason": reason, "__doc__": doc, "__module__": __name__})


GenerativeReplay = _unsupported(
    "GenerativeReplay",
    "it trains a generator of single input tensors (a VAE over x); there is no multimodal "
    "generator to replay dicts of modalities.",
)
LearningToPrompt = _unsupported(
    "LearningToPrompt",
    "Avalanche 0.6.0's L2P builds a timm ViT over images only (and fails with timm >= 0.9); "
    "use the prompt methods of avalanche_mm on a vision-language backbone instead.",
)
LaMAML = _unsupported(
    "LaMAML",
    "its meta-learning inner loop slices and concatenates x as one tensor per sample batch.",
)
MER = _unsupported(
    "MER", "its meta-experience replay concatenates single-tensor inputs sample by sample."
)
SCR = _unsupported(
    "SCR",
    "supervised contrastive replay augments x with image-only kornia transforms of one tensor.",
)
GSS_greedy = _unsupported(
    "GSS_greedy", "gradient-based sample selection stores x in a preallocated tensor buffer."
)
MIR = _unsupported(
    "MIR", "maximally interfered retrieval builds its buffer loader without collate and treats x as a tensor."
)
ER_AML = _unsupported(
    "ER_AML", "its metric-learning loss indexes and concatenates x as a single tensor."
)
FeatureReplay = _unsupported(
    "FeatureReplay", "it replays latent features of one tensor input through a split model."
)

#: Unsupported stock strategies and why.
UNSUPPORTED = {
    cls.__name__: cls.reason
    for cls in (
        GenerativeReplay,
        LearningToPrompt,
        LaMAML,
        MER,
        SCR,
        GSS_greedy,
        MIR,
        ER_AML,
        FeatureReplay,
    )
}


__all__ = [
    "MultimodalSupervisedTemplate",
    "Naive",
    "Cumulative",
    "JointTraining",
    "GDumb",
    "LwF",
    "SynapticIntelligence",
    "SI",
    "FromScratchTraining",
    "Replay",
    "GenerativeReplay",
    "LearningToPrompt",
    "LaMAML",
    "MER",
    "SCR",
    "GSS_greedy",
    "MIR",
    "ER_AML",
    "FeatureReplay",
    "UNSUPPORTED",
]
