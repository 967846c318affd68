"""The contract every tokenizer honours, and helpers shared by all of them.

A tokenizer maps text to a list of integer ids and back, exactly:
``decode(encode(s)) == s`` for every string it accepts. Each one has a
beginning-of-sequence token (``bos_id``) that separates documents, a printable
form of every token for charts (``token_str``), and a JSON-able dict form so
that it travels inside a checkpoint's metadata.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from lmcore.errors import TokenizerError

BOS_TOKEN = "<|bos|>"
UNK_TOKEN = "<|unk|>"

# How characters that are hard to see are shown in charts and tables.
_VISIBLE = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣"}


def printable(s: str) -> str:
    """A readable form of a piece of text: whitespace and control characters escaped.

    Example: printable("a b\\n") -> "a␣b\\\\n"
    """
    out = []
    for ch in s:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


class Tokenizer(ABC):
    """Base class: subclasses implement encode/decode/vocab_size/token_str/to_dict."""

    kind: ClassVar[str] = ""  # the "type" written by to_dict

    bos_id: int

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def token_str(self, i: int) -> str: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tokenizer": ...

    def token_bytes(self, i: int) -> bytes:
        """The raw text of token i as UTF-8 bytes (special tokens give b'')."""
        return self.decode([i]).encode("utf-8", errors="replace")

    def summary(self) -> dict[str, Any]:
        """A short description for `info` and the app."""
        return {"type": self.kind, "vocab_size": self.vocab_size, "bos_id": self.bos_id}

    def _check_ids(self, ids: list[int]) -> None:
        bad = [i for i in ids if not 0 <= int(i) < self.vocab_size]
        if bad:
            raise TokenizerError(
                f"token ids {bad[:5]} are outside this tokenizer's vocabulary of {self.vocab_size}; "
                "was the model trained with a different tokenizer?"
            )


# Tokenizer kind ("type" in to_dict()) -> its class; lmcore.tokenizers fills it as it loads them.
TOKENIZERS: dict[str, type[Tokenizer]] = {}


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from ``tok.to_dict()``; TokenizerError on anything else."""
    if not isinstance(d, dict) or not isinstance(d.get("type"), str) or d["type"] not in TOKENIZERS:
        kind = d.get("type") if isinstance(d, dict) else type(d).__name__
        raise TokenizerError(f"unknown tokenizer type {kind!r}; expected one of {', '.join(TOKENIZERS)}")
    return TOKENIZERS[d["type"]].from_dict(d)
