"""LwF for CLIP classifiers, as the MTIL baseline of ZSCL runs it.

Learning without Forgetting (Li & Hoiem, 2017) distils the model of the
previous task into the current one on the current task's data.

``mode="zscl"`` (default) is ZSCL's LwF baseline as its released code runs it
(``mtil/scripts/lwf.sh``: ``--method ZSCL --image_loss --text_loss
--ref-dataset <current dataset> --ref-model <previous task's checkpoint>``,
no ``--ref-sentences``; the loss is written in ``mtil/src/models/finetune.py``):

- the teacher is the model of the previous task (the model at the start of
  the task; the zero-shot model for the first task), frozen;
- on every iteration a *separate* batch of the current task's training data,
  with the evaluation preprocessing (no augmentation), is drawn;
- the sentences are the current task's class names in the dataset's *first*
  template only, encoded once per task by the teacher (``ref_texts`` of the
  released code): the student gets no text-tower distillation gradient;
- ``S_s = tau * f_s(x) g_t(C)^T`` and ``S_t = tau * f_t(x) g_t(C)^T``, loss
  ``alpha * (KD(S_t, S_s) + KD(S_t^T, S_s^T))`` with temperature ``T``
  (``tau`` is the student's logit scale, frozen in the recipes, used for both
  as in the released code).

``mode="minibatch"`` is this package's earlier variant: the teacher's and
student's logits of the training minibatch itself (the head's template
ensemble, student text features, so the text tower gets distillation
gradient) are distilled in both directions.

Stock :class:`avalanche.training.LwF` distils only the units of *previous*
classes, which in MTIL (a new label space per task) leaves nothing to distil
on the new task; this plugin distils the current task's units instead.

:class:`CLIPLwFPlugin` holds the logic; :class:`CLIPLwF` is continual
fine-tuning with it.
"""

from __future__ import annotations

from typing import Annotated, Iterator, List, Literal, Optional, Sequence, Tuple

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.utils import avalanche_forward
from torch import Tensor, nn
from torch.utils.data import DataLoader

from avalanche_mm.registry import Range

from .finetune import (
    FineTune,
    _check_number,
    distillation_loss,
    find_backbone,
    frozen_copy,
    images_of,
    logit_scale_of,
)

LWF_MODES = ("zscl", "minibatch")


def _active_columns(strategy, n_cols: int) -> Optional[List[int]]:
    classes = getattr(strategy.experience, "classes_in_this_experience", None)
    if classes is None:
        return None
    cols = sorted(int(c) for c in classes if 0 <= int(c) < n_cols)
    return cols or None


def task_prompts(strategy, *, first_template_only: bool = True) -> List[str]:
    """The current experience's class prompts: its class names in its templates.

    Names come from the experience (``class_names``, as the benchmarks of this
    package set them), else from the model's zero-shot head; templates from
    the experience's ``templates``, else the head's templates for the task.

    :param first_template_only: keep only the first template (ZSCL's ``dataset.template``).
    :raises ValueError: when neither the experience nor the model names the classes.
    """
    from avalanche_mm.models.zero_shot import render_prompts

    exp = strategy.experience
    names = getattr(exp, "class_names", None)
    templates = getattr(exp, "templates", None)
    model = strategy.model
    task = int(next(iter(getattr(exp, "task_labels", [0]) or [0])))
    if not names:
        if getattr(model, "per_task_names", False):
            names = model.task_names.get(task)
        elif hasattr(model, "global_names") or hasattr(model, "class_names"):
            all_names = getattr(model, "global_names", None) or getattr(model, "class_names")
            names = [all_names[c] for c in sorted(int(c) for c in exp.classes_in_this_experience)]
    if not templates:
        if hasattr(model, "templates_of"):
            templates = model.templates_of(task)
        else:
            templates = getattr(model, "templates", None)
    if not names or not templates:
        raise ValueError(
            "CLIP LwF (mode='zscl') needs the current task's class names and prompt templates: "
            "the experience has no class_names/templates and the model is not a zero-shot head "
            "that knows them. Use a benchmark of avalanche_mm (its experiences carry them) or "
            "mode='minibatch'."
        )
    templates = list(templates)
    return render_prompts(list(names), templates[:1] if first_template_only else templates)


