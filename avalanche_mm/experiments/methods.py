"""Kept for imports: the methods a config can name are registered by their own
files (``avalanche_mm/strategies/<method>.py``, :func:`~avalanche_mm.strategies.registry.register_method`)
in :data:`~avalanche_mm.strategies.registry.METHODS`."""

from __future__ import annotations

import avalanche_mm.strategies  # noqa: F401  (the method files register themselves)
from avalanche_mm.strategies.registry import METHODS, BuildContext, MethodSpec, list_methods

__all__ = ["BuildContext", "MethodSpec", "METHODS", "list_methods"]
