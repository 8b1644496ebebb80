"""Mod-X: Maintain off-diagonal information-matriX (Ni et al., "Continual
Vision-Language Representation Learning with Off-Diagonal Information", ICML 2023).

CLIP is trained on a stream of image-text pairs (instance-incremental phases).
On each minibatch of the new phase:

- **contrastive term**: ``0.5 (CE_i2t + CE_t2i)`` on ``s * I T^T`` (CLIP's
  InfoNCE with the model's logit scale ``s``);
- **off-diagonal distillation with cognition alignment**: the cosine
  similarity matrices of the frozen previous model, ``S_old = I_old T_old^T``
  (image rows) and ``S_old^T`` (text rows), are distilled into the current
  ones ``S_new``. Rows where the old model's argmax is not the matching pair
  (the old model "mis-cognises" that sample) are replaced by the current
  model's row (:func:`cognition_align`), so they teach nothing.
  ``L_kd = 0.5 [KL(softmax S_old || softmax S_new) + KL(softmax S_old^T || softmax S_new^T)]``;
- ``loss = L_contrastive + alpha * L_kd`` with ``alpha = 20``.

What the released code (ZixuanNi/Mod-X, ``ModX_Training/continue_train_model.py``,
``modx_5phase.sh``) does, and is the default here (``kd_logits="cosine"``,
``reduction="sum"``): the softmax is taken over the *raw cosine
similarities* (no temperature, no logit scale), the KL is summed over rows
and columns (``F.kl_div(..., reduction="sum")``, not averaged over the
batch), ``alpha = 20``, and the logit scale is clamped to ``[0, ln 100]``
after each step. The paper writes the same KL over the contrastive matrices
used by the InfoNCE term; ``kd_logits="scaled"`` takes the softmax over
``s * cos`` instead, and ``reduction="batchmean"`` averages over rows.

Under ``torchrun`` (docs/scaling.md) the InfoNCE term is computed over the global batch
(:meth:`ContrastiveFineTune.criterion`) while the off-diagonal distillation stays per
shard: each rank distils its own rows' similarity matrices (what
``DistributedDataParallel`` on the released code computes); with ``reduction="sum"`` its
size is that of a shard.

:class:`ModXPlugin` holds the mechanism; :class:`ModX` is contrastive
continual training (:class:`ContrastiveFineTune`) with it. The model must be a
:class:`~avalanche_mm.models.RetrievalHead` (or contain one): the pair
benchmarks (``world-retrieval-stream``, ``flickr30k-retrieval``) give one.
"""

from __future__ import annotations

import copy
from typing import Annotated, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from avalanche_mm.registry import Range

from .finetune import FineTune, _check_number

# ---------------------------------------------------------------------------
# pair helpers shared with CTP
# ---------------------------------------------------------------------------


def find_retrieval_head(model: nn.Module):
    """The :class:`~avalanche_mm.models.RetrievalHead` in ``model`` (itself or a submodule).

    :raises TypeError: when there is none.
    """
    from avalanche_mm.models.zero_shot import RetrievalHead

    if isinstance(model, RetrievalHead):
        return model
    for m in model.modules():
        if isinstance(m, RetrievalHead):
            return m
    raise TypeError(
        f"{type(model).__name__} holds no RetrievalHead; Mod-X and CTP train CLIP on image-text "
        "pairs and need the model of a pair benchmark (avalanche_mm.models.RetrievalHead over "
        "the backbone; the main job builds it for benchmarks such as world-retrieval-stream)."
    )


def pair_features(model: nn.Module, x) -> Tuple[Tensor, Tensor]:
    """L2-normalised ``(image, text)`` features of a pair batch ``x`` under ``model``.

    Runs ``model(x)`` (a RetrievalHead, which records its last features).
    """
    head = find_retrieval_head(model)
    model(x)
    return (
        F.normalize(head.last_image_features.float(), dim=-1),
        F.normalize(head.last_text_features.float(), dim=-1),
    )


