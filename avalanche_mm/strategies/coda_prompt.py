"""CODA-Prompt (Smith et al., CVPR 2023) on CLIP's image tower.

Per prefixed block, ``pool_size`` prompt components ``P_m`` with keys ``K_m``
and attention vectors ``A_m``. For an image with frozen feature ``q`` the
prompt is ``sum_m cos(q * A_m, K_m) P_m`` (attention-weighted, no top-k, end to
end differentiable), split into key and value prefixes of the block's
attention. Components are allocated in equal chunks per task: the current
task's chunk trains, earlier chunks are used frozen, later ones are unused; a
new chunk starts orthogonal (Gram-Schmidt) to the earlier ones, and
``ortho_weight * ||X X^T - I||^2`` (mean, on keys, attentions and prompts)
keeps them so. Loss: CE (+ the orthogonality term). The classifier is the
model's zero-shot text head; the backbone is frozen.

Defaults of the released code: 100 components, length 8 (4 key + 4 value
tokens), blocks 0-4, ``ortho_weight=0.0`` (``--prompt_param 100 8 0.0`` in the
released scripts: "with updated code, now can be 0"; the paper's penalty is
available with ``ortho_weight > 0``). The orthogonal initialisation is always
applied. The query is the CLIP image feature (projected ``[CLS]``).
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Optional

from torch import Tensor

from avalanche_mm.models.attach.base import resolve_layers
from avalanche_mm.models.attach.prompt_pool import CodaPromptPool, VisionPromptInjector
from avalanche_mm.registry import Range

from ._prompting import PromptMethodPlugin, PromptStrategy, frozen_backbone, method_problem, build_prompt_strategy
from .dualprompt import layer_checks, n_tasks_checks
from .registry import BuildContext, CheckContext, register_method


class CODAPromptPlugin(PromptMethodPlugin):
    """Attention-weighted prompt components as attention prefixes (see the module docstring).

    :param backbone: the frozen backbone.
    :param n_tasks: number of tasks (component chunks).
    :param pool_size: components per layer (a multiple of n_tasks).
    :param prompt_length: prompt length (even: half key, half value prefix).
    :param layers: prefixed image blocks.
    :param ortho_weight: weight of the orthogonality penalty.
    :param image_key: batch key of the images.
    :param name: attachment name on the backbone.
    """

    def __init__(self, *, backbone, n_tasks: int, pool_size: int = 100, prompt_length: int = 8,
                 layers=(0, 1, 2, 3, 4), ortho_weight: float = 0.0, image_key: str = "image",
                 name: str = "coda"):
        super().__init__(backbone=backbone, image_key=image_key)
        n_blocks = len(backbone.blocks("vision"))
        bad = [i for i in layers if not -n_blocks <= int(i) < n_blocks]
        if bad:
            raise ValueError(
                f"CODA-Prompt: layers {list(layers)} has {bad} outside the image tower of {backbone.name} "
                f"({n_blocks} blocks)."
            )
        self.layers = resolve_layers(backbone, "vision", layers)
        self.ortho_weight = float(ortho_weight)
        self.pool = CodaPromptPool(n_tasks=n_tasks, size=pool_size, length=prompt_length,
                                   width=backbone.width("vision"), key_dim=backbone.embed_dim,
                                   layers=len(self.layers))
        self.pool.towers = ("vision",)
        backbone.add_attachment(f"{name}_pool", self.pool.to(backbone.device))
        self.injector = VisionPromptInjector(backbone=backbone, prefix_layers=self.layers).attach(
            backbone, name=f"{name}_inject")

    def on_training_experience(self, strategy, experience_index: int) -> None:
        if experience_index >= self.pool.n_tasks:
            raise ValueError(
                f"CODA-Prompt: experience {experience_index} but the pool is split into {self.pool.n_tasks} "
                "task chunks (n_tasks); set n_tasks to the number of experiences."
            )
        self.pool.start_task(experience_index)

    def clear(self) -> None:
        self.injector.clear()

    def prepare(self, strategy, query: Tensor, *, training: bool):
        p = self.pool.prompts(query)  # [layers, B, L, D]
        half = self.pool.length // 2
        self.injector.set(prefix={layer: (p[j, :, :half], p[j, :, half:]) for j, layer in enumerate(self.layers)})
        if training and self.ortho_weight > 0:
            return self.ortho_weight * self.pool.orthogonality_penalty()
        return None


class CODAPrompt(PromptStrategy):
    """CODA-Prompt on a frozen CLIP with the zero-shot text head (see the module docstring).

    :param model: a CLIP classifier.
    :param optimizer: the optimizer.
    :param n_tasks: number of tasks; None: the benchmark's number of experiences.
    :param pool_size: prompt components per layer (a multiple of n_tasks).
    :param prompt_length: prompt length (even; half key, half value prefix).
    :param layers: prefixed image blocks.
    :param ortho_weight: weight of the orthogonality penalty.
    :param image_key: batch key of the images.
    :param base_kwargs: :class:`~avalanche_mm.strategies.FineTune` arguments.
    """

    def __init__(self, *, model, optimizer,
                 n_tasks: Optional[Annotated[int, Range(ge=1)]] = None,
                 pool_size: Annotated[int, Range(ge=1)] = 100,
                 prompt_length: Annotated[int, Range(ge=2)] = 8,
                 layers: List[int] = (0, 1, 2, 3, 4),
                 ortho_weight: Annotated[float, Range(ge=0.0)] = 0.0,
                 image_key: str = "image", **base_kwargs):
        if n_tasks is None:
            raise ValueError("CODA-Prompt: n_tasks is needed (components are split per task); give the number of experiences.")
        backbone = frozen_backbone(model, "CODA-Prompt")
        plugin = CODAPromptPlugin(backbone=backbone, n_tasks=n_tasks, pool_size=pool_size,
                                  prompt_length=prompt_length, layers=layers, ortho_weight=ortho_weight,
                                  image_key=image_key)
        super().__init__(model=model, optimizer=optimizer, prompt_plugin=plugin, **base_kwargs)


def _n_tasks(ctx, params) -> Optional[int]:
    n = params.get("n_tasks")
    if n is None and ctx.bundle is not None:
        n = ctx.bundle.n_experiences
    return n


def _check(ctx: CheckContext, params: Dict[str, Any]) -> List[str]:
    out = n_tasks_checks(ctx, params, "CODA-Prompt")
    out += layer_checks(ctx, params, "CODA-Prompt", ("layers",), ((0, 1, 2, 3, 4),))
    n = _n_tasks(ctx, params)
    size = params.get("pool_size", 100)
    if n and isinstance(size, int) and size % n:
        out.append(method_problem(ctx, "CODA-Prompt", "pool_size", f"got {size}, expected a multiple of the {n} tasks"))
    length = params.get("prompt_length", 8)
    if isinstance(length, int) and length % 2:
        out.append(method_problem(ctx, "CODA-Prompt", "prompt_length", f"got {length}, expected an even number (half key, half value prefix)"))
    return out


@register_method("coda-prompt", summary="CODA-Prompt: attention-weighted prompt components as prefixes (frozen CLIP)",
                 params_from=CODAPrompt, model_kinds=("clip",), family="prompt",
                 reference="Smith et al., CVPR 2023", check=_check, distributed=True)
def _build(ctx: BuildContext, params: dict):
    return build_prompt_strategy(CODAPrompt, ctx, params, per_experience='n_tasks')

__all__ = ["CODAPromptPlugin", "CODAPrompt"]
