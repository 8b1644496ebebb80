"""A checkpoint format that never executes anything it reads: safetensors + JSON.

A checkpoint (and a pretrained-model cache file) is one ``.safetensors`` file:
the tensors are stored by safetensors (a flat table of named, typed arrays -
reading it runs no code), and the structure around them (dicts, lists,
numbers, strings, the attributes of plugin and metric objects) is a JSON
document stored in the file's ``__metadata__`` header under ``"tree"``.

Encoding (:func:`encode`) turns a Python value into a JSON node:

- ``None``, ``bool``, ``int``, ``float``, ``str``: themselves;
- lists, tuples, sets, dicts (any hashable encodable keys), ``OrderedDict``,
  ``defaultdict`` (of a built-in factory): tagged nodes;
- tensors (``nn.Parameter`` included), NumPy arrays (non-object dtypes) and
  scalars, ``torch.Generator`` states, dtypes and devices: tagged nodes whose
  data lives in the tensor table;
- ``nn.Module`` objects held by plugins (a teacher, a previous model): their
  state dict; decoding rebuilds them from a module of the same class found in
  the strategy (a deep copy of it, then ``load_state_dict``);
- Avalanche datasets (replay buffers): **references** - the indices of their
  samples in the benchmark's training experiences (``sources``), not copies
  of the data; a dataset whose samples cannot be traced back to the benchmark
  is stored as a materialised copy of its tensors (never pickled);
- other objects whose class lives in ``avalanche`` or ``avalanche_mm``: their
  class name and encoded attributes. Decoding creates them with
  ``cls.__new__(cls)`` and sets the attributes - no constructor, no
  ``__setstate__``, and only classes of those packages;
- references to the strategy's own model or optimizer: markers, bound to the
  resumed strategy's objects.

Anything else (functions, lambdas, open files, classes of other packages)
fails at save time with a message naming where it sits in the state.
Shared objects are stored once and stay shared after loading.
"""

from __future__ import annotations

import collections
import copy
import importlib
import json
import os
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

FORMAT = "avalanche-mm-checkpoint"
FORMAT_VERSION = 1
#: packages whose classes a checkpoint may name (created without calling their constructor)
ALLOWED_PACKAGES = ("avalanche", "avalanche_mm")
_BUILTIN_FACTORIES = {"list": list, "dict": dict, "int": int, "float": float, "set": set, "None": None}
_MAX_HEADER = 512 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read (the message names the file or the attribute)."""


# ---------------------------------------------------------------------------
# replay buffers as references into the benchmark's data
# ---------------------------------------------------------------------------
def _leaf(dataset: Any, idx: int) -> Tuple[Any, int]:
    """The innermost (non-Avalanche) dataset holding sample ``idx`` and its index there."""
    for _ in range(256):
        flat = getattr(dataset, "_flat_data", None)
        if flat is not None:
            dataset = flat
            continue
        get_idx = getattr(dataset, "_get_idx", None)
        if get_idx is None or not hasattr(dataset, "_datasets"):
            return dataset, idx
        di, idx = get_idx(idx)
        dataset = dataset._datasets[di]
    raise CheckpointError("dataset nesting deeper than 256 levels")


class DatasetIndex:
    """Maps samples of datasets derived from the benchmark back to ``(experience, position)``.

    :param sources: the training experiences' datasets, in stream order.
    """

    def __init__(self, sources: Sequence[Any]):
        self.sources = list(sources)
        self._map: Optional[Dict[Tuple[int, int], Tuple[int, int]]] = None
        self._keep: List[Any] = []

    def _build(self) -> Dict[Tuple[int, int], Tuple[int, int]]:
        if self._map is None:
            m: Dict[Tuple[int, int], Tuple[int, int]] = {}
            for k, ds in enumerate(self.sources):
                for pos in range(len(ds)):
                    leaf, li = _leaf(ds, pos)
                    self._keep.append(leaf)  # ids stay valid while the index lives
                    m.setdefault((id(leaf), li), (k, pos))
            self._map = m
        return self._map

    def locate(self, dataset: Any) -> Optional[List[Tuple[int, int]]]:
        """``[(experience, position), ...]`` of every sample of ``dataset``, or None."""
        if not self.sources:
            return None
        m = self._build()
        out = []
        for i in range(len(dataset)):
            leaf, li = _leaf(dataset, i)
            hit = m.get((id(leaf), li))
            if hit is None:
                return None
            out.append(hit)
        return out


def _targets(dataset: Any) -> Optional[List[int]]:
    t = getattr(dataset, "targets", None)
    if t is None:
        return None
    try:
        return [int(v) for v in t]
    except (TypeError, ValueError):
        return None


def _dataset_ref(dataset: Any, index: Optional[DatasetIndex]) -> Optional[Dict[str, Any]]:
    """A reference node for ``dataset`` when all its samples come from ``index``'s sources."""
    if index is None:
        return None
    located = index.locate(dataset)
    if located is None:
        return None
    # the rebuilt subset must use the same transform group as the saved dataset
    group = getattr(getattr(dataset, "_flat_data", None), "_transform_groups", None)
    group = getattr(group, "current_group", None)
    return {
        "__dataset_ref__": [[k, p] for k, p in located],
        "targets": _targets(dataset),
        "group": group if isinstance(group, str) else None,
    }


