"""The real container stack for tests, the demo and CI.

A private Docker Engine (Debian's ``dockerd``) and a CNCF registry (Debian's
``docker-registry``) started on loopback under a caller's directory, images
pushed over the registry HTTP API with reproducible digests, a tampering
proxy, and a self-check (``python -m centops.tools.stack selfcheck --dir D``).
Install the host packages first with ``tools/stack/install.sh`` (root).
"""

from __future__ import annotations

from .dockerd import DockerDaemon, start_dockerd, stop_dockerd
from .engine import (
    connect,
    pull_by_digest,
    remove_container,
    repo_digests,
    run_detached,
    wait_for_health,
)
from .errors import PullError, RegistryError, StackError, StartError, ToolchainError
from .images import AppKind, build_app, push_app, push_app_index
from .lifecycle import Stack, running_stack, start_stack, stop_stack
from .oci import DOCKER, OCI, Healthcheck, ImageConfig, LayerFile, Platform
from .registry import (
    RegistryServer,
    push_image,
    push_index,
    start_registry,
    stop_registry,
)
from .tamper import TamperProxy, Target

__all__ = [
    "DOCKER",
    "OCI",
    "AppKind",
    "DockerDaemon",
    "Healthcheck",
    "ImageConfig",
    "LayerFile",
    "Platform",
    "PullError",
    "RegistryError",
    "RegistryServer",
    "Stack",
    "StackError",
    "StartError",
    "TamperProxy",
    "Target",
    "ToolchainError",
    "build_app",
    "connect",
    "pull_by_digest",
    "push_app",
    "push_app_index",
    "push_image",
    "push_index",
    "remove_container",
    "repo_digests",
    "run_detached",
    "running_stack",
    "start_dockerd",
    "start_registry",
    "start_stack",
    "stop_dockerd",
    "stop_registry",
    "stop_stack",
    "wait_for_health",
]
