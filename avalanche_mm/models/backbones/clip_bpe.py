"""The CLIP byte-pair vocabulary, built offline from open_clip's bundled file.

open_clip ships ``bpe_simple_vocab_16e6.txt.gz`` (the merges of the OpenAI
CLIP tokenizer). From it we build the ``vocab.json`` + ``merges.txt`` pair
that HF's ``CLIPTokenizer`` reads, so the tiny HF config tokenizes exactly
like open_clip (same ids) without any download.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from typing import Dict, List, Tuple

NUM_MERGES = 49152 - 256 - 2
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"


def _bytes_to_unicode() -> Dict[int, str]:
    """The reversible byte -> printable unicode map of GPT-2/CLIP BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def clip_bpe_vocab_and_merges() -> Tuple[Dict[str, int], List[str]]:
    """The CLIP vocabulary (49408 entries) and its merges, from open_clip's file."""
    try:
        from open_clip.tokenizer import default_bpe
    except ImportError as err:  # pragma: no cover - open_clip is a core dependency
        raise ImportError(
            "building the CLIP vocabulary needs open_clip_torch (it ships the BPE file): "
            "pip install open_clip_torch"
        ) from err
    path = default_bpe()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"open_clip's BPE vocabulary file is missing at {path}; reinstall open_clip_torch."
        )
    with gzip.open(path) as fh:
        merges = fh.read().decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [SOT_TOKEN, EOT_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_hf_clip_tokenizer():
    """A ``transformers.CLIPTokenizer`` with the real CLIP vocabulary, built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe_vocab_and_merges()
    with tempfile.TemporaryDirectory(prefix="avalanche_mm_clip_bpe_") as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as fh:
            json.dump(vocab, fh)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as fh:
            fh.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer.from_pretrained(tmp)


__all__ = ["clip_bpe_vocab_and_merges", "build_hf_clip_tokenizer", "SOT_TOKEN", "EOT_TOKEN"]
