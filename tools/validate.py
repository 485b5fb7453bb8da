"""The manifest validator behind ``centops validate``.

It applies the agent's own loader (:func:`centops.agent.manifest.parse_manifest`)
and adds what only a review can judge: the channel matches its folder, the
expiry window is sane, and, against a base revision, that a change raised the
serial, kept the channel and downgraded nothing silently. With signatures
required it runs the agent's one verification path too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from centops.agent import yamlstrict
from centops.agent.errors import ConfigError
from centops.agent.fsutil import read_regular
from centops.agent.manifest import (
    BUNDLE_SUFFIX,
    DEFAULT_CLOCK_SKEW,
    DEFAULT_MAX_HORIZON,
    MANIFEST_FILENAME,
    Manifest,
    ManifestError,
    Problem,
    parse_manifest,
    time_problems,
)
from centops.agent.signing import (
    MAX_BUNDLE_BYTES,
    IdentityPolicy,
    SignatureError,
    verify_manifest_signature,
)

MAX_MANIFESTS = 10_000


@dataclass(frozen=True)
class SignatureRequirement:
    trusted_root: Path
    policy: IdentityPolicy


@dataclass(frozen=True)
class ValidateOptions:
    now: datetime
    base: str | None = None
    max_horizon: timedelta = DEFAULT_MAX_HORIZON
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW
    allow_insecure_http: bool = False
    signatures: SignatureRequirement | None = None


@dataclass
class FileReport:
    file: str
    channel: str | None = None
    serial: int | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


def discover(paths: Sequence[Path]) -> list[Path]:
    """Manifest files named by ``paths``: files as given, folders searched."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(path.rglob(MANIFEST_FILENAME)))
        elif path.exists():
            found.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder", reason="usage")
        if len(found) > MAX_MANIFESTS:
            raise ConfigError(f"more than {MAX_MANIFESTS} manifests", reason="usage")
    return found


def validate_files(files: Iterable[Path], options: ValidateOptions) -> list[FileReport]:
    """One report per manifest file, in the order given."""
    base = _BaseReader(options.base) if options.base else None
    return [_validate_one(path, options, base) for path in files]


def _validate_one(
    path: Path, options: ValidateOptions, base: _BaseReader | None
) -> FileReport:
    name = str(path)
    report = FileReport(name)
    try:
        data = _read_capped(path, yamlstrict.MAX_DOCUMENT_BYTES)
        manifest = parse_manifest(
            data, source=name, allow_insecure_http=options.allow_insecure_http
        )
    except ManifestError as exc:
        report.problems.extend(exc.problems)
        return report
    except OSError as exc:
        report.problems.append(Problem(name, 1, 1, f"cannot read: {exc.strerror}"))
        return report
    report.channel, report.serial = manifest.channel, manifest.serial
    at = _Locator(data, name)

    folder = Path(os.path.abspath(path)).parent.name  # as named, links not followed
    if path.name == MANIFEST_FILENAME and folder != manifest.channel:
        report.problems.append(
            at.problem(
                ("channel",),
                f"channel {manifest.channel!r} does not match its folder {folder!r}",
                "channel-folder-mismatch",
            )
        )
    for key, message in time_problems(
        manifest,
        now=options.now,
        clock_skew=options.clock_skew,
        max_horizon=options.max_horizon,
    ):
        report.problems.append(at.problem((key,), message, "time-window"))
    if base is not None:
        report.problems.extend(_against_base(path, data, manifest, base, at))
    if options.signatures is not None:
        report.problems.extend(_signature(path, data, options.signatures, at))
    return report


def _read_capped(path: Path, limit: int) -> bytes:
    # A manifest or bundle is a regular file: a symlink could make one
    # channel's file pass for another's, or hide a file from --base.
    return read_regular(path, limit, follow_symlinks=False)


