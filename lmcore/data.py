"""Corpora, validation, tokenizer building, train/val splits and random-window batches.

A corpus comes from one of three places, named by ``load_corpus(source)``:

- ``builtin:NAME``: text that ships with Python itself, so no download and no
  copied text: ``python-docs`` (the language reference and library topics of
  ``pydoc_data.topics``, about 465 KB of English; the default),
  ``python-stdlib`` (the standard library's own source code, capped at
  ``STDLIB_CORPUS_BYTES``) and ``python-names`` (public function and class names
  of the standard library, one per line: a documents-mode corpus) and
  ``induction`` (random symbols, each segment repeated twice: the data on
  which an induction head forms, as text for the character tokenizer).
- a local file path;
- an ``http(s)://`` URL, downloaded once into a cache directory
  (``$LMCORE_CACHE_DIR``, else ``~/.cache/lmcore``), or a ``file://`` URL.

Downloads go through ``lmcore.fetch``, the one downloader: public internet
addresses only unless the caller allows local ones (checked on every
redirect hop), no proxy, one deadline for the whole download, a size cap.

Every corpus is checked the same way and a ``DataError`` with a one-line fix is
raised for: a missing file, a directory, empty or whitespace-only text, bytes
that are not UTF-8 (we say so rather than guess another encoding), UTF-16 text,
NUL bytes or other signs of a binary file, and anything over ``max_bytes``
(``MAX_CORPUS_BYTES``, 50 MB, by default: a pure-Python BPE encodes about
2-5 MB/s, so larger corpora would keep the app busy for minutes). A UTF-8 byte
order mark is dropped; line endings are kept exactly as they are.

Documents mode treats each non-blank line as one document (names, titles);
LF, CRLF and CR all end a line.
``encode_corpus`` then lays them out as BOS doc1 BOS doc2 ... BOS, so a model
learns that BOS starts a document and that a document ends at the next BOS.

Shapes: B batch, T block size.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sysconfig
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import regex
import torch

from lmcore.batches import TokenSource, as_source, batch_from_starts, check_length
from lmcore.errors import DataError, TokenizerError
from lmcore.fetch import fetch, is_public_address, split_url  # noqa: F401 - is_public_address: a public name here
from lmcore.tokenizers import BPETokenizer, CharTokenizer, Tokenizer
from lmcore.tokenizers.bpe import text_pieces

MAX_CORPUS_BYTES = 50 * 1000 * 1000  # 50 MB
STDLIB_CORPUS_BYTES = 1_000_000  # about the size of tiny Shakespeare
DEFAULT_CORPUS = "builtin:python-docs"
DEFAULT_BPE_VOCAB = 512

BUILTIN_CORPORA: dict[str, str] = {
    "python-docs": "Python's language reference and library topics (pydoc_data.topics), about 465 KB of English",
    "python-stdlib": "Python standard library source code, about 1 MB of .py files chosen in a fixed order",
    "python-names": "public function and class names of the Python standard library, one per line (documents)",
    "induction": "random symbols, each segment repeated twice (one per line): the data on which an induction head forms",
}
# Built-in corpora that are lists of documents whatever the caller asks for.
_DOCUMENT_CORPORA = {"python-names"}

Progress = Callable[[int, int], None]

_LINE_BREAK = regex.compile(r"\r\n|\n|\r")


@dataclass
class Corpus:
    """A validated text and how to read it: as one stream, or one document per line."""

    name: str
    text: str
    documents: bool = False
    source: str = ""

    @property
    def docs(self) -> list[str]:
        """The documents: the non-blank lines in documents mode (any of LF, CRLF, CR ends one), else [text]."""
        if not self.documents:
            return [self.text]
        return [line for line in _LINE_BREAK.split(self.text) if line.strip()]


# --------------------------------------------------------------------- validation
def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def _check_text(text: str, what: str, max_bytes: int) -> str:
    """The checks shared by every source, on decoded text."""
    if not text:
        raise DataError(f"{what} is empty; choose a file or text with something in it")
    if not text.strip():
        raise DataError(f"{what} holds only whitespace; choose a file or text with something in it")
    if "\x00" in text:
        raise DataError(f"{what} contains NUL bytes, so it looks like a binary file; choose a UTF-8 text file")
    try:
        n = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise DataError(
            f"{what} holds a lone surrogate at character {e.start}, which is not valid Unicode; remove it"
        ) from None
    if n > max_bytes:
        raise DataError(f"{what} is {_size(n)}, over the {_size(max_bytes)} limit; use a smaller part of it")
    # Text files rarely hold C0 control characters other than whitespace and
    # escape; many of them mean a binary file that happens to decode as UTF-8.
    head = text[:65536]
    controls = sum(1 for ch in head if ch < " " and ch not in "\t\n\r\f\v\x1b")
    if controls > max(8, len(head) // 100):
        raise DataError(
            f"{what} has {controls} control characters in its first {len(head):,}, "
            "so it looks like a binary file, not text; choose a UTF-8 text file"
        )
    return text


def _text_from_bytes(data: bytes, what: str, max_bytes: int) -> str:
    """Decode strictly as UTF-8 (never guess), then run the common checks."""
    if len(data) > max_bytes:
        raise DataError(f"{what} is {_size(len(data))}, over the {_size(max_bytes)} limit; use a smaller part")
    if not data:
        raise DataError(f"{what} is empty; choose a file or text with something in it")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{what} is UTF-16 text, not UTF-8; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    if b"\x00" in data:
        raise DataError(f"{what} contains NUL bytes, so it looks like a binary file; choose a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{what} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "convert it to UTF-8 first, e.g. with iconv -t UTF-8"
        ) from None
    return _check_text(text.removeprefix("\ufeff"), what, max_bytes)


def corpus_from_text(
    text: str | bytes, name: str = "pasted", documents: bool = False, max_bytes: int = MAX_CORPUS_BYTES
) -> Corpus:
    """A validated corpus from text in memory (a paste, or an upload's bytes)."""
    what = f"the text {name!r}"
    if isinstance(text, (bytes, bytearray)):
        return Corpus(name, _text_from_bytes(bytes(text), what, max_bytes), documents, name)
    if not isinstance(text, str):
        raise DataError(f"a corpus must be text, got {type(text).__name__}")
    return Corpus(name, _check_text(text.removeprefix("\ufeff"), what, max_bytes), documents, name)


# --------------------------------------------------------------------- built-in corpora
@lru_cache(maxsize=1)
def _python_docs() -> str:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"


# Parts of the standard library left out of the source corpora: tests (large,
# repetitive, some deliberately malformed), codec tables, the docs corpus
# itself, installed third-party packages and build-specific files.
_SKIP_DIRS = {
    "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings", "pydoc_data",
}  # fmt: skip


def _stable_key(s: str) -> str:
    """A fixed pseudo-random order, the same on every machine and Python run."""
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


@lru_cache(maxsize=1)
def _stdlib_files() -> tuple[tuple[str, str], ...]:
    """(relative path, source) of the standard library's readable .py files, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(f"the Python standard library sources are not at {root}; choose another corpus")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(("config-", ".")))
        for fn in sorted(filenames):
            if not fn.endswith(".py") or fn.startswith("_sysconfigdata"):
                continue
            path = Path(dirpath) / fn
            try:
                source = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # a few files use other encodings; skip rather than guess
            if "\x00" in source or not source.strip():
                continue
            files.append((path.relative_to(root).as_posix(), source))
    if not files:
        raise DataError(f"no Python sources were found under {root}; choose another corpus")
    files.sort()
    return tuple(files)


@lru_cache(maxsize=1)
def _python_stdlib() -> str:
    """Whole source files, in a fixed pseudo-random order, until STDLIB_CORPUS_BYTES."""
    parts, total = [], 0
    for rel, source in sorted(_stdlib_files(), key=lambda f: _stable_key(f[0])):
        n = len(source.encode("utf-8")) + 1
        if total + n > STDLIB_CORPUS_BYTES:
            continue  # try smaller files: the cap is filled, not just approached
        parts.append(source.rstrip("\n") + "\n")
        total += n
    return "\n".join(parts)


_DEF_OR_CLASS = regex.compile(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+([A-Za-z][A-Za-z0-9_]*)", regex.MULTILINE)


@lru_cache(maxsize=1)
def _python_names() -> str:
    """Public def/class names of the stdlib, deduplicated, in a fixed pseudo-random order.

    Not alphabetical: a split of a sorted list would validate only on names
    from the end of the alphabet.
    """
    names = set()
    for _, source in _stdlib_files():
        for name in _DEF_OR_CLASS.findall(source):
            if not name.startswith("test"):
                names.add(name)
    return "\n".join(sorted(names, key=lambda s: (_stable_key(s), s))) + "\n"


# The induction data: a vocabulary of 256 (token 0 separates sequences) and the
# range of segment lengths; varied lengths leave copying, not a fixed look-back
# distance, as the way to predict a repeat.
INDUCTION_VOCAB = 256
INDUCTION_SEGMENTS = (6, 20)
INDUCTION_TOKENS = 400_000
# Token 0 is a newline, tokens 1..255 the characters from U+00C1 on (Latin letters,
# and × and ÷), so the character tokenizer's sorted vocabulary gives each its token's id.
_INDUCTION_FIRST_SYMBOL = 0xC0


@lru_cache(maxsize=1)
def _induction_text() -> str:
    """``repeated_random_tokens`` written as text: one segment, repeated, per line."""
    ids = repeated_random_tokens(INDUCTION_TOKENS, INDUCTION_VOCAB, *INDUCTION_SEGMENTS)
    return "".join("\n" if i == 0 else chr(_INDUCTION_FIRST_SYMBOL + i) for i in ids.tolist())


_BUILTIN_TEXT: dict[str, Callable[[], str]] = {
    "python-docs": _python_docs,
    "python-stdlib": _python_stdlib,
    "python-names": _python_names,
    "induction": _induction_text,
}
assert set(_BUILTIN_TEXT) == set(BUILTIN_CORPORA)


# --------------------------------------------------------------------- URLs
def default_cache_dir() -> Path:
    """Where downloads are kept: $LMCORE_CACHE_DIR, else $XDG_CACHE_HOME/lmcore, else ~/.cache/lmcore."""
    env = os.environ.get("LMCORE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmcore"


def _cache_path(url: str, cache_dir: Path, local: bool = False) -> Path:
    """Where the download of ``url`` is kept; a copy fetched from a local address has its own name,
    so a caller that may not reach local addresses never reads it."""
    tail = Path(urllib.parse.urlsplit(url).path).name
    stem = regex.sub(r"[^A-Za-z0-9._-]", "_", tail)[-60:].lstrip(".") or "download"
    key = ("local " if local else "") + url
    return cache_dir / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()[:16]}-{stem}"


def _load_url(
    url: str,
    documents: bool,
    max_bytes: int,
    cache_dir: str | os.PathLike | None,
    refresh: bool,
    allow_local_urls: bool,
) -> Corpus:
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = Path(urllib.parse.urlsplit(url).path).name or urllib.parse.urlsplit(url).netloc or "download"
    if not refresh:
        for local in (False, True) if allow_local_urls else (False,):
            path = _cache_path(url, cache_dir, local)
            if path.is_file():
                text = _text_from_bytes(path.read_bytes(), f"the cached copy of {url} ({path})", max_bytes)
                return Corpus(name, text, documents, url)
    data, local = fetch(url, max_bytes, allow_local=allow_local_urls)
    text = _text_from_bytes(data, url, max_bytes)
    # Only a valid corpus is cached, so a fixed file on the server is fetched again.
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, _cache_path(url, cache_dir, local))
    except OSError:
        pass  # an unwritable cache costs a download next time, nothing more
    return Corpus(name, text, documents, url)


# --------------------------------------------------------------------- loading
def _load_file(path: Path, documents: bool, max_bytes: int, source: str) -> Corpus:
    if not path.exists():
        raise DataError(f"no such file: {path}; check the path, or use builtin:python-docs")
    if path.is_dir():
        raise DataError(f"{path} is a directory; give the path of one text file inside it")
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block, a device never end
            raise DataError(f"{path} is not a regular file; give the path of a text file")
        if info.st_size > max_bytes:
            raise DataError(
                f"{path} is {_size(info.st_size)}, over the {_size(max_bytes)} limit; use a smaller part of it"
            )
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # a file that grows meanwhile is still refused, not read to the end
    except PermissionError:
        raise DataError(f"{path} cannot be read (permission denied); check its permissions") from None
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e}); check the file") from None
    return Corpus(path.name, _text_from_bytes(data, str(path), max_bytes), documents, source)


def load_corpus(
    source: str,
    documents: bool = False,
    max_bytes: int = MAX_CORPUS_BYTES,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    allow_local: bool = True,
    allow_local_urls: bool = False,
) -> Corpus:
    """A validated corpus from ``builtin:NAME``, a local path, or an http(s)/file URL.

    A URL is downloaded the first time and read from ``cache_dir`` after that;
    ``refresh=True`` downloads it again. ``builtin:python-names`` is always in
    documents mode. ``allow_local=False`` refuses paths and file:// URLs, for a
    field where people who do not own the machine type a web address.
    http(s) URLs reach public addresses only (see ``is_public_address``, checked
    on every redirect); ``allow_local_urls=True`` also lets them reach this
    machine and its local network.
    """
    known = ", ".join("builtin:" + n for n in BUILTIN_CORPORA)
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise DataError(f"no corpus given; use a file path, a URL or one of {known}")
    source = str(source).strip()
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_CORPORA:
            raise DataError(f"unknown built-in corpus {name!r}; choose one of {known}")
        text = _check_text(_BUILTIN_TEXT[name](), f"the built-in corpus {name!r}", max_bytes)
        return Corpus(name, text, documents or name in _DOCUMENT_CORPORA, source)
    parts = split_url(source)  # DataError for an address that cannot be parsed
    scheme = parts.scheme.lower()
    if not allow_local and scheme not in ("http", "https"):
        raise DataError(f"{source!r} is not a web address; give an http:// or https:// URL")
    if scheme in ("http", "https"):
        return _load_url(source, documents, max_bytes, cache_dir, refresh, allow_local_urls)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise DataError(f"{source} names another machine; a file:// URL can only read this machine's files")
        return _load_file(Path(urllib.request.url2pathname(parts.path)), documents, max_bytes, source)
    if scheme and len(scheme) > 1 and "://" in source:
        raise DataError(f"cannot load {source}: only http, https and file URLs are supported")
    path = Path(source).expanduser()
    return _load_file(path, documents, max_bytes, str(path))


def corpus_stats(corpus: Corpus) -> dict[str, int]:
    """Counts for the data page: characters, bytes, lines, words, unique_chars, documents."""
    text = corpus.text
    return {
        "characters": len(text),
        "bytes": len(text.encode("utf-8")),
        "lines": text.count("\n") + (1 if text and not text.endswith("\n") else 0),
        "words": len(text.split()),
        "unique_chars": len(set(text)),
        "documents": len(corpus.docs),
    }


# --------------------------------------------------------------------- tokenizing
def build_tokenizer(
    kind: str,
    text: str | Corpus,
    vocab_size: int | None = None,
    progress: Progress | None = None,
    unk: bool = False,
) -> Tokenizer:
    """Train a tokenizer of ``kind`` ("char" or "bpe") on ``text``.

    ``vocab_size`` is for BPE (default 512); the character tokenizer's
    vocabulary is the text's characters, so it ignores it. ``unk`` gives the
    character tokenizer an unknown-character token.
    """
    if isinstance(text, Corpus):
        text = text.text
    if kind == "char":
        tok: Tokenizer = CharTokenizer.train(text, unk=unk)
        if progress is not None:
            progress(1, 1)
        return tok
    if kind == "bpe":
        size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
        return BPETokenizer.train(text, vocab_size=size, progress=progress)
    raise TokenizerError(f"unknown tokenizer {kind!r}; choose char or bpe")


# Plain text is encoded in pieces of about this many characters (cut where
# every tokenizer's chunks end anyway, so the ids are those of the whole), for
# progress reports and smaller temporary lists.
_PIECE_CHARS = 1 << 20


def encode_corpus(tokenizer: Tokenizer, corpus: Corpus, progress: Progress | None = None) -> torch.Tensor:
    """The corpus as one 1-D long tensor of ids.

    Plain text: ``encode(text)``. Documents mode: BOS doc1 BOS doc2 ... BOS, so
    BOS both starts a document and separates it from the next.
    ``progress(done, total)`` counts characters (plain) or documents.
    """
    ids: list[int] = []
    if not corpus.documents:
        done, total = 0, len(corpus.text)
        for piece in text_pieces(corpus.text, _PIECE_CHARS):
            ids.extend(tokenizer.encode(piece))
            done += len(piece)
            if progress is not None:
                progress(done, total)
    else:
        docs = corpus.docs
        bos = tokenizer.bos_id
        ids.append(bos)
        step = max(1, len(docs) // 100)
        for k, doc in enumerate(docs, 1):
            ids.extend(tokenizer.encode(doc))
            ids.append(bos)
            if progress is not None and (k % step == 0 or k == len(docs)):
                progress(k, len(docs))
    return torch.tensor(ids, dtype=torch.long)  # (N,)


def token_counts(ids: torch.Tensor, vocab_size: int) -> list[int]:
    """How often each token id occurs in ``ids``: a list of vocab_size counts."""
    return torch.bincount(ids, minlength=vocab_size).tolist()  # (V,)


# --------------------------------------------------------------------- splits and batches
def split_ids(ids: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic split: the first (1 - val_fraction) of the ids train, the rest validate."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"the validation fraction must be between 0 and 1, got {val_fraction}")
    n = int(len(ids) * (1.0 - val_fraction))
    return ids[:n], ids[n:]


def get_batch(
    ids: torch.Tensor | TokenSource,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of a tensor of ids or a TokenSource: x (B, T) and the next-token targets y (B, T)."""
    source = as_source(ids)
    check_length(source, block_size)
    starts = torch.randint(len(source) - block_size, (batch_size,), generator=generator)
    return batch_from_starts(source, starts, block_size, device)


def repeated_random_tokens(
    n_tokens: int, vocab_size: int, min_len: int = 6, max_len: int = 20, seed: int = 0
) -> torch.Tensor:
    """A synthetic stream for watching induction heads form: ``SEP a b c ... a b c SEP d e ... d e ...``.

    Token 0 separates sequences; each sequence is a segment of random tokens
    from 1..vocab_size-1 (its length drawn uniformly from ``min_len..max_len``)
    repeated twice. The first half cannot be predicted; the second half can, by
    copying what followed the current token's earlier occurrence. Segment
    lengths vary so that no fixed look-back distance does the job. Returns a
    1-D long tensor of ``n_tokens`` ids, reproducible from ``seed``.
    """
    if vocab_size < 3:
        raise DataError(f"the repeated-token stream needs a vocabulary of at least 3, got {vocab_size}")
    if not 1 <= min_len <= max_len:
        raise DataError(f"segment lengths need 1 <= min_len <= max_len, got {min_len}..{max_len}")
    gen = torch.Generator().manual_seed(seed)
    parts, total = [], 0
    while total < n_tokens:
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        segment = torch.randint(1, vocab_size, (length,), generator=gen)
        parts.append(torch.cat([torch.zeros(1, dtype=torch.long), segment, segment]))
        total += 2 * length + 1
    return torch.cat(parts)[:n_tokens]
