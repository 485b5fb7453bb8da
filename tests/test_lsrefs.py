"""The no-op poll's one request, against hostile loopback servers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from centops.agent.lsrefs import LsRefsError, branch_tip

OID = "a" * 40


def pkt(line: str) -> bytes:
    return b"%04x" % (len(line) + 4) + line.encode()


GOOD_BODY = pkt(f"{OID} refs/heads/main\n") + b"0000"


def answer(body: bytes, *, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/x-git-upload-pack-result"
        b"\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def chunked(raw_chunks: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + raw_chunks


class RawServer:
    """Accepts one connection at a time and runs ``behave(conn)``."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.behave = behave
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/fleet.git"

    def loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                with contextlib.suppress(OSError):
                    self.behave(conn)

    def close(self) -> None:
        self.sock.close()


Serve = Callable[[Callable[[socket.socket], None]], RawServer]


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    started: list[RawServer] = []

    def start(behave: Callable[[socket.socket], None]) -> RawServer:
        server = RawServer(behave)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def sends(data: bytes) -> Callable[[socket.socket], None]:
    return lambda conn: conn.sendall(data)


def test_the_branch_tip_is_read_from_a_plain_and_a_chunked_answer(serve: Serve) -> None:
    plain = serve(sends(answer(GOOD_BODY)))
    assert branch_tip(plain.url, "main", authorization=None, timeout=5) == OID
    body = GOOD_BODY
    wrapped = chunked(b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    chunky = serve(sends(wrapped))
    assert branch_tip(chunky.url, "main", authorization=None, timeout=5) == OID


def test_a_missing_branch_is_none(serve: Serve) -> None:
    server = serve(sends(answer(b"0000")))
    assert branch_tip(server.url, "main", authorization=None, timeout=5) is None


HOSTILE = [
    ("negative chunk size", chunked(b"-6\r\nxxxx\r\n0\r\n\r\n"), "protocol"),
    ("non-hex chunk size", chunked(b"zz\r\nxx\r\n0\r\n\r\n"), "protocol"),
    ("unicode digits in status", "HTTP/1.1 2²² OK\r\n\r\n".encode(), "protocol"),
    ("no status line", b"garbage\r\n\r\n", "protocol"),
    ("no header end", b"HTTP/1.1 200 OK\r\nX: y", "protocol"),
    ("bad pkt-line length", answer(b"zzzz" + GOOD_BODY), "protocol"),
    ("signed pkt-line length", answer(b"-006" + GOOD_BODY), "protocol"),
    ("401", answer(b"", status=b"401 Unauthorized"), "auth"),
    (
        "redirect",
        answer(b"", status=b"302 Found", extra=b"Location: http://x/\r\n"),
        "unreachable",
    ),
    ("500", answer(b"", status=b"500 Oops"), "unreachable"),
    ("too large", answer(b"0" * 70_000), "too-large"),
]


@pytest.mark.parametrize(("case", "raw", "kind"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_answers_are_refused_cleanly(
    serve, case: str, raw: bytes, kind: str
) -> None:
    server = serve(sends(raw))
    with pytest.raises(LsRefsError) as caught:
        branch_tip(server.url, "main", authorization="Basic c2VjcmV0", timeout=5)
    assert caught.value.kind == kind
    assert "c2VjcmV0" not in str(caught.value)


def test_server_error_text_cannot_forge_log_lines(serve: Serve) -> None:
    body = pkt("ERR bad\r\n\x1b[31mINFO forged line\n") + b"0000"
    server = serve(sends(answer(body)))
    with pytest.raises(LsRefsError) as caught:
        branch_tip(server.url, "main", authorization=None, timeout=5)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


def test_a_dripping_server_cannot_hold_the_poll_past_its_timeout(serve: Serve) -> None:
    def drip(conn: socket.socket) -> None:
        for byte in answer(GOOD_BODY):
            conn.sendall(bytes([byte]))
            time.sleep(0.2)

    server = serve(drip)
    started = time.monotonic()
    with pytest.raises(LsRefsError) as caught:
        branch_tip(server.url, "main", authorization=None, timeout=1)
    assert caught.value.kind == "unreachable"
    assert time.monotonic() - started < 5
