"""Delivering telemetry to a CloudEvents HTTP endpoint.

Events are POSTed in structured mode: one event as
``application/cloudevents+json``, or up to :data:`MAX_BATCH_EVENTS` as
``application/cloudevents-batch+json`` (a JSON array). Every request carries
``Authorization: Bearer <token>`` from the configured token source.

What each answer means for the events sent:

- 2xx: delivered; acknowledged in the outbox.
- connection error, timeout, 408, 429 or 5xx: transient; retried with
  exponential backoff and full jitter, up to ``max_attempts`` tries; after
  that the events stay queued for the next run. A receiver may thus see an
  event twice (for example when it answered too slowly): it drops duplicates
  by the event ``id``.
- 401, 403, 407: the credentials are wrong; a person must act. The events
  stay queued and this run stops.
- 3xx: the receiver moved; redirects are not followed (the token must not
  travel to another address), and the events stay queued until the URL in
  the configuration is fixed.
- any other 4xx: the receiver refuses the content for good; the
  events go to the dead letters with the status and the (capped) body. A
  refused batch is first split into single events, so that one bad event
  does not take the others with it.

Transport: ``http.client`` with TLS verified against the system store or the
configured CA bundle. Plain ``http`` is accepted only for a loopback host and
only with ``insecure_allow_http_loopback``, with a warning each time.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config import HttpSinkConfig
from ..errors import ConfigError
from ..gitsource import redact_url
from ..manifest import is_loopback_host
from ..netutil import connected_socket, hard_deadline
from .deliver import SINK_HTTP, DeliveryReport, Sleep, backoff_delay
from .outbox import Outbox, PendingEvent

logger = logging.getLogger(__name__)

CONTENT_TYPE_SINGLE = "application/cloudevents+json"
CONTENT_TYPE_BATCH = "application/cloudevents-batch+json"
MAX_BATCH_EVENTS = 100
MAX_BATCH_BYTES = 1024 * 1024
MAX_EVENTS_PER_RUN = 1000
# One exchange may take at most this many times the per-read timeout.
DEADLINE_FACTOR = 3
MAX_RESPONSE_BYTES = 64 * 1024
MAX_ERROR_BODY_CHARS = 2000
MAX_RETRY_AFTER_SECONDS = 60.0
USER_AGENT = "centops-agent"

_RETRYABLE = frozenset({408, 429})
_AUTH_REJECTED = frozenset({401, 403, 407})


@dataclass(frozen=True)
class Endpoint:
    """A checked delivery URL."""

    scheme: str
    host: str
    port: int | None
    target: str  # path and query
    display: str  # the URL without user information, for logs


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (brackets and case aside)."""
    return is_loopback_host(host.strip("[]").lower())


