"""Scripts: downloaded, verified, then run with a timeout and no shell.

The script is written without execute permission, checked against its pinned
size and sha256, and only then made executable and run directly (its own
``#!`` line chooses the interpreter). Manifest values reach it only through
environment variables (``CENTOPS_COMPONENT``, ``CENTOPS_VERSION``,
``CENTOPS_SERIAL``), never through a command line a shell would interpret.
Its output goes to a per-run log under the state directory. Scripts should be
idempotent: one interrupted by a kill runs again on the next sync.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from ..download import DownloadOptions, fetch_verified
from ..errors import InstallError
from ..manifest import Component, ScriptSource
from .base import InstallContext, InstalledRecord, InstallResult

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_LOG_BYTES = 4 * 1024 * 1024


class ScriptInstaller:
    kind = "script"

    def is_current(
        self, component: Component, record: InstalledRecord | None, ctx: InstallContext
    ) -> bool:
        # A script's effect cannot be re-inspected; its successful run at this
        # exact digest is what the record proves.
        return (
            record is not None
            and record.kind == self.kind
            and record.version == component.version
            and record.digest == component.digest
        )

    def install(self, component: Component, ctx: InstallContext) -> InstallResult:
        source = component.source
        assert isinstance(source, ScriptSource)  # noqa: S101 - dispatched by kind
        path = ctx.work_dir / f"{source.sha256}.script"
        fetch_verified(
            source.url,
            dest=path,
            size=source.size,
            sha256=source.sha256,
            options=DownloadOptions.for_config(ctx.config),
            progress=ctx.progress,
            label=component.name,
        )
        os.chmod(path, 0o700)  # executable only once verified
        log_path = ctx.log_dir / f"serial-{ctx.serial}-{component.name}.log"
        code, seconds = _run(path, component, ctx, log_path)
        if code != 0:
            raise InstallError(
                f"script {component.name} {component.version} exited with code "
                f"{code}; output in {log_path}",
                reason="script-failed",
            )
        return InstallResult(
            detail={"log": str(log_path), "seconds": round(seconds, 3)}
        )


def _run(
    path: Path, component: Component, ctx: InstallContext, log_path: Path
) -> tuple[int, float]:
    env = {
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
        "HOME": str(ctx.work_dir),
        "CENTOPS_COMPONENT": component.name,
        "CENTOPS_VERSION": component.version,
        "CENTOPS_SERIAL": str(ctx.serial),
        "CENTOPS_FILES_ROOT": str(ctx.config.files_root),
    }
    timeout = ctx.config.script_timeout_seconds
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                [str(path)],
                cwd=ctx.work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_detach_but_follow_parent,
            )
        except OSError as exc:
            raise InstallError(
                f"script {component.name} cannot start: {exc.strerror} (does it "
                "begin with a #! line?)",
                reason="script-failed",
            ) from exc
        assert process.stdout is not None  # noqa: S101 - stdout=PIPE above
        copier = threading.Thread(
            target=_copy_capped, args=(process.stdout, log), daemon=True
        )
        copier.start()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(process)
            raise InstallError(
                f"script {component.name} ran longer than {timeout} s and was "
                f"stopped; output in {log_path}",
                reason="script-timeout",
            ) from exc
        finally:
            copier.join(timeout=5)  # a leftover child holding the pipe: give up
            process.stdout.close()
    return code, time.monotonic() - started


def _copy_capped(source: IO[bytes], log: IO[bytes]) -> None:
    """Keep the first MAX_LOG_BYTES of the output; read and drop the rest, so
    a noisy script neither blocks on a full pipe nor fills the disk."""
    kept = 0
    with contextlib.suppress(OSError, ValueError):
        while block := source.read1(64 * 1024):  # type: ignore[attr-defined]
            if kept < MAX_LOG_BYTES:
                log.write(block[: MAX_LOG_BYTES - kept])
                kept += min(len(block), MAX_LOG_BYTES - kept)
                if kept >= MAX_LOG_BYTES:
                    log.write(b"\n[log truncated]\n")
        log.flush()


def _detach_but_follow_parent() -> None:
    """In the child: its own process group (a timeout kills all of it), and
    SIGKILL when the agent dies, so a killed agent leaves no script running
    that the next sync would run a second time alongside (Linux only)."""
    os.setsid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: a killed agent may leave the script to finish alone


_PR_SET_PDEATHSIG = 1


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
