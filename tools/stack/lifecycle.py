"""Start and stop the whole stack (registry + engine) as one unit."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .dockerd import DockerDaemon, start_dockerd, stop_dockerd
from .registry import RegistryServer, start_registry, stop_registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stack:
    """A running registry and engine that belong together."""

    registry: RegistryServer
    daemon: DockerDaemon

    def ref(self, repo: str, digest: str) -> str:
        """``127.0.0.1:PORT/repo@sha256:...`` for an image in this registry."""
        return f"{self.registry.host}/{repo}@{digest}"


def start_stack(workdir: Path) -> Stack:
    """Start a registry and an engine under ``workdir``.

    Stops the registry again when the engine does not start, then re-raises.
    """
    registry = start_registry(workdir / "registry")
    try:
        daemon = start_dockerd(workdir / "dockerd")
    except BaseException:
        stop_registry(registry)
        raise
    return Stack(registry, daemon)


def stop_stack(stack: Stack) -> None:
    """Stop the engine, then the registry, each by its PID."""
    try:
        stop_dockerd(stack.daemon)
    finally:
        stop_registry(stack.registry)


@contextmanager
def running_stack(workdir: Path) -> Iterator[Stack]:
    """A stack for the duration of a ``with`` block."""
    stack = start_stack(workdir)
    try:
        yield stack
    finally:
        stop_stack(stack)
