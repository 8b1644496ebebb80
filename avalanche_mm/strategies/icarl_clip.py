"""iCaRL as ZSCL runs it on MTIL (Zheng et al., ICCV 2023, baseline "iCaRL").

ZSCL's iCaRL (``mtil/src/models/icarl.py`` and ``mtil/src/dynamic_dataset.py``)
is not Rebuffi et al.'s nearest-mean classifier: the CLIP head stays, and an
exemplar memory of *images* is distilled from the *zero-shot* CLIP:

- **Training.** The first task is plain fine-tuning. On later tasks the loss
  adds, per iteration, the distillation of the zero-shot model (the teacher)
  on the next ``batch_size`` memory images, taken in memory order and
  restarting at its end (``batch(ref_images, batch_size)``), against the
  teacher's features of the *current* task's prompts (first template):
  ``S = tau f(x_mem) g_t(C_cur)^T``, ``alpha (KD(S_t, S_s) + KD(S_t^T, S_s^T))``.
- **Memory** (``memory_size`` K = 10000 images, evaluation preprocessing).
  After the first task it holds the first K training images of that task in
  dataset order. After task ``t`` (t datasets seen) each older dataset keeps
  the first ``K // t`` of its exemplars and the new dataset gets ``K - K // t``
  exemplars chosen by herding on the L2-normalised image features of the
  model just trained, among its first ``candidates`` (30000) training images.
- **Herding as released.** The released loop deletes the chosen row from the
  feature array but indexes the image list with the row's position in the
  *shrunk* array, so from the second pick on the stored image is generally
  not the one herding chose (and may repeat). ``herding="code"`` (default)
  reproduces this; ``herding="paper"`` stores the chosen images.

The released ``scripts/icarl.sh`` is a 5-iteration smoke test without
``--image_loss``/``--text_loss``; the published runs' flags are not in the
repository, so ``both_directions=True`` follows its other distillation
baselines (``lwf.sh``, ``ZSCL.sh``).

:class:`ICaRLCLIPPlugin` holds the logic; :class:`ICaRLCLIP` is continual
fine-tuning with it (named so as not to clash with the drop-in Avalanche
twin :class:`~avalanche_mm.strategies.ICaRL`).
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from avalanche_mm.registry import Range

from .clip_lwf import task_prompts
from .finetune import (
    FineTune,
    _check_number,
    distillation_loss,
    find_backbone,
    frozen_copy,
    images_of,
    logit_scale_of,
)
from .registry import BuildContext, register_method

HERDING_MODES = ("code", "paper")


def herding_order(features: np.ndarray, m: int, *, mode: str = "code") -> List[int]:
    """Indices of the ``m`` exemplars that herding stores, as ZSCL's ``constructExampleSet``.

    ``features``: ``[N, D]`` L2-normalised features. At step ``k`` the row of the
    remaining features minimising ``||mu - (sum + f) / (k + 1)||^2`` is chosen and
    deleted (``mu``: the mean of all features). ``mode="code"`` returns the row's
    position in the shrunk array (what the released code stores); ``"paper"`` its
    original index.
    """
    if mode not in HERDING_MODES:
        raise ValueError(f"herding mode must be one of {HERDING_MODES}, got {mode!r}.")
    feats = np.asarray(features, dtype=np.float64)
    mu = feats.mean(axis=0)
    remaining = np.arange(len(feats))
    picked: List[int] = []
    running = None
    for k in range(min(m, len(feats))):
        if k == 0:
            idx = int(np.argmin(np.sum((mu - feats) ** 2, axis=1)))
            running = feats[idx].copy()
        else:
            idx = int(np.argmin(np.sum((mu - (1.0 / (k + 1)) * (feats + running)) ** 2, axis=1)))
            running = running + feats[idx]
        picked.append(idx if mode == "code" else int(remaining[idx]))
        feats = np.delete(feats, idx, axis=0)
        remaining = np.delete(remaining, idx)
    return picked


class ICaRLCLIPPlugin(SupervisedPlugin):
    """ZSCL's iCaRL: exemplar memory distilled from the zero-shot model (module docstring).

    :param memory_size: exemplar images kept in total (``K``).
    :param candidates: training images per task considered for herding (and read).
    :param alpha: weight of the distillation term.
    :param temperature: distillation temperature ``T``.
    :param both_directions: also distil the transposed logits.
    :param herding: ``"code"`` (released indexing) or ``"paper"`` (the chosen images).
    :param mem_batch_size: memory images per iteration (default: the training batch size).
    :param image_key: modality name of the images.
    :param feature_batch_size: images per forward when computing herding features.
    """

    def __init__(
        self,
        *,
        memory_size: int = 10000,
        candidates: int = 30000,
        alpha: float = 1.0,
        temperature: float = 2.0,
        both_directions: bool = True,
        herding: str = "code",
        mem_batch_size: Optional[int] = None,
        image_key: str = "image",
        feature_batch_size: int = 256,
    ):
        super().__init__()
        for name, v in (("memory_size", memory_size), ("candidates", candidates),
                        ("feature_batch_size", feature_batch_size)):
            if isinstance(v, bool) or int(v) < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}.")
        _check_number("alpha", alpha)
        _check_number("temperature", temperature)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if herding not in HERDING_MODES:
            raise ValueError(f"herding must be one of {HERDING_MODES}, got {herding!r}.")
        self.memory_size = int(memory_size)
        self.candidates = int(candidates)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.both_directions = bool(both_directions)
        self.herding = herding
        self.mem_batch_size = mem_batch_size
        self.image_key = image_key
        self.feature_batch_size = int(feature_batch_size)
        self.teacher: Optional[nn.Module] = None
        #: per seen task, in order: (evaluation view of its training data, exemplar indices)
        self.memory: List[Tuple[Any, List[int]]] = []
        self.last_loss: Optional[float] = None
        self._teacher_text: Optional[Tensor] = None
        self._cursor = 0
        self._flat: List[Tuple[int, int]] = []

    # -- memory ----------------------------------------------------------------
    def memory_indices(self) -> List[List[int]]:
        """The exemplar indices of each seen task, in memory order."""
        return [list(idx) for _, idx in self.memory]

    def _image(self, dataset, i: int) -> Tensor:
        return images_of(dataset[int(i)], self.image_key, where="iCaRL memory")

    def _features(self, model: nn.Module, dataset, indices: Sequence[int], device) -> np.ndarray:
        backbone = find_backbone(model)
        was = backbone.training
        backbone.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(indices), self.feature_batch_size):
                batch = torch.stack([self._image(dataset, i) for i in indices[s : s + self.feature_batch_size]])
                out.append(backbone.encode_image(batch.to(device), normalize=False).float().cpu())
        backbone.train(was)
        feats = torch.cat(out)
        return torch.nn.functional.normalize(feats, dim=-1).numpy()

    def update_memory(self, model: nn.Module, dataset, device) -> None:
        """Add a finished task's exemplars (``update`` of ZSCL's ``DynamicDataset``)."""
        data = dataset.eval() if hasattr(dataset, "eval") else dataset
        n = min(len(data), self.candidates)
        if not self.memory:  # first round: the first K samples, no herding
            self.memory.append((data, list(range(min(n, self.memory_size)))))
            return
        t = len(self.memory) + 1
        keep = self.memory_size // t
        self.memory = [(d, idx[:keep]) for d, idx in self.memory]
        m = self.memory_size - self.memory_size // t
        feats = self._features(model, data, list(range(n)), device)
        self.memory.append((data, herding_order(feats, m, mode=self.herding)))

    def _next_memory_batch(self, batch_size: int, device) -> Tensor:
        """The next ``batch_size`` memory images in order (a shorter last batch, then restart)."""
        if not self._flat:
            self._flat = [(k, i) for k, (_, idx) in enumerate(self.memory) for i in idx]
            self._cursor = 0
        if self._cursor >= len(self._flat):
            self._cursor = 0
        chunk = self._flat[self._cursor : self._cursor + batch_size]
        self._cursor += batch_size
        return torch.stack([self._image(self.memory[k][0], i) for k, i in chunk]).to(device)

    # -- training ---------------------------------------------------------------
    def before_training_exp(self, strategy, **kwargs):
        if self.teacher is None:  # the zero-shot model (ZSCL's --ref-model unset)
            self.teacher = frozen_copy(find_backbone(strategy.model))
        self.teacher.to(strategy.device)
        self._flat, self._cursor = [], 0
        self._teacher_text = None
        if self.memory:
            with torch.no_grad():
                tokens = self.teacher.tokenize(task_prompts(strategy, first_template_only=True))
                self._teacher_text = self.teacher.encode_text(tokens.to(strategy.device))

    def penalty(self, strategy, images: Tensor) -> Tensor:
        """The distillation term on memory ``images`` (before ``alpha``)."""
        student = find_backbone(strategy.model)
        scale = logit_scale_of(student)
        with torch.no_grad():
            t_img = self.teacher.encode_image(images)
        s_img = student.encode_image(images)
        text = self._teacher_text.float()
        t_logits, s_logits = scale * t_img.float() @ text.t(), scale * s_img.float() @ text.t()
        loss = distillation_loss(t_logits, s_logits, self.temperature)
        if self.both_directions and s_logits.shape[0] > 1:
            loss = loss + distillation_loss(t_logits.t(), s_logits.t(), self.temperature)
        return loss

    def before_backward(self, strategy, **kwargs):
        if self.alpha == 0 or not self.memory or self._teacher_text is None:
            return
        # the memory batch is replicated under torchrun (every rank distils the same images, as
        # ZSCL's reference batches): default size the *global* training batch, as one process
        from avalanche_mm import distributed as _dist

        bs = int(self.mem_batch_size or strategy.train_mb_size * _dist.world_size())
        loss = self.penalty(strategy, self._next_memory_batch(bs, strategy.device))
        self.last_loss = float(loss.detach())
        strategy.loss = strategy.loss + self.alpha * loss

    def after_training_exp(self, strategy, **kwargs):
        self.update_memory(strategy.model, strategy.experience.dataset, strategy.device)
        self._flat = []

    # -- checkpointing ---------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The teacher's weights and the exemplar indices (the datasets come from the benchmark)."""
        return {"teacher": None if self.teacher is None else self.teacher.state_dict(),
                "memory_indices": self.memory_indices()}


