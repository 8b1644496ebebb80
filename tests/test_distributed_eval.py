"""Sharded evaluation under several processes (gloo, 2 processes, CPU): the sharding plan,
the gather, and the metrics of fusion, CLIP (zero-shot head) and retrieval studies against
the 1-process evaluation."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

from avalanche_mm import distributed as D

sys.path.insert(0, os.path.dirname(__file__))
import ddp_eval_workers as E  # noqa: E402


def test_eval_shard_counts_and_indices():
    # 7 samples, global batch 3, 2 ranks: minibatches [0,1,2] [3,4,5] [6]
    assert D.eval_shard_counts(7, 3, 2) == [[2, 1], [2, 1], [1, 0]]
    assert D.shard_eval_batches(7, 3, 2, 0) == [[0, 1], [3, 4], [6]]
    assert D.shard_eval_batches(7, 3, 2, 1) == [[2], [5], []]
    # smaller than the world: one minibatch, ranks without rows still take part
    assert D.eval_shard_counts(1, 4, 3) == [[1, 0, 0]]
    assert D.shard_eval_batches(1, 4, 3, 2) == [[]]
    assert D.eval_shard_counts(0, 4, 2) == []
    # every rank's slices, concatenated in rank order, are the 1-process minibatches: no sample
    # skipped or repeated (DistributedSampler would pad by repeating samples)
    for n in range(0, 40):
        for b in (1, 2, 3, 5, 8):
            for w in (1, 2, 3, 4):
                per_rank = [D.shard_eval_batches(n, b, w, r) for r in range(w)]
                batches = [sum((per_rank[r][k] for r in range(w)), []) for k in range(len(per_rank[0]))]
                assert batches == [list(range(s, min(s + b, n))) for s in range(0, n, b)]
                sizes = D.eval_shard_counts(n, b, w)
                assert all(max(c) - min(c) <= 1 for c in sizes)
    with pytest.raises(ValueError, match="batch >= 1"):
        D.eval_shard_counts(5, 0, 2)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        D.shard_eval_batches(5, 2, 2, 2)


def test_distributed_eval_setting():
    import copy

    from avalanche_mm.experiments.config import SCHEMA, ConfigError, validate_config
    from avalanche_mm.strategies.template import MultimodalTemplateMixin

    opt = SCHEMA.fields["distributed"].fields["eval"]
    assert opt.default == "sharded" and set(opt.choices) == {"sharded", "replicated"}
    cfg = copy.deepcopy(E.CONFIG)
    cfg["studies"] = {"av": cfg["studies"]["av"]}
    assert validate_config(copy.deepcopy(cfg))["distributed"]["eval"] == "sharded"
    cfg["distributed"] = {"eval": "all"}
    with pytest.raises(ConfigError, match="distributed.eval"):
        validate_config(cfg)
    m = MultimodalTemplateMixin()
    assert m.distributed_eval == "sharded"
    m.distributed_eval = "replicated"
    with pytest.raises(ValueError, match="distributed.eval: got 'all'"):
        m.distributed_eval = "all"


def test_row_helpers_outside_sharded_evaluation_and_in_batch_submodules():
    """1 process: ``map_eval_rows`` is ``fn(mb_x, mb_task_id)`` and ``gather_eval_rows`` the
    identity; a model whose in-batch output comes from a submodule is refused for sharding."""
    import torch
    from torch import nn

    from avalanche_mm.strategies.template import MultimodalTemplateMixin

    m = MultimodalTemplateMixin()
    m.mbatch = [torch.ones(3, 2), torch.zeros(3), torch.zeros(3, dtype=torch.long)]
    m.mb_x, m.mb_task_id = m.mbatch[0], m.mbatch[-1]
    assert torch.equal(m.map_eval_rows(lambda x, t: x * 2 + t[:, None]), torch.full((3, 2), 2.0))
    y = torch.arange(3)
    assert m.gather_eval_rows(y) is y

    class InBatch(nn.Module):
        def sharded_eval_output(self, output, gather):
            return output

    m.model = nn.Sequential(nn.Linear(2, 2), InBatch())
    with pytest.raises(D.DistributedError, match="submodule '1' .*distributed.eval: replicated"):
        m._check_sharded_model()
    m.model = InBatch()
    m._check_sharded_model()


def _same(a, b):
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_sharded_evaluation_matches_one_process(tmp_path):
    """Each study trains one experience under 2 processes, then evaluates its test stream twice
    with the same weights: ``replicated`` (every rank runs the plain Avalanche loop over the whole
    stream: the 1-process evaluation) and ``sharded``. The test experiences have 7 samples (global
    eval batch 3: minibatches of 3, 3, 1; 7 is odd) and 1 sample (fewer than the ranks).
    Every metric value is compared with ``==`` (NaN equal to NaN): the gathered minibatch is the
    1-process one, and a row's output does not depend on which rows share its forward pass
    (eval mode, row-wise models; the retrieval head recomputes its in-batch similarities from
    the gathered features). Float reductions then run on identical inputs in the same order.
    Only the wall-clock training times differ. Each rank really ran its forward passes, the
    modality-ablation passes included, on its own rows only (plus a placeholder row where its
    slice was empty); per-row state a plugin gathers with ``gather_eval_rows`` is the global
    minibatch's (checked in the workers)."""
    out = str(tmp_path / "eval")
    E.fork(E.eval_case, 2, out)
    res = json.load(open(out + ".0"))
    res1 = json.load(open(out + ".1"))
    timing = ("TrainTime", "TrainThroughput")
    for study, modes in res.items():
        a, b = modes["replicated"], modes["sharded"]
        assert sorted(a) == sorted(b), study
        for k in a:
            if k == "rows_forwarded" or k.startswith(timing):
                continue
            assert _same(a[k], b[k]), (study, k, a[k], b[k])
        n_eval = 3 if study == "clip" else 1  # the CLIP study: before training and after each experience
        passes = a["rows_forwarded"][0] // 7  # forward passes per minibatch (modality ablations included)
        assert passes >= (4 if study == "av" else 1), (study, a["rows_forwarded"])
        assert a["rows_forwarded"] == [7 * passes, passes] * n_eval == res1[study]["replicated"]["rows_forwarded"]
        # sharded: rank 0 forwards 2+2+1 and 1 rows; rank 1 forwards 1+1 (+1 placeholder) and 1 placeholder
        assert b["rows_forwarded"] == [5 * passes, passes] * n_eval, (study, b["rows_forwarded"])
        assert res1[study]["sharded"]["rows_forwarded"] == [3 * passes, passes] * n_eval
    names = {k.split("/")[0] for modes in res.values() for k in modes["sharded"]}
    for metric in ("Top1_Acc_Exp", "Loss_Stream", "UnimodalAcc_audio_Exp", "FusedAcc_Exp", "ModalityShapley_image_Exp",
                   "ModalityContribution_audio_Stream", "AccMatrix_AvgSeen", "Align_ModalityGap", "RetrievalR1_Exp",
                   "RetrievalMatrix_t2i_R1_Phase001", "ZeroShotHeldOut_Acc", "MTIL_Transfer", "MTIL_Last", "AccMatrix_FWT"):
        assert metric in names, metric
