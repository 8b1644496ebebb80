"""Seeding, checkpoints and the per-strategy state file (resume bookkeeping).

A strategy's folder holds ``state.json`` (written atomically after every
finished experience: the accuracy rows so far, the committed length of the
append-only logs, the checkpoint file) and ``checkpoints/exp_NNN.pt``
(model, optimizer, plugin and metric states, the strategy clock and the RNG
states, written with ``torch.save`` - Avalanche 0.6's ``save_checkpoint``
fails in this stack). Every experience starts by reseeding all generators
from ``(seed, study, strategy, experience)``, so a run resumed from
experience ``k`` replays exactly the random stream of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import zlib
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .io import atomic_write_json, read_json

STATE_FILE = "state.json"
#: 2: checkpoints are safetensors + JSON (version 1 pickled them)
STATE_VERSION = 2


def derive_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed from ``seed`` and any parts (stable across processes)."""
    return zlib.crc32(repr((int(seed),) + tuple(parts)).encode("utf-8")) & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> Dict[str, Any]:
    """The states of every global generator."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------
# plugin and metric states
# ---------------------------------------------------------------------------
_SKIP_ATTRS = {"strategy", "_strategy"}


def _object_state(obj: Any) -> Dict[str, Any]:
    """State of a plugin or metric: ``state_dict()`` when defined, else its attributes."""
    fn = getattr(obj, "state_dict", None)
    if callable(fn) and not isinstance(obj, torch.nn.Module):
        return {"__kind__": "state_dict", "state": fn()}
    attrs = {k: v for k, v in vars(obj).items() if k not in _SKIP_ATTRS}
    return {"__kind__": "attrs", "state": attrs}


def _load_object_state(obj: Any, saved: Dict[str, Any], *, model=None) -> None:
    if saved["__kind__"] == "state_dict":
        loader = obj.load_state_dict
        try:
            import inspect

            if "model" in inspect.signature(loader).parameters:
                loader(saved["state"], model=model)
                return
        except (TypeError, ValueError):
            pass
        loader(saved["state"])
    else:
        vars(obj).update(saved["state"])


def _plugins(strategy) -> List[Any]:
    from avalanche.training.plugins.evaluation import EvaluationPlugin

    return [p for p in strategy.plugins if not isinstance(p, EvaluationPlugin) and not getattr(p, "stateless", False)]


def _metrics(strategy) -> List[Any]:
    evaluator = getattr(strategy, "evaluator", None)
    return list(getattr(evaluator, "metrics", []) or [])


def strategy_state(strategy) -> Dict[str, Any]:
    """Everything needed to continue ``strategy`` after a finished experience."""
    return {
        "model": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "plugins": [(type(p).__name__, _object_state(p)) for p in _plugins(strategy)],
        "metrics": [(type(m).__name__, _object_state(m)) for m in _metrics(strategy)],
        "clock": dict(vars(strategy.clock)),
        "rng": rng_state(),
    }


def load_strategy_state(strategy, state: Dict[str, Any]) -> None:
    """Restore :func:`strategy_state` into a freshly built, identical strategy."""
    strategy.model.load_state_dict(state["model"])
    if getattr(strategy, "optimized_param_id", None) is None and hasattr(strategy, "make_optimizer"):
        # Avalanche puts every model parameter in the optimizer the first time it
        # prepares an experience; do the same before loading the saved state
        strategy.make_optimizer()
    strategy.optimizer.load_state_dict(state["optimizer"])
    for what, objs, saved in (
        ("plugins", _plugins(strategy), state["plugins"]),
        ("metrics", _metrics(strategy), state["metrics"]),
    ):
        names = [type(o).__name__ for o in objs]
        saved_names = [n for n, _ in saved]
        if names != saved_names:
            raise ValueError(
                f"checkpoint {what} {saved_names} do not match the strategy's {names}; the "
                "strategy was configured differently when the checkpoint was written."
            )
        for obj, (_, s) in zip(objs, saved):
            _load_object_state(obj, s, model=strategy.model)
    vars(strategy.clock).update(state["clock"])
    set_rng_state(state["rng"])


# ---------------------------------------------------------------------------
# pickling datasets held by plugins (replay buffers)
# ---------------------------------------------------------------------------
def materialize_dataset(dataset):
    """A self-contained copy of a multimodal Avalanche dataset (same samples, same order).

    Datasets built by benchmark generators may hold closures (target remaps,
    sample maps) that cannot be pickled; replay buffers hold such subsets. The
    copy stores the raw samples (the current transform group removed) as
    tensors, with the original collate, targets and task labels, so it
    pickles and replays exactly the same samples.
    """
    from avalanche_mm.data import make_multimodal_dataset
    from avalanche_mm.data.collate import MultimodalCollate

    raw = dataset.remove_current_transform_group() if hasattr(dataset, "remove_current_transform_group") else dataset
    xs, ys, ts = [], [], []
    for i in range(len(raw)):
        sample = raw[i]
        xs.append(sample[0])
        ys.append(int(sample[1]))
        ts.append(int(sample[2]) if len(sample) > 2 else 0)
    if not xs:
        return dataset
    if not isinstance(xs[0], dict):
        raise TypeError(
            f"cannot checkpoint a plugin dataset whose samples are {type(xs[0]).__name__}, not "
            "multimodal dicts; give the plugin a picklable dataset."
        )
    columns = {m: [x[m] for x in xs] for m in xs[0]}
    collate = getattr(dataset, "collate_fn", None)
    specs = collate.specs if isinstance(collate, MultimodalCollate) else None
    return make_multimodal_dataset(columns, ys, task_labels=ts, specs=specs)


def confined_path(folder: str, relative: Any, *, what: str = "checkpoint") -> str:
    """``folder/relative``, refusing paths that leave ``folder`` (absolute, ``..``, symlinks).

    Paths read from a results folder's state files are untrusted: an absolute
    path or one climbing out of the folder would make a resume read any file.
    """
    if not isinstance(relative, str) or not relative or os.path.isabs(relative) or "\x00" in relative:
        raise ValueError(
            f"{os.path.join(folder, STATE_FILE)}: the {what} path {relative!r} is not a relative path inside "
            "the strategy folder; the state file was edited or corrupted - delete that strategy's folder to rerun it."
        )
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, path]) != root:
        raise ValueError(
            f"{os.path.join(folder, STATE_FILE)}: the {what} path {relative!r} leaves the strategy folder "
            f"{folder}; refusing to read it - delete that strategy's folder to rerun it."
        )
    return path


def _bound(strategy) -> Dict[str, Any]:
    return {"model": strategy.model, "optimizer": strategy.optimizer}


def save_checkpoint(path: str, strategy, extra: Optional[Dict[str, Any]] = None, *, sources: Sequence[Any] = ()) -> str:
    """Write a checkpoint of ``strategy`` atomically (safetensors + JSON, no pickle).

    :param path: the destination file (``.safetensors``).
    :param strategy: the strategy after a finished experience.
    :param extra: plain data stored beside the state.
    :param sources: the benchmark's training experience datasets; replay
        buffers made of their samples are stored as indices into them.
    """
    from .checkpoint import DatasetIndex, save_tree

    payload = strategy_state(strategy)
    payload["extra"] = dict(extra or {})
    return save_tree(path, payload, index=DatasetIndex(sources), bound=_bound(strategy), kind="checkpoint")


def load_checkpoint(path: str, strategy, *, sources: Sequence[Any] = ()) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``strategy``.

    Nothing in the file is executed: tensors come from safetensors, the rest
    from JSON, and objects only of the ``avalanche``/``avalanche_mm`` packages
    are recreated (without calling their constructors).
    """
    from .checkpoint import DatasetIndex, load_tree

    if not os.path.exists(path):
        raise FileNotFoundError(
            f"checkpoint {path} is missing although the state file lists it; the results "
            "folder is incomplete - delete that strategy's folder to rerun it."
        )
    payload = load_tree(path, index=DatasetIndex(sources), bound=_bound(strategy), modules=[strategy.model], kind="checkpoint")
    if not isinstance(payload, dict) or not {"model", "optimizer", "plugins", "metrics", "clock", "rng"} <= set(payload):
        raise ValueError(f"checkpoint {path} does not hold a strategy state; delete that strategy's folder to rerun it.")
    load_strategy_state(strategy, payload)
    return payload.get("extra", {})


