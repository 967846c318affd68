"""The defensive reader of a safetensors file's header: its tensor entries and lmcore metadata.

``_read_header`` checks the file's framing and parses its JSON header;
``_parse_metadata`` checks lmcore's metadata keys and parses the JSON values.
Reading costs at most a small multiple of the file's size: the header is
refused before it is parsed when it holds more tensor entries than any model
can need, JSON is refused when nested more than ``MAX_JSON_DEPTH`` deep or
holding numbers longer than ``MAX_NUMBER_CHARS``, and a metadata value when
its text is longer than its field can need. Every malformed file raises
``CheckpointError`` with a one-line reason. No weights are read here.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any, BinaryIO

from lmcore.errors import CheckpointError, LMCoreError
from lmcore.models import ModelConfig

FORMAT = "lmcore/1"
OPTIM_FORMAT = "lmcore-optim/1"
# Metadata keys every lmcore checkpoint carries.
REQUIRED_KEYS = ("format", "config", "tokenizer")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit; a larger declared header is hostile or broken
# Tensor entries in a checkpoint's header: over 1,300 transformer layers. Checking the
# names and shapes of a model takes about a millisecond per tensor, so this bounds it.
MAX_TENSORS = 16_384
# Per layer, and outside the layers, no architecture saves more than this many tensors.
_MAX_TENSORS_PER_LAYER = 32
# An optimizer-state file holds a few tensors per parameter (Adam: step, two moments).
MAX_OPTIM_TENSORS = 4 * MAX_TENSORS
MAX_JSON_DEPTH = 32  # lmcore writes at most 5 levels
# What each metadata field can need, checked on its text before it is parsed: characters, and
# JSON containers ('{' or '['), which bound the objects a parse creates. A run's "train" keeps one
# small object per evaluation; a BPE tokenizer one pair per merge (at most 262,144).
_FIELD_LIMITS = {
    "config": (64 << 10, 1_000),
    "data": (64 << 10, 1_000),
    "train": (32 << 20, 200_000),
    "tokenizer": (MAX_HEADER_BYTES, 300_000),
    "tied": (4 << 20, 1_000),
}
# Numbers in a run's "train" metadata: counts, and measurements (None where not measured).
_TRAIN_COUNTS = ("steps", "max_iters", "tokens_seen", "seed")
_TRAIN_NUMBERS = ("train_loss", "val_loss", "val_ppl", "val_acc", "best_val_loss", "elapsed_s")
MAX_NUMBER_CHARS = 40  # a seed, a token count or a float's repr is far shorter


class _JSONRefused(ValueError):
    """JSON that is invalid, or that would cost far more to use than its size."""


def _parse_number(kind: type) -> Any:
    def parse(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise _JSONRefused(f"a {len(text):,}-character number")
        return kind(text)

    return parse


_PARSE_INT, _PARSE_FLOAT = _parse_number(int), _parse_number(float)


def _loads(data: str) -> Any:
    """Parse JSON read from a file; _JSONRefused when invalid, too deep or with absurd numbers."""
    try:
        value = json.loads(data, parse_int=_PARSE_INT, parse_float=_PARSE_FLOAT)
    except RecursionError:
        raise _JSONRefused(f"JSON nested more than {MAX_JSON_DEPTH} levels deep") from None
    except json.JSONDecodeError:
        raise _JSONRefused("invalid JSON") from None
    # The parser itself stops near the interpreter's recursion limit; the code that walks
    # these values later (to print or store them) must never get near it.
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise _JSONRefused(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
            if isinstance(child, (dict, list))
        ]
    return value


_METADATA_KEY = re.compile(rb'\s*\{\s*"__metadata__"\s*:\s*')


def _leading_metadata(raw: bytes) -> tuple[Any, int] | None:
    """The header's leading ``__metadata__`` value (safetensors writes it first) and the byte offset after it.

    Parsed from growing prefixes, so the cost is that of the metadata, not of the
    tensor entries after it. None when the header does not start with it.
    """
    m = _METADATA_KEY.match(raw)
    if m is None:
        return None
    start, size = m.end(), 1 << 20
    while True:
        text = raw[start : start + size].decode("utf-8", "surrogateescape")
        try:
            value, end = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError:
            if start + size >= len(raw):
                return None
            size *= 4
            continue
        except (RecursionError, ValueError):  # refused with its reason by the full parse
            return None
        return value, start + len(text[:end].encode("utf-8", "surrogateescape"))


def _entry_limit(metadata: Any) -> int:
    """The most tensor entries a header with this leading metadata can need.

    Bounded by the config's layer count where the metadata names one, else by
    what any checkpoint (or optimizer-state file) can hold.
    """
    if not isinstance(metadata, dict):
        return MAX_TENSORS
    if metadata.get("format") == OPTIM_FORMAT:
        return MAX_OPTIM_TENSORS
    try:
        n_layer = _loads(metadata["config"])["n_layer"]
    except (_JSONRefused, KeyError, TypeError):
        return MAX_TENSORS
    if not isinstance(n_layer, int) or n_layer < 1:
        return MAX_TENSORS
    return min(MAX_TENSORS, _MAX_TENSORS_PER_LAYER * (n_layer + 1))


def _open_regular(path: Path, shown: str) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; never blocks on a pipe or device."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {shown}; check the path") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file; pass the .safetensors file inside it")
    not_regular = f"{shown} is not a regular file (a pipe, device or socket); pass a .safetensors file"
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(not_regular)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the first look
        f.close()
        raise CheckpointError(not_regular)
    return f


def _header_bytes(path: Path, display_name: str | None) -> tuple[bytes, int]:
    """The file's JSON header as bytes, and the length of the data after it; its framing checked by hand.

    Gives one-line reasons for the common ways a file is not a safetensors
    file at all, before the safetensors parser sees it.
    """
    shown = display_name or path.name
    with _open_regular(path, display_name or str(path)) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(9)
            if size == 0:
                raise CheckpointError(f"{shown} is empty; it is not a checkpoint")
            # A safetensors file: a little-endian header length, then the JSON header. Its
            # first bytes can look like a pickle's (a 1408-byte header starts 80 05), so
            # the signatures of other formats are only read where the framing fails.
            framed = len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8
            if not framed and head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
                raise CheckpointError(
                    f"{shown} is a Python pickle (torch.save), not safetensors; lmcore never unpickles files"
                )
            if not framed and head[:4] == b"PK\x03\x04":
                raise CheckpointError(
                    f"{shown} is a zip archive (torch.save's format), not safetensors; lmcore never unpickles files"
                )
            if len(head) < 8:
                raise CheckpointError(f"{shown} is too short to be a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head[:8])
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(f"{shown} is not a valid safetensors file: it declares a {n}-byte header")
            if n > size - 8:
                raise CheckpointError(
                    f"{shown} is truncated or not a safetensors file: "
                    f"it declares a {n}-byte header in a {size}-byte file"
                )
            f.seek(8)
            raw = f.read(n)
        except OSError as e:
            raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    return raw, size - 8 - n


def _read_header(path: str | os.PathLike, display_name: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Check the file's framing by hand and parse its JSON header: (tensor entries, metadata).

    The work is bounded by the header's size, and a header with more tensor
    entries than its config can need is refused before they are parsed.
    """
    path = Path(path)
    shown = display_name or path.name
    raw, data_len = _header_bytes(path, display_name)
    # Every key in JSON is followed by a colon, so the colons after the metadata bound the
    # tensor entries (a real entry has four keys): counted in C, before any parsing.
    lead = _leading_metadata(raw)
    limit = _entry_limit(lead[0] if lead else None)
    if raw.count(b":", lead[1] if lead else 0) > 4 * limit + 4:
        raise CheckpointError(
            f"{shown} is not a usable checkpoint: its header holds more tensor entries than "
            f"its config can need (at most {limit:,}); the file is damaged or hostile"
        )
    body = raw
    if lead is not None:
        # The metadata is parsed already: the entries after it are parsed as an object of their own.
        rest = raw[lead[1] :].lstrip()
        body = b"{" + (rest[1:] if rest[:1] == b"," else rest)
    try:
        header = _loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{shown} is not a valid safetensors file: its header is not JSON") from None
    except _JSONRefused as e:
        what = "is not JSON" if str(e) == "invalid JSON" else f"holds {e}"
        raise CheckpointError(f"{shown} is not a valid safetensors file: its header {what}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{shown} is not a valid safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if lead is not None:
        metadata = lead[0] if metadata is None else []  # a second __metadata__ is malformed
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError(f"{shown} has malformed metadata (safetensors metadata must map names to text)")
    if len(header) > limit:
        raise CheckpointError(
            f"{shown} is not a usable checkpoint: its header holds {len(header):,} tensor entries, "
            f"more than its config can need (at most {limit:,}); the file is damaged or hostile"
        )
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise CheckpointError(f"{shown} is truncated or damaged: tensor {name!r} lies outside the file")
    return header, metadata or {}


# The tokenizer's type in its JSON text: the one "type" key outside a string (every tokenizer's
# dict is flat; text inside strings has its quotes escaped).
_TOKENIZER_TYPE = re.compile(r'(?<!\\)"type":\s*"(\w{1,20})"')


def _parse_metadata(
    raw: dict[str, str], where: str, stored: int | None = None, listing: bool = False
) -> dict[str, Any]:
    """Check the lmcore keys and parse the JSON ones; CheckpointError naming the problem.

    ``stored``: how many tensors the file holds; the ``tied`` aliases of them must not
    outnumber them (counted before they are parsed).
    """
    if not raw or "format" not in raw:
        raise CheckpointError(f"{where} has no lmcore metadata; it was not saved by lmcore (or was stripped)")
    fmt = raw["format"]
    if fmt != FORMAT:
        if fmt.startswith("lmcore/"):
            raise CheckpointError(f"{where} uses format {fmt!r}; this version of lmcore reads {FORMAT!r}")
        raise CheckpointError(f"{where} has format {fmt!r}, not an lmcore checkpoint ({FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"{where} lacks the metadata {', '.join(missing)}; the file is damaged")
    # Each alias is one "name": "stored name" pair, so it has one colon.
    if stored is not None and raw.get("tied", "").count(":") > stored:
        raise CheckpointError(f"{where} ties more names than its {stored:,} stored tensors; the file is damaged")
    meta: dict[str, Any] = dict(raw)
    for key, kind in (("config", dict), ("tokenizer", dict), ("train", dict), ("data", dict), ("tied", dict)):
        if key not in raw:
            meta[key] = {}
            continue
        if listing and key == "tokenizer":  # a listing shows only its type: the merges stay unparsed
            found = _TOKENIZER_TYPE.findall(raw[key][:MAX_HEADER_BYTES])
            if len(found) == 2 and "chat" in found:  # a chat tokenizer holds its base tokenizer's type too
                found = ["chat"]
            meta[key] = {"type": found[0]} if len(found) == 1 else {}
            continue
        meta[key] = _parse_field(raw[key], key, kind, where)
    try:
        meta["config_obj"] = ModelConfig.from_dict(meta["config"]).validate()
    except LMCoreError as e:
        raise CheckpointError(f"{where} holds an unusable model config: {e}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where} holds an unusable model config ({_one_line(e)})") from None
    tok_type = meta["tokenizer"].get("type")
    from lmcore.tokenizers import TOKENIZERS

    if tok_type not in TOKENIZERS:
        raise CheckpointError(
            f"{where} uses an unknown tokenizer type {tok_type!r}; this version knows {', '.join(TOKENIZERS)}"
        )
    if not all(type(k) is str and type(v) is str for k, v in meta["tied"].items()):
        raise CheckpointError(f"{where} has a malformed 'tied' metadata; the file is damaged")
    _check_train(meta["train"], where)
    params = raw.get("params")
    if params is not None and not (params.isdigit() and len(params) <= MAX_NUMBER_CHARS):
        raise CheckpointError(f"{where} has a 'params' metadata that is not a count; the file is damaged")
    data = meta["data"]
    data["documents"] = bool(data.get("documents", False))
    return meta


def _parse_field(text: str, key: str, kind: type, where: str) -> Any:
    """The JSON metadata value ``text`` of field ``key``, refused when larger than the field can need."""
    max_chars, max_containers = _FIELD_LIMITS[key]
    containers = text.count("{") + text.count("[")
    if len(text) > max_chars or containers > max_containers:
        what = f"{len(text):,} characters" if len(text) > max_chars else f"{containers:,} JSON objects and lists"
        raise CheckpointError(
            f"{where} has {what} in its {key!r} metadata, more than it can need; the file is damaged or hostile"
        )
    try:
        value = _loads(text)
    except _JSONRefused as e:
        raise CheckpointError(f"{where} has {e} in its {key!r} metadata; the file is damaged") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{where} has a {key!r} metadata that is not a JSON object; the file is damaged")
    return value


def _check_train(train: dict[str, Any], where: str) -> None:
    """CheckpointError when a known field of the training record has the wrong type."""
    for key in _TRAIN_COUNTS:
        value = train.get(key)
        if value is not None and not (type(value) is int and value >= 0):
            raise CheckpointError(f"{where} has a {key!r} in its training record that is not a count; it is damaged")
    for key in _TRAIN_NUMBERS:
        value = train.get(key)
        if value is not None and type(value) not in (int, float):
            raise CheckpointError(f"{where} has a {key!r} in its training record that is not a number; it is damaged")
    for key, kind in (("config", dict), ("history", list)):
        if train.get(key) is not None and not isinstance(train[key], kind):
            raise CheckpointError(f"{where} has a malformed {key!r} in its training record; it is damaged")
    if any(not isinstance(entry, dict) for entry in train.get("history") or []):
        raise CheckpointError(f"{where} has a malformed 'history' in its training record; it is damaged")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__
