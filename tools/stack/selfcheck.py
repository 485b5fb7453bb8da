"""An end-to-end check that the container stack works on this machine.

Plan:
1. build the static sample binary;
2. start a registry and an engine;
3. push the sample images (twice for the healthy one: digests must match)
   and the multi-architecture index;
4. pull the healthy image by digest, check RepoDigests, run it without
   network and wait until it is healthy;
5. same for the unhealthy image, which must turn unhealthy;
6. pull the index by digest and find the index digest in RepoDigests;
7. pull an image never pulled before through the tampering proxy and
   expect the engine's refusal (for a known image the engine only sends
   HEAD for the manifest, so nothing could be altered);
8. stop everything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker

from . import engine
from .errors import PullError, StackError
from .images import AppKind, build_app, push_app, push_app_index
from .lifecycle import Stack, start_stack, stop_stack
from .tamper import TamperProxy

log = logging.getLogger(__name__)

VERIFICATION_ERROR = "verification failed for digest"


@dataclass
class Report:
    """What the self-check measured, step by step, in seconds."""

    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Record how long the block took under ``step``."""
        started = time.monotonic()
        yield
        self.timings[step] = time.monotonic() - started
        log.info("%s: %.2f s", step, self.timings[step])


def run(workdir: Path) -> Report:
    """Run the whole check under ``workdir``; raise :class:`StackError` on failure."""
    report = Report()
    with report.timed("build"):
        binary = build_app(workdir / "cache").read_bytes()
    with report.timed("start"):
        stack = start_stack(workdir)
    try:
        _check(stack, binary, report)
    finally:
        with report.timed("stop"):
            stop_stack(stack)
    return report


def _check(stack: Stack, binary: bytes, report: Report) -> None:
    url = stack.registry.url
    with report.timed("push"):
        healthy = push_app(url, "sample/healthy", "v1", binary=binary)
        again = push_app(url, "sample/healthy", "v1-again", binary=binary)
        unhealthy = push_app(
            url, "sample/unhealthy", "v1", binary=binary, kind=AppKind.UNHEALTHY
        )
        index = push_app_index(url, "sample/multi", "v1", binary=binary)
        # Never pulled before: the engine must fetch (and check) its manifest.
        fresh = push_app(url, "sample/tampered", "v1", binary=binary, version="fresh")
    if healthy != again:
        raise StackError(f"same image pushed twice gave {healthy} and {again}")
    client = engine.connect(stack.daemon.docker_host)
    try:
        with report.timed("pull+healthy"):
            _expect_health(client, stack, "sample/healthy", healthy, "healthy")
        with report.timed("pull+unhealthy"):
            _expect_health(client, stack, "sample/unhealthy", unhealthy, "unhealthy")
        with report.timed("pull index"):
            _pull_and_check_digest(client, f"{stack.registry.host}/sample/multi", index)
        with report.timed("tampered pull"):
            _expect_tamper_refused(client, stack, fresh)
    finally:
        client.close()


def _pull_and_check_digest(client: docker.DockerClient, repo: str, digest: str) -> None:
    engine.pull_by_digest(client, repo, digest)
    found = engine.repo_digests(client, f"{repo}@{digest}")
    if f"{repo}@{digest}" not in found:
        raise StackError(f"RepoDigests of {repo} are {found}, expected {repo}@{digest}")


def _expect_health(
    client: docker.DockerClient, stack: Stack, repo: str, digest: str, want: str
) -> None:
    _pull_and_check_digest(client, f"{stack.registry.host}/{repo}", digest)
    container = engine.run_detached(client, stack.ref(repo, digest))
    try:
        engine.wait_for_health(container, want)
    finally:
        engine.remove_container(container)


def _expect_tamper_refused(
    client: docker.DockerClient, stack: Stack, digest: str
) -> None:
    with TamperProxy(stack.registry.url) as proxy:
        try:
            engine.pull_by_digest(client, f"{proxy.host}/sample/tampered", digest)
        except PullError as e:
            if VERIFICATION_ERROR not in str(e):
                raise StackError(f"tampered pull failed for another reason: {e}") from e
            return
    raise StackError("the engine accepted a manifest that does not match its digest")
