"""The benchmarks a config can name: one :class:`~avalanche_mm.registry.Registry`.

>>> from avalanche_mm.benchmarks import get_benchmark, list_benchmarks
>>> sorted(list_benchmarks())[:2]                     # doctest: +SKIP
>>> bench = get_benchmark("world-class-incremental", num_classes=6, num_experiences=3)

Each entry keeps its factory, a one-line description, the config schema of
its parameters (derived once from the factory's signature and ``:param:``
docstring, :func:`~avalanche_mm.registry.params_from_signature`), whether it
reads data from disk (a required ``root`` parameter, given by the config's
``benchmark.data_root``) and whether it carries a reference split (images and
sentences outside the tasks, for pretraining, ZSCL and the probe set).

A factory returns an Avalanche scenario, or a
:class:`~avalanche_mm.benchmarks.bundle.BenchmarkBundle` when it carries more
(a reference split, class names). Other distributions add benchmarks through
the entry-point group ``avalanche_mm.benchmarks``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from avalanche_mm.registry import Registry, params_from_signature
from avalanche_mm.schema import Opt, _suggest

_MISSING = inspect.Parameter.empty

#: parameters the runner supplies (never config parameters)
INJECTED = ("root", "image_transform", "tokenizer", "backbone_tokenizer")

#: every benchmark a config can name (entry-point group ``avalanche_mm.benchmarks``)
BENCHMARKS: Registry = Registry("benchmark")


@dataclass(frozen=True)
class BenchmarkEntry:
    """A registered benchmark.

    :param name: the registry name.
    :param factory: callable(**params) -> scenario or bundle.
    :param description: one line.
    :param needs_data: True when it reads data from disk (``benchmark.data_root``).
    :param reference: True when it carries a reference split.
    :param check: optional ``(params) -> [problem, ...]`` of cheap consistency
        checks (messages name parameters relative to ``params``, e.g.
        ``"num_experiences: ..."``).
    """

    name: str
    factory: Callable[..., Any]
    description: str
    needs_data: bool = False
    reference: bool = False
    check: Optional[Callable[[Mapping[str, Any]], List[str]]] = None

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

    @property
    def params(self) -> Dict[str, Opt]:
        """The config schema: one :class:`~avalanche_mm.schema.Opt` per parameter
        (untyped parameters accept any value; the injected ones are left out)."""
        return params_from_signature(self.factory, exclude=INJECTED, loose=True)

    def signature(self) -> str:
        """``name(param=default, ...)`` as text."""
        parts = []
        for k, v in self.parameters.items():
            parts.append(k if v is _MISSING else f"{k}={v!r}")
        return f"{self.name}({', '.join(parts)})"

    def problems(self, params: Mapping[str, Any], key: str) -> List[str]:
        """Problems with ``params`` (unknown, missing, wrong kind or range, and the
        entry's own consistency checks), each naming ``{key}.<param>``."""
        errors: List[str] = []
        schema = self.params
        valid = [k for k in self.parameters if k not in INJECTED]
        for k in params:
            if k == "root" and "root" in self.parameters:
                errors.append(f"{key}.root: give the data folder as {key.rsplit('.', 1)[0]}.data_root instead")
            elif k not in valid:
                errors.append(f"{key}.{k}: unknown parameter of {self.name!r}, expected one of " + ", ".join(valid) + _suggest(k, valid))
        for k in self.required:
            if k not in INJECTED and k not in params:
                errors.append(f"{key}.{k}: missing, benchmark {self.name!r} needs it")
        before = len(errors)
        for k, v in params.items():
            if k in schema:
                schema[k].validate(v, f"{key}.{k}", errors)
        if len(errors) == before and self.check is not None:
            errors.extend(f"{key}.{m}" for m in self.check(dict(params)))
        return errors


def register_benchmark(
    name: str,
    *,
    description: Optional[str] = None,
    needs_data: Optional[bool] = None,
    reference: bool = False,
    check: Optional[Callable[[Mapping[str, Any]], List[str]]] = None,
):
    """Decorator registering a benchmark factory under ``name``.

    The factory must take keyword arguments only. The description defaults
    to the first line of its docstring.

    :param name: the registry name (lower-case, dashes).
    :param description: one-line description.
    :param needs_data: reads data from disk (default: the factory requires ``root``).
    :param reference: the benchmark carries a reference split.
    :param check: ``(params) -> [problem, ...]``, cheap consistency checks
        (messages start with the parameter name).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_benchmark needs a non-empty name, got {name!r}.")

    def deco(factory):
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
        if name in BENCHMARKS._entries and BENCHMARKS._entries[name].obj.factory is not factory:
            old = BENCHMARKS._entries[name].obj.factory
            raise ValueError(
                f"a benchmark named {name!r} is already registered ({old.__module__}.{old.__qualname__})."
            )
        doc = (factory.__doc__ or "").strip().splitlines()
        desc = description or (doc[0].strip() if doc else name)
        sig = inspect.signature(factory).parameters
        data = needs_data if needs_data is not None else ("root" in sig and sig["root"].default is _MISSING)
        entry = BenchmarkEntry(name=name, factory=factory, description=desc, needs_data=bool(data), reference=reference, check=check)
        BENCHMARKS.register(name, entry, source=factory.__module__, summary=desc, replace=True)
        return factory

    return deco


def list_benchmarks() -> Dict[str, BenchmarkEntry]:
    """Name -> :class:`BenchmarkEntry` of every registered benchmark."""
    return {k: BENCHMARKS[k] for k in BENCHMARKS}


def benchmark_info(name: str) -> BenchmarkEntry:
    """The entry of ``name`` (raises ``KeyError`` listing the known names)."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; registered benchmarks: {sorted(BENCHMARKS)}.")
    return BENCHMARKS[name]


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
    "BENCHMARKS",
    "BenchmarkEntry",
    "register_benchmark",
    "list_benchmarks",
    "benchmark_info",
    "get_benchmark",
]
