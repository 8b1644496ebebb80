"""Prompt pools selected per input from the frozen image feature (L2P, DualPrompt, CODA-Prompt).

Three pieces, shared by the prompt-pool methods of :mod:`avalanche_mm.strategies`:

- :func:`frozen_image_query`: the query of an image, the frozen backbone's
  L2-normalised image feature (attachments switched off, no gradient). The
  original methods query with the frozen ViT's pre-logits ``[CLS]`` token; on
  CLIP the projected image feature is the same token through a fixed linear map.
- :class:`VisionPromptInjector`: an attachment of the image tower that takes
  *per-row* prompts for the next forward pass (set by the caller from the
  query), as

  * ``prepend``: ``[B, n, D]`` tokens inserted after the ``[CLS]`` token at the
    input of the first block (prompt tuning, L2P) and removed again after the
    last block, so pooling sees the original sequence;
  * ``prefix``: per layer ``(P_k, P_v)`` of shape ``[B, L, D]``, concatenated to
    that layer's attention keys and values after their projection
    (prefix tuning, DualPrompt and CODA-Prompt, as in their released code).
    The attention of a prefixed layer is recomputed in a forward hook from the
    block's own projection weights (no fork of the backbone); the layer's
    original attention output is discarded, so a prefixed layer costs one
    extra attention pass.

  With nothing set the injector does nothing (the plain frozen backbone).
- The pools: :class:`PromptPool` (``M`` learnable ``(key, prompt)`` pairs, top-k
  by cosine similarity of query and keys; L2P's pool and DualPrompt's
  E-prompts) and :class:`CodaPromptPool` (CODA-Prompt's attention-weighted sum
  of prompt components, allocated per task, orthogonal initialisation and
  regularisation). Both hold one ``nn.Parameter`` per pool entry / task chunk
  so that entries that are not trained (other tasks' E-prompts, CODA's frozen
  components) get no gradient, weight decay or momentum.
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.base import VisionLanguageBackbone
from .base import BackboneAttachment, hidden_of, replace_hidden, resolve_layers


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def images_of(x, image_key: str = "image") -> Tensor:
    """The image tensor of a batch: ``x`` itself (a tensor) or ``x[image_key]``."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, Mapping) and image_key in x:
        return x[image_key]
    have = sorted(x.keys()) if isinstance(x, Mapping) else type(x).__name__
    raise KeyError(
        f"prompt methods need the raw images of a batch under '{image_key}' (the prompts act inside "
        f"the image tower); the batch has {have}. Cached image features cannot be prompted: turn "
        "the feature cache off for this method."
    )


@torch.no_grad()
def frozen_image_query(backbone: VisionLanguageBackbone, images: Tensor, *, disable: bool = True) -> Tensor:
    """``[B, E]`` L2-normalised image features of the frozen backbone (no gradient).

    :param disable: switch every attachment off while encoding (default). The
        prompt methods pass False after clearing their own prompts instead:
        toggling attachments invalidates the zero-shot heads' cached class
        embeddings (the text side is re-encoded on the next forward pass).
    """
    if not disable:
        return backbone.encode_image(images).float()
    with backbone.attachments_disabled():
        return backbone.encode_image(images).float()


def _attention_module(block: nn.Module) -> nn.Module:
    for name in ("attn", "self_attn"):
        m = getattr(block, name, None)
        if m is not None:
            return m
    raise TypeError(
        f"prefix prompts: the block {type(block).__name__} has no 'attn' / 'self_attn' attention "
        "module; this backbone is not supported by prefix tuning (use prompt tuning instead)."
    )


