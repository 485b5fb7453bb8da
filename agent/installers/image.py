"""Container images: pull by digest into a Docker Engine, redeploy, roll back.

The manifest pins an image as ``repository@sha256:...``; that digest is what
the engine pulls and verifies, never a tag. For a component the client
declares a container for (``docker.containers`` in the agent configuration),
the new image replaces the running container only once it is healthy.

Plan of :meth:`ImageInstaller.install`:

1. refuse a registry outside ``docker.allowed_registries`` (before any pull);
2. pull ``repository@digest`` through the engine's low-level event stream,
   bounded by ``docker.pull_timeout_seconds``; any event with an ``error``
   key fails the pull with the engine's own words;
3. confirm the image's ``RepoDigests`` holds ``repository@digest`` and tag it
   locally as ``centops/<component>:<version>``;
4. when a container is declared: clear handover containers left by an
   interrupted run, start the new container beside the old one, wait until it
   is healthy (bounded), then remove the old one and give the new one its
   name; if it never becomes healthy, remove it, put the old one back and
   raise ``InstallError(reason="rolled-back")``.

Only the client's :class:`~centops.agent.config.ContainerSpec` decides how a
container runs; the manifest names an image and nothing else, and containers
never run privileged. Registry credentials come from the client's Docker
configuration or ``docker.credentials_file``, never from the manifest, and
are never logged.

The docker SDK is imported inside the methods: the agent's no-op poll must
not pay for it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..config import ContainerSpec, DockerConfig
from ..errors import (
    CentOpsError,
    ConfigError,
    InstallError,
    RemoteContentError,
    TransportError,
)
from ..fsutil import read_regular
from ..manifest import Component, ImageSource
from .base import InstallContext, InstalledRecord, InstallResult, Progress

log = logging.getLogger(__name__)

# The docker SDK ships no type information; its objects are Any here.
DockerClient = Any

API_TIMEOUT_S = 60  # one engine API call (not a whole pull)
MAX_PULL_EVENTS = 100_000
MAX_CREDENTIALS_BYTES = 1024 * 1024
MAX_ENGINE_MESSAGE_CHARS = 800
HEALTH_POLL_S = 0.5
STOP_TIMEOUT_S = 10  # SIGTERM, then SIGKILL, when a container is stopped
MAX_HEALTH_OUTPUT_CHARS = 200

LOCAL_REPOSITORY = "centops"
HANDOVER_SUFFIX = "-centops-next"
LABEL_COMPONENT = "io.centops.component"
LABEL_VERSION = "io.centops.version"
LABEL_DIGEST = "io.centops.digest"
# The client's own container name: several clients (or agents) may share an
# engine, and each must only ever touch its own containers.
LABEL_CONTAINER = "io.centops.container"

_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_DOCKER_HUB_KEYS = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)

# What the engine says, mapped to who must act. First match wins; the
# engine's message is always kept in the error.
_PULL_FAILURES: tuple[tuple[re.Pattern[str], type[CentOpsError], str], ...] = (
    (
        re.compile(r"verification failed|digest did not match|does not match", re.I),
        RemoteContentError,
        "image-digest-mismatch",
    ),
    (
        re.compile(r"manifest unknown|not found|does not exist", re.I),
        RemoteContentError,
        "image-not-found",
    ),
    (
        re.compile(r"unauthorized|authentication required|denied", re.I),
        ConfigError,
        "registry-unauthorized",
    ),
    (
        re.compile(
            r"connection refused|no such host|dial tcp|i/o timeout|"
            r"connection reset|tls handshake|server gave http response|"
            r"request canceled|timeout exceeded",
            re.I,
        ),
        TransportError,
        "registry-unreachable",
    ),
)


class _Unhealthy(Exception):
    """The new container did not become healthy; the message says why."""


class ImageInstaller:
    """Installs ``image`` components: pull by digest, then redeploy if declared."""

    kind = "image"

    def is_current(
        self, component: Component, record: InstalledRecord | None, ctx: InstallContext
    ) -> bool:
        """Whether the pinned image is present and, if declared, runs alone.

        Looks only at the engine, never at the registry and never at
        ``record``: the image must hold ``repository@digest`` in its
        ``RepoDigests`` and, when a container is declared for the component,
        exactly one container of the component exists, under its configured
        name, running that image. Raises TransportError
        (``engine-unreachable``) when the engine does not answer.
        """
        source = _image_source(component)
        if not _registry_allowed(source, ctx.config.docker):
            return False
        with _client(ctx.config.docker) as client:
            image_id = _verified_image_id(client, source)
            if image_id is None:
                return False
            spec = ctx.config.docker.container(component.name)
            if spec is None:
                return True
            return _runs_alone(client, component.name, spec, image_id)

    def install(self, component: Component, ctx: InstallContext) -> InstallResult:
        """Pull, verify and tag the pinned image; redeploy its container if any.

        Returns the image id and reference (and container id when one was
        deployed). Raises RemoteContentError (``registry-not-allowed``,
        ``image-digest-mismatch``, ``image-not-found``), TransportError
        (``engine-unreachable``, ``registry-unreachable``, ``pull-timeout``),
        ConfigError (``registry-credentials-invalid``,
        ``registry-unauthorized``) or InstallError (``rolled-back`` when the
        new container was not healthy and the previous one was put back,
        ``container-unhealthy`` when there was none to put back).
        """
        source = _image_source(component)
        docker_config = ctx.config.docker
        if not _registry_allowed(source, docker_config):
            raise RemoteContentError(
                f"{component.name}: registry {source.registry!r} of "
                f"{source.reference} is not in docker.allowed_registries "
                f"{list(docker_config.allowed_registries)}",
                reason="registry-not-allowed",
                hint="add the registry to docker.allowed_registries if it is trusted",
            )
        pinned = source
        auth = _auth_config(docker_config.credentials_file, source.registry)
        with _client(docker_config) as client:
            image_id = _verified_image_id(client, pinned)
            if image_id is None:
                _pull(client, pinned, component.name, auth, ctx, docker_config)
                image_id = _require_verified(client, pinned)
            local_tag = _tag_locally(client, image_id, component)
            ctx.logger.info(
                "%s %s: image %s", component.name, component.version, pinned.reference
            )
            detail: dict[str, Any] = {
                "image_id": image_id,
                "reference": pinned.reference,
                "local_tag": local_tag,
            }
            spec = docker_config.container(component.name)
            if spec is not None:
                detail["container_id"] = _redeploy(
                    client, component, spec, image_id, ctx
                )
        return InstallResult(detail=detail)


# -- the engine ----------------------------------------------------------------


@contextlib.contextmanager
def _client(config: DockerConfig) -> Iterator[DockerClient]:
    """A client of the configured engine, API version negotiated, then closed.

    ``docker.host`` unset means what the Docker CLI would use ($DOCKER_HOST,
    else the default socket). Raises TransportError (``engine-unreachable``).
    """
    import docker

    try:
        if config.host is None:
            client = docker.from_env(version="auto", timeout=API_TIMEOUT_S)
        else:
            client = docker.DockerClient(
                base_url=config.host, version="auto", timeout=API_TIMEOUT_S
            )
    except docker.errors.DockerException as e:
        raise _engine_unreachable(config, e) from e
    try:
        yield client
    except docker.errors.APIError as e:
        raise InstallError(
            f"the Docker Engine refused a request: {_short(str(e.explanation or e))}",
            reason="engine-refused",
        ) from e
    except (docker.errors.DockerException, OSError) as e:
        # requests' ConnectionError is an OSError: the engine went away.
        raise _engine_unreachable(config, e) from e
    finally:
        client.close()


def _engine_unreachable(config: DockerConfig, error: Exception) -> TransportError:
    where = config.host or "the default Docker host"
    return TransportError(
        f"the Docker Engine at {where} does not answer: {_short(str(error))}",
        reason="engine-unreachable",
        hint="start dockerd or fix docker.host in the agent configuration",
    )


def _short(text: str) -> str:
    return (
        text
        if len(text) <= MAX_ENGINE_MESSAGE_CHARS
        else text[:MAX_ENGINE_MESSAGE_CHARS] + "..."
    )


def _image_attrs(client: DockerClient, reference: str) -> dict[str, Any] | None:
    """The engine's inspect data of a local image, or None when absent."""
    import docker

    try:
        attrs: dict[str, Any] = client.api.inspect_image(reference)
    except docker.errors.NotFound:
        return None
    return attrs


