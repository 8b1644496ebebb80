"""ZSCL: Zero-Shot Continual Learning (Zheng et al., "Preventing Zero-Shot Transfer
Degradation in Continual Learning of Vision-Language Models", ICCV 2023).

Both CLIP towers are fine-tuned on each task with three additions:

1. **Reference-set distillation.** A batch of reference images ``x_r`` (ImageNet in
   the paper) and a fixed bank of reference sentences ``C`` (Conceptual
   Captions) give ``S = tau * f(x_r) g(C)^T``. With the frozen initial
   (zero-shot) model as teacher, ``L_img = KD(S_t, S_s)`` over image rows and
   ``L_txt = KD(S_t^T, S_s^T)`` over sentence rows, with temperature ``T``
   (``KD(t, s) = CE(softmax(t/T), log_softmax(s/T)) * T^2``). In the released
   code the student's sentence features are the teacher's (so only the image
   tower gets distillation gradient) - ``text_features="teacher"``, the
   default here; ``"student"`` encodes them with the student, as the paper's
   formula reads.
2. **Parameter-space L2** to the weights at the start of the current task:
   ``l2_weight * sum ||theta - theta_start||^2``.
3. **Weight ensemble (WE).** Every ``we_every`` iterations the running average
   ``theta_bar <- (n * theta_bar + theta) / (n + 1)`` is updated; the averaged
   weights are the model kept after the task.

:class:`ZSCLPlugin` holds the three mechanisms (each can be switched off
with a zero weight / period); :class:`ZSCL` is continual fine-tuning with it.
"""

from __future__ import annotations

import copy
import zlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .finetune import (
    FineTune,
    _check_number,
    _check_positive_int,
    distillation_loss,
    find_backbone,
    logit_scale_of,
    trainable_state,
)


