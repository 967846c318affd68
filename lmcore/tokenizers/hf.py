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
  its end-of-text token where it has no BOS (GPT-2's ``<|endoftext|>``);
- text a word-level tokenizer has never seen (a character outside an exported
  character vocabulary) is a ``TokenizerError`` naming it, never a silent
  separator nor the library's own error.

Bounds, checked before the ``tokenizers`` library sees the text of a
tokenizer.json: at most ``MAX_TOKENIZER_JSON_CHARS`` characters, and no regular
expression (a pre-tokenizer's split pattern, a normalizer's replacement) that
repeats a group which itself repeats or alternates, such as ``(a+)+$`` or
``(a|aa)*``: such patterns backtrack exponentially on some texts. The regex
engine's own retry limit stops any other match that backtracks too long; the
library reports that as a panic, which ``encode`` turns into a
``TokenizerError``. Together these bound the time one text can take.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from lmcore.errors import TokenizerError
from lmcore.tokenizers.base import Tokenizer, printable


# The largest tokenizer.json files on the hub (Gemma's, 262k tokens) are about 33 MB.
MAX_TOKENIZER_JSON_CHARS = 64 << 20
# A regular expression inside tokenizer.json: {"Regex": "..."} (a JSON string, escapes kept).
_REGEX_FIELD = re.compile(r'"Regex"\s*:\s*("(?:[^"\\]|\\.)*")')
_BRACES = re.compile(r"\{(\d{0,9})(,?)(\d{0,9})\}")


def _quantifier_at(p: str, i: int) -> tuple[bool, bool, int]:
    """(a quantifier starts at p[i], it is unbounded or allows more than a few repeats, index after it)."""
    if i >= len(p):
        return False, False, i
    if p[i] in "*+":
        return True, True, i + 1
    if p[i] == "?":
        return True, False, i + 1
    if p[i] == "{":
        m = _BRACES.match(p, i)
        if m and (m.group(1) or m.group(3)):
            low, comma, high = m.groups()
            many = bool(comma) and (not high or int(high) > 3) or (not comma and int(low or 0) > 3)
            return True, many, m.end()
    return False, False, i


def backtracking_hazard(pattern: str) -> str | None:
    """The part of a regular expression that can backtrack exponentially, or None.

    A group repeated without a small bound (``*``, ``+``, ``{n,}``) whose body
    itself holds a quantifier or an alternation, as in ``(a+)+`` or ``(a|aa)*``.
    Character classes and escapes are skipped; the check is linear in the pattern.
    """
    # Each open group: [start index, body has a quantifier, body has an alternation].
    stack: list[list] = [[0, False, False]]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            if i <= n and pattern[i - 1] in "pPx" and i < n and pattern[i] == "{":
                close = pattern.find("}", i)
                i = n if close < 0 else close + 1
            atom = True
        elif ch == "[":
            depth, i = 1, i + 1
            if i < n and pattern[i] == "^":
                i += 1
            if i < n and pattern[i] == "]":
                i += 1
            while i < n and depth:
                if pattern[i] == "\\":
                    i += 1
                elif pattern[i] == "[":
                    depth += 1
                elif pattern[i] == "]":
                    depth -= 1
                i += 1
            atom = True
        elif ch == "(":
            stack.append([i, False, False])
            i += 1
            continue
        elif ch == ")" and len(stack) > 1:
            start, has_quant, has_alt = stack.pop()
            i += 1
            is_quant, many, after = _quantifier_at(pattern, i)
            if is_quant and many and (has_quant or has_alt):
                return pattern[start:after]
            stack[-1][1] |= has_quant or is_quant
            stack[-1][2] |= has_alt
            i = after
            continue
        elif ch == "|":
            stack[-1][2] = True
            i += 1
            continue
        else:
            i += 1
            atom = True
        if atom:
            is_quant, _, after = _quantifier_at(pattern, i)
            if is_quant:
                stack[-1][1] = True
                i = after
                while i < n and pattern[i] in "?+":  # lazy or possessive
                    i += 1
    return None


def check_tokenizer_json(text: str) -> None:
    """TokenizerError when a tokenizer.json is over the size limit or holds a backtracking pattern."""
    if len(text) > MAX_TOKENIZER_JSON_CHARS:
        raise TokenizerError(
            f"tokenizer.json holds {len(text):,} characters, over the limit of {MAX_TOKENIZER_JSON_CHARS:,}; "
            "the file is damaged or hostile"
        )
    for m in _REGEX_FIELD.finditer(text):
        try:
            pattern = json.loads(m.group(1))
        except ValueError:
            continue  # not valid JSON: the parser reports the file
        hazard = backtracking_hazard(pattern) if isinstance(pattern, str) else None
        if hazard is not None:
            shown = hazard if len(hazard) <= 40 else hazard[:37] + "..."
            raise TokenizerError(
                f"the tokenizer's pattern repeats {shown!r}, which can take exponential time on some texts; "
                "lmcore refuses such tokenizers"
            )


def _library_failure(e: BaseException) -> str:
    """One line from an error of the ``tokenizers`` library (a plain Exception, or a Rust panic)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first[:200]


def _is_library_error(e: BaseException) -> bool:
    # A Rust panic arrives as pyo3's PanicException, a BaseException: catch it, but never an interrupt.
    return isinstance(e, Exception) or type(e).__name__ == "PanicException"


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
        check_tokenizer_json(tokenizer_json)
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
        # A word-level model maps unseen pieces to its unknown token. Where that token is missing, or
        # is the document separator (as lmcore's exports of a character vocabulary without one
        # declare, so that transformers can encode any text), unseen text is reported instead.
        self._strict_unk: int | None = None
        model = self._tk.model
        if type(model).__name__ == "WordLevel":
            unk = getattr(model, "unk_token", None)
            unk_id = self._tk.token_to_id(unk) if unk else None
            if unk_id is None or unk in (bos_token, eos_token):
                self._strict_unk = -1 if unk_id is None else unk_id

    @property
    def vocab_size(self) -> int:
        return self._size

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode text (str), got {type(text).__name__}")
        try:
            ids = self._tk.encode(text, add_special_tokens=False).ids
        except BaseException as e:
            if not _is_library_error(e):
                raise
            self._check_unseen(text)
            raise TokenizerError(f"the tokenizer cannot encode this text ({_library_failure(e)})") from None
        if self._strict_unk is not None and self._strict_unk in ids:
            self._check_unseen(text)
        return ids

    def _check_unseen(self, text: str) -> None:
        """TokenizerError naming the pieces of ``text`` a strict word-level vocabulary lacks."""
        if self._strict_unk is None:
            return
        try:
            pieces = [p for p, _ in self._tk.pre_tokenizer.pre_tokenize_str(text)] if self._tk.pre_tokenizer else [text]
        except BaseException as e:
            if not _is_library_error(e):
                raise
            return
        vocab = self._tk.get_vocab(with_added_tokens=True)
        unseen = sorted({p for p in pieces if p not in vocab})
        if not unseen:
            return
        shown = ", ".join(repr(p) for p in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
        what = "character(s)" if all(len(p) == 1 for p in unseen) else "piece(s)"
        raise TokenizerError(
            f"{len(unseen)} {what} never seen in the training text: {shown}; remove them from the prompt"
        )

    def decode(self, ids: list[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        self._check_ids(ids)
        try:
            return self._tk.decode(ids, skip_special_tokens=True)
        except BaseException as e:
            if not _is_library_error(e):
                raise
            raise TokenizerError(f"the tokenizer cannot decode these ids ({_library_failure(e)})") from None

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
