"""Where is one branch? A single git protocol-v2 ``ls-refs`` request over HTTP.

This is the whole of a no-op poll, so it is written against the socket API:
``http.client`` alone costs about 18 ms to import, more than the request. The
request names the branch with ``ref-prefix``, so the answer is one line
whatever else the server holds. Bounded: one connection, a timeout on every
socket operation, a capped answer, no redirects (a redirect could carry the
token elsewhere).
"""

from __future__ import annotations

import base64
import re
import socket
import time
from urllib.parse import urlsplit

MAX_ANSWER_BYTES = 64 * 1024
_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: .*)?")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")
_PKT_SIZE = re.compile(rb"[0-9a-f]{4}")
_PRINTABLE = re.compile(r"[^\x20-\x7e]")


class LsRefsError(Exception):
    """The query failed; ``kind`` is unreachable, auth, protocol or too-large."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def auth_header(token: str, *, username: str, scheme: str) -> str:
    """The Authorization header value for a token."""
    if scheme == "bearer":
        return f"Bearer {token}"
    pair = f"{username}:{token}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _pkt(line: str) -> bytes:
    data = line.encode()
    return b"%04x" % (len(data) + 4) + data


def branch_tip(
    url: str,
    branch: str,
    *,
    authorization: str | None,
    timeout: float,
    ca_bundle: str | None = None,
) -> str | None:
    """The commit at ``refs/heads/<branch>``, or None when there is no such branch.

    Raises LsRefsError; its message never contains the authorization value.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    ref = f"refs/heads/{branch}"
    body = _pkt("command=ls-refs\n") + b"0001" + _pkt(f"ref-prefix {ref}\n") + b"0000"
    head = [
        f"POST {parts.path.rstrip('/')}/git-upload-pack HTTP/1.1",
        f"Host: {parts.netloc.rpartition('@')[2]}",
        "User-Agent: git/centops-agent",
        "Content-Type: application/x-git-upload-pack-request",
        "Accept: application/x-git-upload-pack-result",
        "Git-Protocol: version=2",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if authorization:
        head.append(f"Authorization: {authorization}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    raw = _exchange(host, port, request, timeout, secure, ca_bundle)
    try:
        status, headers, payload = _parse_response(raw)
    except (ValueError, IndexError) as exc:
        raise LsRefsError("protocol", "malformed HTTP answer") from exc
    if status in (401, 403):
        raise LsRefsError(
            "auth", f"the server rejected the credentials (HTTP {status})"
        )
    if status != 200:
        raise LsRefsError("unreachable", f"the server answered HTTP {status}")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        payload = _unchunk(payload)
    return _find(payload, ref)


def _exchange(
    host: str,
    port: int,
    request: bytes,
    timeout: float,
    secure: bool,
    ca_bundle: str | None,
) -> bytes:
    # One deadline for the whole exchange: a server dripping a byte at a
    # time cannot hold the agent (and its lock) longer than ``timeout``.
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except (OSError, UnicodeError) as exc:
        raise LsRefsError("unreachable", f"cannot connect: {exc}") from exc
    try:
        if secure:
            import ssl

            context = ssl.create_default_context(cafile=ca_bundle)
            sock = context.wrap_socket(sock, server_hostname=host)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        chunks: list[bytes] = []
        received = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LsRefsError("unreachable", f"no complete answer in {timeout} s")
            sock.settimeout(left)
            block = sock.recv(16384)
            if not block:
                break
            received += len(block)
            if received > MAX_ANSWER_BYTES:
                raise LsRefsError("too-large", f"answer over {MAX_ANSWER_BYTES} bytes")
            chunks.append(block)
        return b"".join(chunks)
    except OSError as exc:
        raise LsRefsError("unreachable", f"{type(exc).__name__}: {exc}") from exc
    finally:
        sock.close()


def _parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, payload = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = _STATUS.fullmatch(lines[0])
    if not sep or status is None:
        raise LsRefsError("protocol", "malformed HTTP answer")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status[1]), headers, payload


def _unchunk(payload: bytes) -> bytes:
    out = bytearray()
    offset = 0
    while offset < len(payload):  # every pass moves offset forward
        end = payload.find(b"\r\n", offset)
        size_text = payload[offset:end].split(b";")[0].strip()
        if end < 0 or not _CHUNK_SIZE.fullmatch(size_text):
            raise LsRefsError("protocol", "malformed chunked answer")
        size = int(size_text, 16)
        if size == 0:
            break
        out += payload[end + 2 : end + 2 + size]
        offset = end + 2 + size + 2
    return bytes(out)


def _find(payload: bytes, ref: str) -> str | None:
    offset = 0
    while offset + 4 <= len(payload):
        head = payload[offset : offset + 4]
        if not _PKT_SIZE.fullmatch(head):
            raise LsRefsError("protocol", "malformed pkt-line")
        size = int(head, 16)
        if size == 0:
            break
        if size < 4:  # delimiter packets
            offset += 4
            continue
        line = payload[offset + 4 : offset + size].decode("utf-8", "replace").strip()
        offset += size
        if line.startswith("ERR "):
            shown = _PRINTABLE.sub("?", line[4:200])  # no forged log lines
            raise LsRefsError("protocol", f"server error: {shown}")
        oid, _, rest = line.partition(" ")
        hexadecimal = all(c in "0123456789abcdef" for c in oid)
        if rest.split(" ", 1)[0] == ref and len(oid) in (40, 64) and hexadecimal:
            return oid
    return None