class ICaRLCLIP(FineTune):
    """Continual fine-tuning with ZSCL's iCaRL (exemplars distilled from zero-shot CLIP).

    :param memory_size: exemplar images kept in total (10000 in ZSCL).
    :param candidates: training images per task read for herding (30000 in ZSCL).
    :param alpha: weight of the distillation term.
    :param temperature: distillation temperature.
    :param both_directions: also distil the transposed logits.
    :param herding: ``"code"`` (the released code's indexing) or ``"paper"`` (the images herding chose).
    :param mem_batch_size: memory images per iteration (default: the training batch size).
    :param base_kwargs: the arguments of :class:`~avalanche_mm.strategies.FineTune`.
    """

    def __init__(
        self,
        *,
        memory_size: Annotated[int, Range(ge=1)] = 10000,
        candidates: Annotated[int, Range(ge=1)] = 30000,
        alpha: Annotated[float, Range(ge=0.0)] = 1.0,
        temperature: Annotated[float, Range(gt=0.0)] = 2.0,
        both_directions: bool = True,
        herding: Literal["code", "paper"] = "code",
        mem_batch_size: Optional[Annotated[int, Range(ge=1)]] = None,
        plugins: Optional[Sequence] = None,
        **base_kwargs,
    ):
        self.icarl_plugin = ICaRLCLIPPlugin(memory_size=memory_size, candidates=candidates, alpha=alpha,
                                            temperature=temperature, both_directions=both_directions,
                                            herding=herding, mem_batch_size=mem_batch_size)
        super().__init__(plugins=list(plugins or []) + [self.icarl_plugin], **base_kwargs)


@register_method("icarl-clip", summary="iCaRL as ZSCL runs it: herded image memory distilled from zero-shot CLIP",
                 params_from=ICaRLCLIP, model_kinds=("clip",), family="replay",
                 reference="Rebuffi et al., CVPR 2017; as run by Zheng et al., ICCV 2023", distributed=True)
def _build_icarl_clip(ctx: BuildContext, params: dict):
    return ICaRLCLIP(**ctx.common_kwargs(ICaRLCLIP), **params)


__all__ = ["herding_order", "ICaRLCLIPPlugin", "ICaRLCLIP", "HERDING_MODES"]
