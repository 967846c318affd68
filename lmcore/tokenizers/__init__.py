"""Tokenizers: character-level, byte-level BPE and Hugging Face's, with a JSON round trip."""

from __future__ import annotations

from typing import Any

from lmcore.errors import TokenizerError
from lmcore.tokenizers.base import BOS_TOKEN, UNK_TOKEN, Tokenizer, printable
from lmcore.tokenizers.bpe import BPETokenizer
from lmcore.tokenizers.char import CharTokenizer
from lmcore.tokenizers.chat import ChatTokenizer
from lmcore.tokenizers.hf import HFTokenizer

# "hf" wraps a Hugging Face tokenizer.json: it comes with imported models and is never trained here.
TOKENIZERS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "bpe": BPETokenizer, "hf": HFTokenizer}
TOKENIZERS["chat"] = ChatTokenizer  # another tokenizer with a chat template's special tokens added


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from ``tok.to_dict()``; TokenizerError on anything else."""
    if not isinstance(d, dict) or not isinstance(d.get("type"), str) or d["type"] not in TOKENIZERS:
        kind = d.get("type") if isinstance(d, dict) else type(d).__name__
        raise TokenizerError(f"unknown tokenizer type {kind!r}; expected one of {', '.join(TOKENIZERS)}")
    return TOKENIZERS[d["type"]].from_dict(d)


__all__ = [
    "BOS_TOKEN",
    "BPETokenizer",
    "CharTokenizer",
    "ChatTokenizer",
    "HFTokenizer",
    "TOKENIZERS",
    "Tokenizer",
    "UNK_TOKEN",
    "printable",
    "tokenizer_from_dict",
]
