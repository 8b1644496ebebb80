"""LwF for CLIP classifiers, as the MTIL baseline of ZSCL runs it.

Learning without Forgetting (Li & Hoiem, 2017) distils the model of the
previous task into the current one on the current task's data. For a CLIP
classifier the logits are ``tau * f(x) g(prompts)^T`` over the current task's
class prompts; ZSCL's LwF baseline distils them in both directions (image ->
classes over rows, classes -> images over the transposed matrix) with
temperature ``T``; the teacher is the model at the start of the task (the
zero-shot model for the first task).

Stock :class:`avalanche.training.LwF` distils only the units of *previous*
classes, which in MTIL (a new label space per task) leaves nothing to distil
on the new task; this plugin distils the current task's units instead.

:class:`CLIPLwFPlugin` holds the logic; :class:`CLIPLwF` is continual
fine-tuning with it.
"""

from __future__ import annotations

import copy
from typing import List, Optional, Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.utils import avalanche_forward
from torch import Tensor, nn

from .finetune import FineTune, _check_number, distillation_loss


def _active_columns(strategy, n_cols: int) -> Optional[List[int]]:
    classes = getattr(strategy.experience, "classes_in_this_experience", None)
    if classes is None:
        return None
    cols = sorted(int(c) for c in classes if 0 <= int(c) < n_cols)
    return cols or None


class CLIPLwFPlugin(SupervisedPlugin):
    """Distils the task-start model's logits on the current minibatch.

    ``loss += alpha * (KD(t, s) + [both_directions] KD(t^T, s^T))`` where
    ``s`` and ``t`` are the student's and teacher's logits restricted to the
    current experience's classes.

    :param alpha: weight of the distillation term (>= 0; 0 disables it).
    :param temperature: distillation temperature ``T``.
    :param both_directions: also distil the transposed logits (classes -> images).
    """

    def __init__(self, *, alpha: float = 1.0, temperature: float = 2.0, both_directions: bool = True):
        super().__init__()
        _check_number("alpha", alpha)
        _check_number("temperature", temperature)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.both_directions = bool(both_directions)
        self.teacher: Optional[nn.Module] = None
        self.last_loss: Optional[float] = None

    def before_training_exp(self, strategy, **kwargs):
        self.teacher = copy.deepcopy(strategy.model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def penalty(self, strategy) -> Tensor:
        """The distillation term for the current minibatch (before ``alpha``)."""
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


class CLIPLwF(FineTune):
    """Continual fine-tuning with CLIP-LwF distillation.

    :param alpha: distillation weight.
    :param temperature: distillation temperature.
    :param both_directions: also distil the transposed logits.
    :param base_kwargs: the arguments of :class:`~avalanche_mm.strategies.FineTune`.
    """

    def __init__(
        self,
        *,
        alpha: Annotated[float, Range(ge=0.0)] = 1.0,
        temperature: Annotated[float, Range(gt=0.0)] = 2.0,
        both_directions: bool = True,
        plugins: Optional[Sequence] = None,
        **base_kwargs,
    ):
        self.lwf_plugin = CLIPLwFPlugin(alpha=alpha, temperature=temperature, both_directions=both_directions)
        super().__init__(plugins=list(plugins or []) + [self.lwf_plugin], **base_kwargs)


__all__ = ["CLIPLwFPlugin", "CLIPLwF"]


# ---------------------------------------------------------------------------
# registration (config name "lwf"; parameters from CLIPLwF's signature)
# ---------------------------------------------------------------------------
from typing import Annotated  # noqa: E402  (used by the annotations above)

from avalanche_mm.registry import Range  # noqa: E402
from avalanche_mm.strategies.registry import BuildContext, register_method  # noqa: E402


@register_method(
    "lwf",
    distributed=True,
    summary="Learning without Forgetting (CLIP: both-direction logit distillation from the task-start model)",
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
