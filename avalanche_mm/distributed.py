"""Data-parallel training across processes started by ``torchrun``.

The processes are started by PyTorch's own launcher (``torchrun`` or
``avalanche-mm run --nproc-per-node N``, which calls it); each one calls
:func:`init_from_env`, which reads torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), picks the
backend (gloo on CPU, NCCL on GPUs) and joins the process group with a bounded
timeout. Avalanche's own loaders then shard the training data with a
``DistributedSampler`` (Avalanche does this by itself once the process group
exists).

What keeps the replicas identical (see :class:`avalanche_mm.strategies.MultimodalTemplateMixin`):

- **Gradients are averaged before every optimizer step**, weighted by each
  rank's minibatch size, so a step sees the gradient of the mean loss over the
  global batch - what ``DistributedDataParallel`` computes - while the strategy
  keeps the model itself (not a wrapper), so every plugin (teachers, weight
  ensembles, adapters, routers) sees the attributes it expects.
- **Random generators are reseeded identically** before the end-of-experience
  callbacks (from rank 0's last explicit seed and the experience), so buffers,
  herding and snapshots make the same random choices on every rank, and for any
  number of processes.
- **Replicas are verified** after each experience: a checksum of every
  parameter and buffer is compared across ranks, and a mismatch stops the run
  naming the experience (a method with rank-local state is not DDP-safe).

Evaluation is replicated (every rank evaluates the whole test stream, so the
metrics are exact without a gather); only rank 0 writes files and logs.
"""

from __future__ import annotations

import datetime
import os
import random
from typing import Any, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

#: environment variables torchrun sets in every worker
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A distributed setting that cannot work, found before training."""


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def in_process_group() -> bool:
    """True inside an initialised process group (any world size, 1 included)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed): the process that writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when this process was started by torchrun (any world size).

    A 1-process torchrun run joins a process group too, so its loaders draw the
    same global batches (Avalanche's ``DistributedSampler`` path) as an
    N-process run with the same global batch: the reference for equivalence.
    """
    return all(k in os.environ for k in TORCHRUN_ENV)


def env_world_size() -> int:
    """The world size torchrun announced (1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def choose_backend(backend: str, device: str) -> str:
    """Resolve ``backend`` (``auto``, ``gloo``, ``nccl``) for ``device`` and validate it.

    :raises DistributedError: NCCL without GPUs, or an unknown backend.
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise DistributedError(f"distributed.backend: got {backend!r}, expected 'auto', 'gloo' or 'nccl'")
    wants_cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if backend == "auto":
        backend = "nccl" if wants_cuda and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise DistributedError(
                "distributed.backend: 'nccl' needs CUDA GPUs, but torch sees none on this machine; "
                "use backend 'gloo' (or 'auto') to train on CPUs"
            )
        if not dist.is_nccl_available():
            raise DistributedError("distributed.backend: this torch build has no NCCL; use 'gloo'")
    if backend == "gloo" and not dist.is_gloo_available():
        raise DistributedError("distributed.backend: this torch build has no gloo backend")
    return backend


def init_from_env(*, backend: str = "auto", device: str = "auto", timeout_s: float = 300.0) -> torch.device:
    """Join the process group torchrun set up; return this rank's device.

    Does nothing (and returns the plain device) outside torchrun. On GPUs
    each rank takes ``cuda:LOCAL_RANK``.

    :param backend: ``auto`` (NCCL on GPUs, else gloo), ``gloo`` or ``nccl``.
    :param device: ``auto``, ``cpu``, ``cuda`` (the device kind; the index comes from LOCAL_RANK).
    :param timeout_s: collective timeout: a rank that hangs or dies ends the
        run after at most this long.
    """
    cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not launched_by_torchrun():
        return torch.device("cuda" if cuda else "cpu") if device == "auto" else torch.device(device)
    backend = choose_backend(backend, device)
    local = int(os.environ["LOCAL_RANK"])
    if cuda:
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"--nproc-per-node: local rank {local} has no GPU (this node has {torch.cuda.device_count()}); "
                "start at most one process per GPU"
            )
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
    return dev


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def per_rank_batch(global_batch: int, *, what: str = "training.batch_size", world: Optional[int] = None) -> int:
    """Split a global batch size over the ranks.

    :raises DistributedError: when it does not divide evenly or is smaller than the world.
    """
    w = world_size() if world is None else world
    if w <= 1:
        return int(global_batch)
    if global_batch < w or global_batch % w:
        raise DistributedError(
            f"{what}: got {global_batch}, which cannot be split evenly over {w} processes; "
            f"use a multiple of {w} (the batch size is the global batch, each process takes batch/{w})"
        )
    return int(global_batch) // w


def average_gradients(params: Iterable[nn.Parameter], *, weight: float = 1.0) -> None:
    """All-reduce gradients so every rank holds the weighted mean (one collective per dtype).

    Each rank contributes ``grad * weight`` and the sum is divided by the sum
    of the weights (the weights are the ranks' minibatch sizes, so the result
    is the gradient of the mean loss over the global batch). A parameter
    without a gradient on some ranks counts as zero there; one without a
    gradient on every rank keeps ``grad = None``. The weight and the
    has-a-gradient flags travel in the same buffer as the gradients.
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    groups: dict = {}
    for p in params:
        groups.setdefault(p.dtype if p.is_floating_point() else torch.float32, []).append(p)
    for dtype, ps in groups.items():
        device = ps[0].device
        parts = [
            (p.grad.reshape(-1).to(dtype) * float(weight)) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype, device=device)
            for p in ps
        ]
        flags = torch.tensor([float(weight)] + [1.0 if p.grad is not None else 0.0 for p in ps], dtype=dtype, device=device)
        flat = torch.cat(parts + [flags])
        dist.all_reduce(flat)
        n_flags = len(ps) + 1
        total_w, has = float(flat[-n_flags]), flat[-n_flags + 1:]
        if total_w <= 0:
            raise DistributedError("average_gradients: the ranks' weights sum to zero (empty minibatches on every rank)")
        offset = 0
        for p, h in zip(ps, has.tolist()):
            n = p.numel()
            if h > 0:
                g = (flat[offset: offset + n] / total_w).view_as(p)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            offset += n


def align_rng(*salt: Any, src: int = 0) -> None:
    """Reseed python, numpy and torch identically on every rank.

    The new seed is derived from ``src``'s ``torch.initial_seed()`` (the last explicit
    seed, e.g. the main job's per-experience seed) and ``salt`` - not from the current
    random state, whose position depends on how much randomness training consumed, which
    varies with the per-rank batch size. So the random choices that follow (replay buffer
    updates, herding) are the same on every rank *and* for any number of processes.
    Does nothing outside a process group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    base = torch.tensor([torch.initial_seed() % (2**63 - 1)], dtype=torch.int64)
    if world_size() > 1:
        dist.broadcast(base, src=src)
    import zlib

    seed = zlib.crc32(repr((int(base), salt)).encode("utf-8"))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def state_checksum(module: nn.Module) -> torch.Tensor:
    """Two float64 sums per tensor of the module's state (values and position-weighted values)."""
    out = []
    for _, t in sorted(module.state_dict().items()):
        if not torch.is_tensor(t) or not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.bool)):
            continue
        v = t.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if v.numel() == 0:
            continue
        w = torch.arange(1, v.numel() + 1, dtype=torch.float64) / v.numel()
        out.append(torch.stack([v.sum(), (v * w).sum()]))
    return torch.cat(out) if out else torch.zeros(1, dtype=torch.float64)


