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

Evaluation is sharded by default (``distributed.eval: sharded``): every
*global* evaluation minibatch is split into contiguous, disjoint slices, one per
rank (:func:`shard_eval_batches`, no padding duplicates), each rank runs the
forward pass on its slice, and :func:`all_gather_rows` puts the global
minibatch (inputs, targets, task labels, outputs) back together, in the
1-process order, on every rank before the metrics read it - so every metric
sees what a 1-process evaluation sees. ``distributed.eval: replicated`` makes
every rank evaluate the whole stream instead. Only rank 0 writes files and logs.
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
    base = torch.tensor([torch.initial_seed() % (2**63 - 1)], dtype=torch.int64, device=_cdev())
    if world_size() > 1:
        dist.broadcast(base, src=src)  # NCCL moves only GPU tensors: _cdev() is the rank's GPU there
    import zlib

    seed = zlib.crc32(repr((int(base), salt)).encode("utf-8"))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _replicable(t) -> bool:
    return torch.is_tensor(t) and (t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.bool))


def state_checksum(module: nn.Module) -> torch.Tensor:
    """Two float64 sums per tensor of the module's state (values and position-weighted values)."""
    return _checksum_of({k: t for k, t in module.state_dict().items() if _replicable(t) and t.numel()})


def check_replicas_equal(module: nn.Module, *, where: str, rtol: float = 0.0) -> None:
    """Raise when the module's state differs between ranks.

    :param where: what just happened (named in the message).
    :param rtol: relative tolerance (0: exact).
    """
    if is_distributed():
        state = {f"model.{k}": t for k, t in module.state_dict().items() if _replicable(t) and t.numel()}
        _check_state_equal(state, where=where, rtol=rtol)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers into every rank's module."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


# ---------------------------------------------------------------------------
# sharded evaluation
# ---------------------------------------------------------------------------
#: the evaluation modes (``distributed.eval``)
EVAL_MODES = ("sharded", "replicated")


def eval_shard_counts(n: int, batch: int, world: int) -> List[List[int]]:
    """Rows each rank takes of each global evaluation minibatch.

    A stream of ``n`` samples read in global minibatches of ``batch`` (the last
    one shorter) gives ``ceil(n / batch)`` minibatches; minibatch ``k`` of
    ``n_k`` rows is split into ``world`` contiguous slices whose sizes differ by
    at most one (the first ``n_k % world`` ranks take one more). A rank may get
    0 rows (a minibatch smaller than the world); it still takes part in the
    iteration. Pure function.

    :return: ``counts[k][r]``: rows of minibatch ``k`` that rank ``r`` evaluates.
    :raises ValueError: a negative ``n`` or a non-positive ``batch``/``world``.
    """
    n, batch, world = int(n), int(batch), int(world)
    if n < 0 or batch < 1 or world < 1:
        raise ValueError(f"eval_shard_counts: expected n >= 0, batch >= 1, world >= 1; got n={n}, batch={batch}, world={world}")
    out = []
    for start in range(0, n, batch):
        n_k = min(batch, n - start)
        base, extra = divmod(n_k, world)
        out.append([base + (1 if r < extra else 0) for r in range(world)])
    return out


def shard_eval_batches(n: int, batch: int, world: int, rank: int) -> List[List[int]]:
    """The dataset indices rank ``rank`` evaluates in each global minibatch.

    Global minibatch ``k`` holds indices ``k*batch ... min((k+1)*batch, n) - 1``
    (the 1-process evaluation order); rank ``r`` takes the ``r``-th contiguous
    slice of it (sizes from :func:`eval_shard_counts`), so the slices of all
    ranks, concatenated in rank order, are exactly that minibatch: no sample is
    skipped or repeated (unlike ``DistributedSampler``, which pads by repeating
    samples). Pure function.

    :return: one (possibly empty) list of indices per global minibatch.
    """
    if not 0 <= int(rank) < int(world):
        raise ValueError(f"shard_eval_batches: rank {rank} is not in [0, {world})")
    out = []
    for k, counts in enumerate(eval_shard_counts(n, batch, world)):
        lo = k * int(batch) + sum(counts[:rank])
        out.append(list(range(lo, lo + counts[rank])))
    return out


