"""Corpora larger than memory: token shards on disk, and batches read through numpy.memmap.

``prepare(source, out_dir, "char" | "bpe")`` streams a corpus (a text file, an
http(s) or file URL, ``builtin:NAME``, or a folder of ``.txt`` files, read in
sorted order) and writes

- ``train.bin`` and ``val.bin``: the token ids as flat little-endian arrays,
  ``uint16`` when every id fits, else ``uint32`` (no header: ``np.fromfile``
  or ``np.memmap`` reads them);
- ``meta.json``: ``tokenizer`` (the tokenizer's ``to_dict()``), ``dtype``,
  ``train_tokens``, ``val_tokens``, ``bytes``, ``source`` and how the
  vocabulary was built.

The last ``val_fraction`` of the text's bytes (cut at a character boundary)
becomes the validation split. Memory stays bounded whatever the corpus size:
text is read and encoded in pieces of ``CHUNK_BYTES``. A character vocabulary
needs every distinct character, so it reads the corpus twice; a BPE vocabulary
is trained on a bounded sample (``BPE_SAMPLE_BYTES`` spread evenly over the
corpus) and then encodes everything. Files are written under temporary names
and renamed at the end, so a failed prepare leaves no half data set.

``load_prepared(dir)`` gives ``MemmapTokens`` for both splits: a
``lmcore.batches.TokenSource`` that maps the file for each batch (as nanoGPT
does), so a run's memory does not grow with the corpus.
"""

from __future__ import annotations

import codecs
import json
import os
import stat
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmcore.data import build_tokenizer, load_corpus
from lmcore.errors import DataError, LMCoreError
from lmcore.fetch import fetch_to_file, split_url
from lmcore.tokenizers import CharTokenizer, Tokenizer, tokenizer_from_dict
from lmcore.tokenizers.bpe import _SAFE_CUT

FORMAT = "lmcore-shards/1"
META = "meta.json"
CHUNK_BYTES = 8 << 20  # text read, decoded and encoded at a time
BPE_SAMPLE_BYTES = 4 << 20  # a pure-Python BPE trains on a few MB in a minute or two
BPE_SAMPLE_WINDOWS = 64
# A URL corpus is downloaded through lmcore.fetch like any other; being larger than
# memory it gets a larger cap and deadline than the app's corpora (at 10 MB/s, 10 GB
# take 17 minutes). Larger ones: download them yourself and prepare the file.
MAX_DOWNLOAD_BYTES = 10 * 1000**3
DOWNLOAD_DEADLINE_S = 3600.0

# progress(stage, done, total): stage is "reading", "sampling" or "encoding"; done/total in bytes.
Progress = Callable[[str, int, int], None]


