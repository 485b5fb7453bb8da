"""A durable, bounded, per-sink outbox of telemetry events.

Events are written here before anything is sent, so a crash between an
outcome and its delivery loses nothing: the next run delivers it (at least
once; receivers drop duplicates by event ``id``).

Layout under ``root``::

    <sink>/<sequence>-<id>.json     one file per pending event and sink
    dead/<sink>/<name>.json         events a sink refused for good, with why
    seq                             the last sequence number used

Each enabled sink has its own queue, so one sink being down never holds back
or duplicates the other. Every file is written atomically.

The bound (``max_events`` per sink) drops the oldest *non-final* events first
and then records how many were dropped in the next ``outbox.overflow`` event;
a final outcome event (``update.succeeded`` and friends) is never dropped.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write, read_regular
from .events import is_final, make_event

MAX_EVENT_BYTES = 64 * 1024


class EventTooLarge(ValueError):
    """An event over MAX_EVENT_BYTES; the caller may send a summary instead."""


@dataclass(frozen=True)
class PendingEvent:
    path: Path
    event: dict[str, Any]


class Outbox:
    def __init__(self, root: Path, sinks: Sequence[str], *, max_events: int) -> None:
        self.root = root
        self.sinks = tuple(sinks)
        self.max_events = max_events

    # -- writing ---------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for every sink, durably, then enforce the bound."""
        data = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
        if len(data) > MAX_EVENT_BYTES:
            raise EventTooLarge(f"telemetry event of {len(data)} bytes is too large")
        sequence = self._next_sequence()
        name = f"{sequence:012d}-{event['id']}.json"
        for sink in self.sinks:
            atomic_write(self.root / sink / name, data, mode=0o600)
            self._enforce_bound(sink, event)

    def _next_sequence(self) -> int:
        path = self.root / "seq"
        try:
            current = int(read_regular(path, 32).strip() or 0)
        except (OSError, ValueError):
            current = -1
        if current < 0:  # missing or damaged: continue after what is on disk
            current = self._highest_on_disk()
        atomic_write(path, str(current + 1).encode(), mode=0o600)
        return current + 1

    def _highest_on_disk(self) -> int:
        highest = 0
        for sink in self.sinks:
            for path in self._files(sink):
                highest = max(highest, _sequence(path))
        return highest

    def _enforce_bound(self, sink: str, latest: dict[str, Any]) -> None:
        files = self._files(sink)
        excess = len(files) - self.max_events
        if excess <= 0:
            return
        dropped = 0
        for path in files:
            if dropped >= excess:
                break
            event = _read(path)
            if event is not None and is_final(event):
                continue
            path.unlink(missing_ok=True)
            dropped += 1
        if dropped:
            counter = self.root / f"{sink}.dropped"
            total = _read_int(counter) + dropped
            atomic_write(counter, str(total).encode(), mode=0o600)

    def take_dropped_report(self, sink: str, *, client_id: str, channel: str) -> None:
        """Queue an ``outbox.overflow`` event for ``sink`` if events were dropped."""
        counter = self.root / f"{sink}.dropped"
        total = _read_int(counter)
        if not total:
            return
        event = make_event(
            kind="outbox.overflow",
            client_id=client_id,
            channel=channel,
            outcome="reported",
            reason="outbox-full",
            message=f"{total} non-final event(s) dropped: the outbox bound was reached",
            extra={"dropped_events": total},
        )
        data = json.dumps(event, sort_keys=True, separators=(",", ":")).encode()
        name = f"{self._next_sequence():012d}-{event['id']}.json"
        atomic_write(self.root / sink / name, data, mode=0o600)
        counter.unlink(missing_ok=True)

    # -- reading and acknowledging --------------------------------------------

    def pending(self, sink: str, *, limit: int = 1000) -> list[PendingEvent]:
        """Oldest first; unreadable files are moved to the dead letters."""
        found = []
        for path in self._files(sink)[:limit]:
            event = _read(path)
            if event is None:
                self.dead_letter(sink, path, "unreadable outbox file")
                continue
            found.append(PendingEvent(path, event))
        return found

    def ack(self, pending: Sequence[PendingEvent]) -> None:
        for item in pending:
            item.path.unlink(missing_ok=True)

    def dead_letter(self, sink: str, path: Path, why: str) -> None:
        """Move an event a sink refused for good aside, with the reason."""
        event = _read(path)
        record = {"reason": why[:4000], "event": event}
        target = self.root / "dead" / sink / path.name
        atomic_write(target, json.dumps(record, indent=2).encode(), mode=0o600)
        path.unlink(missing_ok=True)

    def dead_letters(self, sink: str) -> list[Path]:
        folder = self.root / "dead" / sink
        return sorted(folder.glob("*.json")) if folder.is_dir() else []

    def counts(self) -> dict[str, int]:
        return {sink: len(self._files(sink)) for sink in self.sinks}

    def _files(self, sink: str) -> list[Path]:
        folder = self.root / sink
        if not folder.is_dir():
            return []
        # Only regular files: a folder, link or FIFO planted here is ignored.
        return sorted(p for p in folder.iterdir() if _is_event_file(p) and _regular(p))

    def __iter__(self) -> Iterator[str]:
        return iter(self.sinks)


def _is_event_file(path: Path) -> bool:
    return path.suffix == ".json" and not path.name.startswith(".")


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _sequence(path: Path) -> int:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def _read(path: Path) -> dict[str, Any] | None:
    try:
        raw = read_regular(path, MAX_EVENT_BYTES, follow_symlinks=False)
        if len(raw) > MAX_EVENT_BYTES:
            return None
        value = json.loads(raw)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def ensure_private(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
