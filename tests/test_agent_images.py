"""The agent with image components: a real git server, local Sigstore,
registry and Docker Engine, from the signed manifest to the running container."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from agent_support import FileServer, ManifestRepo, Release, agent_config

from centops.agent.config import load_config
from centops.agent.controller import Controller
from centops.agent.state import StateDir
from centops.tools.localsigstore import LocalSigstore
from centops.tools.stack import AppKind, Stack, TamperProxy, Target, push_app


def image_entry(stack: Stack, repo: str, digest: str, version: str) -> dict[str, Any]:
    return {
        "component": "telemetry-agent",
        "version": version,
        "image": f"{stack.registry.host}/{repo}@{digest}",
    }


@pytest.fixture
def names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"repo": f"demo/agent-{tag}", "container": f"centops-test-{tag}"}


@pytest.fixture
def image_config(
    tmp_path: Path,
    manifest_repo: ManifestRepo,
    local_sigstore: LocalSigstore,
    stack: Stack,
    names: dict[str, str],
    agent_env: dict[str, str],
) -> Path:
    return agent_config(
        tmp_path,
        repo_url=manifest_repo.url,
        sigstore=local_sigstore,
        docker={
            "host": stack.daemon.docker_host,
            "allowed_registries": [stack.registry.host],
            "containers": {
                "telemetry-agent": {
                    "name": names["container"],
                    "network": "none",
                    "health_timeout_seconds": 20,
                }
            },
        },
    )


def running(client: Any, name: str) -> list[Any]:
    return [
        c
        for c in client.containers.list(all=True)
        if c.name.startswith(name) and c.status == "running"
    ]


def test_signed_image_release_runs_then_a_bad_version_is_rolled_back(
    image_config: Path,
    manifest_repo: ManifestRepo,
    file_server: FileServer,
    stack: Stack,
    client: Any,
    app_binary: bytes,
    names: dict[str, str],
) -> None:
    good = push_app(stack.registry.url, names["repo"], "v1", binary=app_binary)
    manifest_repo.publish(
        Release(components=[image_entry(stack, names["repo"], good, "v1")])
    )
    result = Controller(load_config(image_config)).sync()
    assert result.outcome == "succeeded", result
    (container,) = running(client, names["container"])
    assert container.image.attrs["RepoDigests"] == [
        f"{stack.registry.host}/{names['repo']}@{good}"
    ]
    state = StateDir(image_config.parent / "state").load()
    assert state.components["telemetry-agent"].digest == good

    again = Controller(load_config(image_config)).sync()
    assert again.outcome == "up-to-date"

    bad = push_app(
        stack.registry.url,
        names["repo"],
        "v2",
        binary=app_binary,
        kind=AppKind.UNHEALTHY,
        version="2",
    )
    manifest_repo.publish(
        Release(serial=2, components=[image_entry(stack, names["repo"], bad, "v2")])
    )
    result = Controller(load_config(image_config)).sync()
    assert result.outcome == "rolled-back"
    assert result.components[0].outcome == "rolled-back"
    (still,) = running(client, names["container"])
    assert still.id == container.id  # the previous version keeps serving
    state = StateDir(image_config.parent / "state").load()
    assert state.components["telemetry-agent"].digest == good
    for c in client.containers.list(all=True):
        if c.name.startswith(names["container"]):
            c.remove(force=True)


def test_registry_serving_other_bytes_never_starts_an_image(
    tmp_path: Path,
    manifest_repo: ManifestRepo,
    local_sigstore: LocalSigstore,
    stack: Stack,
    client: Any,
    app_binary: bytes,
    names: dict[str, str],
    agent_env: dict[str, str],
) -> None:
    digest = push_app(
        stack.registry.url,
        names["repo"],
        "v1",
        binary=app_binary,
        version=names["repo"],
    )
    with TamperProxy(stack.registry.url, Target.MANIFESTS) as proxy:
        config = agent_config(
            tmp_path,
            repo_url=manifest_repo.url,
            sigstore=local_sigstore,
            docker={
                "host": stack.daemon.docker_host,
                "containers": {"telemetry-agent": {"name": names["container"]}},
            },
        )
        entry = {
            "component": "telemetry-agent",
            "version": "v1",
            "image": f"{proxy.host}/{names['repo']}@{digest}",
        }
        manifest_repo.publish(Release(components=[entry]))
        result = Controller(load_config(config)).sync()
    assert result.outcome == "failed"
    assert result.components[0].reason == "image-digest-mismatch"
    assert running(client, names["container"]) == []
