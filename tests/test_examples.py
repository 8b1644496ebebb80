"""The user-facing example runs and prints its table."""

import importlib.util
import io
from pathlib import Path


def test_multimodal_slice_example_runs():
    path = Path(__file__).resolve().parents[1] / "examples" / "multimodal_slice.py"
    spec = importlib.util.spec_from_file_location("multimodal_slice", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    results = module.main(log=out)
    assert set(results) == {"Naive", "Replay", "LwF"}
    assert all(0.0 <= acc <= 1.0 for acc, _ in results.values())
    assert "accuracy" in out.getvalue() and "Replay" in out.getvalue()
