"""The main job: config -> benchmark + model + strategies + metrics -> results folder and report.

- :func:`run_experiment` (what ``avalanche-mm run`` calls) and
  :func:`build_report` (``avalanche-mm report``);
- :func:`load_config` / :func:`validate_config` and :class:`ConfigError`;
- :func:`~avalanche_mm.experiments.check.preflight`: everything ``run`` checks
  before training (what ``avalanche-mm check`` runs);
- :data:`METHODS` (re-exported from :mod:`avalanche_mm.strategies.registry`; the
  registries live with what they register, see ``docs/architecture.md``).

See ``docs/main-job.md``.
"""

from .config import ConfigError, load_config, validate_config
import avalanche_mm.strategies  # noqa: F401  (the method files register themselves)
from avalanche_mm.strategies.registry import METHODS, list_methods
from .registry import list_benchmarks, list_models
from .report import build_report
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
