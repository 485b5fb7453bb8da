"""Build reproducible image content in memory: layers, configs, manifests.

Pure functions from inputs to bytes, no IO. The same inputs always give the
same bytes and so the same digests: tar entries are sorted with fixed owners
and mtimes, gzip carries mtime 0 and no file name, and JSON is serialised with
sorted keys and no spaces.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import StackError

FIXED_MTIME = 0
FIXED_CREATED = "1970-01-01T00:00:00Z"
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class MediaTypes:
    """The media types of one image format (Docker v2 schema 2 or OCI)."""

    manifest: str
    index: str
    config: str
    layer: str


DOCKER = MediaTypes(
    manifest="application/vnd.docker.distribution.manifest.v2+json",
    index="application/vnd.docker.distribution.manifest.list.v2+json",
    config="application/vnd.docker.container.image.v1+json",
    layer="application/vnd.docker.image.rootfs.diff.tar.gzip",
)
OCI = MediaTypes(
    manifest="application/vnd.oci.image.manifest.v1+json",
    index="application/vnd.oci.image.index.v1+json",
    config="application/vnd.oci.image.config.v1+json",
    layer="application/vnd.oci.image.layer.v1.tar+gzip",
)


@dataclass(frozen=True)
class LayerFile:
    """One regular file of a layer."""

    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Healthcheck:
    """A Docker HEALTHCHECK stored in the image config."""

    test: tuple[str, ...]
    interval_s: float = 1.0
    timeout_s: float = 3.0
    retries: int = 2
    start_period_s: float = 0.0


@dataclass(frozen=True)
class ImageConfig:
    """What a container of the image runs, and for which platform."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    healthcheck: Healthcheck | None = None
    os: str = "linux"
    architecture: str = "amd64"


@dataclass(frozen=True)
class Blob:
    """Content with its media type; addressed by its sha256 digest."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the bytes."""
        return sha256_digest(self.data)

    def descriptor(self) -> dict[str, Any]:
        """The OCI descriptor that points at this blob."""
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
        }


@dataclass(frozen=True)
class Image:
    """A single-platform image: its manifest, config and compressed layers."""

    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]


@dataclass(frozen=True)
class Platform:
    """The platform an index entry is for."""

    architecture: str
    os: str = "linux"
    variant: str = ""


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: object) -> bytes:
    """Deterministic compact JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _member_name(path: str) -> str:
    name = posixpath.normpath(path.lstrip("/"))
    if name in ("", ".") or name == ".." or name.startswith("../"):
        raise StackError(f"layer path {path!r} leaves the image root")
    return name


def _parents(name: str) -> Iterable[str]:
    parent = posixpath.dirname(name)
    while parent:
        yield parent
        parent = posixpath.dirname(parent)


def _tar_info(name: str, *, mode: int, size: int, is_dir: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = mode
    info.size = 0 if is_dir else size
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def layer_tar(files: Mapping[str, LayerFile]) -> bytes:
    """An uncompressed layer tar of ``files`` with their parent directories.

    Raises :class:`StackError` for a path that escapes the root.
    """
    named = {_member_name(path): item for path, item in files.items()}
    dirs = {parent for name in named for parent in _parents(name)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs | named.keys()):
            item = named.get(name)
            if item is None:
                tar.addfile(_tar_info(name, mode=0o755, size=0, is_dir=True))
                continue
            info = _tar_info(name, mode=item.mode, size=len(item.data), is_dir=False)
            tar.addfile(info, io.BytesIO(item.data))
    return buffer.getvalue()


def gzip_fixed(data: bytes) -> bytes:
    """Gzip with mtime 0 and no file name, so equal input gives equal output."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def _healthcheck_json(check: Healthcheck) -> dict[str, Any]:
    return {
        "Test": list(check.test),
        "Interval": int(check.interval_s * _NS_PER_S),
        "Timeout": int(check.timeout_s * _NS_PER_S),
        "StartPeriod": int(check.start_period_s * _NS_PER_S),
        "Retries": check.retries,
    }


def config_json(config: ImageConfig, diff_ids: Sequence[str]) -> bytes:
    """The image config blob for ``config`` over layers with ``diff_ids``."""
    runtime: dict[str, Any] = {"Entrypoint": list(config.entrypoint)}
    if config.cmd:
        runtime["Cmd"] = list(config.cmd)
    if config.env:
        runtime["Env"] = list(config.env)
    if config.labels:
        runtime["Labels"] = dict(config.labels)
    if config.healthcheck is not None:
        runtime["Healthcheck"] = _healthcheck_json(config.healthcheck)
    return canonical_json(
        {
            "architecture": config.architecture,
            "os": config.os,
            "created": FIXED_CREATED,
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        }
    )


def build_image(
    layers: Sequence[Mapping[str, LayerFile]],
    config: ImageConfig,
    *,
    media: MediaTypes = DOCKER,
) -> Image:
    """Assemble a reproducible image from per-layer file maps and a config."""
    tars = [layer_tar(files) for files in layers]
    blobs = tuple(Blob(media.layer, gzip_fixed(tar)) for tar in tars)
    config_blob = Blob(
        media.config, config_json(config, [sha256_digest(t) for t in tars])
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": media.manifest,
        "config": config_blob.descriptor(),
        "layers": [blob.descriptor() for blob in blobs],
    }
    return Image(Blob(media.manifest, canonical_json(manifest)), config_blob, blobs)


def build_index(
    entries: Sequence[tuple[Blob, Platform]], *, media: MediaTypes = DOCKER
) -> Blob:
    """A multi-platform index (manifest list) over ``(manifest, platform)``."""
    manifests = []
    for manifest, platform in entries:
        described = manifest.descriptor()
        described["platform"] = {
            "architecture": platform.architecture,
            "os": platform.os,
        }
        if platform.variant:
            described["platform"]["variant"] = platform.variant
        manifests.append(described)
    index = {"schemaVersion": 2, "mediaType": media.index, "manifests": manifests}
    return Blob(media.index, canonical_json(index))
