"""Docker SDK helpers for the private engine: connect, pull by digest, health.

The SDK's high-level ``images.pull()`` hides the engine's own error (a
digest mismatch surfaces as "No such image"), so pulls read the low-level
event stream and fail on the first event that carries an ``error`` key.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import docker
from docker.models.containers import Container

from .errors import PullError, StackError

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_S = 60
MAX_PULL_EVENTS = 10_000
HEALTH_TIMEOUT_S = 30.0
HEALTH_POLL_S = 0.25


def connect(docker_host: str) -> docker.DockerClient:
    """A client for ``docker_host`` with the API version left to negotiation."""
    return docker.DockerClient(
        base_url=docker_host, version="auto", timeout=CLIENT_TIMEOUT_S
    )


def pull_by_digest(client: docker.DockerClient, repo: str, digest: str) -> None:
    """Pull ``repo@digest`` and read every event the engine sends.

    ``repo`` includes the registry host (``127.0.0.1:PORT/name``). Raises
    :class:`PullError` with the engine's own message when the engine refuses
    the request at once, when an event carries an ``error`` key, or when the
    stream exceeds :data:`MAX_PULL_EVENTS`.
    """
    try:
        stream = client.api.pull(repo, tag=digest, stream=True, decode=True)
        _read_pull_events(stream, f"{repo}@{digest}")
    except docker.errors.APIError as e:
        detail = e.explanation or str(e)
        raise PullError(f"pull of {repo}@{digest} failed: {detail}") from e


def _read_pull_events(stream: Iterable[dict[str, Any]], reference: str) -> None:
    for count, event in enumerate(stream, start=1):
        if count > MAX_PULL_EVENTS:
            raise PullError(f"pull of {reference} sent over {MAX_PULL_EVENTS} events")
        if "error" in event:
            raise PullError(f"pull of {reference} failed: {event['error']}")
        log.debug("pull event: %s", event)


def repo_digests(client: docker.DockerClient, reference: str) -> list[str]:
    """The ``RepoDigests`` of a local image (``repo@sha256:...`` entries)."""
    attrs: dict[str, Any] = client.api.inspect_image(reference)
    return list(attrs.get("RepoDigests") or [])


def run_detached(
    client: docker.DockerClient, reference: str, **options: Any
) -> Container:
    """Start a container of ``reference`` with networking disabled."""
    container: Container = client.containers.run(
        reference, detach=True, network_mode="none", **options
    )
    return container


def health_status(container: Container) -> str:
    """The container's current health status ("" if it has no healthcheck)."""
    container.reload()
    health = container.attrs.get("State", {}).get("Health") or {}
    status: str = health.get("Status", "")
    return status


def wait_for_health(
    container: Container, want: str, *, timeout_s: float = HEALTH_TIMEOUT_S
) -> None:
    """Wait until the health status is ``want`` ("healthy" or "unhealthy").

    Raises :class:`StackError` on timeout, naming the last status seen.
    """
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        status = health_status(container)
        if status == want:
            return
        time.sleep(HEALTH_POLL_S)
    raise StackError(
        f"container {container.short_id} health is {status!r} after "
        f"{timeout_s:.0f} s, expected {want!r}"
    )


def remove_container(container: Container) -> None:
    """Stop (briefly) and remove a container; missing is fine."""
    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True)
