"""Shared fixtures of the benchmarks tests: tiny multimodal datasets."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch


def _load_helper(name):
    # pytest runs with --import-mode=importlib (no sys.path changes), so the helper
    # modules next to this file are registered by path under unique names
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


make_toy = _load_helper("mmbench_helpers").make_toy
_load_helper("mmbench_fixtures")


@pytest.fixture
def toy_pair():
    return make_toy(offset=0), make_toy(n_per_class=3, offset=1000)


@pytest.fixture(autouse=True)
def _one_thread():
    # the CI machine is shared: one intra-op thread is much faster under load
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