def is_prepared(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``prepare`` (it holds meta.json)."""
    p = Path(path)
    return p.is_dir() and (p / META).is_file()


# --------------------------------------------------------------------------- reading the corpus


@dataclass
class _Part:
    """One piece of the corpus: a file on disk, or text already in memory (a built-in corpus)."""

    path: Path | None = None
    text: str | None = None

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.text.encode("utf-8"))


def _parts(source: str, workdir: Path, allow_local_urls: bool = False) -> tuple[list[_Part], str]:
    """The corpus's parts in order, and its name; a URL is downloaded into ``workdir`` first (``lmcore.fetch``)."""
    source = str(source).strip()
    if not source:
        raise DataError("no corpus given; use a file, a folder of .txt files, a URL or builtin:NAME")
    if source.startswith("builtin:"):
        return [_Part(text=load_corpus(source).text)], source
    parts = split_url(source)  # DataError for an address that cannot be parsed
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        path = fetch_to_file(source, workdir, MAX_DOWNLOAD_BYTES, allow_local_urls, DOWNLOAD_DEADLINE_S)
        return [_Part(path=path)], source
    if scheme == "file":
        source = urllib.request.url2pathname(parts.path)
    elif scheme and len(scheme) > 1 and "://" in source:
        raise DataError(f"cannot read {source}: only http, https and file URLs are supported")
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{path} holds no .txt files; put the corpus in .txt files or give one file")
        return [_Part(path=f) for f in files], str(path)
    if not path.exists():
        raise DataError(f"no such file or folder: {path}; check the path")
    if not path.is_file():  # a FIFO would block, a device never end
        raise DataError(f"{path} is not a regular file; give a text file or a folder of .txt files")
    return [_Part(path=path)], str(path)


def _read_text(parts: list[_Part]) -> Iterator[tuple[str, int]]:
    """The corpus as (text, bytes read) pieces of about CHUNK_BYTES, decoded strictly as UTF-8.

    A newline goes between two parts when the first does not end with one, so files never run into each other.
    """
    for k, part in enumerate(parts):
        more = k < len(parts) - 1
        if part.text is not None:
            for i in range(0, len(part.text), CHUNK_BYTES):
                piece = part.text[i : i + CHUNK_BYTES]
                yield piece, len(piece.encode("utf-8"))
            if more and not part.text.endswith("\n"):
                yield "\n", 0
            continue
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        offset, first, last = 0, True, ""
        try:
            with open(part.path, "rb") as f:
                while data := f.read(CHUNK_BYTES):
                    if b"\x00" in data:
                        raise DataError(f"{part.path} contains NUL bytes, so it looks like a binary file; remove it")
                    try:
                        text = decoder.decode(data)
                    except UnicodeDecodeError as e:
                        raise DataError(
                            f"{part.path} is not valid UTF-8 (near byte {offset + e.start}); convert it to UTF-8 first"
                        ) from None
                    if first:
                        text, first = text.removeprefix("\ufeff"), False
                    offset += len(data)
                    if text:
                        last = text[-1]
                        yield text, len(data)
                decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{part.path} ends inside a UTF-8 character; the file is cut short") from None
        except OSError as e:
            raise DataError(f"{part.path} cannot be read ({e.strerror or e}); check the file") from None
        if more and last and last != "\n":
            yield "\n", 0


def _sample(parts: list[_Part], total: int, budget: int) -> str:
    """About ``budget`` bytes of text in BPE_SAMPLE_WINDOWS windows spread evenly over the corpus."""
    if total <= budget:
        return "".join(t for t, _ in _read_text(parts))
    width = budget // BPE_SAMPLE_WINDOWS
    starts = [int(total * k / BPE_SAMPLE_WINDOWS) for k in range(BPE_SAMPLE_WINDOWS)]
    out, base = [], 0
    for part in parts:
        size = part.size
        for s in starts:
            if base <= s < base + size:
                lo = s - base
                if part.text is not None:
                    data = part.text.encode("utf-8")[lo : lo + width]
                else:
                    with open(part.path, "rb") as f:
                        f.seek(lo)
                        data = f.read(width)
                # A window may start or end inside a character: drop those bytes.
                out.append(data.decode("utf-8", errors="ignore"))
        base += size
    return "\n".join(out)


# --------------------------------------------------------------------------- encoding


class _CharEncoder:
    """Characters to ids with numpy: code points looked up in the sorted vocabulary."""

    def __init__(self, tok: CharTokenizer):
        self.codes = np.array([ord(c) for c in tok.chars], dtype=np.uint32)

    def __call__(self, text: str) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return np.searchsorted(self.codes, points)  # every character was seen when the vocabulary was built


def _char_vocabulary(parts: list[_Part], total: int, progress: Progress | None) -> CharTokenizer:
    seen: set[str] = set()
    done = 0
    for text, n in _read_text(parts):
        seen.update(text)
        done += n
        if progress is not None:
            progress("reading", done, total)
    return CharTokenizer("".join(sorted(seen)))


def _cut(text: str) -> int:
    """Where ``text`` may be cut so that BPE encodes the two sides as it would the whole."""
    start = max(0, len(text) - (1 << 16))
    last = None
    for last in _SAFE_CUT.finditer(text, start):
        pass
    return last.end() if last is not None else 0


def prepare(
    source: str,
    out_dir: str | os.PathLike,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    val_fraction: float = 0.1,
    bpe_sample_bytes: int = BPE_SAMPLE_BYTES,
    progress: Progress | None = None,
    bpe_progress: Callable[[int, int], None] | None = None,
    allow_local_urls: bool = False,
) -> dict[str, Any]:
    """Tokenize ``source`` into ``out_dir``/{train.bin, val.bin, meta.json}; returns the meta dict.

    An http(s) ``source`` reaches public addresses only unless ``allow_local_urls``
    (the address rule of ``lmcore.fetch``, checked on every redirect).
    """
    if tokenizer not in ("char", "bpe"):
        raise DataError(f"unknown tokenizer {tokenizer!r}; choose char or bpe")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"the validation fraction must be between 0 and 1, got {val_fraction}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give a folder for the prepared data")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        parts, name = _parts(source, out, allow_local_urls)
    except DataError:
        if created:  # a refused or failed source leaves no empty folder behind
            out.rmdir()
        raise
    downloaded = [p.path for p in parts if p.path is not None and p.path.name.startswith(".download-")]
    tmp_files: list[Path] = []
    try:
        total = sum(p.size for p in parts)
        if total == 0:
            raise DataError(f"{name} is empty; give a corpus with some text in it")
        sample_note = None
        if tokenizer == "char":
            tok: Tokenizer = _char_vocabulary(parts, total, progress)
            encode: Callable[[str], Any] = _CharEncoder(tok)
        else:
            if progress is not None:
                progress("sampling", 0, min(total, bpe_sample_bytes))
            sample = _sample(parts, total, bpe_sample_bytes)
            tok = build_tokenizer("bpe", sample, vocab_size=vocab_size, progress=bpe_progress)
            encode = tok.encode
            sample_bytes = len(sample.encode("utf-8"))
            sample_note = f"BPE trained on a {sample_bytes:,}-byte sample of {total:,} bytes"
            if total > bpe_sample_bytes:
                sample_note += f" ({BPE_SAMPLE_WINDOWS} windows spread over the corpus)"
        dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
        split_at = int(total * (1.0 - val_fraction))
        files = {}
        for split in ("train", "val"):
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{split}-", suffix=".bin.tmp")
            tmp_files.append(Path(tmp))
            files[split] = os.fdopen(fd, "wb")
        counts = {"train": 0, "val": 0}
        buffers = {"train": "", "val": ""}

        def flush(split: str, final: bool) -> None:
            text = buffers[split]
            cut = len(text) if final or tokenizer == "char" else _cut(text)
            if cut == 0 and len(text) > 4 * CHUNK_BYTES:
                cut = len(text)  # no safe place in a very long stretch: cut anyway
            if cut:
                ids = np.asarray(encode(text[:cut]), dtype=dtype)
                files[split].write(ids.tobytes())
                counts[split] += len(ids)
                buffers[split] = text[cut:]

        done, started = 0, time.perf_counter()
        for text, n in _read_text(parts):
            if done < split_at <= done + n:  # this piece holds the split point
                data = text.encode("utf-8")
                cut = split_at - done
                while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:  # back to a character boundary
                    cut -= 1
                buffers["train"] += data[:cut].decode("utf-8")
                flush("train", final=True)
                buffers["val"] += data[cut:].decode("utf-8")
                flush("val", final=False)
            else:
                split = "train" if done < split_at else "val"
                buffers[split] += text
                flush(split, final=False)
            done += n
            if progress is not None:
                progress("encoding", done, total)
        for split in ("train", "val"):
            flush(split, final=True)
            files[split].close()
        if counts["train"] < 2 or counts["val"] < 2:
            raise DataError(
                f"{name} is too small to split ({counts['train']} training, {counts['val']} validation tokens); "
                "give more text or another validation fraction"
            )
        meta = {
            "format": FORMAT,
            "tokenizer": tok.to_dict(),
            "vocab_size": tok.vocab_size,
            "dtype": np.dtype(dtype).name,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "bytes": total,
            "val_fraction": val_fraction,
            "source": name,
            "files": len(parts),
            "vocabulary": sample_note or "characters of the whole corpus",
            "seconds": round(time.perf_counter() - started, 2),
        }
        for split, tmp in zip(("train", "val"), tmp_files):
            os.replace(tmp, out / f"{split}.bin")
        meta_tmp = out / (META + ".tmp")
        meta_tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.replace(meta_tmp, out / META)
        return meta
    except OSError as e:
        raise DataError(f"cannot write the prepared data to {out}: {e.strerror or e}") from None
    finally:
        for f in tmp_files + downloaded:
            f.unlink(missing_ok=True)


