"""2-process cases for the methods' DDP helpers.

Each case compares what the ranks compute on their shards, through the helpers of
:mod:`avalanche_mm.distributed`, with what one process computes on the whole batch. They
run inside the 2-process launch of tests/test_distributed_methods.py through the plugin
``test-ddp-helper-cases`` (a config's ``imports`` + ``plugins``): one process group for
everything, since starting processes is the slow part.
"""

from __future__ import annotations

import os
import types

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from avalanche_mm import distributed as D
# imported here, before the spawned worker joins the process group: Avalanche creates a logger at
# import time and refuses to do so on rank > 0 of a distributed session
from avalanche_mm.strategies import ctp as _ctp, moe_adapters as _moe, ogm_ge as _ogm  # noqa: E402,F401
from avalanche_mm.strategies import av_cil as _avcil  # noqa: E402,F401
from avalanche.core import SupervisedPlugin  # noqa: E402
from avalanche_mm.strategies.registry import register_plugin  # noqa: E402

#: rows 0..5 on rank 0, 6..9 on rank 1: uneven shards
SPLIT = {0: (0, 6), 1: (6, 10)}


def _same_on_ranks(t: torch.Tensor) -> bool:
    parts = [torch.zeros_like(t) for _ in range(D.world_size())]
    dist.all_gather(parts, t.contiguous())
    return all(torch.equal(p, parts[0]) for p in parts)


def ogm_case(rank, world):
    """OGM-GE: the coefficients from all-reduced scores are the 1-process coefficients of the
    whole batch; the shard's own coefficients are not (the two shards disagree on which
    modality dominates), and the noise generator draws the same on both ranks."""
    from avalanche_mm.strategies.ogm_ge import OGMGEPlugin, global_scores, ogm_coefficients, ogm_ratios, ogm_scores

    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 4, (10,), generator=g)
    za, zv = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    za[:6] += 6 * F.one_hot(y[:6], 4)  # audio dominates on rank 0's rows
    zv[6:] += 9 * F.one_hot(y[6:], 4)  # vision dominates on rank 1's rows
    full = ogm_coefficients(ogm_ratios(ogm_scores({"audio": za, "image": zv}, y)), alpha=0.5)
    lo, hi = SPLIT[rank]
    local_scores = ogm_scores({"audio": za[lo:hi], "image": zv[lo:hi]}, y[lo:hi])
    mine = ogm_coefficients(ogm_ratios(global_scores(local_scores)), alpha=0.5)
    local = ogm_coefficients(ogm_ratios(local_scores), alpha=0.5)
    for m in full:
        assert abs(mine[m] - full[m]) < 1e-6, (m, mine, full)  # float32 partial sums
    assert local != full  # without the reduction the ranks would modulate differently
    plugin = OGMGEPlugin(alpha=0.5)
    strategy = types.SimpleNamespace(experience=types.SimpleNamespace(current_experience=1),
                                     clock=types.SimpleNamespace(train_exp_iterations=7))
    plugin.before_training_exp(strategy)
    draw = torch.empty(5).normal_(0.0, 1.0, generator=plugin._noise_generator(strategy, torch.device("cpu")))
    assert _same_on_ranks(draw)


def gather_case(rank, world):
    """gather_rows: rank order with uneven shards, the 1-process (sampler) order with even ones."""
    lo, hi = SPLIT[rank]
    x = torch.arange(10.0).view(10, 1)
    full, own = D.gather_rows(x[lo:hi])
    assert torch.equal(full, x) and torch.equal(full[own], x[lo:hi])
    # even shards as DistributedSampler deals them: rank r holds global rows r, r + 2, ...
    part = x[rank::2]
    full, own = D.gather_rows(part, order="sampler")
    assert torch.equal(full, x) and torch.equal(full[own], part)
    assert torch.equal(D.shard(torch.arange(7)), torch.arange(7)[rank::2])
    assert _same_on_ranks(torch.tensor([D.shared_seed("x", 1)]))


def _in_batch_losses(img, txt, img_all, txt_all, own, y, y_all, img_p, txt_p, columns):
    from avalanche_mm.strategies.av_cil import class_contrastive, instance_contrastive
    from avalanche_mm.strategies.ctp import topology_loss

    info = 0.5 * (F.cross_entropy(img @ txt_all.t() / 0.1, own) + F.cross_entropy(txt @ img_all.t() / 0.1, own))
    inst = instance_contrastive(img, txt_all, 0.1, positives=own)
    cls = class_contrastive(img, txt_all, y, 0.1, "code", y_visual=y_all)
    cls_p = class_contrastive(img, txt_all, y, 0.1, "paper", y_visual=y_all)
    topo = topology_loss(img, txt, img_p, txt_p, 0.1, columns=columns, own=own)
    return info + inst + cls + cls_p + topo


