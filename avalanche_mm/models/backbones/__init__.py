"""Vision-language backbones (open_clip, HF transformers) behind one interface."""

from .base import PretrainedWeightsNotFoundError, SampleTokenizer, VisionLanguageBackbone
from .hf_clip_backbone import HFCLIPBackbone
from .open_clip_backbone import OpenCLIPBackbone
from .preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocess
from .registry import (
    BACKBONES,
    weights_problem,
    TINY_HFCLIP_CONFIG,
    TINY_OPENCLIP_CONFIG,
    build_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "VisionLanguageBackbone",
    "OpenCLIPBackbone",
    "HFCLIPBackbone",
    "PretrainedWeightsNotFoundError",
    "SampleTokenizer",
    "ImagePreprocess",
    "CLIP_MEAN",
    "CLIP_STD",
    "BACKBONES",
    "weights_problem",
    "build_backbone",
    "register_backbone",
    "list_backbones",
    "TINY_OPENCLIP_CONFIG",
    "TINY_HFCLIP_CONFIG",
]
