"""Continual fine-tuning of a vision-language model (the survey's baseline).

Fine-tuning a pretrained CLIP on a sequence of tasks is plain Avalanche
``Naive`` training with the recipe of the MTIL papers (ZSCL, MoE-Adapters):
a fixed number of optimizer steps per task, linear warm-up then a cosine
schedule, label smoothing, a fresh optimizer per task. The recipe lives in
:class:`IterationSchedulePlugin` (usable with any template); :class:`FineTune`
wires it with those defaults.

This module also holds small helpers shared by the CLIP methods
(:func:`find_backbone`, :func:`distillation_loss`, :func:`trainable_state`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from .twins import MultimodalSupervisedTemplate


# ---------------------------------------------------------------------------
# helpers shared by the CLIP methods
# ---------------------------------------------------------------------------
def find_backbone(model: nn.Module) -> nn.Module:
    """The vision-language backbone inside ``model``.

    ``model`` itself when it has ``encode_image`` and ``encode_text``, else
    its ``backbone`` attribute, else the first such submodule.

    :raises TypeError: when ``model`` holds no vision-language backbone.
    """
    def _is_vl(m):
        return callable(getattr(m, "encode_image", None)) and callable(getattr(m, "encode_text", None))

    if _is_vl(model):
        return model
    bb = getattr(model, "backbone", None)
    if bb is not None and _is_vl(bb):
        return bb
    for m in model.modules():
        if _is_vl(m):
            return m
    raise TypeError(
        f"{type(model).__name__} holds no vision-language backbone (a module with encode_image "
        "and encode_text, e.g. avalanche_mm.models.VisionLanguageBackbone); the CLIP methods "
        "need one."
    )


def images_of(batch: Any, key: str = "image", *, where: str = "reference batch") -> Tensor:
    """The image tensor of a batch: ``(x, y, ...)`` with ``x`` a modality mapping or a tensor.

    :raises KeyError: when ``x`` is a mapping without ``key``.
    :raises TypeError: when no image tensor can be found.
    """
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        if key not in batch:
            raise KeyError(
                f"{where}: the samples have modalities {sorted(batch.keys())}, but the image "
                f"key {key!r} is not one of them; set image_key to the image modality."
            )
        return batch[key]
    raise TypeError(
        f"{where}: cannot find images in a batch of type {type(batch).__name__}; give a tensor "
        "[N, 3, H, W] or samples (x, ...) with x a tensor or a modality dict."
    )


#: attribute names of non-module helpers that copies of a model share instead of copying
SHARED_ATTRIBUTES = ("tokenizer", "_tokenizer", "preprocess_train", "preprocess_eval")


def copy_module(module: nn.Module) -> nn.Module:
    """``copy.deepcopy(module)`` that shares tokenizers and preprocessors with the original.

    A teacher or snapshot copy only needs the weights; deep-copying the BPE
    tokenizer (its vocabulary and merge tables) costs most of a copy's time.
    Attributes named in :data:`SHARED_ATTRIBUTES` of every submodule are
    shared by reference (they are read-only helpers).
    """
    memo: Dict[int, Any] = {}
    for m in module.modules():
        for name in SHARED_ATTRIBUTES:
            obj = m.__dict__.get(name)
            if obj is not None and not isinstance(obj, (Tensor, nn.Module)):
                memo[id(obj)] = obj
    return copy.deepcopy(module, memo)


def frozen_copy(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` (see :func:`copy_module`) with no parameter requiring grad."""
    out = copy_module(module).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def logit_scale_of(backbone: nn.Module) -> Tensor:
    """``exp(logit_scale)`` of a backbone (``logit_scale_value()`` when it has it)."""
    fn = getattr(backbone, "logit_scale_value", None)
    if callable(fn):
        return fn()
    scale = getattr(backbone, "logit_scale", None)
    if isinstance(scale, Tensor):
        return scale.exp().clamp(max=100.0)
    raise TypeError(f"{type(backbone).__name__} has no logit scale (logit_scale_value()).")


