"""Adapters and prompts attached to a backbone's transformer blocks (no fork)."""

from .adapters import AdapterSet, BottleneckAdapter, MixtureOfAdapters, attach_adapters
from .base import BackboneAttachment
from .prompt_pool import CodaPromptPool, PromptPool, VisionPromptInjector, frozen_image_query
from .prompts import TextContextPrompts, VisualPrompts, attach_prompts
from .report import ParameterReport, trainable_parameter_report

__all__ = [
    "BackboneAttachment",
    "BottleneckAdapter",
    "MixtureOfAdapters",
    "AdapterSet",
    "attach_adapters",
    "VisualPrompts",
    "TextContextPrompts",
    "attach_prompts",
    "VisionPromptInjector",
    "PromptPool",
    "CodaPromptPool",
    "frozen_image_query",
    "ParameterReport",
    "trainable_parameter_report",
]