def _same_repository(a: str, b: str) -> bool:
    """Whether two repository names are the same once Docker Hub is spelt out."""
    return _canonical_repository(a) == _canonical_repository(b)


def _canonical_repository(name: str) -> str:
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        if first not in _DOCKER_HUB_KEYS:
            return name
        name = rest
    return name if "/" in name else f"library/{name}"


def _verified_image_id(client: DockerClient, pinned: ImageSource) -> str | None:
    """The id of the local image whose RepoDigests hold the pin, or None.

    RepoDigests is written by the engine only for content it pulled and
    checked against that digest; a tag or an image id proves nothing.
    """
    attrs = _image_attrs(client, pinned.reference)
    if attrs is None:
        return None
    for entry in attrs.get("RepoDigests") or ():
        repository, _, digest = str(entry).rpartition("@")
        if digest == pinned.digest and _same_repository(repository, pinned.repository):
            return str(attrs["Id"])
    return None


def _require_verified(client: DockerClient, pinned: ImageSource) -> str:
    image_id = _verified_image_id(client, pinned)
    if image_id is None:
        raise RemoteContentError(
            f"after the pull, no local image records {pinned.reference} "
            "in its RepoDigests",
            reason="image-digest-mismatch",
        )
    return image_id


def _local_tag(component: Component) -> tuple[str, str]:
    """``(centops/<name>, <version>)``, with characters Docker refuses replaced."""
    name = _TAG_UNSAFE.sub("-", component.name.lower()).strip(".-_") or "component"
    version = _TAG_UNSAFE.sub("_", component.version)[:128].lstrip(".-") or "unknown"
    return f"{LOCAL_REPOSITORY}/{name}", version


