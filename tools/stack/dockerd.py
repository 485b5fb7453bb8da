"""Run Debian's Docker Engine (``dockerd`` 20.10) as a private daemon.

Everything the daemon writes goes under one directory of the caller (data
root, exec root, pidfile, API socket, its managed containerd), except what
dockerd 20.10 always shares: ``/etc/docker/key.json`` and ``/run/docker``.
There is no bridge and no iptables, so containers must run with networking
disabled (``network_mode="none"``). Several daemons can run side by side
as long as each gets its own directory.
"""

from __future__ import annotations

import http.client
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import _http, _proc
from .errors import StartError, ToolchainError

log = logging.getLogger(__name__)

DOCKERD_BINARY = "dockerd"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
PING_TIMEOUT_S = 2.0
PING_MAX_BYTES = 64 * 1024
# A unix socket path holds at most 107 bytes; containerd puts
# "containerd/containerd.sock.ttrpc" under the exec root.
_MAX_EXEC_ROOT_CHARS = 60


@dataclass(frozen=True)
class DockerDaemon:
    """A running engine: its API address and how to stop it."""

    socket_path: Path
    pid: int
    data_root: Path
    exec_root: Path
    log_path: Path

    @property
    def docker_host(self) -> str:
        """The ``DOCKER_HOST`` value for clients, ``unix://...``."""
        return f"unix://{self.socket_path}"


def _exec_root(workdir: Path) -> Path:
    """``workdir/exec``, or a short temp folder when that path is too long."""
    candidate = workdir / "exec"
    if len(str(candidate)) <= _MAX_EXEC_ROOT_CHARS:
        candidate.mkdir(parents=True, exist_ok=True)
        return candidate
    return Path(tempfile.mkdtemp(prefix="centops-dx-"))


def _argv(workdir: Path, exec_root: Path, socket_path: Path) -> list[str]:
    config = workdir / "daemon.json"
    # An own (empty) config keeps a shared /etc/docker/daemon.json out.
    config.write_text("{}\n")
    return [
        DOCKERD_BINARY,
        "--storage-driver=vfs",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
        "--bridge=none",
        "--userland-proxy=false",
        f"--config-file={config}",
        f"--data-root={workdir / 'data'}",
        f"--exec-root={exec_root}",
        f"--pidfile={workdir / 'dockerd.pid'}",
        f"--host=unix://{socket_path}",
    ]


def _answers(socket_path: Path) -> bool:
    try:
        status = _http.unix_get(
            str(socket_path),
            "/_ping",
            timeout_s=PING_TIMEOUT_S,
            max_bytes=PING_MAX_BYTES,
        )
    except (OSError, http.client.HTTPException):
        return False
    return status == 200


def start_dockerd(workdir: Path) -> DockerDaemon:
    """Start a private engine under ``workdir``; return once ``/_ping`` answers.

    Raises :class:`ToolchainError` when dockerd is missing and
    :class:`StartError` when it exits or does not answer in time.
    """
    if shutil.which(DOCKERD_BINARY) is None:
        raise ToolchainError(
            f"{DOCKERD_BINARY} not found on PATH",
            hint="run tools/stack/install.sh as root",
        )
    workdir.mkdir(parents=True, exist_ok=True)
    exec_root = _exec_root(workdir)
    socket_path = workdir / "docker.sock"
    log_path = workdir / "dockerd.log"
    pid = _proc.spawn_detached(
        _argv(workdir, exec_root, socket_path),
        log_path=log_path,
        env=_proc.daemon_env(),
    )
    daemon = DockerDaemon(socket_path, pid, workdir / "data", exec_root, log_path)
    try:
        _proc.wait_until(
            lambda: _answers(socket_path),
            timeout_s=START_TIMEOUT_S,
            what="dockerd",
            pid=pid,
        )
    except StartError as e:
        stop_dockerd(daemon)
        raise StartError(str(e), hint=f"see {log_path}") from e
    log.info("dockerd at %s (PID %s)", daemon.docker_host, pid)
    return daemon


def stop_dockerd(daemon: DockerDaemon) -> None:
    """Stop the engine by its PID: SIGTERM and a bounded wait, then SIGKILL.

    dockerd stops its running containers and its containerd on SIGTERM.
    """
    _proc.stop_pid(daemon.pid, timeout_s=STOP_TIMEOUT_S, what="dockerd")
