"""A hard deadline for one HTTP exchange.

Socket timeouts bound each read, not the exchange: a server that drips a byte
just inside the timeout could otherwise hold a sync (and its state lock) for
hours. :func:`hard_deadline` shuts the connection's socket down when the whole
exchange has taken too long, which makes the blocked read fail at once.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Iterator


def connected_socket(connection: http.client.HTTPConnection) -> socket.socket:
    """Connect now and return the socket, which the response keeps using even
    after http.client drops its own reference (``Connection: close``)."""
    connection.connect()
    sock = connection.sock
    if sock is None:  # pragma: no cover - connect() always sets it
        raise OSError("no socket after connect")
    return sock


@contextlib.contextmanager
def hard_deadline(sock: socket.socket, seconds: float) -> Iterator[threading.Event]:
    """Within the block, ``sock`` is shut down after ``seconds``; the yielded
    event tells whether that happened (a cut socket reads as end of file)."""
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