def prefixed_attention(module: nn.Module, x: Tensor, prefix_k: Tensor, prefix_v: Tensor) -> Tensor:
    """Self-attention of ``module`` over ``x`` (``[B, N, D]``) with key/value prefixes.

    ``k = [P_k; W_k x + b_k]``, ``v = [P_v; W_v x + b_v]`` (``P`` is ``[B, L, D]``,
    in the projected space, split into heads like the keys), queries
    ``W_q x + b_q``; returns the output projection ``[B, N, D]``. Supports
    ``nn.MultiheadAttention`` (open_clip) and modules with ``q_proj``,
    ``k_proj``, ``v_proj``, ``out_proj`` and ``num_heads`` (HF CLIP).
    """
    if isinstance(module, nn.MultiheadAttention):
        if module.in_proj_weight is None:
            raise TypeError("prefix prompts: nn.MultiheadAttention with separate q/k/v weights is not supported.")
        q, k, v = F.linear(x, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1)
        heads = module.num_heads
    elif all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj", "out_proj")):
        q, k, v = module.q_proj(x), module.k_proj(x), module.v_proj(x)
        heads = int(getattr(module, "num_heads", getattr(module, "num_attention_heads", 0)))
    else:
        raise TypeError(f"prefix prompts: unsupported attention module {type(module).__name__}.")
    b, n, d = q.shape
    hd = d // heads
    k = torch.cat([prefix_k.to(k.dtype), k], dim=1)
    v = torch.cat([prefix_v.to(v.dtype), v], dim=1)

    def split(t):
        return t.reshape(b, t.shape[1], heads, hd).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    out = out.transpose(1, 2).reshape(b, n, d)
    return module.out_proj(out)


class VisionPromptInjector(BackboneAttachment):
    """Per-row prompts in the image tower: prepended tokens and/or attention prefixes.

    Holds no parameters: the caller sets the prompts of the next forward pass
    with :meth:`set` (or the :meth:`using` context) and clears them with
    :meth:`clear`; gradients flow back to wherever the prompts came from.

    :param backbone: the backbone (sizes and layer checks; attach with :meth:`attach`).
    :param prefix_layers: blocks whose attention takes prefixes (None: none).
    """

    def __init__(self, *, backbone: VisionLanguageBackbone, prefix_layers: Optional[Sequence[int]] = None):
        super().__init__(towers=("vision",))
        self.prefix_layers: List[int] = resolve_layers(backbone, "vision", prefix_layers) if prefix_layers else []
        self.width = backbone.width("vision")
        self._prepend: Optional[Tensor] = None
        self._prefix: Dict[int, Tuple[Tensor, Tensor]] = {}
        self._seq_len: Optional[int] = None

    # -- state -------------------------------------------------------------
    def set(self, *, prepend: Optional[Tensor] = None, prefix: Optional[Mapping[int, Tuple[Tensor, Tensor]]] = None):
        """Prompts for the following forward passes.

        :param prepend: ``[B, n, D]`` tokens inserted after ``[CLS]``.
        :param prefix: ``{layer: (P_k, P_v)}`` with ``[B, L, D]`` each; layers
            must be among ``prefix_layers``.
        """
        if prepend is not None and (prepend.dim() != 3 or prepend.shape[-1] != self.width):
            raise ValueError(f"prepend prompts must be [B, n, {self.width}], got {tuple(prepend.shape)}.")
        prefix = dict(prefix or {})
        for layer, (pk, pv) in prefix.items():
            if layer not in self.prefix_layers:
                raise ValueError(f"prefix for layer {layer}, but the injector hooks layers {self.prefix_layers}.")
            if pk.dim() != 3 or pv.dim() != 3 or pk.shape[-1] != self.width or pv.shape[-1] != self.width:
                raise ValueError(
                    f"prefix of layer {layer} must be two [B, L, {self.width}] tensors, got "
                    f"{tuple(pk.shape)} and {tuple(pv.shape)}."
                )
        self._prepend = prepend
        self._prefix = prefix

    def clear(self) -> None:
        """No prompts (the frozen backbone) until the next :meth:`set`."""
        self._prepend = None
        self._prefix = {}

    @contextlib.contextmanager
    def using(self, *, prepend: Optional[Tensor] = None, prefix=None):
        self.set(prepend=prepend, prefix=prefix)
        try:
            yield self
        finally:
            self.clear()

    # -- hooks ---------------------------------------------------------------
    def _install(self, backbone: VisionLanguageBackbone):
        blocks = backbone.blocks("vision")
        bf = backbone.tokens_batch_first("vision")
        records = [
            self._hook(blocks[0], "_insert_hook", bf, pre=True, with_kwargs=True),
            self._hook(blocks[-1], "_strip_hook", bf),
        ]
        for i in self.prefix_layers:
            records.append(self._hook(_attention_module(blocks[i]), "_prefix_hook", i, with_kwargs=True))
        return records

    def _check_batch(self, p: Tensor, batch: int, what: str) -> None:
        if p.shape[0] != batch:
            raise ValueError(
                f"{what} prompts were set for {p.shape[0]} images but the image tower got {batch}; "
                "set the prompts for each batch (VisionPromptInjector.set) and clear them after."
            )

    def _insert_hook(self, bf: bool, module, args, kwargs):
        self._seq_len = None
        if not self.active or self._prepend is None:
            return None
        x = hidden_of(args, kwargs)
        dim = 1 if bf else 0
        batch = x.shape[0] if bf else x.shape[1]
        self._check_batch(self._prepend, batch, "prepend")
        p = self._prepend.to(x.dtype)
        if not bf:
            p = p.transpose(0, 1)
        head, tail = x.narrow(dim, 0, 1), x.narrow(dim, 1, x.shape[dim] - 1)
        self._seq_len = x.shape[dim] + p.shape[dim]
        return replace_hidden(args, kwargs, torch.cat([head, p, tail], dim=dim))

    def _strip_hook(self, bf: bool, module, args, output):
        x = output[0] if isinstance(output, tuple) else output
        dim = 1 if bf else 0
        if self._prepend is None or self._seq_len is None or x.shape[dim] != self._seq_len:
            return output
        n = self._prepend.shape[1]
        new = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 1 + n, x.shape[dim] - 1 - n)], dim=dim)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    def _prefix_hook(self, layer: int, module, args, kwargs, output):
        if not self.active or layer not in self._prefix:
            return output
        mask = kwargs.get("attn_mask", kwargs.get("attention_mask"))
        if mask is None and isinstance(module, nn.MultiheadAttention) and len(args) > 4:
            mask = args[4]
        if mask is not None:
            raise NotImplementedError("prefix prompts in an attention with a mask are not supported (image tower only).")
        x = args[0] if args else kwargs.get("query", kwargs.get("hidden_states"))
        bf = getattr(module, "batch_first", True) if isinstance(module, nn.MultiheadAttention) else True
        if not bf:
            x = x.transpose(0, 1)
        pk, pv = self._prefix[layer]
        self._check_batch(pk, x.shape[0], f"prefix (layer {layer})")
        out = prefixed_attention(module, x, pk, pv)
        if not bf:
            out = out.transpose(0, 1)
        if isinstance(output, tuple):
            return (out,) + (None,) * (len(output) - 1)
        return out


