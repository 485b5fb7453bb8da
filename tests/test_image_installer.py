"""The image installer against a real registry and a real Docker Engine.

Session fixtures start one registry and one engine (``tools/stack``); where
they cannot start the tests skip, except under CI (env ``CI`` set), where that
is a failure. Scenarios that need the registry to go away start their own.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from centops.agent.config import (
    AgentConfig,
    ContainerSpec,
    DockerConfig,
    RepositoryConfig,
    TrustConfig,
)
from centops.agent.errors import (
    ConfigError,
    InstallError,
    RemoteContentError,
    TransportError,
)
from centops.agent.installers.base import InstallContext
from centops.agent.installers.image import (
    HANDOVER_SUFFIX,
    LABEL_COMPONENT,
    LABEL_CONTAINER,
    LABEL_DIGEST,
    LABEL_VERSION,
    ImageInstaller,
    _auth_config,
    _local_tag,
)
from centops.agent.manifest import Component, ImageSource
from centops.tools.stack import (
    AppKind,
    ImageConfig,
    LayerFile,
    Stack,
    TamperProxy,
    Target,
    push_app,
    push_app_index,
    push_image,
    start_registry,
    stop_registry,
)
from centops.tools.stack.images import APP_PATH, app_config, app_layers

VERIFICATION_FAILED = "verification failed for digest"
ABSENT_DIGEST = "sha256:" + "0" * 64
SECRET = "s3cret-password-never-logged"


# --- fixtures ---------------------------------------------------------------


@pytest.fixture
def component_name() -> str:
    """A fresh component name per test, so tests never share containers."""
    return f"app-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def containers_cleaned(
    client: docker.DockerClient, component_name: str
) -> Iterator[None]:
    yield
    for container in _containers(client, component_name):
        container.remove(force=True)


def _config(
    tmp_path: Path,
    docker_host: str,
    *,
    containers: dict[str, ContainerSpec] | None = None,
    allowed: tuple[str, ...] = (),
    credentials_file: Path | None = None,
    pull_timeout_seconds: int = 120,
) -> AgentConfig:
    """An agent configuration built from the dataclasses, for the image tests."""
    return AgentConfig(
        client_id="test-client",
        channel="stable",
        repository=RepositoryConfig(url=str(tmp_path / "repo.git")),
        trust=TrustConfig(
            trusted_root=tmp_path / "trusted_root.json",
            issuer="https://issuer.invalid",
            identities=("ci@example.invalid",),
        ),
        state_dir=tmp_path / "state",
        files_root=tmp_path / "files",
        docker=DockerConfig(
            host=docker_host,
            allowed_registries=allowed,
            credentials_file=credentials_file,
            pull_timeout_seconds=pull_timeout_seconds,
            containers=tuple(sorted((containers or {}).items())),
        ),
    )


def _context(config: AgentConfig, tmp_path: Path, **extra: Any) -> InstallContext:
    return InstallContext(
        config=config,
        serial=1,
        work_dir=tmp_path / "work",
        log_dir=tmp_path / "logs",
        **extra,
    )


def _spec(name: str, **overrides: Any) -> ContainerSpec:
    values: dict[str, Any] = {
        "name": f"centops-{name}",
        "network": "none",  # the test engine runs with --bridge=none
        "health_timeout_seconds": 30,
        "healthy_after_seconds": 1,
    }
    values.update(overrides)
    return ContainerSpec(**values)


def _component(name: str, repository: str, digest: str, version: str) -> Component:
    return Component(name, version, ImageSource(repository, digest, tag=version))


def _containers(client: docker.DockerClient, component: str) -> list[Any]:
    found = client.containers.list(
        all=True, filters={"label": f"{LABEL_COMPONENT}={component}"}
    )
    return list(found)


def _push(
    stack: Stack,
    binary: bytes,
    repo: str,
    version: str,
    kind: AppKind = AppKind.HEALTHY,
) -> tuple[str, str]:
    """Push a sample image; ``(repository with host, digest)``."""
    digest = push_app(
        stack.registry.url, repo, version, binary=binary, kind=kind, version=version
    )
    return f"{stack.registry.host}/{repo}", digest


def _image_present(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.api.inspect_image(reference)
    except docker.errors.NotFound:
        return False
    return True


# --- pulling ------------------------------------------------------------------


@pytest.mark.slow
def test_pull_by_digest_records_the_pin_and_tags_the_image_locally(
    stack: Stack, client: docker.DockerClient, app_binary: bytes, tmp_path: Path
) -> None:
    # A layer no earlier test pulled, so the engine really downloads it.
    fresh = app_binary + uuid.uuid4().bytes
    repository, digest = _push(stack, fresh, "pull/plain", "1.0")
    component = _component("plain", repository, digest, "1.0")
    seen: list[tuple[str, int, int | None]] = []
    ctx = _context(
        _config(tmp_path, stack.daemon.docker_host),
        tmp_path,
        progress=lambda label, done, total: seen.append((label, done, total)),
    )

    result = ImageInstaller().install(component, ctx)

    attrs = client.api.inspect_image(f"{repository}@{digest}")
    assert f"{repository}@{digest}" in attrs["RepoDigests"]
    assert "centops/plain:1.0" in attrs["RepoTags"]
    assert result.detail["image_id"] == attrs["Id"]
    assert result.detail["reference"] == f"{repository}@{digest}"
    assert seen, "no layer progress reported"
    assert ImageInstaller().is_current(component, None, ctx)


@pytest.mark.slow
def test_unchanged_manifest_needs_no_pull_even_with_the_registry_gone(
    client: docker.DockerClient,
    app_binary: bytes,
    tmp_path: Path,
    component_name: str,
    containers_cleaned: None,
    stack: Stack,
) -> None:
    # A registry of this test alone, so it can be stopped.
    registry = start_registry(tmp_path / "own-registry")
    digest = push_app(registry.url, "gone/app", "1", binary=app_binary)
    repository = f"{registry.host}/gone/app"
    component = _component(component_name, repository, digest, "1")
    config = _config(
        tmp_path,
        stack.daemon.docker_host,
        containers={component_name: _spec(component_name)},
    )
    ctx = _context(config, tmp_path)
    installer = ImageInstaller()
    try:
        assert not installer.is_current(component, None, ctx)
        installer.install(component, ctx)
    finally:
        stop_registry(registry)

    # With no registry at all, the second sync finds everything in place, and
    # even an install (after a lost record) touches nothing remote.
    assert installer.is_current(component, None, ctx)
    before = [c.id for c in _containers(client, component_name)]
    installer.install(component, ctx)
    assert [c.id for c in _containers(client, component_name)] == before


@pytest.mark.slow
@pytest.mark.parametrize("target", [Target.MANIFESTS, Target.BLOBS])
def test_tampered_content_is_refused_with_the_engine_message(
    stack: Stack,
    client: docker.DockerClient,
    app_binary: bytes,
    tmp_path: Path,
    target: Target,
) -> None:
    # A unique layer, so the engine must download and check everything.
    marker = {"/marker": LayerFile(f"tamper {target.value} {uuid.uuid4()}".encode())}
    repo = f"tampered/{target.value}"
    digest = push_image(
        stack.registry.url,
        repo,
        "v1",
        layers=[*app_layers(app_binary), marker],
        config=app_config(AppKind.HEALTHY, version="tampered"),
    )
    ctx = _context(_config(tmp_path, stack.daemon.docker_host), tmp_path)

    with TamperProxy(stack.registry.url, target) as proxy:
        repository = f"{proxy.host}/{repo}"
        component = _component("tampered", repository, digest, "1")
        with pytest.raises(RemoteContentError, match=VERIFICATION_FAILED) as caught:
            ImageInstaller().install(component, ctx)
        assert proxy.tampered >= 1

    assert caught.value.reason == "image-digest-mismatch"
    assert not _image_present(client, f"{repository}@{digest}")
    assert not _image_present(client, f"{stack.registry.host}/{repo}@{digest}")


@pytest.mark.slow
def test_digest_the_registry_lacks_is_image_not_found(
    stack: Stack, tmp_path: Path
) -> None:
    component = _component(
        "absent", f"{stack.registry.host}/pull/absent", ABSENT_DIGEST, "1"
    )
    ctx = _context(_config(tmp_path, stack.daemon.docker_host), tmp_path)

    with pytest.raises(RemoteContentError, match="manifest unknown") as caught:
        ImageInstaller().install(component, ctx)

    assert caught.value.reason == "image-not-found"


@pytest.mark.slow
def test_registry_down_is_a_transport_error(
    stack: Stack, app_binary: bytes, tmp_path: Path
) -> None:
    registry = start_registry(tmp_path / "doomed-registry")
    digest = push_app(registry.url, "down/app", "1", binary=app_binary, version="down")
    stop_registry(registry)
    component = _component("down", f"{registry.host}/down/app", digest, "1")
    ctx = _context(_config(tmp_path, stack.daemon.docker_host), tmp_path)

    with pytest.raises(TransportError) as caught:
        ImageInstaller().install(component, ctx)

    assert caught.value.reason == "registry-unreachable"
    assert registry.host in caught.value.message


@pytest.mark.parametrize("method", ["is_current", "install"])
def test_engine_down_is_a_transport_error(tmp_path: Path, method: str) -> None:
    no_engine = f"unix://{tmp_path / 'no-engine.sock'}"
    component = _component("offline", "127.0.0.1:1/x/app", ABSENT_DIGEST, "1")
    ctx = _context(_config(tmp_path, no_engine), tmp_path)
    installer = ImageInstaller()

    with pytest.raises(TransportError) as caught:
        if method == "is_current":
            installer.is_current(component, None, ctx)
        else:
            installer.install(component, ctx)

    assert caught.value.reason == "engine-unreachable"


@pytest.mark.parametrize(
    "repository",
    [
        "registry.evil.example/app",
        "docker.io/library/app",
        "app",  # Docker Hub, implicitly
        "127.0.0.1:5000.evil.example/app",
        "localhost/app",
    ],
)
def test_registry_outside_the_allow_list_is_refused_before_any_pull(
    tmp_path: Path, repository: str
) -> None:
    # The engine address is bogus: reaching it at all would fail differently.
    no_engine = f"unix://{tmp_path / 'no-engine.sock'}"
    config = _config(tmp_path, no_engine, allowed=("127.0.0.1:5000",))
    component = _component("outsider", repository, ABSENT_DIGEST, "1")

    with pytest.raises(RemoteContentError) as caught:
        ImageInstaller().install(component, _context(config, tmp_path))

    assert caught.value.reason == "registry-not-allowed"
    assert not ImageInstaller().is_current(component, None, _context(config, tmp_path))


def test_importing_the_installer_does_not_import_docker() -> None:
    # The agent's no-op poll imports the installers; docker costs ~100 ms.
    code = (
        "import sys, centops.agent.installers.image; sys.exit('docker' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- credentials --------------------------------------------------------------


def _write_auths(path: Path, auths: Any) -> Path:
    path.write_text(json.dumps({"auths": auths}))
    return path


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("key", "registry"),
    [
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
        ("https://index.docker.io/v1/", "docker.io"),
    ],
)
def test_credentials_are_read_from_the_configured_docker_config(
    tmp_path: Path, key: str, registry: str
) -> None:
    path = _write_auths(
        tmp_path / "config.json", {key: {"auth": _b64(f"bot:{SECRET}")}}
    )

    auth = _auth_config(path, registry)

    assert auth == {"username": "bot", "password": SECRET, "serveraddress": registry}


def test_no_credentials_for_another_registry(tmp_path: Path) -> None:
    path = _write_auths(tmp_path / "c.json", {"other:5000": {"auth": _b64("a:b")}})

    assert _auth_config(path, "127.0.0.1:5000") is None


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"not json " + SECRET.encode(), "not valid JSON"),
        (b"[]", "auths"),
        (json.dumps({"auths": []}).encode(), "auths"),
        (
            json.dumps({"auths": {"r:1": {"auth": "!!" + SECRET}}}).encode(),
            "not base64",
        ),
        (json.dumps({"auths": {"r:1": {"auth": _b64(SECRET)}}}).encode(), "no ':'"),
        (json.dumps({"auths": {"r:1": {"username": "x"}}}).encode(), "no credentials"),
        (b" " * (1024 * 1024 + 1), "larger than"),
    ],
    ids=["garbage", "list", "auths-list", "bad-b64", "no-colon", "no-pw", "huge"],
)
def test_malformed_credentials_file_is_a_config_error_that_quotes_no_secret(
    tmp_path: Path, content: bytes, why: str
) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)

    with pytest.raises(ConfigError, match=why) as caught:
        _auth_config(path, "r:1")

    assert caught.value.reason == "registry-credentials-invalid"
    assert SECRET not in caught.value.describe()


@pytest.mark.slow
def test_credentials_reach_the_pull_and_never_the_logs(
    stack: Stack,
    app_binary: bytes,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repository, digest = _push(stack, app_binary, "auth/app", "auth-1")
    path = _write_auths(
        tmp_path / "config.json",
        {stack.registry.host: {"auth": _b64(f"bot:{SECRET}")}},
    )
    config = _config(tmp_path, stack.daemon.docker_host, credentials_file=path)
    component = _component("auth", repository, digest, "1")

    with caplog.at_level(logging.DEBUG):
        ImageInstaller().install(component, _context(config, tmp_path))

    assert SECRET not in caplog.text
    assert _b64(f"bot:{SECRET}") not in caplog.text


# --- local names --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        ("web", "1.2.3", ("centops/web", "1.2.3")),
        ("web", "1.0+build.7", ("centops/web", "1.0_build.7")),
        ("web", "-rc", ("centops/web", "rc")),
        ("Web..", "v", ("centops/web", "v")),
        ("../etc", "1", ("centops/etc", "1")),
        ("ünï", "x" * 200, ("centops/n", "x" * 128)),
    ],
)
def test_local_tag_is_always_a_valid_docker_reference(
    name: str, version: str, expected: tuple[str, str]
) -> None:
    component = _component(name, "r:1/app", ABSENT_DIGEST, version)

    assert _local_tag(component) == expected


# --- multi-arch -----------------------------------------------------------------


@pytest.mark.slow
def test_multi_arch_index_digest_is_recognised_as_current(
    stack: Stack,
    client: docker.DockerClient,
    app_binary: bytes,
    tmp_path: Path,
    component_name: str,
    containers_cleaned: None,
) -> None:
    index = push_app_index(
        stack.registry.url, "multi/app", "v1", binary=app_binary, version="multi"
    )
    repository = f"{stack.registry.host}/multi/app"
    component = _component(component_name, repository, index, "multi")
    config = _config(
        tmp_path,
        stack.daemon.docker_host,
        containers={component_name: _spec(component_name)},
    )
    ctx = _context(config, tmp_path)
    installer = ImageInstaller()

    installer.install(component, ctx)

    assert installer.is_current(component, None, ctx)
    attrs = client.api.inspect_image(f"{repository}@{index}")
    assert attrs["Architecture"] == "amd64"


# --- redeploy -------------------------------------------------------------------


def _only_container(client: docker.DockerClient, component: str) -> Any:
    containers = _containers(client, component)
    assert len(containers) == 1, [c.name for c in containers]
    return containers[0]


@pytest.mark.slow
def test_healthy_redeploy_leaves_exactly_one_container_on_the_new_digest(
    stack: Stack,
    client: docker.DockerClient,
    app_binary: bytes,
    tmp_path: Path,
    component_name: str,
    containers_cleaned: None,
) -> None:
    repository, v1 = _push(stack, app_binary, "deploy/app", "1")
    _, v2 = _push(stack, app_binary, "deploy/app", "2")
    spec = _spec(component_name, environment=(("GREETING", "hi"),))
    config = _config(
        tmp_path, stack.daemon.docker_host, containers={component_name: spec}
    )
    ctx = _context(config, tmp_path)
    installer = ImageInstaller()
    first = _component(component_name, repository, v1, "1")
    second = _component(component_name, repository, v2, "2")

    installer.install(first, ctx)
    result = installer.install(second, ctx)

    container = _only_container(client, component_name)
    assert container.name == spec.name
    assert container.status == "running"
    assert container.id == result.detail["container_id"]
    assert container.attrs["Image"] == result.detail["image_id"]
    assert container.labels[LABEL_DIGEST] == v2
    assert container.labels[LABEL_VERSION] == "2"
    assert container.attrs["HostConfig"]["Privileged"] is False
    assert "GREETING=hi" in container.attrs["Config"]["Env"]
    assert installer.is_current(second, None, ctx)
    assert not installer.is_current(first, None, ctx)


@pytest.mark.slow
def test_image_without_healthcheck_is_healthy_after_running_a_while(
    stack: Stack,
    client: docker.DockerClient,
    app_binary: bytes,
    tmp_path: Path,
    component_name: str,
    containers_cleaned: None,
) -> None:
    digest = push_image(
        stack.registry.url,
        "deploy/nocheck",
        "v1",
        layers=app_layers(app_binary),
        config=ImageConfig(entrypoint=(APP_PATH,), env=("APP_VERSION=nocheck",)),
    )
    repository = f"{stack.registry.host}/deploy/nocheck"
    spec = _spec(component_name, healthy_after_seconds=2)
    config = _config(
        tmp_path, stack.daemon.docker_host, containers={component_name: spec}
    )

    ImageInstaller().install(
        _component(component_name, repository, digest, "1"), _context(config, tmp_path)
    )

    assert _only_container(client, component_name).status == "running"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "why"),
    [(AppKind.UNHEALTHY, "unhealthy: "), (AppKind.EXITS, "exited with code 0")],
    ids=["failing-healthcheck", "exits-at-once"],
)
def test_unhealthy_new_version_is_rolled_back_and_the_old_keeps_running(
    stack: Stack,
    client: docker.DockerClient,
    app_binary: bytes,
    tmp_path: Path,
    component_name: str,
    containers_cleaned: None,
    kind: AppKind,
    why: str,
) -> None:
    repository, v2 = _push(stack, app_binary, "rollback/app", "2")
    _, v3 = _push(stack, app_binary, "rollback/app", f"3-{kind.value}", kind=kind)
    spec = _spec(component_name)
    config = _config(
        tmp_path, stack.daemon.docker_host, containers={component_name: spec}
    )
    ctx = _context(config, tmp_path)
    installer = ImageInstaller()
    good = _component(component_name, repository, v2, "2")
    installer.install(good, ctx)
    before = _only_container(client, component_name)

    with pytest.raises(InstallError, match=why) as caught:
        installer.install(_component(component_name, repository, v3, "3"), ctx)

    assert caught.value.reason == "rolled-back"
    after = _only_container(client, component_name)
    assert after.id == before.id
    assert after.name == spec.name
    assert after.status == "running"
    assert after.labels[LABEL_DIGEST] == v2
    assert installer.is_current(good, None, ctx)


@pytest.mark.slow
def test_first_deploy_that_is_unhealthy_leaves_nothing_running(
    stack: Stack,
    client: docker.DockerClient,
    app_binary: bytes,
    tmp_path: Path,
    component_name: str,
    containers_cleaned: None,
) -> None:
    repository, digest = _push(
        stack, app_binary, "rollback/first", "1", kind=AppKind.EXITS
    )
    config = _config(
        tmp_path,
        stack.daemon.docker_host,
        containers={component_name: _spec(component_name)},
    )

    with pytest.raises(InstallError, match="exited with code") as caught:
        ImageInstaller().install(
            _component(component_name, repository, digest, "1"),
            _context(config, tmp_path),
        )

    assert caught.value.reason == "container-unhealthy"
    assert _containers(client, component_name) == []


# --- crash recovery -------------------------------------------------------------


def _run_labelled(
    client: docker.DockerClient,
    image: str,
    name: str,
    component: str,
    digest: str,
    *,
    owner: str,
) -> Any:
    """A container carrying this client's labels (``owner``: its spec name)."""
    return client.containers.run(
        image,
        detach=True,
        name=name,
        network_mode="none",
        labels={
            LABEL_COMPONENT: component,
            LABEL_VERSION: "x",
            LABEL_DIGEST: digest,
            LABEL_CONTAINER: owner,
        },
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash",
    ["old-and-handover-running", "old-stopped-handover-running", "handover-only"],
)
def test_interrupted_redeploy_is_recovered_to_exactly_one_container(
    stack: Stack,
    client: docker.DockerClient,
    app_binary: bytes,
    tmp_path: Path,
    component_name: str,
    containers_cleaned: None,
    crash: str,
) -> None:
    repository, v1 = _push(stack, app_binary, "crash/app", "1")
    _, v2 = _push(stack, app_binary, "crash/app", "2")
    spec = _spec(component_name)
    config = _config(
        tmp_path, stack.daemon.docker_host, containers={component_name: spec}
    )
    ctx = _context(config, tmp_path)
    installer = ImageInstaller()
    installer.install(_component(component_name, repository, v1, "1"), ctx)
    # The crash: v2 was pulled and its handover container started, then the
    # agent died before the old one was removed (or right after).
    old = _only_container(client, component_name)
    client.api.pull(repository, tag=v2)
    _run_labelled(
        client,
        f"{repository}@{v2}",
        spec.name + HANDOVER_SUFFIX,
        component_name,
        v2,
        owner=spec.name,
    )
    if crash == "old-stopped-handover-running":
        old.stop(timeout=1)
    elif crash == "handover-only":
        old.remove(force=True)
    target = _component(component_name, repository, v2, "2")
    assert not installer.is_current(target, None, ctx)

    installer.install(target, ctx)

    survivor = _only_container(client, component_name)
    assert survivor.name == spec.name
    assert survivor.status == "running"
    assert survivor.labels[LABEL_DIGEST] == v2
    assert installer.is_current(target, None, ctx)


