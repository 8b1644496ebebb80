"""Former home of the benchmark and model glue (kept for imports).

Benchmarks, their reference split and the bundle a run sees live in
:mod:`avalanche_mm.benchmarks` (:mod:`~avalanche_mm.benchmarks.bundle`,
:mod:`~avalanche_mm.benchmarks.catalog`); the model builders in
:mod:`avalanche_mm.models.build`. Nothing here is a registry.
"""

from __future__ import annotations

from typing import Dict

from avalanche_mm.benchmarks.bundle import BenchmarkBundle, ReferenceSet, load_reference
from avalanche_mm.benchmarks.bundle import build_bundle as build_benchmark
from avalanche_mm.benchmarks.catalog import demo_av, demo_mtil, toy
from avalanche_mm.models.backbones.registry import DEMO_CLIP_CONFIG
from avalanche_mm.models.build import build_clip_backbone, build_fusion_model, clip_classifier


def list_benchmarks() -> Dict[str, str]:
    """Benchmark name -> one-line description."""
    from avalanche_mm.benchmarks.registry import BENCHMARKS

    return {e.name: e.obj.description for e in BENCHMARKS.entries()}


def list_models() -> Dict[str, str]:
    """Model names a config can use (backbones and fusion networks), ``kind: name`` -> summary."""
    from avalanche_mm.models.backbones.registry import BACKBONES
    from avalanche_mm.models.fusion.registry import FUSION_MODELS

    out = {f"clip: {e.name}": e.meta.get("summary", "") for e in BACKBONES.entries()}
    out["clip: <open_clip name> / hf:<id> / folder"] = "any open_clip or HF CLIP model (pretrained weights on disk)"
    out.update({f"fusion: {e.name}": e.obj.summary for e in FUSION_MODELS.entries()})
    return out


__all__ = [
    "ReferenceSet",
    "BenchmarkBundle",
    "DEMO_CLIP_CONFIG",
    "demo_mtil",
    "demo_av",
    "toy",
    "list_benchmarks",
    "build_benchmark",
    "load_reference",
    "build_clip_backbone",
    "clip_classifier",
    "build_fusion_model",
    "list_models",
]
