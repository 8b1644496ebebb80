"""HF transformers implementation of :class:`VisionLanguageBackbone`.

Loads ``transformers.CLIPModel`` checkpoints from a hub id
(``"openai/clip-vit-base-patch16"``) or a local folder (``save_pretrained``
layout), or builds one from a ``CLIPConfig`` (the tiny test config, with the
CLIP tokenizer built offline from open_clip's vocabulary). transformers is
imported lazily.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .base import PretrainedWeightsNotFoundError, VisionLanguageBackbone, check_tower
from .clip_bpe import build_hf_clip_tokenizer
from .open_clip_backbone import _env_offline
from .preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocess

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


class HFCLIPBackbone(VisionLanguageBackbone):
    """A vision-language backbone backed by ``transformers.CLIPModel``.

    :param model: a ``transformers.CLIPModel``.
    :param tokenizer: an HF tokenizer for the model (CLIP BPE).
    :param name: model name for messages and reports.
    :param image_mean: normalisation mean (CLIP's by default).
    :param image_std: normalisation std (CLIP's by default).
    :param interpolation: resize interpolation (``"bicubic"`` by default).
    """

    backend = "hf"

    def __init__(
        self,
        *,
        model: nn.Module,
        tokenizer: Any,
        name: str,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        interpolation: str = "bicubic",
    ):
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "vision_config"):
            raise TypeError(
                f"HFCLIPBackbone expects a transformers CLIPModel, got {type(model).__name__}."
            )
        size = int(config.vision_config.image_size)
        context_length = int(config.text_config.max_position_embeddings)
        pad = tokenizer.pad_token_id
        bos = tokenizer.bos_token_id
        eos = tokenizer.eos_token_id
        if None in (pad, bos, eos):
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} lacks pad/bos/eos ids "
                f"(pad={pad}, bos={bos}, eos={eos}); a CLIP tokenizer defines all three."
            )
        super().__init__(
            name=name,
            embed_dim=int(config.projection_dim),
            context_length=context_length,
            image_size=size,
            pad_token_id=int(pad),
            sot_token_id=int(bos),
            eot_token_id=int(eos),
            preprocess_train=ImagePreprocess(
                size=size, mean=image_mean, std=image_std, train=True, interpolation=interpolation
            ),
            preprocess_eval=ImagePreprocess(
                size=size, mean=image_mean, std=image_std, train=False, interpolation=interpolation
            ),
        )
        self.model = model
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------
    # constructors
    # ------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: Union[Mapping[str, Any], Any],
        *,
        name: str = "custom-hfclip",
        tokenizer: Any = None,
        pretrained: Optional[str] = None,
        seed: Optional[int] = None,
        device: Optional[torch.device] = None,
    ) -> "HFCLIPBackbone":
        """Build a randomly initialised ``CLIPModel`` from a config.

        :param config: a ``CLIPConfig`` or a dict with ``text_config``,
            ``vision_config`` and ``projection_dim``.
        :param name: name for messages.
        :param tokenizer: HF tokenizer; default: the CLIP BPE tokenizer built
            offline from open_clip's bundled vocabulary (vocab_size must be 49408).
        :param pretrained: optional local state-dict file (``torch.save`` of
            ``backbone.model.state_dict()``) to load strictly.
        :param seed: seed for the initialisation (global RNG untouched).
        :param device: device to move the model to.
        """
        from transformers import CLIPConfig, CLIPModel

        if isinstance(config, Mapping):
            config = CLIPConfig(**dict(config))
        if tokenizer is None:
            tokenizer = build_hf_clip_tokenizer()
            if config.text_config.vocab_size < len(tokenizer):
                raise ValueError(
                    f"HF config '{name}' has text vocab_size={config.text_config.vocab_size}, "
                    f"but the default CLIP tokenizer has {len(tokenizer)} tokens. Use "
                    "vocab_size=49408 or pass your own tokenizer."
                )
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            model = CLIPModel(config)
        if pretrained is not None:
            if not os.path.isfile(pretrained):
                raise PretrainedWeightsNotFoundError(
                    f"Checkpoint for HF CLIP model '{name}' not found: pretrained={pretrained!r} is "
                    "not a file. Save one with torch.save(backbone.model.state_dict(), path), or "
                    "load a save_pretrained folder with build_backbone('/path/to/folder')."
                )
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        model.eval()
        backbone = cls(model=model, tokenizer=tokenizer, name=name)
        if device is not None:
            backbone.to(device)
        return backbone

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        *,
        cache_dir: Optional[str] = None,
        local_files_only: Optional[bool] = None,
        revision: Optional[str] = None,
        device: Optional[torch.device] = None,
        **hf_kwargs: Any,
    ) -> "HFCLIPBackbone":
        """Load a ``CLIPModel`` + tokenizer (+ image processor settings).

        :param model_id: HF hub id (``"openai/clip-vit-base-patch16"``) or a
            local folder written by ``save_pretrained``.
        :param cache_dir: HF cache directory (default: the HF hub cache).
        :param local_files_only: never touch the network; fail with
            :class:`PretrainedWeightsNotFoundError` when files are missing.
            Defaults to True when ``AVALANCHE_MM_OFFLINE``, ``HF_HUB_OFFLINE``
            or ``TRANSFORMERS_OFFLINE`` is set.
        :param revision: hub revision (branch, tag or commit).
        :param device: device for the model.
        :param hf_kwargs: forwarded to ``CLIPModel.from_pretrained``.
        """
        from transformers import AutoTokenizer, CLIPModel

        if local_files_only is None:
            local_files_only = _env_offline()
        is_dir = os.path.isdir(model_id)
        if is_dir and not os.path.isfile(os.path.join(model_id, "config.json")):
            raise PretrainedWeightsNotFoundError(
                f"HF CLIP folder '{model_id}' has no config.json (it contains "
                f"{sorted(os.listdir(model_id))}). A loadable folder is written by "
                "CLIPModel.save_pretrained(folder) + tokenizer.save_pretrained(folder): "
                "config.json, model.safetensors, tokenizer files, preprocessor_config.json."
            )
        common = dict(cache_dir=cache_dir, local_files_only=local_files_only, revision=revision)
        try:
            model = CLIPModel.from_pretrained(model_id, **common, **hf_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(model_id, **common)
        except OSError as err:
            raise PretrainedWeightsNotFoundError(
                _hf_missing_message(model_id, cache_dir, local_files_only, str(err))
            ) from err
        mean, std, interp = _image_settings(model_id, common)
        model.eval()
        backbone = cls(
            model=model,
            tokenizer=tokenizer,
            name=model_id,
            image_mean=mean,
            image_std=std,
            interpolation=interp,
        )
        if device is not None:
            backbone.to(device)
        return backbone

    def save_pretrained(self, folder: str) -> None:
        """Write model, tokenizer and preprocessing settings as an HF folder."""
        import json

        os.makedirs(folder, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        inv = {v: k for k, v in _RESAMPLE.items()}
        pp = self.preprocess_eval
        with open(os.path.join(folder, "preprocessor_config.json"), "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "image_processor_type": "CLIPImageProcessor",
                    "image_mean": list(pp.mean),
                    "image_std": list(pp.std),
                    "resample": inv[pp.interpolation],
                    "size": {"shortest_edge": pp.size},
                    "crop_size": {"height": pp.size, "width": pp.size},
                },
                fh,
            )

    # ------------------------------------------------------------------
    # VisionLanguageBackbone implementation
    # ------------------------------------------------------------------
    def _encode_image(self, images: Tensor) -> Tensor:
        out = self.model.vision_model(pixel_values=images)
        pooled = out.pooler_output if hasattr(out, "pooler_output") else out[1]
        return self.model.visual_projection(pooled)

    def _encode_text(self, token_ids: Tensor) -> Tensor:
        out = self.model.text_model(input_ids=token_ids)
        pooled = out.pooler_output if hasattr(out, "pooler_output") else out[1]
        return self.model.text_projection(pooled)

    def _tokenize(self, texts: List[str]) -> Tensor:
        enc = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.context_length,
            truncation=True,
            return_tensors="pt",
        )
        return enc["input_ids"]

    def _raw_logit_scale(self) -> Tensor:
        return self.model.logit_scale

    def _tower_prefixes(self, tower: str) -> Tuple[str, ...]:
        if tower == "vision":
            return ("model.vision_model.", "model.visual_projection.")
        return ("model.text_model.", "model.text_projection.")

    def _tower_model(self, tower: str) -> nn.Module:
        check_tower(tower)
        return self.model.vision_model if tower == "vision" else self.model.text_model

    def blocks(self, tower: str) -> List[nn.Module]:
        return list(self._tower_model(tower).encoder.layers)

    def block_mlp(self, tower: str, index: int) -> nn.Module:
        return self.blocks(tower)[index].mlp

    def tokens_batch_first(self, tower: str) -> bool:
        check_tower(tower)
        return True

    def width(self, tower: str) -> int:
        cfg = self.model.config
        sub = cfg.vision_config if check_tower(tower) == "vision" else cfg.text_config
        return int(sub.hidden_size)

    @property
    def text_token_embedding(self) -> nn.Embedding:
        return self.model.text_model.embeddings.token_embedding


def _image_settings(model_id: str, common: Mapping[str, Any]):
    """(mean, std, interpolation) from the checkpoint's preprocessor_config.json."""
    import json

    path = None
    if os.path.isdir(model_id):
        candidate = os.path.join(model_id, "preprocessor_config.json")
        path = candidate if os.path.isfile(candidate) else None
    else:
        from transformers.utils import cached_file

        path = cached_file(
            model_id,
            "preprocessor_config.json",
            _raise_exceptions_for_missing_entries=False,
            **common,
        )
    if path is None:
        warnings.warn(
            f"{model_id}: no preprocessor_config.json; using CLIP's image mean/std and "
            "bicubic resizing.",
            stacklevel=3,
        )
        return CLIP_MEAN, CLIP_STD, "bicubic"
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    interp = _RESAMPLE.get(int(cfg.get("resample", 3)), "bicubic")
    return (
        tuple(cfg.get("image_mean", CLIP_MEAN)),
        tuple(cfg.get("image_std", CLIP_STD)),
        interp,
    )


def _hf_missing_message(model_id, cache_dir, local_files_only, reason) -> str:
    from huggingface_hub import constants as hf_constants

    searched = cache_dir or hf_constants.HF_HUB_CACHE
    mode = "local files only" if local_files_only else "download failed (offline?)"
    return "\n".join(
        [
            f"Pretrained weights for HF CLIP model '{model_id}' are not available ({mode}).",
            f"Cache dir searched: {searched}",
            f"Underlying error: {reason}",
            "How to fix it, on a machine with internet access:",
            f"  hf download {model_id} --cache-dir <CACHE_DIR> (huggingface-cli download with "
            "older huggingface_hub), then copy <CACHE_DIR> here and pass cache_dir=<CACHE_DIR>;",
            "  or CLIPModel.from_pretrained(id).save_pretrained(FOLDER) and "
            "AutoTokenizer.from_pretrained(id).save_pretrained(FOLDER), copy FOLDER (config.json, "
            "model.safetensors, tokenizer files, preprocessor_config.json) here and pass its path.",
        ]
    )


__all__ = ["HFCLIPBackbone"]
