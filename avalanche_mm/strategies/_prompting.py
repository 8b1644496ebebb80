"""What the prompt methods (L2P, DualPrompt, CODA-Prompt, S-liPrompts, AttriCLIP) share.

- :class:`PromptMethodPlugin`: the plugin skeleton. Before each forward pass
  (training and evaluation) it computes the query of the batch's images (the
  frozen image feature) and lets the method set its prompts
  (:meth:`~PromptMethodPlugin.prepare`); after the forward pass the prompts
  are cleared, so any other use of the backbone (zero-shot metrics, probes)
  sees the frozen model; an extra loss computed in ``prepare`` is added before
  the backward pass. Its state lives in the model (attachments on the
  backbone), so checkpoints and resume need nothing from the plugin.
- :class:`PromptStrategy`: :class:`~avalanche_mm.strategies.FineTune` whose
  model's backbone is frozen, with the method's plugin first. Methods that
  compute their own logits (S-liPrompts, AttriCLIP) set ``forward_fn``.
- helpers for the registrations' ``check``: the backbone's text context length
  and image sequence length read from the model section without loading weights.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from avalanche_mm.models.attach.prompt_pool import frozen_image_query, images_of
from avalanche_mm.models.backbones.base import VisionLanguageBackbone

from .finetune import FineTune, find_backbone


def frozen_backbone(model: nn.Module, method: str) -> VisionLanguageBackbone:
    """The model's CLIP backbone, frozen (every pretrained weight, logit scale included)."""
    try:
        backbone = find_backbone(model)
    except TypeError as err:
        raise TypeError(f"{method}: {err}") from err
    if not isinstance(backbone, VisionLanguageBackbone):
        raise TypeError(
            f"{method} attaches prompts to an avalanche_mm.models.VisionLanguageBackbone (open_clip or "
            f"HF CLIP), got {type(backbone).__name__}; a fusion model cannot serve it."
        )
    backbone.freeze()
    return backbone


class PromptMethodPlugin(SupervisedPlugin):
    """Skeleton of a prompt method's plugin (see the module docstring).

    Subclasses implement :meth:`prepare` and may implement
    :meth:`on_training_experience`.

    :param backbone: the frozen backbone carrying the method's attachments.
    :param image_key: batch key of the images.
    """

    def __init__(self, *, backbone: VisionLanguageBackbone, image_key: str = "image"):
        super().__init__()
        self.backbone = backbone
        self.image_key = image_key
        self.extra_loss: Optional[Tensor] = None
        self.last_query: Optional[Tensor] = None

    # the method's state is in the model; nothing to save here
    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        return None

    # -- to implement --------------------------------------------------------
    def clear(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self, strategy, query: Tensor, *, training: bool) -> Optional[Tensor]:  # pragma: no cover
        """Set the prompts for this batch; return an extra loss term (training) or None."""
        raise NotImplementedError

    def on_training_experience(self, strategy, experience_index: int) -> None:
        return None

    # -- callbacks -----------------------------------------------------------
    def query(self, strategy) -> Tensor:
        self.clear()
        images = images_of(strategy.mb_x, self.image_key)
        with torch.no_grad():
            return frozen_image_query(self.backbone, images, disable=False)

    def before_training_exp(self, strategy, **kwargs):
        self.on_training_experience(strategy, int(strategy.experience.current_experience))

    def before_forward(self, strategy, **kwargs):
        self.last_query = self.query(strategy)
        self.extra_loss = self.prepare(strategy, self.last_query, training=True)

    def before_eval_forward(self, strategy, **kwargs):
        self.last_query = self.query(strategy)
        self.prepare(strategy, self.last_query, training=False)
        self.extra_loss = None

    def after_forward(self, strategy, **kwargs):
        self.clear()

    def after_eval_forward(self, strategy, **kwargs):
        self.clear()

    def before_backward(self, strategy, **kwargs):
        if self.extra_loss is not None:
            strategy.loss = strategy.loss + self.extra_loss
            self.extra_loss = None


class PromptStrategy(FineTune):
    """FineTune over a frozen backbone with a prompt method's plugin.

    :param model: the CLIP classifier.
    :param optimizer: the optimizer (the prompts are added to it when
        Avalanche prepares the first experience).
    :param prompt_plugin: the method's plugin.
    :param forward_fn: ``(strategy) -> logits`` replacing the model's own
        forward pass (methods whose logits need per-input text features).
    """

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer, prompt_plugin: PromptMethodPlugin,
                 forward_fn: Optional[Callable[[Any], Tensor]] = None, plugins: Optional[List[Any]] = None, **kwargs):
        self.prompt_plugin = prompt_plugin
        self._forward_fn = forward_fn
        super().__init__(model=model, optimizer=optimizer, plugins=[prompt_plugin] + list(plugins or []), **kwargs)

    def forward(self):
        if self._forward_fn is not None:
            return self._forward_fn(self)
        return super().forward()


# ---------------------------------------------------------------------------
# check helpers (what the backbone allows, without loading weights)
# ---------------------------------------------------------------------------
_CHEAP = ("tiny-openclip", "tiny-hfclip", "demo-clip")


