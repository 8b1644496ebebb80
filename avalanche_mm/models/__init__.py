"""Models for multimodal continual learning.

- backbones: :class:`VisionLanguageBackbone` over open_clip
  (:class:`OpenCLIPBackbone`) and HF transformers CLIP
  (:class:`HFCLIPBackbone`), :func:`build_backbone`, the registered tiny
  configs ``"tiny-openclip"`` and ``"tiny-hfclip"``;
- zero-shot heads: :class:`ZeroShotClassifier`,
  :class:`MultiTaskZeroShotClassifier` (task-incremental, MTIL),
  :class:`RetrievalHead`, :class:`ContrastiveRetrievalLoss`;
- fusion: :class:`FusionModel` and per-modality encoders (MLP, CNN, conv/GRU
  sequences, text, the pretrained MiniLM);
- attachments: :func:`attach_adapters` (bottleneck adapters, mixtures of
  experts), :func:`attach_prompts` (visual prompts, CoOp text context),
  :func:`trainable_parameter_report`;
- frozen-feature cache: :class:`FrozenFeatureCache`,
  :class:`FeatureCachePlugin`, :class:`LinearProbe`.

See docs/models.md.
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
from .attach import (
    AdapterSet,
    BackboneAttachment,
    BottleneckAdapter,
    MixtureOfAdapters,
    ParameterReport,
    TextContextPrompts,
    VisualPrompts,
    attach_adapters,
    attach_prompts,
    trainable_parameter_report,
)
from .feature_cache import (
    FeatureCachePlugin,
    FrozenFeatureCache,
    LinearProbe,
    dataset_fingerprint,
    module_fingerprint,
)
from .fusion import (
    FUSIONS,
    ConvEncoder,
    FusionModel,
    MiniLMTextEncoder,
    MLPEncoder,
    SequenceEncoder,
    TextEncoder,
)
from .multitask import MultiHeadFusionClassifier, MultimodalMultiTaskModule
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
    "BackboneAttachment",
    "BottleneckAdapter",
    "MixtureOfAdapters",
    "AdapterSet",
    "attach_adapters",
    "VisualPrompts",
    "TextContextPrompts",
    "attach_prompts",
    "ParameterReport",
    "trainable_parameter_report",
    "FusionModel",
    "FUSIONS",
    "MLPEncoder",
    "ConvEncoder",
    "SequenceEncoder",
    "TextEncoder",
    "MiniLMTextEncoder",
    "FrozenFeatureCache",
    "FeatureCachePlugin",
    "LinearProbe",
    "module_fingerprint",
    "dataset_fingerprint",
    "MultimodalMultiTaskModule",
    "MultiHeadFusionClassifier",
]