# ---------------------------------------------------------------------------
# the state file
# ---------------------------------------------------------------------------
def new_state(*, study: str, strategy: str, method: str, fingerprint: str, n_experiences: int) -> Dict[str, Any]:
    """An empty state for a strategy that has not started."""
    return {
        "version": STATE_VERSION,
        "study": study,
        "strategy": strategy,
        "method": method,
        "fingerprint": fingerprint,
        "n_experiences": n_experiences,
        "finished": [],
        "complete": False,
        "baseline": None,
        "rows": [],
        "unimodal": [],
        "alignment": [],
        "scalars": [],
        "baseline_scalars": {},
        "train_seconds": [],
        "eval_seconds": [],
        "committed": {},
        "digests": {},
        "checkpoint": None,
    }


def read_state(folder: str) -> Optional[Dict[str, Any]]:
    """The state of a strategy folder, or None when it has none."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        state = read_json(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise RecordError(f"{err}; {_remedy(folder)}.") from err
    if not isinstance(state, dict):
        raise RecordError(f"{path} does not hold a JSON object; {_remedy(folder)}.")
    if state.get("version") != STATE_VERSION:
        raise RecordError(
            f"{path} has state version {state.get('version')}, this avalanche-mm writes "
            f"{STATE_VERSION}; rerun into a new --output folder."
        )
    return state


class RecordError(ValueError):
    """A results folder's record is truncated, corrupt or inconsistent (the message names the file and the remedy)."""


