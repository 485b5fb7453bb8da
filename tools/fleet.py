"""The fleet view: what every client reported on the results branch.

Clients append CloudEvents to ``clients/<client_id>/events.jsonl`` on the
results branch (see ``centops.agent.telemetry.gitsink``). This module:

- reads that branch (a shallow fetch of that one branch, with byte caps),
  :func:`read_results`;
- folds the events into per-client and per-channel state, :func:`fold`, a
  pure function of the files' bytes and the current time;
- renders the state as JSON, :func:`render_json`, or as a self-contained
  HTML report whose rollout charts are inline SVG (no script, no network),
  :func:`render_html`. The CLI (``fleet_cli``) renders the table.

Everything on the branch is input from clients, so it is treated as hostile:
a file speaks only for the client its path names, event ids are deduplicated
(the first copy wins), malformed lines are counted and skipped, and every
text is escaped in HTML.
"""

from __future__ import annotations

import html
import json
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from centops.agent.errors import ConfigError, RemoteContentError, TransportError
from centops.agent.gitsource import Credentials, git_environment, redact_url, run_git

DEFAULT_BRANCH = "centops-results"
MAX_CLIENTS = 100_000
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_TOTAL_BYTES = 512 * 1024 * 1024
MAX_LINES_PER_FILE = 200_000
MAX_TIMELINE_POINTS = 2_000
MAX_SERIALS_CHARTED = 10
FETCHED_REF = "refs/centops/fleet"
UPDATE_PREFIX = "io.centops.update."
FAILING_OUTCOMES = frozenset({"failed", "refused", "rolled-back", "stale"})
NO_SERIAL = "none"

_EVENTS_FILE = re.compile(r"clients/([a-z0-9][a-z0-9-]{0,62})/events\.jsonl")
# Colour of the n-th serial of a channel, oldest first (Tableau 10).
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
OTHER_COLOUR = "#7f7f7f"


# --------------------------------------------------------------------------- #
# The folded state
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ClientState:
    """One client as its events describe it."""

    client_id: str
    channel: str
    serial: int | None  # from the latest update.succeeded
    commit: str | None
    applied_at: datetime | None
    outcome: str  # of the latest update.* event (else of the latest event)
    last_event: str
    last_seen: datetime
    stale: bool
    failing_component: str | None = None
    failing_reason: str | None = None
    message: str | None = None
    events: int = 0

    @property
    def serial_label(self) -> str:
        return NO_SERIAL if self.serial is None else str(self.serial)


@dataclass(frozen=True)
class RolloutPoint:
    """How many clients of a channel ran each serial from ``time`` on."""

    time: datetime
    counts: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ChannelView:
    channel: str
    clients: int
    stale: int
    failing: int
    serials: tuple[tuple[str, int], ...]  # serial label -> clients, oldest first
    timeline: tuple[RolloutPoint, ...]


@dataclass(frozen=True)
class FleetView:
    generated_at: datetime
    stale_after: timedelta
    clients: tuple[ClientState, ...]
    channels: tuple[ChannelView, ...]
    duplicates: int = 0  # events whose id was seen before (dropped)
    rejected: int = 0  # lines that were not a valid event of their file's client
    notes: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- #
# Folding (pure)
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Event:
    time: datetime
    order: int
    type: str
    data: dict[str, Any]


MAX_LINE_BYTES = 64 * 1024  # an event is far smaller (the outbox caps it)
MAX_CLOCK_SKEW = timedelta(minutes=10)


