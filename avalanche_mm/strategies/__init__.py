"""Multimodal strategies: the template mixin, drop-in twins of Avalanche's
stock strategies, and the MMCL methods (one module per method)."""

from .template import MultimodalTemplateMixin, is_multimodal_input
from .twins import *  # noqa: F401,F403
from .twins import __all__ as _twins_all
from .twins_advanced import *  # noqa: F401,F403
from .twins_advanced import __all__ as _twins_advanced_all

__all__ = ["MultimodalTemplateMixin", "is_multimodal_input"] + list(_twins_all) + list(_twins_advanced_all)
