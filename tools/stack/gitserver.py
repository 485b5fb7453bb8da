"""Real git servers on loopback for tests, the demo and benchmarks.

Three pieces live here:

* `SmartHttpGitServer` serves a directory of bare repositories over git's smart
  HTTP protocol: a small threaded HTTP server on 127.0.0.1 that checks a bearer
  token (or a basic-auth password) and then hands the request to
  `git http-backend`, a CGI program, streaming bodies both ways. It runs in a
  thread of the calling process, or as its own process through
  `python -m centops.tools.stack.gitserver http ...` (see `spawn_http_server`).
* `GitDaemon` runs `git daemon` on an ephemeral loopback port.
* `init_bare` and `WorkRepo` build test repositories.

Clients pass the token through git's environment configuration
(`git_auth_env`), so it never shows in process arguments or `.git/config`; the
server never logs request headers and never hands the token to the CGI.

NOTE: these servers are for loopback tests and benchmarks. They speak plain
HTTP, and `GitDaemon` accepts anonymous pushes; neither is a production server.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, Any, Final, Literal, Self
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

LOOPBACK: Final = "127.0.0.1"
DEFAULT_REALM: Final = "centops-git"
DEFAULT_BRANCH: Final = "main"

MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024
MAX_CGI_HEADER_BYTES: Final = 64 * 1024
MAX_CGI_HEADERS: Final = 64
MAX_CHUNK_LINE_BYTES: Final = 1024
MAX_STDERR_LOG_BYTES: Final = 16 * 1024
MAX_GIT_PROTOCOL_CHARS: Final = 256
MAX_EXTRA_REFS: Final = 1_000_000
IO_CHUNK_BYTES: Final = 64 * 1024

CGI_TIMEOUT_S: Final = 120.0
SOCKET_TIMEOUT_S: Final = 60.0
START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 5.0
GIT_COMMAND_TIMEOUT_S: Final = 120.0
WATCHDOG_INTERVAL_S: Final = 0.5
PORT_ATTEMPTS: Final = 5

# Response headers that belong to one hop; the CGI must not choose them.
_HOP_BY_HOP: Final = frozenset({"connection", "transfer-encoding", "keep-alive"})
# What a Git-Protocol header may hold ("version=2", "version=2:object-format=...").
_GIT_PROTOCOL_RE: Final = re.compile(r"^[A-Za-z0-9=:._-]+$")
# The only variables the CGI inherits from the server's own environment: the
# server may have been started from a shell holding client credentials.
_INHERITED_ENV: Final = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
# Variables that would redirect a git command to another repository or config.
_GIT_REDIRECTING_ENV: Final = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_NAMESPACE",
    "GIT_CEILING_DIRECTORIES",
)


class GitServerError(Exception):
    """A test git server or a test repository could not be set up or used."""


# --------------------------------------------------------------------------- #
# Environment and git helpers
# --------------------------------------------------------------------------- #


def isolated_git_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return an environment for git commands that ignores user and system config.

    Variables that point git at another repository, and any `GIT_CONFIG_*`
    entries, are dropped; prompts are disabled so a refused credential fails
    fast instead of waiting on a terminal.
    """
    source = dict(os.environ if base is None else base)
    env = {
        key: value
        for key, value in source.items()
        if key not in _GIT_REDIRECTING_ENV and not key.startswith("GIT_CONFIG_")
    }
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="",
        SSH_ASKPASS="",
        GIT_AUTHOR_NAME="CentOps Test",
        GIT_AUTHOR_EMAIL="test@centops.invalid",
        GIT_COMMITTER_NAME="CentOps Test",
        GIT_COMMITTER_EMAIL="test@centops.invalid",
    )
    return env


