"""A loopback HTTP proxy in front of a registry that alters what it serves.

It forwards every GET and HEAD to the upstream registry and, for the chosen
kind of content (manifests or blobs), serves bytes that no longer match the
digest they were asked for, while keeping the upstream's headers, including
``Docker-Content-Digest``. An engine that checks content must refuse it
("manifest verification failed for digest ...").
"""

from __future__ import annotations

import enum
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

from . import _http
from .errors import StackError

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT_S = 30.0
UPSTREAM_MAX_BYTES = 256 * 1024 * 1024
STOP_TIMEOUT_S = 5.0
_FORWARDED_REQUEST_HEADERS = ("accept", "range")
_DROPPED_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection"}
)
_MANIFEST_PATH = re.compile(r"^/v2/.+/manifests/[^/]+$")
_BLOB_PATH = re.compile(r"^/v2/.+/blobs/sha256:[0-9a-f]{64}$")


class Target(enum.Enum):
    """Which content the proxy alters."""

    MANIFESTS = "manifests"
    BLOBS = "blobs"


def alter(target: Target, body: bytes) -> bytes:
    """Bytes that differ from ``body`` but still look plausible.

    A manifest gains a trailing newline (still valid JSON); a blob gets its
    last byte flipped (same size).
    """
    if target is Target.MANIFESTS:
        return body + b"\n"
    if not body:
        return b"\0"
    return body[:-1] + bytes([body[-1] ^ 0xFF])


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, target: Target) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.target = target
        self.tampered = 0
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        """Forward a GET, altering the body of targeted content."""
        self._forward("GET")

    def do_HEAD(self) -> None:
        """Forward a HEAD unchanged."""
        self._forward("HEAD")

    def _targeted(self) -> bool:
        path = urlsplit(self.path).path
        if self.server.target is Target.MANIFESTS:
            return bool(_MANIFEST_PATH.match(path))
        return bool(_BLOB_PATH.match(path))

    def _forward(self, method: str) -> None:
        headers = {
            name: value
            for name in _FORWARDED_REQUEST_HEADERS
            if (value := self.headers.get(name)) is not None
        }
        try:
            answer = _http.request(
                method,
                f"{self.server.upstream}{self.path}",
                headers=headers,
                timeout_s=UPSTREAM_TIMEOUT_S,
                max_bytes=UPSTREAM_MAX_BYTES,
            )
        except StackError as e:
            self.send_error(502, f"upstream failed: {e}")
            return
        body = answer.body
        if method == "GET" and answer.status == 200 and self._targeted():
            body = alter(self.server.target, body)
            with self.server.lock:
                self.server.tampered += 1
            log.debug("served altered %s", self.path)
        self._reply(answer, body)

    def _reply(self, answer: _http.Response, body: bytes) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            if name not in _DROPPED_RESPONSE_HEADERS:
                self.send_header(name, value)
        if self.command == "HEAD":
            length = answer.header("content-length") or "0"
        else:
            length = str(len(body))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Route the server's access log to debug logging."""
        log.debug("tamper proxy: " + format, *args)


class TamperProxy:
    """A running tampering proxy; use as a context manager or call close()."""

    def __init__(self, upstream_url: str, target: Target = Target.MANIFESTS) -> None:
        """Listen on a free 127.0.0.1 port in front of ``upstream_url``."""
        upstream_host = urlsplit(upstream_url).hostname or ""
        _http.require_loopback(upstream_host)
        self._server = _Server(upstream_url.rstrip("/"), target)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
        )
        self._thread.start()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, to use as the registry part of image names."""
        port = self._server.server_address[1]
        return f"127.0.0.1:{port}"

    @property
    def url(self) -> str:
        """Base URL of the proxy."""
        return f"http://{self.host}"

    @property
    def tampered(self) -> int:
        """How many responses were altered so far."""
        with self._server.lock:
            return self._server.tampered

    def close(self) -> None:
        """Stop serving and wait (bounded) for the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> TamperProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
