"""One registry mechanism for every pluggable kind.

Benchmarks, backbones, fusion models, methods, loggers and metrics are each a
:class:`Registry`: a name -> entry mapping filled by ``register`` calls in the
module that defines the entry (one declaration, next to the code), plus the
entries other installed distributions declare through Python entry points
(group ``avalanche_mm.<kind>s``, e.g. ``avalanche_mm.methods``). An entry point's
value is a module (importing it registers its entries) or an object, which is
registered under the entry point's name.

Parameters are declared once: :func:`params_from_signature` derives a config
schema (:class:`~avalanche_mm.schema.Opt` per parameter: kind, default, range,
choices, help) from a constructor's signature and reST docstring. Ranges ride
on the annotation through ``typing.Annotated`` and :class:`Range`::

    def __init__(self, *, temperature: Annotated[float, Range(gt=0)] = 2.0,
                 mode: Literal["teacher", "student"] = "teacher",
                 mem_size: Optional[int] = None): ...
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from avalanche_mm.schema import REQUIRED, Opt, _suggest


class RegistryError(KeyError):
    """An unknown name, or a name registered twice."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


@dataclass
class Entry:
    """One registered object.

    :ivar name: the name configs use.
    :ivar obj: the registered object (a factory, a class, a spec).
    :ivar meta: free metadata given at registration (summary, needs, ...).
    :ivar source: where it came from: the defining module, or
        ``"entry point <dist>"`` for another distribution's entry.
    """

    name: str
    obj: Any
    meta: Dict[str, Any] = field(default_factory=dict)
    source: str = ""


class Registry(Mapping[str, Any]):
    """A named collection of one kind of pluggable object.

    It is a read-only ``Mapping`` name -> object; :meth:`entry` gives the
    metadata too. Entry points of ``group`` are loaded on first access.

    :param kind: what it holds, singular (``"method"``), used in messages.
    :param group: the entry-point group (default ``"avalanche_mm.<kind>s"``).
    """

    def __init__(self, kind: str, *, group: Optional[str] = None):
        self.kind = kind
        self.group = group or f"avalanche_mm.{kind}s"
        self._entries: Dict[str, Entry] = {}
        self._loaded_entry_points = False
        self._loading = False

    # -- registration -----------------------------------------------------
    def register(self, name: str, obj: Any = None, *, replace: bool = False, **meta: Any):
        """Register ``obj`` under ``name``; without ``obj``, a decorator.

        :param name: the name configs use (non-empty, no whitespace).
        :param obj: the object; omitted when used as ``@registry.register(name)``.
        :param replace: allow replacing an existing entry of that name.
        :param meta: metadata kept with the entry.
        """
        if not isinstance(name, str) or not name or re.search(r"\s", name):
            raise ValueError(f"{self.kind} registry: names must be non-empty strings without spaces, got {name!r}")

        def add(o: Any) -> Any:
            if name in self._entries and not replace and self._entries[name].obj is not o:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered (by {self._entries[name].source}); "
                    "choose another name or pass replace=True"
                )
            source = meta.pop("source", None) or getattr(o, "__module__", None) or _caller_module()
            self._entries[name] = Entry(name=name, obj=o, meta=dict(meta), source=str(source))
            return o

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove an entry (tests, plugins that replace a built-in)."""
        self._entries.pop(name, None)

    # -- lookup ------------------------------------------------------------
    def _ensure(self) -> None:
        if self._loaded_entry_points or self._loading:
            return
        self._loading = True
        try:
            self.load_entry_points()
        finally:
            self._loading = False
            self._loaded_entry_points = True

    def load_entry_points(self) -> List[str]:
        """Import the entry points of :attr:`group`; return the names added.

        A failing entry point raises (naming the distribution and the entry
        point): a broken extension must not vanish silently.
        """
        from importlib import metadata

        added = []
        for ep in metadata.entry_points(group=self.group):
            before = set(self._entries)
            try:
                loaded = ep.load()
            except Exception as exc:  # re-raised with the entry point named
                dist = getattr(getattr(ep, "dist", None), "name", "?")
                raise ImportError(
                    f"entry point {ep.name!r} = {ep.value!r} of distribution {dist!r} (group {self.group}) "
                    f"failed to load: {exc}; fix or uninstall that distribution"
                ) from exc
            if not inspect.ismodule(loaded) and ep.name not in self._entries:
                dist = getattr(getattr(ep, "dist", None), "name", "?")
                self.register(ep.name, loaded, source=f"entry point of {dist}")
            added.extend(sorted(set(self._entries) - before))
        return added

    def refresh(self) -> None:
        """Look at the entry points again on next access (after installing a
        distribution, or putting one on ``sys.path``, in a running process)."""
        self._loaded_entry_points = False

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of ``name``; an unknown name raises with the known ones."""
        self._ensure()
        if name not in self._entries:
            known = sorted(self._entries)
            raise RegistryError(
                f"unknown {self.kind} {name!r}; expected one of " + ", ".join(known) + _suggest(name, known)
            )
        return self._entries[name]

    def __getitem__(self, name: str) -> Any:
        return self.entry(name).obj

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._ensure()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        self._ensure()
        return len(self._entries)

    def entries(self) -> List[Entry]:
        """Every entry, sorted by name."""
        self._ensure()
        return [self._entries[k] for k in sorted(self._entries)]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def _caller_module() -> str:
    frame = sys._getframe(3)
    return frame.f_globals.get("__name__", "?")


