"""The main job: config -> benchmark + model + strategies + metrics -> results folder and report.

- :func:`run_experiment` (what ``avalanche-mm run`` calls) and
  :func:`build_report` (``avalanche-mm report``);
- :func:`load_config` / :func:`validate_config` and :class:`ConfigError`;
- :data:`METHODS` (the strategies a config can name) and the benchmark/model
  glue of :mod:`avalanche_mm.experiments.registry`.

See ``docs/main-job.md``.
"""

from .config import ConfigError, load_config, validate_config
from .methods import METHODS, list_methods
from .registry import list_benchmarks, list_models
from .report import build_report
from . import retrieval as _retrieval  # noqa: F401  (registers world-retrieval-stream)
from .runner import run_experiment

__all__ = [
    "run_experiment",
    "build_report",
    "load_config",
    "validate_config",
    "ConfigError",
    "METHODS",
    "list_methods",
    "list_benchmarks",
    "list_models",
]
