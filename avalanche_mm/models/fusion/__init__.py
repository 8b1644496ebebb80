"""Fusion networks for non-CLIP modality mixes (audio-visual, video + sensors, ...)."""

from .avcil import AVCILNet, build_avcil_model
from .encoders import (
    ConvEncoder,
    MLPEncoder,
    ResNet18Encoder,
    SequenceEncoder,
    TextEncoder,
    VideoEncoder,
    length_mask,
    masked_mean,
)
from .minilm import MiniLMTextEncoder, minilm_model_path
from .model import FUSIONS, FusionModel

__all__ = [
    "FusionModel",
    "AVCILNet",
    "build_avcil_model",
    "FUSIONS",
    "MLPEncoder",
    "ConvEncoder",
    "SequenceEncoder",
    "TextEncoder",
    "ResNet18Encoder",
    "VideoEncoder",
    "MiniLMTextEncoder",
    "minilm_model_path",
    "length_mask",
    "masked_mean",
]
