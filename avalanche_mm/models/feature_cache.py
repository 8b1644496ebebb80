"""Frozen-feature cache: encode a dataset once with a frozen encoder, reuse everywhere.

When an encoder is frozen its output for a dataset sample never changes, so
:class:`FrozenFeatureCache` computes the features of a whole dataset once,
stores them on disk and serves them to later epochs, strategies and runs.

The cache key is a fingerprint of

- the encoder: every tensor of the module's ``state_dict`` (names, dtypes,
  shapes and bytes) plus the encoding function's qualified name;
- the dataset: the bytes of every encoded input and every target, read
  through the dataset's **eval** transforms (so a changed transform or
  changed data changes the key) - or a ``dataset_key`` string you provide
  to skip this pass;
- ``extra_key``: anything else that changes the output (e.g. a flag).

Files are written to a temporary file in the cache folder and moved into
place with ``os.replace`` (atomic), under a per-key lock file, so concurrent
runs never read a partial file and compute each entry once.

On-disk layout::

    <root>/<key[:2]>/<key>.pt      {"features": Tensor[N, ...], "meta": {...}}
    <root>/<key[:2]>/<key>.lock    lock file (may stay behind; harmless)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Union

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn
from torch.utils.data import DataLoader

_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------
def _hash_tensor(h, t: Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        flat = t.contiguous().cpu().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes())


def module_fingerprint(module: nn.Module) -> str:
    """Hex digest of a module's class and every tensor of its ``state_dict``."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module_fingerprint expects an nn.Module, got {type(module).__name__}.")
    h = hashlib.blake2b(digest_size=20)
    h.update(type(module).__qualname__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, tensor)
    return h.hexdigest()


def _select(x: Any, modality: Optional[str]) -> Any:
    if modality is None:
        return x
    if isinstance(x, dict) or hasattr(x, "keys"):
        if modality not in x:
            raise KeyError(
                f"FrozenFeatureCache: samples have no modality '{modality}' (they have "
                f"{sorted(x.keys())}). Set modality= to the input of the encoder."
            )
        return x[modality]
    raise TypeError(
        f"FrozenFeatureCache: modality='{modality}' but samples are {type(x).__name__}, not "
        "modality dicts; pass modality=None for plain tensor inputs."
    )


def _eval_view(dataset):
    """The dataset with its eval (deterministic) transforms, when it has them."""
    to_eval = getattr(dataset, "eval", None)
    return to_eval() if callable(to_eval) else dataset


def dataset_fingerprint(dataset, *, modality: Optional[str] = "image") -> str:
    """Hex digest of every sample's encoder input and target (eval transforms).

    :param dataset: an (Avalanche) dataset of ``(x, y, ...)`` samples.
    :param modality: the key of ``x`` fed to the encoder (None: ``x`` itself).
    """
    data = _eval_view(dataset)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"n={len(data)}|".encode())
    for i in range(len(data)):
        sample = data[i]
        x = _select(sample[0], modality)
        if x is None:
            h.update(b"<missing>")
        else:
            _hash_tensor(h, torch.as_tensor(x))
        h.update(f"|y={int(sample[1])}|".encode())
    return h.hexdigest()


def _function_name(encoder: Callable) -> str:
    fn = getattr(encoder, "__func__", encoder)
    return getattr(fn, "__qualname__", type(encoder).__qualname__)


