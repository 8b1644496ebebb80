"""The documentation site: `mkdocs build --strict` passes offline, the tables of methods,
benchmarks, models and metrics are generated from the registries (a newly registered
method appears without editing any page), and no page keeps a hand-written method table.

mkdocs is part of the `docs` extra that CI installs (`make test` installs `.[test,docs]`),
so a missing mkdocs fails here instead of skipping."""

import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_docs_hook_{name}", os.path.join(DOCS, "hooks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def hook():
    module = _load("registry_tables")
    module._cache.clear()
    return module


def _require(module):
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed; the docs build needs the docs extra: pip install -e '.[test,docs]'")


def test_site_builds_strict_offline(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        _require(module)
    site = tmp_path / "site"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", os.path.join(ROOT, "mkdocs.yml"),
                           "-d", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    pages = {os.path.relpath(p, site): open(p, encoding="utf-8").read() for p in glob.glob(str(site / "**" / "*.html"),
                                                                                            recursive=True)}
    # every marker was replaced, no page asks a font or script server for anything
    for path, text in pages.items():
        assert not re.search(r"(<|&lt;)!--\s*registry:", text), path
        assert not re.search(r"<(?:link|script)[^>]+(?:href|src)=\"https?://", text), path
        assert "fonts.googleapis" not in text, path
    # the API reference: one page per subpackage, rendered from the docstrings (reST roles rewritten)
    for sub in ("data", "benchmarks", "models", "strategies", "metrics", "experiments"):
        api = pages[os.path.join("api", sub, "index.html")]
        assert 'class="doc doc-object' in api or "doc-heading" in api, sub
        assert ":class:" not in api and ":func:" not in api, sub
    assert "run_experiment" in pages[os.path.join("api", "experiments", "index.html")]
    # the generated tables (names link to their catalog entries)
    catalog = pages[os.path.join("catalog", "index.html")]
    assert 'id="methods-zscl"' in catalog and "<code>text_features</code>" in catalog
    assert 'href="../catalog/#methods-zscl"' in pages[os.path.join("strategies", "index.html")]
    assert "<code>demo-mtil</code>" in pages[os.path.join("benchmarks", "index.html")]


def test_tables_come_from_the_registry(hook):
    methods = hook.describe("methods")
    names = {m["name"] for m in methods}
    assert {"zeroshot", "finetune", "lwf", "er", "wiseft", "zscl"} <= names
    table = hook.render("methods")
    for m in methods:
        assert f"| `{m['name']}` |" in table
    params = hook.render("methods", "params")
    zscl = next(m for m in methods if m["name"] == "zscl")
    for p in zscl["params"]:
        assert f"| `{p['name']}` |" in params
    assert "{#methods-zscl}" in params
    for kind in ("benchmarks", "models", "metrics"):
        rendered = hook.render(kind)
        assert rendered.startswith("| name |") and all(hook._code(e["name"]) in rendered for e in hook.describe(kind))
    assert hook.render("methods", page="strategies.md").count("](catalog.md#methods-") == 0  # links need the catalog read
    hook._detailed.add("methods")
    assert f"[`zscl`](catalog.md#methods-zscl)" in hook.render("methods", page="strategies.md")
    assert f"[`zscl`](../catalog.md#methods-zscl)" in hook.render("methods", page="api/x.md")
    assert f"[`zscl`](#methods-zscl)" in hook.render("methods", page="catalog.md")


def test_a_new_method_appears_without_editing_docs(hook):
    from typing import Annotated

    from avalanche_mm.registry import Range
    from avalanche_mm.strategies.registry import METHODS, register_method

    class DocToy:
        """A toy.

        :param strength: how strong | really.
        """

        def __init__(self, *, model=None, optimizer=None, strength: Annotated[float, Range(ge=0.0)] = 0.5):
            pass

    try:
        register_method("doc-toy", summary="a toy method | for the docs test", params_from=DocToy,
                        reference="Nobody, 2026")(lambda ctx, params: None)
        hook._cache.clear()
        page = hook.replace_markers("intro\n\n<!-- registry:methods -->\n\n<!-- registry:methods:params -->\nend\n")
    finally:
        METHODS.unregister("doc-toy")
    assert "registry:" not in page and page.startswith("intro\n\n| name |") and page.endswith("\nend\n")
    assert "| `doc-toy` |  | a toy method \\| for the docs test | `strength=0.5` | `clip`, `fusion` | Nobody, 2026 |" in page
    assert "| `strength` | float | `0.5` | a number >= 0.0 | how strong \\| really. |" in page
    assert "### `doc-toy` {#methods-doc-toy}\n\na toy method \\| for the docs test\n\n**reference** Nobody, 2026" in page


def test_markers_are_checked(hook):
    with pytest.raises(ValueError, match="unknown kind 'method'"):
        hook.replace_markers("<!-- registry:method -->")
    with pytest.raises(ValueError, match="unknown view 'full'"):
        hook.render("methods", "full")
    assert hook.replace_markers("text <!-- registry:methods --> inline") == "text <!-- registry:methods --> inline"
    assert hook.render_table("loggers", []) == "_No loggers are registered._"


def test_no_hand_kept_method_tables(hook):
    names = {m["name"] for m in hook.describe("methods")}
    row = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.M)
    for path in glob.glob(os.path.join(DOCS, "*.md")) + [os.path.join(ROOT, "README.md")]:
        text = open(path, encoding="utf-8").read()
        listed = {m for m in row.findall(text) if m in names}
        assert not listed, f"{path} lists methods {sorted(listed)} in a hand-written table; use <!-- registry:methods -->"
    pages = {os.path.basename(p): open(p, encoding="utf-8").read() for p in glob.glob(os.path.join(DOCS, "*.md"))}
    assert "<!-- registry:methods -->" in pages["strategies.md"] and "<!-- registry:methods -->" in pages["main-job.md"]
    assert "<!-- registry:methods:params -->" in pages["catalog.md"]


def test_rest_docstrings_become_markdown():
    rest = _load("griffe_rest").rest_to_markdown
    assert rest("A :class:`~avalanche_mm.data.MultimodalBatch` and :func:`build`.") == \
        "A `MultimodalBatch` and `build`."
    assert rest("See `the paper <https://x.org/p>`_.") == "See [the paper](https://x.org/p)."
    assert rest("Example::\n\n    code()\n") == "Example:\n\n    code()\n"
    assert rest("Text.\n\n::\n\n    code()\n") == "Text.\n\n\n\n    code()\n"
    assert rest(".. note::\n    Careful.") == "!!! note\n    Careful."
    assert rest(":param x: the ``x``.") == ":param x: the ``x``."
