"""A small, dependency-free word tokenizer for built-in worlds and tests.

Real vision-language backbones bring their own tokenizers
(``backbone.tokenize``); this one serves fusion models with a learned text
embedding and offline examples.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional

import torch

_WORD = re.compile(r"[a-z0-9]+")


class WordTokenizer:
    """Lower-case word tokenizer with a fixed vocabulary.

    Id 0 is padding, id 1 is the unknown word; known words start at 2.

    :param vocab: the known words (order fixes their ids).
    :param max_length: optional cap on the number of tokens per text.
    """

    PAD, UNK = 0, 1

    def __init__(self, vocab: Iterable[str], *, max_length: Optional[int] = None):
        words = list(dict.fromkeys(w.lower() for w in vocab))
        if not words:
            raise ValueError("WordTokenizer needs a non-empty vocabulary.")
        self.word_to_id: Dict[str, int] = {w: i + 2 for i, w in enumerate(words)}
        self.max_length = max_length

    @classmethod
    def fit(cls, texts: Iterable[str], **kwargs) -> "WordTokenizer":
        """Build the vocabulary from a corpus (words in order of appearance)."""
        words: List[str] = []
        for t in texts:
            words.extend(_WORD.findall(t.lower()))
        return cls(words, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.word_to_id) + 2

    def __call__(self, text: str) -> torch.Tensor:
        if not isinstance(text, str):
            raise TypeError(f"WordTokenizer expects a string, got {type(text).__name__}.")
        ids = [self.word_to_id.get(w, self.UNK) for w in _WORD.findall(text.lower())]
        if not ids:
            ids = [self.UNK]
        if self.max_length is not None:
            ids = ids[: self.max_length]
        return torch.tensor(ids, dtype=torch.long)


__all__ = ["WordTokenizer"]
