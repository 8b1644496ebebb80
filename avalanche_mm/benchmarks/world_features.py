"""Frozen pre-extracted audio and visual features for the procedural world (AV-CIL's regime).

AV-CIL (Pian et al., ICCV 2023) and its released code learn over *frozen, pre-extracted*
features: AudioMAE audio vectors and VideoMAE visual tokens, from encoders pretrained on
other data. :class:`WorldFeatureExtractor` gives the procedural world the same regime:

1. it generates samples of the world's **reference** objects (attribute combinations
   disjoint from every benchmark's classes, :meth:`ProceduralWorld.combinations`), with
   the world's own noise;
2. it pretrains one small encoder per modality on them, supervised by the objects'
   attributes (size, colour, texture, shape: one linear head per family, summed
   cross-entropies), which transfer to the unseen task objects (new combinations of the
   same attribute values);
3. it freezes the encoders and maps a split's raw tensors to features:

   - visual (``image``): a small CNN with the layout of
     :class:`~avalanche_mm.models.fusion.avcil.ConvTokens`,
     tokens ``[T, S, Dv]`` (VideoMAE's layout): ``S = H'W'`` spatial tokens per frame, ``T = 1``
     frame, or ``T = frames`` independent renderings of the object (clips ``[C, T, H, W]``,
     :meth:`ProceduralWorld.classification_split` ``image_frames``), each frame encoded alone;
   - audio: two 1-D convolutions with the layout of the conv
     :class:`~avalanche_mm.models.fusion.encoders.SequenceEncoder` over the spectrogram's frames, a vector ``[Da]`` (AudioMAE's clip embedding).

The continual stream's classes and its train/valid/test samples are never seen by the
pretraining. Pretraining runs in a forked RNG (the caller's random state is untouched) and is
memoised per world and settings inside the process, so studies sharing a world pretrain once.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: the keys of ``demo-av``'s ``features`` parameter and their defaults
FEATURE_DEFAULTS: Dict[str, Any] = {
    "per_combination": 10,
    "epochs": 10,
    "batch_size": 64,
    "lr": 3.0e-3,
    "token_dim": 32,
    "audio_dim": 32,
    "conv_channels": [16],
    "frames": 1,
    "seed": 0,
}

_MEMO: Dict[str, "WorldFeatureExtractor"] = {}


def feature_settings(params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``params`` merged over :data:`FEATURE_DEFAULTS`, validated (unknown keys, ranges)."""
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise TypeError(f"features: expected a mapping of {sorted(FEATURE_DEFAULTS)}, got {type(params).__name__}.")
    unknown = sorted(set(params) - set(FEATURE_DEFAULTS))
    if unknown:
        raise ValueError(f"features: unknown keys {unknown}; expected some of {sorted(FEATURE_DEFAULTS)}.")
    out = {**FEATURE_DEFAULTS, **dict(params)}
    for k in ("per_combination", "epochs", "batch_size", "token_dim", "audio_dim", "frames"):
        v = out[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"features.{k}: expected a positive int, got {v!r}.")
    if isinstance(out["seed"], bool) or not isinstance(out["seed"], int) or out["seed"] < 0:
        raise ValueError(f"features.seed: expected an int >= 0, got {out['seed']!r}.")
    if not float(out["lr"]) > 0:
        raise ValueError(f"features.lr: expected a positive float, got {out['lr']!r}.")
    ch = out["conv_channels"]
    if not isinstance(ch, (list, tuple)) or not ch or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in ch):
        raise ValueError(f"features.conv_channels: expected a non-empty list of positive ints, got {ch!r}.")
    out["conv_channels"] = [int(c) for c in ch]
    out["lr"] = float(out["lr"])
    return out


