"""Time the image installer's pull against ``docker pull`` of the same digests.

Starts a private registry and engine under a work folder (``tools/stack``),
pushes ``images`` images that share nothing (each with its own random layer),
and pulls each digest twice from an empty engine: once through
:class:`~centops.agent.installers.image.ImageInstaller` and once with the
Docker CLI, removing the image between the two. Run as
``python -m centops.tools.bench_images [WORKDIR]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from centops.agent.config import (
    AgentConfig,
    DockerConfig,
    RepositoryConfig,
    TrustConfig,
)
from centops.agent.installers.base import InstallContext
from centops.agent.installers.image import ImageInstaller
from centops.agent.manifest import Component, ImageSource

from .stack import AppKind, LayerFile, build_app, connect, push_image, running_stack
from .stack.images import app_config, app_layers

CLI_PULL_TIMEOUT_S = 300
DEFAULT_LAYER_BYTES = 8 * 1024 * 1024


def bench_pull(
    workdir: Path, *, images: int = 5, layer_bytes: int = DEFAULT_LAYER_BYTES
) -> dict[str, Any]:
    """Seconds per pull for the installer and for ``docker pull``; a summary dict.

    Raises StackError when the stack cannot start and
    ``subprocess.CalledProcessError`` when ``docker pull`` fails.
    """
    binary = build_app(workdir / "cache").read_bytes()
    with running_stack(workdir / "stack") as stack:
        digests = [
            push_image(
                stack.registry.url,
                f"bench/app{n}",
                "v1",
                layers=[
                    *app_layers(binary),
                    {"/payload": LayerFile(os.urandom(layer_bytes))},
                ],
                config=app_config(AppKind.HEALTHY, version=f"bench-{n}"),
            )
            for n in range(images)
        ]
        config = _config(workdir, stack.daemon.docker_host)
        client = connect(stack.daemon.docker_host)
        ours: list[float] = []
        cli: list[float] = []
        try:
            for n, digest in enumerate(digests):
                repository = f"{stack.registry.host}/bench/app{n}"
                component = Component(f"bench{n}", "1", ImageSource(repository, digest))
                ours.append(_timed_install(component, config, workdir))
                _remove_image(client, f"{repository}@{digest}")
                cli.append(
                    _timed_cli_pull(stack.daemon.docker_host, f"{repository}@{digest}")
                )
                _remove_image(client, f"{repository}@{digest}")
        finally:
            client.close()
    return {
        "images": images,
        "layer_bytes": layer_bytes,
        "centops_s": [round(t, 3) for t in ours],
        "docker_cli_s": [round(t, 3) for t in cli],
        "centops_total_s": round(sum(ours), 3),
        "docker_cli_total_s": round(sum(cli), 3),
    }


def _config(workdir: Path, docker_host: str) -> AgentConfig:
    return AgentConfig(
        client_id="bench",
        channel="bench",
        repository=RepositoryConfig(url=str(workdir / "unused.git")),
        trust=TrustConfig(
            trusted_root=workdir / "unused.json", issuer="unused", identities=("x",)
        ),
        state_dir=workdir / "state",
        files_root=workdir / "files",
        docker=DockerConfig(host=docker_host),
    )


def _remove_image(client: Any, reference: str) -> None:
    """Remove the image and every tag of it (the installer adds centops/...)."""
    image_id = client.api.inspect_image(reference)["Id"]
    client.api.remove_image(image_id, force=True)


def _timed_install(component: Component, config: AgentConfig, workdir: Path) -> float:
    ctx = InstallContext(
        config=config, serial=1, work_dir=workdir / "w", log_dir=workdir / "l"
    )
    started = time.perf_counter()
    ImageInstaller().install(component, ctx)
    return time.perf_counter() - started


def _timed_cli_pull(docker_host: str, reference: str) -> float:
    docker_cli = shutil.which("docker") or "docker"
    env = {**os.environ, "DOCKER_HOST": docker_host}
    started = time.perf_counter()
    subprocess.run(
        [docker_cli, "pull", "--quiet", reference],
        env=env,
        check=True,
        capture_output=True,
        timeout=CLI_PULL_TIMEOUT_S,
    )
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    """Run the benchmark under ``argv[0]`` (or a temp folder) and print JSON."""
    workdir = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="bench-img-"))
    result = bench_pull(workdir)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
