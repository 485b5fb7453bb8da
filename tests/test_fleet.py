"""Scenarios for the fleet view: folding, rendering and the command line.

Folding and rendering are pure and are driven from synthetic event tables.
The HTML report is rendered by headless Chromium and its screenshot is
checked for the chart's colours where the chart is drawn. Without Chromium
the browser test skips locally and fails under ``CI``.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from centops.agent.telemetry.events import ComponentOutcome, make_event
from centops.tools import fleet
from centops.tools.fleet_cli import fleet_app
from centops.tools.stack.gitserver import WorkRepo, init_bare

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
STALE_AFTER = 3 * HOUR
COMMIT_7 = "7" * 40
COMMIT_8 = "8" * 40


def _event(
    client_id: str,
    kind: str,
    outcome: str,
    at: datetime,
    *,
    serial: int | None = None,
    channel: str = "stable",
    components: list[ComponentOutcome] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    return make_event(
        kind=kind,
        client_id=client_id,
        channel=channel,
        outcome=outcome,
        serial=serial,
        commit={7: COMMIT_7, 8: COMMIT_8}.get(serial or 0),
        components=components,
        reason=reason,
        now=at,
    )


def _jsonl(events: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def synthetic_fleet() -> dict[str, bytes]:
    """Four clients on "stable" and one on "beta", as a table of events.

    - web-1: applied 7, then 8: succeeded on 8.
    - web-2: applied 7, then failed on 8 (component "api", health check); its
      file holds a line that is not JSON and a second copy of its first event.
    - web-3: applied 7 long ago and was not heard of since: stale.
    - web-4: applied 8; its file also holds a rewritten copy of an event of
      its own (same id, other content) and a line claiming to be web-1.
    - beta-1: applied 8 on channel beta.
    """
    t0 = NOW - 10 * HOUR
    failed = ComponentOutcome(
        "api", "image", "2.0", None, "failed", reason="health-timeout"
    )
    web1 = [
        _event("web-1", "update.succeeded", "succeeded", t0, serial=7),
        _event("web-1", "update.started", "started", t0 + 4 * HOUR, serial=8),
        _event("web-1", "update.succeeded", "succeeded", t0 + 4 * HOUR, serial=8),
    ]
    web2 = [
        _event("web-2", "update.succeeded", "succeeded", t0 + HOUR, serial=7),
        _event(
            "web-2",
            "update.failed",
            "failed",
            t0 + 5 * HOUR,
            serial=8,
            components=[failed],
            reason="install-failed",
        ),
    ]
    web3 = [_event("web-3", "update.succeeded", "succeeded", t0 + HOUR, serial=7)]
    web4_applied = _event(
        "web-4", "update.succeeded", "succeeded", t0 + 6 * HOUR, serial=8
    )
    rewritten = json.loads(json.dumps(web4_applied))
    rewritten["data"]["serial"] = 99  # the same id again, with other content
    impostor = _event("web-1", "update.failed", "failed", NOW - HOUR, serial=8)
    web4 = [web4_applied, rewritten, impostor]
    beta = [
        _event("beta-1", "update.succeeded", "succeeded", t0, serial=8, channel="beta")
    ]
    return {
        "web-1": _jsonl(web1),
        "web-2": _jsonl(web2) + b"not json\n" + _jsonl(web2[:1]),  # re-sent copy
        "web-3": _jsonl(web3),
        "web-4": _jsonl(web4) + _jsonl(web1[:1]),  # a copy of web-1's event id
        "beta-1": _jsonl(beta),
    }


def _view() -> fleet.FleetView:
    # Seen 6.5 hours after the first report: web-3 (5.5 h silent) is stale.
    seen = NOW - 10 * HOUR + timedelta(hours=6.5)
    return fleet.fold(synthetic_fleet(), now=seen, stale_after=STALE_AFTER)


# --------------------------------------------------------------------------- #
# Folding
# --------------------------------------------------------------------------- #


def test_fold_gives_each_client_its_applied_serial_outcome_and_staleness() -> None:
    clients = {c.client_id: c for c in _view().clients}
    assert set(clients) == {"web-1", "web-2", "web-3", "web-4", "beta-1"}

    assert (clients["web-1"].serial, clients["web-1"].outcome) == (8, "succeeded")
    assert clients["web-1"].commit == COMMIT_8
    assert not clients["web-1"].stale

    web2 = clients["web-2"]
    assert (web2.serial, web2.commit, web2.outcome) == (7, COMMIT_7, "failed")
    assert (web2.failing_component, web2.failing_reason) == ("api", "health-timeout")

    assert clients["web-3"].stale and clients["web-3"].serial == 7
    assert clients["beta-1"].channel == "beta"


def test_fold_drops_rewritten_duplicates_and_lines_speaking_for_others() -> None:
    view = _view()
    web4 = next(c for c in view.clients if c.client_id == "web-4")
    assert web4.serial == 8  # the first copy of the id wins, not the rewrite
    assert web4.outcome == "succeeded"  # the impostor line claiming web-1: ignored
    web1 = next(c for c in view.clients if c.client_id == "web-1")
    assert web1.outcome == "succeeded"
    assert view.duplicates == 2  # the rewrite, and web-2's re-sent event
    assert view.rejected == 3  # "not json", the impostor, web-1's event copied


def test_fold_counts_clients_per_serial_per_channel_and_their_rollout() -> None:
    channels = {c.channel: c for c in _view().channels}
    stable = channels["stable"]
    assert dict(stable.serials) == {"7": 2, "8": 2}
    assert (stable.clients, stable.failing, stable.stale) == (4, 1, 1)
    timeline = [(p.time, dict(p.counts)) for p in stable.timeline]
    t0 = NOW - 10 * HOUR
    assert timeline == [
        (t0, {"7": 1}),
        (t0 + HOUR, {"7": 3}),
        (t0 + 4 * HOUR, {"7": 2, "8": 1}),
        (t0 + 6 * HOUR, {"7": 2, "8": 2}),
    ]
    assert dict(channels["beta"].serials) == {"8": 1}


def test_fold_of_nothing_is_an_empty_fleet() -> None:
    view = fleet.fold({}, now=NOW, stale_after=STALE_AFTER)
    assert view.clients == () and view.channels == ()
    assert "CentOps fleet" in fleet.render_html(view)


@pytest.mark.parametrize(
    "line",
    [
        b"[]",
        b'{"id": 1, "type": "x", "time": "2025-01-01T00:00:00Z", "data": {}}',
        b'{"id": "a", "type": "x", "time": "yesterday", '
        b'"data": {"client_id": "c", "channel": "s"}}',
        b'{"id": "a", "type": "x", "time": "2025-01-01T00:00:00", '
        b'"data": {"client_id": "c", "channel": "s"}}',  # no time zone
        b'{"id": "a", "type": "x", "time": "2025-01-01T00:00:00Z", '
        b'"data": {"client_id": "other", "channel": "s"}}',
        b"\xff\xfe",
        b"[" * 200_000,  # nesting deep enough to exhaust a recursive parser
        b'{"id": "' + b"a" * 70_000 + b'"}',
        b'{"id": "a", "type": "x", "time": "9999-12-31T00:00:00Z", '
        b'"data": {"client_id": "c", "channel": "s"}}',  # never stale otherwise
    ],
)
def test_hostile_lines_are_skipped(line: bytes) -> None:
    view = fleet.fold({"c": line + b"\n"}, now=NOW, stale_after=STALE_AFTER)
    assert view.clients == () and view.rejected == 1


def test_a_client_cannot_hide_another_by_copying_its_event_ids() -> None:
    victim = _event("victim", "update.succeeded", "succeeded", NOW - HOUR, serial=7)
    thief = json.loads(json.dumps(victim))
    thief["data"]["client_id"] = "a-thief"  # sorts first, same event id
    files = {"a-thief": _jsonl([thief]), "victim": _jsonl([victim])}
    view = fleet.fold(files, now=NOW, stale_after=STALE_AFTER)
    assert [c.client_id for c in view.clients] == ["a-thief", "victim"]


def test_html_escapes_what_clients_wrote() -> None:
    hostile = _event("web-1", "update.failed", "failed", NOW, serial=7)
    hostile["data"]["reason"] = "<script>alert(1)</script>"
    hostile["data"]["channel"] = '"><img src=x>'
    view = fleet.fold({"web-1": _jsonl([hostile])}, now=NOW, stale_after=STALE_AFTER)
    page = fleet.render_html(view)
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;" in page


def test_json_rendering_round_trips() -> None:
    data = json.loads(fleet.render_json(_view()))
    assert data["channels"][1]["serials"] == {"7": 2, "8": 2}
    assert data["clients"][0]["client_id"] == "beta-1"
    assert data["stale_after_seconds"] == 3 * 3600


# --------------------------------------------------------------------------- #
# The command line, on a real repository
# --------------------------------------------------------------------------- #


@pytest.fixture
def results_repo(tmp_path: Path) -> Path:
    bare = init_bare(tmp_path / "fleet.git")
    work = WorkRepo.clone(bare, tmp_path / "work", branch="centops-results")
    files = {
        f"clients/{cid}/events.jsonl": data for cid, data in synthetic_fleet().items()
    }
    files["README.md"] = b"not a client file\n"
    files["clients/x/events.jsonl"] = b"{}\n"  # no valid event in it
    files["clients/a/b/events.jsonl"] = synthetic_fleet()["web-1"]  # not a client
    files["clients/UPPER/events.jsonl"] = synthetic_fleet()["web-1"]
    work.commit_files(files, "reports")
    work.push("centops-results")
    return bare


def test_status_reads_the_results_branch_of_a_local_repository(
    results_repo: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    out = tmp_path / "fleet.json"
    result = runner.invoke(
        fleet_app,
        [
            "status",
            "--repo",
            str(results_repo),
            "--format",
            "json",
            "--output",
            str(out),
            "--interval-seconds",
            "86400",
            "--stale-intervals",
            "1000",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [c["client_id"] for c in data["clients"]] == [
        "beta-1",
        "web-1",
        "web-2",
        "web-3",
        "web-4",
    ]
    assert not any(c["stale"] for c in data["clients"])

    text = tmp_path / "fleet.txt"
    table = runner.invoke(
        fleet_app, ["status", "--repo", str(results_repo), "--output", str(text)]
    )
    assert table.exit_code == 0, table.output
    written = text.read_text()
    assert "web-2" in written and "health-timeout" in written
    assert "2 duplicate event(s) ignored; 4 invalid line(s) skipped." in written


def test_status_of_a_repository_without_results_says_so(tmp_path: Path) -> None:
    bare = init_bare(tmp_path / "empty.git")
    result = CliRunner().invoke(fleet_app, ["status", "--repo", str(bare)])
    assert result.exit_code == 2
    assert "no branch centops-results" in result.output


# --------------------------------------------------------------------------- #
# The HTML report in a real browser
# --------------------------------------------------------------------------- #


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat, width, height, channels = 8, b"", 0, 0, 3
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(
                ">IIBBBBB", body
            )
            assert depth == 8 and colour in (2, 6) and interlace == 0
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        row = bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = row[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                row[i] = (row[i] + pred) & 0xFF
        previous = row
        rgb = (
            bytes(row)
            if channels == 3
            else bytes(b for n, b in enumerate(row) if n % 4 != 3)
        )
        rows.append(rgb)
    return width, height, rows


def _hex(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed (make test-deps installs it)")
    return found


def test_html_report_draws_each_channels_rollout_in_a_browser(tmp_path: Path) -> None:
    browser = _chromium()
    report = tmp_path / "report.html"
    report.write_text(fleet.render_html(_view()), encoding="utf-8")
    shot = tmp_path / "report.png"
    profile = tmp_path / "profile"
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1000,800",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shot.exists(), done.stderr.decode()[-2000:]
    width, height, rows = decode_png(shot.read_bytes())
    assert (width, height) == (1000, 800)

    # The first channel ("beta") has serial 8 only; the second ("stable") 7
    # and 8. Its chart sits below the first one: count colours by region.
    def count(colour: str, top: int, bottom: int) -> int:
        r, g, b = _hex(colour)
        hits = 0
        for row in rows[top:bottom]:
            for x in range(fleet.CHART_WIDTH + 40):
                if (
                    abs(row[3 * x] - r)
                    + abs(row[3 * x + 1] - g)
                    + abs(row[3 * x + 2] - b)
                    <= 12
                ):
                    hits += 1
        return hits

    first, second = fleet.PALETTE[0], fleet.PALETTE[1]
    first_chart = (40, 40 + fleet.CHART_HEIGHT + 40)
    second_chart = (
        first_chart[1],
        min(height, first_chart[1] + fleet.CHART_HEIGHT + 120),
    )
    # beta: one serial, drawn in the first colour across its chart.
    assert count(first, *first_chart) > 20_000
    assert count(second, *first_chart) < 200  # only the legend swatch, if any
    # stable: serials 7 and 8, in the first and second colours.
    assert count(first, *second_chart) > 10_000
    assert count(second, *second_chart) > 5_000
    # And nothing of the charts below the second one.
    assert count(first, second_chart[1] + 100, height) < 500
