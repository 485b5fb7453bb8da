"""Builders for manifest text used across the tests."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

DIGEST_A = hashlib.sha256(b"telemetry-agent v2.3.0").hexdigest()
DIGEST_B = hashlib.sha256(b"pipeline-runner v1.9.2").hexdigest()


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def design_note_manifest(
    *, serial: int = 1, channel: str = "stable", now: datetime | None = None
) -> str:
    """The update manifest of the original design note, with full digests."""
    now = now or datetime.now(UTC)
    return f"""\
schema_version: v1
channel: {channel}
serial: {serial}
issued_at: "{stamp(now - timedelta(minutes=1))}"
expires: "{stamp(now + timedelta(days=30))}"
includes:
  - component: telemetry-agent
    version: v2.3.0
    image: ghcr.io/org/centops-telemetry:v2.3.0
    sha256: {DIGEST_A}
  - component: pipeline-runner
    version: v1.9.2
    image: ghcr.io/org/centops-runner:v1.9.2
    sha256: {DIGEST_B}
"""


def manifest_with(components: str, *, serial: int = 1, channel: str = "stable") -> str:
    """A valid header followed by the given ``components:`` list text."""
    now = datetime.now(UTC)
    return (
        f"schema_version: v1\nchannel: {channel}\nserial: {serial}\n"
        f'issued_at: "{stamp(now - timedelta(minutes=1))}"\n'
        f'expires: "{stamp(now + timedelta(days=30))}"\n'
        f"components:\n{components}"
    )
