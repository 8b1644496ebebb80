"""Per-modality encoders for fusion models.

Every encoder maps a batched modality tensor to ``[B, out_dim]`` features
and takes the true lengths of variable-length inputs (the data layer pads
along the last axis): ``forward(x, *, lengths=None)``. Padded positions
never influence the output.

- :class:`MLPEncoder`: pre-extracted features ``[B, F]`` or feature
  sequences ``[B, F, T]`` (masked mean over T).
- :class:`ConvEncoder`: small 2-D CNN for images ``[B, C, H, W]`` or
  spectrograms ``[B, F, L]``.
- :class:`SequenceEncoder`: 1-D conv or GRU for sensors ``[B, C, L]`` or
  waveforms ``[B, L]``.
- :class:`ResNet18Encoder`: torchvision's ResNet-18 (random init) for images
  ``[B, C, H, W]`` or one-channel spectrograms ``[B, F, L]`` (SAMM's backbone).
- :class:`VideoEncoder`: a per-frame 2-D encoder (one of the above) with
  temporal average pooling, for video clips ``[B, C, F, H, W]``.
- :class:`TextEncoder`: learned token embedding + masked mean or GRU for
  token ids ``[B, L]``.
- :class:`~avalanche_mm.models.fusion.minilm.MiniLMTextEncoder`: the real
  pretrained MiniLM sentence encoder (optional package).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...distributed import ShardedDropout


def _pos_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def length_mask(lengths: Optional[Tensor], size: int, batch: int, device) -> Tensor:
    """``BoolTensor[B, size]``: True at real positions (all True without lengths)."""
    if lengths is None:
        return torch.ones(batch, size, dtype=torch.bool, device=device)
    lengths = lengths.to(device).clamp(min=1, max=size)
    return torch.arange(size, device=device).unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x [B, D, L]`` over L where ``mask [B, L]`` is True."""
    m = mask.to(x.dtype).unsqueeze(1)
    return (x * m).sum(-1) / m.sum(-1).clamp(min=1.0)


