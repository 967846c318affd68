"""The one downloader: every http(s) download in lmcore goes through ``fetch`` or ``fetch_to_file``.

(The Hugging Face hub client, used by ``import`` for hub ids, is the one exception: it is
that library's own.) The rules, the same for every caller:

- **Addresses.** Public internet addresses only, unless the caller allows local
  ones: every hop's host name is resolved once, each of its addresses is
  checked (loopback, link-local, private, reserved, multicast and unspecified
  ones are refused, IPv4 inside IPv6 included) and the connection goes to that
  very address, so a second lookup cannot point it elsewhere.
- **Redirects** are followed to http(s) only, at most ``MAX_REDIRECTS`` times,
  and each hop passes the address rule again before it is connected.
- **No proxy.** Proxy variables (``http_proxy``, ``HTTPS_PROXY``, ``ALL_PROXY``...)
  are ignored: a proxy would resolve names itself, past the address rule.
- **One deadline** for the whole download, redirects included
  (``FETCH_DEADLINE_S`` unless the caller gives its own); a server silent for
  ``STALL_TIMEOUT_S`` is given up on sooner.
- **A size cap**: a body over ``max_bytes`` is refused, whether or not the
  server announced its length.

Whatever the server or the address does, the only error is a ``DataError``
with one printable line that says what to do.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import os
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from lmcore.errors import DataError

FETCH_DEADLINE_S = 60.0  # the longest a whole download may take, redirects included
STALL_TIMEOUT_S = 30.0  # the longest a server may stay silent
MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 1 << 16

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressCheck = Callable[[IPAddress], bool]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv6 addresses that carry an IPv4 one


# --------------------------------------------------------------------- addresses
def _non_public_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public internet address ("loopback", "private", ...), or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 address itself
            return _non_public_kind(ip.ipv4_mapped)
        nat64 = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF) if ip in _NAT64 else None
        inner = ip.sixtofour or nat64
        if inner is not None and (kind := _non_public_kind(inner)):
            return kind
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, "is_" + kind):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


def is_public_address(ip: IPAddress) -> bool:
    """True for a public internet address: not loopback, link-local, private, reserved, multicast or unspecified."""
    return _non_public_kind(ip) is None


def _any_address(ip: IPAddress) -> bool:
    """Every address, for callers allowed to reach this machine and its network."""
    return True


def _printable(text: object, limit: int = 200) -> str:
    """Text a server or a user chose (an address, a reason) made safe for a one-line message."""
    s = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return s if len(s) <= limit else s[: limit - 1] + "…"


def split_url(url: str) -> urllib.parse.SplitResult:
    """``urlsplit(url)``, with its port read once; DataError (one line) for an address that cannot be parsed.

    ``http://[::1`` (an unclosed IPv6 bracket), a port that is not a number or
    is over 65535, and the like are the user's typing, not a traceback.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsed lazily; a bad port raises here
    except ValueError as e:
        raise DataError(
            f"{_printable(url)} is not a valid address ({_printable(e, 80)}); check it, e.g. https://example.org/book.txt"
        ) from None
    return parts


# --------------------------------------------------------------------- connections
class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to addresses already checked: no second DNS lookup, the Host header still names ``host``.

    No proxy: http.client itself never reads proxy variables, and no tunnel is set.
    """

    def __init__(self, host: str, port: int, ips: list[IPAddress], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.ips = ips
        self.opened: socket.socket | None = None  # kept after http.client lets go of it, for the deadline

    def _open(self) -> socket.socket:
        err: OSError | None = None
        for ip in self.ips:
            try:
                return socket.create_connection((str(ip), self.port), self.timeout)
            except OSError as e:
                err = e
        assert err is not None
        raise err

    def connect(self) -> None:
        self.sock = self.opened = self._open()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS to addresses already checked; the certificate must still be valid for ``host`` (SNI too)."""

    default_port = http.client.HTTPS_PORT

    def connect(self) -> None:
        self.sock = self.opened = ssl.create_default_context().wrap_socket(self._open(), server_hostname=self.host)


def _cut(conn: _PinnedHTTPConnection, fired: threading.Event) -> None:
    """End a fetch that ran past its deadline: the blocked read returns at once."""
    fired.set()
    if conn.opened is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(conn.opened, socket.SHUT_RDWR)  # the plain socket's call, also under TLS


def _resolve(url: str, host: str, port: int, address_ok: AddressCheck) -> list[IPAddress]:
    """The addresses ``host`` resolves to, all of them allowed by ``address_ok``, else DataError."""
    ips: list[IPAddress] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in ips:
            ips.append(ip)
    for ip in ips:
        if not address_ok(ip):
            kind = _non_public_kind(ip) or "refused"
            where = f"{ip} is" if host == str(ip) else f"{_printable(host)} is at {ip},"
            raise DataError(
                f"{_printable(url)} was refused: {where} {'an' if kind[0] in 'aeiou' else 'a'} {kind} address, "
                "not a public one; only public addresses are fetched (allow local ones with --allow-local-urls "
                "on the command line, or LMCORE_ALLOW_LOCAL_URLS=1 for the app)"
            )
    return ips


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def _too_big(url: str, size: int | None, max_bytes: int) -> DataError:
    what = f"is {_size(size)}," if size is not None else "is"
    return DataError(
        f"{_printable(url)} {what} over the {_size(max_bytes)} limit; use a smaller file, "
        "or download it yourself and give its path"
    )


