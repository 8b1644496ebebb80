"""Residual adapters beside the MLP of transformer blocks, optionally a mixture of experts.

With an adapter, a block computes ``x + MLP(LN x) + A(LN x)`` instead of
``x + MLP(LN x)`` (a parallel adapter, as in AdaptFormer and
MoE-Adapters4CL): a forward hook on the block's MLP adds ``A`` of the MLP's
own input. ``A`` is a bottleneck ``d -> r -> d`` with ReLU, dropout, a
scale, and a zero-initialised up-projection, so a fresh adapter leaves the
model's outputs unchanged. :class:`MixtureOfAdapters` routes each sequence
to the top-k of several such experts with (noisy) gating on its first
token (the CLS token of the image tower), one router per task if wanted.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.base import VisionLanguageBackbone
from ...distributed import ShardedDropout, sharded_dropout_mask, sharded_randn_like
from .base import BackboneAttachment, from_batch_first, resolve_layers, to_batch_first


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


class BottleneckAdapter(nn.Module):
    """``scale * up(dropout(relu(down(x))))`` with ``up`` initialised to zero.

    :param dim: input/output width.
    :param bottleneck: hidden width ``r``.
    :param scale: output multiplier (MoE-Adapters uses 0.1).
    :param dropout: dropout on the hidden activation.
    :param zero_init: zero-initialise the up-projection (the adapter starts
        as the identity residual: no change to the model's outputs).
    """

    def __init__(
        self,
        *,
        dim: int,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.0,
        zero_init: bool = True,
    ):
        super().__init__()
        _positive_int("dim", dim)
        _positive_int("bottleneck", bottleneck)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = ShardedDropout(float(dropout))
        self.scale = float(scale)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.down.bias)
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor, *, mask: Optional[Tensor] = None) -> Tensor:
        """:param mask: a scaled dropout keep-mask for the hidden activation, drawn by the
            caller (a mixture draws one per routed row); None: this adapter's own dropout."""
        h = F.relu(self.down(x))
        h = self.dropout(h) if mask is None else h * mask.to(h.dtype)
        return self.scale * self.up(h)


class MixtureOfAdapters(nn.Module):
    """Top-k mixture of bottleneck adapters with noisy gating (MoE-Adapters4CL).

    The router reads one vector per sequence (its first token, or the mean
    of its tokens) and picks ``top_k`` experts; their outputs are mixed with
    the softmax of the selected gate logits. During training Gaussian noise
    with a learned, input-dependent std is added to the gate logits
    (``noisy_gating``). ``num_routers > 1`` keeps one router per task:
    choose it with :attr:`active_router`. ``expert_usage[r, e]`` counts how
    often router ``r`` picked expert ``e`` in training (for the
    "activate-freeze" rule); ``last_gates`` holds the last ``[B, E]`` gates.

    :param dim: token width.
    :param num_experts: number of experts.
    :param top_k: experts per sequence.
    :param bottleneck: expert hidden width.
    :param scale: expert output multiplier.
    :param dropout: expert dropout.
    :param num_routers: routers (one per task).
    :param noisy_gating: add the learned gating noise while training.
    :param router_input: ``"first"`` (first token) or ``"mean"``.
    :param noise_at_eval: keep the gating noise in evaluation mode too (the
        released class-incremental code of MoE-Adapters4CL does, by accident
        of a flag read at construction); default False.

    ``expert_frozen[e]`` (a buffer, saved in the state dict) marks experts
    frozen by :meth:`freeze_experts` ("activate-freeze"); their parameters
    have ``requires_grad=False`` (:meth:`sync_frozen` re-applies it after a
    ``load_state_dict``).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_experts: int,
        top_k: int = 2,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.0,
        num_routers: int = 1,
        noisy_gating: bool = True,
        router_input: str = "first",
        noise_at_eval: bool = False,
    ):
        super().__init__()
        _positive_int("num_experts", num_experts)
        _positive_int("top_k", top_k)
        _positive_int("num_routers", num_routers)
        if top_k > num_experts:
            raise ValueError(f"top_k={top_k} exceeds num_experts={num_experts}.")
        if router_input not in ("first", "mean"):
            raise ValueError(f"router_input must be 'first' or 'mean', got {router_input!r}.")
        self.experts = nn.ModuleList(
            BottleneckAdapter(dim=dim, bottleneck=bottleneck, scale=scale, dropout=dropout)
            for _ in range(num_experts)
        )
        self.top_k = top_k
        self.noisy_gating = bool(noisy_gating)
        self.noise_at_eval = bool(noise_at_eval)
        self.router_input = router_input
        self.w_gate = nn.Parameter(torch.zeros(num_routers, dim, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(num_routers, dim, num_experts))
        self.register_buffer("expert_usage", torch.zeros(num_routers, num_experts))
        self.register_buffer("_active_router", torch.zeros((), dtype=torch.long))
        self.register_buffer("expert_frozen", torch.zeros(num_experts, dtype=torch.bool))
        self.last_gates: Optional[Tensor] = None

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def draws_per_row(self) -> bool:
        """Per-sample random draws while training (noisy gating, expert dropout): see
        :func:`avalanche_mm.distributed.draws_per_row`."""
        return self.noisy_gating or self.experts[0].dropout.p > 0

    @property
    def num_routers(self) -> int:
        return int(self.w_gate.shape[0])

    def freeze_experts(self, indices) -> None:
        """Freeze experts ``indices`` for good (buffer + ``requires_grad=False``)."""
        for e in indices:
            e = int(e)
            if not 0 <= e < self.num_experts:
                raise ValueError(f"expert index must be in 0..{self.num_experts - 1}, got {e}.")
            self.expert_frozen[e] = True
        self.sync_frozen()

    def sync_frozen(self) -> None:
        """Set ``requires_grad`` of every expert from ``expert_frozen``."""
        for e, expert in enumerate(self.experts):
            frozen = bool(self.expert_frozen[e])
            for p in expert.parameters():
                p.requires_grad_(not frozen)

    @property
    def active_router(self) -> int:
        return int(self._active_router)

    @active_router.setter
    def active_router(self, value: int) -> None:
        n = self.w_gate.shape[0]
        if not 0 <= int(value) < n:
            raise ValueError(f"active_router must be in 0..{n - 1}, got {value!r}.")
        self._active_router.fill_(int(value))

    def gates(self, route: Tensor) -> Tensor:
        """``[B, E]`` sparse gates (top-k softmax) for router inputs ``[B, D]``."""
        r = self.active_router
        route = route.float()
        clean = route @ self.w_gate[r].float()
        logits = clean
        if self.noisy_gating and (self.training or self.noise_at_eval):
            std = F.softplus(route @ self.w_noise[r].float()) + 1e-2
            # per-sample noise: under several processes the rows a 1-process run draws
            logits = clean + sharded_randn_like(clean) * std
        top_val, top_idx = logits.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(logits).scatter(-1, top_idx, F.softmax(top_val, dim=-1))
        if self.training:
            with torch.no_grad():
                self.expert_usage[r] += (gates > 0).float().sum(0)
        return gates

    def forward(self, x: Tensor, *, batch_first: bool = True) -> Tensor:
        """Mixed expert output, same shape and layout as ``x``."""
        xb = to_batch_first(x, batch_first)
        route = xb[:, 0] if self.router_input == "first" else xb.mean(dim=1)
        gates = self.gates(route)
        self.last_gates = gates
        masks, slot = None, None
        p = self.experts[0].dropout.p
        if self.training and p > 0:
            # one expert-dropout mask per (sample, selected expert), drawn for the whole minibatch
            # (sharded: under several processes each rank keeps its samples' 1-process masks);
            # a sample's k-th selected expert (in expert order) uses masks[:, k]
            hidden = self.experts[0].down.out_features
            masks = sharded_dropout_mask((xb.shape[0], self.top_k) + tuple(xb.shape[1:-1]) + (hidden,), p,
                                         dtype=xb.dtype, device=xb.device)
            slot = (gates > 0).long().cumsum(-1) - 1
        out = None
        for e, expert in enumerate(self.experts):
            rows = (gates[:, e] > 0).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            mask = None if masks is None else masks[rows, slot[rows, e]]
            y = expert(xb[rows], mask=mask) * gates[rows, e].view(-1, 1, 1).to(xb.dtype)
            if out is None:
                out = torch.zeros(xb.shape[:-1] + (y.shape[-1],), dtype=y.dtype, device=y.device)
            out = out.index_add(0, rows, y.to(out.dtype))
        if out is None:  # pragma: no cover - top_k >= 1 always selects an expert
            out = torch.zeros_like(xb)
        return from_batch_first(out, batch_first)


class AdapterSet(BackboneAttachment):
    """Adapters beside the MLP of selected blocks of one or both towers.

    Build and attach it with :func:`attach_adapters`. ``adapters`` maps
    ``"<tower>_<layer>"`` to a :class:`BottleneckAdapter` or
    :class:`MixtureOfAdapters`.

    :param backbone: the backbone whose block widths size the adapters.
    :param towers: towers to adapt.
    :param layers: block indices per tower (None: every block).
    :param num_experts: 0 for plain adapters, else experts per block.
    :param adapter_input: what the adapters (and routers) read:
        ``"normalized"`` - the MLP's own input ``LN(x)`` (AdaptFormer style);
        ``"residual"`` - the block's residual stream ``x`` before that layer
        norm, as MoE-Adapters4CL's code (``x + MLP(LN x) + sum g_i E_i(x)``).
    :param adapter_kwargs: forwarded to the adapter constructors.
    """

    def __init__(
        self,
        *,
        backbone: VisionLanguageBackbone,
        towers: Sequence[str] = ("vision", "text"),
        layers: Optional[Dict[str, Optional[Sequence[int]]]] = None,
        num_experts: int = 0,
        adapter_input: str = "normalized",
        **adapter_kwargs,
    ):
        super().__init__(towers=towers)
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 0:
            raise ValueError(f"num_experts must be an int >= 0, got {num_experts!r}.")
        if adapter_input not in ("normalized", "residual"):
            raise ValueError(
                f"adapter_input must be 'normalized' or 'residual', got {adapter_input!r}."
            )
        self.adapter_input = adapter_input
        self._stash: Dict[str, Tensor] = {}
        moe_only = {"num_experts", "top_k", "num_routers", "noisy_gating", "router_input", "noise_at_eval"}
        if num_experts == 0 and moe_only & set(adapter_kwargs):
            raise ValueError(
                f"{sorted(moe_only & set(adapter_kwargs))} apply to mixtures of experts only; "
                "set num_experts > 0."
            )
        layers = layers or {}
        self.adapters = nn.ModuleDict()
        self._targets = []
        for tower in self.towers:
            dim = backbone.width(tower)
            for i in resolve_layers(backbone, tower, layers.get(tower)):
                if num_experts:
                    mod = MixtureOfAdapters(dim=dim, num_experts=num_experts, **adapter_kwargs)
                else:
                    mod = BottleneckAdapter(dim=dim, **adapter_kwargs)
                self.adapters[f"{tower}_{i}"] = mod
                self._targets.append((tower, i))
        self.num_experts = num_experts

    @property
    def active_router(self) -> int:
        """The router selected in the mixtures (0 for plain adapters)."""
        for mod in self.adapters.values():
            return mod.active_router if isinstance(mod, MixtureOfAdapters) else 0
        return 0

    def set_active_router(self, index: int) -> None:
        """Select router ``index`` (e.g. the current task) in every mixture.

        Changing the router changes the text encoding, so the backbone's
        :meth:`~VisionLanguageBackbone.text_state_key` changes with it
        (cached class embeddings are re-encoded).
        """
        if not self.num_experts:
            raise ValueError("set_active_router needs mixtures of experts (num_experts > 0).")
        changed = False
        for mod in self.adapters.values():
            changed = changed or mod.active_router != int(index)
            mod.active_router = index
        b = self.backbone
        if changed and b is not None:
            b._attach_generation += 1

    def mixtures(self) -> Dict[str, MixtureOfAdapters]:
        """``{"<tower>_<layer>": MixtureOfAdapters}`` (empty for plain adapters)."""
        return {k: m for k, m in self.adapters.items() if isinstance(m, MixtureOfAdapters)}

    def _install(self, backbone: VisionLanguageBackbone):
        records = []
        for tower, i in self._targets:
            batch_first = backbone.tokens_batch_first(tower)
            mlp = backbone.block_mlp(tower, i)
            key = f"{tower}_{i}"
            if self.adapter_input == "residual":
                norm = _pre_mlp_norm(backbone, tower, i)
                records.append(self._hook(norm, "_norm_pre_hook", key, pre=True))
            records.append(self._hook(mlp, "_mlp_hook", key, batch_first))
        return records

    def _norm_pre_hook(self, key: str, module, inputs):
        """Forward pre-hook of the pre-MLP layer norm: keep the residual stream ``x``."""
        if self.active:
            self._stash[key] = inputs[0]
        return None

    def _mlp_hook(self, key: str, batch_first: bool, module, inputs, output):
        """Forward hook of an MLP: ``output + adapter(input)``."""
        if not self.active:
            return output
        adapter = self.adapters[key]
        if self.adapter_input == "residual":
            x = self._stash.pop(key, None)
            if x is None or x.shape != inputs[0].shape:
                raise RuntimeError(
                    f"adapter {key}: the residual stream was not captured before the MLP "
                    "(the block does not call its pre-MLP layer norm right before the MLP); "
                    "use adapter_input='normalized' with this backbone."
                )
        else:
            x = inputs[0]
        if isinstance(adapter, MixtureOfAdapters):
            delta = adapter(x, batch_first=batch_first)
        elif not batch_first and adapter.training and adapter.dropout.p > 0:
            # seq-first tokens: the dropout mask is drawn batch-first, so its rows are the samples
            # (sharded under several processes like every per-sample draw)
            xb = to_batch_first(x, False)
            mask = sharded_dropout_mask(tuple(xb.shape[:-1]) + (adapter.down.out_features,), adapter.dropout.p,
                                        dtype=x.dtype, device=x.device)
            delta = adapter(x, mask=from_batch_first(mask, False))
        else:
            delta = adapter(x)
        return output + delta.to(output.dtype)


def _pre_mlp_norm(backbone: VisionLanguageBackbone, tower: str, index: int) -> nn.Module:
    """The layer norm applied to the residual stream right before block ``index``'s MLP."""
    block = backbone.blocks(tower)[index]
    for name in ("ln_2", "layer_norm2", "norm2"):  # open_clip, HF CLIP, timm
        mod = getattr(block, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise NotImplementedError(
        f"{backbone.name}: block {index} of the {tower} tower ({type(block).__name__}) has no "
        "pre-MLP layer norm named ln_2/layer_norm2/norm2; adapter_input='residual' cannot find "
        "the residual stream. Use adapter_input='normalized'."
    )


def attach_adapters(
    backbone: VisionLanguageBackbone,
    *,
    name: str = "adapters",
    towers: Sequence[str] = ("vision", "text"),
    layers: Optional[Dict[str, Optional[Sequence[int]]]] = None,
    bottleneck: int = 64,
    scale: float = 0.1,
    dropout: float = 0.0,
    num_experts: int = 0,
    adapter_input: str = "normalized",
    freeze_base: bool = True,
    **moe_kwargs,
) -> AdapterSet:
    """Attach residual adapters (or mixtures of adapters) to a backbone.

    :param backbone: open_clip or HF backbone.
    :param name: key under ``backbone.attachments``.
    :param towers: ``("vision",)``, ``("text",)`` or both.
    :param layers: ``{"vision": [..], "text": [..]}`` block indices (None: all).
    :param bottleneck: adapter hidden width.
    :param scale: adapter output multiplier.
    :param dropout: adapter dropout.
    :param num_experts: 0: one adapter per block; >0: a
        :class:`MixtureOfAdapters` with that many experts per block
        (``top_k``, ``num_routers``, ``noisy_gating``, ``router_input``,
        ``noise_at_eval`` go in ``moe_kwargs``).
    :param adapter_input: ``"normalized"`` (the MLP's input ``LN x``) or
        ``"residual"`` (the residual stream ``x``, as MoE-Adapters4CL).
    :param freeze_base: freeze every pretrained parameter (default True).
    :return: the attached :class:`AdapterSet`.
    """
    adapters = AdapterSet(
        backbone=backbone,
        towers=towers,
        layers=layers,
        num_experts=num_experts,
        adapter_input=adapter_input,
        bottleneck=bottleneck,
        scale=scale,
        dropout=dropout,
        **moe_kwargs,
    )
    adapters.to(backbone.device)
    adapters.attach(backbone, name=name)
    if freeze_base:
        backbone.freeze()
    return adapters


__all__ = ["BottleneckAdapter", "MixtureOfAdapters", "AdapterSet", "attach_adapters"]