class _Encoder(nn.Module):
    out_dim: int

    def _check_dims(self, x: Tensor, allowed: Sequence[int], what: str) -> None:
        if not isinstance(x, Tensor) or x.dim() not in allowed:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects {what}, got {got}.")

    def _with_channels(self, x: Tensor, dims: Sequence[int], what: str, hint: str = "") -> Tensor:
        """Validate ``x`` (``dims``: the allowed ranks, the lower one lacking the channel axis,
        which is then added at position 1) against ``self.in_channels``."""
        self._check_dims(x, dims, what)
        if x.dim() == min(dims):
            x = x.unsqueeze(1)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} was built for {self.in_channels} channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}{hint})."
            )
        return x

    def _image_like(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` or spectrograms ``[B, F, L]`` (given one channel)."""
        return self._with_channels(x, (3, 4), "images [B, C, H, W] or spectrograms [B, F, L]")


class MLPEncoder(_Encoder):
    """MLP over pre-extracted features.

    :param in_dim: feature size ``F``.
    :param out_dim: output size.
    :param hidden_dims: hidden layer sizes.
    :param dropout: dropout after each hidden layer.
    """

    def __init__(
        self, *, in_dim: int, out_dim: int, hidden_dims: Sequence[int] = (128,), dropout: float = 0.0
    ):
        super().__init__()
        dims = [_pos_int("in_dim", in_dim)] + [_pos_int("hidden_dims", h) for h in hidden_dims]
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(), ShardedDropout(dropout)]
        layers.append(nn.Linear(dims[-1], _pos_int("out_dim", out_dim)))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor, *, lengths: Optional[Tensor] = None) -> Tensor:
        self._check_dims(x, (2, 3), "features [B, F] or [B, F, T]")
        if x.shape[1] != self.in_dim:
            raise ValueError(
                f"MLPEncoder was built for {self.in_dim} features, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}; sequences are [B, F, T])."
            )
        if x.dim() == 3:
            x = masked_mean(x, length_mask(lengths, x.shape[-1], x.shape[0], x.device))
        return self.net(x)


class ConvEncoder(_Encoder):
    """Small CNN (conv-ReLU-maxpool blocks, masked global average pooling).

    :param in_channels: image channels (1 for spectrograms ``[B, F, L]``).
    :param out_dim: output size.
    :param channels: channels of the conv blocks (each halves H and W).
    :param kernel_size: conv kernel size.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_dim: int,
        channels: Sequence[int] = (16, 32),
        kernel_size: int = 3,
    ):
        super().__init__()
        chans = [_pos_int("in_channels", in_channels)] + [_pos_int("channels", c) for c in channels]
        self.blocks = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size, padding=kernel_size // 2)
            for a, b in zip(chans[:-1], chans[1:])
        )
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.proj = nn.Linear(chans[-1], _pos_int("out_dim", out_dim))
        self.in_channels, self.out_dim = in_channels, out_dim

    def forward(self, x: Tensor, *, lengths: Optional[Tensor] = None) -> Tensor:
        x = self._image_like(x)
        lens = None if lengths is None else lengths.to(x.device).clamp(min=1, max=x.shape[-1])
        h = x
        for conv in self.blocks:
            if lens is not None:  # zero the padding so it cannot leak into valid columns
                valid = length_mask(lens, h.shape[-1], h.shape[0], h.device)
                h = h * valid[:, None, None, :].to(h.dtype)
            h = self.pool(F.relu(conv(h)))
            if lens is not None:
                lens = torch.div(lens + 1, 2, rounding_mode="floor")
        if lens is None:
            pooled = h.mean(dim=(2, 3))
        else:
            pooled = masked_mean(h.mean(dim=2), length_mask(lens, h.shape[-1], h.shape[0], h.device))
        return self.proj(pooled)


class SequenceEncoder(_Encoder):
    """1-D conv stack or GRU over sequences ``[B, C, L]`` (or ``[B, L]``).

    :param in_channels: channels ``C`` (1 for waveforms ``[B, L]``).
    :param out_dim: output size.
    :param hidden: conv channels / GRU hidden size.
    :param kind: ``"conv"`` (masked mean of conv features) or ``"gru"``
        (last hidden state of a packed GRU).
    :param num_layers: conv layers or GRU layers.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_dim: int,
        hidden: int = 64,
        kind: str = "conv",
        num_layers: int = 2,
    ):
        super().__init__()
        if kind not in ("conv", "gru"):
            raise ValueError(f"SequenceEncoder kind must be 'conv' or 'gru', got {kind!r}.")
        _pos_int("in_channels", in_channels)
        _pos_int("hidden", hidden)
        _pos_int("num_layers", num_layers)
        self.kind = kind
        if kind == "conv":
            self.net = nn.ModuleList(
                nn.Conv1d(in_channels if i == 0 else hidden, hidden, 5, padding=2)
                for i in range(num_layers)
            )
        else:
            self.net = nn.GRU(in_channels, hidden, num_layers=num_layers, batch_first=True)
        self.proj = nn.Linear(hidden, _pos_int("out_dim", out_dim))
        self.in_channels, self.out_dim = in_channels, out_dim

    def forward(self, x: Tensor, *, lengths: Optional[Tensor] = None) -> Tensor:
        x = self._with_channels(x, (2, 3), "sequences [B, C, L] or waveforms [B, L]",
                                "; sequences are channel-first [B, C, L]")
        mask = length_mask(lengths, x.shape[-1], x.shape[0], x.device)
        if self.kind == "conv":
            h = x
            for conv in self.net:  # re-mask before every conv: padding never leaks in
                h = F.relu(conv(h * mask.unsqueeze(1).to(h.dtype)))
            return self.proj(masked_mean(h, mask))
        lens = mask.sum(1).cpu()
        # GRU kernels have no reduced-precision CPU autocast path: run them in fp32
        with torch.autocast(device_type=x.device.type, enabled=False):
            packed = nn.utils.rnn.pack_padded_sequence(
                x.transpose(1, 2).float(), lens, batch_first=True, enforce_sorted=False
            )
            _, h_n = self.net(packed)
        return self.proj(h_n[-1])


class ResNet18Encoder(_Encoder):
    """ResNet-18 (torchvision's architecture, random initialisation, no classifier) with
    global average pooling: 512 features, projected to ``out_dim`` when it differs.

    The backbone of SAMM's released code (NeurAI-Lab/MultiModal-CL,
    ``backbone/utils/av_backbone.py``: the same BasicBlock ResNet-18 at base width
    64; a one-channel first convolution for spectrograms ``[B, F, L]``).

    With ``lengths`` (spectrograms padded along L), padded columns are zeroed at the
    input and left out of the final pooling (the receptive fields of the last valid
    columns still see those zeros, as they would see zero padding).

    :param in_channels: input channels (3 for RGB frames, 1 for spectrograms).
    :param out_dim: output size (512: no projection).
    """

    FEATURES = 512

    def __init__(self, *, in_channels: int, out_dim: int = 512):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if _pos_int("in_channels", in_channels) != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.fc = nn.Identity()
        net.avgpool = nn.Identity()
        self.net = net
        out_dim = _pos_int("out_dim", out_dim)
        self.proj = nn.Identity() if out_dim == self.FEATURES else nn.Linear(self.FEATURES, out_dim)
        self.in_channels, self.out_dim = in_channels, out_dim

    def _maps(self, x: Tensor) -> Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))  # [B, 512, H', W']

    def forward(self, x: Tensor, *, lengths: Optional[Tensor] = None) -> Tensor:
        x = self._image_like(x)
        if lengths is None:
            return self.proj(self._maps(x).mean(dim=(2, 3)))
        lens = lengths.to(x.device).clamp(min=1, max=x.shape[-1])
        x = x * length_mask(lens, x.shape[-1], x.shape[0], x.device)[:, None, None, :].to(x.dtype)
        h = self._maps(x)
        out_lens = torch.ceil(lens.float() * h.shape[-1] / x.shape[-1]).long()
        return self.proj(masked_mean(h.mean(dim=2), length_mask(out_lens, h.shape[-1], h.shape[0], h.device)))


class VideoEncoder(_Encoder):
    """Video clips ``[B, C, F, H, W]``: a 2-D encoder on every frame, then the mean
    over the F frames (temporal average pooling).

    SAMM's released model runs its ResNet-18 on the ``B * F`` frames and average-pools
    the last feature maps over frames and positions at once, which equals the mean over
    frames of each frame's spatially pooled features (frames share one size); a frame
    encoder's final linear projection commutes with that mean.

    :param frame_encoder: an encoder of images ``[N, C, H, W]`` with ``out_dim``
        (:class:`ConvEncoder`, :class:`ResNet18Encoder`).
    """

    def __init__(self, *, frame_encoder: nn.Module):
        super().__init__()
        out_dim = getattr(frame_encoder, "out_dim", None)
        if not isinstance(frame_encoder, nn.Module) or not isinstance(out_dim, int):
            raise TypeError(
                f"VideoEncoder needs a frame encoder (nn.Module with an int out_dim), got {type(frame_encoder).__name__}."
            )
        self.frame_encoder = frame_encoder
        self.in_channels, self.out_dim = getattr(frame_encoder, "in_channels", None), out_dim

    def forward(self, x: Tensor, *, lengths: Optional[Tensor] = None) -> Tensor:
        self._check_dims(x, (5,), "video clips [B, C, F, H, W]")
        if lengths is not None:
            raise ValueError("VideoEncoder: clips have a fixed number of frames; got per-sample lengths.")
        b, c, f, h, w = x.shape
        if self.in_channels is not None and c != self.in_channels:
            raise ValueError(
                f"VideoEncoder was built for {self.in_channels}-channel frames, got {c} "
                f"(input shape {tuple(x.shape)}; clips are channel-first [B, C, F, H, W])."
            )
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        return self.frame_encoder(frames).reshape(b, f, -1).mean(1)


class TextEncoder(_Encoder):
    """Learned token embedding + masked mean (``"mean"``) or GRU (``"gru"``).

    :param vocab_size: number of token ids.
    :param out_dim: output size.
    :param embed_dim: embedding size.
    :param kind: ``"mean"`` or ``"gru"``.
    :param pad_id: padding id (its embedding is zero and never trained).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        out_dim: int,
        embed_dim: int = 64,
        kind: str = "mean",
        pad_id: int = 0,
    ):
        super().__init__()
        if kind not in ("mean", "gru"):
            raise ValueError(f"TextEncoder kind must be 'mean' or 'gru', got {kind!r}.")
        _pos_int("vocab_size", vocab_size)
        self.embedding = nn.Embedding(vocab_size, _pos_int("embed_dim", embed_dim), padding_idx=pad_id)
        self.kind = kind
        self.pad_id = pad_id
        self.gru = nn.GRU(embed_dim, embed_dim, batch_first=True) if kind == "gru" else None
        self.proj = nn.Linear(embed_dim, _pos_int("out_dim", out_dim))
        self.vocab_size, self.out_dim = vocab_size, out_dim

    def forward(self, x: Tensor, *, lengths: Optional[Tensor] = None) -> Tensor:
        self._check_dims(x, (2,), "token ids [B, L]")
        if x.is_floating_point():
            raise TypeError(f"TextEncoder expects integer token ids, got {x.dtype}.")
        if int(x.max()) >= self.vocab_size or int(x.min()) < 0:
            raise ValueError(
                f"TextEncoder: token ids must be in 0..{self.vocab_size - 1}, got range "
                f"{int(x.min())}..{int(x.max())}; size vocab_size to the tokenizer."
            )
        mask = length_mask(lengths, x.shape[1], x.shape[0], x.device)
        emb = self.embedding(x)  # [B, L, E]
        if self.kind == "mean":
            return self.proj(masked_mean(emb.transpose(1, 2), mask))
        with torch.autocast(device_type=x.device.type, enabled=False):
            packed = nn.utils.rnn.pack_padded_sequence(
                emb.float(), mask.sum(1).cpu(), batch_first=True, enforce_sorted=False
            )
            _, h_n = self.gru(packed)
        return self.proj(h_n[-1])


__all__ = [
    "MLPEncoder",
    "ConvEncoder",
    "SequenceEncoder",
    "TextEncoder",
    "ResNet18Encoder",
    "VideoEncoder",
    "length_mask",
    "masked_mean",
]
