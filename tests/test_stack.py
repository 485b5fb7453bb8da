"""The real container stack: registry pushes, engine pulls, health, tampering.

The session fixtures start one registry and one engine for the whole run.
Where they cannot start, the tests skip, except under CI (env ``CI`` set),
where a missing stack is a failure: CI must prove the real path.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from centops.tools.stack import (
    AppKind,
    ImageConfig,
    LayerFile,
    PullError,
    Stack,
    StackError,
    StartError,
    TamperProxy,
    Target,
    ToolchainError,
    build_app,
    connect,
    pull_by_digest,
    push_app,
    push_app_index,
    push_image,
    remove_container,
    repo_digests,
    run_detached,
    start_dockerd,
    start_stack,
    stop_dockerd,
    stop_stack,
    wait_for_health,
)
from centops.tools.stack.images import APP_PATH, app_config, app_layers
from centops.tools.stack.oci import DOCKER, OCI, MediaTypes, build_image, layer_tar

VERIFICATION_FAILED = "verification failed for digest"


def _unavailable(what: str, error: StackError) -> None:
    """A real part the tests need did not start: the test fails, never skips."""
    pytest.fail(f"{what} did not start: {error.describe()}")


# --- session fixtures (shared ones may move to conftest.py) ----------------


@pytest.fixture(scope="session")
def app_binary(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The static sample binary, compiled once per session."""
    try:
        return build_app(tmp_path_factory.mktemp("app-cache")).read_bytes()
    except StackError as e:
        _unavailable("sample binary", e)
        raise


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A running registry and engine for the whole test session."""
    try:
        started = start_stack(tmp_path_factory.mktemp("stack"))
    except StackError as e:
        _unavailable("container stack", e)
        raise
    yield started
    stop_stack(started)


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[docker.DockerClient]:
    """A docker SDK client of the session's engine (API version negotiated)."""
    session_client = connect(stack.daemon.docker_host)
    yield session_client
    session_client.close()


# --- pure image building: no servers ----------------------------------------


def test_building_the_same_image_twice_gives_identical_bytes() -> None:
    files = [{"bin/tool": LayerFile(b"\x7fELF...", mode=0o755)}]
    config = ImageConfig(entrypoint=("/bin/tool",))

    first = build_image(files, config)
    second = build_image(files, config)

    assert first == second
    assert first.manifest.digest == second.manifest.digest


@pytest.mark.parametrize(
    "path", ["../escape", "/../escape", "a/../../escape", "..", "/", "."]
)
def test_layer_path_leaving_the_image_root_is_refused(path: str) -> None:
    with pytest.raises(StackError, match="leaves the image root"):
        layer_tar({path: LayerFile(b"x")})


# --- registry -----------------------------------------------------------------


@pytest.mark.slow
def test_pushing_the_same_image_twice_gives_the_same_digest(
    stack: Stack, app_binary: bytes
) -> None:
    url = stack.registry.url

    first = push_app(url, "repro/app", "one", binary=app_binary)
    second = push_app(url, "repro/app", "two", binary=app_binary)

    assert first == second
    assert (
        first
        == build_image(
            app_layers(app_binary), app_config(AppKind.HEALTHY)
        ).manifest.digest
    )


@pytest.mark.slow
def test_a_different_config_gives_a_different_digest(
    stack: Stack, app_binary: bytes
) -> None:
    url = stack.registry.url

    v1 = push_app(url, "repro/versions", "v1", binary=app_binary, version="1")
    v2 = push_app(url, "repro/versions", "v2", binary=app_binary, version="2")

    assert v1 != v2


# --- engine -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("media", [DOCKER, OCI], ids=["docker", "oci"])
def test_pull_by_digest_records_the_pinned_digest(
    stack: Stack, client: docker.DockerClient, app_binary: bytes, media: MediaTypes
) -> None:
    name = f"pinned/{media.manifest.split('.')[1]}"
    digest = push_app(
        stack.registry.url, name, "latest", binary=app_binary, media=media
    )
    repo = f"{stack.registry.host}/{name}"

    pull_by_digest(client, repo, digest)

    assert f"{repo}@{digest}" in repo_digests(client, f"{repo}@{digest}")


@pytest.mark.slow
def test_pull_of_a_digest_the_registry_lacks_fails_with_the_engine_message(
    stack: Stack, client: docker.DockerClient
) -> None:
    missing = "sha256:" + "0" * 64

    with pytest.raises(PullError, match="manifest unknown"):
        pull_by_digest(client, f"{stack.registry.host}/pinned/absent", missing)


