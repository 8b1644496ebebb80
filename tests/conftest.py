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


def write_distribution(folder, name, modules, entry_points):
    """An installed distribution in ``folder`` (to put on ``sys.path``/``PYTHONPATH``):
    its ``modules`` (file name -> source) and a ``<name>-0.1.dist-info`` whose
    ``entry_points.txt`` declares ``entry_points`` (group -> {name: "module:attr"})."""
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    for fname, source in modules.items():
        with open(os.path.join(folder, fname), "w", encoding="utf-8") as fh:
            fh.write(source)
    info = os.path.join(folder, f"{name.replace('-', '_')}-0.1.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w", encoding="utf-8") as fh:
        fh.write(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    with open(os.path.join(info, "entry_points.txt"), "w", encoding="utf-8") as fh:
        for group, eps in entry_points.items():
            fh.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n")
    return folder


@pytest.fixture
def fake_distribution():
    """:func:`write_distribution` as a fixture."""
    return write_distribution
