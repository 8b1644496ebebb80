"""A run killed mid-stream (SIGKILL) resumes and ends with the metrics of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
import yaml

from avalanche_mm.cli import main

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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = {
    "name": "resume",
    "seed": 3,
    "device": "cpu",
    "progress_bar": False,
    "checkpoints": {"keep": "last"},
    "studies": {
        "mtil": {
            "benchmark": {
                "name": "demo-mtil",
                "params": {
                    "world": {"seed": 0, "image_size": 32, "shapes": 4, "colours": 4, "textures": 2, "sizes": 2},
                    "tasks": [{"name": "colours", "target": "colour"}, {"name": "shapes", "target": "shape"}],
                    "train_per_class": 4,
                    "test_per_class": 3,
                    "reference_per_combination": 2,
                },
            },
            "model": {"kind": "clip", "backbone": "demo-clip", "pretrain": {"enabled": True, "iterations": 2, "batch_size": 16}},
            # 16 samples / batch 8 = 2 batches: 3 iterations span two epochs, so metrics are
            # logged in the middle of an experience (the kill leaves uncommitted lines behind)
            "training": {"iterations": 3, "batch_size": 8, "lr": 1e-3, "warmup": 1, "label_smoothing": 0.2},
            "evaluation": {"alignment": True, "probe_size": 8},
            "strategies": {"er": {"mem_size": 8}, "zscl": {"we_every": 2, "ref_batch_size": 4}},
        }
    },
}
DETERMINISTIC = lambda name: "Time" not in name and "Throughput" not in name  # noqa: E731


def _records(out, strategy):
    path = os.path.join(out, "mtil", strategy, "metrics.jsonl")
    return [(r["name"], r["x_plot"], r["value"]) for r in map(json.loads, open(path)) if DETERMINISTIC(r["name"])]


def _state(out, strategy):
    st = json.load(open(os.path.join(out, "mtil", strategy, "state.json")))
    return {k: st[k] for k in ("finished", "rows", "baseline", "unimodal", "scalars", "complete")}


def test_killed_run_resumes_to_identical_metrics(tmp_path, fake_distribution):
    cfg_path = tmp_path / "resume.yaml"
    cfg_path.write_text(yaml.safe_dump(CFG, sort_keys=False))
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    assert main(["run", str(cfg_path), "--output", straight, "--no-report"]) == 0

    dist = fake_distribution(tmp_path / "dist", "hang-plugin", {"hangplugin.py": HANG_PLUGIN},
                             {"avalanche_mm.plugins": {"debug-hang": "hangplugin:factory"}})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, dist, os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # same float reductions as this process
    env["HANG_AT"] = "mtil/zscl/1/2"  # hang in the 2nd experience of zscl, 3rd iteration
    proc = subprocess.Popen(
        [sys.executable, "-m", "avalanche_mm.cli", "run", str(cfg_path), "--output", killed, "--no-report",
         "--set", "plugins=[debug-hang]"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    marker = os.path.join(killed, ".debug-hang")
    deadline = time.time() + 240
    while not os.path.exists(marker):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "the run never reached the hang point"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    st = json.load(open(os.path.join(killed, "mtil", "zscl", "state.json")))
    assert st["finished"] == [0] and not st["complete"]
    assert _state(killed, "er")["complete"]
    jsonl = os.path.join(killed, "mtil", "zscl", "metrics.jsonl")
    assert os.path.getsize(jsonl) > st["committed"]["metrics.jsonl"]  # uncommitted lines to drop

    assert main(["run", str(cfg_path), "--output", killed]) == 0
    for strategy in ("er", "zscl"):
        assert _state(killed, strategy) == _state(straight, strategy), strategy
        assert _records(killed, strategy) == _records(straight, strategy), strategy
        a = torch.load(os.path.join(straight, "mtil", strategy, "checkpoints", "exp_001.pt"), weights_only=False)
        b = torch.load(os.path.join(killed, "mtil", strategy, "checkpoints", "exp_001.pt"), weights_only=False)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), strategy
    assert os.listdir(os.path.join(killed, "mtil", "zscl", "checkpoints")) == ["exp_001.pt"]  # keep: last
