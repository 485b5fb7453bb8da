"""What the update controller needs from an installer.

The controller walks the manifest's components in order and, for each, asks
the installer of its kind whether the component is already in place
(:meth:`Installer.is_current`) and otherwise to install it. An installer
raises :class:`~centops.agent.errors.CentOpsError` subclasses with a stable
``reason`` on failure; it never touches state, which the controller owns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # kept off the no-op poll's imports
    from ..config import AgentConfig
    from ..manifest import Component

Progress = Callable[[str, int, int | None], None]
"""progress(label, done_bytes, total_bytes_or_None)"""


def no_progress(label: str, done: int, total: int | None) -> None:
    """A progress sink that shows nothing."""


@dataclass(frozen=True)
class InstallContext:
    config: AgentConfig
    serial: int
    work_dir: Path  # scratch space under the state directory, per component
    log_dir: Path  # per-run logs (script output)
    progress: Progress = no_progress
    logger: logging.Logger = field(
        default_factory=lambda: logging.getLogger("centops.agent")
    )


@dataclass(frozen=True)
class InstalledRecord:
    """What state keeps about an installed component."""

    name: str
    kind: str
    version: str
    digest: str  # the pinned digest (for images: what the manifest pinned)
    serial: int
    installed_at: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InstallResult:
    detail: dict[str, Any] = field(default_factory=dict)
    outcome: str = "installed"  # or "rolled-back" when an installer recovered


class Installer(Protocol):
    kind: str

    def is_current(
        self, component: Component, record: InstalledRecord | None, ctx: InstallContext
    ) -> bool:
        """Whether ``component`` is already in place exactly as pinned.

        Must re-check the installed thing itself (a file's bytes, an image's
        digest), not only ``record``: local state is not trusted blindly.
        """
        ...

    def install(self, component: Component, ctx: InstallContext) -> InstallResult:
        """Install ``component``; raise a CentOpsError with a reason on failure."""
        ...
