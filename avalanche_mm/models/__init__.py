"""Models for multimodal continual learning.

- backbones: :class:`VisionLanguageBackbone` over open_clip and HF CLIP,
  :func:`build_backbone`, tiny registered configs;
"""

from .backbones import (
    CLIP_MEAN,
    CLIP_STD,
    TINY_HFCLIP_CONFIG,
    TINY_OPENCLIP_CONFIG,
    HFCLIPBackbone,
    ImagePreprocess,
    OpenCLIPBackbone,
    PretrainedWeightsNotFoundError,
    SampleTokenizer,
    VisionLanguageBackbone,
    build_backbone,
    list_backbones,
    register_backbone,
)
from .zero_shot import (
    DEFAULT_TEMPLATES,
    ClassEmbeddingCache,
    ContrastiveRetrievalLoss,
    MultiTaskZeroShotClassifier,
    RetrievalHead,
    ZeroShotClassifier,
    render_prompts,
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
    "build_backbone",
    "register_backbone",
    "list_backbones",
    "TINY_OPENCLIP_CONFIG",
    "TINY_HFCLIP_CONFIG",
    "DEFAULT_TEMPLATES",
    "render_prompts",
    "ClassEmbeddingCache",
    "ZeroShotClassifier",
    "MultiTaskZeroShotClassifier",
    "RetrievalHead",
    "ContrastiveRetrievalLoss",
]
