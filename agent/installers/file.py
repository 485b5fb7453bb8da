"""Files (policy templates and the like): verified, then placed atomically.

The destination is ``files_root / path``. The manifest loader already refused
absolute paths and ``..``; here the path is confined again on the real
filesystem: no existing part of it under the root may be a symlink (a planted
link would redirect the write), and the resolved parent must lie inside the
root. The verified bytes are copied into a temp file in the destination folder
and renamed over the destination, so readers see the old or the new file.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from ..download import DownloadOptions, fetch_verified, sha256_of
from ..errors import InstallError, RemoteContentError
from ..fsutil import fsync_dir
from ..manifest import Component, FileSource, destination_problem
from .base import InstallContext, InstalledRecord, InstallResult


def confined_destination(root: Path, relative: str) -> Path:
    """``root/relative``, refusing anything that could leave ``root``."""
    problem = destination_problem(relative)
    if problem:
        raise RemoteContentError(problem, reason="path-escapes-root")
    root = root.resolve()
    current = root
    for part in relative.split("/"):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):  # planted on this client: not the manifest's fault
            raise InstallError(
                f"{current} is a symbolic link; refusing to write through it",
                reason="path-escapes-root",
            )
    if not current.parent.resolve().is_relative_to(root):
        raise InstallError(
            f"{relative} leaves the file root {root}", reason="path-escapes-root"
        )
    return current


class FileInstaller:
    kind = "file"

    def is_current(
        self, component: Component, record: InstalledRecord | None, ctx: InstallContext
    ) -> bool:
        source = component.source
        if not isinstance(source, FileSource):
            return False
        try:
            dest = confined_destination(ctx.config.files_root, source.path)
            return dest.is_file() and sha256_of(dest) == source.sha256
        except (OSError, RemoteContentError, InstallError):
            return False

    def install(self, component: Component, ctx: InstallContext) -> InstallResult:
        source = component.source
        assert isinstance(source, FileSource)  # noqa: S101 - dispatched by kind
        dest = confined_destination(ctx.config.files_root, source.path)
        staged = fetch_verified(
            source.url,
            dest=ctx.work_dir / f"{source.sha256}.file",
            size=source.size,
            sha256=source.sha256,
            options=DownloadOptions.for_config(ctx.config),
            progress=ctx.progress,
            label=component.name,
        )
        try:
            _place(staged, ctx.config.files_root, source.path)
        except OSError as exc:
            raise InstallError(
                f"cannot place {source.path} under {ctx.config.files_root}: "
                f"{exc.strerror or exc}",
                reason="file-place-failed",
                hint="something on this client occupies that path (a folder, "
                "a file where a folder is needed, or missing permissions)",
            ) from exc
        staged.unlink(missing_ok=True)
        return InstallResult(detail={"path": str(dest)})


def _place(staged: Path, root: Path, relative: str) -> None:
    """Copy verified bytes to ``root/relative`` atomically; OSError on failure."""
    dest = confined_destination(root, relative)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest = confined_destination(root, relative)  # re-check once folders exist
    if dest.is_dir() and not dest.is_symlink():
        raise IsADirectoryError(21, "a folder is in the way", str(dest))
    fd, temp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, staged.open("rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, dest)
    finally:
        Path(temp).unlink(missing_ok=True)
    fsync_dir(dest.parent)