def _get(
    url: str, sink: BinaryIO, max_bytes: int, address_ok: AddressCheck, deadline: float
) -> tuple[str | None, bool]:
    """One request: the body written to ``sink`` and (None, local), or for a redirect (next URL, local)."""
    parts = split_url(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise DataError(f"{_printable(url)} is not an http(s) address; only web addresses are downloaded")
    try:
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except UnicodeError:
        raise DataError(f"{_printable(url)} names a server whose name is not valid; check the address") from None
    if not host:
        raise DataError(f"{_printable(url)} names no server; give a full address like https://example.org/book.txt")
    https = scheme == "https"
    port = parts.port or (http.client.HTTPS_PORT if https else http.client.HTTP_PORT)
    ips = _resolve(url, host, port, address_ok)
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    cls = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    conn = cls(host, port, ips, timeout=min(STALL_TIMEOUT_S, left))
    fired = threading.Event()
    timer = threading.Timer(left, _cut, (conn, fired))
    timer.daemon = True
    timer.start()
    try:
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        conn.request("GET", target, headers={"User-Agent": "lmcore", "Accept": "text/plain, */*"})
        resp = conn.getresponse()
        local = not all(map(is_public_address, ips))
        if resp.status in _REDIRECTS:
            location = resp.getheader("Location")
            if not location:
                raise DataError(
                    f"{_printable(url)} redirects without saying where (HTTP {resp.status}); check the address"
                )
            try:
                target = urllib.parse.urljoin(url, location)
                scheme = urllib.parse.urlsplit(target).scheme.lower()
            except ValueError:
                raise DataError(
                    f"{_printable(url)} redirects to {_printable(location)}, which is not a valid address"
                ) from None
            if scheme not in ("http", "https"):
                raise DataError(
                    f"{_printable(url)} redirects to {_printable(target)}, which is not an http(s) address; "
                    "only web addresses are followed"
                )
            return target, local
        if resp.status != 200:
            raise DataError(
                f"downloading {_printable(url)} failed with HTTP {resp.status} {_printable(resp.reason, 80)}; "
                "check the address"
            )
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise _too_big(url, int(length), max_bytes)
        got = 0
        while chunk := resp.read(min(_CHUNK, max_bytes + 1 - got)):
            got += len(chunk)
            if got > max_bytes:
                raise _too_big(url, None, max_bytes)
            sink.write(chunk)
        if length and length.isdigit() and got < int(length) and not fired.is_set():
            raise DataError(f"{_printable(url)} ended after {got:,} of its {int(length):,} bytes; try again later")
    except (OSError, http.client.HTTPException):
        if fired.is_set():
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
        conn.close()
    if fired.is_set():  # a body read until the cut is cut short, not complete
        raise TimeoutError
    return None, local


def download(
    url: str,
    sink: BinaryIO,
    max_bytes: int,
    address_ok: AddressCheck = is_public_address,
    deadline_s: float | None = None,
) -> bool:
    """Write the body of the http(s) ``url`` to ``sink``; returns whether a local address served any of it.

    At most ``max_bytes``; every hop's addresses must pass ``address_ok``;
    the whole fetch ends after ``deadline_s`` (default ``FETCH_DEADLINE_S``).
    What ``sink`` holds after a DataError is to be thrown away.
    """
    deadline_s = FETCH_DEADLINE_S if deadline_s is None else deadline_s
    deadline = time.monotonic() + deadline_s
    current, local = url, False
    try:
        for _ in range(MAX_REDIRECTS + 1):
            following, hop_local = _get(current, sink, max_bytes, address_ok, deadline)
            local = local or hop_local
            if following is None:
                return local
            current = following
        raise DataError(f"{_printable(url)} redirects more than {MAX_REDIRECTS} times; check the address")
    except ssl.SSLCertVerificationError as e:
        raise DataError(
            f"cannot download {_printable(current)}: its certificate is not valid ({_printable(e.verify_message)}); "
            "check the address"
        ) from None
    except TimeoutError:
        raise DataError(
            f"downloading {_printable(url)} took longer than {deadline_s:g} s or stalled; "
            "try again later, or download the file yourself and load it from disk"
        ) from None
    except http.client.HTTPException as e:
        raise DataError(
            f"the server at {_printable(current)} sent a broken HTTP response "
            f"({type(e).__name__}: {_printable(e, 80)}); check the address"
        ) from None
    except OSError as e:
        reason = e.strerror or e  # socket.gaierror and ssl errors say it best
        raise DataError(
            f"cannot download {_printable(current)} ({_printable(reason, 120)}); check the address and the network "
            "connection, or download the file yourself and load it from disk"
        ) from None
    except ValueError as e:  # a bad port, host name or URL
        raise DataError(f"{_printable(current)} is not a URL that can be downloaded ({_printable(e, 120)})") from None


def fetch(
    url: str, max_bytes: int, allow_local: bool = False, deadline_s: float | None = None
) -> tuple[bytes, bool]:
    """The body of the http(s) ``url`` in memory, and whether a local address served any of it.

    ``allow_local`` lets the download reach this machine and its local network.
    """
    buf = io.BytesIO()
    local = download(url, buf, max_bytes, _any_address if allow_local else is_public_address, deadline_s)
    return buf.getvalue(), local


def fetch_to_file(
    url: str,
    directory: str | os.PathLike,
    max_bytes: int,
    allow_local: bool = False,
    deadline_s: float | None = None,
    prefix: str = ".download-",
) -> Path:
    """Stream the http(s) ``url`` into a new temporary file in ``directory``; returns its path.

    For downloads larger than memory. The file is removed when the download fails.
    """
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as f:
            download(url, f, max_bytes, _any_address if allow_local else is_public_address, deadline_s)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)