def _tag_locally(client: DockerClient, image_id: str, component: Component) -> str:
    repository, tag = _local_tag(component)
    client.api.tag(image_id, repository, tag, force=True)
    return f"{repository}:{tag}"


# -- pulling ---------------------------------------------------------------------


def _pull(
    client: DockerClient,
    pinned: ImageSource,
    label: str,
    auth: dict[str, str] | None,
    ctx: InstallContext,
    config: DockerConfig,
) -> None:
    """Pull exactly ``repository@digest``; raise with the engine's message.

    The pull is bounded by ``config.pull_timeout_seconds`` plus at most one
    API read timeout (the deadline is checked between events).
    """
    import docker

    deadline = time.monotonic() + config.pull_timeout_seconds
    log.debug("pulling %s", pinned.reference)
    try:
        stream = client.api.pull(
            pinned.repository,
            tag=pinned.digest,
            stream=True,
            decode=True,
            auth_config=auth,
        )
        _read_pull_events(stream, pinned, label, ctx.progress, deadline, config)
    except docker.errors.APIError as e:
        raise _pull_failure(pinned, str(e.explanation or e)) from e


def _read_pull_events(
    stream: Iterable[dict[str, Any]],
    pinned: ImageSource,
    label: str,
    progress: Progress,
    deadline: float,
    config: DockerConfig,
) -> None:
    for count, event in enumerate(stream, start=1):
        if "error" in event:
            raise _pull_failure(pinned, str(event["error"]))
        if count > MAX_PULL_EVENTS:
            raise InstallError(
                f"pull of {pinned.reference} sent over {MAX_PULL_EVENTS} events",
                reason="image-pull-failed",
            )
        if time.monotonic() > deadline:
            raise TransportError(
                f"pull of {pinned.reference} took over {config.pull_timeout_seconds} s",
                reason="pull-timeout",
                hint="raise docker.pull_timeout_seconds or check the registry",
            )
        _report_layer(event, label, progress)