class CLIPLwFPlugin(SupervisedPlugin):
    """Distils the task-start model into the current one (see the module docstring).

    :param alpha: weight of the distillation term (>= 0; 0 disables it).
    :param temperature: distillation temperature ``T``.
    :param both_directions: also distil the transposed logits (classes -> images).
    :param mode: ``"zscl"`` (released code of ZSCL's LwF baseline, default) or
        ``"minibatch"`` (distil the training minibatch's logits).
    :param ref_batch_size: ``mode="zscl"``: samples of the separate batch
        (default: the strategy's ``train_mb_size``, as the released code).
    :param image_key: ``mode="zscl"``: modality name of the images.
    :param seed: ``mode="zscl"``: seed of the separate batches' order (per experience).
    """

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        temperature: float = 2.0,
        both_directions: bool = True,
        mode: str = "zscl",
        ref_batch_size: Optional[int] = None,
        image_key: str = "image",
        seed: int = 0,
    ):
        super().__init__()
        _check_number("alpha", alpha)
        _check_number("temperature", temperature)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if mode not in LWF_MODES:
            raise ValueError(f"mode must be one of {LWF_MODES}, got {mode!r}.")
        if ref_batch_size is not None and (isinstance(ref_batch_size, bool) or int(ref_batch_size) < 1):
            raise ValueError(f"ref_batch_size must be a positive int or None, got {ref_batch_size!r}.")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.both_directions = bool(both_directions)
        self.mode = mode
        self.ref_batch_size = ref_batch_size
        self.image_key = image_key
        self.seed = int(seed)
        self.teacher: Optional[nn.Module] = None
        self.last_loss: Optional[float] = None
        self._ref_iter: Optional[Iterator] = None
        self._teacher_text: Optional[Tensor] = None
        self.prompts: List[str] = []

    # -- setup ---------------------------------------------------------------
    def before_training_exp(self, strategy, **kwargs):
        if self.mode == "minibatch":
            self.teacher = frozen_copy(strategy.model)
            return
        self.teacher = frozen_copy(find_backbone(strategy.model))
        with torch.no_grad():
            tokens = self.reference_tokens(strategy).to(strategy.device)
            self._teacher_text = self.teacher.encode_text(tokens)
        dataset = strategy.experience.dataset
        dataset = dataset.eval() if hasattr(dataset, "eval") else dataset
        # replicated on every rank under torchrun (the same seeded order): the global batch's size
        from avalanche_mm import distributed as _dist

        bs = int(self.ref_batch_size or strategy.train_mb_size * _dist.world_size())
        exp_id = int(getattr(strategy.experience, "current_experience", 0))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + exp_id)
        self._ref_iter = self._cycle(dataset, bs, generator)

    def reference_tokens(self, strategy) -> Tensor:
        """Token ids of the sentences the logits are taken against: the current task's
        class names in its first template (``self.prompts``)."""
        self.prompts = task_prompts(strategy, first_template_only=True)
        return self.teacher.tokenize(self.prompts)

    @staticmethod
    def _cycle(dataset, batch_size: int, generator) -> Iterator:
        from .template import resolve_collate

        while True:
            loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True,
                                generator=generator, collate_fn=resolve_collate(dataset))
            yield from loader

    # -- the loss ----------------------------------------------------------------
    def reference_logits(self, strategy, images: Tensor) -> Tuple[Tensor, Tensor]:
        """``mode="zscl"``: teacher and student logits ``[B, C]`` of ``images`` against
        the teacher's features of the task's prompts."""
        student = find_backbone(strategy.model)
        scale = logit_scale_of(student)
        with torch.no_grad():
            t_img = self.teacher.encode_image(images)
        s_img = student.encode_image(images)
        text = self._teacher_text
        return scale * t_img.float() @ text.float().t(), scale * s_img.float() @ text.float().t()

    def next_reference_images(self, strategy) -> Tensor:
        """``mode="zscl"``: the next separate batch of the current task (eval preprocessing)."""
        if self._ref_iter is None:
            raise RuntimeError("CLIPLwFPlugin: no reference loader; before_training_exp has not run.")
        return images_of(next(self._ref_iter), self.image_key, where="CLIP LwF").to(strategy.device)

    def penalty(self, strategy, images: Optional[Tensor] = None) -> Tensor:
        """The distillation term for the current iteration (before ``alpha``).

        :param images: ``mode="zscl"``: the reference images (default: the next separate batch).
        """
        if self.mode == "zscl":
            if images is None:
                images = self.next_reference_images(strategy)
            teacher, student = self.reference_logits(strategy, images)
        else:
            student = strategy.mb_output
            with torch.no_grad():
                teacher = avalanche_forward(self.teacher, strategy.mb_x, strategy.mb_task_id)
            cols = _active_columns(strategy, student.shape[1])
            if cols is not None:
                idx = torch.as_tensor(cols, device=student.device)
                student, teacher = student.index_select(1, idx), teacher.index_select(1, idx)
        loss = distillation_loss(teacher, student, self.temperature)
        if self.both_directions and student.shape[0] > 1:
            loss = loss + distillation_loss(teacher.t(), student.t(), self.temperature)
        return loss

    def before_backward(self, strategy, **kwargs):
        if self.alpha == 0 or self.teacher is None:
            return
        loss = self.penalty(strategy)
        self.last_loss = float(loss.detach())
        strategy.loss = strategy.loss + self.alpha * loss

    def after_training_exp(self, strategy, **kwargs):
        self.teacher = None  # the next task takes a fresh copy
        self._ref_iter = None
        self._teacher_text = None


