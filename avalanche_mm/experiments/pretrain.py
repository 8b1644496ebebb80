"""Contrastive pretraining of a small backbone on a reference split, cached.

The built-in studies need a CLIP-style model with real zero-shot ability but
no weights can be downloaded, so the main job pretrains a tiny backbone on
the procedural world's reference (pretraining) split - image-caption pairs of
objects that never appear in the tasks - with CLIP's symmetric contrastive
loss. The result is cached under ``$AVALANCHE_MM_CACHE`` (default
``~/.cache/avalanche_mm``) keyed by a hash of everything that determines it,
and written atomically as safetensors + JSON (never a pickle), so later runs (and every strategy) start from the
same weights in no time.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from .config import fingerprint
from .checkpoint import CheckpointError, load_tree, save_tree
from .io import atomic_write_json
from .registry import ReferenceSet
from .state import derive_seed, seed_everything

#: bump when the pretraining procedure changes (invalidates caches)
PRETRAIN_VERSION = 1


def cache_root(cache_dir: Optional[str] = None) -> str:
    """The cache folder: ``cache_dir``, else ``$AVALANCHE_MM_CACHE``, else ``~/.cache/avalanche_mm``."""
    if cache_dir:
        return os.path.expanduser(cache_dir)
    env = os.environ.get("AVALANCHE_MM_CACHE")
    if env:
        return os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".cache", "avalanche_mm")


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where identical captions in a batch count as positives.

    :param image_emb: ``[B, D]`` normalised image embeddings.
    :param text_emb: ``[B, D]`` normalised text embeddings.
    :param scale: the logit scale (``exp`` applied).
    :param tokens: ``[B, L]`` caption token ids (rows that are equal are positives).
    """
    logits = scale * image_emb @ text_emb.t()
    same = (tokens[:, None, :] == tokens[None, :, :]).all(-1).float()
    target = same / same.sum(1, keepdim=True)
    loss_i = -(target * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(target * logits.t().log_softmax(1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


def pretrain_key(model_cfg: Mapping[str, Any], reference: ReferenceSet, seed: int) -> str:
    """Cache key of a pretrained backbone."""
    return fingerprint(
        {
            "version": PRETRAIN_VERSION,
            "backbone": model_cfg["backbone"],
            "pretrained": model_cfg.get("pretrained"),
            "params": model_cfg.get("params") or {},
            "pretrain": {k: v for k, v in model_cfg["pretrain"].items() if k not in ("enabled", "cache_dir")},
            "reference": reference.fingerprint,
            "n_reference": len(reference),
            "seed": seed,
        }
    )


def _load_cached(path: str, backbone: nn.Module, log) -> Optional[Dict[str, Any]]:
    """The cached weights loaded into ``backbone`` (safetensors + JSON: nothing executed), or None.

    A cache file that is corrupt, truncated, not ours or does not fit the
    backbone is reported with a warning and recomputed (then overwritten).
    """
    import warnings

    try:
        payload = load_tree(path, kind="pretrained")
        state, info = payload["state_dict"], payload.get("info", {})
        if not isinstance(state, dict) or not isinstance(info, dict):
            raise CheckpointError(f"{path}: malformed pretrained cache")
        backbone.load_state_dict(state)
    except (CheckpointError, KeyError, TypeError, RuntimeError, OSError) as err:
        warnings.warn(f"ignoring the pretrained-backbone cache {path}: {err}; pretraining again (the file is overwritten).", stacklevel=3)
        return None
    info = dict(info)
    info.update({"cache": path, "cached": True})
    log(f"pretrained backbone loaded from the cache: {path}")
    return info


def pretrain_backbone(
    backbone: nn.Module,
    reference: ReferenceSet,
    cfg: Mapping[str, Any],
    *,
    seed: int,
    key: str,
    progress: bool = True,
    log=print,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Pretrain ``backbone`` in place on ``reference`` (or load it from the cache).

    :param backbone: a :class:`~avalanche_mm.models.VisionLanguageBackbone`.
    :param reference: the image-caption pairs.
    :param cfg: the ``model.pretrain`` section (iterations, batch_size, lr, ...).
    :param seed: seed of the pretraining.
    :param key: the cache key (:func:`pretrain_key`).
    :param progress: draw a progress bar.
    :param log: where to print one line about the cache.
    :return: ``(backbone, info)``; ``info`` says whether the cache was used,
        the final loss and the time spent.
    """
    folder = os.path.join(cache_root(cfg.get("cache_dir")), "pretrained")
    path = os.path.join(folder, f"{backbone.name}-{key}.safetensors")
    if os.path.exists(path):
        loaded = _load_cached(path, backbone, log)
        if loaded is not None:
            return backbone, loaded
    if len(reference) < 2:
        raise ValueError(f"pretraining needs at least 2 reference pairs, got {len(reference)}.")
    seed_everything(derive_seed(seed, "pretrain"))
    start = time.time()
    tokens = backbone.tokenize(reference.texts)
    images = reference.images
    device = backbone.device
    params = [p for p in backbone.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    iters, warmup, bs = int(cfg["iterations"]), int(cfg["warmup"]), int(cfg["batch_size"])
    gen = torch.Generator().manual_seed(derive_seed(seed, "pretrain-batches"))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=iters, desc="pretraining the backbone (cached afterwards)", leave=False, unit="it")
    backbone.train()
    loss = torch.zeros(())
    for it in range(iters):
        lr = cfg["lr"] * min(1.0, (it + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * it / iters))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(images), (min(bs, len(images)),), generator=gen)
        tok = tokens[idx].to(device)
        loss = contrastive_loss(
            backbone.encode_image(images[idx].to(device)),
            backbone.encode_text(tok),
            backbone.logit_scale_value(),
            tok,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    if bar is not None:
        bar.close()
    backbone.eval()
    info = {
        "cached": False,
        "final_loss": float(loss.detach()),
        "seconds": time.time() - start,
        "iterations": iters,
        "reference_pairs": len(reference),
        "key": key,
    }
    save_tree(path, {"state_dict": dict(backbone.state_dict()), "info": info}, kind="pretrained")
    atomic_write_json(path[: -len(".safetensors")] + ".json", info)
    info["cache"] = path
    log(f"pretrained the backbone in {info['seconds']:.1f}s (loss {info['final_loss']:.3f}); cached at {path}")
    return backbone, info


__all__ = ["cache_root", "contrastive_loss", "pretrain_key", "pretrain_backbone", "PRETRAIN_VERSION"]