# ---------------------------------------------------------------------------
# pools
# ---------------------------------------------------------------------------
def _init_(t: Tensor, init: str, std: float = 0.02) -> Tensor:
    if init == "uniform":
        return nn.init.uniform_(t, -1.0, 1.0)
    if init == "normal":
        return nn.init.normal_(t, std=std)
    if init == "zeros":
        return nn.init.zeros_(t)
    raise ValueError(f"init must be 'uniform', 'normal' or 'zeros', got {init!r}.")


class PromptPool(nn.Module):
    """``M`` learnable (key, prompt) pairs; an input takes the prompts of its top-k keys.

    Prompt shape per entry: ``[layers, length, width]`` for prompt tuning or
    ``[layers, 2, length, width]`` for prefix tuning (key and value halves).
    Selection: the ``top_k`` keys of highest cosine similarity with the query.

    :param size: number of entries ``M``.
    :param length: tokens per prompt (per half for prefixes).
    :param width: token width (the image tower's).
    :param key_dim: query / key dimension.
    :param layers: layers a prompt spans (1 for shallow prompt tuning).
    :param prefix: prefix tuning (key/value halves) instead of prompt tokens.
    :param key_init: ``"uniform"`` (U(-1, 1), L2P's code), ``"normal"`` or ``"zeros"``.
    :param prompt_init: same choices, for the prompts.
    """

    def __init__(
        self,
        *,
        size: int,
        length: int,
        width: int,
        key_dim: int,
        layers: int = 1,
        prefix: bool = False,
        key_init: str = "uniform",
        prompt_init: str = "uniform",
    ):
        super().__init__()
        for name, value in (("size", size), ("length", length), ("width", width), ("key_dim", key_dim), ("layers", layers)):
            _positive(name, value)
        self.size, self.length, self.width, self.layers, self.prefix = size, length, width, layers, bool(prefix)
        shape = (layers, 2, length, width) if prefix else (layers, length, width)
        self.keys = nn.ParameterList([nn.Parameter(_init_(torch.empty(key_dim), key_init)) for _ in range(size)])
        self.prompts = nn.ParameterList([nn.Parameter(_init_(torch.empty(shape), prompt_init)) for _ in range(size)])

    def key_matrix(self) -> Tensor:
        return torch.stack(list(self.keys))

    def similarity(self, query: Tensor) -> Tensor:
        """``[B, M]`` cosine similarity of queries and keys."""
        return F.normalize(query.float(), dim=-1) @ F.normalize(self.key_matrix().float(), dim=-1).t()

    def select(self, query: Tensor, top_k: int) -> Tensor:
        """``[B, top_k]`` indices of the most similar keys (descending)."""
        if not 1 <= top_k <= self.size:
            raise ValueError(f"top_k must be in 1..{self.size} (the pool size), got {top_k}.")
        with torch.no_grad():
            return self.similarity(query).topk(top_k, dim=1).indices

    def matching_loss(self, query: Tensor, idx: Tensor) -> Tensor:
        """``mean_b sum_{i in idx_b} (1 - cos(q_b, k_i))`` (L2P's surrogate, pulls selected keys)."""
        keys = F.normalize(self.key_matrix().float(), dim=-1)[idx]  # [B, k, Dk]
        cos = (F.normalize(query.float(), dim=-1).unsqueeze(1) * keys).sum(-1)
        return (1.0 - cos).sum(1).mean()

    def gather(self, idx: Tensor) -> Tensor:
        """Prompts of ``idx`` (``[B, k]``): ``[B, k, *prompt_shape]``."""
        return torch.stack(list(self.prompts))[idx]

    def set_trainable(self, entries: Optional[Iterable[int]]) -> None:
        """Train only ``entries`` (None: all) of keys and prompts."""
        keep = set(range(self.size)) if entries is None else {int(e) for e in entries}
        for i in range(self.size):
            self.keys[i].requires_grad_(i in keep)
            self.prompts[i].requires_grad_(i in keep)


