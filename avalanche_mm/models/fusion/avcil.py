"""The AV-CIL network (Pian et al., ICCV 2023): audio-guided attention over visual tokens.

Inputs are pre-extracted features, as in the paper: an audio vector ``[B, Da]``
(AudioMAE; ``[B, T, Da]`` is averaged over T) and visual tokens
``[B, T, S, Dv]`` (VideoMAE: T frames x S patches; ``[B, T*S, Dv]`` is
reshaped with ``frames``). The released model
(``model/audio_visual_model_incremental.py``):

- ``p_a = tanh(W_aa a)`` ``[B, Dv]``, ``p_v = tanh(W_av v)`` ``[B, T, S, Dv]``;
- spatial attention, *per channel*: ``A_s = softmax_S(p_v * p_a)``
  ``[B, T, S, Dv]`` (the ``einsum("ijkd,id->ijkd")`` of the code is an
  element-wise product, not a dot product);
- temporal attention: ``A_t = softmax_T(sum_S(A_s * p_v) * p_a)`` ``[B, T, Dv]``;
- pooled visual ``v' = sum_T A_t * sum_S A_s * v`` (the raw tokens);
- ``h_a = relu(W_a a)``, ``h_v = relu(W_v v')``, fused ``h = h_a + h_v``,
  logits ``W h + b``.

The class-incremental classifier is a fixed-capacity linear head whose not-yet
active classes are masked to ``-1e4`` (:meth:`AVCILNet.set_active_classes`):
the same function as the released ``incremental_classifier`` (which appends
freshly initialised rows for the new classes; :meth:`AVCILNet.reset_classes`
re-initialises the rows of arriving classes) with a state dict whose shapes
never change, so checkpoints resume. By default every class is active.

Side channel for the strategies and the imbalance metrics (set on every forward):
``last_audio_feature`` / ``last_visual_feature`` (``h_a``, ``h_v`` before
normalisation), ``last_spatial_attention``, ``last_temporal_attention``,
``last_unimodal_logits`` (``W h_a + b/2`` and ``W h_v + b/2``: they add up to
the fused logits), ``last_features``, ``last_present``. A missing modality
(``batch.present[m]`` False) contributes a zero feature; without audio the
attention is uniform (mean pooling).

``inputs="raw"`` (not in the paper) puts small learned encoders in front, for
data without pre-extracted features (the procedural world): images
``[C, H, W]`` become one frame of ``H'W'`` conv tokens, videos ``[C, F, H, W]``
F frames, spectrograms ``[F, L]`` a 1-D conv audio vector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Dict, Iterable, List, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche_mm.registry import Range

from .encoders import SequenceEncoder
from .registry import register_fusion_model

#: logit given to inactive (not yet seen) classes
MASK_VALUE = -1e4


class ConvTokens(nn.Module):
    """Small CNN turning images ``[B, C, H, W]`` (or videos ``[B, C, F, H, W]``) into
    visual tokens ``[B, T, S, D]`` (T = 1 or F frames, S = H'W' positions)."""

    def __init__(self, *, in_channels: int, out_dim: int, channels: Sequence[int] = (16,)):
        super().__init__()
        chans = [int(in_channels)] + [int(c) for c in channels]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
        layers.append(nn.Conv2d(chans[-1], out_dim, 1))
        self.net = nn.Sequential(*layers)
        self.in_channels, self.out_dim = int(in_channels), int(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(2)  # one frame
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ConvTokens expects images [B, {self.in_channels}, H, W] or videos "
                f"[B, {self.in_channels}, F, H, W], got {tuple(x.shape)}."
            )
        b, c, f, h, w = x.shape
        y = self.net(x.transpose(1, 2).reshape(b * f, c, h, w))  # [B*F, D, H', W']
        return y.flatten(2).transpose(1, 2).reshape(b, f, -1, self.out_dim)


class _Branch(nn.Module):
    """One modality's encoder: optional raw-input encoder + the projection ``W_m``."""

    def __init__(self, raw: Optional[nn.Module], in_dim: int, hidden: int):
        super().__init__()
        self.raw = raw
        self.proj = nn.Linear(in_dim, hidden)