def backbone_sizes(model_cfg) -> Optional[Dict[str, int]]:
    """``{"context_length", "image_tokens", "vision_layers"}`` of a study's backbone when known cheaply, else None.

    Registered tiny/demo backbones are built (milliseconds); open_clip model
    names are read from open_clip's config files; other backbones (HF ids,
    local paths) are checked when the method is built.
    """
    name = str((model_cfg or {}).get("backbone") or "")
    if name not in _SIZES:
        _SIZES[name] = _backbone_sizes(name)
    return _SIZES[name]


_SIZES: Dict[str, Optional[Dict[str, int]]] = {}


def _backbone_sizes(name: str) -> Optional[Dict[str, int]]:
    if name in _CHEAP:
        from avalanche_mm.models.build import build_clip_backbone

        b = build_clip_backbone({"backbone": name}, seed=0)
        return {"context_length": int(b.context_length), "image_tokens": _image_tokens(b.image_size, b),
                "vision_layers": len(b.blocks("vision"))}
    try:
        import open_clip

        cfg = open_clip.get_model_config(name)
    except Exception:
        cfg = None
    if not cfg:
        return None
    vis = cfg.get("vision_cfg", {})
    size = vis.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    patch = vis.get("patch_size", 16)
    return {
        "context_length": int(cfg.get("text_cfg", {}).get("context_length", 77)),
        "image_tokens": int((size // patch) ** 2 + 1),
        "vision_layers": int(vis.get("layers", 12)) if isinstance(vis.get("layers", 12), int) else None,
    }


def _image_tokens(image_size, backbone) -> int:
    size = image_size[0] if isinstance(image_size, (list, tuple)) else int(image_size)
    model = getattr(backbone, "model", None)
    visual = getattr(model, "visual", None)
    patch = getattr(visual, "patch_size", None)
    if patch is None:  # HF
        cfg = getattr(getattr(model, "config", None), "vision_config", None)
        patch = getattr(cfg, "patch_size", 16)
    patch = patch[0] if isinstance(patch, (list, tuple)) else int(patch)
    return int((size // patch) ** 2 + 1)


def method_problem(ctx, method: str, key: str, message: str) -> str:
    """A check message naming the config key, the method and the model."""
    backbone = (ctx.model or {}).get("backbone", "?")
    return f"{ctx.key}.{key}: {method} on model {backbone!r} ({ctx.model_key or 'model'}): {message}"


def vit_b16_prompt_parameters(n_tasks: int = 10) -> Dict[str, Dict[str, int]]:
    """Parameter counts of the prompt methods at their default sizes on CLIP ViT-B/16.

    The backbone is open_clip's ViT-B-16 built on the meta device (shapes only,
    no memory, no weights); the methods' modules are built at ViT-B/16 sizes
    (image width 768, text width 512, embedding 512) with ``n_tasks`` tasks /
    domains. Returns ``{method: {"backbone", "trainable_per_task", "stored"}}``:
    parameters trained while one task trains, and kept over the whole stream.
    """
    import open_clip

    from avalanche_mm.models.attach.prompt_pool import CodaPromptPool, PromptPool

    from .attriclip import AttributeBank
    from .s_liprompts import SLiPromptBank

    with torch.device("meta"):
        clip = open_clip.CLIP(**open_clip.get_model_config("ViT-B-16"))
    total = sum(p.numel() for p in clip.parameters())

    def count(m):
        return sum(p.numel() for p in m.parameters() if p.requires_grad), sum(p.numel() for p in m.parameters())

    with torch.device("meta"):
        l2p = PromptPool(size=10, length=5, width=768, key_dim=512)
        dual = PromptPool(size=n_tasks, length=5, width=768, key_dim=512, layers=3, prefix=True)
        dual.set_trainable([0])
        g = 2 * 2 * 5 * 768  # G-prompt: 2 layers x (key, value) x 5 tokens
        slip = SLiPromptBank(n_domains=n_tasks, prompt_length=10, vision_width=768, n_ctx=16, text_width=512,
                             n_clusters=5, feature_dim=512)
        slip.set_trainable(0)
        attri = AttributeBank(bank_size=10, prompt_length=12, key_dim=512, text_width=512)
    coda = CodaPromptPool(n_tasks=n_tasks, size=100, length=8, width=768, key_dim=512, layers=5)
    rows = {"l2p": count(l2p), "dualprompt": tuple(c + g for c in count(dual)), "coda-prompt": count(coda),
            "s-liprompts": count(slip), "attriclip": count(attri)}
    return {k: {"backbone": total, "trainable_per_task": t, "stored": n} for k, (t, n) in rows.items()}




def build_prompt_strategy(cls, ctx, params: Dict[str, Any], *, per_experience: Optional[str] = None, **extra: Any):
    """The registry builder shared by the prompt methods.

    The template and schedule arguments are :class:`FineTune`'s (each method's constructor
    passes them on); ``per_experience`` names the parameter that defaults to the number of
    experiences (``n_tasks``, ``n_domains``); the optimizer is built after the strategy, over
    the prompts its plugin attached.
    """
    params = dict(params)
    if per_experience is not None and params.get(per_experience) is None:
        params[per_experience] = ctx.bundle.n_experiences
    strategy = cls(**ctx.common_kwargs(FineTune), **extra, **params)
    strategy.optimizer = ctx.optimizer()
    return strategy

__all__ = ["build_prompt_strategy", "vit_b16_prompt_parameters", "frozen_backbone", "PromptMethodPlugin", "PromptStrategy", "backbone_sizes", "method_problem"]
