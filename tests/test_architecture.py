"""The package's layers and imports: no cycles, each module importable on its own,
and imports only downwards: data -> benchmarks -> (models, strategies) -> metrics
-> experiments -> (catalog, cli)."""

import ast
import os
import sys

import avalanche_mm

PKG = os.path.dirname(avalanche_mm.__file__)
ROOT = os.path.dirname(PKG)
#: layer of each top-level part (a part imports only its own layer and those below)
LAYERS = {
    "schema": 0, "registry": 0, "distributed": 0,
    "data": 1,
    "benchmarks": 2,
    "models": 3, "strategies": 3,
    "metrics": 4,
    "experiments": 5,
    "catalog": 6, "cli": 6,
}


def _modules():
    for dirpath, _, files in os.walk(PKG):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                mod = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
                yield (mod[: -len(".__init__")] if mod.endswith(".__init__") else mod), path


def _imports(mod, path):
    """``(target module, line)`` of every import of the package in a file (lazy ones too)."""
    parts = mod.split(".")
    is_pkg = path.endswith("__init__.py")
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level + (1 if is_pkg else 0)]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            if name.startswith("avalanche_mm."):
                yield name, node.lineno


def test_imports_go_down_the_layers_only():
    wrong = []
    for mod, path in _modules():
        part = mod.split(".")[1] if "." in mod else None
        if part not in LAYERS:
            continue
        for target, line in _imports(mod, path):
            tpart = target.split(".")[1]
            if tpart in LAYERS and tpart != part and LAYERS[tpart] > LAYERS[part]:
                wrong.append(f"{mod} (line {line}) imports {target}: {part} is below {tpart}")
    assert not wrong, "\n".join(wrong)


def test_every_module_imports_on_its_own():
    """Each package, each registry module and each module of experiments/ (where the
    config <-> registry cycle was) imported first, in a fresh package state (third-party
    libraries stay loaded): an import cycle among them fails here. The original modules
    are put back."""
    import importlib
    import traceback

    mods = [
        m for m, path in _modules()
        if path.endswith("__init__.py") or m.startswith("avalanche_mm.experiments.")
        or m.endswith((".registry", ".catalog", ".cli", ".schema", ".build", ".loggers", ".bundle"))
    ]
    ours = lambda k: k == "avalanche_mm" or k.startswith("avalanche_mm.")  # noqa: E731
    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    bad = []
    try:
        for m in mods:
            for k in [k for k in sys.modules if ours(k)]:
                del sys.modules[k]
            try:
                importlib.import_module(m)
            except Exception:
                bad.append(f"{m}: {traceback.format_exc().strip().splitlines()[-1]}")
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
    assert not bad, "\n".join(bad)


def test_no_second_registry_in_experiments():
    """experiments/ is the glue of a run: it defines no registry, and its config module
    does not import the former benchmark/model module (the cycle of old)."""
    import importlib

    from avalanche_mm.registry import Registry

    config = os.path.join(PKG, "experiments", "config.py")
    assert "avalanche_mm.experiments.registry" not in {t for t, _ in _imports("avalanche_mm.experiments.config", config)}
    for mod, _ in _modules():
        if mod.startswith("avalanche_mm.experiments"):
            module = importlib.import_module(mod)
            own = [k for k, v in vars(module).items() if isinstance(v, Registry) and not k.isupper()]
            defined_here = [k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, Registry) and v.__module__ == mod]
            assert not own and not defined_here, (mod, own, defined_here)
