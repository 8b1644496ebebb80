"""MkDocs hook: the tables of methods, benchmarks, models, metrics and loggers,
generated from the registries at build time so the docs cannot drift.

A page asks for a table with a marker on a line of its own:

- ``<!-- registry:methods -->``: one row per entry (name, family, summary,
  parameters with defaults, what it needs on disk, where it is defined);
- ``<!-- registry:methods:params -->``: one subsection per entry with its
  parameter table (kind, default, accepted values, help) and documentation.

Kinds: ``methods``, ``benchmarks``, ``models``, ``metrics``, ``loggers``. An
unknown kind or view fails the build. The entries come from
:func:`describe`, one adapter over the package's catalog.
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from typing import Any, Dict, List, Optional

KINDS = ("methods", "benchmarks", "models", "metrics", "loggers")
VIEWS = ("table", "params")
MARKER = re.compile(r"^[ \t]*<!--\s*registry:(?P<kind>[\w-]+)(?::(?P<view>[\w-]+))?\s*-->[ \t]*$", re.M)

CATALOG_PAGE = "catalog.md"

_cache: Dict[str, List[Dict[str, Any]]] = {}
#: kinds whose entries have a subsection (anchor) on the catalog page
_detailed: set = set()


# ---------------------------------------------------------------------------
# the adapter: entries as dicts {name, summary, family, params: [{name, kind,
# default, expected, help}], needs_data, needs_weights, source, doc} and, for
# some kinds, reference, model_kinds, logged
# ---------------------------------------------------------------------------
def describe(kind: str) -> List[Dict[str, Any]]:
    """The entries of one kind, as ``avalanche_mm.catalog.describe`` gives them."""
    if kind not in _cache:
        from avalanche_mm.catalog import describe as catalog_describe

        _cache[kind] = list(catalog_describe(kind))
    return _cache[kind]


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------
_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|obj|exc):`~?([^`]+)`")


def _text(value: Any) -> str:
    """One table cell: reST roles and ``literals`` become code spans; no pipes or newlines."""
    s = _ROLE.sub(r"`\1`", str(value or ""))
    s = s.replace("``", "`")
    return " ".join(s.split()).replace("|", "\\|")


def _value(value: Any) -> str:
    """A default as a config writes it (YAML spelling)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value in ("<required>", "REQUIRED"):
        return "required"
    return str(value)


def _code(s: str) -> str:
    s = str(s)
    tick = "``" if "`" in s else "`"
    pad = " " if tick == "``" else ""
    return f"{tick}{pad}{s}{pad}{tick}".replace("|", "\\|")


