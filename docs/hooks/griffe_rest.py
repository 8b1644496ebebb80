"""Griffe extension for the API reference: the package's docstrings are reST (Sphinx
fields, which mkdocstrings parses with ``docstring_style: sphinx``), but their inline
markup would reach Markdown as it is. This rewrites, before rendering:

- roles ``:class:`~a.b.C``` (and ``func``, ``meth``, ``mod``, ``attr``, ``data``,
  ``obj``, ``exc``, ...) into code spans (``C`` for ``~``-prefixed targets);
- a paragraph ending in ``::`` (a literal block follows) into one ending in ``:``;
- directives ``.. note::`` / ``.. warning::`` into admonitions;
- links ```text <url>`_`` into Markdown links.

``double-backtick`` literals are already Markdown code spans.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|obj|exc|const|type|ref|doc|term|math):`([^`]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<([^>]+)>`__?")
_LITERAL = re.compile(r"(\S)::[ \t]*$", re.M)
_BARE_LITERAL = re.compile(r"^[ \t]*::[ \t]*$", re.M)
_DIRECTIVE = re.compile(r"^([ \t]*)\.\. (note|warning|tip|important|seealso|attention|caution|hint|danger)::[ \t]*", re.M)


def _role(match: "re.Match[str]") -> str:
    target = match[1].strip()
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target}`"


def rest_to_markdown(text: str) -> str:
    """The reST inline markup of a docstring rewritten as Markdown."""
    text = _ROLE.sub(_role, text)
    text = _LINK.sub(r"[\1](\2)", text)
    text = _DIRECTIVE.sub(lambda m: f"{m[1]}!!! {'info' if m[2] == 'seealso' else m[2]}", text)
    text = _LITERAL.sub(r"\1:", text)
    return _BARE_LITERAL.sub("", text)


class RestToMarkdown(griffe.Extension):
    """Rewrites every docstring with :func:`rest_to_markdown` as objects are loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and obj.docstring.value:
            obj.docstring.value = rest_to_markdown(obj.docstring.value)
