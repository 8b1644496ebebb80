"""The fusion models a config can name (``model.kind: fusion``, ``model.name``).

A fusion-model factory takes the benchmark's modality specs and number of
classes, plus its own keyword parameters, which are its config parameters
(``model.params``; declared once in the signature, with ``Annotated``/``Range``
and ``Literal``). An optional ``check(specs, params, key)`` reports what the
model needs from the benchmark before anything is built (a vocabulary size for
token-id modalities). Other distributions add models through the entry-point
group ``avalanche_mm.fusion_models``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Dict, List, Literal, Mapping, Optional

from torch import nn

from avalanche_mm.registry import Range, Registry, params_from_signature
from avalanche_mm.schema import Opt

#: arguments every factory receives from the run (never config parameters)
FUSION_INPUTS = ("specs", "num_classes")


@dataclass
class FusionModelSpec:
    """A registered fusion model.

    :ivar name: the config name (``model.name``).
    :ivar factory: ``(*, specs, num_classes, **params) -> nn.Module``.
    :ivar summary: one line for ``avalanche-mm list models``.
    :ivar params: the config schema of ``model.params`` (from the signature).
    :ivar check: ``(specs, params, key) -> [problem, ...]`` (``key`` is ``...model.params``).
    """

    name: str
    factory: Callable[..., nn.Module]
    summary: str
    params: Dict[str, Opt]
    check: Optional[Callable[[Mapping[str, Any], Mapping[str, Any], str], List[str]]] = None

    def problems(self, specs: Optional[Mapping[str, Any]], params: Mapping[str, Any], key: str) -> List[str]:
        """Unknown, ill-typed or out-of-range parameters, then the model's own check
        (when ``specs``, the benchmark's modality specs, are known)."""
        errors: List[str] = []
        for k, v in params.items():
            if k not in self.params:
                from avalanche_mm.schema import _suggest

                errors.append(
                    f"{key}.{k}: unknown parameter of model {self.name!r}, expected one of "
                    + ", ".join(self.params) + _suggest(k, list(self.params))
                )
            else:
                self.params[k].validate(v, f"{key}.{k}", errors)
        if not errors and specs is not None and self.check is not None:
            errors.extend(self.check(specs, dict(params), key))
        return errors

    def build(self, *, specs: Mapping[str, Any], num_classes: int, params: Mapping[str, Any]) -> nn.Module:
        return self.factory(specs=specs, num_classes=num_classes, **dict(params))


#: every fusion model a config can name (entry-point group ``avalanche_mm.fusion_models``)
FUSION_MODELS: Registry = Registry("fusion model", group="avalanche_mm.fusion_models")


def register_fusion_model(name: str, *, summary: str = "", check=None):
    """Decorator registering a fusion-model factory ``(*, specs, num_classes, **params)``.

    :param name: the config name (``model.name``).
    :param summary: one line (default: the docstring's first line).
    :param check: ``(specs, params, key) -> [problem, ...]``.
    """

    def deco(factory):
        doc = (factory.__doc__ or "").strip().splitlines()
        spec = FusionModelSpec(
            name=name,
            factory=factory,
            summary=summary or (doc[0].strip() if doc else name),
            params=params_from_signature(factory, exclude=FUSION_INPUTS),
            check=check,
        )
        FUSION_MODELS.register(name, spec, source=factory.__module__, summary=spec.summary)
        return factory

    return deco


def _auto_encoder(name: str, spec, *, hidden: int, conv_channels, vocab_size: Optional[int], backbone: str = "small"):
    from .encoders import ConvEncoder, ResNet18Encoder, SequenceEncoder, TextEncoder, VideoEncoder

    shape = tuple(spec.shape)
    if not spec.dtype.is_floating_point:
        return TextEncoder(vocab_size=int(vocab_size), out_dim=hidden, embed_dim=hidden)

    def image_encoder(channels: int):
        if backbone == "resnet18":
            return ResNet18Encoder(in_channels=channels, out_dim=hidden)
        return ConvEncoder(in_channels=channels, out_dim=hidden, channels=tuple(conv_channels))

    if len(shape) == 4:  # video clips [C, F, H, W]: per-frame 2-D encoder + temporal mean
        return VideoEncoder(frame_encoder=image_encoder(int(shape[0])))
    if len(shape) == 3:
        return image_encoder(int(shape[0]))
    if len(shape) == 2 and backbone == "resnet18" and name == "audio":  # spectrogram [F, T] as a 1-channel image
        return ResNet18Encoder(in_channels=1, out_dim=hidden)
    if len(shape) == 2:
        return SequenceEncoder(in_channels=int(shape[0]), out_dim=hidden, hidden=hidden)
    return SequenceEncoder(in_channels=1, out_dim=hidden, hidden=hidden)


def _check_fusion(specs: Mapping[str, Any], params: Mapping[str, Any], key: str) -> List[str]:
    out = []
    for m, spec in specs.items():
        if not spec.dtype.is_floating_point and params.get("vocab_size") is None:
            out.append(f"{key}.vocab_size: missing, modality '{m}' holds token ids; give the vocabulary size of its tokenizer")
        elif spec.dtype.is_floating_point and len(tuple(spec.shape)) > 4:
            out.append(
                f"{key.rsplit('.', 1)[0]}.name: no automatic encoder for modality '{m}' of shape {tuple(spec.shape)} "
                "(it covers features/sequences [F] / [C, L], images [C, H, W] and video clips [C, F, H, W]); "
                "register a fusion model for it"
            )
    return out


@register_fusion_model("fusion", check=_check_fusion)
def fusion(
    *,
    specs: Mapping[str, Any],
    num_classes: int,
    fusion: Literal["concat", "sum", "gating", "attention"] = "concat",
    hidden: Annotated[int, Range(ge=1)] = 32,
    conv_channels: List[int] = (16, 32),
    vocab_size: Optional[Annotated[int, Range(ge=1)]] = None,
    dropout: Annotated[float, Range(ge=0.0, lt=1.0)] = 0.0,
    fusion_dim: Optional[Annotated[int, Range(ge=1)]] = None,
    backbone: Literal["small", "resnet18"] = "small",
) -> nn.Module:
    """FusionModel with one automatic encoder per modality, chosen from its shape.

    Images ``[C, H, W]``: a small CNN; video clips ``[C, F, H, W]``: the same CNN on
    every frame, averaged over frames; spectrograms ``[F, T]`` and sensors
    ``[C, L]``: a 1-D conv stack; token ids: a learned embedding. With
    ``backbone: resnet18`` (SAMM's backbone), images and video frames get a
    randomly initialised ResNet-18, and the ``audio`` spectrogram ``[F, T]`` a
    one-channel ResNet-18.

    :param fusion: how the modality features are fused.
    :param hidden: width of each encoder's output.
    :param conv_channels: channels of the image CNN's layers.
    :param vocab_size: vocabulary size of token-id modalities (required when there is one).
    :param dropout: dropout before the classifier.
    :param fusion_dim: common feature width for sum/gating/attention (default: the largest).
    :param backbone: ``"small"`` (small CNN / 1-D convs) or ``"resnet18"`` (ResNet-18 per
        image, video frame and audio spectrogram; 512 features, projected to ``hidden``
        when it differs).
    """
    from .model import FusionModel

    encoders = {
        m: _auto_encoder(m, s, hidden=hidden, conv_channels=conv_channels, vocab_size=vocab_size, backbone=backbone)
        for m, s in specs.items()
    }
    return FusionModel(encoders=encoders, num_classes=num_classes, fusion=fusion, fusion_dim=fusion_dim, dropout=float(dropout))


@register_fusion_model("toy-fusion")
def toy_fusion(
    *,
    specs: Mapping[str, Any],
    num_classes: int,
    vocab_size: Annotated[int, Range(ge=2)] = 32,
    hidden: Annotated[int, Range(ge=1)] = 32,
) -> nn.Module:
    """Late-fusion net of the toy stream (image, text, audio; one head per modality).

    :param vocab_size: vocabulary size of the text modality.
    :param hidden: width of each modality branch.
    """
    from avalanche_mm.benchmarks.toy import ToyFusionNet

    return ToyFusionNet(n_classes=num_classes, vocab_size=vocab_size, hidden=hidden)


__all__ = ["FUSION_MODELS", "FusionModelSpec", "register_fusion_model", "fusion", "toy_fusion"]
