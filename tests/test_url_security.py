"""What the URL loader, the app's address box and ``make run`` let a stranger reach.

Downloads reach public addresses only (checked on the resolved address of
every redirect hop, and connected to that very address), end at one deadline,
follow http(s) redirects only and turn whatever a hostile server sends into one
line. The playground listens on this machine only unless told otherwise, and a
corpus name shows as literal text. Every server here is a real one on
127.0.0.x; "DNS" is a monkeypatched ``socket.getaddrinfo``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import ipaddress
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import lmcore.fetch as fetch
from lmcore.cli import main
from lmcore.data import is_public_address, load_corpus
from lmcore.errors import DataError
from ui import state as S

ROOT = Path(__file__).resolve().parents[1]
SECRET = "INTERNAL-ONLY admin token=42\n"
PUBLIC_IP = ipaddress.ip_address("127.0.0.2")  # stands for a public server in the redirect tests


def counts_as_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """The default rule, except that 127.0.0.2 plays a public server's part."""
    return ip == PUBLIC_IP or is_public_address(ip)


# ----------------------------------------------------------------------- servers and a resolver
@contextlib.contextmanager
def serve_raw(handler: Callable[[socket.socket], None], host: str = "127.0.0.1") -> Iterator[int]:
    """A TCP server that runs ``handler`` on each connection in its own thread; yields the port."""
    listener = socket.create_server((host, 0))
    stop = threading.Event()

    def run(conn: socket.socket) -> None:
        with conn:
            try:
                handler(conn)
            except OSError:
                pass  # the client hung up: what a deadline does

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=run, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def public_server(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    """An HTTP server on 127.0.0.2 that plays a public one: /go?to=URL redirects there, other paths are files."""
    root = tmp_path / "public"
    root.mkdir()
    requested: list[str] = []

    class Handler(_Quiet):
        def do_GET(self) -> None:
            requested.append(self.path)
            if self.path.startswith("/go?to="):
                self.send_response(302)
                self.send_header("Location", self.path.removeprefix("/go?to="))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer((str(PUBLIC_IP), 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1], root, requested
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names that resolve to test addresses: {name: [address of each lookup in turn, the last one repeated]}.

    Each lookup of a name is recorded in ``dns["lookups"]``.
    """
    table: dict[str, list[str]] = {"lookups": []}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host in table and host != "lookups":
            table["lookups"].append(host)
            answers = table[host]
            address = answers.pop(0) if len(answers) > 1 else answers[0]
            return real(address, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def _download(url: str, max_bytes: int, address_ok: Callable) -> tuple[bytes, bool]:
    """The one downloader's body and whether a local address served it, under the address rule ``address_ok``."""
    buf = io.BytesIO()
    local = fetch.download(url, buf, max_bytes, address_ok)
    return buf.getvalue(), local


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.isprintable(), message
    return message


# ----------------------------------------------------------------------- local addresses
def test_a_local_server_is_refused_unless_allowed(http_folder, tmp_path):
    base, root, requested = http_folder
    (root / "secret.txt").write_text(SECRET, encoding="utf-8")
    port = base.rsplit(":", 1)[1]
    for url in (f"{base}/secret.txt", f"http://localhost:{port}/secret.txt", f"http://[::ffff:127.0.0.1]:{port}/"):
        with pytest.raises(DataError, match="loopback address, not a public one") as err:
            load_corpus(url, cache_dir=tmp_path / "cache")
        assert "--allow-local-urls" in one_line(err)
    assert requested == []  # refused before connecting
    assert load_corpus(f"{base}/secret.txt", cache_dir=tmp_path / "cache", allow_local_urls=True).text == SECRET
    # The copy cached by a caller that may reach local addresses is not handed to one that may not.
    with pytest.raises(DataError, match="loopback"):
        load_corpus(f"{base}/secret.txt", cache_dir=tmp_path / "cache")
    assert requested == ["/secret.txt"]


@pytest.mark.parametrize(
    "address, public",
    [
        ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
        ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
        ("240.0.0.1", False), ("255.255.255.255", False), ("::1", False), ("::", False), ("fe80::1", False),
        ("fc00::1", False), ("ff02::1", False), ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False), ("64:ff9b::a9fe:a9fe", False),
        ("8.8.8.8", True), ("151.101.1.69", True), ("2a04:4e42::347", True), ("::ffff:8.8.8.8", True),
    ],
)  # fmt: skip
def test_which_addresses_count_as_public(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_the_app_address_box_refuses_a_local_server(http_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("LMCORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LMCORE_ALLOW_LOCAL_URLS", raising=False)
    base, root, requested = http_folder
    (root / "secret.txt").write_text(SECRET, encoding="utf-8")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    before = at.session_state[S.CORPUS_ID]
    at.radio[0].set_value("From a URL").run()
    url = f"{base}/secret.txt?**x**[a](javascript:alert(1))<b>"
    at.text_input(key="keep.data.url").set_value(url)
    at.button[0].click().run()
    assert not at.exception
    assert len(at.error) == 1 and "loopback" in at.error[0].value
    assert url in literal_text(at.error[0].value)  # the address as typed, not as markup
    assert requested == []
    assert at.session_state[S.CORPUS_ID] == before
    assert not any("INTERNAL-ONLY" in c.value for c in at.code)


# ----------------------------------------------------------------------- redirects
def test_a_redirect_from_a_public_name_to_a_local_address_is_refused(public_server, http_folder, dns):
    port, root, public_requests = public_server
    base, secret_root, secret_requests = http_folder
    (secret_root / "secret.txt").write_text(SECRET, encoding="utf-8")
    (root / "book.txt").write_text("A public book.\n", encoding="utf-8")
    dns["public.example"] = [str(PUBLIC_IP)]
    dns["internal.example"] = ["127.0.0.1"]
    public = f"http://public.example:{port}"
    # The public hop itself connects and is followed, redirects included.
    assert _download(f"{public}/go?to=/book.txt", 10_000, counts_as_public) == (b"A public book.\n", True)
    secret_port = base.rsplit(":", 1)[1]
    for target in (f"{base}/secret.txt", f"http://internal.example:{secret_port}/secret.txt"):
        with pytest.raises(DataError, match="was refused: .*loopback") as err:
            _download(f"{public}/go?to={target}", 10_000, counts_as_public)
        one_line(err)
    assert secret_requests == []
    assert public_requests.count(f"/go?to={base}/secret.txt") == 1


def test_the_connection_goes_to_the_address_that_was_checked(public_server, dns):
    # A name that answers a public address to the check and loopback to any later lookup.
    port, root, requested = public_server
    (root / "book.txt").write_text("A public book.\n", encoding="utf-8")
    dns["rebind.example"] = [str(PUBLIC_IP), "127.0.0.1"]
    body, _ = _download(f"http://rebind.example:{port}/book.txt", 10_000, counts_as_public)
    assert body == b"A public book.\n" and requested == ["/book.txt"]
    assert dns["lookups"] == ["rebind.example"]


@pytest.mark.parametrize("target", ["ftp://127.0.0.1/corpus.txt", "file:///etc/passwd", "gopher://127.0.0.1:70/"])
def test_a_redirect_to_anything_but_http_is_refused(target, public_server, dns):
    port, _, _ = public_server
    dns["public.example"] = [str(PUBLIC_IP)]
    with pytest.raises(DataError, match="not an http\\(s\\) address") as err:
        _download(f"http://public.example:{port}/go?to={target}", 10_000, counts_as_public)
    one_line(err)


def test_redirects_are_capped(public_server, dns):
    port, _, requested = public_server
    dns["public.example"] = [str(PUBLIC_IP)]
    loop = f"http://public.example:{port}/go?to=/go?to=/go?to=/go?to=/go?to=/go?to=/go?to=/book.txt"
    with pytest.raises(DataError, match="redirects more than 5 times"):
        _download(loop, 10_000, counts_as_public)
    assert len(requested) == 6


# ----------------------------------------------------------------------- slow and hostile servers
DEADLINE_S = 1.5
BOUND_S = 15.0  # generous: a shared machine; without the deadline each server below runs for 25 s or more


def dribble(parts: list[bytes], pause: float) -> Callable[[socket.socket], None]:
    def handler(conn: socket.socket) -> None:
        conn.recv(65536)
        for part in parts:
            conn.sendall(part)
            time.sleep(pause)

    return handler


@pytest.mark.parametrize(
    "handler",
    [
        # A body of 100 bytes, one every quarter second.
        dribble([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"] + [b"x"] * 100, 0.25),
        # A response that never ends, without a length: one line of text a quarter second.
        dribble([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"] + [b"line\n"] * 100, 0.25),
        # The status line and headers, one byte at a time.
        dribble([bytes([b]) for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100], 0.25),
        # Headers without end, one every quarter second (fewer than http.client's limit of 100 by the deadline).
        dribble([b"HTTP/1.1 200 OK\r\n"] + [b"X-More: yes\r\n"] * 200, 0.25),
    ],
    ids=["body", "body-without-length", "status-line", "endless-headers"],
)
def test_a_slow_server_is_cut_off_at_the_deadline(handler, monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "FETCH_DEADLINE_S", DEADLINE_S)
    with serve_raw(handler) as port:
        start = time.monotonic()
        with pytest.raises(DataError, match="took longer than 1.5 s") as err:
            load_corpus(f"http://127.0.0.1:{port}/book.txt", cache_dir=tmp_path, allow_local_urls=True)
        assert time.monotonic() - start < BOUND_S
        one_line(err)
    assert not list(tmp_path.iterdir())  # nothing half-read is cached


def endless_headers(conn: socket.socket) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while True:
        conn.sendall(b"X-Filler: " + b"a" * 50 + b"\r\n")


def reply(raw: bytes) -> Callable[[socket.socket], None]:
    def handler(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(raw)

    return handler


@pytest.mark.parametrize(
    "handler, message",
    [
        (endless_headers, "broken HTTP response"),
        (reply(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 200_000 + b"\r\n\r\n"), "broken HTTP response"),
        (reply(b"SSH-2.0-OpenSSH_9.6\r\n"), "broken HTTP response"),
        (reply(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort"), "ended after 5 of its 50 bytes"),
        (reply(b"HTTP/1.1 404 \x1b[31mGone\x1b[0m\x07 " + b"r" * 500 + b"\r\nContent-Length: 0\r\n\r\n"), "HTTP 404"),
        (reply(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n"), "redirects without saying where"),
        (reply(b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n"), "not a valid address"),
        (reply(b""), "broken HTTP response"),
    ],
    ids=["endless-headers", "long-header", "not-http", "short-body", "escape-codes", "no-location", "bad-location",
         "hang-up"],
)  # fmt: skip
def test_whatever_a_server_sends_is_one_line(handler, message, monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "FETCH_DEADLINE_S", 10.0)
    with serve_raw(handler) as port:
        start = time.monotonic()
        with pytest.raises(DataError, match=message) as err:
            load_corpus(f"http://127.0.0.1:{port}/book.txt", cache_dir=tmp_path, allow_local_urls=True)
        assert time.monotonic() - start < BOUND_S
        assert len(one_line(err)) < 600


# ----------------------------------------------------------------------- the command line
@pytest.mark.slow
def test_the_command_line_reaches_local_addresses_only_with_a_flag(http_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMCORE_CACHE_DIR", str(tmp_path / "cache"))
    base, root, requested = http_folder
    (root / "book.txt").write_text("It was a dark and stormy night.\n" * 40, encoding="utf-8")
    out = tmp_path / "tiny.safetensors"
    tiny = ["--n-layer", "1", "--n-head", "1", "--n-embd", "8", "--block-size", "8", "--batch-size", "2",
            "--max-iters", "1", "--eval-iters", "1", "--out", str(out)]  # fmt: skip
    assert main(["train", "--data", f"{base}/book.txt", *tiny]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--allow-local-urls" in err
    assert requested == [] and not out.exists()
    assert main(["train", "--data", f"{base}/book.txt", "--allow-local-urls", *tiny]) == 0
    assert out.exists()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", f"{base}/book.txt"]) == 2
    assert "--allow-local-urls" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--data", f"{base}/book.txt", "--allow-local-urls"]) == 0


# ----------------------------------------------------------------------- where the app listens
def _listening(port: int) -> list[str]:
    """The local addresses (hex, as the kernel lists them) with a socket listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.append(address)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_run_command(port: int) -> list[str]:
    """The command line ``make run PORT=port`` runs to start the server (without its setup step)."""
    plan = subprocess.run(
        ["make", "-n", "-s", "run", f"PORT={port}", f"PYTHON={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return shlex.split(next(line for line in plan.splitlines() if "streamlit run" in line))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the kernel's socket table")
@pytest.mark.parametrize("how", ["make run", "streamlit run app.py"])
def test_the_playground_listens_on_this_machine_only(how):
    port = _free_port()
    if how == "make run":
        if shutil.which("make") is None:
            pytest.skip("needs make")
        command = _make_run_command(port)
    else:
        command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)]
    env = {**os.environ, "STREAMLIT_SERVER_HEADLESS": "true", "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not _listening(port) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # a dual-stack server opens its second socket right after the first
        assert _listening(port) == ["0100007F"]  # 127.0.0.1, and nothing else
    finally:
        proc.terminate()
        proc.wait(30)


# ----------------------------------------------------------------------- names shown as text
HOSTILE_NAME = "ok**bold**[link](javascript:alert(1))<b>x</b>_`code`_.txt"


def literal_text(markdown: str) -> str:
    """What GitHub-flavoured Markdown shows for ``markdown`` when every special character is escaped.

    A backslash before ASCII punctuation shows that character literally; a
    special character left unescaped would be read as markup.
    """
    unescaped = re.sub(r"\\[!-/:-@\[-`{-~]", "", markdown)
    assert not re.search(r"[*_\[\]()<>`~\\|]", unescaped), f"markup left unescaped in {markdown!r}"
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def test_a_corpus_name_shows_literally_in_the_toast_and_in_errors():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.radio[0].set_value("Upload a file").run()
    at.file_uploader[0].set_value((HOSTILE_NAME, b"", "text/plain")).run()
    assert not at.exception and len(at.error) == 1
    assert HOSTILE_NAME in literal_text(at.error[0].value)
    at.file_uploader[0].set_value((HOSTILE_NAME, b"hello world\n" * 50, "text/plain")).run()
    assert not at.exception and not at.error
    assert at.session_state[S.CORPUS].name == HOSTILE_NAME
    assert [literal_text(t.value) for t in at.toast] == [f"Corpus set: {HOSTILE_NAME}"]


# ----------------------------------------------------------------------- https to a checked address
@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """An HTTPS server on 127.0.0.2 with a certificate for public.example, trusted through SSL_CERT_FILE."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=public.example",
         "-addext", "subjectAltName=DNS:public.example"],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    root = tmp_path / "tls"
    root.mkdir()
    (root / "book.txt").write_text("A book over TLS.\n", encoding="utf-8")
    httpd = http.server.ThreadingHTTPServer((str(PUBLIC_IP), 0), functools.partial(_Quiet, directory=str(root)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_https_checks_the_certificate_for_the_name_at_the_checked_address(tls_server, dns):
    dns["public.example"] = [str(PUBLIC_IP)]
    dns["other.example"] = [str(PUBLIC_IP)]
    body, _ = _download(f"https://public.example:{tls_server}/book.txt", 10_000, counts_as_public)
    assert body == b"A book over TLS.\n"
    with pytest.raises(DataError, match="certificate is not valid") as err:
        _download(f"https://other.example:{tls_server}/book.txt", 10_000, counts_as_public)
    one_line(err)