def _report_layer(event: dict[str, Any], label: str, progress: Progress) -> None:
    """Forward a layer's byte count ("Downloading", "Extracting") to progress."""
    detail = event.get("progressDetail") or {}
    layer = event.get("id")
    current = detail.get("current")
    if not layer or not isinstance(current, int):
        return
    total = detail.get("total")
    stage = str(event.get("status", "")).lower()
    progress(
        f"{label} {stage} {layer}",
        current,
        total if isinstance(total, int) and total > 0 else None,
    )


def _pull_failure(pinned: ImageSource, message: str) -> CentOpsError:
    """The error for an engine's pull failure ``message``, kept verbatim."""
    text = _short(message.strip())
    for pattern, kind, reason in _PULL_FAILURES:
        if pattern.search(text):
            return kind(f"pull of {pinned.reference} failed: {text}", reason=reason)
    return InstallError(
        f"pull of {pinned.reference} failed: {text}", reason="image-pull-failed"
    )


# -- policy and credentials ----------------------------------------------------


def _image_source(component: Component) -> ImageSource:
    if not isinstance(component.source, ImageSource):
        raise InstallError(
            f"{component.name}: the image installer got a {component.kind} component",
            reason="wrong-installer",
        )
    return component.source


def _registry_allowed(source: ImageSource, config: DockerConfig) -> bool:
    """An empty allow-list admits every registry; otherwise it must be listed."""
    allowed = config.allowed_registries
    return not allowed or source.registry in allowed


def _auth_config(path: Path | None, registry: str) -> dict[str, str] | None:
    """Credentials for ``registry`` from a Docker ``config.json`` at ``path``.

    ``None`` when no file is configured (the SDK then reads the client's own
    Docker configuration) or the file has no entry for the registry. Only
    ``auths`` entries with ``auth`` (base64 ``user:password``) or
    ``username``/``password`` are read; credential helpers are left to the
    client's own Docker configuration. Raises ConfigError
    (``registry-credentials-invalid``) without quoting the file's content.
    """
    if path is None:
        return None
    auths = _read_auths(path)
    for key, entry in auths.items():
        if _registry_key(str(key)) == _registry_key(registry) and isinstance(
            entry, dict
        ):
            log.debug("using registry credentials for %s from %s", registry, path)
            return _credentials(entry, path, registry)
    log.debug("no credentials for %s in %s", registry, path)
    return None


def _invalid_credentials(path: Path, what: str) -> ConfigError:
    return ConfigError(
        f"docker.credentials_file {path}: {what}",
        reason="registry-credentials-invalid",
        hint="use the Docker config.json format: "
        '{"auths": {"REGISTRY": {"auth": base64("user:password")}}}',
    )


