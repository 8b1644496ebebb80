"""Every registered method under torchrun with 2 processes (gloo, CPU), against 1 process.

Two launches cover all methods: one 2-process run of a config holding every method not
already covered by tests/test_distributed.py (the replicas - model *and* plugin state:
memories, queues, usage counts, prompt pools - are compared after every experience, so
the run fails on any rank-local state), and a 1-process torchrun run of the same config
(the same global batches) whose accuracy matrices and weights are compared with it. The
2-process launch also runs the helpers' unit cases (tests/ddp_method_workers.py) in its
process group: starting processes is the slow part.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from avalanche_mm.strategies.registry import METHODS

sys.path.insert(0, os.path.dirname(__file__))
from test_distributed import _avalanche_mm  # noqa: E402


def test_every_registered_method_is_ddp_safe(monkeypatch):
    from avalanche_mm.experiments.launch import check_distributed

    unsafe = sorted(n for n, s in METHODS.items() if not s.distributed)
    assert unsafe == [], f"methods not DDP-safe: {unsafe}"
    cfg = {"studies": {"s": {"training": {"batch_size": 8}, "strategies": {"x": {"method": "l2p"}}}}}
    assert check_distributed(cfg, world=2) == []
    # a method registered later without distributed=True is still refused before launch
    monkeypatch.setattr(METHODS["l2p"], "distributed", False)
    (msg,) = check_distributed(cfg, world=2)
    assert "studies.s.strategies.x.method: 'l2p' is not DDP-safe yet" in msg and "moe-adapters" in msg


# ---------------------------------------------------------------------------
# the main job: every method not in tests/test_distributed.py, 1 vs 2 processes
# ---------------------------------------------------------------------------
DOMAINS = {"name": "demo-domains", "params": {
    "world": {"seed": 0, "image_size": 32, "shapes": 4, "colours": 4, "textures": 2, "sizes": 2},
    "num_classes": 4, "num_domains": 2, "train_per_class": 4, "test_per_class": 3, "reference_per_combination": 1}}
AV = {"name": "demo-av", "params": {"world": {"seed": 1, "image_size": 8, "noise": {"image": 0.4}}, "num_classes": 4,
                                    "num_experiences": 2, "train_per_class": 4, "test_per_class": 3}}
PAIRS = {"name": "world-retrieval-stream",
         "params": {"num_phases": 2, "pairs_per_combination": 2, "reference_per_combination": 2, "shapes": 3,
                    "colours": 3, "textures": 2, "sizes": 2, "heldout_classes": 4, "heldout_per_class": 2}}
TRAIN_AV = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "scheduler": "constant"}
STUDY = {
    "name": "ddp-methods", "seed": 0, "device": "cpu", "progress_bar": False, "loggers": [],
    "imports": ["ddp_test_plugins", "ddp_method_workers"], "plugins": ["test-record-weights", "test-ddp-helper-cases"],
    "distributed": {"timeout": 60}, "checkpoints": {"keep": "last"}, "report": {"plots": False, "html": False},
    "studies": {
        "clip": {
            "benchmark": DOMAINS,
            "model": {"kind": "clip", "backbone": "demo-clip", "pretrain": {"enabled": True, "iterations": 3, "batch_size": 16}},
            "training": {"iterations": 3, "batch_size": 8, "lr": 1e-2, "warmup": 1},
            "evaluation": {"initial": False, "alignment": False},
            "strategies": {
                "moe": {"method": "moe-adapters", "num_experts": 3, "bottleneck": 4, "ddas_iterations": 4,
                        "ddas_reference_iterations": 4, "ddas_threshold": None, "ddas_granularity": "sample"},
                "l2p": {"method": "l2p", "pool_size": 4, "top_k": 2, "prompt_length": 2},
                "coda": {"method": "coda-prompt", "pool_size": 4, "prompt_length": 2, "layers": [0]},
                "dual": {"method": "dualprompt", "g_length": 1, "e_length": 1, "g_layers": [0], "e_layers": [1]},
                "attri": {"method": "attriclip", "bank_size": 4, "prompt_length": 2, "top_k": 2},
                "sli": {"method": "s-liprompts", "prompt_length": 2, "n_ctx": 2, "n_clusters": 2},
                # the whole CLIP trains: a small rate keeps Adam's sign noise on near-zero gradients small
                "icarl": {"method": "icarl-clip", "memory_size": 8, "candidates": 16, "training": {"lr": 3e-4}},
                "lwfvr": {"method": "lwf-vr", "n_sentences": 8, "length": 3, "training": {"lr": 3e-4}},
            },
        },
        "av": {
            "benchmark": AV,
            "model": {"kind": "fusion", "name": "fusion", "params": {"hidden": 8, "conv_channels": [4]}},
            "training": TRAIN_AV, "evaluation": {"initial": False},
            "strategies": {"ogm": {"method": "ogm-ge", "alpha": 0.5}, "samm": {"method": "samm", "mem_size": 4}},
        },
        "att": {
            "benchmark": AV,
            "model": {"kind": "fusion", "name": "av-cil",
                      "params": {"inputs": "raw", "token_dim": 4, "audio_dim": 4, "conv_channels": [4]}},
            "training": TRAIN_AV, "evaluation": {"initial": False},
            "strategies": {"avcil": {"method": "av-cil", "mem_size": 4, "contrastive_first_task": True}},
        },
        "pairs": {
            "benchmark": PAIRS,
            "model": {"kind": "clip", "backbone": "tiny-openclip"},
            "training": {"iterations": 2, "batch_size": 8, "lr": 1e-4, "warmup": 0},
            "evaluation": {"initial": False, "alignment": False},
            "strategies": {"ctp": {"method": "ctp", "queue_size": 8}, "modx": {"method": "mod-x"},
                           "cft": {"method": "contrastive-finetune"}},
        },
    },
}
#: the same global batches give the same step up to float rounding (the weights are compared)
EXACT = ("clip/moe", "clip/l2p", "clip/coda", "clip/dual", "clip/attri", "clip/sli", "clip/icarl", "clip/lwfvr",
         "av/ogm", "att/avcil", "pairs/ctp", "pairs/cft")
#: the same in distribution only: in-batch terms kept per shard (SAMM's relational term, Mod-X's
#: off-diagonal KL): accuracies compared. (moe's per-sample router noise and expert dropout are the
#: 1-process draws through distributed.sharded_randn_like / sharded_dropout_mask: exact)
IN_DISTRIBUTION = ("av/samm", "pairs/modx")


def test_every_method_two_processes_match_one(tmp_path):
    """Every method not covered by tests/test_distributed.py, in one 2-process launch (replicas -
    model and plugin state - verified after each experience) against a 1-process torchrun launch
    with the same global batch (8; 4 per rank). Tolerances as tests/test_distributed.py: weight
    sums within rtol 1e-3 (float rounding of the gradient sums, amplified by Adam on near-zero
    gradients) for the methods whose 2-process step is the 1-process one; accuracy cells within
    one test sample (a near-tie) for all, SAMM and Mod-X included (equal in distribution only,
    see docs/scaling.md)."""
    import yaml

    covered = {s["method"] for st in STUDY["studies"].values() for s in st["strategies"].values()}
    already = {"finetune", "er", "zscl", "lwf", "wiseft", "zeroshot"}  # tests/test_distributed.py (zeroshot: no training)
    assert covered | already == {n for n, _ in METHODS.items()}
    cfg = str(tmp_path / "methods.yaml")
    with open(cfg, "w") as fh:
        yaml.safe_dump(STUDY, fh, sort_keys=False)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    proc, _ = _avalanche_mm(["run", cfg, "--output", one, "--nproc-per-node", "1", "--no-report"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc, _ = _avalanche_mm(["run", cfg, "--output", two, "--nproc-per-node", "2", "--no-report"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(os.path.join(two, "environment.json")))["world_size"] == 2
    # the helpers' cases (tests/ddp_method_workers.py), run by both ranks in that launch: OGM-GE
    # coefficients from all-reduced scores = the 1-process coefficients of the whole batch (and
    # differ from the shards' own); rows gathered in rank and sampler order; in-batch terms
    # gathered with their gradient (InfoNCE, AV-CIL's terms, CTP's topology KL) give the
    # 1-process gradient with uneven shards; MoE usage counts summed over shards and kept for
    # replicated inputs; per-sample draws (router noise, dropout) under the row mapping equal the
    # 1-process draws (uneven and even shards, a whole noisy MoE layer); the replica check covers plugin state (a differing CTP queue is named)
    # and skips the last minibatch's ``last*`` values
    cases = os.path.join(two, "helper-cases", "case")
    assert os.path.exists(cases + ".done"), proc.stderr[-3000:]
    msg = open(cases + ".replica.0").read()
    assert "experience 1" in msg and "image_queue" in msg and "not DDP-safe" in msg, msg
    for run in EXACT + IN_DISTRIBUTION:
        a = json.load(open(os.path.join(one, run, "state.json")))
        b = json.load(open(os.path.join(two, run, "state.json")))
        assert b["complete"] and len(b["rows"]) == 2, run
        n_test = 12 if not run.startswith("pairs") else 18
        for ra, rb in zip(a["rows"], b["rows"]):
            for x, y in zip(ra, rb):
                assert abs(x - y) <= 1.0 / n_test + 1e-9, (run, a["rows"], b["rows"])
        if run not in EXACT:
            continue
        for k in (0, 1):
            wa = json.load(open(os.path.join(one, run, f"weights_{k}.json")))
            wb = json.load(open(os.path.join(two, run, f"weights_{k}.json")))
            assert sorted(wa) == sorted(wb)
            for name in wa:
                if name.endswith("expert_usage"):
                    # recorded before MoE's own after_training_exp sums the ranks' counts (the record
                    # plugin runs first); the summed counts: counts_case and the replica check
                    continue
                torch.testing.assert_close(torch.tensor(wb[name]), torch.tensor(wa[name]), rtol=1e-3, atol=1e-4,
                                           msg=lambda m, n=name: f"{run} experience {k} {n}: {m}")
    # the comparison is not between untouched models
    for run in ("clip/moe", "clip/l2p", "av/ogm", "att/avcil", "pairs/ctp"):
        w0 = json.load(open(os.path.join(one, run, "weights_0.json")))
        w1 = json.load(open(os.path.join(one, run, "weights_1.json")))
        assert w0 != w1, run
