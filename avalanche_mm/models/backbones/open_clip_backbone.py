"""open_clip implementation of :class:`VisionLanguageBackbone`.

Any open_clip model name with a pretrained tag (``"ViT-B-16"``,
``"laion2b_s34b_b88k"``), a local checkpoint file, an ``hf-hub:`` or
``local-dir:`` model, or a custom config dict (the tiny test config).
open_clip is imported lazily, so ``import avalanche_mm.models`` stays light.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from .base import PretrainedWeightsNotFoundError, VisionLanguageBackbone, check_tower
from .preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocess


def _import_open_clip():
    try:
        import open_clip
    except ImportError as err:  # pragma: no cover - open_clip is a core dependency
        raise ImportError(
            "OpenCLIPBackbone needs the 'open_clip_torch' package: pip install open_clip_torch"
        ) from err
    return open_clip


def _env_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("AVALANCHE_MM_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


class OpenCLIPBackbone(VisionLanguageBackbone):
    """A vision-language backbone backed by an open_clip ``CLIP`` model.

    Build it with :meth:`from_pretrained` (names/tags/checkpoints, the real
    open_clip factory), :meth:`from_config` (a config dict) or
    :func:`~avalanche_mm.models.build_backbone`.

    :param model: an open_clip ``CLIP`` or ``CustomTextCLIP`` instance.
    :param tokenizer: the open_clip tokenizer (callable ``(texts,
        context_length) -> LongTensor``).
    :param name: model name for messages and reports.
    :param preprocess_cfg: open_clip preprocess config (``size``, ``mean``,
        ``std``, ``interpolation``); read from ``model.visual`` when omitted.
    """

    backend = "open_clip"

    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer: Any,
        name: str,
        preprocess_cfg: Optional[Mapping[str, Any]] = None,
    ):
        if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
            raise TypeError(
                "OpenCLIPBackbone expects an open_clip CLIP model (with encode_image and "
                f"encode_text), got {type(model).__name__}."
            )
        cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        cfg.update(preprocess_cfg or {})
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise ValueError(
                    f"OpenCLIPBackbone supports square images only, model has size {size}."
                )
            size = size[0]
        interp = cfg.get("interpolation", "bicubic")
        mean = tuple(cfg.get("mean", CLIP_MEAN))
        std = tuple(cfg.get("std", CLIP_STD))
        context_length = int(getattr(model, "context_length", 0) or tokenizer.context_length)
        sot, eot, pad = _special_ids(tokenizer)
        embed_dim = _embed_dim(model)
        super().__init__(
            name=name,
            embed_dim=embed_dim,
            context_length=context_length,
            image_size=int(size),
            pad_token_id=pad,
            sot_token_id=sot,
            eot_token_id=eot,
            preprocess_train=ImagePreprocess(
                size=size, mean=mean, std=std, train=True, interpolation=interp
            ),
            preprocess_eval=ImagePreprocess(
                size=size, mean=mean, std=std, train=False, interpolation=interp
            ),
        )
        self.model = model
        self.tokenizer = tokenizer
        self.model_cfg: Optional[Dict[str, Any]] = None  # set by the constructors when known

    # ------------------------------------------------------------------
    # constructors
    # ------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        model_cfg: Mapping[str, Any],
        *,
        name: str = "custom-openclip",
        pretrained: Optional[str] = None,
        seed: Optional[int] = None,
        device: Optional[torch.device] = None,
    ) -> "OpenCLIPBackbone":
        """Build an open_clip model from a config dict (open_clip's JSON format).

        :param model_cfg: ``{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}``.
        :param name: name for messages.
        :param pretrained: optional local checkpoint file to load (strict).
        :param seed: seed for the random initialisation (global RNG untouched).
        :param device: device to move the model to.
        """
        open_clip = _import_open_clip()
        cfg = dict(model_cfg)
        for key in ("embed_dim", "vision_cfg", "text_cfg"):
            if key not in cfg:
                raise ValueError(
                    f"open_clip model config for '{name}' lacks '{key}'; expected keys "
                    f"embed_dim, vision_cfg, text_cfg (got {sorted(cfg)})."
                )
        custom_text = bool(cfg.pop("custom_text", False))
        model_cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            model = model_cls(**cfg)
        if pretrained is not None:
            if not os.path.isfile(pretrained):
                raise PretrainedWeightsNotFoundError(
                    f"Checkpoint for open_clip model '{name}' not found: pretrained={pretrained!r} "
                    "is not a file. Save one with torch.save(backbone.model.state_dict(), path) "
                    "or pass the path of an existing open_clip checkpoint."
                )
            open_clip.load_checkpoint(model, pretrained, strict=True)
        ctx = int(cfg["text_cfg"].get("context_length", 77))
        tokenizer = open_clip.SimpleTokenizer(context_length=ctx)
        size = cfg["vision_cfg"].get("image_size", 224)
        backbone = cls(
            model=model, tokenizer=tokenizer, name=name, preprocess_cfg={"size": size}
        )
        backbone.model_cfg = dict(model_cfg)
        backbone.eval()
        if device is not None:
            backbone.to(device)
        return backbone

    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        pretrained: Optional[str] = None,
        *,
        cache_dir: Optional[str] = None,
        local_files_only: Optional[bool] = None,
        device: Optional[torch.device] = None,
        **open_clip_kwargs: Any,
    ) -> "OpenCLIPBackbone":
        """Load through open_clip's own factory (``create_model_and_transforms``).

        :param model_name: an open_clip model name (``"ViT-B-16"``), or an
            ``"hf-hub:org/repo"`` / ``"local-dir:/path"`` identifier.
        :param pretrained: a pretrained tag (``"openai"``,
            ``"laion2b_s34b_b88k"``) or a local checkpoint file; None builds
            the architecture with random weights.
        :param cache_dir: where downloaded weights live (open_clip default:
            ``~/.cache/clip`` for URLs, the HF hub cache for hub files).
        :param local_files_only: never touch the network; fail with
            :class:`PretrainedWeightsNotFoundError` if the weights are not in
            ``cache_dir``. Defaults to True when ``AVALANCHE_MM_OFFLINE``,
            ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set.
        :param device: device for the model.
        :param open_clip_kwargs: forwarded to ``open_clip.create_model_and_transforms``.
        """
        open_clip = _import_open_clip()
        if local_files_only is None:
            local_files_only = _env_offline()
        cleaned = model_name.replace("/", "-")
        is_schema = model_name.startswith(("hf-hub:", "local-dir:"))
        if not is_schema and open_clip.get_model_config(cleaned) is None:
            raise ValueError(
                f"'{model_name}' is not an open_clip model name. Known names: "
                f"{', '.join(open_clip.list_models())}. Use 'hf-hub:org/repo' or "
                "'local-dir:/path' for other sources."
            )
        kwargs: Dict[str, Any] = dict(open_clip_kwargs)
        to_load = pretrained
        if pretrained and not is_schema:
            tag_cfg = open_clip.get_pretrained_cfg(cleaned, pretrained)
            if tag_cfg:
                found, searched = _find_cached_tag(tag_cfg, cache_dir)
                if local_files_only:
                    if found is None:
                        raise PretrainedWeightsNotFoundError(
                            _open_clip_missing_message(
                                model_name, pretrained, cache_dir, searched, tag_cfg
                            )
                        )
                    # load the cached file directly, with the tag's settings
                    to_load = found
                    kwargs.setdefault("force_quick_gelu", bool(tag_cfg.get("quick_gelu", False)))
                    kwargs.setdefault("image_mean", tag_cfg.get("mean"))
                    kwargs.setdefault("image_std", tag_cfg.get("std"))
                    kwargs.setdefault("image_interpolation", tag_cfg.get("interpolation"))
                    kwargs.setdefault("image_resize_mode", tag_cfg.get("resize_mode"))
            elif not os.path.isfile(pretrained):
                raise PretrainedWeightsNotFoundError(
                    f"open_clip model '{model_name}': pretrained={pretrained!r} is neither a "
                    f"known tag (tags: {open_clip.list_pretrained_tags_by_model(cleaned)}) nor "
                    "an existing checkpoint file. Pass a tag, or the path of a .pt/.bin/"
                    ".safetensors checkpoint on disk."
                )
        elif is_schema and model_name.startswith("hf-hub:") and local_files_only:
            repo = model_name[len("hf-hub:") :]
            raise PretrainedWeightsNotFoundError(
                f"open_clip model '{model_name}' lives on the HF hub and local_files_only is "
                f"set. Download the repository on a machine with internet (hf download {repo}; "
                "huggingface-cli download with older huggingface_hub), copy the folder here "
                "and load it with 'local-dir:/path/to/folder'."
            )
        try:
            model, _, _ = open_clip.create_model_and_transforms(
                model_name,
                pretrained=to_load,
                cache_dir=cache_dir,
                device=device or "cpu",
                **kwargs,
            )
        except (OSError, RuntimeError) as err:
            # only download/lookup failures become "weights not found"; a corrupt or
            # mismatching checkpoint keeps its own error
            downloading = (pretrained is not None and to_load == pretrained and not
                           os.path.isfile(str(pretrained))) or model_name.startswith("hf-hub:")
            if not downloading:
                raise
            tag_cfg = open_clip.get_pretrained_cfg(cleaned, pretrained) if pretrained else {}
            _, searched = _find_cached_tag(tag_cfg, cache_dir) if tag_cfg else (None, [])
            raise PretrainedWeightsNotFoundError(
                _open_clip_missing_message(
                    model_name, pretrained, cache_dir, searched, tag_cfg, reason=str(err)
                )
            ) from err
        tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
        label = f"{model_name}:{pretrained}" if pretrained else model_name
        backbone = cls(model=model, tokenizer=tokenizer, name=label).eval()
        if model_name.startswith("local-dir:"):
            cfg_path = os.path.join(model_name[len("local-dir:") :], "open_clip_config.json")
            with open(cfg_path, encoding="utf-8") as fh:
                backbone.model_cfg = json.load(fh)["model_cfg"]
        elif not is_schema:
            backbone.model_cfg = open_clip.get_model_config(cleaned)
        return backbone

    def save_pretrained(self, folder: str) -> None:
        """Write an open_clip ``local-dir`` folder: ``open_clip_config.json`` + weights.

        Load it back with ``build_backbone(folder)`` (open_clip's own
        ``local-dir:`` loader).
        """
        if self.model_cfg is None:
            raise ValueError(
                f"{self.name}: the model config is unknown (built from an instance), so no "
                "open_clip_config.json can be written; save the state dict instead."
            )
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        pp = self.preprocess_eval
        with open(os.path.join(folder, "open_clip_config.json"), "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "model_cfg": self.model_cfg,
                    "preprocess_cfg": {
                        "mean": list(pp.mean),
                        "std": list(pp.std),
                        "interpolation": pp.interpolation,
                        "resize_mode": "shortest",
                    },
                },
                fh,
                indent=2,
            )
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, os.path.join(folder, "open_clip_model.safetensors"))

    # ------------------------------------------------------------------
    # VisionLanguageBackbone implementation
    # ------------------------------------------------------------------
    def _encode_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images, normalize=False)

    def _encode_text(self, token_ids: Tensor) -> Tensor:
        return self.model.encode_text(token_ids, normalize=False)

    def _tokenize(self, texts: List[str]) -> Tensor:
        return self.tokenizer(texts, context_length=self.context_length)

    def _raw_logit_scale(self) -> Tensor:
        return self.model.logit_scale

    def _text_root(self) -> Tuple[nn.Module, str]:
        """The module holding the text transformer and its state-dict prefix."""
        text = getattr(self.model, "text", None)
        if text is not None:
            return text, "model.text."
        return self.model, "model."

    def _tower_prefixes(self, tower: str) -> Tuple[str, ...]:
        if tower == "vision":
            return ("model.visual.",)
        text, prefix = self._text_root()
        if prefix == "model.text.":
            return (prefix,)
        return tuple(
            "model." + n
            for n in (
                "transformer.",
                "token_embedding.",
                "positional_embedding",
                "ln_final.",
                "text_projection",
            )
        )

    def _transformer(self, tower: str) -> nn.Module:
        if check_tower(tower) == "vision":
            trunk = getattr(self.model.visual, "transformer", None)
            where = "model.visual"
        else:
            root, _ = self._text_root()
            trunk = getattr(root, "transformer", None)
            where = "model.text" if root is not self.model else "model"
        if trunk is None or not hasattr(trunk, "resblocks"):
            raise NotImplementedError(
                f"{self.name}: the {tower} tower ({where}, {type(trunk).__name__}) has no "
                "open_clip transformer blocks; adapters and prompts support open_clip ViT "
                "image towers and open_clip text transformers (not timm/ResNet/HF towers)."
            )
        return trunk

    def blocks(self, tower: str) -> List[nn.Module]:
        return list(self._transformer(tower).resblocks)

    def block_mlp(self, tower: str, index: int) -> nn.Module:
        return self.blocks(tower)[index].mlp

    def tokens_batch_first(self, tower: str) -> bool:
        return bool(getattr(self._transformer(tower), "batch_first", True))

    def width(self, tower: str) -> int:
        return int(self._transformer(tower).width)

    @property
    def text_token_embedding(self) -> nn.Embedding:
        root, _ = self._text_root()
        emb = getattr(root, "token_embedding", None)
        if not isinstance(emb, nn.Embedding):
            raise NotImplementedError(
                f"{self.name}: the text tower has no token_embedding nn.Embedding; text "
                "prompts need an open_clip text transformer."
            )
        return emb


def _embed_dim(model: nn.Module) -> int:
    proj = getattr(model.visual, "output_dim", None)
    if proj is not None:
        return int(proj)
    return int(model.text_projection.shape[-1])  # pragma: no cover - fallback


def _special_ids(tokenizer) -> Tuple[int, int, int]:
    """(sot, eot, pad) ids of an open_clip tokenizer."""
    sot = getattr(tokenizer, "sot_token_id", None)
    eot = getattr(tokenizer, "eot_token_id", None)
    if sot is not None and eot is not None:
        return int(sot), int(eot), 0  # SimpleTokenizer pads with 0
    hf_tok = getattr(tokenizer, "tokenizer", None)  # open_clip HFTokenizer wrapper
    if hf_tok is not None:
        bos = hf_tok.bos_token_id if hf_tok.bos_token_id is not None else hf_tok.cls_token_id
        eos = hf_tok.eos_token_id if hf_tok.eos_token_id is not None else hf_tok.sep_token_id
        pad = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else 0
        return int(bos if bos is not None else -1), int(eos if eos is not None else -1), int(pad)
    raise TypeError(
        f"cannot read special token ids from tokenizer {type(tokenizer).__name__}; expected "
        "an open_clip SimpleTokenizer or HFTokenizer."
    )


def _find_cached_tag(tag_cfg: Mapping[str, Any], cache_dir: Optional[str]):
    """Look for the weights of a pretrained tag on disk, without network.

    :return: (path or None, list of locations searched)
    """
    searched: List[str] = []
    if not tag_cfg:
        return None, searched
    if tag_cfg.get("file"):
        searched.append(tag_cfg["file"])
        return (tag_cfg["file"] if os.path.isfile(tag_cfg["file"]) else None), searched
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import constants as hf_constants
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        filenames = [filename] if filename else []
        if not filename:
            filenames = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        elif filename.endswith((".bin", ".pth")):
            filenames.insert(0, filename[:-4] + ".safetensors")
        root = cache_dir or hf_constants.HF_HUB_CACHE
        for fn in filenames:
            searched.append(f"HF hub cache {root}: repo {repo_id}, file {fn}")
            hit = try_to_load_from_cache(repo_id, fn, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit, searched
    url = tag_cfg.get("url", "")
    if url:
        root = cache_dir or os.path.expanduser("~/.cache/clip")
        target = os.path.join(root, os.path.basename(url))
        searched.append(target)
        if os.path.isfile(target):
            return target, searched
    return None, searched


def _open_clip_missing_message(
    model_name, pretrained, cache_dir, searched, tag_cfg, reason: Optional[str] = None
) -> str:
    lines = [
        f"Pretrained weights for open_clip model '{model_name}' (pretrained={pretrained!r}) "
        "are not available offline.",
        f"Cache dir searched: {cache_dir or '(open_clip defaults: ~/.cache/clip and the HF hub cache)'}",
    ]
    if searched:
        lines.append("Looked for: " + "; ".join(searched))
    if reason:
        lines.append(f"Underlying error: {reason}")
    hub = (tag_cfg or {}).get("hf_hub", "")
    url = (tag_cfg or {}).get("url", "")
    lines.append("How to fix it, on a machine with internet access:")
    if hub:
        repo_id = os.path.split(hub)[0]
        lines.append(
            f"  hf download {repo_id} --cache-dir <CACHE_DIR> (huggingface-cli download with older "
            "huggingface_hub), then copy <CACHE_DIR> here and pass cache_dir=<CACHE_DIR>;"
        )
    if url:
        lines.append(
            f"  or download {url} and place it as "
            f"{os.path.join(cache_dir or '~/.cache/clip', os.path.basename(url))};"
        )
    lines.append(
        "  or pass pretrained='/path/to/checkpoint.(pt|bin|safetensors)' with the open_clip "
        "state dict."
    )
    return "\n".join(lines)


__all__ = ["OpenCLIPBackbone"]
