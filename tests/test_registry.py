"""The one registry mechanism and parameters derived from a signature."""

from __future__ import annotations

import sys
import textwrap
from typing import Annotated, List, Literal, Optional

import pytest

from avalanche_mm.registry import Range, Registry, RegistryError, params_from_signature
from avalanche_mm.strategies.registry import METHODS, CheckContext, register_method


class _Toy:
    """A toy strategy.

    :param alpha: the distillation weight,
        over two lines.
    :param mode: which features.
    :param mem_size: buffer size (None: no buffer).
    :param temperature: the temperature.
    """

    def __init__(
        self,
        *,
        model=None,
        optimizer=None,
        alpha: Annotated[float, Range(ge=0.0)] = 1.0,
        mode: Literal["teacher", "student"] = "teacher",
        mem_size: Optional[int] = None,
        temperature: Annotated[float, Range(gt=0.0)] = 2.0,
        layers: List[int] = (1, 2),
        callback=None,
    ):
        pass


def test_params_from_signature_kinds_defaults_ranges_help():
    opts = params_from_signature(_Toy, exclude=("model", "optimizer"))
    assert list(opts) == ["alpha", "mode", "mem_size", "temperature", "layers"]  # callback: no annotation
    assert opts["alpha"].kind == "float" and opts["alpha"].default == 1.0 and opts["alpha"].minimum == 0.0
    assert opts["alpha"].help == "the distillation weight, over two lines."
    assert opts["mode"].choices == ["teacher", "student"]
    assert opts["mem_size"].nullable and opts["mem_size"].kind == "int"
    assert opts["layers"].kind == "list" and opts["layers"].item == "int" and opts["layers"].default == [1, 2]
    errors: List[str] = []
    opts["alpha"].validate(-1.0, "s.alpha", errors)
    opts["temperature"].validate(0.0, "s.temperature", errors)  # exclusive bound
    opts["mode"].validate("studnt", "s.mode", errors)
    assert len(errors) == 3
    assert "s.alpha: got -1.0" in errors[0]
    assert "s.temperature" in errors[1] and "> 0.0" in errors[1]
    assert "did you mean 'student'" in errors[2]


def test_registry_unknown_name_and_duplicates():
    reg = Registry("widget")
    reg.register("alpha", 1)

    @reg.register("beta", summary="b")
    def beta():
        return 2

    assert reg["alpha"] == 1 and reg.entry("beta").meta["summary"] == "b"
    assert list(reg) == ["alpha", "beta"] and len(reg) == 2 and "beta" in reg
    with pytest.raises(RegistryError, match="unknown widget 'alpah'.*did you mean 'alpha'"):
        reg["alpah"]
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("alpha", 3)
    reg.register("alpha", 3, replace=True)
    assert reg["alpha"] == 3


def test_register_method_derives_params_and_checks_model_kind():
    name = "toy-method-registry-test"

    def need_fusion(ctx, params):
        return [] if params["alpha"] < 5 else [f"{ctx.key}.alpha: too large for this test"]

    try:
        @register_method(name, summary="toy", params_from=_Toy, model_kinds=("clip",), check=need_fusion)
        def build(ctx, params):
            return params

        spec = METHODS[name]
        assert set(spec.params) == {"alpha", "mode", "mem_size", "temperature", "layers"}
        ctx = CheckContext(key="studies.s.strategies.t", kind="fusion", model={}, benchmark={}, training={}, model_key="studies.s.model")
        (msg,) = spec.problems(ctx, {"alpha": 1.0})
        assert "needs a model of kind 'clip'" in msg and "studies.s.model.kind is 'fusion'" in msg
        ctx.kind = "clip"
        assert spec.problems(ctx, {"alpha": 1.0}) == []
        assert spec.problems(ctx, {"alpha": 9.0}) == ["studies.s.strategies.t.alpha: too large for this test"]
    finally:
        METHODS.unregister(name)


def test_entry_points_register_methods_of_another_distribution(tmp_path, monkeypatch):
    """A method living outside this repo, declared by an installed distribution's entry point."""
    pkg = tmp_path / "site"
    (pkg / "mm_ext_pkg").mkdir(parents=True)
    (pkg / "mm_ext_pkg" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from avalanche_mm.strategies.registry import register_method

            class Ext:
                '''External.

                :param beta: a weight.
                '''
                def __init__(self, *, beta: float = 0.5):
                    pass

            @register_method("ext-method", summary="from an entry point", params_from=Ext)
            def build(ctx, params):
                return params
            """
        )
    )
    dist = pkg / "mm_ext_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mm-ext-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[avalanche_mm.methods]\next = mm_ext_pkg\n")
    monkeypatch.syspath_prepend(str(pkg))
    reg = Registry("method")  # a fresh registry of the same group reads the entry point
    import avalanche_mm.strategies.registry as sr

    monkeypatch.setattr(sr, "METHODS", reg)
    try:
        assert "ext-method" in reg
        assert reg["ext-method"].params["beta"].default == 0.5
        assert reg.entry("ext-method").source == "mm_ext_pkg"
    finally:
        sys.modules.pop("mm_ext_pkg", None)


def test_broken_entry_point_names_its_distribution(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    dist = pkg / "broken_ext-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-ext\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[avalanche_mm.gadgets]\nx = no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(pkg))
    reg = Registry("gadget")
    with pytest.raises(ImportError, match="broken-ext"):
        list(reg)