def _gram_schmidt_rows(new: Tensor, old: Optional[Tensor]) -> Tensor:
    """Rows of ``new`` made orthonormal to each other and to the rows of ``old`` (where possible)."""
    basis: List[Tensor] = [] if old is None else list(F.normalize(old, dim=-1))
    # orthonormalise the previous rows among themselves first
    ortho: List[Tensor] = []
    for v in basis:
        for u in ortho:
            v = v - (v @ u) * u
        if v.norm() > 1e-6:
            ortho.append(v / v.norm())
    out = []
    for v in new:
        w = v.clone()
        for u in ortho:
            w = w - (w @ u) * u
        if w.norm() > 1e-6 * max(1.0, v.norm().item()):
            w = w / w.norm()
            ortho.append(w)
        else:  # no room left in the space: keep a random unit vector
            w = F.normalize(v, dim=-1)
        out.append(w)
    return torch.stack(out)


class CodaPromptPool(nn.Module):
    """CODA-Prompt's decomposed prompts: per layer, ``M`` components ``(K_m, A_m, P_m)``.

    For a query ``q``: ``alpha_m = cos(q * A_m, K_m)`` and the prompt is
    ``sum_m alpha_m P_m`` (``[length, width]``, split into key and value prefix
    halves). Components are allocated in equal chunks per task: while task
    ``t`` trains, chunk ``t`` is trainable, earlier chunks are used but frozen,
    later chunks are not used. A new chunk is initialised orthogonal to the
    earlier ones (Gram-Schmidt, :meth:`start_task`);
    :meth:`orthogonality_penalty` is CODA's ``||X X^T - I||^2`` (mean) on keys,
    attentions and flattened prompts.

    :param n_tasks: number of tasks (chunks).
    :param size: total components ``M`` (a multiple of ``n_tasks``).
    :param length: prompt length (even: half keys, half values).
    :param width: token width.
    :param key_dim: query dimension.
    :param layers: number of prefixed layers.
    """

    def __init__(self, *, n_tasks: int, size: int, length: int, width: int, key_dim: int, layers: int):
        super().__init__()
        for name, value in (("n_tasks", n_tasks), ("size", size), ("length", length), ("width", width),
                            ("key_dim", key_dim), ("layers", layers)):
            _positive(name, value)
        if size % n_tasks:
            raise ValueError(f"pool size {size} must be a multiple of the number of tasks {n_tasks}.")
        if length % 2:
            raise ValueError(f"CODA prompt length must be even (half keys, half values), got {length}.")
        self.n_tasks, self.size, self.length, self.width, self.layers = n_tasks, size, length, width, layers
        self.per_task = size // n_tasks
        m = self.per_task
        self.K = nn.ParameterList([nn.Parameter(torch.empty(layers, m, key_dim)) for _ in range(n_tasks)])
        self.A = nn.ParameterList([nn.Parameter(torch.empty(layers, m, key_dim)) for _ in range(n_tasks)])
        self.P = nn.ParameterList([nn.Parameter(torch.empty(layers, m, length, width)) for _ in range(n_tasks)])
        self.register_buffer("current_task", torch.zeros((), dtype=torch.long))
        with torch.no_grad():
            for t in range(n_tasks):
                for plist in (self.K, self.A, self.P):
                    nn.init.uniform_(plist[t], 0.0, 1.0)
            self._orthogonalise(0)
        for t in range(n_tasks):  # only the first task's chunk trains until start_task()
            for plist in (self.K, self.A, self.P):
                plist[t].requires_grad_(t == 0)

    def _orthogonalise(self, task: int) -> None:
        with torch.no_grad():
            for plist in (self.K, self.A, self.P):
                for layer in range(self.layers):
                    new = plist[task][layer].reshape(self.per_task, -1)
                    old = (torch.cat([plist[s][layer].reshape(self.per_task, -1) for s in range(task)])
                           if task > 0 else None)
                    new.copy_(_gram_schmidt_rows(torch.randn_like(new), old))

    def start_task(self, task: int) -> None:
        """Make chunk ``task`` current: orthogonal re-initialisation (task > 0) and trainability."""
        if not 0 <= task < self.n_tasks:
            raise ValueError(f"task {task} is outside 0..{self.n_tasks - 1} (n_tasks={self.n_tasks}).")
        if task > 0 and task != int(self.current_task):
            self._orthogonalise(task)
        self.current_task.fill_(task)
        for t in range(self.n_tasks):
            for plist in (self.K, self.A, self.P):
                plist[t].requires_grad_(t == task)

    def weights(self, query: Tensor, *, upto: Optional[int] = None) -> Tensor:
        """``[layers, B, M']`` component weights ``cos(q * A_m, K_m)`` of chunks ``< upto``."""
        upto = int(self.current_task) + 1 if upto is None else upto
        K = torch.cat([self.K[t] for t in range(upto)], dim=1)  # [layers, M', Dk]
        A = torch.cat([self.A[t] for t in range(upto)], dim=1)
        q = query.float()
        aq = torch.einsum("bd,lkd->lbkd", q, A)
        return torch.einsum("lbkd,lkd->lbk", F.normalize(aq, dim=-1), F.normalize(K, dim=-1))

    def prompts(self, query: Tensor, *, upto: Optional[int] = None) -> Tensor:
        """``[layers, B, length, width]`` prompts ``sum_m alpha_m P_m``."""
        upto = int(self.current_task) + 1 if upto is None else upto
        P = torch.cat([self.P[t] for t in range(upto)], dim=1)  # [layers, M', L, D]
        return torch.einsum("lbk,lkrd->lbrd", self.weights(query, upto=upto), P)

    def orthogonality_penalty(self, *, upto: Optional[int] = None) -> Tensor:
        """``mean((X X^T - I)^2)`` summed over keys, attentions and flattened prompts, per layer."""
        upto = int(self.current_task) + 1 if upto is None else upto
        total = 0.0
        for plist in (self.K, self.A, self.P):
            X = torch.cat([plist[t] for t in range(upto)], dim=1)
            X = X.reshape(self.layers, X.shape[1], -1)
            eye = torch.eye(X.shape[1], device=X.device, dtype=X.dtype)
            total = total + ((X @ X.transpose(1, 2) - eye) ** 2).mean(dim=(1, 2)).sum()
        return total


__all__ = [
    "images_of",
    "frozen_image_query",
    "prefixed_attention",
    "VisionPromptInjector",
    "PromptPool",
    "CodaPromptPool",
]
