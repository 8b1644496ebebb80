"""Fusion classifier over per-modality encoders (audio-visual, video + sensors, ...).

``FusionModel(encoders={"audio": ..., "visual": ...}, num_classes=C,
fusion="concat")`` takes a :class:`~avalanche_mm.data.MultimodalBatch`
and returns fused logits ``[B, C]``. Missing modalities (``batch.present``
False) contribute nothing: their encoder is not run on those rows and
their features are zero / masked out of the fusion. Variable-length
modalities get their ``batch.lengths``.

Side channel (set on every forward, read by imbalance metrics, OGM-GE,
AV-CIL and other strategies):

- ``last_unimodal_logits[m]`` ``[B, C]``: what the fused head predicts from
  modality ``m`` alone, i.e. the fusion with only ``m`` present. For
  ``concat`` and ``sum`` the head's bias is split evenly over the
  modalities, so the unimodal logits add up exactly to the fused logits
  (OGM-GE's decomposition ``W_m h_m + b / M``).
- ``last_features[m]`` ``[B, D_m]``: encoder outputs (zeros where missing).
- ``last_present[m]`` ``BoolTensor[B]``.
- ``last_fusion_weights`` ``[B, M]`` (``gating``/``attention``; else None).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from ...distributed import ShardedDropout

FUSIONS = ("concat", "sum", "gating", "attention")


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype active for ``device_type``, or None (works on torch >= 2.1)."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4: no device-type argument
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


class FusionModel(nn.Module):
    """Per-modality encoders + a fusion layer + a linear classifier.

    :param encoders: modality name -> encoder module with an ``out_dim``
        attribute and ``forward(x, *, lengths=None) -> [B, out_dim]`` (see
        :mod:`avalanche_mm.models.fusion.encoders`).
    :param num_classes: number of classes.
    :param fusion: ``"concat"``, ``"sum"``, ``"gating"`` (softmax gates over
        the present modalities) or ``"attention"`` (a learned query attends
        over one token per present modality).
    :param fusion_dim: common width of the modality features for ``sum``,
        ``gating`` and ``attention`` (default: the largest encoder ``out_dim``).
    :param attention_heads: heads of the ``attention`` fusion.
    :param dropout: dropout on the fused representation.
    """

    def __init__(
        self,
        *,
        encoders: Mapping[str, nn.Module],
        num_classes: int,
        fusion: str = "concat",
        fusion_dim: Optional[int] = None,
        attention_heads: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        if not isinstance(encoders, Mapping) or not encoders:
            raise ValueError(
                "FusionModel needs encoders={modality: encoder, ...} with at least one modality."
            )
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
        dims = {}
        for m, enc in encoders.items():
            if not isinstance(enc, nn.Module) or not isinstance(getattr(enc, "out_dim", None), int):
                raise TypeError(
                    f"encoder for '{m}' must be an nn.Module with an int out_dim attribute, got "
                    f"{type(enc).__name__}."
                )
            dims[m] = enc.out_dim
        self.modalities: List[str] = list(encoders)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.fusion = fusion
        self.num_classes = num_classes
        self.dropout = ShardedDropout(dropout)  # per-sample masks: the 1-process ones under torchrun
        if fusion == "concat":
            self.projections = None
            self.fusion_dim = sum(dims.values())
        else:
            self.fusion_dim = int(fusion_dim or max(dims.values()))
            self.projections = nn.ModuleDict(
                {m: nn.Linear(d, self.fusion_dim) for m, d in dims.items()}
            )
        self._offsets = {}
        start = 0
        for m in self.modalities:
            self._offsets[m] = (start, start + dims[m])
            start += dims[m]
        if fusion == "gating":
            self.gate = nn.Linear(self.fusion_dim, 1)
        if fusion == "attention":
            if self.fusion_dim % attention_heads:
                raise ValueError(
                    f"fusion_dim={self.fusion_dim} must be divisible by attention_heads="
                    f"{attention_heads}."
                )
            self.query = nn.Parameter(torch.randn(1, 1, self.fusion_dim) * 0.02)
            self.modality_embedding = nn.Parameter(
                torch.randn(len(self.modalities), self.fusion_dim) * 0.02
            )
            self.attention = nn.MultiheadAttention(self.fusion_dim, attention_heads, batch_first=True)
        self.head = nn.Linear(self.fusion_dim, num_classes)
        self.last_unimodal_logits: Dict[str, Tensor] = {}
        self.last_features: Dict[str, Tensor] = {}
        self.last_present: Dict[str, Tensor] = {}
        self.last_fusion_weights: Optional[Tensor] = None

    # ------------------------------------------------------------------
    def encode(self, x) -> Dict[str, Tensor]:
        """Run every encoder on the rows where its modality is present.

        :return: modality -> ``[B, out_dim]`` features (zeros where missing);
            also sets ``last_features`` and ``last_present``.
        """
        if not isinstance(x, Mapping):
            raise TypeError(
                "FusionModel expects a multimodal batch (avalanche_mm.data.MultimodalBatch or a "
                f"dict modality -> tensor), got {type(x).__name__}."
            )
        absent = [m for m in self.modalities if m not in x]
        if absent:
            raise KeyError(
                f"FusionModel: the batch lacks modalities {absent} (it has {sorted(x.keys())}). "
                "Keep every modality in every sample and mark missing ones with None so the "
                "collate sets batch.present[m] = False."
            )
        present_masks = getattr(x, "present", {}) or {}
        lengths = getattr(x, "lengths", {}) or {}
        batch = x[self.modalities[0]].shape[0]
        feats, present = {}, {}
        for m in self.modalities:
            data = x[m]
            mask = present_masks.get(m)
            if mask is None:
                mask = torch.ones(batch, dtype=torch.bool, device=data.device)
            mask = mask.to(data.device).bool()
            enc = self.encoders[m]
            out = None
            if bool(mask.all()):
                lens = lengths.get(m)
                out = enc(data, lengths=lens)
            elif bool(mask.any()):
                rows = mask.nonzero(as_tuple=True)[0]
                lens = lengths.get(m)
                sub = enc(data[rows], lengths=lens.to(data.device)[rows] if lens is not None else None)
                out = sub.new_zeros((batch, enc.out_dim)).index_copy(0, rows, sub)
            else:
                p = next(enc.parameters(), None)
                dtype = _autocast_dtype(data.device.type) or (p.dtype if p is not None else torch.float32)
                out = torch.zeros(batch, enc.out_dim, device=data.device, dtype=dtype)
            feats[m], present[m] = out, mask
        self.last_features, self.last_present = feats, present
        return feats

    def _tokens(self, feats: Dict[str, Tensor]) -> Tensor:
        """``[B, M, fusion_dim]`` projected features (sum/gating/attention)."""
        return torch.stack([self.projections[m](feats[m]) for m in self.modalities], dim=1)

    def _fuse(self, feats: Dict[str, Tensor], present: Tensor) -> Tensor:
        """Fused representation ``[B, fusion_dim]``; ``present`` is ``[B, M]`` bool."""
        self.last_fusion_weights = None
        if self.fusion == "concat":
            parts = [feats[m] * present[:, i : i + 1].to(feats[m].dtype) for i, m in enumerate(self.modalities)]
            return torch.cat(parts, dim=1)
        tokens = self._tokens(feats)
        pmask = present.to(tokens.dtype).unsqueeze(-1)
        if self.fusion == "sum":
            return (tokens * pmask).sum(1)
        if self.fusion == "gating":
            scores = self.gate(tokens).squeeze(-1).float()
            scores = scores.masked_fill(~present, float("-inf"))
            weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # all-missing rows -> 0
            self.last_fusion_weights = weights
            return (tokens * weights.unsqueeze(-1).to(tokens.dtype)).sum(1)
        # attention
        tokens = tokens + self.modality_embedding.to(tokens.dtype).unsqueeze(0)
        any_present = present.any(1)
        key_mask = ~present
        key_mask[~any_present] = False  # avoid NaN on rows with nothing present
        query = self.query.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        out, weights = self.attention(query, tokens, tokens, key_padding_mask=key_mask)
        self.last_fusion_weights = weights.squeeze(1) * any_present.unsqueeze(1).to(weights.dtype)
        return out.squeeze(1) * any_present.unsqueeze(1).to(out.dtype)

    def forward(self, x) -> Tensor:
        feats = self.encode(x)
        present = torch.stack([self.last_present[m] for m in self.modalities], dim=1)
        logits = self.head(self.dropout(self._fuse(feats, present)))
        fused_weights = self.last_fusion_weights  # _unimodal_logits overwrites it
        self.last_unimodal_logits = self._unimodal_logits(feats, present)
        self.last_fusion_weights = fused_weights
        return logits

    def _unimodal_logits(self, feats: Dict[str, Tensor], present: Tensor) -> Dict[str, Tensor]:
        out = {}
        n = len(self.modalities)
        for i, m in enumerate(self.modalities):
            if self.fusion == "concat":
                lo, hi = self._offsets[m]
                w = self.head.weight[:, lo:hi]
                h = feats[m] * present[:, i : i + 1].to(feats[m].dtype)
                out[m] = h @ w.t().to(h.dtype) + self.head.bias.to(h.dtype) / n
            elif self.fusion == "sum":
                h = self.projections[m](feats[m]) * present[:, i : i + 1].to(feats[m].dtype)
                out[m] = h @ self.head.weight.t().to(h.dtype) + self.head.bias.to(h.dtype) / n
            else:
                only = torch.zeros_like(present)
                only[:, i] = present[:, i]
                out[m] = self.head(self._fuse(feats, only))
        return out


__all__ = ["FusionModel", "FUSIONS"]
