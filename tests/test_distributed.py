"""Data parallel mechanisms on CPU with the gloo backend and 2 processes."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from avalanche_mm import distributed as D


sys.path.insert(0, os.path.dirname(__file__))
import ddp_workers as W  # noqa: E402


def test_mechanisms_in_two_processes(tmp_path):
    """Gradient averaging equals the global batch's gradient (uneven shards), diverged
    replicas are detected with a message naming the experience, and aligned random
    states give every rank the same draws."""
    out = str(tmp_path / "case")
    W.spawn(W.all_cases, 2, out)
    assert os.path.exists(out + ".grad") and os.path.exists(out + ".rng")
    msg = open(out + ".div.0").read()
    assert "rank 1 differs from rank 0" in msg and "not DDP-safe" in msg and "experience 0" in msg


def test_per_rank_batch_and_launch_checks(monkeypatch):
    assert D.per_rank_batch(64, world=2) == 32
    with pytest.raises(D.DistributedError, match="training.batch_size: got 7.*multiple of 2"):
        D.per_rank_batch(7, world=2)
    with pytest.raises(D.DistributedError, match="cannot be split"):
        D.per_rank_batch(1, world=2)
    monkeypatch.setattr(D, "usable_cpus", lambda: 2)
    with pytest.raises(D.DistributedError, match="has 2 usable CPU core"):
        D.check_launch(3, device="cpu")
    D.check_launch(2, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(D.DistributedError, match="'nccl' needs CUDA GPUs"):
            D.check_launch(2, device="cpu", backend="nccl")
        with pytest.raises(D.DistributedError, match="has 0 GPU"):
            D.check_launch(1, device="cuda")


# ---------------------------------------------------------------------------
# the main job under torchrun: 1 process vs 2 processes, a killed rank, resume
# ---------------------------------------------------------------------------
WORLD = {"seed": 0, "image_size": 32, "shapes": 3, "colours": 4, "textures": 2, "sizes": 2}
STUDY = {
    "name": "ddp",
    "seed": 0,
    "device": "cpu",
    "progress_bar": False,
    "loggers": [],
    "imports": ["ddp_test_plugins"],
    "plugins": ["test-record-weights", "test-kill-rank1"],
    "distributed": {"timeout": 60},
    "checkpoints": {"keep": "last"},
    "report": {"plots": False, "html": False},
    "studies": {
        "mtil": {
            "benchmark": {
                "name": "demo-mtil",
                "params": {
                    "world": WORLD,
                    "tasks": [{"name": "colours", "target": "colour"}, {"name": "shapes", "target": "shape"}],
                    "train_per_class": 8,
                    "test_per_class": 4,
                    "reference_per_combination": 2,
                },
            },
            "model": {"kind": "clip", "backbone": "demo-clip", "pretrain": {"enabled": True, "iterations": 3, "batch_size": 16}},
            "training": {"iterations": 4, "batch_size": 8, "lr": 3e-4, "warmup": 1, "label_smoothing": 0.2},
            "evaluation": {"initial": False},
            "strategies": {"finetune": {}, "er": {"mem_size": 8}, "zscl": {"we_every": 2, "ref_batch_size": 4},
                           "lwf": {}, "wiseft": {}},
        },
        "av": {
            "benchmark": {
                "name": "demo-av",
                "params": {"world": {"seed": 1, "image_size": 16, "noise": {"image": 0.6}}, "num_classes": 4,
                           "num_experiences": 2, "train_per_class": 8, "test_per_class": 4},
            },
            "model": {"kind": "fusion", "name": "fusion", "params": {"fusion": "concat", "hidden": 16, "conv_channels": [4, 8]}},
            "training": {"epochs": 2, "batch_size": 8, "lr": 5e-3, "scheduler": "constant"},
            "evaluation": {"initial": False},
            "strategies": {"finetune": {}},
        },
    },
}
RUNS = ("mtil/finetune", "mtil/er", "mtil/zscl", "mtil/lwf", "mtil/wiseft", "av/finetune")


def _avalanche_mm(args, env_extra=None, timeout=600):
    import subprocess
    import time

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.getcwd(), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", **(env_extra or {}))
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "avalanche_mm", *args], env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - t0


def test_two_processes_match_one_and_a_killed_rank_resumes(tmp_path):
    """fine-tuning, ER, ZSCL, LwF, WiSE-FT (CLIP) and a fusion study: a 2-process run (global batch 8, 4 per
    rank) against a 1-process torchrun run with the same global batch: the same global batches
    are drawn and the same buffers kept, so the weights differ only by float rounding of the
    gradient sums (another summation order), which Adam's per-coordinate normalisation amplifies
    in coordinates with near-zero gradient: per-tensor sums within rtol 1e-3 (measured: up to
    1.1e-4 after 8 steps); accuracy matrices may differ by one test sample per cell (a near-tie). Rank 1 is killed in experience 1:
    the run stops with a message naming it, and the same command resumes to the same result."""
    import json

    import yaml

    cfg = str(tmp_path / "ddp.yaml")
    with open(cfg, "w") as fh:
        yaml.safe_dump(STUDY, fh, sort_keys=False)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    marker = str(tmp_path / "killed")
    # the 1-process reference: torchrun with one process (same sampler path, same global batches)
    proc, _ = _avalanche_mm(["run", cfg, "--output", one, "--nproc-per-node", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 2 processes; rank 1 dies in experience 1 of the first strategy
    proc, seconds = _avalanche_mm(["run", cfg, "--output", two, "--nproc-per-node", "2"], {"AMM_TEST_KILL_MARKER": marker})
    assert proc.returncode != 0 and os.path.exists(marker)
    assert "rank 1 exited with code 9" in proc.stderr and "Rerun the same command to resume" in proc.stderr
    assert "Traceback" not in proc.stderr.split("avalanche-mm: the distributed run failed")[-1]
    state = json.load(open(os.path.join(two, "mtil", "finetune", "state.json")))
    assert state["finished"] == [0] and json.load(open(os.path.join(two, "run.json")))["status"] != "finished"
    # the same command resumes
    proc, _ = _avalanche_mm(["run", cfg, "--output", two, "--nproc-per-node", "2"], {"AMM_TEST_KILL_MARKER": marker})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming after experience 0" in proc.stdout
    env = json.load(open(os.path.join(two, "environment.json")))
    assert env["world_size"] == 2
    for run in RUNS:
        a = json.load(open(os.path.join(one, run, "state.json")))
        b = json.load(open(os.path.join(two, run, "state.json")))
        for ra, rb in zip(a["rows"], b["rows"]):
            for x, y in zip(ra, rb):
                assert abs(x - y) <= 1.0 / 12 + 1e-9, (run, a["rows"], b["rows"])  # one of >= 12 test samples
        for k in (0, 1):
            wa = json.load(open(os.path.join(one, run, f"weights_{k}.json")))
            wb = json.load(open(os.path.join(two, run, f"weights_{k}.json")))
            assert sorted(wa) == sorted(wb)
            for name in wa:  # sums of values: float rounding of the gradient sums only
                torch.testing.assert_close(torch.tensor(wb[name]), torch.tensor(wa[name]), rtol=1e-3, atol=1e-4,
                                           msg=lambda m, n=name: f"{run} experience {k} {n}: {m}")
    # and training changed the weights (the comparison is not between two untouched models)
    w0 = json.load(open(os.path.join(one, "mtil", "finetune", "weights_0.json")))
    w1 = json.load(open(os.path.join(one, "mtil", "finetune", "weights_1.json")))
    assert w0 != w1


def test_sharded_draws_are_plain_draws_in_one_process():
    """Outside a process group (and outside the forward pass) the sharded draws are exactly
    torch's: 1-process results are unchanged by the mechanism."""
    import torch.nn.functional as F

    t = torch.empty(5, 3)
    for ours, theirs in ((D.sharded_randn_like, torch.randn_like), (D.sharded_rand_like, torch.rand_like),
                         (lambda x: D.sharded_dropout(x + 1, 0.3), lambda x: F.dropout(x + 1, 0.3, True))):
        torch.manual_seed(1)
        a = ours(t.zero_())
        torch.manual_seed(1)
        assert torch.equal(a, theirs(t.zero_()))
    torch.manual_seed(1)
    a = D.ShardedDropout(0.3)(torch.ones(4, 2))
    torch.manual_seed(1)
    assert torch.equal(a, torch.nn.Dropout(0.3)(torch.ones(4, 2)))
    assert torch.equal(D.ShardedDropout(0.3).eval()(torch.ones(4, 2)), torch.ones(4, 2))
    # a row mapping that does not match the tensor's rows (e.g. the class prompts) draws plainly
    D.set_row_mapping(D.row_mapping([3]))
    try:
        torch.manual_seed(1)
        a = D.sharded_randn_like(t)
        torch.manual_seed(1)
        assert torch.equal(a, torch.randn_like(t))
    finally:
        D.set_row_mapping(None)
