"""A small declarative schema for YAML configs (validation with clear errors).

A schema is a :class:`Section` of named :class:`Opt` (a leaf value) and
nested sections. :func:`validate` fills defaults and collects every problem
as ``"<dotted.key>: got <value> (<type>), expected <what>"``; all problems
are raised together in one :class:`ConfigError`, before anything is built.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

REQUIRED = object()


class ConfigError(ValueError):
    """An invalid configuration; ``errors`` lists every problem found."""

    def __init__(self, errors: Sequence[str], *, source: Optional[str] = None):
        self.errors = list(errors)
        self.source = source
        head = f"invalid configuration{f' ({source})' if source else ''}"
        super().__init__(head + ":\n  - " + "\n  - ".join(self.errors))


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


class Opt:
    """One leaf option.

    :param kind: ``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"list"``
        (of ``item`` kind), ``"dict"`` (free-form mapping) or ``"any"``.
    :param default: the default value; :data:`REQUIRED` when it must be given.
    :param choices: allowed values (for ``str`` options, or list items).
    :param nullable: whether ``null`` is allowed.
    :param minimum: lower bound for numbers (inclusive).
    :param maximum: upper bound for numbers (inclusive).
    :param item: the kind of list items.
    :param check: extra check ``value -> error message or None``.
    :param help: one line shown by ``avalanche-mm list``.
    """

    def __init__(
        self,
        kind: str,
        default: Any = REQUIRED,
        *,
        choices: Optional[Sequence[Any]] = None,
        nullable: bool = False,
        minimum: Optional[float] = None,
        maximum: Optional[float] = None,
        item: Optional[str] = None,
        check: Optional[Callable[[Any], Optional[str]]] = None,
        help: str = "",
    ):
        if kind not in ("int", "float", "bool", "str", "list", "dict", "any"):
            raise ValueError(f"Opt: unknown kind {kind!r}.")
        self.kind = kind
        self.default = default
        self.choices = list(choices) if choices is not None else None
        self.nullable = nullable
        self.minimum = minimum
        self.maximum = maximum
        self.item = item
        self.check = check
        self.help = help

    def expected(self) -> str:
        """Human description of what the option accepts."""
        what = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a string",
            "list": f"a list{' of ' + self.item + 's' if self.item else ''}",
            "dict": "a mapping",
            "any": "a value",
        }[self.kind]
        if self.choices is not None:
            what = "one of " + ", ".join(repr(c) for c in self.choices)
            if self.kind == "list":
                what = "a list of " + ", ".join(repr(c) for c in self.choices)
        lo_open, hi_open = getattr(self, "exclusive", (False, False))
        if self.minimum is not None and self.maximum is not None:
            what += f" in {'(' if lo_open else '['}{self.minimum}, {self.maximum}{')' if hi_open else ']'}"
        elif self.minimum is not None:
            what += f" {'>' if lo_open else '>='} {self.minimum}"
        elif self.maximum is not None:
            what += f" {'<' if hi_open else '<='} {self.maximum}"
        if self.nullable:
            what += " (or null)"
        return what

    def _coerce_scalar(self, kind: str, value: Any) -> Tuple[bool, Any]:
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    return True, int(value)
                return False, value
            return True, value
        if kind == "float":
            if isinstance(value, bool):
                return False, value
            if isinstance(value, (int, float)):
                return True, float(value)
            if isinstance(value, str):
                # PyYAML reads "1e-5" (no dot) as a string: accept numeric strings
                try:
                    return True, float(value)
                except ValueError:
                    return False, value
            return False, value
        if kind == "bool":
            return isinstance(value, bool), value
        if kind == "str":
            return isinstance(value, str), value
        if kind == "dict":
            return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
        return True, value

    def validate(self, value: Any, key: str, errors: List[str]) -> Any:
        """Check (and coerce) ``value``; append problems to ``errors``."""
        if value is None:
            if self.nullable or self.kind == "any":
                return None
            errors.append(f"{key}: got null, expected {self.expected()}")
            return value
        if self.kind == "list":
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                errors.append(f"{key}: got {_show(value)}, expected {self.expected()}")
                return value
            out = []
            for i, v in enumerate(value):
                ok, v2 = self._coerce_scalar(self.item or "any", v)
                if not ok:
                    errors.append(f"{key}[{i}]: got {_show(v)}, expected a {self.item}")
                elif self.choices is not None and v2 not in self.choices:
                    errors.append(
                        f"{key}[{i}]: got {v2!r}, expected one of "
                        + ", ".join(repr(c) for c in self.choices)
                        + _suggest(v2, self.choices)
                    )
                out.append(v2)
            value = out
        else:
            ok, value2 = self._coerce_scalar(self.kind, value)
            if not ok:
                errors.append(f"{key}: got {_show(value)}, expected {self.expected()}")
                return value
            value = value2
            if self.choices is not None and value not in self.choices:
                errors.append(
                    f"{key}: got {value!r}, expected {self.expected()}"
                    + _suggest(value, self.choices)
                )
                return value
            if self.kind in ("int", "float"):
                if self.minimum is not None and value < self.minimum:
                    errors.append(f"{key}: got {value!r}, expected {self.expected()}")
                    return value
                if self.maximum is not None and value > self.maximum:
                    errors.append(f"{key}: got {value!r}, expected {self.expected()}")
                    return value
        if self.check is not None:
            msg = self.check(value)
            if msg:
                errors.append(f"{key}: got {_show(value)}, {msg}")
        return value


def _suggest(value: Any, choices: Sequence[Any]) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Section:
    """A mapping of named options and sub-sections.

    :param fields: name -> :class:`Opt` or :class:`Section` or :class:`MapOf`.
    :param open: accept keys not in ``fields`` (kept as given).
    :param help: one line describing the section.
    """

    def __init__(self, fields: Mapping[str, Any], *, open: bool = False, help: str = ""):
        self.fields = dict(fields)
        self.open = open
        self.help = help

    def validate(self, value: Any, key: str, errors: List[str], *, fill: bool = True) -> Dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            errors.append(f"{key or '<top level>'}: got {_show(value)}, expected a mapping")
            return {}
        out: Dict[str, Any] = {}
        for k, v in value.items():
            sub = f"{key}.{k}" if key else str(k)
            if k not in self.fields:
                if self.open:
                    out[k] = v
                    continue
                errors.append(
                    f"{sub}: unknown key, expected one of "
                    + ", ".join(sorted(self.fields))
                    + _suggest(k, list(self.fields))
                )
                continue
            spec = self.fields[k]
            if isinstance(spec, Opt):
                out[k] = spec.validate(v, sub, errors)
            else:
                out[k] = spec.validate(v, sub, errors, fill=fill)
        if fill:
            for k, spec in self.fields.items():
                if k in out:
                    continue
                sub = f"{key}.{k}" if key else k
                if isinstance(spec, Opt):
                    if spec.default is REQUIRED:
                        errors.append(f"{sub}: missing, expected {spec.expected()}")
                    else:
                        out[k] = _copy(spec.default)
                else:
                    out[k] = spec.validate({}, sub, errors, fill=fill)
        return out

    def partial(self) -> "Section":
        """The same section where nothing is required and no default is filled."""
        return _PartialSection(self)


class _PartialSection(Section):
    def __init__(self, base: Section):
        super().__init__(base.fields, open=base.open, help=base.help)

    def validate(self, value, key, errors, *, fill=True):
        return super().validate(value, key, errors, fill=False)


class MapOf:
    """A mapping of user-chosen names to sections of one schema.

    :param schema: the schema of each entry (a :class:`Section`), or a callable
        ``(name, value, key, errors) -> dict`` for entries whose schema depends
        on their content.
    :param min_items: the least number of entries.
    """

    def __init__(self, schema: Any, *, min_items: int = 0, help: str = ""):
        self.schema = schema
        self.min_items = min_items
        self.help = help

    def validate(self, value, key, errors, *, fill=True):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            errors.append(f"{key}: got {_show(value)}, expected a mapping of name -> settings")
            return {}
        if len(value) < self.min_items:
            errors.append(f"{key}: has {len(value)} entries, expected at least {self.min_items}")
        out = {}
        for name, v in value.items():
            sub = f"{key}.{name}"
            if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
                errors.append(f"{sub}: names must be non-empty strings without '/', got {name!r}")
                continue
            if callable(self.schema) and not isinstance(self.schema, Section):
                out[name] = self.schema(name, v, sub, errors)
            else:
                out[name] = self.schema.validate(v, sub, errors, fill=fill)
        return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def describe(schema: Section, prefix: str = "") -> List[Tuple[str, str, str]]:
    """Flatten a schema into ``(key, default, help)`` rows (for docs and ``list``)."""
    rows = []
    for k, spec in schema.fields.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(spec, Opt):
            default = "required" if spec.default is REQUIRED else repr(spec.default)
            rows.append((key, default, spec.help or spec.expected()))
        elif isinstance(spec, Section):
            rows.extend(describe(spec, key))
        elif isinstance(spec, MapOf):
            rows.append((key + ".<name>", "", spec.help))
            if isinstance(spec.schema, Section):
                rows.extend(describe(spec.schema, key + ".<name>"))
    return rows


__all__ = ["REQUIRED", "ConfigError", "Opt", "Section", "MapOf", "describe"]