@pytest.mark.slow
def test_stray_copy_of_the_component_is_not_current_and_is_removed(
    stack: Stack,
    client: docker.DockerClient,
    app_binary: bytes,
    tmp_path: Path,
    component_name: str,
    containers_cleaned: None,
) -> None:
    repository, v1 = _push(stack, app_binary, "stray/app", "1")
    spec = _spec(component_name)
    config = _config(
        tmp_path, stack.daemon.docker_host, containers={component_name: spec}
    )
    ctx = _context(config, tmp_path)
    component = _component(component_name, repository, v1, "1")
    installer = ImageInstaller()
    installer.install(component, ctx)
    _run_labelled(
        client,
        f"{repository}@{v1}",
        f"{spec.name}-copy",
        component_name,
        v1,
        owner=spec.name,
    )

    assert not installer.is_current(component, None, ctx)
    installer.install(component, ctx)

    assert _only_container(client, component_name).name == spec.name
    assert installer.is_current(component, None, ctx)


def test_another_clients_container_on_a_shared_engine_is_left_alone(
    stack: Stack,
    client: docker.DockerClient,
    app_binary: bytes,
    tmp_path: Path,
    component_name: str,
    containers_cleaned: None,
) -> None:
    repository, v1 = _push(stack, app_binary, "shared/app", "1")
    spec = _spec(component_name)
    config = _config(
        tmp_path, stack.daemon.docker_host, containers={component_name: spec}
    )
    neighbour = _run_labelled(
        client,
        f"{repository}@{v1}",
        f"{spec.name}-neighbour",
        component_name,
        v1,
        owner=f"{spec.name}-neighbour",
    )
    ImageInstaller().install(
        _component(component_name, repository, v1, "1"), _context(config, tmp_path)
    )
    neighbour.reload()
    assert neighbour.status == "running"