class CLIPLwF(FineTune):
    """Continual fine-tuning with CLIP-LwF distillation (ZSCL's LwF baseline by default).

    :param alpha: distillation weight.
    :param temperature: distillation temperature.
    :param both_directions: also distil the transposed logits.
    :param mode: ``"zscl"``: a separate batch of the current task with evaluation
        preprocessing, the first template, the teacher's text features (ZSCL's
        released code); ``"minibatch"``: the training minibatch's logits.
    :param ref_batch_size: zscl mode: samples of the separate batch (default: the training batch size).
    :param base_kwargs: the arguments of :class:`~avalanche_mm.strategies.FineTune`.
    """

    def __init__(
        self,
        *,
        alpha: Annotated[float, Range(ge=0.0)] = 1.0,
        temperature: Annotated[float, Range(gt=0.0)] = 2.0,
        both_directions: bool = True,
        mode: Literal["zscl", "minibatch"] = "zscl",
        ref_batch_size: Optional[Annotated[int, Range(ge=1)]] = None,
        seed: int = 0,
        plugins: Optional[Sequence] = None,
        **base_kwargs,
    ):
        self.lwf_plugin = CLIPLwFPlugin(alpha=alpha, temperature=temperature, both_directions=both_directions,
                                        mode=mode, ref_batch_size=ref_batch_size, seed=seed)
        super().__init__(plugins=list(plugins or []) + [self.lwf_plugin], **base_kwargs)


__all__ = ["CLIPLwFPlugin", "CLIPLwF", "task_prompts", "LWF_MODES"]


# ---------------------------------------------------------------------------
# registration (config name "lwf"; parameters from CLIPLwF's signature)
# ---------------------------------------------------------------------------
from avalanche_mm.strategies.registry import BuildContext, register_method  # noqa: E402


@register_method(
    "lwf",
    distributed=True,
    summary="Learning without Forgetting (CLIP: ZSCL's LwF baseline, distillation of the task-start model on a separate batch)",
    params_from=CLIPLwF,
    family="regularization",
    reference="Li & Hoiem, TPAMI 2017",
)
def _build_lwf(ctx: BuildContext, p: dict):
    if ctx.kind == "clip":
        return CLIPLwF(
            model=ctx.model,
            optimizer=ctx.optimizer(),
            alpha=p["alpha"],
            temperature=p["temperature"],
            both_directions=p["both_directions"],
            mode=p["mode"],
            # the global batch (under torchrun train_mb_size is one rank's share)
            ref_batch_size=p["ref_batch_size"] or ctx.training["batch_size"],
            seed=ctx.seed,
            plugins=list(ctx.plugins),
            **ctx.schedule_kwargs(),
            **ctx.base_kwargs(),
        )
    from avalanche_mm.strategies.twins import LwF

    return LwF(
        model=ctx.model,
        optimizer=ctx.optimizer(),
        criterion=ctx.criterion(),
        alpha=p["alpha"],
        temperature=p["temperature"],
        plugins=[ctx.schedule_plugin()] + list(ctx.plugins),
        **ctx.base_kwargs(),
    )
