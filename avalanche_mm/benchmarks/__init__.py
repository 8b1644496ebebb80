"""Multimodal benchmarks: scenario generators, a procedural world, real-data loaders.

- Generators (Avalanche 0.6 style, keyword-only, seeded):
  :func:`class_incremental_scenario`, :func:`task_incremental_scenario`,
  :func:`domain_incremental_scenario`, :func:`multi_dataset_scenario`
  (MTIL), :func:`retrieval_phases_scenario` (image-text pairs),
  :func:`gcil_scenario`, :func:`modality_incremental_scenario`.
- Modality conditions on any scenario: :func:`apply_modality_conditions`
  (missing rates, :class:`GaussianNoise`, :class:`ShuffleModality`),
  :func:`with_modality_schedule`.
- Built-in data: :class:`ProceduralWorld`, :func:`digits_class_incremental`.
- Real data on disk: :mod:`avalanche_mm.benchmarks.datasets`.
- Registry: :data:`BENCHMARKS`, :func:`get_benchmark`, :func:`list_benchmarks`,
  :func:`register_benchmark`; a run's view of a benchmark (scenario, class
  names, reference split): :class:`BenchmarkBundle`, :func:`build_bundle`.
"""

from . import catalog as _catalog  # noqa: F401  (registers the built-in benchmarks)
from . import datasets  # noqa: F401  (registers the real-data benchmarks)
from .conditions import (
    Corruption,
    GaussianNoise,
    ShuffleModality,
    apply_modality_conditions,
    draw_missing_masks,
    modality_incremental_scenario,
    with_modality_schedule,
)
from .digits import DIGIT_NAMES, digits_class_incremental, load_digits_multimodal
from .bundle import BenchmarkBundle, ReferenceSet, build_bundle, load_reference
from .registry import (
    BENCHMARKS,
    BenchmarkEntry,
    benchmark_info,
    get_benchmark,
    list_benchmarks,
    register_benchmark,
)
from .scenarios import (
    MTIL_ORDER_I,
    MTIL_ORDER_II,
    MultimodalScenario,
    TaskDataset,
    class_incremental_scenario,
    domain_incremental_scenario,
    gcil_scenario,
    multi_dataset_scenario,
    retrieval_phases_scenario,
    task_incremental_scenario,
)
from .world import FAMILIES, STYLES, ProceduralWorld, WorldSamples, WorldTask

__all__ = [
    "MultimodalScenario",
    "TaskDataset",
    "class_incremental_scenario",
    "task_incremental_scenario",
    "domain_incremental_scenario",
    "multi_dataset_scenario",
    "retrieval_phases_scenario",
    "gcil_scenario",
    "modality_incremental_scenario",
    "MTIL_ORDER_I",
    "MTIL_ORDER_II",
    "Corruption",
    "GaussianNoise",
    "ShuffleModality",
    "apply_modality_conditions",
    "draw_missing_masks",
    "with_modality_schedule",
    "ProceduralWorld",
    "WorldSamples",
    "WorldTask",
    "FAMILIES",
    "STYLES",
    "DIGIT_NAMES",
    "digits_class_incremental",
    "load_digits_multimodal",
    "BENCHMARKS",
    "BenchmarkEntry",
    "BenchmarkBundle",
    "ReferenceSet",
    "build_bundle",
    "load_reference",
    "register_benchmark",
    "list_benchmarks",
    "benchmark_info",
    "get_benchmark",
    "datasets",
]
