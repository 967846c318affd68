"""Corpora (built-in, file, URL), validation, documents mode, splits and batches."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

import lmcore.data as data
from lmcore.data import (
    BUILTIN_CORPORA,
    MAX_CORPUS_BYTES,
    STDLIB_CORPUS_BYTES,
    Corpus,
    build_tokenizer,
    check_length,
    corpus_from_text,
    corpus_stats,
    encode_corpus,
    get_batch,
    load_corpus,
    split_ids,
    token_counts,
)
from lmcore.errors import DataError, TokenizerError
from lmcore.recipes import INDUCTION_SEGMENTS, INDUCTION_VOCAB, induction_data
from lmcore.tokenizers import BPETokenizer, CharTokenizer
from lmcore.tokenizers.bpe import text_pieces


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a built-in corpus tried to use the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----------------------------------------------------------------------- built-in corpora
@pytest.mark.parametrize("name", sorted(BUILTIN_CORPORA))
def test_builtin_corpora_load_without_network(name: str, no_network: None) -> None:
    corpus = load_corpus(f"builtin:{name}")
    assert corpus.name == name and corpus.source == f"builtin:{name}"
    assert len(corpus.text) > 50_000
    assert corpus_from_text(corpus.text).text == corpus.text  # passes the same validation as files
    assert corpus.documents == (name == "python-names")


def test_builtin_corpora_are_deterministic() -> None:
    first = {n: load_corpus(f"builtin:{n}").text for n in BUILTIN_CORPORA}
    for fn in (data._python_docs, data._python_stdlib, data._python_names, data._induction_text, data._stdlib_files):
        fn.cache_clear()
    assert {n: load_corpus(f"builtin:{n}").text for n in BUILTIN_CORPORA} == first


def test_python_docs_is_the_default_and_english() -> None:
    assert data.DEFAULT_CORPUS == "builtin:python-docs"
    text = load_corpus(data.DEFAULT_CORPUS).text
    assert 400_000 < len(text) < 600_000
    assert "assert" in text and " the " in text


def test_python_stdlib_is_capped_source_code() -> None:
    text = load_corpus("builtin:python-stdlib").text
    assert STDLIB_CORPUS_BYTES * 0.9 < len(text.encode("utf-8")) <= STDLIB_CORPUS_BYTES
    assert "def " in text and "import " in text
    compile(text.split("\n\n\n")[0], "<stdlib>", "exec")  # whole files, not cut mid-line


def test_induction_corpus_encodes_to_the_induction_recipes_stream() -> None:
    corpus = load_corpus("builtin:induction")
    tok = CharTokenizer.train(corpus.text)
    assert tok.vocab_size == INDUCTION_VOCAB + 1  # 256 symbols and the document-start token
    train_ids, _ = induction_data()
    assert torch.equal(torch.tensor(tok.encode(corpus.text)), train_ids)
    lines = corpus.text.split("\n")[1:-1]  # whole segments: each line is one segment twice
    assert all(len(line) % 2 == 0 and line[: len(line) // 2] == line[len(line) // 2 :] for line in lines)
    assert {len(line) // 2 for line in lines} == set(range(INDUCTION_SEGMENTS[0], INDUCTION_SEGMENTS[1] + 1))


def test_python_names_are_unique_identifiers_not_alphabetical() -> None:
    corpus = load_corpus("builtin:python-names")
    names = corpus.docs
    assert len(names) > 2000
    assert len(set(names)) == len(names)
    assert all(n.isidentifier() and not n.startswith("_") for n in names)
    assert names != sorted(names)  # a fixed shuffle, so a split sees every letter
    last_tenth = names[-len(names) // 10 :]
    assert len({n[0].lower() for n in last_tenth}) > 15


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(DataError) as err:
        load_corpus("builtin:shakespeare")
    assert all(f"builtin:{n}" in str(err.value) for n in BUILTIN_CORPORA)


# ----------------------------------------------------------------------- local files
def test_local_file_loads_exactly(tmp_path: Path) -> None:
    path = tmp_path / "poem.txt"
    path.write_bytes("\ufeffFirst line\r\nSecond line, café ☕\r\n".encode())
    corpus = load_corpus(str(path))
    assert corpus.text == "First line\r\nSecond line, café ☕\r\n"  # BOM dropped, CRLF kept
    assert corpus.name == "poem.txt" and corpus.source == str(path) and not corpus.documents
    assert corpus.docs == [corpus.text]
    assert load_corpus(path, documents=True).docs == ["First line", "Second line, café ☕"]


BAD_FILES = {
    "empty": (b"", "empty"),
    "whitespace": (b" \n\t\r\n  \n", "only whitespace"),
    "latin1": ("caf\u00e9 cr\u00e8me".encode("latin-1"), "not valid UTF-8"),
    "utf16": ("hello world".encode("utf-16"), "UTF-16"),
    "nul": (b"hello\x00world", "NUL bytes"),
    "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary"),
    "controls": (b"ok" + b"\x01\x02\x03\x04\x05\x06\x07\x08" * 20, "binary"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_one_line_data_errors(tmp_path: Path, case: str) -> None:
    content, expected = BAD_FILES[case]
    path = tmp_path / f"{case}.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as err:
        load_corpus(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_not_utf8_says_where(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(b"abc \xe9t\xe9")
    with pytest.raises(DataError, match=r"byte 0xe9 at offset 4.*convert it to UTF-8"):
        load_corpus(str(path))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_corpus(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="is a directory"):
        load_corpus(str(tmp_path))
    with pytest.raises(DataError, match="no corpus given"):
        load_corpus("  ")
    with pytest.raises(DataError, match="only http, https and file"):
        load_corpus("ftp://example.com/a.txt")


def test_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("word " * 300, encoding="utf-8")
    assert load_corpus(str(path), max_bytes=1500).text == "word " * 300
    with pytest.raises(DataError, match="over the 1,000 bytes limit"):
        load_corpus(str(path), max_bytes=1000)
    with pytest.raises(DataError, match="over the 1,000 bytes limit"):
        corpus_from_text("word " * 300, max_bytes=1000)
    assert MAX_CORPUS_BYTES == 50_000_000


# ----------------------------------------------------------------------- pasted text
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("   \n\t ", "only whitespace"),
        ("a\x00b", "NUL bytes"),
        ("bad \ud800 surrogate", "surrogate"),
        (b"caf\xe9", "not valid UTF-8"),
        (12, "must be text"),
    ],
)
def test_corpus_from_text_validates(text: object, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        corpus_from_text(text)  # type: ignore[arg-type]


def test_corpus_from_text_and_stats() -> None:
    corpus = corpus_from_text("one two\nthree\n\nfour", name="paste", documents=True)
    assert corpus.name == "paste" and corpus.documents
    assert corpus.docs == ["one two", "three", "four"]
    assert corpus_stats(corpus) == {
        "characters": 19,
        "bytes": 19,
        "lines": 4,
        "words": 4,
        "unique_chars": 11,  # o n e t w h r f u, space, newline
        "documents": 3,
    }
    assert corpus_stats(corpus_from_text("a\nb\n"))["lines"] == 2
    assert corpus_stats(corpus_from_text(b"\xc3\xa9t\xc3\xa9"))["bytes"] == 5


# ----------------------------------------------------------------------- URLs
def test_url_downloads_once_into_the_cache(http_folder: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    base, root, requested = http_folder
    (root / "sonnets.txt").write_text("Shall I compare thee\nto a summer's day?\n", encoding="utf-8")
    cache = tmp_path / "cache"
    url = f"{base}/sonnets.txt"
    corpus = load_corpus(url, cache_dir=cache, allow_local_urls=True)
    assert corpus.text == "Shall I compare thee\nto a summer's day?\n"
    assert corpus.name == "sonnets.txt" and corpus.source == url
    assert len(list(cache.iterdir())) == 1
    (root / "sonnets.txt").unlink()  # the second load must come from the cache
    again = load_corpus(url, cache_dir=cache, documents=True, allow_local_urls=True)
    assert again.text == corpus.text and again.docs == ["Shall I compare thee", "to a summer's day?"]
    assert requested == ["/sonnets.txt"]
    (root / "sonnets.txt").write_text("Revised.\n", encoding="utf-8")
    assert load_corpus(url, cache_dir=cache, refresh=True, allow_local_urls=True).text == "Revised.\n"
    assert load_corpus(url, cache_dir=cache, allow_local_urls=True).text == "Revised.\n"
    assert requested == ["/sonnets.txt", "/sonnets.txt"]


def test_url_errors(http_folder: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    base, root, _ = http_folder
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="HTTP 404"):
        load_corpus(f"{base}/missing.txt", cache_dir=cache, allow_local_urls=True)
    (root / "bin.txt").write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="NUL bytes"):
        load_corpus(f"{base}/bin.txt", cache_dir=cache, allow_local_urls=True)
    (root / "big.txt").write_text("x" * 5000, encoding="utf-8")
    with pytest.raises(DataError, match="over the"):
        load_corpus(f"{base}/big.txt", cache_dir=cache, max_bytes=1000, allow_local_urls=True)
    assert not cache.exists() or not list(cache.iterdir())  # nothing bad is cached


def test_url_when_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # A port nobody listens on: the connection is refused, as when offline.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="cannot download .*network connection") as err:
        load_corpus(f"http://127.0.0.1:{port}/corpus.txt", cache_dir=tmp_path, allow_local_urls=True)
    assert "\n" not in str(err.value)


def test_local_sources_can_be_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("private\n", encoding="utf-8")
    for source in (str(path), path.as_uri()):
        with pytest.raises(DataError, match="not a web address"):
            load_corpus(source, allow_local=False)
    assert load_corpus("builtin:python-docs", allow_local=False).name == "python-docs"


def test_file_url(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("alice\nbob\n", encoding="utf-8")
    corpus = load_corpus(path.as_uri(), documents=True, cache_dir=tmp_path / "cache")
    assert corpus.docs == ["alice", "bob"]
    with pytest.raises(DataError, match="no such file"):
        load_corpus((tmp_path / "gone.txt").as_uri(), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # a local file needs no second copy


# ----------------------------------------------------------------------- tokenizing corpora
def test_build_tokenizer_kinds() -> None:
    text = load_corpus("builtin:python-docs").text[:5000]
    calls: list[tuple[int, int]] = []
    char = build_tokenizer("char", text, progress=lambda d, t: calls.append((d, t)))
    assert isinstance(char, CharTokenizer) and calls[-1] == (1, 1)
    bpe = build_tokenizer("bpe", text, vocab_size=300, progress=lambda d, t: calls.append((d, t)))
    assert isinstance(bpe, BPETokenizer) and bpe.vocab_size == 300 and calls[-1] == (43, 43)
    assert build_tokenizer("bpe", corpus_from_text(text)).vocab_size == 512  # the default
    with pytest.raises(TokenizerError, match="choose char or bpe"):
        build_tokenizer("sentencepiece", text)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_documents_mode_places_bos(kind: str) -> None:
    corpus = corpus_from_text("alice\r\nbob\n\n  \rcarol-anne\n", documents=True)
    tok = build_tokenizer(kind, corpus.text, vocab_size=270)
    ids = encode_corpus(tok, corpus)
    assert ids.dtype == torch.long and ids.dim() == 1
    bos = tok.bos_id
    assert ids[0].item() == bos and ids[-1].item() == bos
    positions = (ids == bos).nonzero().flatten().tolist()
    assert len(positions) == len(corpus.docs) + 1 == 4
    pieces = [tok.decode(ids[a + 1 : b].tolist()) for a, b in zip(positions, positions[1:])]
    assert pieces == ["alice", "bob", "carol-anne"]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_plain_encoding_equals_encode(kind: str) -> None:
    corpus = load_corpus("builtin:python-docs")
    text = corpus.text[:20000]
    tok = build_tokenizer(kind, text, vocab_size=300)
    calls: list[tuple[int, int]] = []
    ids = encode_corpus(tok, corpus_from_text(text), progress=lambda d, t: calls.append((d, t)))
    assert ids.tolist() == tok.encode(text)
    assert calls[-1] == (len(text), len(text))
    # Encoding in pieces cut before a line that starts with a letter changes nothing.
    pieces = list(text_pieces(text, 500))
    assert len(pieces) > 10 and "".join(pieces) == text
    assert [i for p in pieces for i in tok.encode(p)] == ids.tolist()


def test_token_counts_count_every_id_of_the_vocabulary() -> None:
    tok = CharTokenizer.train("abba\n")
    ids = encode_corpus(tok, Corpus(name="t", text="ab\nba\nbb", documents=True))
    counts = token_counts(ids, tok.vocab_size)
    assert len(counts) == tok.vocab_size and sum(counts) == len(ids)
    a, b, nl = (tok.encode(c)[0] for c in "ab\n")
    assert (counts[a], counts[b], counts[tok.bos_id], counts[nl]) == (2, 4, 4, 0)  # documents: no newline, BOS around


# ----------------------------------------------------------------------- splits and batches
def test_split_is_deterministic() -> None:
    ids = torch.arange(1000)
    train, val = split_ids(ids, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(train, torch.arange(900)) and torch.equal(val, torch.arange(900, 1000))
    train2, val2 = split_ids(ids, 0.1)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(DataError, match="validation fraction"):
            split_ids(ids, bad)


def test_get_batch_windows_and_targets() -> None:
    ids = torch.arange(100, 300)
    g = torch.Generator().manual_seed(0)
    x, y = get_batch(ids, batch_size=5, block_size=16, generator=g)
    assert x.shape == (5, 16) and y.shape == (5, 16) and x.dtype == torch.long
    assert torch.equal(y, x + 1)  # targets are the inputs shifted by one
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(5, 15, dtype=torch.long))  # contiguous windows
    assert int(x.min()) >= 100 and int(y.max()) <= 299
    x2, _ = get_batch(ids, 5, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_too_short_corpus() -> None:
    ids = torch.arange(10)
    check_length(ids, 9)
    with pytest.raises(DataError, match="needs at least 11"):
        check_length(ids, 10)
    with pytest.raises(DataError, match="smaller block size"):
        get_batch(ids, 2, 10)


def test_corpus_is_a_plain_dataclass() -> None:
    corpus = Corpus("n", "a\nb")
    assert corpus.documents is False and corpus.source == "" and corpus.docs == ["a\nb"]
