"""Loaders for real multimodal datasets on disk (filled in by the loader modules)."""

__all__ = []
