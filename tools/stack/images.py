"""The sample application and the test images built from it.

A tiny C program (``sampleapp.c`` beside this file) is linked with
``gcc -static`` once into a cache folder and becomes the only file of small
images: a long-running one whose HEALTHCHECK passes, one whose HEALTHCHECK
fails, one that exits at once, and a linux/amd64 + linux/arm64 index (the
arm64 entry carries the same amd64 binary; it is listed, never run).
"""

from __future__ import annotations

import enum
import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from .errors import ToolchainError
from .oci import (
    DOCKER,
    Healthcheck,
    ImageConfig,
    LayerFile,
    MediaTypes,
    Platform,
)
from .registry import push_image, push_index

APP_PATH = "/sampleapp"
COMPILE_TIMEOUT_S = 120.0
_GCC_FLAGS = ("-static", "-Os", "-s", "-Wall", "-Werror")
AMD64 = Platform("amd64")
ARM64 = Platform("arm64", variant="v8")


class AppKind(enum.Enum):
    """How a sample application image behaves when run."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EXITS = "exits"


def app_source() -> bytes:
    """The C source of the sample application."""
    return resources.files(__package__).joinpath("sampleapp.c").read_bytes()


def build_app(cache_dir: Path) -> Path:
    """The static sample binary, compiled into ``cache_dir`` on first use.

    The file name carries a hash of the source and flags, so a changed source
    is rebuilt. Raises :class:`ToolchainError` when gcc or a static libc is
    missing.
    """
    source = app_source()
    key = hashlib.sha256(source + " ".join(_GCC_FLAGS).encode()).hexdigest()[:16]
    binary = cache_dir / f"sampleapp-{key}"
    if binary.is_file():
        return binary
    if shutil.which("gcc") is None:
        raise ToolchainError("gcc not found", hint="run tools/stack/install.sh as root")
    cache_dir.mkdir(parents=True, exist_ok=True)
    _compile(source, binary)
    return binary


def _compile(source: bytes, binary: Path) -> None:
    c_file = binary.with_suffix(".c")
    c_file.write_bytes(source)
    partial = binary.with_name(f".{binary.name}.{os.getpid()}.tmp")
    result = subprocess.run(
        ["gcc", *_GCC_FLAGS, "-o", str(partial), str(c_file)],
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ToolchainError(
            f"gcc -static failed ({result.returncode}): {result.stderr[-800:]}",
            hint="install gcc and libc6-dev (tools/stack/install.sh)",
        )
    # Rename into place so a concurrent builder never sees a partial binary.
    partial.replace(binary)


def app_config(kind: AppKind, *, version: str = "1") -> ImageConfig:
    """The image config for a sample image of ``kind`` and ``version``."""
    env = (f"APP_VERSION={version}",)
    labels = {"org.centops.sample.kind": kind.value}
    if kind is AppKind.EXITS:
        return ImageConfig(entrypoint=(APP_PATH, "exit"), env=env, labels=labels)
    probe = "health" if kind is AppKind.HEALTHY else "unhealthy"
    check = Healthcheck(test=("CMD", APP_PATH, probe))
    return ImageConfig(
        entrypoint=(APP_PATH,), env=env, labels=labels, healthcheck=check
    )


def app_layers(binary: bytes) -> list[dict[str, LayerFile]]:
    """The single layer of a sample image: the binary at :data:`APP_PATH`."""
    return [{APP_PATH: LayerFile(binary, mode=0o755)}]


def push_app(
    registry_url: str,
    repo: str,
    tag: str,
    *,
    binary: bytes,
    kind: AppKind = AppKind.HEALTHY,
    version: str = "1",
    media: MediaTypes = DOCKER,
) -> str:
    """Push a sample image; return its (reproducible) manifest digest."""
    return push_image(
        registry_url,
        repo,
        tag,
        layers=app_layers(binary),
        config=app_config(kind, version=version),
        media=media,
    )


def push_app_index(
    registry_url: str,
    repo: str,
    tag: str,
    *,
    binary: bytes,
    version: str = "1",
    media: MediaTypes = DOCKER,
) -> str:
    """Push a healthy sample image for amd64 and arm64 and an index; its digest."""
    image = (app_layers(binary), app_config(AppKind.HEALTHY, version=version))
    return push_index(
        registry_url, repo, tag, platforms={AMD64: image, ARM64: image}, media=media
    )