def _owning_module(encoder: Callable) -> Optional[nn.Module]:
    if isinstance(encoder, nn.Module):
        return encoder
    owner = getattr(encoder, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


# ---------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------
class FrozenFeatureCache:
    """Disk (+ memory) cache of frozen-encoder features per dataset sample.

    :param root: cache folder (created if needed).
    :param max_memory_entries: entries also kept in memory (LRU).
    :param lock_timeout: seconds to wait for another process computing the
        same entry before failing.
    """

    def __init__(
        self,
        *,
        root: Union[str, os.PathLike],
        max_memory_entries: int = 8,
        lock_timeout: float = 3600.0,
    ):
        if isinstance(max_memory_entries, bool) or int(max_memory_entries) < 0:
            raise ValueError(f"max_memory_entries must be >= 0, got {max_memory_entries!r}.")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_memory_entries = int(max_memory_entries)
        self.lock_timeout = float(lock_timeout)
        self._memory: "OrderedDict[str, Tensor]" = OrderedDict()
        self.stats = {"memory_hits": 0, "disk_hits": 0, "computed": 0}

    def __repr__(self) -> str:
        return f"FrozenFeatureCache(root={str(self.root)!r})"

    # -- keys and paths ------------------------------------------------------
    def make_key(
        self,
        encoder: Callable,
        dataset,
        *,
        modality: Optional[str] = "image",
        module: Optional[nn.Module] = None,
        dataset_key: Optional[str] = None,
        extra_key: str = "",
    ) -> str:
        """The cache key of ``encoder`` applied to ``dataset`` (see module docs)."""
        module = module if module is not None else _owning_module(encoder)
        if module is None:
            raise TypeError(
                "FrozenFeatureCache cannot fingerprint the encoder: pass a bound method of an "
                "nn.Module (e.g. backbone.encode_image), an nn.Module, or module=<the nn.Module "
                "whose weights define the encoder>."
            )
        data_part = dataset_key if dataset_key is not None else dataset_fingerprint(dataset, modality=modality)
        h = hashlib.blake2b(digest_size=20)
        for part in (
            f"v{_FORMAT_VERSION}",
            module_fingerprint(module),
            _function_name(encoder),
            f"modality={modality}",
            f"data={data_part}",
            f"extra={extra_key}",
        ):
            h.update(part.encode())
            h.update(b"\x00")
        return h.hexdigest()

    def path_for(self, key: str) -> Path:
        """File that holds entry ``key``."""
        return self.root / key[:2] / f"{key}.pt"

    def contains(self, key: str) -> bool:
        return key in self._memory or self.path_for(key).is_file()

    # -- main entry point ------------------------------------------------------
    def get_or_compute(
        self,
        encoder: Callable[[Any], Tensor],
        dataset,
        *,
        modality: Optional[str] = "image",
        module: Optional[nn.Module] = None,
        dataset_key: Optional[str] = None,
        extra_key: str = "",
        batch_size: int = 256,
        device: Optional[Union[str, torch.device]] = None,
        num_workers: int = 0,
        collate_fn: Optional[Callable] = None,
    ) -> Tensor:
        """Features of every sample of ``dataset`` (in order), from cache or computed.

        :param encoder: callable batch-input -> ``[B, ...]`` features, e.g.
            ``backbone.encode_image``. Must be frozen: the cache assumes its
            output depends only on the module's weights.
        :param dataset: (Avalanche) dataset of ``(x, y, ...)``; its eval
            transforms are used.
        :param modality: key of ``x`` passed to the encoder (None: ``x``).
        :param module: the module whose weights define the encoder (default:
            the owner of a bound method, or ``encoder`` itself).
        :param dataset_key: skip content hashing and use this string (you
            then vouch that it changes whenever data or transforms change).
        :param extra_key: extra string mixed into the key.
        :param batch_size: encoding batch size.
        :param device: device for encoding (default: the module's device).
        :param num_workers: DataLoader workers for encoding.
        :param collate_fn: collate (default: the dataset's ``collate_fn``).
        :return: CPU tensor ``[len(dataset), ...]``.
        """
        module = module if module is not None else _owning_module(encoder)
        key = self.make_key(
            encoder, dataset, modality=modality, module=module, dataset_key=dataset_key,
            extra_key=extra_key,
        )
        hit = self._memory.get(key)
        if hit is not None:
            self._memory.move_to_end(key)
            self.stats["memory_hits"] += 1
            return hit
        with self._lock(key):
            path = self.path_for(key)
            feats = self._load(path, key, len(dataset)) if path.is_file() else None
            if feats is not None:
                self.stats["disk_hits"] += 1
            else:
                feats = self._compute(
                    encoder, dataset, modality=modality, module=module, batch_size=batch_size,
                    device=device, num_workers=num_workers, collate_fn=collate_fn,
                )
                self._save(path, feats, meta={
                    "n": len(feats), "encoder": _function_name(encoder), "modality": modality,
                    "created": time.time(), "key": key,
                })
                self.stats["computed"] += 1
        self._remember(key, feats)
        return feats

    def feature_dataset(
        self,
        dataset,
        features: Tensor,
        *,
        feature_key: str = "image_features",
        keep: Sequence[str] = (),
    ):
        """A task-aware Avalanche dataset whose samples carry the cached features.

        Samples become ``({feature_key: features[i], **kept}, y, t)`` with the
        targets and task labels of ``dataset``; raw modalities are dropped
        unless listed in ``keep`` (kept ones are read from ``dataset``).
        Models such as :class:`~avalanche_mm.models.ZeroShotClassifier` and
        :class:`~avalanche_mm.models.LinearProbe` read ``x[feature_key]``
        instead of encoding the images.
        """
        from avalanche_mm.data import LazyModality, make_multimodal_dataset

        if len(features) != len(dataset):
            raise ValueError(
                f"feature_dataset: {len(features)} feature rows for a dataset of {len(dataset)} "
                "samples; compute the features on this very dataset."
            )
        targets = [int(t) for t in dataset.targets]
        task_labels = getattr(dataset, "targets_task_labels", None)
        tl = [int(t) for t in task_labels] if task_labels is not None else 0
        columns: Dict[str, Any] = {feature_key: features}
        view = _eval_view(dataset)
        for m in keep:
            columns[m] = LazyModality(list(range(len(dataset))), _ModalityReader(view, m))
        return make_multimodal_dataset(columns, targets, task_labels=tl)

    def clear(self, *, disk: bool = False) -> None:
        """Forget in-memory entries; with ``disk=True`` delete the cache files too."""
        self._memory.clear()
        if disk:
            for path in self.root.glob("*/*.pt"):
                path.unlink()

    # -- internals -------------------------------------------------------------
    @torch.no_grad()
    def _compute(self, encoder, dataset, *, modality, module, batch_size, device, num_workers, collate_fn):
        data = _eval_view(dataset)
        if module is not None and device is None:
            p = next(module.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        device = torch.device(device or "cpu")
        collate = collate_fn or getattr(data, "collate_fn", None)
        loader = DataLoader(
            data, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
        )
        was_training = module.training if module is not None else None
        if module is not None:
            module.eval()
        try:
            chunks = []
            for batch in loader:
                x = _select(batch[0], modality)
                out = encoder(x.to(device) if isinstance(x, Tensor) else x)
                if not isinstance(out, Tensor):
                    raise TypeError(
                        f"FrozenFeatureCache: the encoder returned {type(out).__name__}, expected a "
                        "tensor [B, ...]."
                    )
                chunks.append(out.detach().float().cpu())
        finally:
            if module is not None and was_training:
                module.train()
        if not chunks:
            raise ValueError("FrozenFeatureCache: the dataset is empty; nothing to encode.")
        return torch.cat(chunks)

    def _save(self, path: Path, features: Tensor, meta: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:
            mask = os.umask(0o022)
            os.umask(mask)
            os.fchmod(fd, 0o666 & ~mask)  # a shared cache: the mode open() would give, not mkstemp's 0600
            with os.fdopen(fd, "wb") as fh:
                torch.save({"features": features, "meta": meta, "version": _FORMAT_VERSION}, fh)
            os.replace(tmp, path)  # atomic: readers see the old state or the full file
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _load(self, path: Path, key: str, expected_rows: int) -> Optional[Tensor]:
        """The cached features, or None (with a warning) when the file cannot be trusted.

        The file is read with ``torch.load(weights_only=True)`` (tensors and
        plain containers only) and checked: it must name this very key (the
        fingerprint of encoder, weights and data) and hold one feature row per
        sample. A short, truncated, corrupt or foreign file is recomputed and
        overwritten.
        """
        why = None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is recomputed (and reported)
            why = f"unreadable ({type(err).__name__}: {str(err)[:200]})"
            blob = None
        if why is None:
            meta = blob.get("meta") if isinstance(blob, dict) else None
            feats = blob.get("features") if isinstance(blob, dict) else None
            if not isinstance(feats, Tensor) or not isinstance(meta, dict):
                why = "not a FrozenFeatureCache entry"
            elif meta.get("key") != key:
                why = f"written for another fingerprint ({str(meta.get('key'))[:12]}...)"
            elif feats.dim() == 0 or len(feats) != expected_rows or meta.get("n") != expected_rows:
                why = f"holds {len(feats) if feats.dim() else 0} feature rows for a dataset of {expected_rows} samples"
            elif feats.is_floating_point() and not bool(torch.isfinite(feats).all()):
                why = "holds NaN or infinite features"
        if why is not None:
            warnings.warn(f"FrozenFeatureCache: ignoring {path}: {why}; recomputing the features (the file is overwritten).", stacklevel=3)
            self.stats["invalid"] = self.stats.get("invalid", 0) + 1
            return None
        return feats

    def _remember(self, key: str, feats: Tensor) -> None:
        if self.max_memory_entries == 0:
            return
        self._memory[key] = feats
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_memory_entries:
            self._memory.popitem(last=False)

    @contextlib.contextmanager
    def _lock(self, key: str):
        path = self.path_for(key).with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock  # a dependency of torch

        with FileLock(str(path), timeout=self.lock_timeout):
            yield


class _ModalityReader:
    """Picklable loader reading one modality of a dataset sample."""

    def __init__(self, dataset, modality: str):
        self.dataset = dataset
        self.modality = modality

    def __call__(self, index: int):
        return self.dataset[index][0][self.modality]


class LinearProbe(nn.Module):
    """A linear classifier on frozen encoder features (cache-aware).

    Uses ``x[feature_key]`` when the batch carries cached features, else
    encodes ``x[modality]`` with ``encoder`` under ``torch.no_grad`` (the
    encoder is frozen). Plain tensors are encoded too.

    :param encoder: frozen callable input -> ``[B, in_features]`` (e.g.
        ``backbone.encode_image``); the module owning it is kept as a
        submodule ``encoder_module`` so it moves with ``.to()``.
    :param in_features: feature size.
    :param num_classes: number of classes.
    :param modality: batch key of the encoder input.
    :param feature_key: batch key of cached features.
    """

    def __init__(
        self,
        *,
        encoder: Callable[[Any], Tensor],
        in_features: int,
        num_classes: int,
        modality: str = "image",
        feature_key: str = "image_features",
    ):
        super().__init__()
        self._encoder = encoder
        owner = _owning_module(encoder)
        if owner is not None:
            owner.requires_grad_(False)
        self.encoder_module = owner
        self.head = nn.Linear(in_features, num_classes)
        self.modality = modality
        self.feature_key = feature_key

    def features(self, x) -> Tensor:
        if isinstance(x, Tensor):
            inp = x
        elif self.feature_key in x:
            return x[self.feature_key].float()
        else:
            inp = _select(x, self.modality)
        with torch.no_grad():
            return self._encoder(inp).float()

    def forward(self, x) -> Tensor:
        return self.head(self.features(x))


class FeatureCachePlugin(SupervisedPlugin):
    """Swap each experience's dataset for its cached-feature version.

    After Avalanche adapts the train/eval dataset of an experience, this
    plugin replaces it by :meth:`FrozenFeatureCache.feature_dataset` of the
    features from :meth:`FrozenFeatureCache.get_or_compute` (computed the
    first time, read from the cache afterwards - in later epochs, strategies
    and runs). The model must read ``x[feature_key]`` (e.g.
    :class:`~avalanche_mm.models.ZeroShotClassifier`,
    :class:`~avalanche_mm.models.LinearProbe`). Not for strategies that mix
    raw replay samples into the batches.

    :param cache: the :class:`FrozenFeatureCache`.
    :param encoder: the frozen encoder (e.g. ``backbone.encode_image``).
    :param modality: batch key of the encoder input.
    :param feature_key: key of the features in the new samples.
    :param keep: raw modalities to keep next to the features.
    :param train: cache the training datasets.
    :param eval: cache the evaluation datasets.
    :param cache_kwargs: forwarded to :meth:`FrozenFeatureCache.get_or_compute`.
    """

    def __init__(
        self,
        *,
        cache: FrozenFeatureCache,
        encoder: Callable[[Any], Tensor],
        modality: str = "image",
        feature_key: str = "image_features",
        keep: Iterable[str] = (),
        train: bool = True,
        eval: bool = True,
        **cache_kwargs: Any,
    ):
        super().__init__()
        if not isinstance(cache, FrozenFeatureCache):
            raise TypeError(f"cache must be a FrozenFeatureCache, got {type(cache).__name__}.")
        self.cache = cache
        self.encoder = encoder
        self.modality = modality
        self.feature_key = feature_key
        self.keep = tuple(keep)
        self.on_train = bool(train)
        self.on_eval = bool(eval)
        self.cache_kwargs = cache_kwargs

    def _swap(self, strategy) -> None:
        ds = strategy.adapted_dataset
        feats = self.cache.get_or_compute(
            self.encoder, ds, modality=self.modality, **self.cache_kwargs
        )
        strategy.adapted_dataset = self.cache.feature_dataset(
            ds, feats, feature_key=self.feature_key, keep=self.keep
        )

    def after_train_dataset_adaptation(self, strategy, *args, **kwargs):
        if self.on_train:
            self._swap(strategy)

    def after_eval_dataset_adaptation(self, strategy, *args, **kwargs):
        if self.on_eval:
            self._swap(strategy)


__all__ = [
    "FrozenFeatureCache",
    "FeatureCachePlugin",
    "LinearProbe",
    "module_fingerprint",
    "dataset_fingerprint",
]