class _FrameTokens(nn.Module):
    """The stand-in visual feature extractor (the role VideoMAE plays for AV-CIL): a small CNN,
    images ``[B, C, H, W]`` or clips ``[B, C, F, H, W]`` -> tokens ``[B, F, S, D]`` (S = H'W').

    The benchmark layer sits below the models, so it keeps its own extractor networks; they
    have the layout of the library's ``ConvTokens`` (``tests/benchmarks/test_world_features.py``
    checks the two agree), whose token layout AV-CIL's ``inputs: features`` expects."""

    def __init__(self, in_channels: int, out_dim: int, channels: Sequence[int]):
        super().__init__()
        widths = [int(in_channels), *(int(c) for c in channels)]
        stages = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            stages.extend((nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)))
        self.net = nn.Sequential(*stages, nn.Conv2d(widths[-1], int(out_dim), 1))
        self.out_dim = int(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        clips = x if x.dim() == 5 else x.unsqueeze(2)
        b, c, f, h, w = clips.shape
        maps = self.net(clips.transpose(1, 2).reshape(b * f, c, h, w))
        return maps.flatten(2).transpose(1, 2).reshape(b, f, -1, self.out_dim)


class _SpectrogramVector(nn.Module):
    """The stand-in audio feature extractor (AudioMAE's role): two 1-D convolutions over a
    spectrogram ``[B, F, L]``, mean over time, a projection -> ``[B, D]`` (the layout of the
    library's conv ``SequenceEncoder``)."""

    def __init__(self, in_channels: int, out_dim: int):
        super().__init__()
        d = int(out_dim)
        self.net = nn.ModuleList([nn.Conv1d(int(in_channels), d, 5, padding=2), nn.Conv1d(d, d, 5, padding=2)])
        self.proj = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.net:
            x = F.relu(conv(x))
        return self.proj(x.mean(-1))


class _AttributeNet(nn.Module):
    """An encoder with one linear attribute head per family (pretraining only)."""

    def __init__(self, encoder: nn.Module, dim: int, cardinalities: Sequence[int], pool: bool):
        super().__init__()
        self.encoder, self.pool = encoder, pool
        self.heads = nn.ModuleList(nn.Linear(dim, int(k)) for k in cardinalities)

    def forward(self, x: Tensor):
        z = self.encoder(x)
        if self.pool:  # visual tokens [B, T, S, D] -> [B, D]
            z = z.mean(dim=(1, 2))
        return [h(z) for h in self.heads]


class WorldFeatureExtractor:
    """Encoders pretrained on a world's reference objects, then frozen (see the module docstring).

    :param world: the :class:`~avalanche_mm.benchmarks.world.ProceduralWorld`.
    :param modalities: the modalities to encode (``image`` and/or ``audio``).
    :param settings: :func:`feature_settings` keys (``per_combination`` reference samples per
        object, ``epochs``, ``batch_size``, ``lr`` (Adam), ``token_dim`` (Dv), ``audio_dim`` (Da),
        ``conv_channels`` of the visual CNN, ``frames`` (T: renderings per sample, used by
        ``demo-av``; the pretraining sees single images), ``seed`` of the pretraining).
    """

    def __init__(self, world, *, modalities: Sequence[str] = ("image", "audio"), settings: Optional[Mapping[str, Any]] = None):
        bad = [m for m in modalities if m not in ("image", "audio")]
        if bad or not modalities:
            raise ValueError(f"WorldFeatureExtractor: modalities must be a non-empty subset of ['image', 'audio'], got {list(modalities)}.")
        if "audio" in modalities and world.audio_format != "spectrogram":
            raise ValueError(
                "WorldFeatureExtractor: audio features need the world's spectrogram audio "
                f"(audio_format 'spectrogram'), got {world.audio_format!r}."
            )
        self.settings = s = feature_settings(settings)
        self.modalities = tuple(modalities)
        self.reference_combinations = [tuple(c) for c in world.combinations("reference")]
        self.encoders: Dict[str, nn.Module] = {}
        self.pretrain_accuracy: Dict[str, float] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s["seed"])
            ref = world.reference_samples(per_combination=s["per_combination"], modalities=self.modalities, tag="features/pretrain")
            for m in self.modalities:
                x = ref.modalities[m].float()
                if m == "image":
                    enc = _FrameTokens(x.shape[1], s["token_dim"], s["conv_channels"])
                    net = _AttributeNet(enc, s["token_dim"], world.cardinalities, pool=True)
                else:
                    enc = _SpectrogramVector(x.shape[1], s["audio_dim"])
                    net = _AttributeNet(enc, s["audio_dim"], world.cardinalities, pool=False)
                self.pretrain_accuracy[m] = self._pretrain(net, x, ref.attributes)
                enc.eval()
                for p in enc.parameters():
                    p.requires_grad_(False)
                self.encoders[m] = enc

    def _pretrain(self, net: _AttributeNet, x: Tensor, attrs: Tensor) -> float:
        s = self.settings
        opt = torch.optim.Adam(net.parameters(), lr=s["lr"])
        n = len(x)
        net.train()
        for _ in range(s["epochs"]):
            perm = torch.randperm(n)
            for i in range(0, n, s["batch_size"]):
                idx = perm[i : i + s["batch_size"]]
                outs = net(x[idx])
                loss = sum(F.cross_entropy(o, attrs[idx, j]) for j, o in enumerate(outs))
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            outs = net(x)
            return float(torch.stack([(o.argmax(1) == attrs[:, j]).float().mean() for j, o in enumerate(outs)]).mean())

    @torch.no_grad()
    def encode(self, tensors: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """Raw modality tensors ``[N, ...]`` -> frozen features (visual ``[N, T, S, Dv]`` from
        images ``[N, C, H, W]`` (T = 1) or clips ``[N, C, T, H, W]``, audio ``[N, Da]``);
        modalities without an encoder pass through unchanged."""
        out = dict(tensors)
        for m, enc in self.encoders.items():
            if m not in out:
                raise KeyError(f"WorldFeatureExtractor.encode: no {m!r} tensor to encode (got {sorted(out)}).")
            x = out[m].float()
            out[m] = torch.cat([enc(x[i : i + 512]) for i in range(0, len(x), 512)]).contiguous()
        return out

    __call__ = encode


def world_feature_extractor(world_params: Mapping[str, Any], modalities: Sequence[str], settings: Optional[Mapping[str, Any]]) -> WorldFeatureExtractor:
    """The memoised :class:`WorldFeatureExtractor` of the world built from ``world_params``."""
    from .world import ProceduralWorld

    s = feature_settings(settings)
    key = json.dumps({"world": dict(world_params), "modalities": list(modalities), "settings": s}, sort_keys=True, default=str)
    if key not in _MEMO:
        _MEMO[key] = WorldFeatureExtractor(ProceduralWorld(**dict(world_params)), modalities=modalities, settings=s)
    return _MEMO[key]


__all__ = ["WorldFeatureExtractor", "world_feature_extractor", "feature_settings", "FEATURE_DEFAULTS"]