class _Leaf:
    __slots__ = ("tensor", "pad")

    def __init__(self, tensor: torch.Tensor, pad: float):
        self.tensor, self.pad = tensor, pad


def _flatten_rows(obj: Any, leaves: List[_Leaf], where: str):
    """Collect the tensors of a nested batch; return a function rebuilding it from new tensors.

    A multimodal batch (:class:`~avalanche_mm.data.MultimodalBatch`, recognised by its
    ``present``/``lengths``/``pad_values``: this layer does not import the data layer) keeps
    its presence masks, lengths and pad values."""
    if obj is None:
        return lambda it: None
    if isinstance(obj, torch.Tensor):
        if obj.dim() == 0:
            raise DistributedError(
                f"sharded evaluation: {where} is a 0-d tensor (no batch axis) and cannot be gathered "
                "row-wise; set distributed.eval: replicated"
            )
        leaves.append(_Leaf(obj, 0.0))
        return lambda it: next(it)
    if isinstance(obj, dict) and all(hasattr(obj, a) for a in ("present", "lengths", "pad_values")):
        names = list(obj.keys())
        for m in names:
            leaves.append(_Leaf(obj[m], float(obj.pad_values.get(m, 0))))
        for m in names:
            leaves.append(_Leaf(obj.present[m], 0.0))
        len_names = list(obj.lengths.keys())
        for m in len_names:
            leaves.append(_Leaf(obj.lengths[m], 0.0))
        pads, kind = dict(obj.pad_values), type(obj)

        def rebuild_mm(it):
            data = {m: next(it) for m in names}
            present = {m: next(it) for m in names}
            lengths = {m: next(it) for m in len_names}
            return kind(data, present=present, lengths=lengths, pad_values=pads)

        return rebuild_mm
    if isinstance(obj, dict):
        keys = list(obj.keys())
        parts = [_flatten_rows(obj[k], leaves, f"{where}[{k!r}]") for k in keys]
        kind = type(obj)

        def rebuild_map(it):
            d = {k: p(it) for k, p in zip(keys, parts)}
            try:
                return kind(d)
            except TypeError:
                return d

        return rebuild_map
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        parts = [_flatten_rows(v, leaves, f"{where}.{f}") for f, v in zip(obj._fields, obj)]
        return lambda it: type(obj)(*(p(it) for p in parts))
    if isinstance(obj, (list, tuple)):
        parts = [_flatten_rows(v, leaves, f"{where}[{i}]") for i, v in enumerate(obj)]
        return lambda it: type(obj)(p(it) for p in parts)
    raise DistributedError(
        f"sharded evaluation: {where} is a {type(obj).__name__}, which cannot be gathered across "
        "ranks (only tensors, multimodal batches, dicts, lists and tuples of them can); "
        "set distributed.eval: replicated"
    )