def check_url(url: str, *, insecure_allow_http_loopback: bool) -> Endpoint:
    """Accept ``https`` anywhere, ``http`` only on loopback with the switch.

    Raises ConfigError for anything else (a person must fix the URL).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    display = redact_url(url)
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"telemetry URL {display} holds credentials",
            reason="config-invalid",
            hint="give the token through telemetry.http.token, not the URL",
        )
    if not host or parts.scheme not in ("https", "http"):
        raise ConfigError(
            f"telemetry URL {display} is not an https URL", reason="config-invalid"
        )
    if parts.scheme == "http" and not (
        insecure_allow_http_loopback and is_loopback(host)
    ):
        raise ConfigError(
            f"telemetry URL {display} is plain http",
            reason="insecure-url",
            hint="use https; plain http is only for loopback tests, with "
            "insecure_allow_http_loopback",
        )
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Endpoint(parts.scheme, host, parts.port, target, display)


@dataclass(frozen=True)
class _Answer:
    """One exchange: a status and capped body, or the transport failure."""

    status: int | None
    body: str = ""
    failure: str | None = None
    retry_after: float | None = None


class HttpSink:
    """POSTs this client's pending events to the CloudEvents endpoint."""

    def __init__(
        self,
        config: HttpSinkConfig,
        *,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.endpoint = check_url(
            config.url,
            insecure_allow_http_loopback=config.insecure_allow_http_loopback,
        )
        self.max_attempts = max(1, config.max_attempts)
        self.sleep = sleep
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self._token = config.token.read() if config.token is not None else None
        self._tls: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"HttpSink(url={self.endpoint.display!r})"

    def deliver(self, outbox: Outbox) -> DeliveryReport:
        """Send pending events in order; stop at the first batch that fails.

        Never raises for a network or server failure; see the module
        docstring for what each answer does to the events.
        """
        pending = outbox.pending(SINK_HTTP, limit=MAX_EVENTS_PER_RUN)
        delivered = dead = attempts = 0
        error: str | None = None
        reason: str | None = None
        for batch in self._batches(pending):
            result = self._send_batch(outbox, batch)
            delivered += result.delivered
            dead += result.dead_lettered
            attempts += result.attempts
            if result.error is not None:
                error, reason = result.error, result.reason
                break
        return DeliveryReport(
            sink=SINK_HTTP,
            delivered=delivered,
            attempts=attempts,
            remaining=outbox.counts().get(SINK_HTTP, 0),
            dead_lettered=dead,
            error=error,
            reason=reason,
        )

    def _batches(self, pending: Sequence[PendingEvent]) -> list[list[PendingEvent]]:
        if not self.config.batch:
            return [[item] for item in pending]
        batches: list[list[PendingEvent]] = []
        current: list[PendingEvent] = []
        size = 0
        for item in pending:
            length = len(json.dumps(item.event))
            if current and (
                len(current) >= MAX_BATCH_EVENTS or size + length > MAX_BATCH_BYTES
            ):
                batches.append(current)
                current, size = [], 0
            current.append(item)
            size += length
        if current:
            batches.append(current)
        return batches

    def _send_batch(
        self, outbox: Outbox, batch: list[PendingEvent], *, single: bool | None = None
    ) -> DeliveryReport:
        """Send one batch (or single event) with retries; ack or dead-letter it."""
        if single is None:
            single = not self.config.batch
        if single:
            body = json.dumps(batch[0].event).encode()
            content_type = CONTENT_TYPE_SINGLE
        else:
            body = json.dumps([item.event for item in batch]).encode()
            content_type = CONTENT_TYPE_BATCH
        answer = _Answer(status=None, failure="not sent")
        attempt = 0
        for attempt in range(1, self.max_attempts + 1):
            answer = self._post(body, content_type)
            status = answer.status
            if status is not None and 200 <= status < 300:
                outbox.ack(batch)
                logger.debug(
                    "telemetry: %d event(s) to %s (HTTP %d, try %d)",
                    len(batch),
                    self.endpoint.display,
                    status,
                    attempt,
                )
                return DeliveryReport(SINK_HTTP, delivered=len(batch), attempts=attempt)
            if status is not None and 300 <= status < 400:
                return DeliveryReport(
                    SINK_HTTP,
                    attempts=attempt,
                    error=f"{self.endpoint.display} redirects (HTTP {status}); "
                    "events stay queued until telemetry.http.url is updated",
                    reason="http-redirected",
                )
            if status in _AUTH_REJECTED:
                return DeliveryReport(
                    SINK_HTTP,
                    attempts=attempt,
                    error=f"{self.endpoint.display} rejected the token (HTTP {status})",
                    reason="http-auth-rejected",
                )
            if status is not None and status < 500 and status not in _RETRYABLE:
                return self._refused(outbox, batch, answer, attempts=attempt)
            if answer.failure == "tls":
                break  # a certificate problem does not heal by retrying
            if attempt < self.max_attempts:
                delay = backoff_delay(attempt, rng=self.rng)
                if answer.retry_after is not None:
                    delay = max(delay, answer.retry_after)
                logger.debug(
                    "telemetry: POST %d/%d to %s failed (%s); retry in %.2fs",
                    attempt,
                    self.max_attempts,
                    self.endpoint.display,
                    answer.failure or f"HTTP {status}",
                    delay,
                )
                self.sleep(delay)
        what = answer.failure or f"HTTP {answer.status}"
        return DeliveryReport(
            SINK_HTTP,
            attempts=attempt,
            error=f"{self.endpoint.display}: {what} after {attempt} tries; "
            "events stay queued",
            reason="http-tls-failed" if answer.failure == "tls" else "http-unavailable",
        )

    def _refused(
        self,
        outbox: Outbox,
        batch: list[PendingEvent],
        answer: _Answer,
        *,
        attempts: int,
    ) -> DeliveryReport:
        """A permanent refusal: isolate the refused event(s), dead-letter them."""
        if len(batch) > 1:
            # Send the batch's events one by one: only the bad ones are lost.
            delivered = dead = 0
            for item in batch:
                result = self._send_batch(outbox, [item], single=True)
                delivered += result.delivered
                dead += result.dead_lettered
                attempts += result.attempts
                if result.error is not None:
                    return DeliveryReport(
                        SINK_HTTP,
                        delivered=delivered,
                        attempts=attempts,
                        dead_lettered=dead,
                        error=result.error,
                        reason=result.reason,
                    )
            return DeliveryReport(
                SINK_HTTP, delivered=delivered, attempts=attempts, dead_lettered=dead
            )
        why = f"HTTP {answer.status} from {self.endpoint.display}: {answer.body}"
        for item in batch:
            outbox.dead_letter(SINK_HTTP, item.path, why)
        logger.warning(
            "telemetry: %s refused event %s (HTTP %s); moved to the dead letters",
            self.endpoint.display,
            batch[0].event.get("id"),
            answer.status,
        )
        return DeliveryReport(SINK_HTTP, attempts=attempts, dead_lettered=len(batch))

    # -- one exchange --------------------------------------------------------

    def _post(self, body: bytes, content_type: str) -> _Answer:
        """One POST with the configured timeout; the body read is capped."""
        headers = {
            "Content-Type": content_type,
            "Accept": "application/json, text/plain;q=0.5",
            "User-Agent": USER_AGENT,
        }
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        connection = self._connection()
        # Per-read timeouts do not bound a receiver that drips its answer.
        limit = DEADLINE_FACTOR * float(self.config.timeout_seconds)
        try:
            with hard_deadline(connected_socket(connection), limit):
                connection.request(
                    "POST", self.endpoint.target, body=body, headers=headers
                )
                response = connection.getresponse()
                raw = response.read(MAX_RESPONSE_BYTES)
            return _Answer(
                status=response.status,
                body=_printable(raw),
                retry_after=_retry_after(response.getheader("Retry-After")),
            )
        except ssl.SSLCertVerificationError as exc:
            return _Answer(status=None, failure="tls", body=str(exc)[:200])
        except TimeoutError:
            return _Answer(status=None, failure="timeout")
        except (OSError, http.client.HTTPException) as exc:
            return _Answer(status=None, failure=type(exc).__name__)
        finally:
            connection.close()

    def _connection(self) -> http.client.HTTPConnection:
        endpoint, timeout = self.endpoint, float(self.config.timeout_seconds)
        if endpoint.scheme == "https":
            if self._tls is None:
                cafile = self.config.ca_bundle
                self._tls = ssl.create_default_context(
                    cafile=str(cafile) if cafile else None
                )
            return http.client.HTTPSConnection(
                endpoint.host, endpoint.port, timeout=timeout, context=self._tls
            )
        logger.warning(
            "telemetry: sending to %s over plain http "
            "(insecure_allow_http_loopback is set)",
            endpoint.display,
        )
        return http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)


def _printable(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return text if len(text) <= MAX_ERROR_BODY_CHARS else text[:MAX_ERROR_BODY_CHARS]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a numeric Retry-After header, capped; None otherwise."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