def _images_of(batch: Any, key: str) -> Tensor:
    """The image tensor of a reference batch: ``(x, y, ...)``, ``x`` dict or tensor."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, dict):
        if key not in batch:
            raise KeyError(
                f"ZSCLPlugin: reference samples have modalities {sorted(batch)}, but "
                f"image_key={key!r} is not one of them."
            )
        return batch[key]
    raise TypeError(
        f"ZSCLPlugin: cannot find images in a reference batch of type {type(batch).__name__}; "
        "give a tensor [N, 3, H, W] or a dataset of (x, ...) samples with x a tensor or a dict."
    )


def _stable_seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode("utf-8")) & 0x7FFFFFFF


class ZSCLPlugin(SupervisedPlugin):
    """The three mechanisms of ZSCL (see the module docstring).

    :param reference_images: the reference images: a tensor ``[N, 3, H, W]``
        already preprocessed for the backbone, or a dataset of ``(x, ...)``
        samples (``x`` a tensor or a modality dict holding ``image_key``);
        a dataset's ``collate_fn`` is used when it has one.
    :param reference_texts: the reference sentences: a list of strings
        (tokenised with the backbone's ``tokenize``) or token ids ``[M, L]``.
    :param image_weight: weight of ``L_img`` (0 disables it).
    :param text_weight: weight of ``L_txt`` (0 disables it).
    :param temperature: distillation temperature ``T``.
    :param l2_weight: weight of the L2 term to the task's starting weights (0 disables it).
    :param we_every: weight-ensemble period in iterations (0 disables WE).
    :param ref_batch_size: reference images per iteration.
    :param ref_text_batch_size: reference sentences per iteration (None: all).
    :param text_features: ``"teacher"`` (released code) or ``"student"`` (paper formula).
    :param teacher: the teacher (a backbone or a model holding one); default:
        a frozen copy of the model's backbone taken before the first experience.
    :param image_key: modality name of the images in reference samples.
    :param seed: seed of the reference sampling (re-derived per experience).
    """

    def __init__(
        self,
        *,
        reference_images: Union[Tensor, Dataset],
        reference_texts: Union[Sequence[str], Tensor],
        image_weight: float = 1.0,
        text_weight: float = 1.0,
        temperature: float = 2.0,
        l2_weight: float = 1.0,
        we_every: int = 100,
        ref_batch_size: int = 64,
        ref_text_batch_size: Optional[int] = None,
        text_features: str = "teacher",
        teacher: Optional[nn.Module] = None,
        image_key: str = "image",
        seed: int = 0,
    ):
        super().__init__()
        for name, value in (("image_weight", image_weight), ("text_weight", text_weight),
                            ("l2_weight", l2_weight), ("temperature", temperature)):
            _check_number(name, value)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        _check_positive_int("we_every", we_every, allow_zero=True)
        _check_positive_int("ref_batch_size", ref_batch_size)
        _check_positive_int("ref_text_batch_size", ref_text_batch_size, allow_none=True)
        if text_features not in ("teacher", "student"):
            raise ValueError(f"text_features must be 'teacher' or 'student', got {text_features!r}.")
        if reference_images is None or len(reference_images) == 0:
            raise ValueError("reference_images is empty; ZSCL needs a reference set of images.")
        if isinstance(reference_texts, str):
            raise TypeError("reference_texts must be a list of sentences, got a single string.")
        if reference_texts is None or len(reference_texts) == 0:
            raise ValueError("reference_texts is empty; ZSCL needs a bank of reference sentences.")
        if isinstance(reference_images, Tensor) and reference_images.dim() != 4:
            raise ValueError(
                f"reference_images as a tensor must be [N, 3, H, W], got shape {tuple(reference_images.shape)}."
            )
        self.reference_images = reference_images
        self.reference_texts = reference_texts
        self.image_weight = float(image_weight)
        self.text_weight = float(text_weight)
        self.temperature = float(temperature)
        self.l2_weight = float(l2_weight)
        self.we_every = int(we_every)
        self.ref_batch_size = int(ref_batch_size)
        self.ref_text_batch_size = ref_text_batch_size
        self.text_features = text_features
        self.image_key = image_key
        self.seed = int(seed)
        self.teacher: Optional[nn.Module] = find_backbone(teacher) if teacher is not None else None
        if self.teacher is not None:
            self._freeze_teacher()
        # per-experience state
        self.start_weights: Dict[str, Tensor] = {}
        self.we_weights: Dict[str, Tensor] = {}
        self.we_count = 0
        self.iteration = 0
        self.last_losses: Dict[str, float] = {}
        self._ref_iter: Optional[Iterator] = None
        self._generator: Optional[torch.Generator] = None
        self._tokens: Optional[Tensor] = None
        self._teacher_text: Optional[Tensor] = None

    # -- setup -----------------------------------------------------------------
    def _freeze_teacher(self) -> None:
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def before_training_exp(self, strategy, **kwargs):
        if self.teacher is None:
            self.teacher = copy.deepcopy(find_backbone(strategy.model))
            self._freeze_teacher()
        self.teacher.to(strategy.device)
        exp_id = int(strategy.experience.current_experience)
        self._generator = torch.Generator().manual_seed(_stable_seed(self.seed, exp_id))
        self._ref_iter = None
        self.start_weights = trainable_state(strategy.model) if self.l2_weight > 0 else {}
        self.we_weights = {}
        self.we_count = 0
        self.iteration = 0
        self._teacher_text = None

    def _texts(self, device) -> Tensor:
        if self._tokens is None:
            if isinstance(self.reference_texts, Tensor):
                self._tokens = self.reference_texts.long()
            else:
                self._tokens = find_backbone(self.teacher).tokenize(list(self.reference_texts))
        return self._tokens.to(device)

    def _next_images(self, device) -> Tensor:
        ref = self.reference_images
        if isinstance(ref, Tensor):
            idx = torch.randint(len(ref), (min(self.ref_batch_size, len(ref)),), generator=self._generator)
            return ref[idx].to(device)
        if self._ref_iter is None:
            self._ref_iter = self._cycle(ref)
        return _images_of(next(self._ref_iter), self.image_key).to(device)

    def _cycle(self, dataset) -> Iterator:
        bs = min(self.ref_batch_size, len(dataset))
        while True:
            loader = DataLoader(
                dataset,
                batch_size=bs,
                shuffle=True,
                drop_last=True,
                generator=self._generator,
                collate_fn=getattr(dataset, "collate_fn", None),
            )
            yield from loader

    # -- the losses --------------------------------------------------------------
    def distillation(self, strategy) -> Dict[str, Tensor]:
        """``{"image": L_img, "text": L_txt}`` on one reference batch."""
        device = strategy.device
        student = find_backbone(strategy.model)
        teacher = self.teacher
        images = self._next_images(device)
        tokens = self._texts(device)
        with torch.no_grad():
            if self._teacher_text is None:
                self._teacher_text = teacher.encode_text(tokens)
            t_img = teacher.encode_image(images)
            t_scale = logit_scale_of(teacher)
        sel = None
        if self.ref_text_batch_size is not None and self.ref_text_batch_size < len(tokens):
            sel = torch.randperm(len(tokens), generator=self._generator)[: self.ref_text_batch_size].to(device)
        t_txt = self._teacher_text if sel is None else self._teacher_text[sel]
        s_img = student.encode_image(images)
        if self.text_features == "student":
            s_txt = student.encode_text(tokens if sel is None else tokens[sel])
        else:
            s_txt = t_txt
        s_scale = logit_scale_of(student)
        s_logits = s_scale * s_img @ s_txt.t()
        t_logits = t_scale * t_img @ t_txt.t()
        return {
            "image": distillation_loss(t_logits, s_logits, self.temperature),
            "text": distillation_loss(t_logits.t(), s_logits.t(), self.temperature),
        }

    def l2_penalty(self, model: nn.Module) -> Tensor:
        """``sum ||theta - theta_start||^2`` over the trainable parameters."""
        terms = [
            (p - self.start_weights[n].to(p.device)).pow(2).sum()
            for n, p in model.named_parameters()
            if n in self.start_weights
        ]
        if not terms:
            return torch.zeros((), device=next(model.parameters()).device)
        return torch.stack(terms).sum()

    def before_backward(self, strategy, **kwargs):
        losses: Dict[str, Tensor] = {}
        if self.image_weight > 0 or self.text_weight > 0:
            d = self.distillation(strategy)
            if self.image_weight > 0:
                losses["image"] = self.image_weight * d["image"]
            if self.text_weight > 0:
                losses["text"] = self.text_weight * d["text"]
        if self.l2_weight > 0:
            losses["l2"] = self.l2_weight * self.l2_penalty(strategy.model)
        for value in losses.values():
            strategy.loss = strategy.loss + value
        self.last_losses = {k: float(v.detach()) for k, v in losses.items()}

    # -- weight ensemble -----------------------------------------------------------
    def after_training_iteration(self, strategy, **kwargs):
        self.iteration += 1
        if self.we_every and self.iteration % self.we_every == 0:
            self.we_count += 1
            n = self.we_count
            with torch.no_grad():
                for name, p in strategy.model.named_parameters():
                    if not p.requires_grad:
                        continue
                    if name not in self.we_weights:
                        self.we_weights[name] = p.detach().clone()
                    else:
                        avg = self.we_weights[name]
                        avg.mul_((n - 1) / n).add_(p.detach(), alpha=1.0 / n)

    def after_training_exp(self, strategy, **kwargs):
        if self.we_every and self.we_count > 0:
            with torch.no_grad():
                for name, p in strategy.model.named_parameters():
                    if name in self.we_weights:
                        p.copy_(self.we_weights[name])
        self.start_weights = {}
        self.we_weights = {}
        self._ref_iter = None

    # -- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """What must survive between experiences: the teacher's weights."""
        return {"teacher": None if self.teacher is None else self.teacher.state_dict()}

    def load_state_dict(self, state: Dict[str, Any], *, model: Optional[nn.Module] = None) -> None:
        """Restore :meth:`state_dict`; ``model`` gives the teacher's structure when
        the plugin has no teacher yet (a copy of its backbone is made)."""
        teacher_state = state.get("teacher")
        if teacher_state is None:
            self.teacher = None
            return
        if self.teacher is None:
            if model is None:
                raise ValueError(
                    "ZSCLPlugin.load_state_dict: the plugin has no teacher module yet; pass "
                    "model= (the strategy's model) so that one can be built."
                )
            self.teacher = copy.deepcopy(find_backbone(model))
        self.teacher.load_state_dict(teacher_state)
        self._freeze_teacher()
        self._teacher_text = None


class ZSCL(FineTune):
    """Continual fine-tuning with ZSCL's distillation, L2 and weight ensemble.

    :param reference_images: see :class:`ZSCLPlugin`.
    :param reference_texts: see :class:`ZSCLPlugin`.
    :param image_weight: weight of the image-side distillation.
    :param text_weight: weight of the text-side (transposed) distillation.
    :param temperature: distillation temperature (2 in the paper).
    :param l2_weight: weight of the L2 term to the task's starting weights (1 in the paper).
    :param we_every: weight-ensemble period in iterations (100 in the paper).
    :param ref_batch_size: reference images per iteration (the training batch size in the paper).
    :param ref_text_batch_size: reference sentences per iteration (None: all).
    :param text_features: ``"teacher"`` (released code) or ``"student"``.
    :param teacher: optional teacher (default: the initial model).
    :param seed: seed of the reference sampling.
    :param base_kwargs: the arguments of :class:`~avalanche_mm.strategies.FineTune`.
    """

    def __init__(
        self,
        *,
        reference_images,
        reference_texts,
        image_weight: Annotated[float, Range(ge=0.0)] = 1.0,
        text_weight: Annotated[float, Range(ge=0.0)] = 1.0,
        temperature: Annotated[float, Range(gt=0.0)] = 2.0,
        l2_weight: Annotated[float, Range(ge=0.0)] = 1.0,
        we_every: Annotated[int, Range(ge=0)] = 100,
        ref_batch_size: Annotated[int, Range(ge=1)] = 64,
        ref_text_batch_size: Optional[Annotated[int, Range(ge=1)]] = None,
        text_features: Literal["teacher", "student"] = "teacher",
        teacher: Optional[nn.Module] = None,
        seed: int = 0,
        plugins: Optional[List] = None,
        **base_kwargs,
    ):
        self.zscl_plugin = ZSCLPlugin(
            reference_images=reference_images,
            reference_texts=reference_texts,
            image_weight=image_weight,
            text_weight=text_weight,
            temperature=temperature,
            l2_weight=l2_weight,
            we_every=we_every,
            ref_batch_size=ref_batch_size,
            ref_text_batch_size=ref_text_batch_size,
            text_features=text_features,
            teacher=teacher,
            seed=seed,
        )
        super().__init__(plugins=list(plugins or []) + [self.zscl_plugin], **base_kwargs)


__all__ = ["ZSCLPlugin", "ZSCL"]


# ---------------------------------------------------------------------------
# registration (config name "zscl"; parameters from ZSCL's signature)
# ---------------------------------------------------------------------------
from typing import Annotated, Literal  # noqa: E402  (used by the annotations above)

from avalanche_mm.registry import Range  # noqa: E402
from avalanche_mm.schema import Opt  # noqa: E402
from avalanche_mm.strategies.registry import BuildContext, CheckContext, register_method  # noqa: E402


def _reference_of(bundle):
    return getattr(bundle, "reference", None)


def _no_reference_message(where: str, benchmark: str) -> str:
    return (
        f"{where}: zscl needs a reference set (images and sentences), but benchmark {benchmark!r} "
        "provides none; use a benchmark with a reference split (e.g. demo-mtil) or, for a real-data "
        "benchmark, name one in benchmark.reference.images and benchmark.reference.texts"
    )


def _check_zscl(ctx: CheckContext, p: dict) -> list:
    bench = ctx.benchmark or {}
    ref_cfg = bench.get("reference") or {}
    if ref_cfg.get("images") is not None or ref_cfg.get("texts") is not None:
        return []  # a configured reference set (its files are checked with the benchmark)
    if ctx.bundle is not None and _reference_of(ctx.bundle) is None:
        return [_no_reference_message(f"{ctx.key}.method", bench.get("name", "?"))]
    if ctx.bundle is None:
        from avalanche_mm.benchmarks.registry import BENCHMARKS

        name = bench.get("name")
        if name in BENCHMARKS and not BENCHMARKS[name].reference:
            return [_no_reference_message(f"{ctx.key}.method", name)]
    return []


@register_method(
    "zscl",
    distributed=True,
    summary="ZSCL: reference-set distillation (both directions), L2 to task start, weight ensemble",
    params_from=ZSCL,
    exclude=("reference_images", "reference_texts", "teacher", "seed", "ref_batch_size"),
    params={
        # the config default differs from the constructor's: the study's batch size
        "ref_batch_size": Opt("int", None, nullable=True, minimum=1, help="reference images per step (default: training.batch_size)"),
        "reference_size": Opt("int", None, nullable=True, minimum=1, help="use only the first N reference images"),
        "reference_texts": Opt("int", None, nullable=True, minimum=1, help="use only the first N reference sentences"),
    },
    model_kinds=("clip",),
    check=_check_zscl,
    family="regularization",
    reference="Zheng et al., ICCV 2023",
)
def _build_zscl(ctx: BuildContext, p: dict):
    ref = _reference_of(ctx.bundle)
    if ref is None:
        raise ValueError(_no_reference_message("method", getattr(ctx.bundle, "name", "?")))
    images = ref.images
    texts = list(dict.fromkeys(ref.texts))  # a bank of distinct sentences
    if p["reference_size"] is not None:
        images = images[: p["reference_size"]]
    if p["reference_texts"] is not None:
        texts = texts[: p["reference_texts"]]
    return ZSCL(
        model=ctx.model,
        optimizer=ctx.optimizer(),
        reference_images=images,
        reference_texts=texts,
        image_weight=p["image_weight"],
        text_weight=p["text_weight"],
        temperature=p["temperature"],
        l2_weight=p["l2_weight"],
        we_every=p["we_every"],
        ref_batch_size=p["ref_batch_size"] or ctx.training["batch_size"],
        ref_text_batch_size=p["ref_text_batch_size"],
        text_features=p["text_features"],
        seed=ctx.seed,
        plugins=list(ctx.plugins),
        **ctx.schedule_kwargs(),
        **ctx.base_kwargs(),
    )
