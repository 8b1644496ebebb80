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


# a plugin from another distribution (entry-point group avalanche_mm.plugins), named by
# the config's `plugins`: it hangs at HANG_AT=study/strategy/experience/iteration after
# writing a marker, so the test can kill the run in the middle of an experience
HANG_PLUGIN = """
import os, time
from avalanche.core import SupervisedPlugin

class Hang(SupervisedPlugin):
    stateless = True

    def __init__(self, marker, exp, iteration):
        super().__init__()
        self.marker, self.exp, self.iteration, self.count = marker, exp, iteration, 0

    def before_training_exp(self, strategy, **kwargs):
        self.count = 0

    def before_training_iteration(self, strategy, **kwargs):
        if strategy.experience.current_experience == self.exp and self.count == self.iteration:
            with open(self.marker, "w") as fh:
                fh.write(str(os.getpid()))
            while True:  # wait to be killed
                time.sleep(1)
        self.count += 1

def factory(ctx):
    study, strategy, exp, it = os.environ["HANG_AT"].split("/")
    if (ctx.study, ctx.strategy) != (study, strategy):
        return None
    return Hang(os.path.join(ctx.output, ".debug-hang"), int(exp), int(it))
"""


@pytest.fixture
def kill_at_hang(tmp_path):
    """``(config, output, hang_at) -> None``: run ``avalanche-mm run config --output output`` in a
    subprocess with the ``debug-hang`` plugin (an entry point of a distribution written for the
    test), wait until it hangs at ``hang_at`` = ``study/strategy/experience/iteration`` and
    SIGKILL it there: a run killed in the middle of an experience."""
    import signal
    import subprocess
    import sys
    import time

    import torch

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dist = write_distribution(tmp_path / "hang-dist", "hang-plugin", {"hangplugin.py": HANG_PLUGIN},
                              {"avalanche_mm.plugins": {"debug-hang": "hangplugin:factory"}})

    def run(config, output, hang_at):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, dist, os.environ.get("PYTHONPATH", "")]))
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # same float reductions as the test process
        env["HANG_AT"] = hang_at
        proc = subprocess.Popen(
            [sys.executable, "-m", "avalanche_mm.cli", "run", str(config), "--output", str(output), "--no-report",
             "--set", "plugins=[debug-hang]"],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        marker = os.path.join(str(output), ".debug-hang")
        deadline = time.time() + 240
        try:
            while not os.path.exists(marker):
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
                assert time.time() < deadline, "the run never reached the hang point"
                time.sleep(0.2)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stderr.close()

    return run
