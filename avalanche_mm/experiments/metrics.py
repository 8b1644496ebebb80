"""Moved: :class:`DriftFromInitial` lives in :mod:`avalanche_mm.metrics.drift`."""

from avalanche_mm.metrics.drift import DriftFromInitial

__all__ = ["DriftFromInitial"]