def _codes(value: Any) -> str:
    """A list (or a comma-separated string) of names as code spans."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return ", ".join(_code(str(i).strip()) for i in items if str(i).strip()) or "-"


_FIELD = re.compile(r"^:(?:param|parameter|arg|type|ivar|var|cvar|raises?|returns?|rtype|yields?)\b", re.M)


def _doc_text(entry: Dict[str, Any]) -> str:
    """An entry's documentation as Markdown paragraphs, without the reST fields the
    parameter table already shows, nor a repeat of the summary."""
    doc = str(entry.get("doc") or "")
    match = _FIELD.search(doc)
    doc = (doc[: match.start()] if match else doc).strip()

    def norm(text: str) -> str:
        return " ".join(text.split()).rstrip(".").lower()

    first, _, rest = doc.partition("\n\n")
    if norm(first) == norm(str(entry.get("summary") or "")):
        doc = rest.strip()
    doc = _ROLE.sub(r"`\1`", doc)
    doc = re.sub(r"(\S)::[ \t]*$", r"\1:", doc, flags=re.M)
    return doc


def _needs(entry: Dict[str, Any]) -> str:
    needs = [what for key, what in (("needs_data", "data"), ("needs_weights", "weights")) if entry.get(key)]
    return ", ".join(needs) if needs else "-"


def _params_inline(entry: Dict[str, Any]) -> str:
    params = entry.get("params") or []
    return ", ".join(_code(f"{p['name']}={_value(p.get('default'))}") for p in params) or "-"


def _anchor(kind: str, name: str) -> str:
    return f"{kind}-" + re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")


def render_table(kind: str, entries: List[Dict[str, Any]], *, link: Optional[str] = None) -> str:
    """The overview table of one kind (Markdown).

    :param link: where the entries' subsections are (the catalog page, relative to
        the page being rendered; ``""`` on the catalog page itself); names link
        to them when given.
    """
    if not entries:
        return f"_No {kind} are registered._"
    has_family = any(e.get("family") for e in entries)
    has_params = any(e.get("params") for e in entries)
    has_needs = any(e.get("needs_data") or e.get("needs_weights") for e in entries)
    has_reference = any(e.get("reference") for e in entries)
    has_logged = any(e.get("logged") for e in entries)
    has_models = kind == "methods" and any(e.get("model_kinds") for e in entries)
    has_source = kind == "methods" and any(e.get("source") for e in entries)
    head = ["name"] + (["family"] if has_family else []) + ["summary"] + (["logged as"] if has_logged else [])
    head += (["parameters (default)"] if has_params else []) + (["needs on disk"] if has_needs else [])
    head += (["models"] if has_models else [])
    head += (["reference"] if has_reference else []) + (["module"] if has_source else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for e in entries:
        name = _code(e["name"]) if link is None else f"[{_code(e['name'])}]({link}#{_anchor(kind, e['name'])})"
        row = [name] + ([_text(e.get("family"))] if has_family else []) + [_text(e.get("summary"))]
        row += ([_codes(e.get("logged"))] if has_logged else [])
        row += ([_params_inline(e)] if has_params else []) + ([_needs(e)] if has_needs else [])
        row += ([_codes(e.get("model_kinds"))] if has_models else [])
        row += ([_text(e.get("reference"))] if has_reference else [])
        row += ([_code(e["source"]) if e.get("source") else "-"] if has_source else [])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_params(kind: str, entries: List[Dict[str, Any]], level: int = 3) -> str:
    """One subsection per entry: summary, parameter table, documentation (Markdown)."""
    if not entries:
        return f"_No {kind} are registered._"
    out: List[str] = []
    for e in entries:
        out += [f"{'#' * level} `{e['name']}` {{#{_anchor(kind, e['name'])}}}", ""]
        summary = _text(e.get("summary"))
        if summary:
            out += [summary, ""]
        facts = []
        if e.get("family"):
            facts.append(f"**family** {_text(e['family'])}")
        if e.get("reference"):
            facts.append(f"**reference** {_text(e['reference'])}")
        if e.get("needs_data") or e.get("needs_weights"):
            facts.append(f"**needs on disk** {_needs(e)}")
        if e.get("model_kinds"):
            facts.append(f"**models** {_codes(e['model_kinds'])}")
        if e.get("logged"):
            facts.append(f"**logged as** {_codes(e['logged'])}")
        if e.get("source"):
            facts.append(f"**module** {_code(e['source'])}")
        if facts:
            out += [" · ".join(facts), ""]
        doc = _doc_text(e)
        if doc:
            out += [doc, ""]
        params = e.get("params") or []
        if params:
            out += ["| parameter | kind | default | accepts | help |", "|---|---|---|---|---|"]
            for p in params:
                out.append("| " + " | ".join([
                    _code(p["name"]), _text(p.get("kind")), _code(_value(p.get("default"))),
                    _text(p.get("expected")), _text(p.get("help")),
                ]) + " |")
            out.append("")
        else:
            out += ["No parameters.", ""]
    return "\n".join(out).rstrip()


def render(kind: str, view: str = "table", *, page: str = "") -> str:
    """The Markdown a marker is replaced with.

    :param page: the page's path under ``docs/`` (for links to the catalog).
    """
    if kind not in KINDS:
        raise ValueError(f"registry marker: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if view not in VIEWS:
        raise ValueError(f"registry marker: unknown view {view!r} for {kind}; expected one of {', '.join(VIEWS)}")
    entries = sorted(describe(kind), key=lambda e: str(e["name"]))
    if view == "params":
        return render_params(kind, entries)
    link = None
    if kind in _detailed and page:
        link = "" if page == CATALOG_PAGE else posixpath.relpath(CATALOG_PAGE, posixpath.dirname(page) or ".")
    return render_table(kind, entries, link=link)


def replace_markers(markdown: str, *, page: str = "") -> str:
    """Every ``<!-- registry:KIND[:VIEW] -->`` line of a page replaced with its table."""
    return MARKER.sub(lambda m: render(m["kind"], m["view"] or "table", page=page), markdown)


# ---------------------------------------------------------------------------
# MkDocs events
# ---------------------------------------------------------------------------
def on_config(config, **kwargs):
    # describe the checkout being built (as mkdocstrings' `paths: [.]` does), not
    # whichever avalanche_mm happens to be installed
    root = os.path.dirname(os.path.abspath(config.config_file_path))
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_pre_build(config, **kwargs) -> None:
    _cache.clear()  # `mkdocs serve` rebuilds see registry changes
    _detailed.clear()
    catalog = os.path.join(config["docs_dir"], CATALOG_PAGE)
    if os.path.exists(catalog):
        with open(catalog, encoding="utf-8") as fh:
            _detailed.update(m["kind"] for m in MARKER.finditer(fh.read()) if m["view"] == "params")


def on_page_markdown(markdown, page, config, files, **kwargs):
    if "registry:" not in markdown:
        return markdown
    try:
        return replace_markers(markdown, page=page.file.src_uri)
    except Exception as exc:  # a broken marker or registry fails the build, naming the page
        from mkdocs.exceptions import PluginError

        raise PluginError(f"{page.file.src_path}: {exc}") from exc
