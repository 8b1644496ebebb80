"""AttriCLIP (Wang et al., "AttriCLIP: A Non-Incremental Learner for Incremental Knowledge
Learning", CVPR 2023) on a frozen CLIP.

An attribute bank of ``bank_size`` (10) pairs ``(key k_i, text prompt P_i)``, each
prompt ``prompt_length`` (12) learnable word embeddings. For an image with
frozen feature ``f`` (L2-normalised), the ``top_k`` (3) keys of highest
similarity ``f . k_i`` are chosen; their prompts, concatenated, are written in
front of every class name in the text encoder (``[SOS] P_a P_b P_c <class>. [EOS]``),
so each image has its own class embeddings ``g_c(f)`` and logits
``tau * cos(f, g_c(f))``. The bank is shared by all tasks and trained on each
task (no replay, no per-task parameters). Loss (the released code)::

    CE + matching_weight * (1 - mean_{b, selected i} cos(f_b, k_i))
       + orthogonality_weight * mean_{i != j} |cos(t_i, t_j)|

with ``t_i`` the text feature of prompt ``P_i`` alone (``[SOS] P_i . [EOS]``),
over the whole bank. Defaults 0.7 and 0.3 (the paper and the authors' scripts,
``loss_main + 0.7*loss_k + 0.3*loss_m``; Mammoth's port uses 0.5 and 0.1).

Code vs paper: the selection uses the raw dot product with the (unnormalised)
keys, as the released code (``image_features @ text_key.t()``), while the
matching loss normalises them; keys and prompts are initialised N(0, 0.02).
Recipe of the code: SGD, lr 1e-3 x batch / 20, batch 16 (CIFAR-100: 32),
10 epochs per task, cosine schedule, ViT-L/14.

Cost: every image has its own text prompts, so a batch of B images over C
classes runs the text encoder on B x C sequences (and on the bank's prompts
once per training step for the orthogonality term).
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche_mm.models.attach.prompt_pool import frozen_image_query, images_of
from avalanche_mm.models.attach.prompts import TextContextPrompts
from avalanche_mm.registry import Range

from ._prompting import PromptMethodPlugin, PromptStrategy, backbone_sizes, frozen_backbone, method_problem, build_prompt_strategy
from .registry import BuildContext, CheckContext, register_method


# ---------------------------------------------------------------------------
# the two extra losses (pure functions)
# ---------------------------------------------------------------------------
def key_matching_loss(image_features: Tensor, selected_keys: Tensor) -> Tensor:
    """``1 - mean_{b,i} cos(f_b, k_{b,i})``; ``image_features`` ``[B, E]`` (normalised or not),
    ``selected_keys`` ``[B, k, E]``."""
    f = F.normalize(image_features.float(), dim=-1).unsqueeze(1)
    k = F.normalize(selected_keys.float(), dim=-1)
    return 1.0 - (f * k).sum(-1).mean()


def prompt_orthogonality_loss(prompt_text_features: Tensor) -> Tensor:
    """``mean_{i != j} |cos(t_i, t_j)|`` over ``[M, E]`` text features of the prompts."""
    t = F.normalize(prompt_text_features.float(), dim=-1)
    sim = t @ t.t()
    off = ~torch.eye(t.shape[0], dtype=torch.bool, device=t.device)
    return sim[off].abs().mean()


class AttributeBank(nn.Module):
    """``bank_size`` keys ``[E]`` and text prompts ``[prompt_length, D_text]``."""

    towers = ("text",)

    def __init__(self, *, bank_size: int, prompt_length: int, key_dim: int, text_width: int):
        super().__init__()
        self.keys = nn.Parameter(torch.randn(bank_size, key_dim) * 0.02)
        self.prompts = nn.Parameter(torch.randn(bank_size, prompt_length, text_width) * 0.02)


class AttriCLIPPlugin(PromptMethodPlugin):
    """Attribute bank selection, per-image text prompts and the two extra losses (module docstring).

    :param backbone: the frozen backbone.
    :param class_names: class names (index = class id).
    :param bank_size: number of (key, prompt) pairs.
    :param prompt_length: tokens per prompt.
    :param top_k: prompts selected per image.
    :param matching_weight: weight of the key-matching loss.
    :param orthogonality_weight: weight of the prompt orthogonality loss.
    :param image_key: batch key of the images.
    :param name: attachment name on the backbone.
    """

    def __init__(self, *, backbone, class_names, bank_size: int = 10, prompt_length: int = 12, top_k: int = 3,
                 matching_weight: float = 0.7, orthogonality_weight: float = 0.3, image_key: str = "image",
                 name: str = "attriclip"):
        super().__init__(backbone=backbone, image_key=image_key)
        if not 1 <= top_k <= bank_size:
            raise ValueError(f"AttriCLIP: top_k must be in 1..bank_size={bank_size}, got {top_k}.")
        if top_k * prompt_length + 3 > backbone.context_length:
            raise ValueError(
                f"AttriCLIP: top_k x prompt_length = {top_k * prompt_length} prompt tokens leave no room for "
                f"the class name in {backbone.name}'s text context of {backbone.context_length} tokens."
            )
        self.class_names = list(class_names)
        self.top_k = int(top_k)
        self.matching_weight = float(matching_weight)
        self.orthogonality_weight = float(orthogonality_weight)
        self.bank = AttributeBank(bank_size=bank_size, prompt_length=prompt_length, key_dim=backbone.embed_dim,
                                  text_width=backbone.width("text")).to(backbone.device)
        backbone.add_attachment(f"{name}_bank", self.bank)
        # two placeholder runs: top_k prompts + class name, and one prompt alone (orthogonality)
        self.text = TextContextPrompts(backbone=backbone, n_ctx=top_k * prompt_length).to(backbone.device)
        self.text.ctx.requires_grad_(False)
        self.text.attach(backbone, name=f"{name}_text")
        self.single = TextContextPrompts(backbone=backbone, n_ctx=prompt_length).to(backbone.device)
        self.single.ctx.requires_grad_(False)
        self.single.enabled = False
        self.single.attach(backbone, name=f"{name}_single")
        self._class_ids: Optional[Tensor] = None
        self._single_ids: Optional[Tensor] = None
        self.last_selection: Optional[Tensor] = None

    def clear(self) -> None:
        return None

    def class_token_ids(self) -> Tensor:
        if self._class_ids is None:
            self._class_ids = self.backbone.tokenize(self.text.prepare([f"{c}." for c in self.class_names]))
        return self._class_ids.to(self.backbone.device)

    def select(self, query: Tensor) -> Tensor:
        """``[B, top_k]`` keys of highest ``f . k`` (raw keys, as the released code)."""
        with torch.no_grad():
            return (query.float() @ self.bank.keys.float().t()).topk(self.top_k, dim=1).indices

    def class_text_features(self, idx: Tensor) -> Tensor:
        """``[B, C, E]``: class embeddings of each image with its selected prompts."""
        ids = self.class_token_ids()
        b, c = idx.shape[0], ids.shape[0]
        ctx = self.bank.prompts[idx].reshape(b, -1, self.bank.prompts.shape[-1])  # [B, k*L, D]
        ctx = ctx.unsqueeze(1).expand(b, c, -1, -1).reshape(b * c, ctx.shape[1], ctx.shape[2])
        with self.text.context_override(ctx):
            feats = self.backbone.encode_text(ids.repeat(b, 1)).float()
        return feats.view(b, c, -1)

    def prompt_text_features(self) -> Tensor:
        """``[M, E]`` text features of each prompt alone."""
        if self._single_ids is None:
            self._single_ids = self.backbone.tokenize(self.single.prepare(["."]))
        m = self.bank.prompts.shape[0]
        self.single.enabled = True
        try:
            with self.single.context_override(self.bank.prompts):
                return self.backbone.encode_text(self._single_ids.to(self.backbone.device).repeat(m, 1)).float()
        finally:
            self.single.enabled = False

    def logits(self, strategy) -> Tensor:
        model = strategy.model
        images = images_of(strategy.mb_x, self.image_key)
        f = frozen_image_query(self.backbone, images, disable=False)
        idx = self.select(f)
        self.last_selection = idx
        g = self.class_text_features(idx)
        scale = model.scale() if hasattr(model, "scale") else self.backbone.logit_scale_value()
        out = scale * (F.normalize(f, dim=-1).unsqueeze(1) * g).sum(-1)
        active = getattr(model, "active_classes", None)
        if active is not None:
            mask = torch.ones(out.shape[1], dtype=torch.bool, device=out.device)
            mask[active] = False
            out = out.masked_fill(mask, getattr(model, "mask_value", -1e4))
        if strategy.is_training:
            extra = 0.0
            if self.matching_weight > 0:
                extra = extra + self.matching_weight * key_matching_loss(f, self.bank.keys[idx])
            if self.orthogonality_weight > 0 and self.bank.prompts.shape[0] > 1:
                extra = extra + self.orthogonality_weight * prompt_orthogonality_loss(self.prompt_text_features())
            self.extra_loss = extra if isinstance(extra, Tensor) else None
        return out

    # the logits are computed by the strategy's forward (logits); nothing before it
    def before_forward(self, strategy, **kwargs):
        return None

    def before_eval_forward(self, strategy, **kwargs):
        return None


class AttriCLIP(PromptStrategy):
    """AttriCLIP on a frozen CLIP (see the module docstring).

    :param model: a CLIP classifier with ``class_names`` (e.g. :class:`~avalanche_mm.models.ZeroShotClassifier`).
    :param optimizer: the optimizer.
    :param bank_size: number of (key, prompt) pairs in the attribute bank.
    :param prompt_length: tokens per text prompt.
    :param top_k: prompts selected per image (at most bank_size).
    :param matching_weight: weight of the key-matching loss.
    :param orthogonality_weight: weight of the prompt orthogonality loss.
    :param image_key: batch key of the images.
    :param base_kwargs: :class:`~avalanche_mm.strategies.FineTune` arguments.
    """

    def __init__(self, *, model, optimizer,
                 bank_size: Annotated[int, Range(ge=1)] = 10,
                 prompt_length: Annotated[int, Range(ge=1)] = 12,
                 top_k: Annotated[int, Range(ge=1)] = 3,
                 matching_weight: Annotated[float, Range(ge=0.0)] = 0.7,
                 orthogonality_weight: Annotated[float, Range(ge=0.0)] = 0.3,
                 image_key: str = "image", **base_kwargs):
        names = getattr(model, "class_names", None)
        if not names:
            raise TypeError(f"AttriCLIP needs a CLIP classifier with class_names, got {type(model).__name__}.")
        backbone = frozen_backbone(model, "AttriCLIP")
        plugin = AttriCLIPPlugin(backbone=backbone, class_names=names, bank_size=bank_size,
                                 prompt_length=prompt_length, top_k=top_k, matching_weight=matching_weight,
                                 orthogonality_weight=orthogonality_weight, image_key=image_key)
        super().__init__(model=model, optimizer=optimizer, prompt_plugin=plugin, forward_fn=plugin.logits,
                         **base_kwargs)


def _check(ctx: CheckContext, params: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    size, top_k, length = params.get("bank_size", 10), params.get("top_k", 3), params.get("prompt_length", 12)
    if isinstance(size, int) and isinstance(top_k, int) and top_k > size:
        out.append(method_problem(ctx, "AttriCLIP", "top_k", f"got {top_k}, expected <= bank_size={size}"))
    sizes = backbone_sizes(ctx.model)
    if sizes and isinstance(top_k, int) and isinstance(length, int) and top_k * length + 3 > sizes["context_length"]:
        out.append(method_problem(
            ctx, "AttriCLIP", "prompt_length",
            f"top_k x prompt_length = {top_k * length} prompt tokens, but the text context holds "
            f"{sizes['context_length']} tokens (start, end and the class name need >= 3); expected "
            f"top_k x prompt_length <= {sizes['context_length'] - 3}"))
    return out


@register_method("attriclip", summary="AttriCLIP: attribute bank of (key, text prompt) pairs selected per image (frozen CLIP)",
                 params_from=AttriCLIP, model_kinds=("clip",), family="prompt",
                 reference="Wang et al., CVPR 2023", check=_check, distributed=True)
def _build(ctx: BuildContext, params: dict):
    return build_prompt_strategy(AttriCLIP, ctx, params)

__all__ = ["key_matching_loss", "prompt_orthogonality_loss", "AttributeBank", "AttriCLIPPlugin", "AttriCLIP"]
