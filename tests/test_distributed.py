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