# --------------------------------------------------------------------------- reading shards


class MemmapTokens:
    """A TokenSource over a ``.bin`` file of ids: each batch maps the file, gathers its windows, unmaps.

    Mapping per batch (as nanoGPT does) lets the pages it touched leave the
    process's resident memory, so RSS stays flat however large the file. The
    file is opened without following a symbolic link, as ``load_prepared`` checked it.
    """

    def __init__(self, path: str | os.PathLike, dtype: str, vocab_size: int):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.vocab_size = vocab_size
        self._len = self.path.stat().st_size // self.dtype.itemsize

    def __len__(self) -> int:
        return self._len

    def _map(self) -> np.memmap:
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            return np.memmap(f, dtype=self.dtype, mode="r", shape=(self._len,))

    def windows(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        data = self._map()
        idx = starts.numpy()[:, None] + np.arange(length)  # (B, length)
        out = torch.from_numpy(data[idx].astype(np.int64))
        del data
        return out

    def id_range(self) -> tuple[int, int]:
        return 0, self.vocab_size - 1  # load_prepared checked every id against this vocabulary

    def read_all(self) -> np.ndarray:
        """Every id (for tests and small data sets)."""
        return np.array(self._map())


@dataclass
class Prepared:
    train: MemmapTokens
    val: MemmapTokens
    tokenizer: Tokenizer
    meta: dict[str, Any]


# A prepared folder is read as hostile input (it may come from anyone who can
# write to the data folder): meta.json is bounded in size and checked field by
# field, the .bin files must be regular files inside the folder (no symbolic link
# out of it), whole ids of the declared dtype, and every id must be in the
# vocabulary, checked in chunks through numpy.memmap before anything trains.
MAX_META_BYTES = 64 << 20  # a BPE vocabulary of a million tokens writes about 30 MB
ID_CHUNK = 1 << 24  # ids checked at a time: 32 or 64 MB
_checked: dict[tuple, None] = {}  # files whose ids were checked, by identity, size and time


def _damaged(d: Path, why: str) -> DataError:
    return DataError(f"{d / META} {why}; it is damaged or not from `lmcore prepare`: prepare the data again")


def _regular_inside(d: Path, real_dir: Path, name: str) -> Path | None:
    """``d/name`` when it is a regular file inside the folder (a link to one inside it is fine); None when absent."""
    path = d / name
    if not os.path.lexists(path):
        return None
    real = path.resolve()
    if real.parent != real_dir:
        raise DataError(
            f"{path} is a link to {real}, outside the prepared folder; only files inside it are read: "
            "copy the file into the folder or prepare the data again"
        )
    try:
        mode = os.stat(real).st_mode
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e}); prepare the data again") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path} is not a regular file; prepare the data again")
    return path