class _Locator:
    """Positions of fields in a manifest that already parsed."""

    def __init__(self, data: bytes, source: str) -> None:
        self.document = yamlstrict.load(data, source=source)
        self.source = source
        value = self.document.value
        self.list_key = "includes" if "includes" in value else "components"

    def problem(self, path: yamlstrict.Path, message: str, code: str) -> Problem:
        if path and path[0] == "components":
            path = (self.list_key, *path[1:])
        where = self.document.position_of(path)
        return Problem(self.source, where.line, where.column, message, code)


# -- comparison with the base revision -----------------------------------------


class _BaseReader:
    """Reads files as they were at a git revision (the pull request's base)."""

    def __init__(self, ref: str) -> None:
        import git  # GitPython: only needed with --base

        try:
            self.repo = git.Repo(Path.cwd(), search_parent_directories=True)
            self.commit = self.repo.commit(ref)
        except Exception as exc:
            raise ConfigError(
                f"cannot resolve base revision {ref!r}: {exc}",
                reason="usage",
                hint="fetch the base branch first (e.g. git fetch origin main)",
            ) from exc
        self.top = Path(str(self.repo.working_tree_dir)).resolve()

    def read(self, path: Path) -> bytes | None:
        """The file at the base revision; None when it did not exist there.

        Raises ConfigError for a path outside the repository.
        """
        # The path as named (its folder resolved, the file itself not): a
        # symlink must not redirect the comparison to another file.
        named = Path(os.path.realpath(path.parent)) / path.name
        if not named.is_relative_to(self.top):
            raise ConfigError(
                f"{path} is outside the repository {self.top}; --base compares "
                "files in the repository only",
                reason="usage",
            )
        relative = named.relative_to(self.top).as_posix()
        try:
            blob = self.commit.tree / relative
        except KeyError:
            return None  # a new manifest
        if blob.type != "blob" or blob.mode not in (0o100644, 0o100755):
            raise _BaseUnusable(f"{relative} at the base is not a regular file")
        if blob.size > yamlstrict.MAX_DOCUMENT_BYTES:
            raise _BaseUnusable(f"{relative} at the base is over the size limit")
        data: bytes = blob.data_stream.read(yamlstrict.MAX_DOCUMENT_BYTES + 1)
        return data


class _BaseUnusable(Exception):
    """The base version exists but cannot be compared with."""


def _against_base(
    path: Path, data: bytes, manifest: Manifest, base: _BaseReader, at: _Locator
) -> list[Problem]:
    try:
        old_data = base.read(path)
    except _BaseUnusable as exc:
        return [at.problem((), f"cannot compare with the base: {exc}", "base-unusable")]
    if old_data is None or old_data == data:
        return []
    try:
        old = parse_manifest(old_data, source=f"{path}@base", allow_insecure_http=True)
    except ManifestError:
        # Fail closed: without a readable base, a lower serial or a silent
        # downgrade could not be detected.
        return [
            at.problem(
                (),
                "the base version of this manifest does not load, so the change "
                "cannot be checked against it; fix the base in its own change",
                "base-unusable",
            )
        ]
    return [
        at.problem(path, message, code)
        for path, code, message in change_problems(old, manifest)
    ]


def change_problems(
    old: Manifest, new: Manifest
) -> list[tuple[yamlstrict.Path, str, str]]:
    """What a reviewed change may not do to a released manifest, as
    (field path, code, message): move channel, keep or lower the serial,
    move a component to an older version silently, or give a released
    version new content. Pure; ``validate --base`` and ``release`` share it.
    """
    found: list[tuple[yamlstrict.Path, str, str]] = []
    if new.channel != old.channel:
        found.append(
            (
                ("channel",),
                "channel-changed",
                f"channel changed from {old.channel!r} to {new.channel!r}; "
                "create a new channel folder instead",
            )
        )
    if new.serial <= old.serial:
        found.append(
            (
                ("serial",),
                "serial-not-raised",
                f"the content changed but serial {new.serial} is not above the "
                f"base serial {old.serial}; raise it to {old.serial + 1}",
            )
        )
    for index, component in enumerate(new.components):
        previous = old.component(component.name)
        if previous is None:
            continue
        where = ("components", index, "version")
        older = version_key(component.version) < version_key(previous.version)
        if older and not component.downgrade:
            found.append(
                (
                    where,
                    "silent-downgrade",
                    f"{component.name} moves from {previous.version} to the older "
                    f"{component.version}; set `downgrade: true` if that is intended",
                )
            )
        if (
            component.version == previous.version
            and component.digest != previous.digest
        ):
            found.append(
                (
                    where,
                    "version-content-changed",
                    f"{component.name} {component.version} now has another digest; "
                    "a released version is immutable, raise the version",
                )
            )
    return found