def distillation_loss(teacher_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """``KD(t, s) = CE(softmax(t / T), log_softmax(s / T)) * T^2``, averaged over rows.

    :param teacher_logits: ``[N, K]`` teacher logits (no gradient needed).
    :param student_logits: ``[N, K]`` student logits.
    :param temperature: the temperature ``T`` (> 0).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher and student logits differ in shape: {tuple(teacher_logits.shape)} vs "
            f"{tuple(student_logits.shape)}."
        )
    p = F.softmax(teacher_logits.detach() / temperature, dim=1)
    logq = F.log_softmax(student_logits / temperature, dim=1)
    return -(p * logq).sum(dim=1).mean() * temperature**2


class MaskedCrossEntropyLoss(nn.Module):
    """Cross-entropy with label smoothing over the *unmasked* classes only.

    Zero-shot heads restrict a sample's prediction to its task's classes by
    giving the other columns a very low logit (``mask_value``, e.g. -1e4).
    ``nn.CrossEntropyLoss(label_smoothing=e)`` spreads ``e`` over every
    column, masked ones included, which adds ``~e * 1e4 / K`` to the loss and
    drowns the gradient. Here the smoothing mass goes to the columns whose
    logit is above ``mask_threshold``; without masked columns the loss equals
    PyTorch's.

    :param label_smoothing: smoothing ``e`` in [0, 1].
    :param mask_threshold: logits at or below it count as masked.
    """

    def __init__(self, *, label_smoothing: float = 0.0, mask_threshold: float = -1e3):
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}.")
        self.label_smoothing = float(label_smoothing)
        self.mask_threshold = float(mask_threshold)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        logp = F.log_softmax(logits, dim=1)
        nll = -logp.gather(1, targets.long().unsqueeze(1)).squeeze(1)
        if self.label_smoothing == 0.0:
            return nll.mean()
        valid = (logits > self.mask_threshold).to(logp.dtype)
        smooth = -(logp * valid).sum(1) / valid.sum(1).clamp(min=1.0)
        return ((1.0 - self.label_smoothing) * nll + self.label_smoothing * smooth).mean()


def trainable_state(model: nn.Module) -> Dict[str, Tensor]:
    """Detached copies of the parameters that require gradients, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def float_state(model: nn.Module) -> Dict[str, Tensor]:
    """Detached copies of every floating-point entry of ``model.state_dict()``."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def _check_positive_int(name: str, value, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(
            f"{name} must be an integer >= {0 if allow_zero else 1}"
            f"{' or None' if allow_none else ''}, got {value!r}."
        )


def _check_number(name: str, value, *, minimum: float = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}.")


# ---------------------------------------------------------------------------
# the training recipe as a plugin
# ---------------------------------------------------------------------------
class IterationSchedulePlugin(SupervisedPlugin):
    """Per-experience step budget, warm-up + cosine learning rate, fresh optimizer.

    - ``iterations``: train exactly this many optimizer steps per experience,
      cycling over the experience's data as often as needed (the strategy's
      ``train_epochs`` is set accordingly); ``None`` keeps the epochs.
    - the learning rate of every parameter group is set before each step:
      linear warm-up over ``warmup`` steps, then cosine decay to 0
      (``schedule="cosine"``) or constant (``"constant"``).
    - ``reset_optimizer``: clear the optimizer state (Adam moments) at the start
      of each experience, as separate per-task runs do.
    - ``grad_clip``: clip the gradient norm before each step.

    :param lr: base learning rate (default: the optimizer's, read once).
    :param lr_per_experience: optional list of base learning rates, one per
        experience (the last one is reused for later experiences).
    :param iterations: optimizer steps per experience, or None.
    :param warmup: warm-up steps.
    :param schedule: ``"cosine"`` or ``"constant"``.
    :param reset_optimizer: clear the optimizer state at each experience.
    :param grad_clip: max gradient norm, or None.
    """

    def __init__(
        self,
        *,
        lr: Optional[float] = None,
        lr_per_experience: Optional[Sequence[float]] = None,
        iterations: Optional[int] = None,
        warmup: int = 0,
        schedule: str = "cosine",
        reset_optimizer: bool = True,
        grad_clip: Optional[float] = None,
    ):
        super().__init__()
        _check_positive_int("iterations", iterations, allow_none=True)
        _check_positive_int("warmup", warmup, allow_zero=True)
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}.")
        if lr is not None:
            _check_number("lr", lr)
        if lr_per_experience is not None:
            lr_per_experience = list(lr_per_experience)
            if not lr_per_experience:
                raise ValueError("lr_per_experience must be a non-empty list or None, got [].")
            for i, v in enumerate(lr_per_experience):
                _check_number(f"lr_per_experience[{i}]", v)
        if grad_clip is not None:
            _check_number("grad_clip", grad_clip)
        self.lr = lr
        self.lr_per_experience = lr_per_experience
        self.iterations = iterations
        self.warmup = warmup
        self.schedule = schedule
        self.reset_optimizer = bool(reset_optimizer)
        self.grad_clip = grad_clip
        self.step = 0
        self.total = 0
        self.base_lr = lr

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimizer step ``step`` (0-based) of the experience."""
        base = float(self.base_lr)
        if self.warmup and step < self.warmup:
            return base * (step + 1) / self.warmup
        if self.schedule == "constant":
            return base
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress)) * base

    def before_training_exp(self, strategy, **kwargs):
        exp_id = int(strategy.experience.current_experience)
        if self.lr_per_experience is not None:
            self.base_lr = self.lr_per_experience[min(exp_id, len(self.lr_per_experience) - 1)]
        elif self.lr is not None:
            self.base_lr = self.lr
        else:
            self.base_lr = strategy.optimizer.param_groups[0]["lr"]
            self.lr = self.base_lr
        n_batches = len(strategy.dataloader)
        if n_batches == 0:
            raise ValueError(
                f"experience {exp_id} has no training minibatch (empty dataset or drop_last); "
                "cannot train."
            )
        if self.iterations is not None:
            self.total = self.iterations
            strategy.train_epochs = math.ceil(self.iterations / n_batches)
        else:
            self.total = n_batches * strategy.train_epochs
        self.step = 0
        if self.reset_optimizer:
            strategy.optimizer.state.clear()

    def before_training_iteration(self, strategy, **kwargs):
        lr = self.lr_at(self.step)
        for group in strategy.optimizer.param_groups:
            group["lr"] = lr

    def before_update(self, strategy, **kwargs):
        if self.grad_clip is not None:
            from avalanche_mm import distributed as _dist

            if _dist.is_distributed():  # clip the global batch's gradient, as one process does
                _dist.average_gradients([p for g in strategy.optimizer.param_groups for p in g["params"]],
                                        weight=float(strategy.mb_batch_size))
            params = [p for g in strategy.optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)

    def after_training_iteration(self, strategy, **kwargs):
        self.step += 1
        if self.iterations is not None and self.step >= self.iterations:
            strategy.stop_training()

    def after_training_exp(self, strategy, **kwargs):
        # the flag may be left set when the budget ended exactly with an epoch
        strategy._stop_training = False