def _read_auths(path: Path) -> dict[str, Any]:
    try:
        data = read_regular(path, MAX_CREDENTIALS_BYTES)
    except OSError as e:
        raise _invalid_credentials(path, f"cannot read it ({e.strerror})") from e
    if len(data) > MAX_CREDENTIALS_BYTES:
        raise _invalid_credentials(path, f"larger than {MAX_CREDENTIALS_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        # The error would quote the content, which holds secrets.
        raise _invalid_credentials(path, "not valid JSON") from None
    auths = document.get("auths") if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        raise _invalid_credentials(path, 'no "auths" mapping')
    return auths


def _registry_key(name: str) -> str:
    """A registry name as written in ``auths`` keys, reduced to its host."""
    host = name.split("://", 1)[-1].split("/", 1)[0].lower()
    return "docker.io" if host in _DOCKER_HUB_KEYS else host


def _credentials(entry: dict[str, Any], path: Path, registry: str) -> dict[str, str]:
    username, password = entry.get("username"), entry.get("password")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _invalid_credentials(
                path, f"the auth of {registry} is not base64 of user:password"
            ) from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise _invalid_credentials(
                path, f"the auth of {registry} has no ':' between user and password"
            )
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise _invalid_credentials(path, f"the entry of {registry} has no credentials")
    return {"username": username, "password": password, "serveraddress": registry}


# -- containers ----------------------------------------------------------------


def _containers_of(
    client: DockerClient, component: str, spec: ContainerSpec
) -> list[Any]:
    """Every container of the component on this client: those labelled with
    its container name, and the ones holding that name or its handover name."""
    import docker

    found = {
        c.id: c
        for c in client.containers.list(
            all=True, filters={"label": f"{LABEL_CONTAINER}={spec.name}"}
        )
    }
    for name in (spec.name, _handover_name(spec)):
        with contextlib.suppress(docker.errors.NotFound):
            container = client.containers.get(name)
            found.setdefault(container.id, container)
    return list(found.values())


def _handover_name(spec: ContainerSpec) -> str:
    return f"{spec.name}{HANDOVER_SUFFIX}"


def _name_of(container: Any) -> str:
    return str(container.name).lstrip("/")


def _runs_alone(
    client: DockerClient, component: str, spec: ContainerSpec, image_id: str
) -> bool:
    containers = _containers_of(client, component, spec)
    if len(containers) != 1:
        return False
    only = containers[0]
    return (
        _name_of(only) == spec.name
        and only.attrs.get("Image") == image_id
        and only.attrs.get("State", {}).get("Status") == "running"
    )


def _run_options(spec: ContainerSpec) -> dict[str, Any]:
    """The run options, all from the client's spec; never privileged.

    ``ports`` maps a container port (``"8080/tcp"``) to a host port;
    ``volumes`` maps a host path or volume name to a path in the container.
    """
    options: dict[str, Any] = {
        "environment": dict(spec.environment),
        "restart_policy": {"Name": spec.restart_policy},
        "privileged": False,
    }
    if spec.command:
        options["command"] = list(spec.command)
    if spec.ports:
        options["ports"] = dict(spec.ports)
    if spec.volumes:
        options["volumes"] = {
            source: {"bind": target, "mode": "rw"} for source, target in spec.volumes
        }
    if spec.network is not None:
        options["network_mode"] = spec.network
    return options


def _remove(container: Any) -> None:
    """Stop (bounded) and remove a container; one already gone is fine."""
    import docker

    with contextlib.suppress(docker.errors.NotFound):
        container.stop(timeout=STOP_TIMEOUT_S)
        container.remove(force=True)


def _redeploy(
    client: DockerClient,
    component: Component,
    spec: ContainerSpec,
    image_id: str,
    ctx: InstallContext,
) -> str:
    """Replace the component's container with one of ``image_id``; its id.

    Plan: (1) remove handover containers an interrupted run left behind;
    (2) keep the current one (the one named ``spec.name``) running unless it
    holds host ports the new one needs; (3) start the new one under a
    handover name and wait until it is healthy; (4) remove the old one and
    rename the new one, or, on failure, remove the new one and start the old
    one again. Raises InstallError (``rolled-back``, ``container-unhealthy``).
    """
    # 1. Anything but the container named spec.name is a leftover handover
    #    (or a stray copy): only verified, named containers survive.
    current = None
    for container in _containers_of(client, component.name, spec):
        if _name_of(container) == spec.name:
            current = container
        else:
            log.info(
                "%s: removing leftover container %s",
                component.name,
                _name_of(container),
            )
            _remove(container)
    if current is not None and _is_healthy_on(current, image_id):
        _label_check(current, component)
        return str(current.id)

    # 2. Host ports cannot be bound twice: then the old one stops first.
    stopped_old = False
    if current is not None and spec.ports:
        current.stop(timeout=STOP_TIMEOUT_S)
        stopped_old = True

    # 3. Start the new one and wait for it.
    new = client.containers.run(
        image_id,
        detach=True,
        name=_handover_name(spec),
        labels={
            LABEL_COMPONENT: component.name,
            LABEL_VERSION: component.version,
            LABEL_DIGEST: component.digest,
            LABEL_CONTAINER: spec.name,
        },
        **_run_options(spec),
    )
    try:
        _wait_healthy(new, spec)
    except _Unhealthy as e:
        _remove(new)
        _restore(current, stopped_old)
        raise _rollback_error(component, current, str(e)) from None
    except BaseException:
        _remove(new)
        _restore(current, stopped_old)
        raise

    # 4. Hand over.
    if current is not None:
        _remove(current)
    new.rename(spec.name)
    ctx.logger.info(
        "%s %s: container %s is healthy and replaced the previous one",
        component.name,
        component.version,
        spec.name,
    )
    return str(new.id)


def _is_healthy_on(container: Any, image_id: str) -> bool:
    """A container already running the image with no failing healthcheck."""
    state = container.attrs.get("State", {})
    health = (state.get("Health") or {}).get("Status")
    return (
        container.attrs.get("Image") == image_id
        and state.get("Status") == "running"
        and health in (None, "healthy")
    )


def _label_check(container: Any, component: Component) -> None:
    labels = container.attrs.get("Config", {}).get("Labels") or {}
    if labels.get(LABEL_COMPONENT) != component.name:
        log.warning(
            "%s: container %s runs the pinned image without centops labels",
            component.name,
            _name_of(container),
        )


def _restore(previous: Any, was_stopped: bool) -> None:
    """Start the previous container again if this run stopped it."""
    if previous is not None and was_stopped:
        previous.start()


def _rollback_error(component: Component, previous: Any, why: str) -> InstallError:
    if previous is None:
        return InstallError(
            f"{component.name} {component.version}: the new container {why}; "
            "it was removed and there was no previous container to keep",
            reason="container-unhealthy",
        )
    return InstallError(
        f"{component.name} {component.version}: the new container {why}; "
        f"it was removed and the previous container {_name_of(previous)} kept",
        reason="rolled-back",
        hint="fix the image or its healthcheck and publish a new version",
    )


def _wait_healthy(container: Any, spec: ContainerSpec) -> None:
    """Return once the container is healthy; raise _Unhealthy saying why.

    Healthy means its HEALTHCHECK reports "healthy" or, for an image without
    one, that it ran ``healthy_after_seconds`` with no exit and no restart.
    Bounded by ``health_timeout_seconds``.
    """
    started = time.monotonic()
    deadline = started + spec.health_timeout_seconds
    status = "created"
    while time.monotonic() < deadline:
        container.reload()
        status = _judge(container.attrs)
        if status == "healthy":
            return
        if (
            status == "running"
            and time.monotonic() - started >= spec.healthy_after_seconds
        ):
            return
        time.sleep(HEALTH_POLL_S)
    raise _Unhealthy(
        f"was not healthy within {spec.health_timeout_seconds} s (last state {status})"
    )


def _judge(attrs: dict[str, Any]) -> str:
    """``healthy``, ``running`` (no healthcheck), or a wait state; raise on failure.

    ``attrs`` is the container's inspect data (``RestartCount`` sits beside
    ``State``, not in it).
    """
    state: dict[str, Any] = attrs.get("State") or {}
    code = state.get("ExitCode", 0)
    if state.get("Status") in ("exited", "dead") or state.get("Restarting"):
        raise _Unhealthy(f"exited with code {code}")
    if int(attrs.get("RestartCount") or 0) > 0:
        raise _Unhealthy(f"was restarted after exiting with code {code}")
    health = state.get("Health")
    if health is None:
        return (
            "running" if state.get("Status") == "running" else str(state.get("Status"))
        )
    status = str(health.get("Status", ""))
    if status == "unhealthy":
        raise _Unhealthy(f"is unhealthy: {_last_probe(health)}")
    return status


def _last_probe(health: dict[str, Any]) -> str:
    probes = health.get("Log") or []
    if not probes:
        return "no probe output"
    last = probes[-1]
    output = str(last.get("Output", "")).strip()[:MAX_HEALTH_OUTPUT_CHARS]
    return f"healthcheck exit code {last.get('ExitCode')}" + (
        f" ({output})" if output else ""
    )


__all__ = ["ImageInstaller"]
