"""Shared test settings: offline, headless, deterministic, small thread pool."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# spinning OpenMP workers slow everything down on a busy 2-core machine (as in the CLI)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep any on-disk cache of a test inside pytest's temp folder unless a test sets one."""
    if "AVALANCHE_MM_CACHE" not in os.environ:
        monkeypatch.setenv("AVALANCHE_MM_CACHE", str(tmp_path_factory.getbasetemp() / "amm-cache"))
    yield