def _resolve_dataset_ref(node: Dict[str, Any], index: Optional[DatasetIndex], where: str):
    from avalanche.benchmarks.utils import AvalancheDataset  # noqa: F401  (import check)

    if index is None or not index.sources:
        raise CheckpointError(f"{where}: the checkpoint refers to the benchmark's samples but no benchmark data was given to resolve them.")
    pairs = node["__dataset_ref__"]
    if not isinstance(pairs, list):
        raise CheckpointError(f"{where}: malformed dataset reference.")
    parts = []
    run: List[int] = []
    run_k = None
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
            raise CheckpointError(f"{where}: malformed dataset reference entry {pair!r}.")
        k, p = pair
        if not (0 <= k < len(index.sources)) or not (0 <= p < len(index.sources[k])):
            raise CheckpointError(
                f"{where}: the checkpoint refers to sample {p} of training experience {k}, which this benchmark "
                "does not have; the results folder belongs to another benchmark configuration."
            )
        if run_k is not None and k != run_k:
            parts.append(index.sources[run_k].subset(run))
            run = []
        run_k = k
        run.append(p)
    if run_k is None:
        ds = index.sources[0].subset([])
    else:
        parts.append(index.sources[run_k].subset(run))
        ds = parts[0]
        for extra in parts[1:]:
            ds = ds.concat(extra)
    group = node.get("group")
    if isinstance(group, str) and hasattr(ds, "with_transforms"):
        try:
            ds = ds.with_transforms(group)
        except (KeyError, ValueError):
            pass
    expected = node.get("targets")
    if expected is not None and _targets(ds) != expected:
        raise CheckpointError(
            f"{where}: the replay samples the checkpoint refers to have other labels in this benchmark; "
            "the results folder belongs to another benchmark configuration."
        )
    return ds


