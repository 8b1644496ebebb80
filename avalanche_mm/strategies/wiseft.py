"""WiSE-FT (Wortsman et al., CVPR 2022) as a continual-learning baseline.

After each task the fine-tuned weights are interpolated with reference
weights: ``theta <- alpha * theta_ft + (1 - alpha) * theta_ref``. In the MTIL
baseline of ZSCL the reference is the model at the start of the task (the
previous task's result; ``--wise_ft_model n --wise_ft_alpha 0.8`` in their
scripts); the original WiSE-FT uses the zero-shot model (``reference="initial"``).

:class:`WiSEFTPlugin` holds the logic (usable with any template);
:class:`WiSEFT` is continual fine-tuning with the plugin.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from .finetune import FineTune, _check_number, float_state


def interpolate_weights(model: nn.Module, reference: Dict[str, Tensor], alpha: float) -> None:
    """In place: ``w <- alpha * w + (1 - alpha) * reference[w]`` for float state entries.

    :param model: the model whose weights change.
    :param reference: name -> tensor, as :func:`~avalanche_mm.strategies.finetune.float_state`.
    :param alpha: weight of the current weights (1 keeps them, 0 restores the reference).
    """
    state = model.state_dict()
    missing = [k for k in reference if k not in state]
    if missing:
        raise KeyError(
            f"interpolate_weights: the reference has entries the model lacks: {missing[:5]}; "
            "was the model's structure changed since the reference was taken?"
        )
    with torch.no_grad():
        for name, ref in reference.items():
            cur = state[name]
            if cur.shape != ref.shape:
                raise ValueError(
                    f"interpolate_weights: '{name}' has shape {tuple(cur.shape)} but the reference "
                    f"has {tuple(ref.shape)}."
                )
            cur.mul_(alpha).add_(ref.to(cur.device, cur.dtype), alpha=1.0 - alpha)


class WiSEFTPlugin(SupervisedPlugin):
    """Interpolates the weights with a reference after each training experience.

    :param alpha: weight of the fine-tuned weights, in [0, 1] (0.8 in ZSCL's MTIL runs).
    :param reference: ``"task_start"`` (the weights at the start of each
        experience) or ``"initial"`` (the weights before the first experience,
        i.e. the zero-shot model).
    """

    def __init__(self, *, alpha: float = 0.8, reference: str = "task_start"):
        super().__init__()
        _check_number("alpha", alpha)
        if alpha > 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        if reference not in ("task_start", "initial"):
            raise ValueError(f"reference must be 'task_start' or 'initial', got {reference!r}.")
        self.alpha = float(alpha)
        self.reference = reference
        self.initial: Optional[Dict[str, Tensor]] = None
        self.task_start: Optional[Dict[str, Tensor]] = None

    def before_training_exp(self, strategy, **kwargs):
        if self.reference == "initial":
            if self.initial is None:
                self.initial = float_state(strategy.model)
        else:
            self.task_start = float_state(strategy.model)

    def after_training_exp(self, strategy, **kwargs):
        ref = self.initial if self.reference == "initial" else self.task_start
        if ref is None:
            raise RuntimeError("WiSEFTPlugin: no reference weights were recorded before training.")
        interpolate_weights(strategy.model, ref, self.alpha)
        self.task_start = None

    # -- checkpointing -------------------------------------------------------
    def state_dict(self) -> Dict:
        """The plugin state (the initial weights when ``reference='initial'``)."""
        return {"initial": self.initial}

    def load_state_dict(self, state: Dict) -> None:
        """Restore :meth:`state_dict`."""
        self.initial = state.get("initial")
        self.task_start = None


class WiSEFT(FineTune):
    """Continual fine-tuning followed, after each task, by WiSE-FT interpolation.

    :param alpha: weight of the fine-tuned weights (default 0.8, as in ZSCL's baseline).
    :param reference: ``"task_start"`` (default) or ``"initial"``.
    :param base_kwargs: the arguments of :class:`~avalanche_mm.strategies.FineTune`.
    """

    def __init__(
        self,
        *,
        alpha: Annotated[float, Range(ge=0.0, le=1.0)] = 0.8,
        reference: Literal["task_start", "initial"] = "task_start",
        plugins: Optional[List] = None,
        **base_kwargs,
    ):
        self.wiseft_plugin = WiSEFTPlugin(alpha=alpha, reference=reference)
        super().__init__(plugins=list(plugins or []) + [self.wiseft_plugin], **base_kwargs)


__all__ = ["interpolate_weights", "WiSEFTPlugin", "WiSEFT"]


# ---------------------------------------------------------------------------
# registration (config name "wiseft"; parameters from WiSEFT's signature)
# ---------------------------------------------------------------------------
from typing import Annotated, Literal  # noqa: E402  (used by the annotations above)

from avalanche_mm.registry import Range  # noqa: E402
from avalanche_mm.strategies.registry import BuildContext, register_method  # noqa: E402


@register_method(
    "wiseft",
    summary="fine-tuning + WiSE-FT weight interpolation after each task",
    params_from=WiSEFT,
    model_kinds=("clip", "fusion"),
    family="architecture",
    reference="Wortsman et al., CVPR 2022",
)
def _build_wiseft(ctx: BuildContext, p: dict):
    return WiSEFT(
        model=ctx.model,
        optimizer=ctx.optimizer(),
        alpha=p["alpha"],
        reference=p["reference"],
        plugins=list(ctx.plugins),
        **ctx.schedule_kwargs(),
        **ctx.base_kwargs(),
    )
