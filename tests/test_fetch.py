"""The one downloader (``lmcore.fetch``) as ``prepare``, ``train`` and the app's address box meet it.

Every download (a corpus URL, ``prepare --data URL``) goes through one module:
one address rule (local addresses refused unless allowed, on every redirect
hop), no proxy, one deadline for the whole download, a size cap, and a
malformed address is one line. Real servers on 127.0.0.x in threads of this
test; the command line runs as a real process.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import ipaddress
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import lmcore.fetch as fetch
import lmcore.shards as shards
from lmcore.data import load_corpus
from lmcore.errors import DataError
from lmcore.shards import load_prepared, prepare
from tests.helpers import run_lmcore

ROOT = Path(__file__).resolve().parents[1]
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
BAD_URLS = ["http://[::1", "http://[::1/x.txt", "https://example.org:99999/x.txt", "http://example.org:port/x"]
BOUND_S = 20.0  # generous on a shared machine; without a deadline the slow server below runs for 60 s


MEMORY_CAP = 3 << 30  # the process's address space: a runaway allocation fails there, not the machine


def lmcore(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", *PROXY_VARS)}
    base.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", LMCORE_CACHE_DIR=str(cwd / "cache"))
    return run_lmcore(*args, cwd=cwd, env={**base, **(env or {})}, text=True, address_space=MEMORY_CAP)


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@contextlib.contextmanager
def serving(root: Path, host: str = "127.0.0.1") -> Iterator[tuple[str, list[str]]]:
    """An HTTP server over ``root``; /go?to=URL redirects there. Yields (base URL, paths requested)."""
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            requested.append(self.path)
            if self.path.startswith("/go?to="):
                self.send_response(302)
                self.send_header("Location", self.path.removeprefix("/go?to="))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer((host, 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}", requested
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextlib.contextmanager
def raw_server(handler) -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server running ``handler(conn)`` per connection; yields (port, first bytes of each connection)."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def run(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            seen.append(conn.recv(65536))
            handler(conn)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=run, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        listener.close()


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "x.txt").write_text("It was a dark and stormy night.\n" * 200, encoding="utf-8")
    return root


# ----------------------------------------------------------------------- prepare: the address rule
@pytest.mark.slow
def test_prepare_refuses_a_local_url_in_one_line_unless_allowed(www: Path, tmp_path: Path) -> None:
    with serving(www) as (base, requested):
        run = lmcore("prepare", "--data", f"{base}/x.txt", "--out", "shards", cwd=tmp_path)
        assert run.returncode == 2 and "loopback address" in one_line(run.stderr) and "--allow-local-urls" in run.stderr
        assert requested == [] and not (tmp_path / "shards").exists()
        run = lmcore("prepare", "--data", f"{base}/x.txt", "--out", "shards", "--allow-local-urls", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert requested == ["/x.txt"] and load_prepared(tmp_path / "shards").meta["train_tokens"] > 1000


@pytest.mark.slow
def test_prepare_ignores_proxy_variables(www: Path, tmp_path: Path) -> None:
    # A "proxy" that answers every request with a page of its own: a download through it would get that page.
    def proxy(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n" + b"PROXIED! " * 3 + b"xxx")

    with serving(www) as (base, requested), raw_server(proxy) as (proxy_port, proxied):
        env = {var: f"http://127.0.0.1:{proxy_port}" for var in PROXY_VARS}
        run = lmcore("prepare", "--data", f"{base}/x.txt", "--out", "shards", "--allow-local-urls", cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stderr
    assert proxied == [] and requested == ["/x.txt"]
    assert load_prepared(tmp_path / "shards").meta["bytes"] == len("It was a dark and stormy night.\n") * 200


def test_prepare_follows_no_redirect_to_a_local_address(www: Path, tmp_path: Path, monkeypatch) -> None:
    # 127.0.0.2 plays a public server (this machine has no other); 127.0.0.1 stays what it is.
    public = ipaddress.ip_address("127.0.0.2")
    rule = fetch.is_public_address
    monkeypatch.setattr(fetch, "is_public_address", lambda ip: ip == public or rule(ip))
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "s.txt").write_text("INTERNAL-ONLY\n" * 50, encoding="utf-8")
    with serving(www, "127.0.0.2") as (public_base, _), serving(secret) as (local_base, local_requests):
        prepare(f"{public_base}/go?to=/x.txt", tmp_path / "ok", "char")  # a public hop is followed
        with pytest.raises(DataError, match="was refused: 127.0.0.1 is a loopback address"):
            prepare(f"{public_base}/go?to={local_base}/s.txt", tmp_path / "no", "char")
    assert local_requests == [] and not (tmp_path / "no").exists()


def test_prepare_has_one_deadline_for_the_whole_download(tmp_path: Path, monkeypatch) -> None:
    def dribble(conn: socket.socket) -> None:  # a byte every 0.2 s: never silent, never done
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            conn.sendall(b"x")
            time.sleep(0.2)

    monkeypatch.setattr(shards, "DOWNLOAD_DEADLINE_S", 1.5)
    with raw_server(dribble) as (port, _):
        start = time.monotonic()
        with pytest.raises(DataError, match="took longer than 1.5 s"):
            prepare(f"http://127.0.0.1:{port}/x.txt", tmp_path / "out", "char", allow_local_urls=True)
        assert time.monotonic() - start < BOUND_S
    assert not (tmp_path / "out").exists()


def test_prepare_caps_the_size_of_a_download(tmp_path: Path, monkeypatch) -> None:
    def endless(conn: socket.socket) -> None:  # no length announced
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for _ in range(100):
            conn.sendall(b"many words of text\n" * 100)

    monkeypatch.setattr(shards, "MAX_DOWNLOAD_BYTES", 5000)
    (tmp_path / "out").mkdir()
    with raw_server(endless) as (port, _):
        with pytest.raises(DataError, match="over the 5,000 bytes limit"):
            prepare(f"http://127.0.0.1:{port}/x.txt", tmp_path / "out", "char", allow_local_urls=True)
    assert list((tmp_path / "out").iterdir()) == []  # the partial download is gone


# ----------------------------------------------------------------------- malformed addresses
@pytest.mark.parametrize("url", BAD_URLS)
def test_a_malformed_url_is_one_line_in_the_library(url: str, tmp_path: Path) -> None:
    for call in (lambda: load_corpus(url, cache_dir=tmp_path), lambda: prepare(url, tmp_path / "out", "char")):
        with pytest.raises(DataError, match="is not a valid address") as err:
            call()
        assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_malformed_url_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    for args in (["train", "--data", "http://[::1", "--out", "m.safetensors"],
                 ["prepare", "--data", "http://[::1", "--out", "shards"]):  # fmt: skip
        run = lmcore(*args, cwd=tmp_path)
        assert run.returncode == 2 and "is not a valid address" in one_line(run.stderr)


def test_a_malformed_url_is_one_line_in_the_address_box(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LMCORE_CACHE_DIR", str(tmp_path / "cache"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.radio[0].set_value("From a URL").run()
    at.text_input(key="keep.data.url").set_value("http://[::1")
    at.button[0].click().run()
    assert not at.exception
    assert len(at.error) == 1 and "is not a valid address" in at.error[0].value
