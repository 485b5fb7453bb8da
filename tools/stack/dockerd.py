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
import re
import shutil
import subprocess
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
UMOUNT_TIMEOUT_S = 10.0
MAX_UMOUNTS = 4
MOUNTINFO_MAX_BYTES = 8 * 1024 * 1024
PING_MAX_BYTES = 64 * 1024
# A unix socket path holds at most 107 bytes; containerd puts
# "containerd/containerd.sock.ttrpc" under the exec root, and so do we
# "docker.sock".
_MAX_EXEC_ROOT_CHARS = 60
_TEMP_EXEC_PREFIX = "centops-dx-"


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
    return Path(tempfile.mkdtemp(prefix=_TEMP_EXEC_PREFIX))


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

    When ``workdir`` is too deep for the unix sockets containerd puts under
    the exec root, the exec root is a short temporary folder instead.

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
    # The API socket lives in the exec root too, which is kept short enough.
    socket_path = exec_root / "docker.sock"
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
        tail = _proc.log_tail(log_path)
        raise StartError(f"{e}; log ends: {tail}", hint=f"see {log_path}") from e
    log.info("dockerd at %s (PID %s)", daemon.docker_host, pid)
    return daemon


def stop_dockerd(daemon: DockerDaemon) -> None:
    """Stop the engine by its PID: SIGTERM and a bounded wait, then SIGKILL.

    dockerd stops its running containers and its containerd on SIGTERM.
    A temporary exec root (see :func:`start_dockerd`) is removed afterwards.
    """
    graceful = _proc.stop_pid(daemon.pid, timeout_s=STOP_TIMEOUT_S, what="dockerd")
    _release_data_root(daemon.data_root)
    # A short exec root made in the temp folder is ours to remove; after a
    # forced kill it may still hold mounts, so it is left for inspection.
    if graceful and daemon.exec_root.name.startswith(_TEMP_EXEC_PREFIX):
        shutil.rmtree(daemon.exec_root, ignore_errors=True)


def _mount_count(path: Path) -> int:
    """How many mounts sit exactly on ``path`` (bind mounts included).

    ``os.path.ismount`` misses a folder bind-mounted onto itself, so the
    kernel's mount table is read instead.
    """
    target = str(path.resolve())
    with open("/proc/self/mountinfo", "rb") as table:
        text = table.read(MOUNTINFO_MAX_BYTES).decode(errors="replace")
    # Field 5 is the mount point, with spaces and such as octal escapes.
    points = (line.split(" ")[4] for line in text.splitlines() if line.count(" ") > 4)
    return sum(1 for point in points if _unescape(point) == target)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _release_data_root(data_root: Path) -> None:
    """Unmount the data root if dockerd left it bind-mounted onto itself.

    dockerd mounts its data root privately at start and unmounts it on a
    clean shutdown, but not when it fails to start or is killed; the leftover
    mount keeps the folder from being removed.
    """
    for _ in range(min(_mount_count(data_root), MAX_UMOUNTS)):
        log.warning("dockerd left %s mounted; unmounting", data_root)
        result = subprocess.run(
            ["umount", str(data_root)],
            capture_output=True,
            text=True,
            timeout=UMOUNT_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            log.warning("umount %s failed: %s", data_root, result.stderr.strip())
            return
