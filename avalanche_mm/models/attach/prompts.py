"""Learnable prompt tokens in the image and text token sequences.

- :class:`VisualPrompts` (VPT): ``num_tokens`` learnable tokens inserted
  after the CLS token at the input of the first image block (shallow), or
  fresh tokens at every block (deep: the previous block's outputs at those
  positions are replaced). They are removed again after the last block, so
  pooling and projection see the original sequence.
- :class:`TextContextPrompts` (CoOp, deep like MaPLe): texts are written
  with ``n_ctx`` placeholder words in front (``"X X X X a photo of a dog."``,
  see :meth:`TextContextPrompts.templates`); the token embeddings of the
  placeholders are replaced by learnable context vectors (and, when deep,
  the hidden states at those positions at every block). The sequence length
  and end-of-text position do not change, so both backends' pooling works
  unchanged. Texts without the placeholders are not affected.

Both act through hooks; the pretrained weights are untouched.
"""

from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..backbones.base import VisionLanguageBackbone
from .base import BackboneAttachment, hidden_of, replace_hidden


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def _replace_block_output(output, new: Tensor):
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    return new


def _block_output_tensor(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


class VisualPrompts(BackboneAttachment):
    """Visual prompt tokens (VPT-shallow or VPT-deep) in the image tower.

    :param backbone: the backbone (sizes the prompts; attach with :meth:`attach`).
    :param num_tokens: prompt tokens per layer.
    :param deep: new prompts at every block (True) or only at the first.
    :param init_std: std of the normal initialisation.
    """

    def __init__(
        self,
        *,
        backbone: VisionLanguageBackbone,
        num_tokens: int = 10,
        deep: bool = False,
        init_std: float = 0.02,
    ):
        super().__init__(towers=("vision",))
        _check_count("num_tokens", num_tokens)
        n_blocks = len(backbone.blocks("vision"))
        depth = n_blocks if deep else 1
        self.num_tokens = num_tokens
        self.deep = bool(deep)
        self.prompts = nn.Parameter(torch.randn(depth, num_tokens, backbone.width("vision")) * init_std)
        # sequence length after insertion: blocks whose input has it carry prompts
        # (a length test rather than a flag keeps gradient-checkpoint recomputation right)
        self._seq_len: Optional[int] = None

    def _install(self, backbone: VisionLanguageBackbone):
        blocks = backbone.blocks("vision")
        bf = backbone.tokens_batch_first("vision")
        records = [self._hook(blocks[0], "_insert_hook", bf, pre=True, with_kwargs=True)]
        if self.deep:
            for i in range(1, len(blocks)):
                records.append(
                    self._hook(blocks[i], "_replace_hook", i, bf, pre=True, with_kwargs=True)
                )
        records.append(self._hook(blocks[-1], "_strip_hook", bf))
        return records

    def _expand(self, layer: int, batch: int, like: Tensor, batch_first: bool) -> Tensor:
        p = self.prompts[layer].to(like.dtype)
        if batch_first:
            return p.unsqueeze(0).expand(batch, -1, -1)
        return p.unsqueeze(1).expand(-1, batch, -1)

    def _insert_hook(self, bf: bool, module, args, kwargs):
        """Pre-hook of the first block: insert the prompts after the CLS token."""
        if not self.active:
            return None
        x = hidden_of(args, kwargs)
        batch = x.shape[0] if bf else x.shape[1]
        p = self._expand(0, batch, x, bf)
        dim = 1 if bf else 0
        head, tail = x.narrow(dim, 0, 1), x.narrow(dim, 1, x.shape[dim] - 1)
        self._seq_len = x.shape[dim] + self.num_tokens
        return replace_hidden(args, kwargs, torch.cat([head, p, tail], dim=dim))

    def _has_prompts(self, x: Tensor, bf: bool) -> bool:
        return self._seq_len is not None and x.shape[1 if bf else 0] == self._seq_len

    def _replace_hook(self, layer: int, bf: bool, module, args, kwargs):
        """Pre-hook of a deeper block: fresh prompts at the prompt positions."""
        x = hidden_of(args, kwargs)
        if not self._has_prompts(x, bf):
            return None
        batch = x.shape[0] if bf else x.shape[1]
        p = self._expand(layer, batch, x, bf)
        dim = 1 if bf else 0
        n = self.num_tokens
        head = x.narrow(dim, 0, 1)
        tail = x.narrow(dim, 1 + n, x.shape[dim] - 1 - n)
        return replace_hidden(args, kwargs, torch.cat([head, p, tail], dim=dim))

    def _strip_hook(self, bf: bool, module, args, output):
        """Forward hook of the last block: remove the prompt positions."""
        x = _block_output_tensor(output)
        if not self._has_prompts(x, bf):
            return output
        dim = 1 if bf else 0
        n = self.num_tokens
        head = x.narrow(dim, 0, 1)
        tail = x.narrow(dim, 1 + n, x.shape[dim] - 1 - n)
        return _replace_block_output(output, torch.cat([head, tail], dim=dim))


class TextContextPrompts(BackboneAttachment):
    """Learnable text context (CoOp), shallow or deep.

    Write texts with :meth:`prepare` / :meth:`templates` so that they start
    with ``n_ctx`` placeholder tokens; their embeddings become the learned
    context. :meth:`context_override` swaps in other context vectors (per
    row if wanted) for the next forward passes, e.g. prompts selected from a
    bank per image (AttriCLIP).

    :param backbone: the backbone (sizes the context; attach with :meth:`attach`).
    :param n_ctx: number of context tokens.
    :param deep: replace the context positions at every text block too.
    :param init: ``None`` (normal, std ``init_std``) or a phrase of exactly
        ``n_ctx`` tokens whose embeddings initialise the context (CoOp's
        ``"a photo of a"``).
    :param init_std: std of the random initialisation.
    :param placeholder: the placeholder word; must be one token.
    """

    def __init__(
        self,
        *,
        backbone: VisionLanguageBackbone,
        n_ctx: int = 16,
        deep: bool = False,
        init: Optional[str] = None,
        init_std: float = 0.02,
        placeholder: str = "X",
    ):
        super().__init__(towers=("text",))
        _check_count("n_ctx", n_ctx)
        if n_ctx + 2 > backbone.context_length:
            raise ValueError(
                f"n_ctx={n_ctx} leaves no room for the class name in a context of "
                f"{backbone.context_length} tokens."
            )
        self.n_ctx = n_ctx
        self.deep = bool(deep)
        self.placeholder = placeholder
        self.placeholder_id = _single_token_id(backbone, placeholder)
        width = backbone.width("text")
        depth = len(backbone.blocks("text")) if deep else 1
        ctx = torch.randn(depth, n_ctx, width) * init_std
        if init is not None:
            ids = backbone.sample_tokenizer(init)[1:-1]
            if len(ids) != n_ctx:
                raise ValueError(
                    f"init phrase {init!r} has {len(ids)} tokens, n_ctx is {n_ctx}; they must match."
                )
            with torch.no_grad():
                emb = backbone.text_token_embedding.weight[ids.to(backbone.device)].detach().cpu()
            ctx[0] = emb.float()
        self.ctx = nn.Parameter(ctx)
        self._rows: Optional[Tensor] = None
        self._override: Optional[Tensor] = None

    # -- text preparation ----------------------------------------------------
    @property
    def prefix(self) -> str:
        return " ".join([self.placeholder] * self.n_ctx)

    def prepare(self, texts: Sequence[str]) -> List[str]:
        """Prefix each text with the placeholders: ``"X X ... X " + text``."""
        return [f"{self.prefix} {t}" for t in texts]

    def templates(self, base: Sequence[str] = ("{}.",)) -> List[str]:
        """Zero-shot templates with the learned context, e.g. ``["X X X X {}."]``."""
        return [f"{self.prefix} {b}" for b in base]

    @contextlib.contextmanager
    def context_override(self, ctx: Tensor):
        """Use ``ctx`` (``[n_ctx, D]``, or ``[N, n_ctx, D]`` one per prompted
        row in batch order) instead of the learned first-layer context."""
        if ctx.dim() not in (2, 3) or ctx.shape[-2:] != self.ctx.shape[-2:]:
            raise ValueError(
                f"context_override expects [n_ctx, D] = {tuple(self.ctx.shape[-2:])} or "
                f"[N, n_ctx, D], got {tuple(ctx.shape)}."
            )
        previous = self._override
        # a plain attribute even when ctx is an nn.Parameter (a bank's prompts):
        # nn.Module.__setattr__ would register it as a parameter of this module
        object.__setattr__(self, "_override", ctx)
        try:
            yield self
        finally:
            object.__setattr__(self, "_override", previous)

    # -- hooks -------------------------------------------------------------------
    def _install(self, backbone: VisionLanguageBackbone):
        records = [self._hook(backbone.text_token_embedding, "_embed_hook")]
        if self.deep:
            bf = backbone.tokens_batch_first("text")
            for i, block in enumerate(backbone.blocks("text")):
                if i > 0:
                    records.append(
                        self._hook(block, "_deep_hook", i, bf, pre=True, with_kwargs=True)
                    )
        return records

    def _embed_hook(self, module, inputs, output):
        """Forward hook of the token embedding: context at the placeholder positions."""
        n = self.n_ctx
        self._rows = None
        if not self.active:
            return output
        ids = inputs[0]
        if ids.dim() != 2 or ids.shape[1] < n + 1:
            return output
        rows = (ids[:, 1 : 1 + n] == self.placeholder_id).all(dim=1).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            return output
        self._rows = rows
        ctx = self._override if self._override is not None else self.ctx[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(rows.numel(), -1, -1)
        elif ctx.shape[0] != rows.numel():
            raise ValueError(
                f"context_override gave {ctx.shape[0]} contexts for {rows.numel()} prompted texts."
            )
        out = output.clone()
        out[rows, 1 : 1 + n] = ctx.to(out.dtype)
        return out

    def _deep_hook(self, layer: int, bf: bool, module, args, kwargs):
        """Pre-hook of a deeper text block: this layer's context at the same positions."""
        n = self.n_ctx
        rows = self._rows
        if rows is None:
            return None
        x = hidden_of(args, kwargs)
        new = x.clone()
        ctx = self.ctx[layer].to(x.dtype)
        if bf:
            new[rows, 1 : 1 + n] = ctx.unsqueeze(0).expand(rows.numel(), -1, -1)
        else:
            new[1 : 1 + n, rows] = ctx.unsqueeze(1).expand(-1, rows.numel(), -1)
        return replace_hidden(args, kwargs, new)


def _single_token_id(backbone: VisionLanguageBackbone, word: str) -> int:
    ids = backbone.sample_tokenizer(word)
    if len(ids) != 3:
        raise ValueError(
            f"placeholder {word!r} is {len(ids) - 2} tokens for {backbone.name}'s tokenizer; "
            "choose a word that is a single token (the default 'X' is)."
        )
    return int(ids[1])


def attach_prompts(
    backbone: VisionLanguageBackbone,
    *,
    name: str = "prompts",
    vision_tokens: int = 0,
    vision_deep: bool = False,
    text_context: int = 0,
    text_deep: bool = False,
    text_init: Optional[str] = None,
    init_std: float = 0.02,
    freeze_base: bool = True,
) -> dict:
    """Attach visual prompts and/or a CoOp text context to a backbone.

    :param backbone: open_clip or HF backbone.
    :param name: base key; attachments are ``name + "_vision"`` / ``"_text"``.
    :param vision_tokens: visual prompt tokens (0: none).
    :param vision_deep: VPT-deep instead of shallow.
    :param text_context: text context tokens (0: none).
    :param text_deep: deep text context.
    :param text_init: phrase initialising the text context.
    :param init_std: std of random initialisations.
    :param freeze_base: freeze every pretrained parameter (default True).
    :return: ``{"vision": VisualPrompts, "text": TextContextPrompts}`` (the
        ones created).
    """
    if not vision_tokens and not text_context:
        raise ValueError("attach_prompts: set vision_tokens and/or text_context to a positive int.")
    created = {}
    if vision_tokens:
        vp = VisualPrompts(
            backbone=backbone, num_tokens=vision_tokens, deep=vision_deep, init_std=init_std
        ).to(backbone.device)
        created["vision"] = vp.attach(backbone, name=f"{name}_vision")
    if text_context:
        tp = TextContextPrompts(
            backbone=backbone, n_ctx=text_context, deep=text_deep, init=text_init, init_std=init_std
        ).to(backbone.device)
        created["text"] = tp.attach(backbone, name=f"{name}_text")
    if freeze_base:
        backbone.freeze()
    return created


__all__ = ["VisualPrompts", "TextContextPrompts", "attach_prompts"]