def _to_bytes(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.view(torch.uint8)


def _from_bytes(b: torch.Tensor, dtype: torch.dtype, shape) -> torch.Tensor:
    if dtype == torch.bool:
        return b.view(torch.uint8).reshape(shape).bool()
    return b.view(dtype).reshape(shape)


def all_gather_rows(obj: Any, counts: Sequence[int], *, where: str = "minibatch") -> Any:
    """Gather a nested batch whose tensors hold this rank's rows, in rank order.

    Every tensor of ``obj`` (tensors, :class:`~avalanche_mm.data.MultimodalBatch`
    with its presence masks and lengths, dicts, lists, tuples, named tuples;
    None kept) has the batch on axis 0: this rank's ``counts[rank]`` rows. The
    result has the same structure and, in every tensor, the rows of rank 0,
    then rank 1, ... (the 1-process order when the ranks hold consecutive
    slices, :func:`shard_eval_batches`). Ranks may disagree on the other axes'
    sizes (a variable-length modality padded to a rank-local longest row): each
    tensor is padded to the largest size with its pad value (a multimodal
    batch's ``pad_values``, else 0), as the collate pads a global minibatch.
    Two collectives: the shapes, then one byte buffer with every tensor.

    :param counts: rows per rank (the same list on every rank). A rank whose
        count is 0 contributes nothing: its tensors may hold placeholder rows
        (the forward pass of a rank without rows in the last minibatch runs on one).
    :param where: what is gathered (named in errors).
    """
    w, r = world_size(), rank()
    counts = [int(c) for c in counts]
    if len(counts) != w:
        raise DistributedError(f"all_gather_rows: {len(counts)} counts for {w} ranks")
    leaves: List[_Leaf] = []
    rebuild = _flatten_rows(obj, leaves, where)
    if w <= 1 or not leaves:
        return obj
    for leaf in leaves:
        if counts[r] and leaf.tensor.shape[0] != counts[r]:
            raise DistributedError(
                f"sharded evaluation: a tensor of the {where} has {leaf.tensor.shape[0]} rows, expected {counts[r]} "
                "(this rank's slice of the global minibatch); a model or plugin that changes the number of "
                "rows cannot be evaluated sharded; set distributed.eval: replicated"
            )
        leaf.tensor = leaf.tensor[: counts[r]]
    device = leaves[0].tensor.device
    # 1) the trailing shapes of every tensor on every rank
    dims = [leaf.tensor.dim() for leaf in leaves]
    mine = torch.tensor([s for leaf in leaves for s in leaf.tensor.shape[1:]] + [len(leaves)], dtype=torch.int64, device=device)
    shapes = [torch.zeros_like(mine) for _ in range(w)]
    dist.all_gather(shapes, mine)
    shapes = [s.tolist() for s in shapes]
    if any(s[-1] != len(leaves) for s in shapes):
        raise DistributedError(f"sharded evaluation: the ranks' {where} have different structures")
    trailing: List[List[tuple]] = []  # [leaf][rank] -> trailing shape
    off = 0
    for d in dims:
        trailing.append([tuple(s[off: off + d - 1]) for s in shapes])
        off += d - 1
    # 2) one byte buffer: every tensor padded to (max rows, max trailing shape)
    max_rows = max(counts)
    parts, layout = [], []
    for leaf, tr in zip(leaves, trailing):
        t = leaf.tensor
        full = tuple(max(x) for x in zip(*tr)) if tr[0] else ()
        padded = t.new_full((max_rows, *full), leaf.pad) if t.dtype != torch.bool else t.new_zeros((max_rows, *full))
        padded[tuple(slice(0, n) for n in t.shape)] = t
        b = _to_bytes(padded)
        extra = (-b.numel()) % 8  # keep every tensor 8-byte aligned in the buffer
        parts.append(b)
        if extra:
            parts.append(torch.zeros(extra, dtype=torch.uint8, device=device))
        layout.append((t.dtype, full, b.numel(), b.numel() + extra))
    buf = torch.cat(parts)
    bufs = [torch.empty_like(buf) for _ in range(w)]
    dist.all_gather(bufs, buf)
    out = []
    pos = 0
    for leaf, (dtype, full, nbytes, step) in zip(leaves, layout):
        pieces = []
        for q in range(w):
            if counts[q] == 0:
                continue
            t = _from_bytes(bufs[q][pos: pos + nbytes], dtype, (max_rows, *full))
            pieces.append(t[: counts[q]])
        out.append(torch.cat(pieces) if pieces else leaf.tensor)
        pos += step
    return rebuild(iter(out))


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
    "EVAL_MODES",
    "eval_shard_counts",
    "shard_eval_batches",
    "all_gather_rows",
    "usable_cpus",
    "check_launch",
]


