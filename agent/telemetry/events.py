"""Building CloudEvents 1.0 telemetry events (JSON structured mode).

The ``data`` of every event follows ``schemas/telemetry.schema.json``. Only
what is listed there is ever put in an event: no token, no secret, no
environment. Messages are truncated to the schema's bound.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .. import __version__

SPEC_VERSION = "1.0"
DATA_SCHEMA = "https://schemas.centops.dev/telemetry/v1.json"
MAX_MESSAGE = 2000
TYPE_PREFIX = "io.centops."
FINAL_OUTCOMES = frozenset({"succeeded", "failed", "refused", "rolled-back", "stale"})


@dataclass(frozen=True)
class ComponentOutcome:
    component: str
    kind: str
    version: str
    digest: str | None
    outcome: str  # installed, current, skipped, failed, rolled-back
    duration_ms: int = 0
    reason: str | None = None
    message: str | None = None

    def as_data(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "kind": self.kind,
            "version": self.version,
            "digest": self.digest,
            "outcome": self.outcome,
            "duration_ms": self.duration_ms,
            "reason": self.reason,
            "message": _clip(self.message),
        }


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def source_for(client_id: str) -> str:
    return f"urn:centops:client:{client_id}"


def make_event(
    *,
    kind: str,
    client_id: str,
    channel: str,
    outcome: str,
    serial: int | None = None,
    manifest_sha256: str | None = None,
    commit: str | None = None,
    components: list[ComponentOutcome] | None = None,
    reason: str | None = None,
    message: str | None = None,
    extra: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One CloudEvent; ``kind`` is the type after ``io.centops.``, e.g.
    ``update.succeeded``."""
    data: dict[str, Any] = {
        "client_id": client_id,
        "agent_version": __version__,
        "channel": channel,
        "serial": serial,
        "manifest_sha256": manifest_sha256,
        "commit": commit,
        "outcome": outcome,
        "reason": reason,
        "message": _clip(message),
    }
    if components is not None:
        data["components"] = [c.as_data() for c in components]
    if extra:
        data.update(extra)
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    event: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": str(uuid.uuid4()),
        "source": source_for(client_id),
        "type": TYPE_PREFIX + kind,
        "time": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "datacontenttype": "application/json",
        "dataschema": DATA_SCHEMA,
        "data": data,
    }
    if serial is not None:
        event["subject"] = f"{channel}/{serial}"
    return event


def is_final(event: dict[str, Any]) -> bool:
    """Final outcome events are never dropped from a full outbox."""
    etype = str(event.get("type", ""))
    return etype.startswith(TYPE_PREFIX + "update.") and (
        etype.removeprefix(TYPE_PREFIX + "update.") in FINAL_OUTCOMES
    )