def _fast_path(params: Sequence[Any]) -> Dict[str, Any]:
    """``fused=True`` when every parameter is a floating tensor on a device with a fused
    kernel (CUDA, and CPU from PyTorch 2.4), else ``foreach=True`` (multi-tensor path)."""
    tensors: List[Tensor] = []
    for p in params:
        if isinstance(p, dict):
            tensors.extend(p.get("params", []))
        else:
            tensors.append(p)
    ok = bool(tensors) and all(isinstance(t, Tensor) and t.is_floating_point() for t in tensors)
    devices = {t.device.type for t in tensors} if ok else set()
    fused_devices = {"cuda", "cpu"} if _cpu_fused_supported() else {"cuda"}
    if ok and len(devices) == 1 and devices <= fused_devices:
        return {"fused": True}
    return {"foreach": True} if ok else {}


def _cpu_fused_supported() -> bool:
    try:
        major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 4)


def track_parameter_versions(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make every ``optimizer.step()`` bump its parameters' in-place version counters.

    The fused Adam/AdamW kernels update parameters without bumping ``param._version``
    (PyTorch <= 2.14), and the zero-shot heads decide from those counters when cached
    class embeddings are stale (:meth:`VisionLanguageBackbone.text_state_key`): without
    this hook, evaluation after training would use text embeddings of the old weights.
    :func:`make_clip_optimizer` applies it to fused optimizers; apply it to a fused
    optimizer you build yourself. Returns the optimizer.
    """
    from torch.autograd.graph import increment_version

    def bump(opt, args, kwargs):
        for group in opt.param_groups:
            for p in group["params"]:
                increment_version(p)

    optimizer.register_step_post_hook(bump)
    return optimizer


def make_clip_optimizer(
    model: nn.Module,
    *,
    name: str = "adamw",
    lr: float = 1e-5,
    weight_decay: float = 0.0,
    betas: Sequence[float] = (0.9, 0.999),
    momentum: float = 0.9,
    params: Optional[Iterable[Any]] = None,
) -> torch.optim.Optimizer:
    """The optimizer of the recipes over the parameters that require gradients.

    :param model: the model (frozen parameters are left out).
    :param name: ``"adamw"``, ``"adam"`` or ``"sgd"``.
    :param params: the parameters (or parameter groups) to optimise instead of
        the model's trainable parameters.

    The fused kernel is used where the parameters' device has one (CUDA; CPU
    from PyTorch 2.4), the multi-tensor (``foreach``) path otherwise. A
    fused optimizer must see the parameters on the device they train on:
    build it after moving the model, as the runner does.
    """
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        params = list(model.parameters())[:1]
    fast = _fast_path(params)
    if name == "adamw":
        return track_parameter_versions(torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), **fast))
    if name == "adam":
        return track_parameter_versions(torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), **fast))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                               foreach=bool(fast) or None)
    raise ValueError(f"optimizer name must be 'adamw', 'adam' or 'sgd', got {name!r}.")


class FineTune(MultimodalSupervisedTemplate):
    """Continual fine-tuning with the MTIL recipe (Avalanche ``Naive`` + schedule).

    :param model: the model (e.g. a CLIP classifier over class prompts).
    :param optimizer: the optimizer.
    :param criterion: the loss (default: :class:`MaskedCrossEntropyLoss` with
        ``label_smoothing``, i.e. cross-entropy that ignores masked classes).
    :param iterations: optimizer steps per experience (None: ``train_epochs``).
    :param warmup: warm-up steps.
    :param schedule: ``"cosine"`` or ``"constant"``.
    :param label_smoothing: label smoothing of the default criterion.
    :param lr_per_experience: optional base learning rate per experience.
    :param reset_optimizer: fresh optimizer state at each experience.
    :param grad_clip: max gradient norm, or None.
    :param plugins: more plugins.
    :param base_kwargs: the other arguments of ``SupervisedTemplate``
        (``train_mb_size``, ``eval_mb_size``, ``device``, ``evaluator``, ...).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Optional[nn.Module] = None,
        iterations: Optional[int] = None,
        warmup: int = 0,
        schedule: str = "cosine",
        label_smoothing: float = 0.0,
        lr_per_experience: Optional[Sequence[float]] = None,
        reset_optimizer: bool = True,
        grad_clip: Optional[float] = None,
        plugins: Optional[List[SupervisedPlugin]] = None,
        **base_kwargs,
    ):
        _check_number("label_smoothing", label_smoothing)
        if criterion is None:
            criterion = MaskedCrossEntropyLoss(label_smoothing=label_smoothing)
        self.schedule_plugin = IterationSchedulePlugin(
            iterations=iterations,
            warmup=warmup,
            schedule=schedule,
            lr_per_experience=lr_per_experience,
            reset_optimizer=reset_optimizer,
            grad_clip=grad_clip,
        )
        plugins = [self.schedule_plugin] + list(plugins or [])
        super().__init__(model=model, optimizer=optimizer, criterion=criterion, plugins=plugins, **base_kwargs)


__all__ = [
    "find_backbone",
    "images_of",
    "copy_module",
    "frozen_copy",
    "SHARED_ATTRIBUTES",
    "logit_scale_of",
    "distillation_loss",
    "MaskedCrossEntropyLoss",
    "trainable_state",
    "float_state",
    "IterationSchedulePlugin",
    "make_clip_optimizer",
    "FineTune",
]


# ---------------------------------------------------------------------------
# registration (config name "finetune"; no parameters besides the training recipe)
# ---------------------------------------------------------------------------
from avalanche_mm.strategies.registry import BuildContext, register_method  # noqa: E402


@register_method(
    "finetune",
    distributed=True,
    summary="continual fine-tuning (Naive) with the MTIL recipe",
    params_from=FineTune,
    family="baseline",
    reference="baseline",
)
def _build_finetune(ctx: BuildContext, p: dict):
    return FineTune(
        model=ctx.model,
        optimizer=ctx.optimizer(),
        plugins=list(ctx.plugins),
        **ctx.schedule_kwargs(),
        **ctx.base_kwargs(),
    )