# ---------------------------------------------------------------------------
# collectives for the methods' own state (queues, counts, scores, in-batch terms)
# ---------------------------------------------------------------------------
from typing import Tuple  # noqa: E402


def _cdev(t: Optional[torch.Tensor] = None) -> torch.device:
    """The device collectives run on: the rank's GPU under NCCL, else the CPU (or ``t``'s)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if t is None else t.device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the ranks (a new tensor on ``t``'s device; ``t`` itself when
    not distributed)."""
    if not is_distributed():
        return t
    out = t.detach().to(_cdev(t), copy=True)
    dist.all_reduce(out)
    return out.to(t.device)


def _gather_sizes(n: int, device=None) -> List[int]:
    device = _cdev()
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([int(n)], dtype=torch.int64, device=device))
    return [int(s) for s in sizes]


def _order(sizes: Sequence[int], order: str) -> Optional[torch.Tensor]:
    """Row permutation from rank-major concatenation to ``order`` (None: keep rank-major)."""
    if order not in ("rank", "sampler"):
        raise ValueError(f"order must be 'rank' or 'sampler', got {order!r}")
    w = len(sizes)
    if order == "rank" or w == 1 or len(set(sizes)) != 1:
        return None
    b = sizes[0]
    # sampler order: global row i*w + r is rank r's row i (DistributedSampler deals indices round-robin)
    return torch.arange(w * b).view(w, b).t().reshape(-1)


def _own_positions(sizes: Sequence[int], perm: Optional[torch.Tensor], device) -> torch.Tensor:
    r = rank()
    start = sum(sizes[:r])
    own = torch.arange(start, start + sizes[r])
    if perm is not None:
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.numel())
        own = inv[own]
    return own.to(device)


