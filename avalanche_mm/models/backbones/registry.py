"""Named backbone configs and the :func:`build_backbone` factory.

``build_backbone(name, ...)`` resolves, in order:

1. a registered name (``"tiny-openclip"``, ``"tiny-hfclip"``, or your own
   added with :func:`register_backbone`);
2. an explicit backend prefix: ``"open_clip:ViT-B-16"`` or
   ``"hf:openai/clip-vit-base-patch16"``;
3. a local folder: with ``open_clip_config.json`` -> open_clip
   (``local-dir:``), with ``config.json`` -> HF transformers;
4. an open_clip ``hf-hub:org/repo`` / ``local-dir:/path`` identifier;
5. an open_clip model name (``"ViT-B-16"``);
6. anything with a ``/`` -> an HF hub id.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

import torch

from avalanche_mm.registry import Registry

from .base import VisionLanguageBackbone

#: every named backbone (entry-point group ``avalanche_mm.backbones``); open_clip
#: names, HF hub ids and folders are resolved by :func:`build_backbone` besides
BACKBONES: Registry = Registry("backbone")

# open_clip model config of "tiny-openclip": ViT width 64, 2 layers, patch 8
# on 32x32 images; text width 64, 2 layers, context 32, real CLIP BPE vocab.
TINY_OPENCLIP_CONFIG: Dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# transformers CLIPConfig of "tiny-hfclip": the same sizes as tiny-openclip.
TINY_HFCLIP_CONFIG: Dict[str, Any] = {
    "projection_dim": 64,
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    },
    "vision_config": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    },
}


def register_backbone(name: str, *, description: str = "", overwrite: bool = False, needs_weights: bool = False):
    """Decorator registering ``factory(**kwargs) -> VisionLanguageBackbone`` under ``name``.

    The factory receives the keyword arguments of :func:`build_backbone`
    (``pretrained``, ``cache_dir``, ``local_files_only``, ``device``,
    ``seed`` and any extra ones).

    :param name: the name users pass to :func:`build_backbone`.
    :param description: one line shown by :func:`list_backbones`.
    :param overwrite: allow replacing an existing entry.
    :param needs_weights: the factory reads pretrained weights from disk.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_backbone: name must be a non-empty string, got {name!r}.")

    def deco(factory: Callable[..., VisionLanguageBackbone]):
        if name in BACKBONES._entries and not overwrite:
            raise KeyError(
                f"a backbone named '{name}' is already registered; pass overwrite=True to replace it."
            )
        BACKBONES.register(name, factory, replace=True, summary=description, needs_weights=needs_weights)
        return factory

    return deco


def list_backbones() -> Dict[str, str]:
    """Registered names -> description (open_clip/HF names work too, see build_backbone)."""
    return {e.name: e.meta.get("summary", "") for e in BACKBONES.entries()}


