"""A registry of benchmarks by name, so configs can name them.

>>> from avalanche_mm.benchmarks import get_benchmark, list_benchmarks
>>> sorted(list_benchmarks())[:2]                     # doctest: +SKIP
>>> bench = get_benchmark("world-class-incremental", num_classes=6, num_experiences=3)

Each entry keeps its factory, a one-line description and the factory's
keyword signature (parameter -> default), so unknown or missing parameters
are reported with the list of valid ones.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

_MISSING = inspect.Parameter.empty


@dataclass(frozen=True)
class BenchmarkEntry:
    """A registered benchmark.

    :param name: the registry name.
    :param factory: callable(**params) -> scenario.
    :param description: one line.
    """

    name: str
    factory: Callable[..., Any]
    description: str

    @property
    def parameters(self) -> Dict[str, Any]:
        """Parameter name -> default (``inspect.Parameter.empty`` if required)."""
        sig = inspect.signature(self.factory)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }

    @property
    def required(self):
        """Names of the parameters without a default."""
        return [k for k, v in self.parameters.items() if v is _MISSING]

    def signature(self) -> str:
        """``name(param=default, ...)`` as text."""
        parts = []
        for k, v in self.parameters.items():
            parts.append(k if v is _MISSING else f"{k}={v!r}")
        return f"{self.name}({', '.join(parts)})"


_REGISTRY: Dict[str, BenchmarkEntry] = {}


def register_benchmark(name: str, *, description: Optional[str] = None):
    """Decorator registering a benchmark factory under ``name``.

    The factory must take keyword arguments only. The description defaults
    to the first line of its docstring.

    :param name: the registry name (lower-case, dashes).
    :param description: one-line description.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_benchmark needs a non-empty name, got {name!r}.")

    def deco(factory):
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(
                f"a benchmark named {name!r} is already registered "
                f"({_REGISTRY[name].factory.__module__}.{_REGISTRY[name].factory.__qualname__})."
            )
        positional = [
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL)
        ]
        if positional:
            raise TypeError(
                f"benchmark factory {factory.__qualname__} takes positional-only parameters "
                f"{positional}; registered factories must be keyword-only."
            )
        doc = (factory.__doc__ or "").strip().splitlines()
        desc = description or (doc[0].strip() if doc else name)
        _REGISTRY[name] = BenchmarkEntry(name=name, factory=factory, description=desc)
        return factory

    return deco


def list_benchmarks() -> Dict[str, BenchmarkEntry]:
    """Name -> :class:`BenchmarkEntry` of every registered benchmark."""
    return dict(sorted(_REGISTRY.items()))


def benchmark_info(name: str) -> BenchmarkEntry:
    """The entry of ``name`` (raises ``KeyError`` listing the known names)."""
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown benchmark {name!r}; registered benchmarks: {sorted(_REGISTRY)}."
        )
    return _REGISTRY[name]


def get_benchmark(name: str, **params):
    """Build the benchmark ``name`` with ``params``.

    :param name: a registered name (see :func:`list_benchmarks`).
    :param params: keyword parameters of its factory.
    """
    entry = benchmark_info(name)
    valid = entry.parameters
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise TypeError(
            f"benchmark {name!r} has no parameters {unknown}; valid parameters: "
            f"{entry.signature()}."
        )
    lacking = [p for p in entry.required if p not in params]
    if lacking:
        raise TypeError(
            f"benchmark {name!r} needs parameters {lacking}; signature: {entry.signature()}."
        )
    return entry.factory(**params)


__all__ = [
    "BenchmarkEntry",
    "register_benchmark",
    "list_benchmarks",
    "benchmark_info",
    "get_benchmark",
]
