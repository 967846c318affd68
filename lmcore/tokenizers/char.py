"""Character-level tokenizer: one token per distinct character of the corpus.

The vocabulary is the corpus's distinct characters, sorted by code point (so
tiny Shakespeare gives nanoGPT's 65 ids 0..64), followed by the special tokens:
BOS (document separator / start) and, when asked for, UNK for characters never
seen in training. Without UNK, encoding an unseen character raises
``TokenizerError`` naming it, so a typo in a prompt is reported, not guessed.
"""

from __future__ import annotations

from typing import Any

from lmcore.errors import TokenizerError
from lmcore.tokenizers.base import BOS_TOKEN, UNK_TOKEN, Tokenizer, printable


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: str, unk: bool = False):
        if len(set(chars)) != len(chars):
            raise TokenizerError(
                "a character tokenizer's vocabulary has repeated characters; rebuild it from the corpus"
            )
        self.chars = chars
        self.unk = unk
        self._stoi = {ch: i for i, ch in enumerate(chars)}
        self.bos_id = len(chars)
        self.unk_id = len(chars) + 1 if unk else None

    @classmethod
    def train(cls, text: str, unk: bool = False) -> "CharTokenizer":
        """Build the vocabulary from the distinct characters of ``text``."""
        if not text:
            raise TokenizerError("cannot build a character vocabulary from empty text; load a corpus first")
        return cls("".join(sorted(set(text))), unk=unk)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1 + (1 if self.unk else 0)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode text (str), got {type(text).__name__}")
        stoi = self._stoi
        try:
            return [stoi[ch] for ch in text]
        except KeyError:
            pass
        if self.unk_id is not None:
            return [stoi.get(ch, self.unk_id) for ch in text]
        unseen = sorted({ch for ch in text if ch not in stoi})
        shown = ", ".join(repr(ch) for ch in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        raise TokenizerError(
            f"{len(unseen)} character(s) never seen in the training text: {shown}; "
            "remove them from the prompt or use a BPE tokenizer"
        )

    def decode(self, ids: list[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # tensors too
        self._check_ids(ids)
        n = len(self.chars)
        out = []
        for i in ids:
            i = int(i)
            if i < n:
                out.append(self.chars[i])
            elif i == self.unk_id:
                out.append("\ufffd")
            # BOS decodes to nothing: it is a boundary, not text.
        return "".join(out)

    def token_str(self, i: int) -> str:
        self._check_ids([i])
        if i == self.bos_id:
            return BOS_TOKEN
        if i == self.unk_id:
            return UNK_TOKEN
        return printable(self.chars[i])

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "chars": self.chars, "unk": self.unk}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CharTokenizer":
        chars = d.get("chars")
        if not isinstance(chars, str):
            raise TokenizerError("character tokenizer data has no 'chars' string; the file is damaged")
        unk = d.get("unk", False)
        if not isinstance(unk, bool):
            raise TokenizerError("character tokenizer data has a non-boolean 'unk' flag; the file is damaged")
        return cls(chars, unk=unk)
