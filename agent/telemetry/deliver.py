"""Delivering the outbox to every enabled sink after a sync.

Each sink has its own queue in the :class:`~.outbox.Outbox`, and each runs in
its own thread here, so a sink that is down (or slow to give up) never holds
back or duplicates the other. Whatever a sink could not deliver stays queued
for the next run; nothing here raises for a delivery problem: the outcome of
each sink is a :class:`DeliveryReport`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from ..config import AgentConfig
from .outbox import Outbox

logger = logging.getLogger(__name__)

SINK_GIT = "git"
SINK_HTTP = "http"

# Exponential backoff between retries of one delivery, with full jitter so
# that clients which failed together do not retry together.
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 8.0

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class DeliveryReport:
    """What one sink did with its queue in one delivery run.

    ``attempts`` counts tries of the network exchange (a push, or a POST),
    ``remaining`` the events still queued afterwards, ``error`` and ``reason``
    describe why the run stopped early (None when it did not).
    """

    sink: str
    delivered: int = 0
    attempts: int = 0
    remaining: int = 0
    dead_lettered: int = 0
    error: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def backoff_delay(
    attempt: int,
    *,
    rng: random.Random | None = None,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
) -> float:
    """Seconds to wait after failed try number ``attempt`` (1-based).

    Full jitter: uniform in ``[0, min(cap, base * 2**(attempt-1))]``.
    """
    ceiling = min(cap, base * (2 ** max(0, min(attempt - 1, 30))))
    return (rng or random).uniform(0.0, ceiling)


def sinks_for(config: AgentConfig) -> list[str]:
    """The sinks telemetry is queued for and delivered to, in a stable order."""
    telemetry = config.telemetry
    if not telemetry.enabled:
        return []
    sinks = []
    if telemetry.results_branch.enabled:
        sinks.append(SINK_GIT)
    if telemetry.http is not None:
        sinks.append(SINK_HTTP)
    return sinks


def deliver_all(
    config: AgentConfig, outbox: Outbox, *, sleep: Sleep = time.sleep
) -> dict[str, DeliveryReport]:
    """Deliver the pending events of every enabled sink; one report per sink.

    Sinks run concurrently. A sink that fails, even with an unexpected
    exception, yields a report with ``error`` set and leaves its events
    queued; the other sink is unaffected.
    """
    sinks = [sink for sink in sinks_for(config) if sink in outbox.sinks]
    for sink in set(sinks_for(config)) - set(sinks):
        logger.warning("telemetry sink %s has no outbox queue; skipped", sink)
    if not sinks:
        return {}
    with ThreadPoolExecutor(
        max_workers=len(sinks), thread_name_prefix="deliver"
    ) as pool:
        futures = {
            sink: pool.submit(_guarded, sink, config, outbox, sleep) for sink in sinks
        }
        reports = {sink: future.result() for sink, future in futures.items()}
    for report in reports.values():
        if report.ok:
            logger.debug("telemetry %s: %s", report.sink, report)
        else:
            logger.warning(
                "telemetry %s: %d delivered, %d still queued: %s",
                report.sink,
                report.delivered,
                report.remaining,
                report.error,
            )
    return reports


def _run_sink(
    sink: str, config: AgentConfig, outbox: Outbox, sleep: Sleep
) -> DeliveryReport:
    # The sink modules are imported only when a delivery runs: the no-op poll
    # path never pays for http.client and ssl.
    if sink == SINK_GIT:
        from .gitsink import GitResultsSink

        return GitResultsSink.from_config(config, sleep=sleep).deliver(outbox)
    from .httpsink import HttpSink

    http = config.telemetry.http
    if http is None:
        raise ValueError("the http sink is not configured")
    return HttpSink(http, sleep=sleep).deliver(outbox)


def _guarded(
    sink: str, config: AgentConfig, outbox: Outbox, sleep: Sleep
) -> DeliveryReport:
    """Run one sink; turn any exception into a report so the other sink runs.

    Reading a token, building a sink and delivering all happen in here, so a
    configuration problem of one sink is that sink's report, not a crash.
    """
    try:
        return _run_sink(sink, config, outbox, sleep)
    except Exception as exc:
        reason = getattr(exc, "reason", "sink-crashed")
        logger.warning("telemetry sink %s failed: %s", sink, exc, exc_info=True)
        return DeliveryReport(
            sink=sink,
            remaining=outbox.counts().get(sink, 0),
            error=f"{type(exc).__name__}: {exc}"[:600],
            reason=str(reason),
        )