def build_backbone(
    name: str,
    *,
    pretrained: Optional[str] = None,
    cache_dir: Optional[str] = None,
    local_files_only: Optional[bool] = None,
    device: Optional[torch.device] = None,
    seed: Optional[int] = None,
    **kwargs: Any,
) -> VisionLanguageBackbone:
    """Build a :class:`VisionLanguageBackbone` by name (see module docstring).

    :param name: registered name, open_clip model name, HF hub id or folder.
    :param pretrained: open_clip pretrained tag or checkpoint file; for
        registered tiny configs a local checkpoint file
        (``torch.save(backbone.model.state_dict(), path)``). Ignored by HF.
    :param cache_dir: download/cache directory of the weights.
    :param local_files_only: never use the network (default: True when
        ``AVALANCHE_MM_OFFLINE``/``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``
        is set); missing weights raise
        :class:`~avalanche_mm.models.PretrainedWeightsNotFoundError`.
    :param device: device for the model (default CPU).
    :param seed: seed of the random initialisation (registered configs).
    :param kwargs: forwarded to the backend's loader.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"build_backbone: name must be a non-empty string, got {name!r}.")
    if name in BACKBONES:
        return BACKBONES[name](
            pretrained=pretrained,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            device=device,
            seed=seed,
            **kwargs,
        )
    from .hf_clip_backbone import HFCLIPBackbone
    from .open_clip_backbone import OpenCLIPBackbone

    common = dict(cache_dir=cache_dir, local_files_only=local_files_only, device=device)
    if name.startswith(("open_clip:", "openclip:")):
        model_name = name.split(":", 1)[1]
        return OpenCLIPBackbone.from_pretrained(model_name, pretrained, **common, **kwargs)
    if name.startswith("hf:"):
        return HFCLIPBackbone.from_pretrained(name[3:], **common, **kwargs)
    if os.path.isdir(name):
        if os.path.isfile(os.path.join(name, "open_clip_config.json")):
            return OpenCLIPBackbone.from_pretrained("local-dir:" + name, **common, **kwargs)
        return HFCLIPBackbone.from_pretrained(name, **common, **kwargs)
    if name.startswith(("hf-hub:", "local-dir:")):
        return OpenCLIPBackbone.from_pretrained(name, pretrained, **common, **kwargs)
    import open_clip

    if open_clip.get_model_config(name.replace("/", "-")) is not None:
        return OpenCLIPBackbone.from_pretrained(name, pretrained, **common, **kwargs)
    if "/" in name:
        return HFCLIPBackbone.from_pretrained(name, **common, **kwargs)
    raise ValueError(
        f"build_backbone: unknown backbone '{name}'. Use a registered name "
        f"({', '.join(sorted(BACKBONES))}), an open_clip model name (e.g. 'ViT-B-16', see "
        "open_clip.list_models()), 'open_clip:<name>', an HF hub id such as "
        "'openai/clip-vit-base-patch16' (or 'hf:<id>'), or a local folder."
    )


@register_backbone(
    "tiny-openclip",
    description="open_clip CLIP, ViT 64x2 (patch 8, 32px) + text 64x2 (ctx 32), CLIP BPE",
)
def _tiny_openclip(
    *, pretrained=None, cache_dir=None, local_files_only=None, device=None, seed=None, **kwargs
):
    from .open_clip_backbone import OpenCLIPBackbone

    if kwargs:
        raise TypeError(f"tiny-openclip takes no extra arguments, got {sorted(kwargs)}.")
    return OpenCLIPBackbone.from_config(
        TINY_OPENCLIP_CONFIG,
        name="tiny-openclip",
        pretrained=pretrained,
        seed=0 if seed is None else seed,
        device=device,
    )


@register_backbone(
    "tiny-hfclip",
    description="transformers CLIPModel, ViT 64x2 (patch 8, 32px) + text 64x2 (ctx 32), CLIP BPE",
)
def _tiny_hfclip(
    *, pretrained=None, cache_dir=None, local_files_only=None, device=None, seed=None, **kwargs
):
    from .hf_clip_backbone import HFCLIPBackbone

    if kwargs:
        raise TypeError(f"tiny-hfclip takes no extra arguments, got {sorted(kwargs)}.")
    return HFCLIPBackbone.from_config(
        TINY_HFCLIP_CONFIG,
        name="tiny-hfclip",
        pretrained=pretrained,
        seed=0 if seed is None else seed,
        device=device,
    )


#: open_clip config of ``demo-clip``: ``tiny-openclip`` with a 16-token text context
#: (captions of the procedural world are shorter), about half the text cost.
DEMO_CLIP_CONFIG: Dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@register_backbone(
    "demo-clip",
    description="open_clip CLIP, ViT 64x2 (patch 8, 32px) + text 64x2 (ctx 16), CLIP BPE; the demo's backbone",
)
def _demo_clip(*, pretrained=None, cache_dir=None, local_files_only=None, device=None, seed=None, **kwargs):
    from .open_clip_backbone import OpenCLIPBackbone

    if kwargs:
        raise TypeError(f"demo-clip takes no extra arguments, got {sorted(kwargs)}.")
    return OpenCLIPBackbone.from_config(
        DEMO_CLIP_CONFIG, name="demo-clip", pretrained=pretrained, seed=0 if seed is None else seed, device=device
    )


def weights_problem(name: str, pretrained: Optional[str], cache_dir: Optional[str] = None) -> Optional[str]:
    """Why :func:`build_backbone` would not find the pretrained weights, found
    without loading them (None when they are there, or none are needed).

    Registered names take an optional checkpoint file; open_clip names with a
    pretrained tag look in the cache (an error only offline: online, open_clip
    downloads); HF hub ids are checked in the HF cache when offline.
    """
    if name in BACKBONES:
        if pretrained is not None and not os.path.isfile(os.path.expanduser(pretrained)):
            return f"got {pretrained!r}, expected a checkpoint file of backbone {name!r} (torch.save(backbone.model.state_dict(), path))"
        return None
    from .open_clip_backbone import _env_offline

    offline = _env_offline()
    if os.path.isdir(os.path.expanduser(name)) or name.startswith("local-dir:"):
        return None
    try:
        import open_clip
    except ImportError:  # pragma: no cover - a dependency
        return None
    model_name = name.split(":", 1)[1] if name.startswith(("open_clip:", "openclip:")) else name
    cleaned = model_name.replace("/", "-")
    if open_clip.get_model_config(cleaned) is not None:
        if not pretrained:
            return None
        tag_cfg = open_clip.get_pretrained_cfg(cleaned, pretrained)
        if tag_cfg:
            from .open_clip_backbone import _find_cached_tag

            found, searched = _find_cached_tag(tag_cfg, cache_dir)
            if found is None and offline:
                return (
                    f"open_clip weights {model_name!r} / {pretrained!r} are not in the cache "
                    f"(searched {', '.join(searched) or 'the default caches'}) and downloads are off "
                    "(HF_HUB_OFFLINE/AVALANCHE_MM_OFFLINE); download them on a machine with internet "
                    "and set model.cache_dir, or give a checkpoint file as model.pretrained"
                )
            return None
        if not os.path.isfile(os.path.expanduser(pretrained)):
            return (
                f"got {pretrained!r}, neither a pretrained tag of {model_name!r} "
                f"({', '.join(open_clip.list_pretrained_tags_by_model(cleaned))}) nor a checkpoint file"
            )
        return None
    if name.startswith(("hf:", "hf-hub:")) or "/" in name:
        if offline:
            hub_id = name.split(":", 1)[1] if ":" in name else name
            try:
                from huggingface_hub import try_to_load_from_cache

                hit = try_to_load_from_cache(hub_id, "config.json", cache_dir=cache_dir)
            except Exception:  # an invalid id: build_backbone says why
                hit = None
            if not isinstance(hit, str):
                return f"{hub_id!r} is not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE)"
        return None
    return None


def registered_names() -> List[str]:
    """Sorted registered backbone names."""
    return sorted(BACKBONES)


__all__ = [
    "BACKBONES",
    "DEMO_CLIP_CONFIG",
    "weights_problem",
    "build_backbone",
    "register_backbone",
    "list_backbones",
    "registered_names",
    "TINY_OPENCLIP_CONFIG",
    "TINY_HFCLIP_CONFIG",
]
