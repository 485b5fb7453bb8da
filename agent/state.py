"""The agent's durable state: one JSON file, written atomically, under a lock.

Layout of the state directory::

    lock                      flock()ed by the one agent working here
    state.json                AgentState, replaced atomically on each change
    manifests/<serial>/       accepted manifests and their bundles, by serial
    mirror.git/               bare shallow copy of the followed branch
    work/                     downloads in progress (untrusted until verified)
    logs/                     per-run script output
    outbox/                   telemetry not yet delivered

``state.json`` is read with the same suspicion as remote input: a file that
does not parse is refused with a clear error rather than silently reset, since
resetting would also reset the anti-rollback serial.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ConfigError
from .fsutil import atomic_write, read_regular
from .installers.base import InstalledRecord

STATE_FORMAT = 1
MAX_STATE_BYTES = 4 * 1024 * 1024
SETTLED_OUTCOMES = frozenset({"succeeded", "refused", "stale"})


class StateLocked(ConfigError):
    """Another agent holds the state directory."""

    reason = "state-locked"


@dataclass
class Applied:
    """The manifest this client accepted last."""

    serial: int
    sha256: str
    commit: str
    expires: str
    accepted_at: str


@dataclass
class ChannelMark:
    """The highest serial accepted on one channel, and the digest it had."""

    serial: int
    sha256: str


@dataclass
class LastResult:
    outcome: str  # succeeded, failed, refused, rolled-back, stale
    at: str
    commit: str | None = None
    serial: int | None = None
    reason: str | None = None
    message: str | None = None


@dataclass
class AgentState:
    channel: str | None = None
    applied: Applied | None = None
    seen_commit: str | None = None  # the last tip fetched
    processed_commit: str | None = None  # fetched tip that needs no more work
    config_sha256: str | None = None
    components: dict[str, InstalledRecord] = field(default_factory=dict)
    last_result: LastResult | None = None
    last_report_at: str | None = None  # when telemetry last recorded an event
    # Anti-rollback memory per channel: serials only increase within one
    # channel, so a client moved to another channel must not compare across.
    channels: dict[str, ChannelMark] = field(default_factory=dict)

    def mark(self, channel: str) -> ChannelMark | None:
        return self.channels.get(channel)

    @property
    def highest_serial(self) -> int:
        """The highest serial accepted on the channel this client follows."""
        mark = self.channels.get(self.channel) if self.channel else None
        return mark.serial if mark else 0

    def to_json(self) -> bytes:
        body = asdict(self)
        body["format"] = STATE_FORMAT
        return json.dumps(body, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, *, source: Path) -> AgentState:
        try:
            body = json.loads(raw)
            if body.pop("format") != STATE_FORMAT:
                raise ValueError("unknown format")
            applied = body.pop("applied")
            last = body.pop("last_result")
            components = body.pop("components")
            channels = body.pop("channels", {})
            state = cls(
                **body,
                applied=Applied(**applied) if applied else None,
                last_result=LastResult(**last) if last else None,
                components={k: InstalledRecord(**v) for k, v in components.items()},
                channels={k: ChannelMark(**v) for k, v in channels.items()},
            )
            for part in (state, state.applied, state.last_result):
                _check_types(part)
            for item in (*state.components.values(), *state.channels.values()):
                _check_types(item)
            return state
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise ConfigError(
                f"state file {source} is damaged ({type(exc).__name__}: {exc})",
                reason="state-damaged",
                hint="restore it from backup; deleting it forgets the anti-rollback "
                "serial, so only do that for a client you re-provision",
            ) from exc


_SIMPLE = {"int": int, "str": str, "bool": bool, "dict": dict}


def _check_types(obj: object) -> None:
    """TypeError unless each field holds what its annotation says.

    The annotations here are plain (``int``, ``str | None``, ``dict[...]``,
    or one of this module's dataclasses), so their text is enough to check.
    """
    if obj is None:
        return
    for item in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, item.name)
        allowed = [part.strip() for part in str(item.type).split("|")]
        if not any(_matches(value, kind) for kind in allowed):
            raise TypeError(f"{item.name} is {type(value).__name__}, not {item.type}")


def _matches(value: object, kind: str) -> bool:
    if kind == "None":
        return value is None
    base = kind.split("[", 1)[0]
    if base in _SIMPLE:
        wanted = _SIMPLE[base]
        return isinstance(value, wanted) and (
            wanted is bool or not isinstance(value, bool)
        )
    return type(value).__name__ == base


class StateDir:
    """Paths inside the state directory and atomic access to ``state.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_file = root / "state.json"
        self.mirror = root / "mirror.git"
        self.manifests = root / "manifests"
        self.work = root / "work"
        self.logs = root / "logs"
        self.outbox = root / "outbox"
        self.last_poll = root / "last-poll"

    def prepare(self) -> None:
        for folder in (self.root, self.manifests, self.work, self.logs, self.outbox):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def load(self) -> AgentState:
        try:
            raw = read_regular(self.state_file, MAX_STATE_BYTES)
        except FileNotFoundError:
            return AgentState()
        except OSError as exc:
            raise ConfigError(
                f"cannot read state file {self.state_file}: {exc.strerror}",
                reason="state-damaged",
            ) from exc
        if len(raw) > MAX_STATE_BYTES:
            raise ConfigError(
                f"state file {self.state_file} is over {MAX_STATE_BYTES} bytes",
                reason="state-damaged",
            )
        return AgentState.from_json(raw, source=self.state_file)

    def config_digest(self) -> str | None:
        """The digest of the configuration the last sync ran with, if readable."""
        try:
            return self.load().config_sha256
        except (ConfigError, OSError):
            return None

    def save(self, state: AgentState) -> None:
        atomic_write(self.state_file, state.to_json(), mode=0o600)

    def store_manifest(self, serial: int, manifest: bytes, bundle: bytes) -> Path:
        folder = self.manifests / str(serial)
        atomic_write(folder / "manifest.yaml.sigstore.json", bundle, mode=0o600)
        atomic_write(folder / "manifest.yaml", manifest, mode=0o600)
        return folder

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock; StateLocked at once if another agent has it."""
        self.prepare()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StateLocked(
                    f"another centops-agent is working on {self.root}",
                    hint="wait for it to finish; two agents must not share a "
                    "state directory",
                ) from exc
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)