def parse_time(text: object) -> datetime | None:
    """An RFC 3339 timestamp as an aware UTC datetime; None when invalid."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value.astimezone(UTC) if value.tzinfo else None


def _serial_key(label: str) -> tuple[int, int, str]:
    # "none" first, then serials in numeric order.
    if label == NO_SERIAL:
        return (0, 0, label)
    return (1, int(label), label) if label.lstrip("-").isdigit() else (2, 0, label)


def fold(
    files: Mapping[str, bytes], *, now: datetime, stale_after: timedelta
) -> FleetView:
    """Fold each client's events file into the fleet's state.

    ``files`` maps a client id to the bytes of its ``events.jsonl``. A line
    counts only if it is a JSON object with a string ``id``, a ``type``, a
    valid ``time`` and ``data.client_id`` equal to the file's client (a file
    never speaks for another client). Within a client, the first copy of an
    id wins; later copies, even rewritten ones, are counted as duplicates and
    ignored. Ids are per client, so one client cannot hide another's events
    by copying their ids. Events stamped later than ``now`` plus
    MAX_CLOCK_SKEW are refused: they would keep a client from ever looking
    stale.
    """
    seen: set[tuple[str, str]] = set()
    duplicates = rejected = 0
    per_client: dict[str, list[_Event]] = {}
    notes: list[str] = []
    order = 0
    for client_id in sorted(files)[:MAX_CLIENTS]:
        lines = files[client_id].splitlines()
        if len(lines) > MAX_LINES_PER_FILE:
            notes.append(f"{client_id}: only the last {MAX_LINES_PER_FILE} lines read")
            lines = lines[-MAX_LINES_PER_FILE:]
        for line in lines:
            if not line.strip():
                continue
            event = _parse_event(line, client_id)
            if event is None or event[1].time > now + MAX_CLOCK_SKEW:
                rejected += 1
                continue
            event_id, parsed = event
            if (client_id, event_id) in seen:
                duplicates += 1
                continue
            seen.add((client_id, event_id))
            order += 1
            per_client.setdefault(client_id, []).append(
                _Event(parsed.time, order, parsed.type, parsed.data)
            )
    clients = tuple(
        _client_state(cid, events, now=now, stale_after=stale_after)
        for cid, events in sorted(per_client.items())
    )
    return FleetView(
        generated_at=now,
        stale_after=stale_after,
        clients=clients,
        channels=_channels(clients, per_client),
        duplicates=duplicates,
        rejected=rejected,
        notes=tuple(notes),
    )


def _parse_event(line: bytes, client_id: str) -> tuple[str, _Event] | None:
    if len(line) > MAX_LINE_BYTES:
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    event_id, etype, data = value.get("id"), value.get("type"), value.get("data")
    moment = parse_time(value.get("time"))
    if not (
        isinstance(event_id, str)
        and 0 < len(event_id) <= 128
        and isinstance(etype, str)
        and isinstance(data, dict)
        and data.get("client_id") == client_id
        and isinstance(data.get("channel"), str)
        and moment is not None
    ):
        return None
    return event_id, _Event(moment, 0, etype, data)


def _client_state(
    client_id: str, events: list[_Event], *, now: datetime, stale_after: timedelta
) -> ClientState:
    events = sorted(events, key=lambda e: (e.time, e.order))
    latest = events[-1]
    updates = [e for e in events if e.type.startswith(UPDATE_PREFIX)]
    succeeded = [e for e in updates if e.type == UPDATE_PREFIX + "succeeded"]
    decisive = updates[-1] if updates else latest
    outcome = str(decisive.data.get("outcome") or decisive.type)
    applied = succeeded[-1] if succeeded else None
    component = reason = message = None
    if outcome in FAILING_OUTCOMES:
        component, reason = _failing_component(decisive.data)
        message = _text(decisive.data.get("message"))
    return ClientState(
        client_id=client_id,
        channel=str(latest.data.get("channel")),
        serial=_int(applied.data.get("serial")) if applied else None,
        commit=_text(applied.data.get("commit")) if applied else None,
        applied_at=applied.time if applied else None,
        outcome=outcome,
        last_event=latest.type,
        last_seen=latest.time,
        stale=now - latest.time > stale_after,
        failing_component=component,
        failing_reason=reason,
        message=message,
        events=len(events),
    )


def _failing_component(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    components = data.get("components")
    if isinstance(components, list):
        for item in components[:256]:
            if isinstance(item, dict) and item.get("outcome") in (
                "failed",
                "rolled-back",
            ):
                return _text(item.get("component")), _text(
                    item.get("reason") or data.get("reason")
                )
    return None, _text(data.get("reason"))


def _channels(
    clients: tuple[ClientState, ...], per_client: Mapping[str, list[_Event]]
) -> tuple[ChannelView, ...]:
    views = []
    timelines = _timelines(per_client)
    for channel in sorted({c.channel for c in clients}):
        members = [c for c in clients if c.channel == channel]
        counts: dict[str, int] = {}
        for client in members:
            counts[client.serial_label] = counts.get(client.serial_label, 0) + 1
        views.append(
            ChannelView(
                channel=channel,
                clients=len(members),
                stale=sum(c.stale for c in members),
                failing=sum(c.outcome in FAILING_OUTCOMES for c in members),
                serials=tuple(
                    sorted(counts.items(), key=lambda kv: _serial_key(kv[0]))
                ),
                timeline=timelines.get(channel, ()),
            )
        )
    return tuple(views)


def _timelines(
    per_client: Mapping[str, list[_Event]],
) -> dict[str, tuple[RolloutPoint, ...]]:
    """Per channel, the serial counts after each applied update, in time order."""
    applied = sorted(
        (
            (
                e.time,
                e.order,
                cid,
                str(e.data.get("channel")),
                _int(e.data.get("serial")),
            )
            for cid, events in per_client.items()
            for e in events
            if e.type == UPDATE_PREFIX + "succeeded"
        ),
    )
    where: dict[str, tuple[str, str]] = {}  # client -> (channel, serial label)
    points: dict[str, list[RolloutPoint]] = {}
    for moment, _, cid, channel, serial in applied:
        where[cid] = (channel, NO_SERIAL if serial is None else str(serial))
        counts: dict[str, int] = {}
        for member_channel, label in where.values():
            if member_channel == channel:
                counts[label] = counts.get(label, 0) + 1
        ordered = tuple(sorted(counts.items(), key=lambda kv: _serial_key(kv[0])))
        series = points.setdefault(channel, [])
        if series and series[-1].time == moment:
            series[-1] = RolloutPoint(moment, ordered)
        else:
            series.append(RolloutPoint(moment, ordered))
    return {ch: tuple(series[-MAX_TIMELINE_POINTS:]) for ch, series in points.items()}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object, limit: int = 500) -> str | None:
    return value[:limit] if isinstance(value, str) else None


# --------------------------------------------------------------------------- #
# Rendering (pure)
# --------------------------------------------------------------------------- #


def iso(moment: datetime | None) -> str | None:
    """RFC 3339 UTC, to the second; None stays None."""
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def view_as_dict(view: FleetView) -> dict[str, Any]:
    """The view as JSON-ready data (times as RFC 3339 UTC strings)."""
    clients = []
    for client in view.clients:
        item = asdict(client)
        for key in ("applied_at", "last_seen"):
            item[key] = iso(item[key])
        clients.append(item)
    channels = [
        {
            "channel": ch.channel,
            "clients": ch.clients,
            "stale": ch.stale,
            "failing": ch.failing,
            "serials": dict(ch.serials),
            "timeline": [
                {"time": iso(p.time), "serials": dict(p.counts)} for p in ch.timeline
            ],
        }
        for ch in view.channels
    ]
    return {
        "generated_at": iso(view.generated_at),
        "stale_after_seconds": int(view.stale_after.total_seconds()),
        "clients": clients,
        "channels": channels,
        "duplicates": view.duplicates,
        "rejected": view.rejected,
        "notes": list(view.notes),
    }


def render_json(view: FleetView) -> str:
    return json.dumps(view_as_dict(view), indent=2, sort_keys=True) + "\n"


def serial_colours(serials: Iterable[str]) -> dict[str, str]:
    """A colour per serial label, oldest first; the rest share one grey."""
    ordered = sorted(set(serials), key=_serial_key)
    newest = ordered[-MAX_SERIALS_CHARTED:]
    return {
        s: (PALETTE[newest.index(s)] if s in newest else OTHER_COLOUR) for s in ordered
    }


CHART_WIDTH = 900
CHART_HEIGHT = 240
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 44, 12, 10, 28


def render_chart(channel: ChannelView, *, end: datetime) -> str:
    """Stacked steps of clients per serial over time, as an inline SVG."""
    e = html.escape
    width, height = CHART_WIDTH, CHART_HEIGHT
    plot_w = width - _PAD_LEFT - _PAD_RIGHT
    plot_h = height - _PAD_TOP - _PAD_BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" shape-rendering="crispEdges" '
        f'aria-label="rollout of channel {e(channel.channel)}">',
        f'<rect x="{_PAD_LEFT}" y="{_PAD_TOP}" width="{plot_w}" height="{plot_h}" '
        'fill="#ffffff" stroke="#cccccc"/>',
    ]
    points = channel.timeline
    if not points:
        parts.append(
            f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" '
            'fill="#666666">no update applied yet</text></svg>'
        )
        return "".join(parts)
    start = points[0].time
    finish = max(end, points[-1].time)
    span = max((finish - start).total_seconds(), 1.0)
    top = max(max(sum(n for _, n in p.counts) for p in points), 1)
    colours = serial_colours(label for p in points for label, _ in p.counts)

    def x_of(moment: datetime) -> float:
        return _PAD_LEFT + plot_w * (moment - start).total_seconds() / span

    # The last step runs to the end of the chart, so at least some width shows.
    for index, point in enumerate(points):
        x0 = x_of(point.time)
        x1 = x_of(points[index + 1].time) if index + 1 < len(points) else x_of(finish)
        x1 = max(x1, x0 + 1.0)
        base = 0
        for label, count in point.counts:
            y1 = _PAD_TOP + plot_h - plot_h * base / top
            y0 = _PAD_TOP + plot_h - plot_h * (base + count) / top
            parts.append(
                f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" '
                f'height="{y1 - y0:.1f}" fill="{colours[label]}">'
                f"<title>serial {e(label)}: {count} client(s)</title></rect>"
            )
            base += count
    axis_y = _PAD_TOP + plot_h
    parts += [
        f'<text x="{_PAD_LEFT - 6}" y="{_PAD_TOP + 10}" text-anchor="end" '
        f'font-size="11" fill="#333333">{top}</text>',
        f'<text x="{_PAD_LEFT - 6}" y="{axis_y}" text-anchor="end" '
        'font-size="11" fill="#333333">0</text>',
        f'<text x="{_PAD_LEFT}" y="{axis_y + 18}" font-size="11" fill="#333333">'
        f"{e(iso(start) or '')}</text>",
        f'<text x="{_PAD_LEFT + plot_w}" y="{axis_y + 18}" text-anchor="end" '
        f'font-size="11" fill="#333333">{e(iso(finish) or "")}</text>',
        "</svg>",
    ]
    return "".join(parts)


_STYLE = """
body{margin:0;padding:12px 16px;font:13px/1.4 sans-serif;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 8px}h2{font-size:15px;margin:12px 0 4px}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
.legend span{display:inline-block;margin-right:12px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
.failed{color:#b00020}.stale{color:#8a6d00}
"""


def render_html(view: FleetView) -> str:
    """A self-contained HTML report: charts first, then channels and clients."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        "<title>CentOps fleet</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>CentOps fleet — {len(view.clients)} client(s), generated "
        f"{e(iso(view.generated_at) or '')}</h1>",
    ]
    for channel in view.channels:
        colours = serial_colours(
            [s for s, _ in channel.serials]
            + [label for p in channel.timeline for label, _ in p.counts]
        )
        out.append(f'<section id="channel-{e(channel.channel)}">')
        out.append(f"<h2>Channel {e(channel.channel)}: rollout over time</h2>")
        out.append(render_chart(channel, end=view.generated_at))
        legend = "".join(
            f'<span><i class="swatch" style="background:{colour}"></i>'
            f"serial {e(label)}: {dict(channel.serials).get(label, 0)}</span>"
            for label, colour in colours.items()
        )
        out.append(f'<div class="legend">{legend}</div>')
        out.append(
            f"<p>{channel.clients} client(s), {channel.failing} failing, "
            f"{channel.stale} stale</p></section>"
        )
    out.append(
        "<h2>Clients</h2><table><tr><th>client</th><th>channel</th><th>serial</th>"
        "<th>commit</th><th>outcome</th><th>last seen</th><th>failing</th></tr>"
    )
    for client in view.clients:
        css = "failed" if client.outcome in FAILING_OUTCOMES else ""
        seen = e(iso(client.last_seen) or "")
        if client.stale:
            seen += ' <span class="stale">(stale)</span>'
        failing = " ".join(
            e(part)
            for part in (client.failing_component, client.failing_reason)
            if part
        )
        out.append(
            f"<tr><td>{e(client.client_id)}</td><td>{e(client.channel)}</td>"
            f"<td>{e(client.serial_label)}</td><td>{e((client.commit or '')[:12])}</td>"
            f'<td class="{css}">{e(client.outcome)}</td><td>{seen}</td>'
            f"<td>{failing}</td></tr>"
        )
    out.append("</table>")
    if view.duplicates or view.rejected:
        out.append(
            f"<p>{view.duplicates} duplicate event(s) ignored; "
            f"{view.rejected} invalid line(s) skipped.</p>"
        )
    out.append("</body></html>\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- #
# Reading the results branch
# --------------------------------------------------------------------------- #


def read_results(
    repo: str,
    branch: str = DEFAULT_BRANCH,
    *,
    credentials: Credentials | None = None,
    timeout: float = 120.0,
) -> dict[str, bytes]:
    """Every client's ``events.jsonl`` on ``branch`` of ``repo`` (URL or path).

    Fetches only ``branch``, at depth 1, into a temporary bare repository.
    Files outside ``clients/<id>/events.jsonl``, or above
    :data:`MAX_FILE_BYTES`, are skipped; the total read is capped at
    :data:`MAX_TOTAL_BYTES`.

    Raises ConfigError when the branch does not exist, TransportError when
    git fails, RemoteContentError when the branch holds more than the caps.
    """
    url = repo if "://" in repo else Path(repo).resolve().as_uri()
    env = git_environment(credentials)
    with tempfile.TemporaryDirectory(prefix="centops-fleet-") as scratch:
        git_dir = str(Path(scratch) / "results.git")

        def git(*args: str, input_bytes: bytes | None = None) -> bytes:
            return run_git(
                ["--git-dir", git_dir, *args],
                env=env,
                timeout=timeout,
                credentials=credentials,
                input_bytes=input_bytes,
                what=f"git {args[0]}",
            )

        run_git(["init", "--bare", "--quiet", git_dir], env=env, timeout=timeout)
        try:
            git(
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--depth=1",
                "--",
                url,
                f"+refs/heads/{branch}:{FETCHED_REF}",
            )
        except TransportError as exc:
            if "couldn't find remote ref" in exc.message.lower():
                raise ConfigError(
                    f"{redact_url(repo)} has no branch {branch}",
                    reason="results-branch-missing",
                    hint="no client has reported yet, or pass --branch",
                ) from exc
            raise
        listing = git("ls-tree", "-r", "-l", "-z", FETCHED_REF, "--", "clients")
        wanted: list[tuple[str, str]] = []
        total = 0
        for entry in listing.split(b"\0"):
            meta, _, path = entry.decode("utf-8", "replace").partition("\t")
            fields = meta.split()
            match = _EVENTS_FILE.fullmatch(path)
            if len(fields) != 4 or fields[1] != "blob" or match is None:
                continue
            size = int(fields[3]) if fields[3].isdigit() else MAX_FILE_BYTES + 1
            if size > MAX_FILE_BYTES:
                continue
            total += size
            if total > MAX_TOTAL_BYTES or len(wanted) >= MAX_CLIENTS:
                raise RemoteContentError(
                    f"{branch} holds more than {MAX_CLIENTS} clients or "
                    f"{MAX_TOTAL_BYTES} bytes of events",
                    reason="results-too-large",
                )
            wanted.append((match.group(1), fields[2]))
        if not wanted:
            return {}
        request = "".join(f"{oid}\n" for _, oid in wanted).encode()
        batch = git("cat-file", "--batch", input_bytes=request)
        return _split_batch(batch, wanted)


def _split_batch(batch: bytes, wanted: list[tuple[str, str]]) -> dict[str, bytes]:
    """Contents from ``git cat-file --batch`` output, in request order."""
    found: dict[str, bytes] = {}
    offset = 0
    for client_id, oid in wanted:
        header_end = batch.index(b"\n", offset)
        header = batch[offset:header_end].decode().split()
        if len(header) != 3 or header[0] != oid:
            raise RemoteContentError("unexpected git cat-file output", reason="git")
        size = int(header[2])
        found[client_id] = batch[header_end + 1 : header_end + 1 + size]
        offset = header_end + 1 + size + 1
    return found
