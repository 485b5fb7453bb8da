"""RFC 3339 UTC timestamps, as manifests and state write them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

TIMESTAMP = re.compile(
    r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(?:Z|\+00:00)"
)


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp (``Z`` or ``+00:00``); ValueError if not."""
    match = TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(text)
    base = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    fraction = (match[2] or "0")[:6].ljust(6, "0")
    return base + timedelta(microseconds=int(fraction))


def format_timestamp(moment: datetime) -> str:
    """The RFC 3339 UTC text for ``moment``, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
