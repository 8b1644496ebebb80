"""The vision-language backbone interface.

:class:`VisionLanguageBackbone` is what every strategy, head and attachment
codes against. It hides whether the weights come from open_clip or from HF
transformers: both implementations expose the same encoders, tokenizer,
logit scale, preprocessing and transformer blocks.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .preprocess import ImagePreprocess

TOWERS = ("vision", "text")


class PretrainedWeightsNotFoundError(FileNotFoundError):
    """Raised when pretrained weights are not on disk and cannot be downloaded.

    The message names the model, the pretrained tag or path, the cache
    directory that was searched and how to place the files there.
    """


def check_tower(tower: str) -> str:
    """Validate a tower name (``"vision"`` or ``"text"``)."""
    if tower not in TOWERS:
        raise ValueError(
            f"tower must be one of {TOWERS}, got {tower!r}. Use 'vision' for the image "
            "encoder and 'text' for the text encoder."
        )
    return tower


class SampleTokenizer:
    """Picklable ``str -> LongTensor[L]`` tokenizer for dataset builders.

    Wraps a backbone's tokenizer so that datasets store variable-length
    token ids (``[SOT, ..., EOT]``, no padding, truncated to the context
    length with the EOT kept last). Give it to
    :func:`avalanche_mm.data.make_multimodal_dataset` as
    ``tokenizers={"text": backbone.sample_tokenizer}`` together with
    ``pad_values={"text": backbone.pad_token_id}``.

    :param tokenize: callable ``list[str] -> LongTensor[N, context_length]``.
    :param pad_token_id: the id used for padding by ``tokenize``.
    :param eot_token_id: the end-of-text id.
    """

    def __init__(self, *, tokenize, pad_token_id: int, eot_token_id: int):
        self._tokenize = tokenize
        self.pad_token_id = int(pad_token_id)
        self.eot_token_id = int(eot_token_id)
        self._cache: Dict[str, Tensor] = {}

    def __getstate__(self):  # the cache is a speed-up, not state: workers start without it
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def _strip(self, ids: Tensor) -> Tensor:
        eot = (ids == self.eot_token_id).nonzero()
        end = int(eot[0]) + 1 if len(eot) else len(ids)
        return ids[:end].clone()

    def encode_many(self, texts: Sequence[str], *, batch_size: int = 1024) -> List[Tensor]:
        """Token ids of each text (as :meth:`__call__`), tokenising each distinct text once,
        in batches, and caching it on this tokenizer (a caption dataset repeats captions
        across splits and builds)."""
        texts = list(texts)
        bad = sorted({type(t).__name__ for t in texts if not isinstance(t, str)})
        if bad:
            raise TypeError(f"SampleTokenizer.encode_many expects strings, got items of type {bad}.")
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for s in range(0, len(todo), batch_size):
            chunk = todo[s : s + batch_size]
            for text, ids in zip(chunk, self._tokenize(chunk)):
                self._cache[text] = self._strip(ids)
        return [self._cache[t] for t in texts]

    def __call__(self, text: str) -> Tensor:
        if not isinstance(text, str):
            raise TypeError(
                f"SampleTokenizer expects one string, got {type(text).__name__}. Tokenize "
                "lists of strings with backbone.tokenize(texts)."
            )
        cached = self._cache.get(text)
        if cached is not None:
            return cached.clone()
        return self._strip(self._tokenize([text])[0])


class VisionLanguageBackbone(nn.Module):
    """A dual-encoder vision-language model (CLIP-like) behind one interface.

    Subclasses (:class:`~avalanche_mm.models.OpenCLIPBackbone`,
    :class:`~avalanche_mm.models.HFCLIPBackbone`) implement the private
    ``_encode_image``/``_encode_text``/``_tokenize`` methods and the block
    accessors; everything public lives here.

    Public attributes: ``name``, ``backend`` (``"open_clip"`` or ``"hf"``),
    ``embed_dim``, ``context_length``, ``image_size``, ``pad_token_id``,
    ``sot_token_id``, ``eot_token_id``, ``preprocess_train``,
    ``preprocess_eval`` and ``attachments`` (an ``nn.ModuleDict`` of
    adapters/prompts attached with :mod:`avalanche_mm.models.attach`).

    :param name: human-readable model name (config name or checkpoint id).
    :param embed_dim: size of the joint embedding space.
    :param context_length: number of text tokens the text tower takes.
    :param image_size: input image side length.
    :param pad_token_id: id used to pad token sequences.
    :param sot_token_id: start-of-text id.
    :param eot_token_id: end-of-text id.
    :param preprocess_train: image transform for training (with augmentation).
    :param preprocess_eval: deterministic image transform for evaluation.
    """

    backend: str = ""

    def __init__(
        self,
        *,
        name: str,
        embed_dim: int,
        context_length: int,
        image_size: int,
        pad_token_id: int,
        sot_token_id: int,
        eot_token_id: int,
        preprocess_train: ImagePreprocess,
        preprocess_eval: ImagePreprocess,
    ):
        super().__init__()
        self.name = str(name)
        self.embed_dim = int(embed_dim)
        self.context_length = int(context_length)
        self.image_size = int(image_size)
        self.pad_token_id = int(pad_token_id)
        self.sot_token_id = int(sot_token_id)
        self.eot_token_id = int(eot_token_id)
        self.preprocess_train = preprocess_train
        self.preprocess_eval = preprocess_eval
        self.attachments = nn.ModuleDict()
        self._attachments_enabled = True
        self._attach_generation = 0

    # ------------------------------------------------------------------
    # to implement in subclasses
    # ------------------------------------------------------------------
    def _encode_image(self, images: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode_text(self, token_ids: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tokenize(self, texts: List[str]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _raw_logit_scale(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tower_prefixes(self, tower: str) -> Tuple[str, ...]:  # pragma: no cover
        raise NotImplementedError

    def blocks(self, tower: str) -> List[nn.Module]:  # pragma: no cover - abstract
        """Transformer blocks of ``tower`` (``"vision"`` or ``"text"``), in order."""
        raise NotImplementedError

    def block_mlp(self, tower: str, index: int) -> nn.Module:  # pragma: no cover
        """The MLP (feed-forward) sub-module of block ``index`` of ``tower``."""
        raise NotImplementedError

    def tokens_batch_first(self, tower: str) -> bool:  # pragma: no cover - abstract
        """True when the blocks of ``tower`` take ``[B, L, D]`` (else ``[L, B, D]``)."""
        raise NotImplementedError

    def width(self, tower: str) -> int:  # pragma: no cover - abstract
        """Hidden size of the transformer blocks of ``tower``."""
        raise NotImplementedError

    @property
    def text_token_embedding(self) -> nn.Embedding:  # pragma: no cover - abstract
        """The ``nn.Embedding`` that maps token ids to the text tower's input."""
        raise NotImplementedError

    # ------------------------------------------------------------------
    # public interface
    # ------------------------------------------------------------------
    @property
    def vision_blocks(self) -> List[nn.Module]:
        """Transformer blocks of the image tower (for adapters and prompts)."""
        return self.blocks("vision")

    @property
    def text_blocks(self) -> List[nn.Module]:
        """Transformer blocks of the text tower (for adapters and prompts)."""
        return self.blocks("text")

    @property
    def logit_scale(self) -> nn.Parameter:
        """The learnable temperature, in log space (as stored by CLIP).

        Use :meth:`logit_scale_value` for the multiplier applied to cosine
        similarities (``exp`` applied, clamped to 100 like CLIP training).
        """
        return self._raw_logit_scale()

    def logit_scale_value(self) -> Tensor:
        """``exp(logit_scale)`` clamped to at most 100 (a 0-d tensor)."""
        return self._raw_logit_scale().exp().clamp(max=100.0)

    @property
    def device(self) -> torch.device:
        return self._raw_logit_scale().device

    @property
    def sample_tokenizer(self) -> SampleTokenizer:
        """``str -> LongTensor[L]`` tokenizer for dataset builders (no padding); one instance
        per backbone, so its cache of tokenised texts (:meth:`SampleTokenizer.encode_many`) is
        shared by every dataset built with it."""
        tok = self.__dict__.get("_sample_tokenizer")
        if tok is None:
            tok = SampleTokenizer(tokenize=self.tokenize, pad_token_id=self.pad_token_id, eot_token_id=self.eot_token_id)
            self.__dict__["_sample_tokenizer"] = tok
        return tok

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Tokenize texts into ``LongTensor[N, context_length]`` (padded, truncated).

        :param texts: a list of strings (a single string is accepted too).
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(
                f"tokenize expects a list of strings, got items of type {sorted(set(bad))}."
            )
        if not texts:
            return torch.zeros(0, self.context_length, dtype=torch.long)
        ids = self._tokenize(texts)
        return ids.to(torch.long)

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        """Embed preprocessed images ``[B, 3, H, W]`` into ``[B, embed_dim]``.

        :param images: float tensor, already transformed with
            ``preprocess_eval``/``preprocess_train``.
        :param normalize: L2-normalise the embeddings (default True).
        """
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ValueError(
                "encode_image expects a float tensor [B, 3, H, W], got "
                f"{_describe(images)}. Apply backbone.preprocess_eval to each image and stack."
            )
        if not images.is_floating_point():
            raise TypeError(
                f"encode_image expects floating-point pixels, got dtype {images.dtype}. "
                "Use backbone.preprocess_eval (converts uint8 images and normalises)."
            )
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"encode_image: {self.name} expects {self.image_size}x{self.image_size} images, "
                f"got {tuple(images.shape[-2:])}. Resize with backbone.preprocess_eval."
            )
        feats = self._encode_image(images)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, token_ids: Tensor, normalize: bool = True) -> Tensor:
        """Embed token ids ``[N, L]`` into ``[N, embed_dim]``.

        Sequences shorter than ``context_length`` are padded with
        ``pad_token_id`` (so batches collated by the data layer, padded to
        their longest text, work as they are); longer ones are truncated
        with the end-of-text token kept last.

        :param token_ids: integer tensor from :meth:`tokenize` or the collate.
        :param normalize: L2-normalise the embeddings (default True).
        """
        if not isinstance(token_ids, Tensor) or token_ids.dim() != 2:
            raise ValueError(
                f"encode_text expects token ids [N, L], got {_describe(token_ids)}. "
                "Use backbone.tokenize(list_of_strings)."
            )
        if token_ids.is_floating_point() or token_ids.dtype == torch.bool:
            raise TypeError(
                f"encode_text expects integer token ids, got dtype {token_ids.dtype}."
            )
        token_ids = self.fit_context(token_ids.long())
        feats = self._encode_text(token_ids)
        return F.normalize(feats, dim=-1) if normalize else feats

    def fit_context(self, token_ids: Tensor) -> Tensor:
        """Pad or truncate ``[N, L]`` token ids to ``[N, context_length]``."""
        n, length = token_ids.shape
        ctx = self.context_length
        if length < ctx:
            pad = token_ids.new_full((n, ctx - length), self.pad_token_id)
            return torch.cat([token_ids, pad], dim=1)
        if length > ctx:
            cut = token_ids[:, :ctx].clone()
            # keep the end-of-text token for sequences that lost it
            has_eot = (cut == self.eot_token_id).any(dim=1)
            cut[~has_eot, -1] = self.eot_token_id
            return cut
        return token_ids

    def forward(
        self, images: Optional[Tensor] = None, token_ids: Optional[Tensor] = None
    ) -> Tuple[Optional[Tensor], Optional[Tensor], Tensor]:
        """CLIP-style forward: normalised image and text features and the scale.

        :return: ``(image_features or None, text_features or None,
            logit_scale_value())``.
        """
        if images is None and token_ids is None:
            raise ValueError("forward needs images, token_ids or both; got neither.")
        img = self.encode_image(images) if images is not None else None
        txt = self.encode_text(token_ids) if token_ids is not None else None
        return img, txt, self.logit_scale_value()

    # ------------------------------------------------------------------
    # parameters by tower, freezing, attachments
    # ------------------------------------------------------------------
    def named_base_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        """Parameters of the pretrained model (attachments excluded)."""
        for name, p in self.named_parameters():
            if not name.startswith("attachments."):
                yield name, p

    def named_tower_parameters(self, tower: str) -> Iterator[Tuple[str, nn.Parameter]]:
        """Base parameters of one tower (``"vision"`` or ``"text"``).

        The logit scale belongs to neither tower.
        """
        prefixes = self._tower_prefixes(check_tower(tower))
        for name, p in self.named_base_parameters():
            if name.startswith(prefixes):
                yield name, p

    def tower_parameters(self, tower: str) -> List[nn.Parameter]:
        """List of the base parameters of ``tower``."""
        return [p for _, p in self.named_tower_parameters(tower)]

    def freeze(self, *towers: str, logit_scale: bool = True) -> "VisionLanguageBackbone":
        """Set ``requires_grad=False`` on base parameters.

        :param towers: towers to freeze; none given means both.
        :param logit_scale: also freeze the logit scale (default True).
        """
        towers = towers or TOWERS
        for tower in towers:
            for p in self.tower_parameters(tower):
                p.requires_grad_(False)
        if logit_scale and len(towers) == len(TOWERS):
            self._raw_logit_scale().requires_grad_(False)
        return self

    def unfreeze(self, *towers: str, logit_scale: bool = False) -> "VisionLanguageBackbone":
        """Set ``requires_grad=True`` on base parameters of ``towers`` (default both)."""
        for tower in towers or TOWERS:
            for p in self.tower_parameters(tower):
                p.requires_grad_(True)
        if logit_scale:
            self._raw_logit_scale().requires_grad_(True)
        return self

    def add_attachment(self, name: str, module: nn.Module) -> None:
        """Register an adapter/prompt module under ``attachments[name]``."""
        if name in self.attachments:
            raise KeyError(
                f"an attachment named '{name}' is already on {self.name}; detach it first "
                f"or choose another name (attached: {list(self.attachments.keys())})."
            )
        self.attachments[name] = module
        self._attach_generation += 1

    def remove_attachment(self, name: str) -> nn.Module:
        """Unregister attachment ``name`` (and remove its hooks); return it."""
        if name not in self.attachments:
            raise KeyError(
                f"no attachment named '{name}' on {self.name} "
                f"(attached: {list(self.attachments.keys())})."
            )
        module = self.attachments[name]
        del self.attachments[name]
        self._attach_generation += 1
        release = getattr(module, "_release", None)
        if callable(release):  # remove its hooks too
            release()
        return module

    @property
    def attachments_enabled(self) -> bool:
        """Whether attached adapters/prompts act on the forward pass."""
        return self._attachments_enabled

    @contextlib.contextmanager
    def attachments_disabled(self):
        """Context manager: run the untouched pretrained model (attachments off).

        Used e.g. to fall back to zero-shot CLIP (MoE-Adapters' DDAS) or to
        compute teacher outputs with the same weights.
        """
        previous = self._attachments_enabled
        self._attachments_enabled = False
        self._attach_generation += 1
        try:
            yield self
        finally:
            self._attachments_enabled = previous
            self._attach_generation += 1

    def text_state_key(self) -> Tuple:
        """A cheap key that changes whenever the text encoding may change.

        Built from the identity and in-place version counter of every text
        tower parameter and of every attachment parameter touching the text
        tower, plus a counter bumped when attachments are added, removed or
        toggled. Optimizer steps, ``load_state_dict`` and in-place edits all
        bump the version counters. Used by zero-shot heads to decide when
        cached class embeddings must be re-encoded.
        """
        key: List = [self._attach_generation, self._attachments_enabled]
        for p in self.tower_parameters("text"):
            key.append((id(p), p._version, p.device, p.dtype))
        for name, module in self.attachments.items():
            if "text" in getattr(module, "towers", TOWERS):
                for p in module.parameters():
                    key.append((name, id(p), p._version, p.device, p.dtype))
        return tuple(key)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, backend={self.backend!r}, embed_dim={self.embed_dim}, "
            f"image_size={self.image_size}, context_length={self.context_length}"
        )


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"an object of type {type(x).__name__}"


__all__ = [
    "VisionLanguageBackbone",
    "PretrainedWeightsNotFoundError",
    "SampleTokenizer",
    "TOWERS",
    "check_tower",
]
