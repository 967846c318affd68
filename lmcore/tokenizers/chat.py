"""A tokenizer with a chat template's special tokens added after another one's vocabulary.

``ChatTokenizer(base, extra)`` keeps every id of ``base`` and appends one id per
string of ``extra``: first the template's special tokens (``<|system|>``,
``<|user|>``, ``<|assistant|>``, ``<|end|>``), then, for a character vocabulary
that was asked to grow, characters it had never seen. A model grown to this
vocabulary (``lmcore.finetune.grow_vocab``) keeps the old rows of its embedding
and head, so it still gives the same logits to the old tokens.
"""

from __future__ import annotations

import re
from typing import Any

from lmcore.errors import TokenizerError
from lmcore.tokenizers.base import Tokenizer, printable, tokenizer_from_dict

SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


class ChatTokenizer(Tokenizer):
    kind = "chat"

    def __init__(self, base: Tokenizer, extra: list[str] | tuple[str, ...] = SPECIAL_TOKENS):
        if isinstance(base, ChatTokenizer):
            raise TokenizerError("this tokenizer already has a chat template; fine-tune it as it is")
        extra = list(extra)
        if len(set(extra)) != len(extra) or not all(isinstance(s, str) and s for s in extra):
            raise TokenizerError("a chat tokenizer's added tokens must be distinct non-empty strings")
        self.base = base
        self.extra = extra
        self.bos_id = base.bos_id
        self._ids = {s: base.vocab_size + i for i, s in enumerate(extra)}
        # Longest first, so a special token wins over a character it starts with.
        pattern = "|".join(re.escape(s) for s in sorted(extra, key=len, reverse=True))
        self._split = re.compile(f"({pattern})")

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + len(self.extra)

    def special_id(self, token: str) -> int:
        return self._ids[token]

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode text (str), got {type(text).__name__}")
        ids: list[int] = []
        for part in self._split.split(text):
            if not part:
                continue
            if part in self._ids:
                ids.append(self._ids[part])
            else:
                ids.extend(self.base.encode(part))
        return ids

    def decode(self, ids: list[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        self._check_ids(ids)
        n = self.base.vocab_size
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i < n:
                run.append(i)
                continue
            if run:
                out.append(self.base.decode(run))
                run = []
            out.append(self.extra[i - n])
        if run:
            out.append(self.base.decode(run))
        return "".join(out)

    def token_str(self, i: int) -> str:
        self._check_ids([i])
        n = self.base.vocab_size
        return self.base.token_str(i) if i < n else printable(self.extra[i - n])

    def token_bytes(self, i: int) -> bytes:
        n = self.base.vocab_size
        if i >= n:
            s = self.extra[i - n]
            return b"" if s in SPECIAL_TOKENS else s.encode("utf-8")
        return self.base.token_bytes(i)

    def summary(self) -> dict[str, Any]:
        return {**self.base.summary(), "type": self.kind, "base_type": self.base.kind,
                "vocab_size": self.vocab_size, "added_tokens": len(self.extra)}

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "base": self.base.to_dict(), "extra": list(self.extra)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChatTokenizer":
        extra = d.get("extra")
        if not isinstance(extra, list) or not isinstance(d.get("base"), dict):
            raise TokenizerError("a chat tokenizer needs a base tokenizer and a list of added tokens")
        return cls(tokenizer_from_dict(d["base"]), extra)
