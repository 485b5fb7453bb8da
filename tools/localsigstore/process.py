"""Run the local Sigstore services as a child process and stop it again.

``python -m centops.tools.localsigstore serve --dir DIR`` prints one line,
``localsigstore serving <URL>``, once its socket is bound and the trust config
is written. :class:`ServerProcess` starts that command, waits (bounded) for
the line and stops exactly the process it started.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

READY_PREFIX = "localsigstore serving "
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_MAX_LINE_BYTES = 4096


class ServerStartError(RuntimeError):
    """The child process exited or stayed silent instead of reporting its URL."""


class ServerProcess:
    """A ``serve`` child process for one directory; a context manager."""

    def __init__(self, directory: Path, *, port: int = 0) -> None:
        self.directory = directory
        self.port = port
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        """Start the child and return once it reports its URL.

        Raises :class:`ServerStartError` (after stopping the child) if no URL
        arrives within :data:`START_TIMEOUT_S`.
        """
        command = [
            sys.executable,
            "-m",
            "centops.tools.localsigstore",
            "serve",
            "--dir",
            str(self.directory),
            "--port",
            str(self.port),
        ]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE)
        try:
            self.url = self._await_url(self._process)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _await_url(process: subprocess.Popen[bytes]) -> str:
        if process.stdout is None:
            raise ServerStartError("server started without a stdout pipe")
        deadline = time.monotonic() + START_TIMEOUT_S
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0:
                if not selector.select(timeout=remaining):
                    continue
                line = process.stdout.readline(_MAX_LINE_BYTES).decode(errors="replace")
                if not line:
                    raise ServerStartError(f"server exited with {process.wait()}")
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX) :].strip()
        raise ServerStartError(f"no URL from the server within {START_TIMEOUT_S} s")

    @property
    def pid(self) -> int:
        """The child's process ID; raises if it was never started."""
        if self._process is None:
            raise RuntimeError("server process not started")
        return self._process.pid

    def stop(self) -> None:
        """Terminate the child (kill it after :data:`STOP_TIMEOUT_S`) and reap it."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
