"""What a config can name, described from the registries (one source for
``avalanche-mm list`` and the documentation's tables).

:func:`describe` returns one plain dict per entry of a kind::

    {"name", "summary", "family", "params": [{"name", "kind", "default", "expected", "help"}],
     "needs_data", "needs_weights", "source", "doc"}

for ``kind`` in :data:`KINDS` (``methods``, ``benchmarks``, ``models``,
``metrics``, ``loggers``). Nothing here is hand-kept: summaries, parameters and
documentation come from each entry's registration, signature and docstrings.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Mapping, Optional

from avalanche_mm.schema import REQUIRED, Opt

KINDS = ("methods", "benchmarks", "models", "metrics", "loggers")


def _param_rows(params: Mapping[str, Opt]) -> List[Dict[str, Any]]:
    rows = []
    for name, opt in params.items():
        default = "required" if opt.default is REQUIRED else opt.default
        if isinstance(default, tuple):
            default = list(default)
        rows.append({"name": name, "kind": opt.kind, "default": default, "expected": opt.expected(), "help": opt.help})
    return rows


def _doc(obj: Any) -> str:
    return inspect.getdoc(obj) or "" if obj is not None else ""


def _methods() -> List[Dict[str, Any]]:
    import avalanche_mm.strategies  # noqa: F401  (the method files register themselves)
    from avalanche_mm.strategies.registry import METHODS

    out = []
    for e in METHODS.entries():
        spec = e.obj
        doc = _doc(spec.strategy) or spec.doc
        out.append({
            "name": e.name,
            "summary": spec.summary,
            "family": spec.family,
            "params": _param_rows(spec.params),
            "needs_data": False,
            "needs_weights": False,
            "source": e.source,
            "doc": doc,
            "model_kinds": list(spec.model_kinds),
            "reference": spec.reference,
            "trains": spec.trains,
            "distributed": bool(getattr(spec, "distributed", False)),
        })
    return out


def _benchmarks() -> List[Dict[str, Any]]:
    import avalanche_mm.benchmarks  # noqa: F401  (registers the built-in benchmarks)
    from avalanche_mm.benchmarks.registry import BENCHMARKS

    out = []
    for e in BENCHMARKS.entries():
        entry = e.obj
        out.append({
            "name": e.name,
            "summary": entry.description,
            "family": "real data" if entry.needs_data else "offline",
            "params": _param_rows(entry.params),
            "needs_data": entry.needs_data,
            "needs_weights": False,
            "source": e.source,
            "doc": _doc(entry.factory),
            "reference_split": entry.reference,
        })
    return out


def _models() -> List[Dict[str, Any]]:
    from avalanche_mm.models.backbones.registry import BACKBONES
    from avalanche_mm.models.fusion.registry import FUSION_MODELS

    out = []
    for e in BACKBONES.entries():
        out.append({
            "name": e.name,
            "summary": e.meta.get("summary", ""),
            "family": "clip backbone (model.backbone)",
            "params": [],
            "needs_data": False,
            "needs_weights": bool(e.meta.get("needs_weights", False)),
            "source": e.source,
            "doc": e.meta.get("summary", "") + "\n\nRandomly initialised unless model.pretrained names a checkpoint file.",
        })
    out.append({
        "name": "<open_clip name> / hf:<id> / folder",
        "summary": "any open_clip model (model.pretrained: a tag such as 'openai') or HF CLIP model",
        "family": "clip backbone (model.backbone)",
        "params": [],
        "needs_data": False,
        "needs_weights": True,
        "source": "avalanche_mm.models.backbones.registry",
        "doc": _doc(__import__("avalanche_mm.models.backbones.registry", fromlist=["x"])),
    })
    for e in FUSION_MODELS.entries():
        spec = e.obj
        out.append({
            "name": e.name,
            "summary": spec.summary,
            "family": "fusion model (model.name)",
            "params": _param_rows(spec.params),
            "needs_data": False,
            "needs_weights": False,
            "source": e.source,
            "doc": _doc(spec.factory),
        })
    return out


def _metrics() -> List[Dict[str, Any]]:
    from avalanche_mm.metrics.registry import METRICS

    out = []
    for e in METRICS.entries():
        spec = e.obj
        out.append({
            "name": e.name,
            "summary": spec.summary,
            "family": "always recorded" if spec.core else "evaluation.metrics",
            "params": _param_rows(spec.params),
            "needs_data": False,
            "needs_weights": False,
            "source": e.source,
            "doc": _doc(spec.factory) or spec.summary,
            "logged": spec.logged,
            "model_kinds": list(spec.model_kinds),
        })
    return out


def _loggers() -> List[Dict[str, Any]]:
    from avalanche_mm.metrics.loggers import LOGGERS

    return [
        {
            "name": e.name,
            "summary": e.meta.get("summary", ""),
            "family": "loggers",
            "params": [],
            "needs_data": False,
            "needs_weights": False,
            "source": e.source,
            "doc": e.meta.get("summary", "") + (f" (needs the {e.meta['needs']} package)" if e.meta.get("needs") else ""),
        }
        for e in LOGGERS.entries()
    ]


_DESCRIBERS = {"methods": _methods, "benchmarks": _benchmarks, "models": _models, "metrics": _metrics, "loggers": _loggers}


def describe(kind: str) -> List[Dict[str, Any]]:
    """One dict per entry of ``kind`` (see the module docstring), sorted by name.

    :param kind: one of :data:`KINDS` (``strategies`` is accepted for ``methods``).
    """
    if kind == "strategies":
        kind = "methods"
    if kind not in _DESCRIBERS:
        raise KeyError(f"describe: got kind {kind!r}, expected one of {', '.join(KINDS)}")
    return _DESCRIBERS[kind]()


def find(name: str) -> List[Dict[str, Any]]:
    """Every entry named ``name`` across the kinds (each with its ``kind`` added)."""
    hits = []
    for kind in KINDS:
        for item in describe(kind):
            if item["name"] == name:
                hits.append({**item, "kind": kind})
    return hits


__all__ = ["KINDS", "describe", "find"]