@pytest.mark.slow
@pytest.mark.parametrize("target", [Target.MANIFESTS, Target.BLOBS])
def test_tampered_content_is_refused_by_the_engine(
    stack: Stack, client: docker.DockerClient, app_binary: bytes, target: Target
) -> None:
    # Content never pulled before, so the engine has to download and check
    # both the manifest and the layer (an extra file makes the layer unique).
    marker = {"/marker": LayerFile(f"tamper {target.value}".encode())}
    digest = push_image(
        stack.registry.url,
        f"tamper/{target.value}",
        "v1",
        layers=[*app_layers(app_binary), marker],
        config=app_config(AppKind.HEALTHY, version=f"tamper-{target.value}"),
    )

    with TamperProxy(stack.registry.url, target) as proxy:
        with pytest.raises(PullError, match=VERIFICATION_FAILED):
            pull_by_digest(client, f"{proxy.host}/tamper/{target.value}", digest)
        assert proxy.tampered >= 1


@pytest.mark.slow
def test_image_with_a_passing_healthcheck_becomes_healthy(
    stack: Stack, client: docker.DockerClient, app_binary: bytes
) -> None:
    digest = push_app(stack.registry.url, "health/ok", "v1", binary=app_binary)
    pull_by_digest(client, f"{stack.registry.host}/health/ok", digest)

    container = run_detached(client, stack.ref("health/ok", digest))
    try:
        wait_for_health(container, "healthy")
        container.reload()
        assert container.attrs["HostConfig"]["NetworkMode"] == "none"
        assert b"sampleapp 1: serve" in container.logs()
    finally:
        remove_container(container)


@pytest.mark.slow
def test_image_with_a_failing_healthcheck_becomes_unhealthy(
    stack: Stack, client: docker.DockerClient, app_binary: bytes
) -> None:
    digest = push_app(
        stack.registry.url,
        "health/bad",
        "v1",
        binary=app_binary,
        kind=AppKind.UNHEALTHY,
    )
    pull_by_digest(client, f"{stack.registry.host}/health/bad", digest)

    container = run_detached(client, stack.ref("health/bad", digest))
    try:
        wait_for_health(container, "unhealthy")
    finally:
        remove_container(container)


@pytest.mark.slow
def test_image_that_exits_at_once_stops_with_status_zero(
    stack: Stack, client: docker.DockerClient, app_binary: bytes
) -> None:
    digest = push_app(
        stack.registry.url, "oneshot/app", "v1", binary=app_binary, kind=AppKind.EXITS
    )
    pull_by_digest(client, f"{stack.registry.host}/oneshot/app", digest)

    container = run_detached(client, stack.ref("oneshot/app", digest))
    try:
        result = container.wait(timeout=30)
        assert result["StatusCode"] == 0
        assert b"sampleapp 1: exit" in container.logs()
    finally:
        remove_container(container)


@pytest.mark.slow
def test_multi_arch_index_pull_is_recorded_by_the_index_digest(
    stack: Stack, client: docker.DockerClient, app_binary: bytes
) -> None:
    index = push_app_index(stack.registry.url, "multi/app", "v1", binary=app_binary)
    repo = f"{stack.registry.host}/multi/app"

    pull_by_digest(client, repo, index)

    assert f"{repo}@{index}" in repo_digests(client, f"{repo}@{index}")
    attrs = client.api.inspect_image(f"{repo}@{index}")
    assert attrs["Architecture"] == "amd64"
    assert attrs["Config"]["Entrypoint"] == [APP_PATH]


def test_missing_daemon_binaries_are_reported_with_an_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))

    with pytest.raises(ToolchainError, match="not found") as caught:
        start_stack(tmp_path / "stack")

    assert "install.sh" in caught.value.hint


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A work folder short enough that dockerd uses ``DIR/exec`` as exec root."""
    path = Path(tempfile.mkdtemp(prefix="cx-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_engine_that_cannot_listen_fails_fast_and_leaves_no_mount(
    short_dir: Path,
) -> None:
    if shutil.which("dockerd") is None:
        _unavailable("dockerd", ToolchainError("dockerd not found on PATH"))
    # A folder where the API socket should go makes dockerd exit at start,
    # after it has bind-mounted its data root.
    (short_dir / "exec" / "docker.sock").mkdir(parents=True)

    with pytest.raises(StartError, match="exited before it was ready"):
        daemon = start_dockerd(short_dir)
        stop_dockerd(daemon)  # only reached if the set-up did not work

    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(short_dir.resolve()) not in mounts
