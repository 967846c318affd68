"""Tokenizers: character-level, byte-level BPE and Hugging Face's, with a JSON round trip."""

from __future__ import annotations

from lmcore.tokenizers.base import BOS_TOKEN, TOKENIZERS, UNK_TOKEN, Tokenizer, printable, tokenizer_from_dict
from lmcore.tokenizers.bpe import BPETokenizer
from lmcore.tokenizers.char import CharTokenizer
from lmcore.tokenizers.chat import ChatTokenizer
from lmcore.tokenizers.hf import HFTokenizer

# The registry (in lmcore.tokenizers.base, which the kinds import) is filled here.
# "hf" wraps a Hugging Face tokenizer.json: it comes with imported models and is never trained here.
TOKENIZERS.update({"char": CharTokenizer, "bpe": BPETokenizer, "hf": HFTokenizer})
TOKENIZERS["chat"] = ChatTokenizer  # another tokenizer with a chat template's special tokens added


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