def _read_meta(d: Path, path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_META_BYTES + 1)
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e}); check the folder") from None
    if len(raw) > MAX_META_BYTES:
        raise _damaged(d, f"is over {MAX_META_BYTES >> 20} MB, more than any vocabulary needs")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise _damaged(d, "is nested too deeply to be read") from None
    except (UnicodeDecodeError, ValueError):
        raise _damaged(d, "is not valid JSON") from None
    if not isinstance(meta, dict):
        raise _damaged(d, f"holds a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise _damaged(d, f"does not say format {FORMAT!r}")
    kinds: dict[str, tuple[type, ...]] = {
        "tokenizer": (dict,), "dtype": (str,), "vocab_size": (int,), "train_tokens": (int,), "val_tokens": (int,),
        "bytes": (int,), "val_fraction": (int, float), "source": (str,), "files": (int,), "vocabulary": (str,),
        "seconds": (int, float),
    }  # fmt: skip
    for key, kind in kinds.items():
        value = meta.get(key)
        if value is None and key not in ("tokenizer", "dtype"):
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            want = {dict: "an object", str: "text", int: "a whole number"}[kind[0]] if len(kind) == 1 else "a number"
            raise _damaged(d, f"has {key} {_shown(value)}, not {want}")
        if isinstance(value, (int, float)) and not (0 <= value < 2**63 and value == value):
            raise _damaged(d, f"has {key} {_shown(value)}, out of range")
    if "val_fraction" in meta and not 0 < meta["val_fraction"] < 1:
        raise _damaged(d, f"has val_fraction {_shown(meta['val_fraction'])}, not between 0 and 1")
    return meta


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else f"a JSON {type(value).__name__}"
    return text if len(text) <= 40 else text[:39] + "…"


def _check_ids(path: Path, dtype: np.dtype, vocab_size: int) -> None:
    """DataError unless the file holds whole ids of ``dtype``, all below ``vocab_size``; read in chunks."""
    info = path.stat()
    size = info.st_size
    if size % dtype.itemsize:
        raise DataError(
            f"{path} is {size:,} bytes, not a whole number of {dtype.name} ids ({dtype.itemsize} bytes each): "
            "it is cut short or of another dtype; prepare the data again"
        )
    if size == 0:
        raise DataError(f"{path} holds no tokens; prepare the data again from a longer text")
    if vocab_size > np.iinfo(dtype).max:
        return  # every id the dtype holds is in the vocabulary
    key = (str(path.resolve()), info.st_dev, info.st_ino, size, info.st_mtime_ns, dtype.name, vocab_size)
    if key in _checked:
        return
    data = MemmapTokens(path, dtype.name, vocab_size)._map()
    for start in range(0, len(data), ID_CHUNK):
        chunk = data[start : start + ID_CHUNK]
        if int(chunk.max()) >= vocab_size:
            at = start + int(np.argmax(chunk >= vocab_size))
            raise DataError(
                f"{path} holds token id {int(data[at]):,} at position {at:,}, but the vocabulary in "
                f"{META} has {vocab_size:,} tokens: the ids and the vocabulary do not belong together; "
                "prepare the data again"
            )
    del data
    _checked[key] = None


def load_prepared(directory: str | os.PathLike) -> Prepared:
    """The splits and tokenizer of a folder written by ``prepare``; DataError (one line) when it is not one.

    Everything is checked before it is used: see MAX_META_BYTES and ``_check_ids``.
    """
    d = Path(directory)
    try:
        real_dir = d.resolve()
        meta_path = _regular_inside(d, real_dir, META)
        if meta_path is None:
            raise DataError(f"{d} has no {META}; run `python -m lmcore prepare --out {d}` first")
        meta = _read_meta(d, meta_path)
        try:
            tok = tokenizer_from_dict(meta["tokenizer"])
        except LMCoreError as e:
            raise _damaged(d, f"holds a tokenizer that cannot be read ({e})") from None
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError):
            raise _damaged(d, "holds a tokenizer that cannot be read") from None
        dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
        if meta["dtype"] != dtype.name:
            raise _damaged(
                d, f"says dtype {_shown(meta['dtype'])}, but prepare writes a vocabulary of {tok.vocab_size:,} "
                f"as {dtype.name}"
            )
        if meta.get("vocab_size", tok.vocab_size) != tok.vocab_size:
            raise _damaged(d, f"says vocab_size {meta['vocab_size']:,} but its tokenizer has {tok.vocab_size:,}")
        splits = []
        for split in ("train", "val"):
            path = _regular_inside(d, real_dir, f"{split}.bin")
            if path is None:
                raise DataError(f"{d / (split + '.bin')} is missing; prepare the data again")
            _check_ids(path, dtype, tok.vocab_size)
            tokens = MemmapTokens(path, dtype.name, tok.vocab_size)
            said = meta.get(f"{split}_tokens")
            if said is not None and said != len(tokens):
                raise _damaged(d, f"says {split}_tokens {said:,} but {split}.bin holds {len(tokens):,}")
            splits.append(tokens)
    except OSError as e:
        raise DataError(f"{d} cannot be read ({e.strerror or e}); check the folder") from None
    return Prepared(splits[0], splits[1], tok, meta)
