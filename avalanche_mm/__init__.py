"""avalanche-mm: multimodal continual learning for Avalanche.

Subpackages (imported lazily so that ``import avalanche_mm`` stays light):
``data``, ``benchmarks``, ``models``, ``strategies``, ``metrics``,
``experiments``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
