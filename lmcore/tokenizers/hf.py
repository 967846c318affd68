"""A Hugging Face fast tokenizer (a ``tokenizer.json``) as an lmcore tokenizer.

Models imported from transformers keep the tokenizer they were trained with:
its ``tokenizer.json`` is held verbatim (it travels inside the checkpoint's
metadata, like every other tokenizer's dict) and run by the ``tokenizers``
library, which is imported only when such a tokenizer is built.

- ``encode`` adds no special tokens of its own (no BOS in front): the ids are
  exactly those of the text;
- ``decode`` drops special tokens, as the other tokenizers do (a boundary, not text);
- ``vocab_size`` is the model's: checkpoints often pad the embedding beyond
  the tokenizer's last id (Mamba's 50280 for GPT-NeoX's 50277 tokens), and
  the ids past the tokenizer decode to nothing;
- ``bos_id`` is the separator between documents: the model's BOS token, or
  its end-of-text token where it has no BOS (GPT-2's ``<|endoftext|>``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from lmcore.errors import TokenizerError
from lmcore.tokenizers.base import Tokenizer, printable


@lru_cache(maxsize=1)
def byte_encoder() -> dict[int, str]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte.

    Printable Latin-1 bytes stand for themselves; the others (controls, space,
    0x7f-0xa0, 0xad) take the code points from 256 on, in byte order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = (b for b in range(256) if b not in keep)
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + k) for k, b in enumerate(shifted)})
    return table


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The inverse of ``byte_encoder``."""
    return {ch: b for b, ch in byte_encoder().items()}


class HFTokenizer(Tokenizer):
    kind = "hf"

    def __init__(
        self,
        tokenizer_json: str,
        vocab_size: int | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        name: str = "",
    ):
        from tokenizers import Tokenizer as FastTokenizer

        if not isinstance(tokenizer_json, str):
            raise TokenizerError("a Hugging Face tokenizer needs the text of its tokenizer.json")
        try:
            self._tk = FastTokenizer.from_str(tokenizer_json)
        except Exception as e:  # the Rust parser raises plain Exceptions
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TokenizerError(f"tokenizer.json cannot be read ({first}); the file is damaged") from None
        self.tokenizer_json = tokenizer_json
        self.name = name
        own = self._tk.get_vocab_size(with_added_tokens=True)
        self._size = own if vocab_size is None else vocab_size
        if isinstance(self._size, bool) or not isinstance(self._size, int) or self._size < own:
            raise TokenizerError(
                f"the model's vocabulary ({vocab_size}) is smaller than its tokenizer's ({own} tokens); "
                "the tokenizer belongs to another model"
            )
        self.bos_token, self.eos_token = bos_token, eos_token
        separator = next((t for t in (bos_token, eos_token) if t is not None), None)
        if separator is None:
            raise TokenizerError("the tokenizer has neither a BOS nor an end-of-text token to separate documents")
        sep_id = self._tk.token_to_id(separator)
        if sep_id is None:
            raise TokenizerError(f"the tokenizer's special token {separator!r} is not in its vocabulary")
        self.bos_id = sep_id
        self._special = {t.content for t in self._tk.get_added_tokens_decoder().values() if t.special}
        decoder = self._tk.decoder
        self._byte_level = decoder is not None and type(decoder).__name__ == "ByteLevel"

    @property
    def vocab_size(self) -> int:
        return self._size

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode text (str), got {type(text).__name__}")
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        self._check_ids(ids)
        return self._tk.decode(ids, skip_special_tokens=True)

    def token_bytes(self, i: int) -> bytes:
        """The raw bytes of token i (special and padding tokens give b'')."""
        self._check_ids([i])
        piece = self._tk.id_to_token(int(i))
        if piece is None or piece in self._special:
            return b""
        if self._byte_level:  # a byte-level token is one character per byte
            table = byte_decoder()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece's byte fallback
            return bytes([int(piece[3:5], 16)])
        return self._tk.decode([int(i)], skip_special_tokens=True).encode("utf-8", errors="replace")

    def token_str(self, i: int) -> str:
        self._check_ids([i])
        piece = self._tk.id_to_token(int(i))
        if piece is None:
            return f"<|pad {i}|>"
        if piece in self._special:
            return piece
        return printable(self.token_bytes(i).decode("utf-8", errors="backslashreplace"))

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "name": self.name, "tokenizer_size": self._tk.get_vocab_size(True)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "tokenizer_json": self.tokenizer_json,
            "vocab_size": self._size,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HFTokenizer":
        for key in ("bos_token", "eos_token"):
            if d.get(key) is not None and not isinstance(d.get(key), str):
                raise TokenizerError(f"Hugging Face tokenizer data has a bad {key!r}; the file is damaged")
        return cls(
            d.get("tokenizer_json"),  # type: ignore[arg-type]
            vocab_size=d.get("vocab_size"),
            bos_token=d.get("bos_token"),
            eos_token=d.get("eos_token"),
            name=str(d.get("name", "")),
        )
