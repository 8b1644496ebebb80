"""Worker functions for the 2-process tests (importable by spawned processes)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from avalanche_mm import distributed as D


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, world: int = 2, *args):
    port = _free_port()
    mp.spawn(_worker, args=(world, port, fn, args), nprocs=world, join=True)


def _worker(rank, world, port, fn, args):
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    D.init_from_env(backend="gloo", device="cpu", timeout_s=60)
    try:
        fn(rank, world, *args)
    finally:
        D.shutdown()


def grad_case(rank, world, out):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(2))
    full = nn.functional.cross_entropy(model(x), y)
    g_full = torch.autograd.grad(full, list(model.parameters()))
    # uneven shards (6 + 4): weighting by the minibatch size gives the global mean's gradient
    lo, hi = (0, 6) if rank == 0 else (6, 10)
    model.zero_grad()
    nn.functional.cross_entropy(model(x[lo:hi]), y[lo:hi]).backward()
    D.average_gradients(model.parameters(), weight=hi - lo)
    for a, b in zip(g_full, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    D.check_replicas_equal(model, where="test")
    if rank == 0:
        torch.save(torch.tensor(1), out)




def diverge_case(rank, world, out):
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(float(rank))  # rank-local state
    try:
        D.check_replicas_equal(model, where="after training experience 0")
    except D.DistributedError as err:
        if rank == 1:
            pass
        with open(out + f".{rank}", "w") as fh:
            fh.write(str(err))


def rng_case(rank, world, out):
    torch.manual_seed(100 + rank)
    D.align_rng()
    v = torch.rand(4)
    allv = [torch.zeros(4) for _ in range(world)]
    dist.all_gather(allv, v)
    assert torch.equal(allv[0], allv[1])
    if rank == 0:
        torch.save(v, out)


def all_cases(rank, world, out):
    """Every mechanism case in one process group (one spawn: starting processes is the slow part)."""
    grad_case(rank, world, out + ".grad")
    diverge_case(rank, world, out + ".div")
    rng_case(rank, world, out + ".rng")