def last_pair_features(model: nn.Module) -> Tuple[Tensor, Tensor]:
    """Normalised features of the model's last forward (the student's, with gradient)."""
    head = find_retrieval_head(model)
    if head.last_image_features is None:
        raise RuntimeError("the RetrievalHead has not run a forward pass on this minibatch yet.")
    return (
        F.normalize(head.last_image_features.float(), dim=-1),
        F.normalize(head.last_text_features.float(), dim=-1),
    )


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with no parameter requiring gradients
    (the RetrievalHead's cached features of the last forward are not copied)."""
    from avalanche_mm.models.zero_shot import RetrievalHead

    heads = [m for m in model.modules() if isinstance(m, RetrievalHead)]
    saved = [(h.last_image_features, h.last_text_features) for h in heads]
    for h in heads:
        h.last_image_features = h.last_text_features = None
    try:
        out = copy.deepcopy(model).eval()
    finally:
        for h, (i, t) in zip(heads, saved):
            h.last_image_features, h.last_text_features = i, t
    for p in out.parameters():
        p.requires_grad_(False)
    return out


# ---------------------------------------------------------------------------
# the Mod-X loss, as pure functions
# ---------------------------------------------------------------------------


def cognition_align(old: Tensor, new: Tensor) -> Tuple[Tensor, Tensor]:
    """Replace the rows of ``old`` whose argmax is not on the diagonal by the rows of ``new``.

    :param old: ``[B, B]`` similarity matrix of the previous model (row i's match is column i).
    :param new: ``[B, B]`` the current model's matrix (its rows are detached when copied).
    :return: ``(aligned, wrong)``: the aligned teacher matrix and the ``[B]`` boolean mask of
        the replaced rows.
    """
    if old.shape != new.shape or old.dim() != 2 or old.shape[0] != old.shape[1]:
        raise ValueError(
            f"cognition_align expects two square matrices of the same shape, got "
            f"{tuple(old.shape)} and {tuple(new.shape)}."
        )
    diag = torch.arange(old.shape[0], device=old.device)
    wrong = old.argmax(dim=1) != diag
    aligned = torch.where(wrong[:, None], new.detach().to(old.dtype), old)
    return aligned, wrong


def _kl_rows(teacher: Tensor, student: Tensor, reduction: str) -> Tensor:
    """``KL(softmax teacher || softmax student)`` row-wise, summed or averaged over rows."""
    logq = F.log_softmax(student, dim=1)
    p = F.softmax(teacher, dim=1)
    kl = F.kl_div(logq, p, reduction="sum")
    return kl if reduction == "sum" else kl / student.shape[0]


def modx_loss(
    image_new: Tensor,
    text_new: Tensor,
    image_old: Tensor,
    text_old: Tensor,
    *,
    logit_scale,
    alpha: float = 20.0,
    kd_logits: str = "cosine",
    reduction: str = "sum",
) -> Dict[str, Tensor]:
    """Mod-X's loss on one minibatch of normalised features.

    :param image_new: ``[B, D]`` current image features (normalised).
    :param text_new: ``[B, D]`` current text features (normalised).
    :param image_old: ``[B, D]`` previous model's image features (normalised).
    :param text_old: ``[B, D]`` previous model's text features (normalised).
    :param logit_scale: the multiplier ``s`` of the contrastive logits (exp applied).
    :param alpha: weight of the distillation.
    :param kd_logits: ``"cosine"`` (code: softmax over raw cosines) or ``"scaled"``
        (softmax over ``s * cos``).
    :param reduction: ``"sum"`` (code) or ``"batchmean"``.
    :return: dict with ``loss``, ``contrastive``, ``distillation``, ``kd_i2t``, ``kd_t2i`` and
        ``replaced_i2t`` / ``replaced_t2i`` (number of aligned rows).
    """
    if kd_logits not in ("cosine", "scaled"):
        raise ValueError(f"kd_logits must be 'cosine' or 'scaled', got {kd_logits!r}.")
    if reduction not in ("sum", "batchmean"):
        raise ValueError(f"reduction must be 'sum' or 'batchmean', got {reduction!r}.")
    s_i2t = image_new @ text_new.t()
    s_t2i = text_new @ image_new.t()
    labels = torch.arange(s_i2t.shape[0], device=s_i2t.device)
    contrastive = 0.5 * (
        F.cross_entropy(logit_scale * s_i2t, labels) + F.cross_entropy(logit_scale * s_t2i, labels)
    )
    with torch.no_grad():
        o_i2t = image_old @ text_old.t()
        o_t2i = text_old @ image_old.t()
    o_i2t, wrong_i = cognition_align(o_i2t, s_i2t)
    o_t2i, wrong_t = cognition_align(o_t2i, s_t2i)
    k = logit_scale if kd_logits == "scaled" else 1.0
    kd_i2t = _kl_rows(k * o_i2t, k * s_i2t, reduction)
    kd_t2i = _kl_rows(k * o_t2i, k * s_t2i, reduction)
    distillation = 0.5 * (kd_i2t + kd_t2i)
    return {
        "loss": contrastive + alpha * distillation,
        "contrastive": contrastive,
        "distillation": distillation,
        "kd_i2t": kd_i2t,
        "kd_t2i": kd_t2i,
        "replaced_i2t": wrong_i.sum(),
        "replaced_t2i": wrong_t.sum(),
    }


# ---------------------------------------------------------------------------
# contrastive continual training (the fine-tuning baseline on pairs)
# ---------------------------------------------------------------------------


class LogitScaleClampPlugin(SupervisedPlugin):
    """Clamps the backbone's ``logit_scale`` parameter to ``[0, max_log_scale]`` after each step
    (Mod-X's code clamps it to ``[0, ln 100]``)."""

    stateless = True

    def __init__(self, max_log_scale: float = 4.6052):
        super().__init__()
        self.max_log_scale = float(max_log_scale)

    def after_update(self, strategy, **kwargs):
        head = find_retrieval_head(strategy.model)
        p = getattr(head.backbone, "logit_scale", None)
        if isinstance(p, nn.Parameter) and p.requires_grad:
            with torch.no_grad():
                p.clamp_(0.0, self.max_log_scale)


class ContrastiveFineTune(FineTune):
    """Continual CLIP training on image-text pairs: CLIP's symmetric InfoNCE on each phase.

    The fine-tuning baseline of the pair benchmarks (Mod-X's ``CLIP_ct``, CTP's
    ``SeqF``): :class:`~avalanche_mm.strategies.FineTune` with
    :class:`~avalanche_mm.models.ContrastiveRetrievalLoss` as criterion.

    :param clamp_logit_scale: clamp the learned logit scale to ``[0, ln 100]`` after
        each step (as Mod-X's and CLIP's code do).
    :param base_kwargs: the arguments of :class:`~avalanche_mm.strategies.FineTune`.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        clamp_logit_scale: bool = True,
        iterations: Optional[int] = None,
        warmup: int = 0,
        schedule: str = "cosine",
        label_smoothing: float = 0.0,
        lr_per_experience: Optional[Sequence[float]] = None,
        reset_optimizer: bool = True,
        grad_clip: Optional[float] = None,
        plugins: Optional[Sequence] = None,
        **base_kwargs,
    ):
        from avalanche_mm.models.zero_shot import ContrastiveRetrievalLoss

        find_retrieval_head(model)
        base_kwargs.pop("criterion", None)
        # label_smoothing is accepted for the common recipe but unused: pairs have no classes
        extra = [LogitScaleClampPlugin()] if clamp_logit_scale else []
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=ContrastiveRetrievalLoss(),
            iterations=iterations,
            warmup=warmup,
            schedule=schedule,
            lr_per_experience=lr_per_experience,
            reset_optimizer=reset_optimizer,
            grad_clip=grad_clip,
            plugins=list(plugins or []) + extra,
            **base_kwargs,
        )

    def criterion(self):
        """The symmetric InfoNCE; under ``torchrun`` over the *global* batch: this rank's
        images (texts) against every rank's texts (images), gathered with their gradient,
        so the step is the 1-process one on the whole batch (not the per-shard loss)."""
        from avalanche_mm import distributed as _dist

        if not (self.is_training and _dist.is_distributed()):
            return super().criterion()
        return global_contrastive_loss(self.model)


def global_contrastive_loss(model: nn.Module) -> Tensor:
    """CLIP's symmetric InfoNCE of the model's last pair forward, with the other ranks'
    features (gathered with their gradient) as the extra columns; each rank averages over
    its own rows. One process: the usual loss on the batch."""
    from avalanche_mm import distributed as _dist

    head = find_retrieval_head(model)
    img, txt = last_pair_features(model)
    scale = head.scale()
    img_all, own = _dist.gather_rows_with_grad(img, order="sampler")
    txt_all, _ = _dist.gather_rows_with_grad(txt, order="sampler")
    return 0.5 * (F.cross_entropy(scale * img @ txt_all.t(), own) + F.cross_entropy(scale * txt @ img_all.t(), own))


# ---------------------------------------------------------------------------
# the plugin and the strategy
# ---------------------------------------------------------------------------


class ModXPlugin(SupervisedPlugin):
    """Off-diagonal distillation from the previous phase's model with cognition alignment.

    Adds ``alpha * L_kd`` (see :func:`modx_loss`) to the strategy's loss; the
    strategy's criterion supplies the contrastive term. The teacher is a frozen copy of
    the model taken at the start of each phase (in the first phase: the initial,
    pretrained model, as Mod-X's phase 1 starts from the COCO model).

    :param alpha: distillation weight (20 in the released scripts).
    :param kd_logits: ``"cosine"`` (released code) or ``"scaled"`` (paper's reading).
    :param reduction: ``"sum"`` (released code) or ``"batchmean"``.
    """

    def __init__(self, *, alpha: float = 20.0, kd_logits: str = "cosine", reduction: str = "sum"):
        super().__init__()
        _check_number("alpha", alpha)
        if kd_logits not in ("cosine", "scaled"):
            raise ValueError(f"ModXPlugin: kd_logits must be 'cosine' or 'scaled', got {kd_logits!r}.")
        if reduction not in ("sum", "batchmean"):
            raise ValueError(f"ModXPlugin: reduction must be 'sum' or 'batchmean', got {reduction!r}.")
        self.alpha = float(alpha)
        self.kd_logits = kd_logits
        self.reduction = reduction
        self.teacher: Optional[nn.Module] = None
        self.last: Dict[str, float] = {}

    def state_dict(self):
        # the teacher is re-taken from the model at the start of every phase
        return {"last": dict(self.last)}

    def load_state_dict(self, state):
        self.last = dict(state.get("last", {}))

    def before_training_exp(self, strategy, **kwargs):
        find_retrieval_head(strategy.model)
        self.teacher = frozen_copy(strategy.model)

    def before_backward(self, strategy, **kwargs):
        if self.alpha == 0 or self.teacher is None:
            return
        img, txt = last_pair_features(strategy.model)
        with torch.no_grad():
            img_o, txt_o = pair_features(self.teacher, strategy.mb_x)
        head = find_retrieval_head(strategy.model)
        scale = head.scale()
        s_i2t, s_t2i = img @ txt.t(), txt @ img.t()
        o_i2t, wrong_i = cognition_align(img_o @ txt_o.t(), s_i2t)
        o_t2i, wrong_t = cognition_align(txt_o @ img_o.t(), s_t2i)
        k = scale if self.kd_logits == "scaled" else 1.0
        kd = 0.5 * (_kl_rows(k * o_i2t, k * s_i2t, self.reduction) + _kl_rows(k * o_t2i, k * s_t2i, self.reduction))
        self.last = {
            "distillation": float(kd.detach()),
            "replaced_i2t": int(wrong_i.sum()),
            "replaced_t2i": int(wrong_t.sum()),
        }
        strategy.loss = strategy.loss + self.alpha * kd

    def after_training_exp(self, strategy, **kwargs):
        self.teacher = None


class ModX(ContrastiveFineTune):
    """Mod-X: contrastive continual CLIP training with off-diagonal distillation.

    :param alpha: weight of the off-diagonal distillation (20 in the released scripts).
    :param kd_logits: ``"cosine"``: softmax over raw cosine similarities (released code);
        ``"scaled"``: over the logit-scaled similarities (paper variant).
    :param reduction: ``"sum"``: KL summed over the batch (released code); ``"batchmean"``:
        averaged over rows.
    :param clamp_logit_scale: clamp the logit scale to ``[0, ln 100]`` after each step.
    :param base_kwargs: the arguments of :class:`~avalanche_mm.strategies.FineTune`.
    """

    def __init__(
        self,
        *,
        alpha: Annotated[float, Range(ge=0.0)] = 20.0,
        kd_logits: Literal["cosine", "scaled"] = "cosine",
        reduction: Literal["sum", "batchmean"] = "sum",
        clamp_logit_scale: bool = True,
        plugins: Optional[Sequence] = None,
        **base_kwargs,
    ):
        self.modx_plugin = ModXPlugin(alpha=alpha, kd_logits=kd_logits, reduction=reduction)
        super().__init__(
            clamp_logit_scale=clamp_logit_scale, plugins=list(plugins or []) + [self.modx_plugin], **base_kwargs
        )


# ---------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------


def is_pair_bundle(bundle) -> bool:
    """True when a benchmark bundle holds image-text pair phases (no classes, image + text)."""
    mods = set(getattr(bundle, "modalities", ()) or ())
    return not getattr(bundle, "class_names", None) and {"image", "text"} <= mods


def pair_benchmark_problems(ctx, method: str) -> List[str]:
    """What a pair method needs from the benchmark: image-text pairs (shared with CTP)."""
    bundle = ctx.bundle
    if bundle is None:
        return []
    if not is_pair_bundle(bundle):
        mods = list(getattr(bundle, "modalities", ()) or ())
        names = getattr(bundle, "class_names", None)
        found = f"{len(names)} classes" if names else "no text modality"
        return [
            f"{ctx.key}.method: {method!r} trains CLIP on image-text pairs, but benchmark "
            f"{getattr(bundle, 'name', '?')!r} is a classification stream ({found}, modalities "
            f"{mods}); it needs a pair benchmark (image-text pair phases, no classes) such as "
            "world-retrieval-stream, flickr30k-retrieval or coco-retrieval"
        ]
    return []


def _check(ctx, params: Dict) -> List[str]:
    return pair_benchmark_problems(ctx, "mod-x")


def _register():
    from .registry import register_method

    @register_method(
        "mod-x",
        summary="Mod-X: contrastive CLIP training on pairs + off-diagonal distillation with cognition alignment",
        params_from=ModX,
        model_kinds=("clip",),
        family="regularization",
        reference="Ni et al., ICML 2023",
        check=_check,
        distributed=True,
    )
    def _build_modx(ctx, params: Dict):
        return ModX(**ctx.common_kwargs(ContrastiveFineTune), **params)

    @register_method(
        "contrastive-finetune",
        summary="continual CLIP training on image-text pairs (symmetric InfoNCE), the pair baseline",
        params_from=ContrastiveFineTune,
        model_kinds=("clip",),
        family="baseline",
        reference="Radford et al., ICML 2021 (CLIP loss); Mod-X's CLIP_ct",
        check=lambda ctx, params: pair_benchmark_problems(ctx, "contrastive-finetune"),
        distributed=True,
    )
    def _build_ft(ctx, params: Dict):
        return ContrastiveFineTune(**ctx.common_kwargs(ContrastiveFineTune), **params)


_register()

__all__ = [
    "find_retrieval_head",
    "pair_features",
    "last_pair_features",
    "frozen_copy",
    "cognition_align",
    "modx_loss",
    "LogitScaleClampPlugin",
    "ContrastiveFineTune",
    "global_contrastive_loss",
    "ModXPlugin",
    "ModX",
    "is_pair_bundle",
    "pair_benchmark_problems",
]
