"""DualPrompt (Wang et al., ECCV 2022) on CLIP's image tower.

- **G-prompt** (general, shared by all tasks): prefixes of ``g_length`` tokens
  in the attention of the blocks ``g_layers`` (default the first two).
- **E-prompts** (expert, one per task): a pool of ``n_tasks`` (key, prefix)
  pairs, prefixes of ``e_length`` tokens in blocks ``e_layers`` (default 2-4).
  While task ``t`` trains, its own E-prompt is used and its key is pulled to
  the queries (``matching_weight * mean (1 - cos(q, k_t))``); at test time the
  E-prompt whose key is the most similar (cosine) to the image's frozen
  feature, among the tasks trained so far, is used.

Prefix tuning as in the released code: each prompt holds a key half and a
value half that are concatenated to the attention keys and values after their
projection. Only the current task's E-prompt and key train (the others get
no gradient); the G-prompt trains on every task. The classifier is the model's
zero-shot text head; the backbone is frozen.

Code vs paper: the query is the CLIP image feature (projected ``[CLS]``);
lengths default to the PyTorch release (``g_length=5``, ``e_length=5``, prefix);
the paper's prompt-tuning variant is not offered.
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from avalanche_mm.models.attach.base import resolve_layers
from avalanche_mm.models.attach.prompt_pool import PromptPool, VisionPromptInjector, _init_
from avalanche_mm.registry import Range

from ._prompting import PromptMethodPlugin, PromptStrategy, frozen_backbone, method_problem, build_prompt_strategy
from .registry import BuildContext, CheckContext, register_method


class DualPromptPlugin(PromptMethodPlugin):
    """G-prompt + task-keyed E-prompts as attention prefixes (see the module docstring).

    :param backbone: the frozen backbone.
    :param n_tasks: number of tasks (E-prompt pool size).
    :param g_length: G-prompt length (per key/value half).
    :param e_length: E-prompt length (per key/value half).
    :param g_layers: blocks of the G-prompt.
    :param e_layers: blocks of the E-prompts.
    :param matching_weight: weight of the key-query matching loss.
    :param image_key: batch key of the images.
    :param name: attachment name on the backbone.
    """

    def __init__(self, *, backbone, n_tasks: int, g_length: int = 5, e_length: int = 5,
                 g_layers: Sequence[int] = (0, 1), e_layers: Sequence[int] = (2, 3, 4),
                 matching_weight: float = 1.0, image_key: str = "image", name: str = "dualprompt"):
        super().__init__(backbone=backbone, image_key=image_key)
        n_blocks = len(backbone.blocks("vision"))
        for what, layers in (("g_layers", g_layers), ("e_layers", e_layers)):
            bad = [i for i in layers if not -n_blocks <= int(i) < n_blocks]
            if bad:
                raise ValueError(
                    f"DualPrompt: {what} {list(layers)} has layers {bad} outside the image tower of "
                    f"{backbone.name} ({n_blocks} blocks); choose layers in 0..{n_blocks - 1}."
                )
        self.g_layers = resolve_layers(backbone, "vision", g_layers) if g_layers else []
        self.e_layers = resolve_layers(backbone, "vision", e_layers) if e_layers else []
        if set(self.g_layers) & set(self.e_layers):
            raise ValueError(f"DualPrompt: g_layers {self.g_layers} and e_layers {self.e_layers} overlap.")
        if not self.e_layers:
            raise ValueError("DualPrompt: e_layers is empty; the E-prompts need at least one block.")
        self.matching_weight = float(matching_weight)
        width = backbone.width("vision")
        self.pool = PromptPool(size=n_tasks, length=e_length, width=width, key_dim=backbone.embed_dim,
                               layers=len(self.e_layers), prefix=True)
        if self.g_layers:
            self.pool.g_prompt = nn.Parameter(_init_(torch.empty(len(self.g_layers), 2, g_length, width), "uniform"))
        else:
            self.pool.g_prompt = None
        self.pool.register_buffer("current_task", torch.zeros((), dtype=torch.long))
        self.pool.set_trainable([0])
        self.pool.towers = ("vision",)
        backbone.add_attachment(f"{name}_pool", self.pool.to(backbone.device))
        self.injector = VisionPromptInjector(backbone=backbone, prefix_layers=self.g_layers + self.e_layers).attach(
            backbone, name=f"{name}_inject")
        self.last_selection: Optional[Tensor] = None

    def on_training_experience(self, strategy, experience_index: int) -> None:
        if experience_index >= self.pool.size:
            raise ValueError(
                f"DualPrompt: experience {experience_index} but the E-prompt pool has {self.pool.size} "
                "entries (n_tasks); set n_tasks to the number of experiences."
            )
        self.pool.current_task.fill_(experience_index)
        self.pool.set_trainable([experience_index])

    def clear(self) -> None:
        self.injector.clear()

    def prepare(self, strategy, query: Tensor, *, training: bool):
        t = int(self.pool.current_task)
        b = query.shape[0]
        if training:
            idx = torch.full((b, 1), t, dtype=torch.long, device=query.device)
        else:  # most similar key among the tasks learned so far
            sim = self.pool.similarity(query)[:, : t + 1]
            idx = sim.argmax(dim=1, keepdim=True)
        self.last_selection = idx[:, 0]
        e = self.pool.gather(idx)[:, 0]  # [B, layers, 2, L, D]
        prefix: Dict[int, Any] = {}
        for j, layer in enumerate(self.e_layers):
            prefix[layer] = (e[:, j, 0], e[:, j, 1])
        for j, layer in enumerate(self.g_layers):
            g = self.pool.g_prompt[j]
            prefix[layer] = (g[0].unsqueeze(0).expand(b, -1, -1), g[1].unsqueeze(0).expand(b, -1, -1))
        self.injector.set(prefix=prefix)
        if training and self.matching_weight > 0:
            return self.matching_weight * self.pool.matching_loss(query, idx)
        return None


class DualPrompt(PromptStrategy):
    """DualPrompt on a frozen CLIP with the zero-shot text head (see the module docstring).

    :param model: a CLIP classifier.
    :param optimizer: the optimizer.
    :param n_tasks: number of tasks (E-prompts); None: the benchmark's number of experiences.
    :param g_length: G-prompt length (tokens per key/value half).
    :param e_length: E-prompt length (tokens per key/value half).
    :param g_layers: image blocks of the G-prompt.
    :param e_layers: image blocks of the E-prompts.
    :param matching_weight: weight of the key-query matching loss.
    :param image_key: batch key of the images.
    :param base_kwargs: :class:`~avalanche_mm.strategies.FineTune` arguments.
    """

    def __init__(self, *, model, optimizer,
                 n_tasks: Optional[Annotated[int, Range(ge=1)]] = None,
                 g_length: Annotated[int, Range(ge=1)] = 5,
                 e_length: Annotated[int, Range(ge=1)] = 5,
                 g_layers: List[int] = (0, 1),
                 e_layers: List[int] = (2, 3, 4),
                 matching_weight: Annotated[float, Range(ge=0.0)] = 1.0,
                 image_key: str = "image", **base_kwargs):
        if n_tasks is None:
            raise ValueError("DualPrompt: n_tasks is needed (one E-prompt per task); give the number of experiences.")
        backbone = frozen_backbone(model, "DualPrompt")
        plugin = DualPromptPlugin(backbone=backbone, n_tasks=n_tasks, g_length=g_length, e_length=e_length,
                                  g_layers=g_layers, e_layers=e_layers, matching_weight=matching_weight,
                                  image_key=image_key)
        super().__init__(model=model, optimizer=optimizer, prompt_plugin=plugin, **base_kwargs)


def layer_checks(ctx: CheckContext, params: Dict[str, Any], method: str, keys: Sequence[str], defaults) -> List[str]:
    """Prompted layers inside the image tower (when its depth is known cheaply)."""
    out: List[str] = []
    from ._prompting import backbone_sizes

    sizes = backbone_sizes(ctx.model)
    depth = sizes.get("vision_layers") if sizes else None
    if depth is None:
        return out
    for key, default in zip(keys, defaults):
        layers = params.get(key, default) or []
        bad = [i for i in layers if not -depth <= int(i) < depth]
        if bad:
            out.append(method_problem(ctx, method, key, f"layers {bad} are outside the image tower ({depth} blocks)"))
    return out


def n_tasks_checks(ctx: CheckContext, params: Dict[str, Any], method: str) -> List[str]:
    n = params.get("n_tasks")
    bundle = ctx.bundle
    if n is not None and bundle is not None and n < bundle.n_experiences:
        return [method_problem(ctx, method, "n_tasks", f"got {n}, expected >= {bundle.n_experiences} (the benchmark's experiences)")]
    return []


def _check(ctx: CheckContext, params: Dict[str, Any]) -> List[str]:
    out = n_tasks_checks(ctx, params, "DualPrompt")
    out += layer_checks(ctx, params, "DualPrompt", ("g_layers", "e_layers"), ((0, 1), (2, 3, 4)))
    return out


@register_method("dualprompt", summary="DualPrompt: G-prompt + task-keyed E-prompts as attention prefixes (frozen CLIP)",
                 params_from=DualPrompt, model_kinds=("clip",), family="prompt",
                 reference="Wang et al., ECCV 2022", check=_check, distributed=True)
def _build(ctx: BuildContext, params: dict):
    return build_prompt_strategy(DualPrompt, ctx, params, per_experience='n_tasks')

__all__ = ["DualPromptPlugin", "DualPrompt"]