# ---------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------
class _Encoder:
    def __init__(self, *, index: Optional[DatasetIndex], bound: Dict[int, str]):
        self.tensors: Dict[str, torch.Tensor] = {}
        self.index = index
        self.bound = bound
        self.memo: Dict[int, int] = {}
        self.keep: List[Any] = []  # keep encoded objects alive (ids stay unique)
        self.n_objects = 0

    def _tensor(self, t: torch.Tensor) -> str:
        key = f"t{len(self.tensors)}"
        t = t.detach().cpu()
        if t.is_sparse or t.layout != torch.strided:
            t = t.to_dense()
        self.tensors[key] = t.contiguous().clone()
        return key

    def _shared(self, obj: Any):
        ref = self.memo.get(id(obj))
        if ref is not None:
            return {"__ref__": ref}
        return None

    def _register(self, obj: Any, node: Dict[str, Any]) -> Dict[str, Any]:
        self.n_objects += 1
        self.memo[id(obj)] = self.n_objects
        self.keep.append(obj)
        node["__id__"] = self.n_objects
        return node

    def encode(self, obj: Any, where: str) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int) and type(obj) is int:
            return obj
        if isinstance(obj, float) and type(obj) is float:
            return obj if np.isfinite(obj) else {"__float__": repr(obj)}
        if id(obj) in self.bound:
            return {"__bound__": self.bound[id(obj)]}
        shared = self._shared(obj)
        if shared is not None:
            return shared
        if isinstance(obj, torch.Tensor):
            node: Dict[str, Any] = {"__tensor__": self._tensor(obj)}
            if isinstance(obj, torch.nn.Parameter):
                node["param"] = bool(obj.requires_grad)
            elif obj.requires_grad:
                node["requires_grad"] = True
            return self._register(obj, node)
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                raise CheckpointError(f"{where}: a NumPy array of Python objects cannot be checkpointed safely.")
            raw = torch.from_numpy(np.frombuffer(np.ascontiguousarray(obj).tobytes(), dtype=np.uint8).copy())
            return self._register(obj, {"__ndarray__": self._tensor(raw), "dtype": obj.dtype.str, "shape": list(obj.shape)})
        if isinstance(obj, np.generic):
            if obj.dtype.hasobject:
                raise CheckpointError(f"{where}: a NumPy object scalar cannot be checkpointed safely.")
            return {"__npscalar__": obj.dtype.str, "value": self.encode(obj.item(), where)}
        if isinstance(obj, (bool, int, float)):  # subclasses (IntEnum ...) not supported
            raise CheckpointError(f"{where}: values of type {type(obj).__qualname__} cannot be checkpointed.")
        if isinstance(obj, torch.dtype):
            return {"__dtype__": str(obj).replace("torch.", "")}
        if isinstance(obj, torch.device):
            return {"__device__": str(obj)}
        if isinstance(obj, torch.Generator):
            return {"__generator__": self._tensor(obj.get_state())}
        if isinstance(obj, list):
            node = self._register(obj, {"__list__": None})
            node["__list__"] = [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
            return node
        if isinstance(obj, tuple):
            if hasattr(obj, "_fields"):
                raise CheckpointError(f"{where}: named tuples ({type(obj).__qualname__}) cannot be checkpointed; use a dict.")
            return {"__tuple__": [self.encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
        if isinstance(obj, (set, frozenset)):
            return {"__set__": [self.encode(v, f"{where}{{}}") for v in obj], "frozen": isinstance(obj, frozenset)}
        if isinstance(obj, dict):
            if type(obj) is dict:
                kind, extra = "dict", {}
            elif type(obj) is collections.OrderedDict:
                kind, extra = "OrderedDict", {}
            elif type(obj) is collections.defaultdict:
                factory = obj.default_factory
                names = [k for k, v in _BUILTIN_FACTORIES.items() if v is factory]
                if not names:
                    raise CheckpointError(f"{where}: a defaultdict whose factory is {factory!r} cannot be checkpointed.")
                kind, extra = "defaultdict", {"factory": names[0]}
            else:
                return self._object(obj, where)
            node = self._register(obj, {"__dict__": None, "kind": kind, **extra})
            node["__dict__"] = [[self.encode(k, f"{where} key"), self.encode(v, f"{where}[{k!r}]")] for k, v in obj.items()]
            return node
        if isinstance(obj, torch.nn.Module):
            return self._register(
                obj,
                {
                    "__module__": _qualname(type(obj)),
                    "state": self.encode(dict(obj.state_dict(keep_vars=False)), f"{where}.state_dict()"),
                    "training": bool(obj.training),
                },
            )
        try:
            from avalanche.benchmarks.utils import AvalancheDataset
        except ImportError:  # pragma: no cover
            AvalancheDataset = ()  # type: ignore
        if isinstance(obj, AvalancheDataset):
            ref = _dataset_ref(obj, self.index)
            if ref is not None:
                return self._register(obj, ref)
            from .state import materialize_dataset

            return self._register(obj, {"__dataset_copy__": self._materialized(materialize_dataset(obj), where)})
        return self._object(obj, where)

    def _materialized(self, dataset: Any, where: str) -> Any:
        raw = dataset.remove_current_transform_group() if hasattr(dataset, "remove_current_transform_group") else dataset
        xs, ys, ts = [], [], []
        for i in range(len(raw)):
            s = raw[i]
            xs.append(s[0])
            ys.append(int(s[1]))
            ts.append(int(s[2]) if len(s) > 2 else 0)
        columns = {m: [x[m] for x in xs] for m in (xs[0] if xs else {})}
        return self.encode({"columns": columns, "targets": ys, "tasks": ts}, where)

    def _object(self, obj: Any, where: str) -> Dict[str, Any]:
        cls = type(obj)
        if not _allowed(cls):
            raise CheckpointError(
                f"{where}: an object of class {_qualname(cls)} cannot be checkpointed safely (only plain data, "
                f"tensors, arrays and objects of the {', '.join(ALLOWED_PACKAGES)} packages are); give the plugin a "
                "state_dict()/load_state_dict() that returns plain data."
            )
        if not hasattr(obj, "__dict__") or getattr(cls, "__slots__", None):
            raise CheckpointError(f"{where}: {_qualname(cls)} keeps no attribute dictionary; it cannot be checkpointed.")
        node = self._register(obj, {"__object__": _qualname(cls), "attrs": None})
        node["attrs"] = self.encode(dict(vars(obj)), f"{where}.")
        if isinstance(obj, dict):  # dict subclasses of the allowed packages
            node["items"] = self.encode(dict(obj), f"{where}")
        return node


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _allowed(cls: type) -> bool:
    mod = cls.__module__ or ""
    return any(mod == p or mod.startswith(p + ".") for p in ALLOWED_PACKAGES) and "<locals>" not in cls.__qualname__


def _import_allowed(name: str, where: str) -> type:
    if not isinstance(name, str) or ":" not in name:
        raise CheckpointError(f"{where}: malformed class name {name!r}.")
    mod, qual = name.split(":", 1)
    if not any(mod == p or mod.startswith(p + ".") for p in ALLOWED_PACKAGES) or "<" in qual:
        raise CheckpointError(f"{where}: the checkpoint names class {name!r}, outside the allowed packages {ALLOWED_PACKAGES}; refusing to load it.")
    try:
        obj: Any = importlib.import_module(mod)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{where}: class {name!r} does not exist in this installation ({err}).") from err
    if not isinstance(obj, type):
        raise CheckpointError(f"{where}: {name!r} is not a class.")
    return obj


# ---------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------
class _Decoder:
    def __init__(self, tensors: Dict[str, torch.Tensor], *, index, bound: Dict[str, Any], modules: Sequence[torch.nn.Module], where: str):
        self.tensors = tensors
        self.index = index
        self.bound = bound
        self.modules = list(modules)
        self.where = where
        self.objects: Dict[int, Any] = {}

    def _t(self, key: Any) -> torch.Tensor:
        if not isinstance(key, str) or key not in self.tensors:
            raise CheckpointError(f"{self.where}: the structure refers to tensor {key!r}, which the file does not hold.")
        return self.tensors[key]

    def _keep(self, node: Dict[str, Any], value: Any) -> Any:
        oid = node.get("__id__")
        if isinstance(oid, int):
            self.objects[oid] = value
        return value

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):  # never written, tolerated
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            raise CheckpointError(f"{self.where}: malformed node {type(node).__name__}.")
        if "__ref__" in node:
            ref = node["__ref__"]
            if ref not in self.objects:
                raise CheckpointError(f"{self.where}: dangling object reference {ref!r}.")
            return self.objects[ref]
        if "__bound__" in node:
            name = node["__bound__"]
            if name not in self.bound:
                raise CheckpointError(f"{self.where}: unknown bound object {name!r}.")
            return self.bound[name]
        if "__float__" in node:
            text = node["__float__"]
            if text not in ("nan", "inf", "-inf"):
                raise CheckpointError(f"{self.where}: malformed float {text!r}.")
            return float(text)
        if "__tensor__" in node:
            t = self._t(node["__tensor__"]).clone()
            if "param" in node:
                t = torch.nn.Parameter(t, requires_grad=bool(node["param"]))
            elif node.get("requires_grad"):
                t.requires_grad_(True)
            return self._keep(node, t)
        if "__ndarray__" in node:
            dtype = np.dtype(str(node["dtype"]))
            if dtype.hasobject:
                raise CheckpointError(f"{self.where}: object arrays are refused.")
            raw = self._t(node["__ndarray__"]).numpy().tobytes()
            arr = np.frombuffer(raw, dtype=dtype).reshape([int(s) for s in node["shape"]]).copy()
            return self._keep(node, arr)
        if "__npscalar__" in node:
            dtype = np.dtype(str(node["__npscalar__"]))
            if dtype.hasobject:
                raise CheckpointError(f"{self.where}: object scalars are refused.")
            return dtype.type(self.decode(node["value"]))
        if "__dtype__" in node:
            dt = getattr(torch, str(node["__dtype__"]), None)
            if not isinstance(dt, torch.dtype):
                raise CheckpointError(f"{self.where}: unknown dtype {node['__dtype__']!r}.")
            return dt
        if "__device__" in node:
            return torch.device(str(node["__device__"]))
        if "__generator__" in node:
            g = torch.Generator()
            g.set_state(self._t(node["__generator__"]))
            return g
        if "__list__" in node:
            out: List[Any] = self._keep(node, [])
            out.extend(self.decode(v) for v in node["__list__"])
            return out
        if "__tuple__" in node:
            return tuple(self.decode(v) for v in node["__tuple__"])
        if "__set__" in node:
            items = [self.decode(v) for v in node["__set__"]]
            return frozenset(items) if node.get("frozen") else set(items)
        if "__dict__" in node:
            kind = node.get("kind")
            if kind == "dict":
                d: Any = {}
            elif kind == "OrderedDict":
                d = collections.OrderedDict()
            elif kind == "defaultdict":
                name = node.get("factory")
                if name not in _BUILTIN_FACTORIES:
                    raise CheckpointError(f"{self.where}: defaultdict factory {name!r} refused.")
                d = collections.defaultdict(_BUILTIN_FACTORIES[name])
            else:
                raise CheckpointError(f"{self.where}: unknown mapping kind {kind!r}.")
            self._keep(node, d)
            for pair in node["__dict__"]:
                k, v = pair
                d[self.decode(k)] = self.decode(v)
            return d
        if "__module__" in node:
            cls = _import_allowed(node["__module__"], self.where)
            template = next((m for m in self.modules if type(m) is cls), None)
            if template is None:
                for root in self.modules:
                    template = next((m for m in root.modules() if type(m) is cls), None)
                    if template is not None:
                        break
            if template is None:
                raise CheckpointError(f"{self.where}: the checkpoint holds a {node['__module__']} module but the strategy has none to rebuild it from.")
            module = copy.deepcopy(template)
            self._keep(node, module)
            module.load_state_dict(self.decode(node["state"]))
            module.train(bool(node.get("training", False)))
            return module
        if "__dataset_ref__" in node:
            return self._keep(node, _resolve_dataset_ref(node, self.index, self.where))
        if "__dataset_copy__" in node:
            from avalanche_mm.data import make_multimodal_dataset

            data = self.decode(node["__dataset_copy__"])
            return self._keep(node, make_multimodal_dataset(data["columns"], data["targets"], task_labels=data["tasks"]))
        if "__object__" in node:
            cls = _import_allowed(node["__object__"], self.where)
            obj = cls.__new__(cls)
            self._keep(node, obj)
            attrs = self.decode(node["attrs"])
            if not isinstance(attrs, dict):
                raise CheckpointError(f"{self.where}: malformed attributes of {node['__object__']}.")
            vars(obj).update(attrs)
            if "items" in node and isinstance(obj, dict):
                obj.update(self.decode(node["items"]))
            return obj
        raise CheckpointError(f"{self.where}: unknown node {sorted(node)[:3]}.")


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------
def encode_tree(obj: Any, *, index: Optional[DatasetIndex] = None, bound: Optional[Dict[str, Any]] = None) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """``(json_tree, tensors)`` of ``obj`` (see the module doc)."""
    enc = _Encoder(index=index, bound={id(v): k for k, v in (bound or {}).items()})
    tree = enc.encode(obj, "state")
    return tree, enc.tensors


def save_tree(path: str, obj: Any, *, index: Optional[DatasetIndex] = None, bound: Optional[Dict[str, Any]] = None, kind: str = "checkpoint") -> str:
    """Write ``obj`` to ``path`` as one safetensors file, atomically."""
    from safetensors.torch import save

    from .io import atomic_write_bytes

    tree, tensors = encode_tree(obj, index=index, bound=bound)
    meta = {"format": FORMAT, "version": str(FORMAT_VERSION), "kind": kind, "tree": json.dumps(tree, allow_nan=False)}
    return atomic_write_bytes(path, save(tensors, metadata=meta))


def read_header(path: str) -> Dict[str, Any]:
    """The JSON header of a safetensors file, checked for shape (raises :class:`CheckpointError`)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated (no safetensors header).")
            (n,) = struct.unpack("<Q", head)
            size = os.fstat(fh.fileno()).st_size
            if n > min(size - 8, _MAX_HEADER):
                raise CheckpointError(f"{path} is not a safetensors file (header length {n} for a {size}-byte file); it may be a pickle or truncated.")
            header = json.loads(fh.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a safetensors file ({err}).") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file.")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offs = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2):
            raise CheckpointError(f"{path}: malformed tensor entry {key!r}.")
        end = max(end, int(offs[1]))
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated ({size} bytes, the header describes {8 + n + end}).")
    return header


def load_tree(
    path: str,
    *,
    index: Optional[DatasetIndex] = None,
    bound: Optional[Dict[str, Any]] = None,
    modules: Sequence[torch.nn.Module] = (),
    kind: Optional[str] = None,
) -> Any:
    """Read a file written by :func:`save_tree`; nothing in it is executed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT or "tree" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not an avalanche-mm {kind or 'checkpoint'} (no structure header).")
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {meta.get('kind')!r}, expected a {kind!r}.")
    if meta.get("version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('version')}, this avalanche-mm reads {FORMAT_VERSION}.")
    try:
        tensors = load_file(path, device="cpu")
        tree = json.loads(meta["tree"])
    except (SafetensorError, json.JSONDecodeError, OSError) as err:
        raise CheckpointError(f"{path} is corrupt ({err}).") from err
    dec = _Decoder(tensors, index=index, bound=dict(bound or {}), modules=modules, where=path)
    try:
        return dec.decode(tree)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        raise CheckpointError(f"{path}: malformed structure ({type(err).__name__}: {err}).") from err


def load_entry(path: str, key: str, *, kind: str = "checkpoint") -> Any:
    """One top-level entry of a checkpoint (e.g. ``"model"``: the model's state dict), without a strategy.

    For inspection and tests; only the entry's own nodes are decoded.
    """
    from safetensors.torch import load_file

    header = read_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT or meta.get("kind") != kind:
        raise CheckpointError(f"{path} is not an avalanche-mm {kind}.")
    tree = json.loads(meta["tree"])
    for k, node in (tree.get("__dict__") or []) if isinstance(tree, dict) else []:
        if k == key:
            return _Decoder(load_file(path, device="cpu"), index=None, bound={}, modules=(), where=path).decode(node)
    raise KeyError(f"{path} has no entry {key!r}.")


__all__ = ["CheckpointError", "load_entry", "DatasetIndex", "encode_tree", "save_tree", "load_tree", "read_header", "ALLOWED_PACKAGES", "FORMAT"]