def _remedy(folder: str) -> str:
    return (
        f"restore the file from a backup, or delete the folder {folder} to rerun that strategy "
        "(the other strategies are kept), or rerun everything with --fresh"
    )


def file_digest(path: str, size: int) -> str:
    """SHA-256 of the first ``size`` bytes of ``path``."""
    import hashlib

    h = hashlib.sha256()
    left = size
    with open(path, "rb") as fh:
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def committed_digests(folder: str, committed: Dict[str, int]) -> Dict[str, str]:
    """The digests of the committed part of each append-only file (stored in the state file)."""
    return {f: file_digest(os.path.join(folder, f), n) for f, n in committed.items()}


def _check_shape(folder: str, state: Dict[str, Any]) -> None:
    path = os.path.join(folder, STATE_FILE)

    def bad(what: str):
        raise RecordError(f"{path}: {what}; the state file is corrupt - {_remedy(folder)}.")

    n = state.get("n_experiences")
    finished = state.get("finished")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        bad(f"n_experiences is {n!r}")
    if not isinstance(finished, list) or finished != list(range(len(finished))) or len(finished) > n:
        bad(f"finished is {finished!r}, expected 0, 1, ... up to {n - 1}")
    for key in ("rows", "unimodal", "scalars", "train_seconds", "eval_seconds"):
        if not isinstance(state.get(key), list) or len(state[key]) != len(finished):
            bad(f"{key} holds {len(state.get(key) or [])} entries for {len(finished)} finished experiences")
    if not isinstance(state.get("complete"), bool) or state["complete"] != (len(finished) == n and n > 0):
        bad(f"complete is {state.get('complete')!r} with {len(finished)}/{n} experiences finished")
    committed = state.get("committed")
    if not isinstance(committed, dict) or not all(
        isinstance(k, str) and os.path.basename(k) == k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in committed.items()
    ):
        bad(f"committed is {committed!r}")
    digests = state.get("digests")
    if finished and (not isinstance(digests, dict) or set(digests) != set(committed)):
        bad("the digests of the committed files are missing")
    if finished and not isinstance(state.get("checkpoint"), str):
        bad(f"checkpoint is {state.get('checkpoint')!r}")


def verify_record(folder: str, state: Dict[str, Any]) -> None:
    """Check a strategy's whole record before resuming or keeping it.

    The state file's shape, every committed append-only file (present, at
    least as long as committed, the committed bytes unchanged: SHA-256), each
    committed JSON-lines record, and the checkpoint (confined to the folder,
    present for an unfinished strategy, a readable safetensors header). Raises
    :class:`RecordError` naming the file and the remedy; never drops data.
    """
    from .checkpoint import CheckpointError, read_header

    _check_shape(folder, state)
    if not state["finished"]:
        return
    for f, size in state["committed"].items():
        path = os.path.join(folder, f)
        if not os.path.exists(path):
            raise RecordError(f"{path} is missing but the state file says {size} bytes were committed; {_remedy(folder)}.")
        actual = os.path.getsize(path)
        if actual < size:
            raise RecordError(f"{path} is truncated: {actual} bytes, {size} were committed; {_remedy(folder)}.")
        if file_digest(path, size) != state["digests"].get(f):
            raise RecordError(f"{path} was modified or corrupted after it was committed (SHA-256 mismatch); {_remedy(folder)}.")
        if f.endswith(".jsonl"):
            with open(path, "rb") as fh:
                data = fh.read(size)
            for i, line in enumerate(data.splitlines()):
                try:
                    json.loads(line.decode("utf-8")) if line.strip() else None
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise RecordError(f"{path}, line {i + 1}: not valid JSON ({err}); {_remedy(folder)}.") from err
    try:
        ckpt = confined_path(folder, state["checkpoint"])
    except ValueError as err:
        raise RecordError(str(err)) from err
    if not os.path.exists(ckpt):
        if not state["complete"]:
            raise RecordError(f"checkpoint {ckpt} is missing although {os.path.join(folder, STATE_FILE)} lists it; {_remedy(folder)}.")
        return
    try:
        read_header(ckpt)
    except CheckpointError as err:
        raise RecordError(f"{err}; {_remedy(folder)}.") from err


def write_state(folder: str, state: Dict[str, Any]) -> None:
    """Write the state file atomically."""
    atomic_write_json(os.path.join(folder, STATE_FILE), state)


__all__ = [
    "derive_seed",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "strategy_state",
    "load_strategy_state",
    "save_checkpoint",
    "load_checkpoint",
    "confined_path",
    "materialize_dataset",
    "new_state",
    "read_state",
    "write_state",
    "STATE_FILE",
    "RecordError",
    "verify_record",
    "committed_digests",
]