_VERSION = re.compile(r"v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")


VersionKey = tuple[tuple[int, ...], int, tuple[tuple[int, int, str], ...]]


def version_key(version: str) -> VersionKey:
    """Order versions as semantic versioning does: numeric parts, then a
    pre-release before its release, pre-release identifiers compared one by
    one (numbers as numbers, below words: rc.9 < rc.10 < rc.a).

    Labels that are not version-shaped sort equal to each other, so no
    downgrade is claimed for them.
    """
    match = _VERSION.fullmatch(version)
    if match is None:
        return ((), 0, ())
    numbers = tuple(int(part) for part in match[1].split("."))
    numbers = numbers + (0,) * (4 - len(numbers)) if len(numbers) < 4 else numbers
    if not match[2]:
        return (numbers, 1, ())
    identifiers = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in match[2].split(".")
    )
    return (numbers, 0, identifiers)


# -- signatures ----------------------------------------------------------------


def _signature(
    path: Path, data: bytes, requirement: SignatureRequirement, at: _Locator
) -> list[Problem]:
    bundle_path = path.with_name(path.name + BUNDLE_SUFFIX)
    try:
        bundle: bytes | None = _read_capped(bundle_path, MAX_BUNDLE_BYTES)
    except FileNotFoundError:
        bundle = None  # the core reports signature-missing
    except OSError as exc:
        return [
            at.problem(
                (),
                f"cannot read {bundle_path.name}: {exc.strerror}",
                "signature-bundle-unreadable",
            )
        ]
    try:
        verify_manifest_signature(
            trusted_root=requirement.trusted_root,
            policy=requirement.policy,
            manifest=data,
            bundle=bundle,
        )
    except SignatureError as exc:
        return [at.problem((), f"{exc.message} ({bundle_path.name})", exc.reason)]
    return []


# -- reports ---------------------------------------------------------------------


def render_text(reports: Sequence[FileReport]) -> str:
    lines = []
    for report in reports:
        if report.valid:
            lines.append(
                f"ok   {report.file} ({report.channel}, serial {report.serial})"
            )
        for problem in report.problems:
            lines.append(f"{problem}  [{problem.code}]")
    bad = sum(1 for r in reports if not r.valid)
    lines.append(f"{len(reports)} manifest(s) checked, {bad} invalid")
    return "\n".join(lines)


def render_github(reports: Sequence[FileReport]) -> str:
    """GitHub workflow commands, so each error shows on the pull request diff."""

    def escape(text: str, *, prop: bool = False) -> str:
        text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return text.replace(":", "%3A").replace(",", "%2C") if prop else text

    lines = [
        f"::error file={escape(p.file, prop=True)},line={p.line},col={p.column},"
        f"title={escape(p.code, prop=True)}::{escape(p.message)}"
        for report in reports
        for p in report.problems
    ]
    lines.append(render_text(reports).splitlines()[-1])
    return "\n".join(lines)


def render_json(reports: Sequence[FileReport]) -> dict[str, object]:
    return {
        "valid": all(r.valid for r in reports),
        "files": [
            {
                "file": r.file,
                "valid": r.valid,
                "channel": r.channel,
                "serial": r.serial,
                "problems": [
                    {
                        "line": p.line,
                        "column": p.column,
                        "code": p.code,
                        "message": p.message,
                    }
                    for p in r.problems
                ],
            }
            for r in reports
        ],
    }
