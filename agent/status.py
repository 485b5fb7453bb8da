"""``centops-agent status``: what is applied, and how the last sync ended."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .config import AgentConfig
from .state import StateDir
from .telemetry.outbox import Outbox


def collect_status(config: AgentConfig) -> dict[str, Any]:
    from .telemetry.deliver import sinks_for

    dirs = StateDir(config.state_dir)
    state = dirs.load()
    outbox = Outbox(dirs.outbox, sinks_for(config), max_events=10**9)
    try:
        last_poll = dirs.last_poll.read_text().strip()
    except OSError:
        last_poll = None
    return {
        "client_id": config.client_id,
        "channel": config.channel,
        "highest_serial": state.highest_serial,
        "applied": asdict(state.applied) if state.applied else None,
        "components": {name: asdict(rec) for name, rec in state.components.items()},
        "last_result": asdict(state.last_result) if state.last_result else None,
        "last_poll": last_poll,
        "telemetry": {
            "pending": outbox.counts(),
            "dead_letters": {s: len(outbox.dead_letters(s)) for s in outbox.sinks},
        },
    }


def render_status(report: dict[str, Any]) -> str:
    applied = report["applied"] or {}
    last = report["last_result"] or {}
    lines = [
        f"client   {report['client_id']}",
        f"channel  {report['channel']}",
        f"serial   {applied.get('serial', '-')}"
        f"  commit {str(applied.get('commit', '-'))[:12]}"
        f"  expires {applied.get('expires', '-')}",
        f"last     {last.get('outcome', 'never synced')} at {last.get('at', '-')}"
        + (
            f"  ({last['reason']}: {last.get('message')})" if last.get("reason") else ""
        ),
        f"polled   {report['last_poll'] or '-'}",
        "components:",
    ]
    for name, rec in sorted(report["components"].items()):
        lines.append(
            f"  {name:<24} {rec['version']:<14} {rec['kind']:<6} {rec['digest'][:19]}"
            f"  serial {rec['serial']}  {rec['installed_at']}"
        )
    if not report["components"]:
        lines.append("  (none installed)")
    pending = report["telemetry"]["pending"]
    dead = report["telemetry"]["dead_letters"]
    lines.append(
        "telemetry pending "
        + (", ".join(f"{k}={v}" for k, v in pending.items()) or "-")
        + "; dead letters "
        + (", ".join(f"{k}={v}" for k, v in dead.items()) or "-")
    )
    return "\n".join(lines)
