"""Bounded, verified downloads of scripts and files.

A download stops at the size the manifest declared (a server that sends more
is refused, so "endless data" costs at most ``size + 1`` bytes), has a timeout
on every socket operation, follows at most a few redirects and only to URLs
the manifest rules would accept, and is checked against the pinned sha256
before anyone may use it. Content lands in a temp file next to its final name
and is renamed only once verified; a kill at any point leaves no file that
passes for verified.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urljoin, urlsplit

from .errors import RemoteContentError, TransportError
from .installers.base import Progress, no_progress
from .manifest import url_problem
from .netutil import connected_socket, hard_deadline

if TYPE_CHECKING:
    from .config import AgentConfig

CHUNK = 64 * 1024
MAX_REDIRECTS = 3
# A download must average at least this rate, on top of the per-read
# timeout, so a server dripping bytes cannot hold a sync for hours.
MIN_BYTES_PER_SECOND = 32 * 1024
HEADER_DEADLINE_FACTOR = 3  # status line and headers: a few read timeouts


@dataclass(frozen=True)
class DownloadOptions:
    timeout: float = 60.0
    ca_bundle: Path | None = None
    allow_insecure_http: bool = False

    @classmethod
    def for_config(cls, config: AgentConfig) -> DownloadOptions:
        return cls(
            timeout=float(config.download_timeout_seconds),
            ca_bundle=config.download_ca_bundle,
            allow_insecure_http=config.insecure_allow_http_loopback,
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_verified(
    url: str,
    *,
    dest: Path,
    size: int,
    sha256: str,
    options: DownloadOptions,
    progress: Progress = no_progress,
    label: str = "",
) -> Path:
    """Download ``url`` to ``dest`` if ``dest`` is not already the pinned bytes.

    Raises RemoteContentError (size or hash mismatch, refused redirect) or
    TransportError (connection, timeout, HTTP status).
    """
    if dest.exists() and sha256_of(dest) == sha256:
        progress(label, size, size)
        return dest  # a cached copy is re-hashed, never trusted as is
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(".dl-*.part"):  # left by a killed agent
        stale.unlink(missing_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=".dl-", suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _stream(
                url, out, size=size, options=options, progress=progress, label=label
            )
            out.flush()
            os.fsync(out.fileno())
        if digest != sha256:
            raise RemoteContentError(
                f"{url}: sha256 is {digest}, the manifest pins {sha256}",
                reason="hash-mismatch",
                hint="the server delivered other bytes than were signed; "
                "nothing was installed",
            )
        os.replace(temp, dest)
    finally:
        temp.unlink(missing_ok=True)
    return dest


def _stream(
    url: str,
    out: BinaryIO,
    *,
    size: int,
    options: DownloadOptions,
    progress: Progress,
    label: str,
) -> str:
    response, conn, sock = _open(url, options)
    allowed = options.timeout + size / MIN_BYTES_PER_SECOND
    digest = hashlib.sha256()
    received = 0
    try:
        with hard_deadline(sock, allowed) as cut:
            declared = response.getheader("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > size:
                raise RemoteContentError(
                    f"{url}: server announces {declared} bytes, the manifest "
                    f"declares {size}",
                    reason="size-mismatch",
                )
            while block := response.read1(min(CHUNK, size + 1 - received)):
                received += len(block)
                if received > size:
                    raise RemoteContentError(
                        f"{url}: more than the declared {size} bytes; stopped reading",
                        reason="size-mismatch",
                    )
                digest.update(block)
                out.write(block)
                progress(label, received, size)
        if cut.is_set():  # the cut socket reads as end of file
            raise _too_slow(url)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if cut.is_set():
            raise _too_slow(url) from exc
        raise TransportError(
            f"{url}: download interrupted: {type(exc).__name__}: {exc}",
            reason="download-failed",
        ) from exc
    finally:
        conn.close()
    if received != size:
        raise RemoteContentError(
            f"{url}: received {received} bytes, the manifest declares {size}",
            reason="size-mismatch",
        )
    return digest.hexdigest()


def _too_slow(url: str) -> TransportError:
    return TransportError(
        f"{url}: slower than {MIN_BYTES_PER_SECOND} bytes/s on average; gave up",
        reason="download-too-slow",
    )


def _open(
    url: str, options: DownloadOptions
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, socket.socket]:
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        problem = url_problem(current, allow_insecure_http=options.allow_insecure_http)
        if problem:
            raise RemoteContentError(
                f"refusing to download: {problem}", reason="url-refused"
            )
        conn = _connection(current, options)
        parts = urlsplit(current)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            sock = connected_socket(conn)
            with hard_deadline(sock, HEADER_DEADLINE_FACTOR * options.timeout):
                conn.request("GET", target, headers={"User-Agent": "centops-agent"})
                response = conn.getresponse()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError covers UnicodeError: a host or path http.client
            # cannot encode (url_problem refuses those before, but a
            # redirect is checked by the same rule and this is the backstop).
            conn.close()
            raise TransportError(
                f"{current}: {type(exc).__name__}: {exc}",
                reason="download-failed",
                hint="the agent retries on the next poll",
            ) from exc
        if response.status in (301, 302, 303, 307, 308):
            location = response.getheader("Location") or ""
            conn.close()
            try:
                current = urljoin(current, location)
            except ValueError as exc:
                raise RemoteContentError(
                    f"{url}: unusable redirect", reason="url-refused"
                ) from exc
            continue
        if response.status != 200:
            conn.close()
            raise TransportError(
                f"{current}: HTTP {response.status}", reason="download-failed"
            )
        return response, conn, sock
    raise RemoteContentError(f"{url}: too many redirects", reason="url-refused")


def _connection(url: str, options: DownloadOptions) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https":
        import ssl

        context = ssl.create_default_context(
            cafile=str(options.ca_bundle) if options.ca_bundle else None
        )
        return http.client.HTTPSConnection(
            host, parts.port, timeout=options.timeout, context=context
        )
    return http.client.HTTPConnection(host, parts.port, timeout=options.timeout)
