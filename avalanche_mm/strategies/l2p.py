"""L2P: Learning to Prompt (Wang et al., CVPR 2022) on CLIP's image tower.

A pool of ``pool_size`` learnable (key, prompt) pairs, each prompt
``prompt_length`` tokens. For an image, the query is its frozen image feature;
the prompts of the ``top_k`` keys most similar to it (cosine) are
concatenated and prepended to the image tokens (after ``[CLS]``, prompt tuning
in the first block only). The classifier is the model's zero-shot text head
(class-name embeddings from the frozen text tower). Loss:
``CE + matching_weight * mean_b sum_{selected} (1 - cos(q_b, k_i))`` (the
surrogate loss of the released code, ``pull_constraint_coeff = 0.1``, pulls
the selected keys towards their queries). The whole pool trains on every
task; the backbone is frozen.

Code vs paper: the query is the CLIP image feature (the projected ``[CLS]``)
rather than the ViT's pre-logits; classification uses the CLIP head on
``[CLS]`` instead of averaging the prompt tokens through a learned linear
head; batch-wise prompt voting and the frequency-based diversity penalty of
the paper are not implemented.
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional

from torch import Tensor

from avalanche_mm.models.attach.prompt_pool import PromptPool, VisionPromptInjector
from avalanche_mm.registry import Range

from ._prompting import PromptMethodPlugin, PromptStrategy, frozen_backbone, method_problem, build_prompt_strategy
from .registry import BuildContext, CheckContext, register_method


class L2PPlugin(PromptMethodPlugin):
    """Query-key selection of pool prompts, prepended in the image tower (see the module docstring).

    :param backbone: the frozen backbone (the pool and injector are attached to it).
    :param pool_size: number of (key, prompt) pairs.
    :param prompt_length: tokens per prompt.
    :param top_k: prompts selected per image.
    :param matching_weight: weight of the key-query matching loss.
    :param key_init: initialisation of keys (``uniform`` U(-1, 1) as the released code, ``normal``, ``zeros``).
    :param prompt_init: initialisation of prompts.
    :param image_key: batch key of the images.
    :param name: attachment name on the backbone.
    """

    def __init__(self, *, backbone, pool_size: int = 10, prompt_length: int = 5, top_k: int = 5,
                 matching_weight: float = 0.1, key_init: str = "uniform", prompt_init: str = "uniform",
                 image_key: str = "image", name: str = "l2p"):
        super().__init__(backbone=backbone, image_key=image_key)
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"L2P: top_k must be in 1..pool_size={pool_size}, got {top_k}.")
        if matching_weight < 0:
            raise ValueError(f"L2P: matching_weight must be >= 0, got {matching_weight}.")
        self.top_k = int(top_k)
        self.matching_weight = float(matching_weight)
        self.pool = PromptPool(size=pool_size, length=prompt_length, width=backbone.width("vision"),
                               key_dim=backbone.embed_dim, key_init=key_init, prompt_init=prompt_init)
        self.pool.towers = ("vision",)
        backbone.add_attachment(f"{name}_pool", self.pool.to(backbone.device))
        self.injector = VisionPromptInjector(backbone=backbone).attach(backbone, name=f"{name}_inject")
        self.last_selection: Optional[Tensor] = None

    def clear(self) -> None:
        self.injector.clear()

    def prepare(self, strategy, query: Tensor, *, training: bool):
        idx = self.pool.select(query, self.top_k)  # [B, k]
        self.last_selection = idx
        prompts = self.pool.gather(idx)  # [B, k, 1, L, D]
        b = prompts.shape[0]
        self.injector.set(prepend=prompts.reshape(b, -1, prompts.shape[-1]))
        if training and self.matching_weight > 0:
            return self.matching_weight * self.pool.matching_loss(query, idx)
        return None


class L2P(PromptStrategy):
    """L2P on a frozen CLIP with the zero-shot text head (see the module docstring).

    :param model: a CLIP classifier (e.g. :class:`~avalanche_mm.models.ZeroShotClassifier`).
    :param optimizer: the optimizer.
    :param pool_size: number of (key, prompt) pairs in the pool.
    :param prompt_length: tokens per prompt.
    :param top_k: prompts selected per image (at most pool_size).
    :param matching_weight: weight of the key-query matching (surrogate) loss.
    :param key_init: initialisation of the keys.
    :param prompt_init: initialisation of the prompts.
    :param image_key: batch key of the images.
    :param base_kwargs: :class:`~avalanche_mm.strategies.FineTune` arguments.
    """

    def __init__(self, *, model, optimizer,
                 pool_size: Annotated[int, Range(ge=1)] = 10,
                 prompt_length: Annotated[int, Range(ge=1)] = 5,
                 top_k: Annotated[int, Range(ge=1)] = 5,
                 matching_weight: Annotated[float, Range(ge=0.0)] = 0.1,
                 key_init: Literal["uniform", "normal", "zeros"] = "uniform",
                 prompt_init: Literal["uniform", "normal", "zeros"] = "uniform",
                 image_key: str = "image", **base_kwargs):
        backbone = frozen_backbone(model, "L2P")
        plugin = L2PPlugin(backbone=backbone, pool_size=pool_size, prompt_length=prompt_length, top_k=top_k,
                           matching_weight=matching_weight, key_init=key_init, prompt_init=prompt_init,
                           image_key=image_key)
        super().__init__(model=model, optimizer=optimizer, prompt_plugin=plugin, **base_kwargs)


def pool_checks(ctx: CheckContext, params: Dict[str, Any], method: str, size_key: str, size_default) -> List[str]:
    """top_k <= pool size (shared by the pool methods)."""
    out: List[str] = []
    size = params.get(size_key, size_default)
    top_k = params.get("top_k", 1)
    if isinstance(size, int) and isinstance(top_k, int) and top_k > size:
        out.append(method_problem(ctx, method, "top_k", f"got {top_k}, expected <= {size_key}={size} (the pool size)"))
    return out


def _check(ctx: CheckContext, params: Dict[str, Any]) -> List[str]:
    return pool_checks(ctx, params, "L2P", "pool_size", 10)


@register_method("l2p", summary="L2P: prompt pool with key-query selection on CLIP's image tower (frozen CLIP)",
                 params_from=L2P, model_kinds=("clip",), family="prompt",
                 reference="Wang et al., CVPR 2022", check=_check, distributed=True)
def _build(ctx: BuildContext, params: dict):
    return build_prompt_strategy(L2P, ctx, params)

__all__ = ["L2PPlugin", "L2P"]