def check_replicas_equal(module: nn.Module, *, where: str, rtol: float = 0.0) -> None:
    """Raise when the module's state differs between ranks.

    :param where: what just happened (named in the message).
    :param rtol: relative tolerance (0: exact).
    """
    if not is_distributed():
        return
    mine = state_checksum(module)
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([mine.numel()], dtype=torch.int64))
    if len({int(s) for s in sizes}) != 1:
        raise DistributedError(f"{where}: the ranks' models have different structures; every rank must build the same model")
    allv = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(allv, mine)
    ref = allv[0]
    for r, v in enumerate(allv[1:], start=1):
        if not torch.allclose(v, ref, rtol=rtol, atol=0.0):
            raise DistributedError(
                f"{where}: the model on rank {r} differs from rank 0 (max checksum difference "
                f"{float((v - ref).abs().max()):.3g}); some state was updated from rank-local data, "
                "so this method is not DDP-safe"
            )


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers into every rank's module."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


def usable_cpus() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def check_launch(nproc: int, *, device: str = "auto", backend: str = "auto", threads_per_proc: int = 1) -> None:
    """Validate ``--nproc-per-node`` before any process starts.

    :raises DistributedError: more processes than the machine can run (CPU
        cores, or GPUs when training on CUDA), or an unavailable backend.
    """
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise DistributedError(f"--nproc-per-node: got {nproc!r}, expected a positive integer")
    cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        n = torch.cuda.device_count()
        if nproc > n:
            raise DistributedError(
                f"--nproc-per-node: got {nproc}, but this machine has {n} GPU(s); start at most {n} "
                "processes (one per GPU), or set device: cpu"
            )
        choose_backend(backend, device)
    else:
        choose_backend(backend, device)
        cores = usable_cpus()
        if nproc * max(1, threads_per_proc) > cores:
            raise DistributedError(
                f"--nproc-per-node: got {nproc} process(es) x {threads_per_proc} thread(s), but this machine "
                f"has {cores} usable CPU core(s); use at most {max(1, cores // max(1, threads_per_proc))} processes"
            )


__all__ = [
    "DistributedError",
    "TORCHRUN_ENV",
    "is_distributed",
    "in_process_group",
    "rank",
    "world_size",
    "is_main_process",
    "launched_by_torchrun",
    "env_world_size",
    "choose_backend",
    "init_from_env",
    "shutdown",
    "barrier",
    "per_rank_batch",
    "average_gradients",
    "align_rng",
    "state_checksum",
    "check_replicas_equal",
    "broadcast_module",
    "usable_cpus",
    "check_launch",
]