def in_batch_grad_case(rank, world):
    """In-batch terms gathered with their gradient (CLIP InfoNCE, AV-CIL's instance and
    class-aware terms, CTP's topology KL): after the usual weighted gradient average the
    gradient equals the 1-process gradient on the whole batch, uneven shards included."""
    torch.manual_seed(0)
    enc_i, enc_t = nn.Linear(5, 4), nn.Linear(5, 4)
    g = torch.Generator().manual_seed(1)
    xi, xt = torch.randn(10, 5, generator=g), torch.randn(10, 5, generator=g)
    y = torch.randint(0, 3, (10,), generator=g)
    prev_i, prev_t = F.normalize(torch.randn(10, 4, generator=g), dim=1), F.normalize(torch.randn(10, 4, generator=g), dim=1)
    params = list(enc_i.parameters()) + list(enc_t.parameters())
    img, txt = F.normalize(enc_i(xi), dim=1), F.normalize(enc_t(xt), dim=1)
    ar = torch.arange(10)
    full = _in_batch_losses(img, txt, img, txt, ar, y, y, prev_i, prev_t, None)
    g_full = torch.autograd.grad(full, params)
    lo, hi = SPLIT[rank]
    img, txt = F.normalize(enc_i(xi[lo:hi]), dim=1), F.normalize(enc_t(xt[lo:hi]), dim=1)
    img_all, own = D.gather_rows_with_grad(img)
    txt_all, _ = D.gather_rows_with_grad(txt)
    y_all, _ = D.gather_rows(y[lo:hi])
    columns = {"image": img_all, "text": txt_all, "image_prev": D.gather_rows(prev_i[lo:hi])[0],
               "text_prev": D.gather_rows(prev_t[lo:hi])[0]}
    loss = _in_batch_losses(img, txt, img_all, txt_all, own, y[lo:hi], y_all, prev_i[lo:hi], prev_t[lo:hi], columns)
    for p in params:
        p.grad = None
    loss.backward()
    D.average_gradients(params, weight=hi - lo)
    for a, p in zip(g_full, params):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-6)


def counts_case(rank, world):
    """MoE-Adapters: the task's routing counts become the global batches' (sharded blocks summed,
    blocks every rank ran on the same inputs kept), before activate-freeze."""
    from avalanche_mm.strategies.moe_adapters import MoEAdaptersPlugin

    plugin = MoEAdaptersPlugin(num_tasks=2)
    start = {"text_0": torch.tensor([[5.0, 1.0, 0.0]]), "vision_0": torch.tensor([[2.0, 2.0, 2.0]])}
    added = {"text_0": torch.tensor([[4.0, 0.0, 4.0]]),  # class prompts: the same on every rank
             "vision_0": torch.tensor([[3.0, 1.0, 4.0]]) if rank == 0 else torch.tensor([[0.0, 5.0, 3.0]])}
    mixtures = {k: types.SimpleNamespace(expert_usage=start[k] + added[k]) for k in start}
    plugin.mixtures = lambda: mixtures
    plugin._usage_full = {k: v.clone() for k, v in start.items()}
    plugin.reduce_usage()
    assert torch.equal(mixtures["text_0"].expert_usage, torch.tensor([[9.0, 1.0, 4.0]]))
    assert torch.equal(mixtures["vision_0"].expert_usage, torch.tensor([[5.0, 8.0, 9.0]]))


def replica_case(rank, world, out):
    """check_strategy_replicas compares the plugins' state too (a CTP queue that differs is
    caught and named), and leaves the last minibatch's values (``last*``) alone."""
    from avalanche_mm.strategies.ctp import CTPPlugin, KeyQueue

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    plugin = CTPPlugin(queue_size=4)
    plugin.image_queue = KeyQueue(4, 3, seed=1)
    plugin.text_queue = KeyQueue(4, 3, seed=2)
    plugin.last = {"momentum_contrast": float(rank)}  # rank-local by nature: not compared
    strategy = types.SimpleNamespace(model=model, plugins=[plugin])
    names = D.replica_state(strategy)
    assert any("image_queue" in n for n in names) and any("text_queue" in n for n in names), sorted(names)
    D.check_strategy_replicas(strategy, where="after training experience 0")
    plugin.image_queue.enqueue(torch.full((1, 3), float(rank)))  # rank-local keys
    try:
        D.check_strategy_replicas(strategy, where="after training experience 1")
    except D.DistributedError as err:
        with open(out + f".{rank}", "w") as fh:
            fh.write(str(err))


