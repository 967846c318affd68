"""Shared fixtures: paths, the standard corpus, tiny configs."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def english_text() -> str:
    """About 465 KB of English: the built-in corpus (Python's own docs), on every machine.

    Tests read nothing outside the repository: no ``../shared``, no download.
    """
    from lmcore.data import load_corpus

    return load_corpus("builtin:python-docs").text


@pytest.fixture(scope="session")
def shakespeare_text(english_text: str) -> str:
    """The older name of ``english_text`` (it once read tiny Shakespeare from outside the repository)."""
    return english_text


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and the machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def corpus(small_text: str) -> tuple:
    """(char tokenizer, train ids, val ids) of ``small_text``, split 90/10."""
    from lmcore.data import split_ids
    from lmcore.tokenizers import CharTokenizer

    tok = CharTokenizer.train(small_text)
    ids = torch.tensor(tok.encode(small_text))
    train_ids, val_ids = split_ids(ids, 0.1)
    return tok, train_ids, val_ids


@pytest.fixture(scope="session")
def small_text() -> str:
    """A few KB of English with structure, always available (no network, no shared/)."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n".join(topics[k] for k in sorted(topics)[:12])


# ----------------------------------------------------------------------- a local web server
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path, list[str]]]:
    """A local HTTP server over a folder; yields (base URL, folder, paths requested)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    requested: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requested
    finally:
        httpd.shutdown()
        httpd.server_close()