# ---------------------------------------------------------------------------
# parameters declared once: signature + docstring -> schema
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """A numeric range carried by ``Annotated[int|float, Range(...)]``.

    :param ge: inclusive lower bound.
    :param gt: exclusive lower bound.
    :param le: inclusive upper bound.
    :param lt: exclusive upper bound.
    """

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None

    def check(self, value: Any) -> Optional[str]:
        """None when ``value`` is inside, else what was expected."""
        if self.gt is not None and not value > self.gt:
            return f"expected a value > {self.gt}"
        if self.lt is not None and not value < self.lt:
            return f"expected a value < {self.lt}"
        return None


_KIND_OF = {int: "int", float: "float", bool: "bool", str: "str", dict: "dict", list: "list"}


def _opt_from_annotation(name: str, annotation: Any, default: Any, help: str) -> Optional[Opt]:
    """An :class:`Opt` for one parameter, or None when its type is not config-able."""
    rng: Optional[Range] = None
    nullable = False
    choices = None
    ann = annotation
    for _ in range(4):  # unwrap Annotated / Optional / Literal layers
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            base, *extra = typing.get_args(ann)
            rng = next((e for e in extra if isinstance(e, Range)), rng)
            ann = base
            continue
        if origin is typing.Union or (sys.version_info >= (3, 10) and origin is __import__("types").UnionType):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(args) != len(typing.get_args(ann)):
                nullable = True
            if len(args) != 1:
                return None
            ann = args[0]
            continue
        if origin is typing.Literal:
            choices = list(typing.get_args(ann))
            kinds = {type(c) for c in choices}
            ann = kinds.pop() if len(kinds) == 1 else Any
            continue
        break
    item = None
    origin = typing.get_origin(ann)
    if origin in (list, tuple, collections.abc.Sequence) or ann in (list, tuple, collections.abc.Sequence):
        args = typing.get_args(ann)
        item = _KIND_OF.get(args[0]) if args else None
        kind = "list"
    elif origin in (dict, collections.abc.Mapping) or ann in (dict, collections.abc.Mapping):
        kind = "dict"
    elif ann in _KIND_OF:
        kind = _KIND_OF[ann]
    else:
        return None
    if default is None:
        nullable = True
    if isinstance(default, tuple):
        default = list(default)
    minimum = maximum = None
    check = None
    if rng is not None:
        minimum = rng.ge if rng.ge is not None else None
        maximum = rng.le if rng.le is not None else None
        if rng.gt is not None or rng.lt is not None:
            check = rng.check
            minimum = rng.gt if minimum is None and rng.gt is not None else minimum
            maximum = rng.lt if maximum is None and rng.lt is not None else maximum
    opt = Opt(kind, default, choices=choices, nullable=nullable, minimum=minimum, maximum=maximum, item=item, check=check, help=help)
    if rng is not None:
        opt.exclusive = (rng.ge is None and rng.gt is not None, rng.le is None and rng.lt is not None)
    return opt