class AVCILNet(nn.Module):
    """AV-CIL's audio-visual network (see module docstring).

    :param num_classes: capacity of the class-incremental head (all classes of the benchmark).
    :param audio_dim: audio feature size ``Da``.
    :param visual_dim: visual token size ``Dv``.
    :param hidden_dim: fused feature size (768 in the paper; default ``Dv``).
    :param frames: T, to reshape visual tokens given as ``[B, T*S, Dv]``.
    :param audio_key: the audio modality's name in the batch.
    :param visual_key: the visual modality's name in the batch.
    :param audio_encoder: optional module mapping the raw audio input to ``[B, Da]``.
    :param visual_encoder: optional module mapping the raw visual input to ``[B, T, S, Dv]``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        audio_dim: int,
        visual_dim: int,
        hidden_dim: Optional[int] = None,
        frames: int = 8,
        audio_key: str = "audio",
        visual_key: str = "video",
        audio_encoder: Optional[nn.Module] = None,
        visual_encoder: Optional[nn.Module] = None,
    ):
        super().__init__()
        for name, v in (("num_classes", num_classes), ("audio_dim", audio_dim), ("visual_dim", visual_dim), ("frames", frames)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"AVCILNet: {name} must be a positive int, got {v!r}.")
        hidden = int(hidden_dim or visual_dim)
        self.audio_key, self.visual_key = audio_key, visual_key
        self.modalities = [audio_key, visual_key]
        self.num_classes, self.frames = num_classes, frames
        self.audio_dim, self.visual_dim, self.hidden_dim = audio_dim, visual_dim, hidden
        self.encoders = nn.ModuleDict(
            {audio_key: _Branch(audio_encoder, audio_dim, hidden), visual_key: _Branch(visual_encoder, visual_dim, hidden)}
        )
        self.attn_audio_proj = nn.Linear(audio_dim, visual_dim)
        self.attn_visual_proj = nn.Linear(visual_dim, visual_dim)
        self.classifier = nn.Linear(hidden, num_classes)
        self.register_buffer("active", torch.ones(num_classes, dtype=torch.bool))
        self.last_unimodal_logits: Dict[str, Tensor] = {}
        self.last_features: Dict[str, Tensor] = {}
        self.last_present: Dict[str, Tensor] = {}
        self.last_audio_feature: Optional[Tensor] = None
        self.last_visual_feature: Optional[Tensor] = None
        self.last_spatial_attention: Optional[Tensor] = None
        self.last_temporal_attention: Optional[Tensor] = None

    # ------------------------------------------------------------------
    def clear_side_channel(self) -> None:
        """Forget the tensors of the last forward (before ``copy.deepcopy`` or pickling)."""
        self.last_unimodal_logits, self.last_features, self.last_present = {}, {}, {}
        self.last_audio_feature = self.last_visual_feature = None
        self.last_spatial_attention = self.last_temporal_attention = None

    def set_active_classes(self, classes: Optional[Iterable[int]]) -> None:
        """Only ``classes`` get logits (the others ``-1e4``); None activates every class."""
        with torch.no_grad():
            if classes is None:
                self.active.fill_(True)
                return
            idx = sorted(int(c) for c in classes)
            bad = [c for c in idx if not 0 <= c < self.num_classes]
            if bad:
                raise ValueError(f"AVCILNet: classes {bad} outside 0..{self.num_classes - 1}.")
            self.active.fill_(False)
            self.active[idx] = True

    def reset_classes(self, classes: Iterable[int]) -> None:
        """Give the classifier rows of ``classes`` a fresh initialisation (the default
        ``nn.Linear`` one), as the released ``incremental_classifier`` does for the classes
        a step adds: an inactive row is otherwise not fresh when its class arrives (an
        optimizer's weight decay keeps shrinking it while it is masked)."""
        idx = sorted(int(c) for c in classes)
        bad = [c for c in idx if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"AVCILNet: classes {bad} outside 0..{self.num_classes - 1}.")
        if not idx:
            return
        fresh = nn.Linear(self.hidden_dim, len(idx)).to(self.classifier.weight.device, self.classifier.weight.dtype)
        with torch.no_grad():
            self.classifier.weight[idx] = fresh.weight
            self.classifier.bias[idx] = fresh.bias

    def _visual_tokens(self, v: Tensor) -> Tensor:
        enc = self.encoders[self.visual_key].raw
        if enc is not None:
            v = enc(v)
        if v.dim() == 3:
            b, n, d = v.shape
            if n % self.frames:
                raise ValueError(
                    f"AVCILNet: {n} visual tokens cannot be split into frames={self.frames} frames; "
                    "give visual features [T, S, D] or set model.params.frames."
                )
            v = v.reshape(b, self.frames, n // self.frames, d)
        if v.dim() != 4 or v.shape[-1] != self.visual_dim:
            raise ValueError(
                f"AVCILNet expects visual tokens [B, T, S, {self.visual_dim}] (or [B, T*S, {self.visual_dim}]), "
                f"got {tuple(v.shape)}."
            )
        return v

    def _audio_vector(self, a: Tensor) -> Tensor:
        enc = self.encoders[self.audio_key].raw
        if enc is not None:
            a = enc(a)
        if a.dim() == 3:
            a = a.mean(1)
        if a.dim() != 2 or a.shape[-1] != self.audio_dim:
            raise ValueError(f"AVCILNet expects audio features [B, {self.audio_dim}], got {tuple(a.shape)}.")
        return a

    def attention(self, audio: Tensor, visual: Tensor):
        """``(spatial [B, T, S, Dv], temporal [B, T, Dv])`` attention maps of the released model."""
        pa = torch.tanh(self.attn_audio_proj(audio))  # [B, Dv]
        pv = torch.tanh(self.attn_visual_proj(visual))  # [B, T, S, Dv]
        spatial = torch.softmax(pv * pa[:, None, None, :], dim=2)
        pooled_proj = (spatial * pv).sum(2)  # [B, T, Dv]
        temporal = torch.softmax(pooled_proj * pa[:, None, :], dim=1)
        return spatial, temporal

    def forward(self, x) -> Tensor:
        if not isinstance(x, Mapping):
            raise TypeError(f"AVCILNet expects a multimodal batch (dict modality -> tensor), got {type(x).__name__}.")
        missing = [m for m in self.modalities if m not in x]
        if missing:
            raise KeyError(
                f"AVCILNet: the batch lacks {missing} (it has {sorted(x.keys())}); AV-CIL needs an audio "
                f"({self.audio_key!r}) and a visual ({self.visual_key!r}) input."
            )
        pres = getattr(x, "present", {}) or {}
        a_raw, v_raw = x[self.audio_key], x[self.visual_key]
        b = a_raw.shape[0]
        pa = pres.get(self.audio_key, torch.ones(b, dtype=torch.bool, device=a_raw.device)).to(a_raw.device).bool()
        pv = pres.get(self.visual_key, torch.ones(b, dtype=torch.bool, device=v_raw.device)).to(v_raw.device).bool()
        audio = self._audio_vector(a_raw) * pa[:, None].to(a_raw.dtype)
        visual = self._visual_tokens(v_raw) * pv[:, None, None, None].to(v_raw.dtype)
        spatial, temporal = self.attention(audio, visual)
        pooled = (temporal * (spatial * visual).sum(2)).sum(1)  # [B, Dv]
        h_a = F.relu(self.encoders[self.audio_key].proj(audio)) * pa[:, None].to(audio.dtype)
        h_v = F.relu(self.encoders[self.visual_key].proj(pooled)) * pv[:, None].to(pooled.dtype)
        logits = self.classifier(h_a + h_v)
        w, bias = self.classifier.weight, self.classifier.bias
        uni = {self.audio_key: h_a @ w.t() + bias / 2, self.visual_key: h_v @ w.t() + bias / 2}
        mask = ~self.active
        if bool(mask.any()):
            logits = logits.masked_fill(mask, MASK_VALUE)
            uni = {m: z.masked_fill(mask, MASK_VALUE) for m, z in uni.items()}
        self.last_audio_feature, self.last_visual_feature = h_a, h_v
        self.last_spatial_attention, self.last_temporal_attention = spatial, temporal
        self.last_unimodal_logits = uni
        self.last_features = {self.audio_key: h_a, self.visual_key: h_v}
        self.last_present = {self.audio_key: pa, self.visual_key: pv}
        return logits


def _visual_key(modalities: Sequence[str]) -> Optional[str]:
    for k in ("video", "visual", "image"):
        if k in modalities:
            return k
    return None


def build_avcil_model(specs: Mapping, num_classes: int, params: Mapping) -> AVCILNet:
    """An :class:`AVCILNet` for data with modality ``specs`` (name -> ``ModalitySpec``).

    ``params``: ``inputs`` (``"features"``: pre-extracted, the paper; ``"raw"``:
    small learned encoders), ``hidden`` (fused size; default Dv), ``frames``
    (T for ``[T*S, D]`` visual tokens, default 8), ``token_dim`` / ``audio_dim``
    / ``conv_channels`` (raw inputs).
    """
    known = {"inputs", "hidden", "frames", "token_dim", "audio_dim", "conv_channels"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"model.params: unknown keys {unknown} for model 'av-cil'; expected some of {sorted(known)}.")
    mods = list(specs)
    vkey = _visual_key(mods)
    if "audio" not in specs or vkey is None:
        raise ValueError(
            f"model 'av-cil' needs an 'audio' and a visual ('video', 'visual' or 'image') modality; the data has {mods}."
        )
    inputs = params.get("inputs", "features")
    a_shape, v_shape = tuple(specs["audio"].shape), tuple(specs[vkey].shape)
    if inputs == "features":
        problem = avcil_feature_problem(a_shape, v_shape)
        if problem:
            raise ValueError(f"model 'av-cil' (inputs: features): {problem}")
        da, dv = a_shape[-1], v_shape[-1]
        frames = int(params.get("frames", v_shape[0] if len(v_shape) == 3 else 8))
        return AVCILNet(num_classes=num_classes, audio_dim=da, visual_dim=dv, hidden_dim=params.get("hidden"), frames=frames, audio_key="audio", visual_key=vkey)
    if inputs != "raw":
        raise ValueError(f"model.params.inputs: got {inputs!r}, expected 'features' or 'raw'.")
    token_dim, audio_dim = int(params.get("token_dim", 32)), int(params.get("audio_dim", 32))
    if len(v_shape) not in (3, 4):
        raise ValueError(f"model 'av-cil' (inputs: raw): visual input {vkey!r} must be [C, H, W] or [C, F, H, W], got {list(v_shape)}.")
    if len(a_shape) not in (1, 2):
        raise ValueError(f"model 'av-cil' (inputs: raw): audio must be a waveform [L] or spectrogram [F, L], got {list(a_shape)}.")
    venc = ConvTokens(in_channels=v_shape[0], out_dim=token_dim, channels=tuple(params.get("conv_channels", (16,))))
    aenc = SequenceEncoder(in_channels=a_shape[0] if len(a_shape) == 2 else 1, out_dim=audio_dim, hidden=audio_dim)
    return AVCILNet(
        num_classes=num_classes, audio_dim=audio_dim, visual_dim=token_dim, hidden_dim=params.get("hidden"), frames=1,
        audio_key="audio", visual_key=vkey, audio_encoder=aenc, visual_encoder=venc,
    )


def avcil_feature_problem(audio_shape: Sequence[int], visual_shape: Sequence[int]) -> Optional[str]:
    """Why per-sample shapes are not AV-CIL's pre-extracted features (None when they are):
    audio ``[Da]`` (or ``[T, Da]``), visual tokens ``[T, S, Dv]`` or ``[N, Dv]``."""
    a, v = list(audio_shape), list(visual_shape)
    if len(a) not in (1, 2) or len(v) not in (2, 3):
        return (
            f"found audio {a} and visual {v}; AV-CIL needs pre-extracted features: audio [Da] "
            "(AudioMAE) and visual tokens [T, S, Dv] or [T*S, Dv] (VideoMAE), as the avcil-* "
            "benchmarks give; for raw inputs set model.params.inputs: raw (small learned encoders, not the paper)"
        )
    if len(v) == 3 and v[0] in (1, 3) and v[1] == v[2] and v[1] > 4:
        return (
            f"visual {v} looks like images [C, H, W], not pre-extracted tokens [T, S, Dv]; AV-CIL needs "
            "pre-extracted audio and visual features (or model.params.inputs: raw)"
        )
    return None


def _check_avcil(specs: Mapping, params: Mapping, key: str) -> List[str]:
    """What model ``av-cil`` needs from the data (``key`` is ``...model.params``)."""
    mods = list(specs)
    vkey = _visual_key(mods)
    model_key = key.rsplit(".", 1)[0]
    if "audio" not in specs or vkey is None:
        return [f"{model_key}.name: model 'av-cil' needs an 'audio' and a visual ('video', 'visual' or 'image') modality; the data has {mods}"]
    if params.get("inputs", "features") == "features":
        problem = avcil_feature_problem(specs["audio"].shape, specs[vkey].shape)
        if problem:
            return [f"{key}.inputs: AV-CIL's model 'av-cil' expects pre-extracted features: {problem}"]
    return []


@register_fusion_model("av-cil", check=_check_avcil)
def av_cil(
    *,
    specs: Mapping,
    num_classes: int,
    inputs: Literal["features", "raw"] = "features",
    hidden: Optional[Annotated[int, Range(ge=1)]] = None,
    frames: Optional[Annotated[int, Range(ge=1)]] = None,
    token_dim: Annotated[int, Range(ge=1)] = 32,
    audio_dim: Annotated[int, Range(ge=1)] = 32,
    conv_channels: List[int] = (16,),
) -> nn.Module:
    """AV-CIL's audio-guided attention network over pre-extracted audio and visual features.

    :param inputs: ``"features"`` (pre-extracted AudioMAE/VideoMAE features, the paper) or
        ``"raw"`` (small learned encoders in front: images/videos and spectrograms).
    :param hidden: fused feature size (default: the visual token size).
    :param frames: T, to reshape visual tokens given as ``[T*S, D]`` (default 8).
    :param token_dim: visual token size of the raw-input CNN.
    :param audio_dim: audio feature size of the raw-input encoder.
    :param conv_channels: channels of the raw-input CNN.
    """
    params = {"inputs": inputs, "token_dim": token_dim, "audio_dim": audio_dim, "conv_channels": list(conv_channels)}
    if hidden is not None:
        params["hidden"] = hidden
    if frames is not None:
        params["frames"] = frames
    return build_avcil_model(specs, num_classes, params)


__all__ = ["AVCILNet", "av_cil", "ConvTokens", "build_avcil_model", "avcil_feature_problem", "MASK_VALUE"]