def git_auth_env(
    token: str,
    *,
    scheme: Literal["bearer", "basic"] = "bearer",
    user: str = "centops",
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Return `base` plus git config entries that send `token` on every request.

    The header travels as `GIT_CONFIG_KEY_n=http.extraHeader`, appended after
    any entries `base` already holds, so the token stays out of process
    arguments and `.git/config`. `base` defaults to an empty mapping: merge the
    result into the environment you run git with.

    Raises:
        ValueError: the token or user is empty or holds a line break.
    """
    _check_header_safe("token", token)
    _check_header_safe("user", user)
    if scheme == "bearer":
        header = f"Authorization: Bearer {token}"
    else:
        pair = base64.b64encode(f"{user}:{token}".encode()).decode("ascii")
        header = f"Authorization: Basic {pair}"
    env = dict(base or {})
    index = int(env.get("GIT_CONFIG_COUNT", "0") or "0")
    env[f"GIT_CONFIG_KEY_{index}"] = "http.extraHeader"
    env[f"GIT_CONFIG_VALUE_{index}"] = header
    env["GIT_CONFIG_COUNT"] = str(index + 1)
    return env


def _check_header_safe(what: str, value: str) -> None:
    """Refuse values that are empty or could split an HTTP header."""
    if not value or any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"{what} must be non-empty and hold no line breaks")


def run_git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    timeout_s: float = GIT_COMMAND_TIMEOUT_S,
) -> str:
    """Run `git *args` and return its standard output as text.

    Raises:
        GitServerError: git exited non-zero or ran past `timeout_s`.
    """
    command = ["git", *args]
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            env=dict(env) if env is not None else isolated_git_env(),
            input=input_bytes,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise GitServerError(f"git {args[0]} ran past {timeout_s}s") from e
    if done.returncode != 0:
        stderr = done.stderr.decode("utf-8", "replace").strip()
        raise GitServerError(
            f"git {' '.join(args[:2])} exited {done.returncode}: {stderr}"
        )
    return done.stdout.decode("utf-8", "replace")


def _git_program(name: str) -> list[str]:
    """Return the argv prefix that runs git's helper `name` without a wrapper.

    `git daemon` would run `git-daemon` as a child of the `git` process; calling
    the helper directly saves a process per request and makes the PID we hold
    the one that serves.
    """
    try:
        exec_path = run_git(["--exec-path"], timeout_s=START_TIMEOUT_S).strip()
    except GitServerError:
        return ["git", name]
    helper = Path(exec_path) / f"git-{name}"
    return [str(helper)] if os.access(helper, os.X_OK) else ["git", name]


def _free_loopback_port() -> int:
    """Return a loopback port that was free a moment ago (the caller may race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_accepting(
    port: int, proc: subprocess.Popen[bytes], timeout_s: float
) -> bool:
    """Return True once `port` accepts on loopback; False if `proc` exits first.

    Raises:
        GitServerError: neither happened within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return True
        time.sleep(0.02)
    raise GitServerError(f"nothing accepted on {LOOPBACK}:{port} in {timeout_s}s")


def stop_pid(pid: int, *, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop process `pid`: SIGTERM, wait up to `timeout_s`, then SIGKILL.

    Reaps the process when it is a child of this one. Returns quietly if the
    process is already gone.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, timeout_s):
        return
    logger.warning("pid %s ignored SIGTERM for %ss; killing it", pid, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_gone(pid, timeout_s)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    """Return True once `pid` has exited (reaping it if it is our child)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
            if reaped == pid:
                return True
        except ChildProcessError:
            # Not our child: we can only watch whether it still exists.
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.02)
    return False


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- #
# Statistics
# --------------------------------------------------------------------------- #


@dataclass
class ServerStats:
    """Thread-safe counters of what a `SmartHttpGitServer` handled.

    Bytes are counted on the wire: request and response lines, headers and
    (chunk-framed) bodies.
    """

    requests: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    protocol_v2_requests: int = 0
    gzip_requests: int = 0
    chunked_requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def add_bytes(self, *, received: int = 0, sent: int = 0) -> None:
        """Add wire bytes in either direction."""
        with self._lock:
            self.bytes_received += received
            self.bytes_sent += sent

    def record_request(
        self, status: int, *, v2: bool, gzip: bool, chunked: bool
    ) -> None:
        """Count one finished request and its status code."""
        with self._lock:
            self.requests += 1
            self.by_status[status] = self.by_status.get(status, 0) + 1
            self.protocol_v2_requests += int(v2)
            self.gzip_requests += int(gzip)
            self.chunked_requests += int(chunked)

    def snapshot(self) -> dict[str, Any]:
        """Return a JSON-ready copy of the counters."""
        with self._lock:
            return {
                "requests": self.requests,
                "bytes_received": self.bytes_received,
                "bytes_sent": self.bytes_sent,
                "protocol_v2_requests": self.protocol_v2_requests,
                "gzip_requests": self.gzip_requests,
                "chunked_requests": self.chunked_requests,
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            }

    def reset(self) -> None:
        """Zero every counter (between benchmark phases)."""
        with self._lock:
            self.requests = self.bytes_received = self.bytes_sent = 0
            self.protocol_v2_requests = self.gzip_requests = 0
            self.chunked_requests = 0
            self.by_status = {}


class _CountingReader(io.BufferedIOBase):
    """Wraps a connection's read side and counts the bytes handed out."""

    def __init__(self, inner: io.BufferedIOBase, stats: ServerStats) -> None:
        super().__init__()
        self._inner = inner
        self._stats = stats

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._count(self._inner.read(size))

    def read1(self, size: int = -1) -> bytes:
        return self._count(self._inner.read1(size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._count(self._inner.readline(size))

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # flushes through self.flush() first
        finally:
            self._inner.close()

    def _count(self, data: bytes) -> bytes:
        self._stats.add_bytes(received=len(data))
        return data


class _CountingWriter(io.BufferedIOBase):
    """Wraps a connection's write side and counts the bytes written."""

    def __init__(self, inner: io.BufferedIOBase, stats: ServerStats) -> None:
        super().__init__()
        self._inner = inner
        self._stats = stats

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written = self._inner.write(data)
        self._stats.add_bytes(sent=len(data))
        return written

    def flush(self) -> None:
        self._inner.flush()

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # flushes through self.flush() first
        finally:
            self._inner.close()


# --------------------------------------------------------------------------- #
# Smart HTTP server
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class HttpServerConfig:
    """What a `SmartHttpGitServer` serves and how it bounds each request."""

    root: Path
    token: str = field(repr=False)
    port: int = 0
    realm: str = DEFAULT_REALM
    max_request_bytes: int = MAX_REQUEST_BYTES
    cgi_timeout_s: float = CGI_TIMEOUT_S
    stats_file: Path | None = None


class _BodyTooLargeError(Exception):
    """The request body grew past the configured cap."""


class _BadChunkError(Exception):
    """The chunked request body was malformed."""


class _CgiWatchdog:
    """One thread that kills CGI processes which outlive their deadline."""

    def __init__(self) -> None:
        self._deadlines: dict[subprocess.Popen[bytes], float] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="gitserver-watchdog", daemon=True
        )

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (running CGIs keep their own socket timeouts)."""
        self._stopped.set()
        self._thread.join(timeout=STOP_TIMEOUT_S)

    def watch(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        """Kill `proc` if it is still running `timeout_s` from now."""
        with self._lock:
            self._deadlines[proc] = time.monotonic() + timeout_s

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop watching `proc`."""
        with self._lock:
            self._deadlines.pop(proc, None)

    def _run(self) -> None:
        while not self._stopped.wait(WATCHDOG_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                expired = [p for p, t in self._deadlines.items() if t < now]
            for proc in expired:
                logger.warning("git http-backend pid %s timed out; killing", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()


class _GitHttpServer(ThreadingHTTPServer):
    """The listening socket plus the state each request handler shares."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, config: HttpServerConfig, stats: ServerStats) -> None:
        self.config = config
        self.stats = stats
        self.watchdog = _CgiWatchdog()
        self.backend = _git_program("http-backend")
        self.stats_lock = threading.Lock()
        super().__init__((LOOPBACK, config.port), _GitHttpHandler)

    def server_close(self) -> None:
        super().server_close()
        self.watchdog.stop()


class _GitHttpHandler(BaseHTTPRequestHandler):
    """Authenticates one request, then relays it to `git http-backend`."""

    protocol_version = "HTTP/1.1"
    server_version = "centops-gitserver/1"
    disable_nagle_algorithm = True  # sets TCP_NODELAY on each accepted socket
    timeout = SOCKET_TIMEOUT_S
    server: _GitHttpServer

    def setup(self) -> None:
        super().setup()
        self.rfile = _CountingReader(self.rfile, self.server.stats)
        self.wfile = _CountingWriter(self.wfile, self.server.stats)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line holds no credentials; headers are never logged.
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        """Serve ref advertisements (and dumb-protocol files)."""
        self._serve()

    def do_POST(self) -> None:
        """Serve upload-pack and receive-pack RPCs."""
        self._serve()

    # -- the request, step by step ------------------------------------------ #

    def _serve(self) -> None:
        status = self._authorize_and_relay()
        self.server.stats.record_request(
            status,
            v2="version=2" in (self.headers.get("Git-Protocol") or ""),
            gzip=bool(self.headers.get("Content-Encoding")),
            chunked=self._is_chunked(),
        )
        self._write_stats_file()

    def _authorize_and_relay(self) -> int:
        """Run the request and return the status sent to the client.

        1. Refuse requests without the token (401), before anything else runs.
        2. Refuse paths that leave the root, and oversized bodies.
        3. Run the CGI, feeding it the body while relaying its output.
        """
        if not self._authorized():
            return self._refuse(401, "authentication required", authenticate=True)
        path_info = self._path_info()
        if path_info is None:
            return self._refuse(404, "no such repository")
        length = self._content_length()
        if length is not None and length > self.server.config.max_request_bytes:
            return self._refuse(413, "request body too large")
        return self._relay_cgi(path_info, length)

    def _authorized(self) -> bool:
        """Return True if the request carries the configured token."""
        header = self.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        presented = b""
        if scheme.lower() == "bearer":
            presented = value.strip().encode("utf-8", "replace")
        elif scheme.lower() == "basic":
            presented = _basic_password(value.strip())
        expected = self.server.config.token.encode()
        # Compare even when nothing was presented, so timing says nothing.
        return hmac.compare_digest(presented, expected) and bool(presented)

    def _path_info(self) -> str | None:
        """Return the decoded request path, or None if it could leave the root."""
        path = unquote(urlsplit(self.path).path)
        parts = PurePosixPath(path).parts
        if not path.startswith("/") or "\0" in path or ".." in parts:
            return None
        return path

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None or self._is_chunked():
            return None
        try:
            return max(int(raw), 0)
        except ValueError:
            return None

    def _is_chunked(self) -> bool:
        encoding = self.headers.get("Transfer-Encoding") or ""
        return "chunked" in encoding.lower()

    def _has_body(self) -> bool:
        return self._is_chunked() or bool(self._content_length())

    def _refuse(self, status: int, reason: str, *, authenticate: bool = False) -> int:
        """Send a short plain-text error and return `status`."""
        body = f"{reason}\n".encode()
        # An unread body would be parsed as the next request: drop the link.
        if self._has_body() or self.command == "POST":
            self.close_connection = True
        self.send_response(status)
        if authenticate:
            realm = self.server.config.realm.replace('"', "")
            self.send_header("WWW-Authenticate", f'Basic realm="{realm}"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        return status

    # -- CGI ------------------------------------------------------------- #

    def _cgi_env(self, path_info: str, length: int | None) -> dict[str, str]:
        """Build the CGI environment; the Authorization header is left out."""
        env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        query = urlsplit(self.path).query
        env.update(
            GATEWAY_INTERFACE="CGI/1.1",
            SERVER_PROTOCOL=self.request_version,
            SERVER_SOFTWARE=self.server_version,
            REQUEST_METHOD=self.command,
            PATH_INFO=path_info,
            QUERY_STRING=query,
            REMOTE_ADDR=self.client_address[0],
            # Authenticated users may push (http-backend enables receive-pack).
            REMOTE_USER="centops",
            GIT_PROJECT_ROOT=str(self.server.config.root),
            GIT_HTTP_EXPORT_ALL="1",
        )
        if length is not None:
            env["CONTENT_LENGTH"] = str(length)
        content_type = self.headers.get("Content-Type")
        if content_type:
            env["CONTENT_TYPE"] = content_type
        encoding = self.headers.get("Content-Encoding")
        if encoding:
            env["HTTP_CONTENT_ENCODING"] = encoding
        protocol = self.headers.get("Git-Protocol") or ""
        if len(protocol) <= MAX_GIT_PROTOCOL_CHARS and _GIT_PROTOCOL_RE.match(protocol):
            env["GIT_PROTOCOL"] = protocol
        return env

    def _relay_cgi(self, path_info: str, length: int | None) -> int:
        """Run http-backend for this request and stream its answer back."""
        has_body = self._has_body()
        proc = subprocess.Popen(
            self.server.backend,
            env=self._cgi_env(path_info, length),
            stdin=subprocess.PIPE if has_body else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.server.watchdog.watch(proc, self.server.config.cgi_timeout_s)
        feeder = _BodyFeeder(self, proc, length) if has_body else None
        drain = threading.Thread(target=_log_stderr, args=(proc,), daemon=True)
        drain.start()
        try:
            return self._stream_response(proc, feeder)
        finally:
            self._finish_cgi(proc, feeder, drain)

    def _stream_response(
        self, proc: subprocess.Popen[bytes], feeder: _BodyFeeder | None
    ) -> int:
        """Relay the CGI's headers and body; return the status sent."""
        assert proc.stdout is not None  # noqa: S101 - set by Popen(stdout=PIPE)
        parsed = _read_cgi_headers(proc.stdout)
        if parsed is None:
            if feeder is not None and feeder.wait() == "too-large":
                return self._refuse(413, "request body too large")
            return self._refuse(502, "git http-backend gave no answer")
        status, reason, headers = parsed
        self.send_response(status, reason)
        chunked = not any(k.lower() == "content-length" for k, _ in headers)
        for key, value in headers:
            self.send_header(key, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._copy_body(proc.stdout, chunked=chunked)
        if feeder is not None and feeder.wait() != "ok":
            self.close_connection = True
        return status

    def _copy_body(self, source: IO[bytes], *, chunked: bool) -> None:
        """Copy the CGI's body to the client, chunk-framed when `chunked`."""
        read = getattr(source, "read1", source.read)
        while True:
            data: bytes = read(IO_CHUNK_BYTES)
            if not data:
                break
            if chunked:
                data = b"%x\r\n%b\r\n" % (len(data), data)
            self.wfile.write(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _finish_cgi(
        self,
        proc: subprocess.Popen[bytes],
        feeder: _BodyFeeder | None,
        drain: threading.Thread,
    ) -> None:
        """Reap the CGI and its helper threads, bounded in time."""
        if feeder is not None and feeder.wait() != "ok":
            self.close_connection = True
        try:
            proc.wait(timeout=self.server.config.cgi_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
        finally:
            self.server.watchdog.forget(proc)
        drain.join(timeout=STOP_TIMEOUT_S)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.returncode:
            logger.debug("git http-backend exited %s", proc.returncode)

    def _write_stats_file(self) -> None:
        """Publish the counters for benchmarks that run the server as a process."""
        path = self.server.config.stats_file
        if path is None:
            return
        data = json.dumps(self.server.stats.snapshot()).encode()
        with self.server.stats_lock:
            _write_atomically(path, data)


def _basic_password(encoded: str) -> bytes:
    """Return the password of a basic-auth value, or b"" if it is malformed."""
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except (ValueError, TypeError):
        return b""
    _, sep, password = decoded.partition(b":")
    return password if sep else b""


def _read_cgi_headers(
    stdout: IO[bytes],
) -> tuple[int, str, list[tuple[str, str]]] | None:
    """Parse the CGI's header block; None if it ended before a blank line."""
    status, reason = 200, "OK"
    headers: list[tuple[str, str]] = []
    budget = MAX_CGI_HEADER_BYTES
    for _ in range(MAX_CGI_HEADERS):
        line = stdout.readline(budget)
        budget -= len(line)
        if not line.endswith(b"\n") or budget <= 0:
            return None
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            return status, reason, headers
        key, _, value = text.partition(":")
        key, value = key.strip(), value.strip()
        if key.lower() == "status":
            code, _, reason = value.partition(" ")
            status = int(code) if code.isdigit() else 502
        elif key.lower() not in _HOP_BY_HOP:
            headers.append((key, value))
    return None


def _log_stderr(proc: subprocess.Popen[bytes]) -> None:
    """Drain the CGI's stderr so it never blocks; log the first part of it."""
    stderr = proc.stderr
    if stderr is None:
        return
    kept = b""
    with stderr:
        for chunk in iter(lambda: stderr.read(IO_CHUNK_BYTES), b""):
            if len(kept) < MAX_STDERR_LOG_BYTES:
                kept += chunk[: MAX_STDERR_LOG_BYTES - len(kept)]
    if kept.strip():
        logger.warning("git http-backend: %s", kept.decode("utf-8", "replace"))


FeedOutcome = Literal["ok", "too-large", "bad-request", "cgi-gone", "client-gone"]


class _BodyFeeder:
    """Copies the request body into the CGI's stdin on a thread of its own.

    A separate thread keeps the relay deadlock-free: the CGI may write output
    before it has read all of its input.
    """

    def __init__(
        self,
        handler: _GitHttpHandler,
        proc: subprocess.Popen[bytes],
        length: int | None,
    ) -> None:
        self._rfile = handler.rfile
        self._proc = proc
        self._length = length
        self._cap = handler.server.config.max_request_bytes
        self._timeout_s = handler.server.config.cgi_timeout_s
        self._outcome: FeedOutcome = "ok"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def wait(self) -> FeedOutcome:
        """Wait (bounded) for the body to be copied and return how it went."""
        self._thread.join(timeout=self._timeout_s)
        if self._thread.is_alive():
            return "client-gone"
        return self._outcome

    def _run(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None  # noqa: S101 - set by Popen(stdin=PIPE)
        try:
            for piece in self._pieces():
                stdin.write(piece)
        except _BodyTooLargeError:
            self._outcome = "too-large"
            self._proc.kill()
        except _BadChunkError:
            self._outcome = "bad-request"
            self._proc.kill()
        except (BrokenPipeError, ValueError):
            self._outcome = "cgi-gone"
        except OSError:
            self._outcome = "client-gone"
            self._proc.kill()
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _pieces(self) -> Iterator[bytes]:
        """Yield the body in pieces, enforcing the byte cap."""
        source = (
            _fixed_body(self._rfile, self._length)
            if self._length is not None
            else _chunked_body(self._rfile)
        )
        total = 0
        for piece in source:
            total += len(piece)
            if total > self._cap:
                raise _BodyTooLargeError
            yield piece


def _fixed_body(rfile: io.BufferedIOBase, length: int) -> Iterator[bytes]:
    """Yield exactly `length` bytes of body."""
    remaining = length
    while remaining > 0:
        piece = rfile.read1(min(remaining, IO_CHUNK_BYTES))
        if not piece:
            raise OSError("client closed the connection mid-body")
        remaining -= len(piece)
        yield piece


def _chunked_body(rfile: io.BufferedIOBase) -> Iterator[bytes]:
    """Yield the data of a chunked transfer encoding, then consume trailers."""
    while True:
        line = rfile.readline(MAX_CHUNK_LINE_BYTES)
        if not line.endswith(b"\n"):
            raise _BadChunkError
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as e:
            raise _BadChunkError from e
        if size == 0:
            break
        yield from _fixed_body(rfile, size)
        if rfile.readline(MAX_CHUNK_LINE_BYTES).strip():
            raise _BadChunkError
    for _ in range(MAX_CGI_HEADERS):  # trailers end with an empty line
        if not rfile.readline(MAX_CHUNK_LINE_BYTES).strip():
            return
    raise _BadChunkError


class SmartHttpGitServer:
    """Serves the bare repositories under `root` over smart HTTP on loopback.

    Every request must carry `token`, as `Authorization: Bearer <token>` or as
    the password of basic auth (any user). Use as a context manager, or call
    `start()` and `stop()`.
    """

    def __init__(
        self,
        root: Path,
        *,
        token: str,
        port: int = 0,
        realm: str = DEFAULT_REALM,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        cgi_timeout_s: float = CGI_TIMEOUT_S,
        stats_file: Path | None = None,
    ) -> None:
        _check_header_safe("token", token)
        self.config = HttpServerConfig(
            root=Path(root).resolve(),
            token=token,
            port=port,
            realm=realm,
            max_request_bytes=max_request_bytes,
            cgi_timeout_s=cgi_timeout_s,
            stats_file=stats_file,
        )
        self.stats = ServerStats()
        self._httpd: _GitHttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (raises if the server is not started)."""
        return int(self._require_httpd().server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:41234`."""
        return f"http://{LOOPBACK}:{self.port}"

    def repo_url(self, name: str) -> str:
        """URL of repository `name` (a path relative to the root)."""
        return f"{self.url}/{name.lstrip('/')}"

    def bind(self) -> None:
        """Open the listening socket without serving yet.

        Raises:
            GitServerError: the root is missing or the port cannot be bound.
        """
        if not self.config.root.is_dir():
            raise GitServerError(f"repository root {self.config.root} is not a folder")
        try:
            self._httpd = _GitHttpServer(self.config, self.stats)
        except OSError as e:
            raise GitServerError(
                f"cannot listen on port {self.config.port}: {e}"
            ) from e
        self._httpd.watchdog.start()
        logger.info("smart HTTP git server listening on %s", self.url)

    def start(self) -> Self:
        """Bind and serve on a background thread; return self."""
        self.bind()
        self._thread = threading.Thread(
            target=self._require_httpd().serve_forever,
            kwargs={"poll_interval": 0.2},
            name="gitserver-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Bind if needed and serve on the calling thread until `shutdown()`."""
        if self._httpd is None:
            self.bind()
        self._require_httpd().serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Ask `serve_forever` to return (call from another thread)."""
        if self._httpd is not None:
            self._httpd.shutdown()

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        if self._thread is not None:
            httpd.shutdown()
            self._thread.join(timeout=STOP_TIMEOUT_S)
            self._thread = None
        httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _require_httpd(self) -> _GitHttpServer:
        if self._httpd is None:
            raise GitServerError("the server is not started")
        return self._httpd


# --------------------------------------------------------------------------- #
# The HTTP server as a separate process
# --------------------------------------------------------------------------- #


@dataclass
class ServerProcess:
    """A `SmartHttpGitServer` running as a child process."""

    url: str
    pid: int
    pid_file: Path
    stats_file: Path | None
    process: subprocess.Popen[bytes] = field(repr=False)

    def repo_url(self, name: str) -> str:
        """URL of repository `name` (a path relative to the root)."""
        return f"{self.url}/{name.lstrip('/')}"

    def read_stats(self) -> dict[str, Any]:
        """Return the counters the server last published ({} before any)."""
        if self.stats_file is None or not self.stats_file.exists():
            return {}
        loaded: dict[str, Any] = json.loads(self.stats_file.read_text())
        return loaded

    def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the process by PID (SIGTERM, then SIGKILL) and reap it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def spawn_http_server(
    root: Path,
    token_file: Path,
    *,
    pid_file: Path,
    port: int = 0,
    stats_file: Path | None = None,
    log_file: Path | None = None,
    log_level: str = "INFO",
    timeout_s: float = START_TIMEOUT_S,
) -> ServerProcess:
    """Start `python -m centops.tools.stack.gitserver http` and wait for its URL.

    The token reaches the child through `token_file` only, never its argv.

    Raises:
        GitServerError: the process exited or printed no URL within `timeout_s`.
    """
    argv = [
        sys.executable, "-m", "centops.tools.stack.gitserver", "http",
        "--root", str(root), "--token-file", str(token_file),
        "--port", str(port), "--pid-file", str(pid_file),
        "--log-level", log_level,
    ]  # fmt: skip
    if stats_file is not None:
        argv += ["--stats-file", str(stats_file)]
    with contextlib.ExitStack() as stack:
        log = (
            stack.enter_context(open(log_file, "ab"))
            if log_file is not None
            else subprocess.DEVNULL
        )
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log)
    url = _read_url_line(proc, timeout_s)
    return ServerProcess(
        url=url, pid=proc.pid, pid_file=pid_file, stats_file=stats_file, process=proc
    )


def _read_url_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """Return the first stdout line of `proc`, or stop it and raise."""
    stdout = proc.stdout
    assert stdout is not None  # noqa: S101 - set by Popen(stdout=PIPE)
    box: list[bytes] = []
    reader = threading.Thread(
        target=lambda: box.append(stdout.readline(1024)), daemon=True
    )
    reader.start()
    reader.join(timeout=timeout_s)
    line = box[0].decode().strip() if box else ""
    if not line.startswith("http://"):
        stop_pid(proc.pid)
        raise GitServerError(f"git HTTP server process printed no URL (got {line!r})")
    return line


# --------------------------------------------------------------------------- #
# git daemon
# --------------------------------------------------------------------------- #


class GitDaemon:
    """`git daemon` serving every repository under `root` on loopback.

    Fetch and push (receive-pack) are enabled for anyone who can reach the
    port, which is why it only ever listens on 127.0.0.1.
    """

    def __init__(
        self,
        root: Path,
        *,
        port: int = 0,
        max_connections: int = 256,
        log_file: Path | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.root = Path(root).resolve()
        self._requested_port = port
        self._max_connections = max_connections
        self._log_file = log_file
        self._start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        """PID of the daemon (raises if not started)."""
        if self._proc is None:
            raise GitServerError("git daemon is not started")
        return self._proc.pid

    @property
    def url(self) -> str:
        """Base URL, e.g. `git://127.0.0.1:41234`."""
        return f"git://{LOOPBACK}:{self.port}"

    def repo_url(self, name: str) -> str:
        """URL of repository `name` (a path relative to the root)."""
        return f"{self.url}/{name.lstrip('/')}"

    def start(self) -> Self:
        """Start the daemon and wait until it accepts connections; return self.

        An ephemeral port is picked by binding port 0 and releasing it, which
        can race with another process; a lost race is retried on a new port.

        Raises:
            GitServerError: the daemon did not come up in `PORT_ATTEMPTS` tries.
        """
        attempts = 1 if self._requested_port else PORT_ATTEMPTS
        for _ in range(attempts):
            port = self._requested_port or _free_loopback_port()
            proc = self._launch(port)
            if _wait_until_accepting(port, proc, self._start_timeout_s):
                self._proc, self.port = proc, port
                logger.info("git daemon pid %s serving %s", proc.pid, self.url)
                return self
            proc.wait(timeout=STOP_TIMEOUT_S)
        raise GitServerError(f"git daemon did not start after {attempts} attempts")

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        argv = [
            *_git_program("daemon"),
            "--reuseaddr", f"--base-path={self.root}", "--export-all",
            f"--listen={LOOPBACK}", f"--port={port}",
            "--enable=receive-pack", f"--max-connections={self._max_connections}",
            str(self.root),
        ]  # fmt: skip
        with contextlib.ExitStack() as stack:
            log = (
                stack.enter_context(open(self._log_file, "ab"))
                if self._log_file is not None
                else subprocess.DEVNULL
            )
            return subprocess.Popen(
                argv,
                env=isolated_git_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def stop(self) -> None:
        """Stop the daemon by PID and reap it; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- #
# Test repositories
# --------------------------------------------------------------------------- #


def init_bare(path: Path, *, branch: str = DEFAULT_BRANCH) -> Path:
    """Create an empty bare repository at `path` that accepts HTTP pushes.

    Returns the path. Raises `GitServerError` if git fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    run_git(["init", "--quiet", "--bare", f"--initial-branch={branch}", str(path)])
    run_git(["config", "http.receivepack", "true"], cwd=path)
    return path


class WorkRepo:
    """A working clone of a local bare repository, for writing test history."""

    def __init__(
        self, path: Path, bare: Path, *, env: Mapping[str, str] | None = None
    ) -> None:
        self.path = Path(path)
        self.bare = Path(bare)
        self.env = dict(env) if env is not None else isolated_git_env()

    @classmethod
    def clone(cls, bare: Path, path: Path, *, branch: str = DEFAULT_BRANCH) -> WorkRepo:
        """Clone `bare` into `path`; an empty `bare` gets an unborn `branch`."""
        env = isolated_git_env()
        run_git(["clone", "--quiet", str(bare), str(path)], env=env)
        repo = cls(path, bare, env=env)
        if not repo.git("for-each-ref", "--count=1", "refs/heads/").strip():
            repo.git("symbolic-ref", "HEAD", f"refs/heads/{branch}")
        return repo

    def git(self, *args: str, input_bytes: bytes | None = None) -> str:
        """Run a git command in the working clone and return its output."""
        return run_git(args, cwd=self.path, env=self.env, input_bytes=input_bytes)

    def commit_files(self, files: Mapping[str, bytes], message: str) -> str:
        """Write `files` (relative path -> content), commit them, return the sha.

        Raises:
            ValueError: a path is absolute or climbs out with `..`.
        """
        for name, content in files.items():
            target = self._confined(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        self.git("add", "--all", "--", *files)
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD").strip()

    def push(self, branch: str = DEFAULT_BRANCH, *, force: bool = False) -> None:
        """Push HEAD to `refs/heads/<branch>` of the bare repository."""
        flags = ["--force"] if force else []
        self.git("push", "--quiet", *flags, "origin", f"HEAD:refs/heads/{branch}")

    def add_refs(self, count: int, *, prefix: str = "refs/extra/") -> None:
        """Create `count` extra refs on the bare repository, all at its HEAD.

        Refs are made in one `update-ref --stdin` transaction and then packed,
        so a listing reads one `packed-refs` file, as on a real server.

        Raises:
            ValueError: `count` is negative or above `MAX_EXTRA_REFS`.
        """
        if not 0 <= count <= MAX_EXTRA_REFS:
            raise ValueError(f"count must be within 0..{MAX_EXTRA_REFS}")
        sha = run_git(["rev-parse", "HEAD"], cwd=self.bare, env=self.env).strip()
        width = len(str(count))
        lines = "".join(f"create {prefix}r{i:0{width}d} {sha}\n" for i in range(count))
        run_git(
            ["update-ref", "--stdin"],
            cwd=self.bare,
            env=self.env,
            input_bytes=lines.encode(),
        )
        run_git(["pack-refs", "--all", "--prune"], cwd=self.bare, env=self.env)

    def _confined(self, name: str) -> Path:
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"path {name!r} must stay inside the working clone")
        return self.path.joinpath(*relative.parts)


# --------------------------------------------------------------------------- #
# Command line: python -m centops.tools.stack.gitserver http ...
# --------------------------------------------------------------------------- #


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m centops.tools.stack.gitserver",
        description="Serve bare git repositories on loopback for tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    http = commands.add_parser("http", help="smart HTTP with a bearer token")
    http.add_argument("--root", type=Path, required=True)
    http.add_argument("--token-file", type=Path, required=True)
    http.add_argument("--port", type=int, default=0)
    http.add_argument("--pid-file", type=Path)
    http.add_argument("--stats-file", type=Path)
    http.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def _read_token(path: Path) -> str:
    """Read the token file; refuse an empty one."""
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise GitServerError(f"token file {path} is empty")
    if path.stat().st_mode & 0o077:
        logger.warning("token file %s is readable by other users", path)
    return token


def main(argv: Sequence[str] | None = None) -> int:
    """Run the HTTP server until SIGTERM or SIGINT; return an exit code.

    Prints the base URL as the first line of stdout once it accepts, and writes
    its PID to `--pid-file` (default: `<root>/.gitserver-http.pid`).
    """
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        server = SmartHttpGitServer(
            args.root,
            token=_read_token(args.token_file),
            port=args.port,
            stats_file=args.stats_file,
        )
        server.bind()
    except (OSError, GitServerError) as e:
        logger.error("cannot start: %s", e)
        return 1
    pid_file: Path = args.pid_file or server.config.root / ".gitserver-http.pid"
    _write_atomically(pid_file, f"{os.getpid()}\n".encode())

    def on_signal(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever, which runs on this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.stdout.write(f"{server.url}\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.stop()
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
