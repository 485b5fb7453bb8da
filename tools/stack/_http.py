"""A tiny HTTP client for loopback servers this package started.

Every request has a timeout and every body read a byte cap. Requests go
straight to the address in the URL (no proxy from the environment), and only
loopback hosts are accepted, because the stack never talks to anything else.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import StackError

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class Response:
    """A complete HTTP response with lower-cased header names."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str:
        """The value of header ``name`` or an empty string."""
        return self.headers.get(name.lower(), "")


def require_loopback(host: str) -> None:
    """Raise :class:`StackError` unless ``host`` is a loopback name or address."""
    if host in _LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise StackError(f"refusing non-loopback host {host!r}; expected 127.0.0.0/8")


def read_capped(stream: http.client.HTTPResponse, max_bytes: int) -> bytes:
    """Read a whole body, raising :class:`StackError` past ``max_bytes``."""
    body = stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise StackError(f"response body exceeds the cap of {max_bytes} bytes")
    return body


def request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Response:
    """Send one request to a loopback ``http://`` URL and read the answer.

    Raises :class:`StackError` for a non-loopback or non-http URL, a body over
    ``max_bytes``, and (chained) for socket errors and timeouts.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise StackError(f"expected an http:// URL, got {url!r}")
    require_loopback(parts.hostname)
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        conn.request(method, target, body=body, headers=dict(headers or {}))
        answer = conn.getresponse()
        data = b"" if method == "HEAD" else read_capped(answer, max_bytes)
        found = {key.lower(): value for key, value in answer.getheaders()}
        return Response(status=answer.status, headers=found, body=data)
    except (OSError, http.client.HTTPException) as e:
        raise StackError(f"{method} {url} failed: {e}") from e
    finally:
        conn.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection over a unix socket (for the engine's API socket)."""

    def __init__(self, socket_path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self._socket_path = socket_path
        self._timeout_s = timeout_s

    def connect(self) -> None:
        """Open the unix socket instead of a TCP connection."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout_s)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def unix_get(socket_path: str, path: str, *, timeout_s: float, max_bytes: int) -> int:
    """GET ``path`` over a unix socket; return the status, reading a capped body.

    Raises ``OSError`` or ``http.client.HTTPException`` when nothing answers.
    """
    conn = UnixHTTPConnection(socket_path, timeout_s)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        read_capped(answer, max_bytes)
        return answer.status
    finally:
        conn.close()
