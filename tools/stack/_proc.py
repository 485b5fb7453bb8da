"""Process helpers: free ports, detached daemons, bounded waits, stop by PID."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .errors import StartError

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1
LOG_TAIL_BYTES = 600
_PROXY_VARS = frozenset(
    {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}
)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    NOTE: another process may take it before the caller binds it; callers
    that start a server on it retry on failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without proxy settings, plus ``extra``.

    Daemons of the stack only talk to loopback servers; a proxy from the
    environment must never receive their traffic.
    """
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env.update(extra or {})
    return env


def spawn_detached(
    argv: Sequence[str], *, log_path: Path, env: Mapping[str, str]
) -> int:
    """Start ``argv`` in its own session with output to ``log_path``; its PID.

    Its own session (and so process group) lets it outlive the caller's
    terminal and lets :func:`stop_pid` clean up its children.
    """
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    log.debug("started %s as PID %s", argv[0], proc.pid)
    return proc.pid


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie; reaps it if it is ours."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the command name, which is in parentheses.
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def wait_until(
    ready: Callable[[], bool], *, timeout_s: float, what: str, pid: int | None = None
) -> None:
    """Poll ``ready`` until it is true, at most ``timeout_s`` seconds.

    Raises :class:`StartError` on timeout, or at once when ``pid`` is given
    and that process has exited.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if pid is not None and not is_running(pid):
            raise StartError(f"{what}: process {pid} exited before it was ready")
        time.sleep(POLL_INTERVAL_S)
    raise StartError(f"{what}: not ready after {timeout_s:.0f} s")


def wait_exited(pid: int, timeout_s: float) -> bool:
    """Wait at most ``timeout_s`` for ``pid`` to end; True if it did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(pid):
            return True
        time.sleep(POLL_INTERVAL_S)
    return not is_running(pid)


def stop_pid(pid: int, *, timeout_s: float, what: str) -> bool:
    """SIGTERM ``pid`` and wait; SIGKILL its process group if it lingers.

    Only for processes this package started with :func:`spawn_detached`, whose
    process group is their own. True if it stopped gracefully.
    """
    if not is_running(pid):
        return True
    os.kill(pid, signal.SIGTERM)
    if wait_exited(pid, timeout_s):
        log.debug("%s (PID %s) stopped", what, pid)
        return True
    log.warning("%s (PID %s) ignored SIGTERM for %.0f s; killing", what, pid, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    wait_exited(pid, timeout_s)
    return False


def log_tail(path: Path, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last ``max_bytes`` of a daemon log as text, for error messages."""
    try:
        with path.open("rb") as log_file:
            log_file.seek(0, os.SEEK_END)
            size = log_file.tell()
            log_file.seek(max(0, size - max_bytes))
            return log_file.read(max_bytes).decode(errors="replace").strip()
    except OSError as e:
        return f"(no log: {e})"