_PARAM_RE = re.compile(r":param\s+(\w+):(.*?)(?=\n\s*:[a-z]+[\s:]|\n\s*\n|\Z)", re.S)


def param_docs(obj: Any) -> Dict[str, str]:
    """``:param name: text`` entries of an object's reST docstrings (class and ``__init__``), one line each."""
    out: Dict[str, str] = {}
    for doc in (inspect.getdoc(obj), inspect.getdoc(getattr(obj, "__init__", None)) if inspect.isclass(obj) else None):
        if not doc:
            continue
        for m in _PARAM_RE.finditer(doc):
            out.setdefault(m.group(1), " ".join(m.group(2).split()))
    return out


def params_from_signature(
    fn: Any, *, exclude: Sequence[str] = (), only: Optional[Sequence[str]] = None, loose: bool = False
) -> Dict[str, Opt]:
    """The config schema of a callable's parameters: one :class:`Opt` each.

    Every parameter with a default and a config-able annotation (``int``,
    ``float``, ``bool``, ``str``, lists and dicts of them, ``Literal[...]``,
    ``Optional[...]``, ``Annotated[..., Range(...)]``) becomes an option;
    ``exclude`` drops names (template arguments such as ``model``), ``only``
    keeps just the names listed. Help text comes from the reST ``:param:``.
    With ``loose=True`` every keyword parameter is kept: one without a
    config-able annotation accepts any value (``Opt("any")``), one without a
    default is required (benchmark factories).
    """
    target = fn.__init__ if inspect.isclass(fn) else fn
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception as exc:
        raise TypeError(f"cannot resolve the annotations of {getattr(fn, '__qualname__', fn)}: {exc}") from exc
    docs = param_docs(fn)
    out: Dict[str, Opt] = {}
    for name, p in sig.parameters.items():
        if name in ("self", "cls") or name in exclude or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if only is not None and name not in only:
            continue
        default = REQUIRED if p.default is inspect.Parameter.empty else p.default
        if not loose and (default is REQUIRED or name not in hints):
            continue
        opt = _opt_from_annotation(name, hints[name], default, docs.get(name, "")) if name in hints else None
        if opt is None and loose:
            opt = Opt("any", default, help=docs.get(name, ""))
        if opt is not None:
            out[name] = opt
        elif only is not None:
            raise TypeError(f"{getattr(fn, '__qualname__', fn)}: parameter {name!r} has no config-able annotation ({hints[name]!r})")
    if only is not None:
        missing = [n for n in only if n not in out]
        if missing:
            raise TypeError(f"{getattr(fn, '__qualname__', fn)}: no parameter(s) {missing} with a default and an annotation")
    return out


def import_modules(names: Sequence[str], *, key: str = "imports") -> None:
    """Import modules that register entries (a config's ``imports``, the CLI's ``--import``).

    :raises ImportError: naming the item (``imports[i]``) and the module.
    """
    import importlib

    for i, name in enumerate(names or ()):
        try:
            importlib.import_module(name)
        except Exception as exc:  # re-raised with the config key named
            raise ImportError(f"{key}[{i}]: cannot import module {name!r}: {type(exc).__name__}: {exc}") from exc


__all__ = ["Registry", "RegistryError", "Entry", "Range", "params_from_signature", "param_docs", "import_modules"]
