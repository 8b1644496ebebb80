"""Shared fixtures of the benchmarks tests: tiny multimodal datasets."""

import pytest
import torch

from mmbench_helpers import make_toy


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
