"""Download progress for people: rich bars on a terminal, one line otherwise."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from .installers.base import Progress, no_progress

log = logging.getLogger("centops.agent")


@contextlib.contextmanager
def progress_sink(*, enabled: bool = True) -> Iterator[Progress]:
    """A progress callback for the duration of a sync."""
    if not enabled:
        yield no_progress
        return
    if not sys.stderr.isatty():
        yield _LineProgress()
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TransferSpeedColumn,
    )
    from rich.progress import (
        Progress as RichProgress,
    )

    bars = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=False,
    )
    tasks: dict[str, int] = {}

    def update(label: str, done: int, total: int | None) -> None:
        if label not in tasks:
            tasks[label] = int(bars.add_task(label, total=total))
        bars.update(tasks[label], completed=done, total=total)  # type: ignore[arg-type]

    with bars:
        yield update


class _LineProgress:
    """Logs one line per download when it completes (no terminal to draw on).

    Image pulls report per layer and stage ("<component> <stage> <layer>");
    the image installer logs its own one line per pull, so those are not
    repeated here.
    """

    def __init__(self) -> None:
        self.done: set[str] = set()

    def __call__(self, label: str, done: int, total: int | None) -> None:
        if " " in label:
            return
        if total is not None and done >= total and label not in self.done:
            self.done.add(label)
            log.info("fetched %s (%d bytes)", label, done)