def draws_case(rank, world):
    """Per-sample random draws under a row mapping (router noise, dropout masks): the ranks'
    rows, gathered, are the 1-process draw of the global minibatch - uneven shards (rank
    order) and even ones (sampler order) - and the random streams stay aligned; a whole
    MoE layer (noisy gating + expert dropout) gives the 1-process output rows."""
    from avalanche_mm.models.attach.adapters import MixtureOfAdapters

    def one_process(draw):
        torch.manual_seed(5)
        return draw(), torch.rand(1)

    lo, hi = SPLIT[rank]
    cases = [([6, 4], torch.arange(lo, hi)), ([5, 5], torch.arange(rank, 10, 2))]
    for sizes, rows in cases:
        D.set_row_mapping(D.row_mapping(sizes, order="sampler"))
        try:
            for draw in (lambda t: D.sharded_randn_like(t), lambda t: D.sharded_rand_like(t),
                         lambda t: D.sharded_dropout(torch.ones_like(t), 0.4)):
                full, after = one_process(lambda: draw(torch.empty(10, 3, 2)))
                mine, mine_after = one_process(lambda: draw(torch.empty(len(rows), 3, 2)))
                assert torch.equal(mine, full[rows]), sizes
                assert torch.equal(mine_after, after)  # the stream advanced as in one process
                with D.replicated_rows():  # inputs every rank holds whole: plain draws
                    assert torch.equal(one_process(lambda: draw(torch.empty(len(rows), 3, 2)))[0],
                                       one_process(lambda: draw(torch.empty(len(rows), 3, 2)))[0])
                    assert _same_on_ranks(one_process(lambda: draw(torch.empty(4, 3, 2)))[0])
        finally:
            D.set_row_mapping(None)
    # a mixture layer: noisy gating (a learned, non-zero noise std) and expert dropout
    torch.manual_seed(0)
    moe = MixtureOfAdapters(dim=6, num_experts=3, top_k=2, bottleneck=4, dropout=0.3)
    with torch.no_grad():
        moe.w_gate.normal_(0, 0.5)
        moe.w_noise.normal_(0, 0.5)
        for e in moe.experts:
            e.up.weight.normal_(0, 0.5)
    assert D.draws_per_row(moe)
    x = torch.randn(10, 3, 6, generator=torch.Generator().manual_seed(2))
    full, _ = one_process(lambda: moe(x))
    for sizes, rows in cases:
        D.set_row_mapping(D.row_mapping(sizes, order="sampler"))
        try:
            mine, _ = one_process(lambda: moe(x[rows]))
        finally:
            D.set_row_mapping(None)
        torch.testing.assert_close(mine, full[rows], rtol=0, atol=1e-6)
    unmapped, _ = one_process(lambda: moe(x[rows]))  # without the mapping: the ranks repeat each other's draws
    assert not torch.allclose(unmapped, full[rows], atol=1e-4)


def all_cases(rank, world, out):
    """Every case in one process group (starting processes is the slow part)."""
    ogm_case(rank, world)
    gather_case(rank, world)
    in_batch_grad_case(rank, world)
    counts_case(rank, world)
    draws_case(rank, world)
    replica_case(rank, world, out + ".replica")
    if rank == 0:
        open(out + ".done", "w").close()


class HelperCases(SupervisedPlugin):
    """Runs :func:`all_cases` once per process when training starts under 2 processes."""

    done = False

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def before_training(self, strategy, **kwargs):
        if D.world_size() != 2 or HelperCases.done:
            return
        HelperCases.done = True
        os.makedirs(self.folder, exist_ok=True)
        with torch.random.fork_rng():  # the run's random stream is left as it was
            all_cases(D.rank(), D.world_size(), os.path.join(self.folder, "case"))


@register_plugin("test-ddp-helper-cases")
def _helper_cases(ctx):
    return HelperCases(os.path.join(ctx.output, "helper-cases"))