def _gather_padded(t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    m = max(sizes)
    home = t.device
    t = t.to(_cdev(t))
    pad = t
    if t.shape[0] < m:
        pad = torch.cat([t, t.new_zeros((m - t.shape[0],) + tuple(t.shape[1:]))])
    parts = [torch.empty_like(pad) for _ in sizes]
    dist.all_gather(parts, pad.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(home)


def gather_rows(t: torch.Tensor, *, order: str = "rank") -> Tuple[torch.Tensor, torch.Tensor]:
    """Every rank's rows of ``t`` (no gradient), and the positions of this rank's rows in them.

    Ranks may hold different numbers of rows. ``order="rank"``: rank 0's rows, then rank
    1's, ...; ``order="sampler"``: when every rank has the same number of rows, the order
    in which a 1-process run with the same global batch holds them (``DistributedSampler``
    deals the shuffled indices round-robin: global row ``i * world + r`` is rank ``r``'s
    row ``i``), else rank order. Not distributed: ``(t, arange(len(t)))``.

    :return: ``(rows, own)`` with ``rows[own]`` equal to ``t``.
    """
    t = t.detach()
    if not is_distributed():
        return t, torch.arange(t.shape[0], device=t.device)
    sizes = _gather_sizes(t.shape[0], t.device)
    full = _gather_padded(t, sizes)
    perm = _order(sizes, order)
    if perm is not None:
        full = full[perm.to(full.device)]
    return full, _own_positions(sizes, perm, t.device)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for this rank's rows.

    The gradient a rank receives from rank ``r``'s loss is weighted by ``w_r / w_own``
    (the ranks' weights in :func:`average_gradients`, their minibatch sizes), so after
    the weighted gradient average the result is the gradient of the global batch's loss
    even when the ranks hold different numbers of rows.
    """

    @staticmethod
    def forward(ctx, t, weight, sizes, perm):
        ctx.sizes, ctx.perm, ctx.weight = sizes, perm, float(weight)
        full = _gather_padded(t.detach(), sizes)
        if perm is not None:
            full = full[perm.to(full.device)]
        return full

    @staticmethod
    def backward(ctx, grad):
        g = grad.contiguous() * ctx.weight
        if ctx.perm is not None:  # back to rank-major rows
            inv = torch.empty_like(ctx.perm)
            inv[ctx.perm] = torch.arange(ctx.perm.numel())
            g = g[inv.to(g.device)]
        home = g.device
        g = g.to(_cdev(g)).contiguous()
        dist.all_reduce(g)
        g = g.to(home)
        r = rank()
        start = sum(ctx.sizes[:r])
        return g[start: start + ctx.sizes[r]] / ctx.weight, None, None, None


def gather_rows_with_grad(t: torch.Tensor, *, weight: Optional[float] = None,
                          order: str = "rank") -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`gather_rows` through which the gradient flows back to the rank that owns each row.

    For in-batch terms computed over the global batch (contrastive logits of this rank's
    rows against every rank's rows): each rank takes the mean over its own rows, the
    gradients are averaged as usual, and the result is the gradient of the 1-process loss
    on the global batch (the ``gather_with_grad`` + ``local_loss`` formulation of
    open_clip, SimCLR's ``GatherLayer``).

    :param weight: this rank's weight in the gradient average (default: ``len(t)``, the
        minibatch size when ``t`` has one row per sample).
    :return: ``(rows, own)``: every rank's rows (this rank's carry ``t``'s graph) and the
        positions of this rank's rows.
    """
    if not is_distributed():
        return t, torch.arange(t.shape[0], device=t.device)
    sizes = _gather_sizes(t.shape[0], t.device)
    w = float(t.shape[0] if weight is None else weight)
    if w <= 0:
        w = 1.0
    perm = _order(sizes, order)
    full = _GatherWithGrad.apply(t, w, sizes, perm)
    return full, _own_positions(sizes, perm, t.device)


def shard(seq, *, world: Optional[int] = None, rank_: Optional[int] = None):
    """This rank's share of a sequence every rank holds whole: items ``rank::world``
    (how ``DistributedSampler`` deals; the sequence itself when not distributed)."""
    w = world_size() if world is None else int(world)
    r = rank() if rank_ is None else int(rank_)
    return seq[r::w] if w > 1 else seq


def shared_seed(*salt: Any) -> int:
    """A seed identical on every rank and for any number of processes: rank 0's
    ``torch.initial_seed()`` (the last explicit seed) mixed with ``salt``. One broadcast
    when distributed; outside a process group the local initial seed is used."""
    import zlib

    base = torch.tensor([torch.initial_seed() % (2**63 - 1)], dtype=torch.int64)
    if is_distributed():
        base = base.to(_cdev())
        dist.broadcast(base, src=0)
    return zlib.crc32(repr((int(base), salt)).encode("utf-8")) & 0x7FFFFFFF


def replicated_or_summed(t: torch.Tensor, groups: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """Counts of the global batch from per-rank counts, one collective.

    ``t`` is a 1-D tensor of per-rank counts made of ``groups`` (``(start, stop)``
    slices). A group whose counts are the same on every rank came from inputs every
    rank processed whole (e.g. a text tower run on the class prompts): it is kept;
    any other group came from the rank's shard of the batch: it is summed over the ranks.
    """
    if not is_distributed():
        return t
    rows, _ = gather_rows(t.reshape(1, -1).double())
    out = t.detach().clone().double()
    for a, b in groups:
        block = rows[:, a:b]
        same = bool((block == block[0:1]).all())
        out[a:b] = block[0] if same else block.sum(0)
    return out.to(t.dtype)


#: attribute names never compared between ranks (the last minibatch's transient values)
_TRANSIENT_PREFIXES = ("last", "_last")


def _collect_state(obj: Any, name: str, out: dict, seen: set, skip: set, depth: int) -> None:
    if depth > 6 or obj is None or isinstance(obj, (str, bytes, bool, int, float)):
        return
    if id(obj) in seen or id(obj) in skip:
        return
    seen.add(id(obj))
    if torch.is_tensor(obj):
        if obj.is_floating_point() or obj.dtype in (torch.int64, torch.int32, torch.bool, torch.uint8):
            out[name] = obj
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "fiub":
            out[name] = torch.as_tensor(np.ascontiguousarray(obj))
        return
    if isinstance(obj, nn.Module):
        for k, v in obj.state_dict().items():
            if id(v) not in skip:
                _collect_state(v, f"{name}.{k}", out, seen, skip, depth + 1)
        return
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            if isinstance(k, str) and k.startswith(_TRANSIENT_PREFIXES):
                continue
            _collect_state(obj[k], f"{name}[{k}]", out, seen, skip, depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _collect_state(v, f"{name}[{i}]", out, seen, skip, depth + 1)
        return
    if isinstance(obj, (torch.Generator, torch.optim.Optimizer)) or callable(obj) and not hasattr(obj, "__dict__"):
        return
    try:
        from avalanche.benchmarks.utils import AvalancheDataset
    except Exception:  # pragma: no cover - avalanche is a dependency
        AvalancheDataset = ()  # type: ignore
    if isinstance(obj, AvalancheDataset) or isinstance(obj, torch.utils.data.Dataset):
        n = len(obj) if hasattr(obj, "__len__") else 0
        out[f"{name}.len"] = torch.tensor([float(n)])
        targets = getattr(obj, "targets", None)
        if targets is not None:
            try:
                out[f"{name}.targets"] = torch.as_tensor([int(v) for v in targets], dtype=torch.int64)
            except (TypeError, ValueError):
                pass
        return
    module = type(obj).__module__ or ""
    if not module.startswith(("avalanche", "avalanche_mm")):
        return
    state_fn = getattr(obj, "state_dict", None)
    if callable(state_fn):
        try:
            _collect_state(state_fn(), name, out, seen, skip, depth + 1)
            return
        except TypeError:
            pass
    transient = set(getattr(type(obj), "ddp_transient", ()))
    for k, v in vars(obj).items():
        if k in ("strategy", "_strategy") or k in transient or k.startswith(_TRANSIENT_PREFIXES):
            continue
        _collect_state(v, f"{name}.{k}", out, seen, skip, depth + 1)


def replica_state(strategy) -> dict:
    """name -> tensor of everything a strategy keeps across steps: the model's state and
    every plugin's (their ``state_dict()`` when they define one - the checkpointed state -
    else their attributes: queues, counts, buffers, memories, teachers). Attributes named
    ``last*`` and those a plugin class lists in ``ddp_transient`` (the last minibatch's
    values, rank-local by nature) are left out, as are the strategy and the model's own
    tensors reached again through a plugin."""
    model = strategy.model
    out: dict = {}
    for k, v in sorted(model.state_dict().items()):
        if torch.is_tensor(v):
            out[f"model.{k}"] = v
    skip = {id(m) for m in model.modules()} | {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    skip.add(id(strategy))
    seen: set = set()
    try:
        from avalanche.training.plugins.evaluation import EvaluationPlugin
    except Exception:  # pragma: no cover
        EvaluationPlugin = ()  # type: ignore
    for i, p in enumerate(getattr(strategy, "plugins", []) or []):
        if isinstance(p, EvaluationPlugin) or getattr(p, "stateless", False):
            continue
        _collect_state(p, f"plugin{i}.{type(p).__name__}", out, seen, skip, 0)
    return out


def _checksum_of(state: dict) -> torch.Tensor:
    out = []
    for _, t in sorted(state.items()):
        v = t.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if v.numel() == 0:
            out.append(torch.zeros(2, dtype=torch.float64))
            continue
        w = torch.arange(1, v.numel() + 1, dtype=torch.float64) / v.numel()
        out.append(torch.stack([v.sum(), (v * w).sum()]))
    return torch.cat(out) if out else torch.zeros(1, dtype=torch.float64)


def check_strategy_replicas(strategy, *, where: str) -> None:
    """:func:`check_replicas_equal` over :func:`replica_state`: the model *and* the
    plugins' state (queues, usage counts, memories, prompt statistics). A mismatch names
    the first differing entry."""
    if is_distributed():
        _check_state_equal(replica_state(strategy), where=where)


def _check_state_equal(state: dict, *, where: str, rtol: float = 0.0) -> None:
    """Compare the checksums of ``state`` (name -> tensor) across the ranks; raise naming
    the first entry that differs (NaNs equal NaNs; ``rtol`` > 0: relative tolerance)."""
    names = sorted(state)
    mine = _checksum_of(state)
    sizes = _gather_sizes(mine.numel())
    if len(set(sizes)) != 1:
        raise DistributedError(
            f"{where}: the ranks keep different state structures (model or plugin state, {sizes} "
            "checksum entries); some state was built from rank-local data, so this method is not DDP-safe"
        )
    mine = mine.to(_cdev())  # NCCL moves only GPU tensors
    allv = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(allv, mine)
    allv = [v.cpu() for v in allv]
    ref = allv[0]
    for r, v in enumerate(allv[1:], start=1):
        close = (v - ref).abs() <= rtol * ref.abs() if rtol > 0 else v == ref
        same = close | (v.isnan() & ref.isnan())
        if not bool(same.all()):
            bad = int((~same).nonzero()[0]) // 2
            what = names[bad] if bad < len(names) else "?"
            raise DistributedError(
                f"{where}: the state on rank {r} differs from rank 0 (first difference in {what}, "
                f"checksum {float(v[2 * bad]):.6g} vs {float(ref[2 * bad]):.6g}); some state was updated from "
                "rank-local data, so this method is not DDP-safe"
            )


__all__ += [
    "all_reduce_sum",
    "gather_rows",
    "gather_rows_with_grad",
    "shard",
    "shared_seed",
    "replicated_or_summed",
    "replica_state",
    "check_strategy_replicas",
]


# ---------------------------------------------------------------------------
# per-sample random draws equal to the 1-process draws (router noise, dropout)
# ---------------------------------------------------------------------------
import contextlib  # noqa: E402
import threading  # noqa: E402


class RowMapping:
    """Where this rank's rows of the current minibatch sit in the global minibatch.

    :param sizes: every rank's number of rows (rank order).
    :param own: positions of this rank's rows in the global minibatch (1-process order).
    :param local: the number of rows this rank's forward pass actually holds (its share,
        or 1 for a placeholder row of an empty evaluation slice).
    """

    __slots__ = ("total", "own", "local")

    def __init__(self, sizes: Sequence[int], own: torch.Tensor, local: Optional[int] = None):
        self.total = int(sum(sizes))
        self.own = own.cpu()
        self.local = int(own.numel() if local is None else local)


_ROWS = threading.local()


def _current_rows() -> Optional[RowMapping]:
    if getattr(_ROWS, "replicated", 0):
        return None
    return getattr(_ROWS, "mapping", None)


def row_mapping(sizes: Sequence[int], *, order: str = "sampler", local: Optional[int] = None) -> RowMapping:
    """The :class:`RowMapping` of a minibatch split over the ranks as ``sizes`` says, no
    collective. ``order="sampler"``: the training minibatch as ``DistributedSampler`` deals it
    (global row ``i * world + r`` is rank ``r``'s row ``i`` when the shards are equal, rank
    order otherwise: the mapping :func:`gather_rows` uses); ``order="rank"``: contiguous
    slices (sharded evaluation)."""
    sizes = [int(s) for s in sizes]
    return RowMapping(sizes, _own_positions(sizes, _order(sizes, order), "cpu"), local)


def set_row_mapping(mapping: Optional[RowMapping]) -> None:
    """Make :func:`sharded_randn_like` and friends draw for the global minibatch (None: stop).
    The template sets it around each training forward pass under several processes."""
    _ROWS.mapping = mapping


@contextlib.contextmanager
def replicated_rows():
    """Inside: per-row draws are plain local draws, for inputs every rank holds whole (a text
    tower run on the class prompts): the same on every rank and equal to one process."""
    _ROWS.replicated = getattr(_ROWS, "replicated", 0) + 1
    try:
        yield
    finally:
        _ROWS.replicated -= 1


def _global_draw(shape, draw):
    """``draw(global_shape)`` restricted to this rank's rows when a row mapping is active and
    ``shape[0]`` is this rank's row count; ``draw(shape)`` otherwise."""
    m = _current_rows()
    if m is None or len(shape) == 0 or int(shape[0]) != m.local:
        return draw(tuple(shape))
    full = draw((m.total,) + tuple(shape[1:]))
    if m.own.numel() != m.local:  # a placeholder row of an empty evaluation slice: discarded anyway
        return full[:m.local] if m.total >= m.local else draw(tuple(shape))
    return full[m.own.to(full.device)]


def sharded_randn_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.randn_like(t)`` for a tensor whose rows are this rank's samples, equal to the
    rows a 1-process run draws for the same samples.

    Under a row mapping (a training forward pass under several processes) every rank draws
    the noise of the *global* minibatch from its generator (the same state on every rank, so
    the random streams stay aligned) and keeps its own rows, in the order the gathers use.
    Otherwise - one process, outside the forward pass, a tensor whose first dimension is not
    the rank's row count, or inside :func:`replicated_rows` - it is ``torch.randn_like(t)``.
    """
    return _global_draw(t.shape, lambda s: torch.randn(s, dtype=t.dtype, device=t.device))


def sharded_rand_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.rand_like(t)`` with the row mapping of :func:`sharded_randn_like`."""
    return _global_draw(t.shape, lambda s: torch.rand(s, dtype=t.dtype, device=t.device))


def sharded_dropout_mask(shape: Sequence[int], p: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """The scaled keep-mask ``F.dropout(ones(shape), p)`` (zeros and ``1/(1-p)``) with the row
    mapping of :func:`sharded_randn_like`: ``x * mask`` is ``F.dropout(x, p)`` bit for bit."""
    return _global_draw(tuple(shape), lambda s: torch.nn.functional.dropout(
        torch.ones(s, dtype=dtype, device=device), float(p), True))


def sharded_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)`` whose mask, for rows that are this rank's samples, is the
    1-process mask of those samples (see :func:`sharded_randn_like`); exactly ``F.dropout``
    when no row mapping applies."""
    if not training or p == 0.0 or _current_rows() is None or x.dim() == 0 or int(x.shape[0]) != _current_rows().local:
        return torch.nn.functional.dropout(x, p, training)
    return x * sharded_dropout_mask(x.shape, p, dtype=x.dtype, device=x.device)


class ShardedDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` (same state, same arguments) drawing through
    :func:`sharded_dropout`: for modules whose input rows are the minibatch's samples."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sharded_dropout(x, self.p, self.training)


def draws_per_row(model: nn.Module) -> bool:
    """True when some module of ``model`` makes per-sample random draws through the helpers
    above while training (it says so with a true ``draws_per_row`` attribute or property, or
    is a :class:`ShardedDropout` with ``p > 0``): the template then exchanges the ranks' row
    counts once per training forward pass to set the row mapping."""
    for m in model.modules():
        if isinstance(m, ShardedDropout):
            if m.p > 0:
                return True
        elif getattr(m, "draws_per_row", False):
            return True
    return False


__all__ += [
    "RowMapping",
    "row_mapping",
    "set_row_mapping",
    "replicated_rows",
    "sharded_randn_like",
    "sharded_rand_like",
    "sharded_dropout_mask",
    "sharded_dropout",
    "ShardedDropout",
    "draws_per_row",
]
