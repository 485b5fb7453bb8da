"""Run Debian's CNCF registry on loopback and push images to it over HTTP.

The registry is ``docker-registry serve CONFIG`` on 127.0.0.1 with a free
port and a filesystem root under a directory of the caller. Images are pushed
with the registry HTTP API alone (no engine): each blob with POST then PUT,
then the manifest with PUT; an index after the manifests it lists.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urljoin

from . import _http, _proc
from .errors import (
    RegistryError,
    StackError,
    StartError,
    ToolchainError,
)
from .oci import (
    DOCKER,
    Blob,
    ImageConfig,
    LayerFile,
    MediaTypes,
    Platform,
    build_image,
    build_index,
)

log = logging.getLogger(__name__)

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
START_ATTEMPTS = 3
PING_TIMEOUT_S = 1.0
PING_MAX_BYTES = 64 * 1024
PUSH_TIMEOUT_S = 30.0
ANSWER_MAX_BYTES = 1024 * 1024

_CONFIG_TEMPLATE = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@dataclass(frozen=True)
class RegistryServer:
    """A running registry: where it answers and how to stop it."""

    host: str
    pid: int
    root: Path
    log_path: Path

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"


def _answers(url: str) -> bool:
    try:
        answer = _http.request(
            "GET", f"{url}/v2/", timeout_s=PING_TIMEOUT_S, max_bytes=PING_MAX_BYTES
        )
    except StackError:
        return False
    return answer.status == 200


def _start_once(workdir: Path) -> RegistryServer:
    port = _proc.free_loopback_port()
    root = workdir / "registry-data"
    root.mkdir(parents=True, exist_ok=True)
    config = workdir / "registry.yml"
    config.write_text(_CONFIG_TEMPLATE.format(root=root, port=port))
    log_path = workdir / "registry.log"
    pid = _proc.spawn_detached(
        [REGISTRY_BINARY, "serve", str(config)],
        log_path=log_path,
        env=_proc.daemon_env(),
    )
    server = RegistryServer(f"127.0.0.1:{port}", pid, root, log_path)
    try:
        _proc.wait_until(
            lambda: _answers(server.url),
            timeout_s=START_TIMEOUT_S,
            what="registry",
            pid=pid,
        )
    except StartError:
        stop_registry(server)
        raise
    return server


def start_registry(workdir: Path) -> RegistryServer:
    """Start a registry storing under ``workdir``; return once ``/v2/`` answers.

    Retries a few times with a new port, since a free port can be taken
    between choosing and binding it. Raises :class:`ToolchainError` when the
    binary is missing and :class:`StartError` when it never answers.
    """
    if shutil.which(REGISTRY_BINARY) is None:
        raise ToolchainError(
            f"{REGISTRY_BINARY} not found on PATH",
            hint="run tools/stack/install.sh as root",
        )
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            server = _start_once(workdir)
        except StartError as e:
            log.warning("registry start attempt %s failed: %s", attempt, e)
            last = e
            continue
        log.info("registry at %s (PID %s)", server.url, server.pid)
        return server
    log_path = workdir / "registry.log"
    raise StartError(
        f"registry did not start after {START_ATTEMPTS} attempts: {last}; "
        f"log ends: {_proc.log_tail(log_path)}",
        hint=f"see {log_path}",
    ) from last


def stop_registry(server: RegistryServer) -> None:
    """Stop the registry by its PID (SIGTERM, bounded wait, then SIGKILL)."""
    _proc.stop_pid(server.pid, timeout_s=STOP_TIMEOUT_S, what="registry")


def _expect(answer: _http.Response, status: int, action: str) -> None:
    if answer.status != status:
        detail = answer.body[:300].decode(errors="replace")
        raise RegistryError(
            f"{action}: HTTP {answer.status}, expected {status}: {detail}"
        )


def push_blob(registry_url: str, repo: str, blob: Blob) -> str:
    """Upload ``blob`` unless the registry has it already; return its digest."""
    digest = blob.digest
    base = f"{registry_url}/v2/{repo}/blobs"
    if (
        _http.request("HEAD", f"{base}/{digest}", timeout_s=PUSH_TIMEOUT_S).status
        == 200
    ):
        return digest
    started = _http.request(
        "POST", f"{base}/uploads/", timeout_s=PUSH_TIMEOUT_S, max_bytes=ANSWER_MAX_BYTES
    )
    _expect(started, 202, f"start upload of {digest} to {repo}")
    location = urljoin(f"{registry_url}/", started.header("location"))
    separator = "&" if "?" in location else "?"
    done = _http.request(
        "PUT",
        f"{location}{separator}digest={digest}",
        body=blob.data,
        headers={"Content-Type": "application/octet-stream"},
        timeout_s=PUSH_TIMEOUT_S,
        max_bytes=ANSWER_MAX_BYTES,
    )
    _expect(done, 201, f"finish upload of {digest} to {repo}")
    return digest


def push_manifest(registry_url: str, repo: str, reference: str, manifest: Blob) -> str:
    """PUT ``manifest`` under tag or digest ``reference``; return its digest.

    Raises :class:`RegistryError` when the registry refuses it or reports a
    digest other than the one of the bytes sent.
    """
    answer = _http.request(
        "PUT",
        f"{registry_url}/v2/{repo}/manifests/{reference}",
        body=manifest.data,
        headers={"Content-Type": manifest.media_type},
        timeout_s=PUSH_TIMEOUT_S,
        max_bytes=ANSWER_MAX_BYTES,
    )
    _expect(answer, 201, f"put manifest {repo}:{reference}")
    reported = answer.header("docker-content-digest")
    if reported and reported != manifest.digest:
        raise RegistryError(
            f"registry stored {repo}:{reference} as {reported}, sent {manifest.digest}"
        )
    return manifest.digest


def push_image(
    registry_url: str,
    repo: str,
    tag: str,
    *,
    layers: Sequence[Mapping[str, LayerFile]],
    config: ImageConfig,
    media: MediaTypes = DOCKER,
) -> str:
    """Build and push a single-platform image; return its manifest digest.

    ``layers`` holds one ``{path: LayerFile}`` map per layer, bottom first.
    The digest is the same on every run for the same inputs.
    """
    image = build_image(layers, config, media=media)
    for blob in (*image.layers, image.config):
        push_blob(registry_url, repo, blob)
    digest = push_manifest(registry_url, repo, tag, image.manifest)
    log.info("pushed %s:%s as %s", repo, tag, digest)
    return digest


def push_index(
    registry_url: str,
    repo: str,
    tag: str,
    *,
    platforms: Mapping[Platform, tuple[Sequence[Mapping[str, LayerFile]], ImageConfig]],
    media: MediaTypes = DOCKER,
) -> str:
    """Push one image per platform, then an index over them; the index digest.

    Each config's architecture and OS are set from its platform key, so the
    image an engine picks matches what the index claims.
    """
    entries: list[tuple[Blob, Platform]] = []
    for platform, (layers, config) in platforms.items():
        config = _for_platform(config, platform)
        image = build_image(layers, config, media=media)
        for blob in (*image.layers, image.config):
            push_blob(registry_url, repo, blob)
        push_manifest(registry_url, repo, image.manifest.digest, image.manifest)
        entries.append((image.manifest, platform))
    index = build_index(entries, media=media)
    digest = push_manifest(registry_url, repo, tag, index)
    log.info("pushed index %s:%s as %s", repo, tag, digest)
    return digest


def _for_platform(config: ImageConfig, platform: Platform) -> ImageConfig:
    return replace(config, os=platform.os, architecture=platform.architecture)
