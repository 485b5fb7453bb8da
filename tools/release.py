"""Releasing components into a channel manifest, and promoting between channels.

The design keeps a pure core apart from the IO around it:

- :func:`plan_release` and :func:`plan_promotion` take the text of the
  current manifest (or ``None`` for a new channel) and already pinned sources,
  and return a :class:`ReleasePlan`: the new text, what changed, and its diff.
  They edit the YAML in ``ruamel.yaml`` round-trip mode, so comments and key
  order survive, and they refuse (:class:`ReleaseRefused`) anything CI would
  refuse, by running the same core as ``centops validate``
  (:func:`~centops.agent.manifest.parse_manifest` and
  :func:`~centops.agent.manifest.time_problems`) on the result.
- :func:`resolve_image` pins an image tag to its digest over the Docker
  Registry HTTP API v2, and :func:`fetch_artifact` hashes a script or file.
  Both have a byte cap and a timeout on every read.
- :func:`write_plan` and :func:`commit_plan` persist a plan: an atomic write,
  or a new git branch with one commit ready for a pull request (never pushed).

A plan is only ever written after it validated; the digest that was resolved
and verified is the digest written.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import http.client
import io
import json
import logging
import re
import ssl
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.util import load_yaml_guess_indent

from centops.agent.errors import (
    ConfigError,
    RemoteContentError,
    TransportError,
)
from centops.agent.fsutil import atomic_write, read_regular
from centops.agent.manifest import (
    DEFAULT_MAX_HORIZON,
    DIGEST_PREFIX,
    HEX64,
    IMAGE_REFERENCE,
    MANIFEST_FILENAME,
    FileSource,
    ImageSource,
    Manifest,
    ManifestError,
    ScriptSource,
    Source,
    is_loopback_host,
    parse_manifest,
    time_problems,
    url_problem,
)
from centops.agent.netutil import connected_socket, hard_deadline
from centops.agent.timeutil import format_timestamp
from centops.agent.yamlstrict import MAX_DOCUMENT_BYTES

# CI's own ordering of versions, so that what `release` calls a downgrade is
# exactly what `centops validate --base` calls one.
from centops.tools.validate import change_problems, version_key

log = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = timedelta(days=30)
REGISTRY_TIMEOUT_S = 30.0
DOWNLOAD_TIMEOUT_S = 60.0
MAX_REGISTRY_MANIFEST_BYTES = 4 * 1024 * 1024  # what registries accept, too
MAX_TOKEN_ANSWER_BYTES = 1024 * 1024
MAX_CREDENTIALS_FILE_BYTES = 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_ARTIFACT_BYTES = 256 * 1024 * 1024  # the schema's largest `size`
MAX_REDIRECTS = 3
MAX_PROMOTED_COMPONENTS = 256  # the schema's largest component list
CHUNK_BYTES = 64 * 1024

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
EXCHANGE_DEADLINE_FACTOR = 4
MIN_DOWNLOAD_BYTES_PER_SECOND = 32 * 1024
_BRANCH_NAME = re.compile(r"(?!refs/)(?!-)[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_DOCKER_HUB = "docker.io"
_TOKEN_SERVICES = {"docker.io": {"auth.docker.io"}}
_DOCKER_HUB_API = "registry-1.docker.io"
_CHANNEL = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')
_SOURCE_KEYS = ("image", "sha256", "url", "size", "path")
# Values YAML 1.1 or 1.2 would read as something other than text.
_NOT_TEXT_WORDS = frozenset(
    {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}
)


# -- errors --------------------------------------------------------------------


class ReleaseRefused(ConfigError):
    """The release asked for would give a manifest CI refuses; change the request.

    ``problems`` lists each fault of the resulting manifest, when there were
    several (file, line and column as ``centops validate`` reports them).
    """

    reason = "release-refused"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        hint: str = "",
        problems: Sequence[str] = (),
    ) -> None:
        if problems:
            message += "\n" + "\n".join(f"  {p}" for p in problems)
        super().__init__(message, reason=reason, hint=hint)
        self.problems = tuple(problems)


# -- what is released ----------------------------------------------------------


@dataclass(frozen=True)
class ReleaseItem:
    """One component to write: its name, version and pinned source.

    ``depends_on`` None keeps what the manifest says; a tuple replaces it
    (empty removes the key).
    """

    name: str
    version: str
    source: Source
    depends_on: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ComponentChange:
    """What happened to one component, for the summary and commit message."""

    name: str
    old_version: str | None
    new_version: str
    old_digest: str | None
    new_digest: str
    reference: str  # the image reference or URL, for people
    downgrade: bool = False

    def describe(self) -> str:
        """One line: name, old -> new version, digest."""
        if self.old_version is None:
            versions = f"new at {self.new_version}"
        elif self.old_version == self.new_version:
            same = self.old_digest == self.new_digest
            versions = f"{self.new_version} ({'unchanged' if same else 'changed'})"
        else:
            versions = f"{self.old_version} → {self.new_version}"
        note = " (downgrade)" if self.downgrade else ""
        return f"{self.name}: {versions}{note}, {self.new_digest}"


@dataclass(frozen=True)
class ReleasePlan:
    """A validated new manifest text, with what it changes.

    ``old_text`` is None when the channel had no manifest yet.
    """

    channel: str
    source: str  # the manifest's path, for diffs and messages
    old_text: str | None
    new_text: str
    old_serial: int | None
    new_serial: int
    issued_at: datetime
    expires: datetime
    changes: tuple[ComponentChange, ...]
    promoted_from: str | None = None
    manifest: Manifest | None = field(default=None, compare=False)

    def diff(self) -> str:
        """A unified diff of the manifest, old to new."""
        return unified_diff(self.old_text or "", self.new_text, self.source)

    def title(self) -> str:
        """The first line of the commit message."""
        names = ", ".join(f"{c.name} {c.new_version}" for c in self.changes[:3])
        if len(self.changes) > 3:
            names += f" and {len(self.changes) - 3} more"
        if self.promoted_from is not None:
            return f"promote({self.promoted_from} → {self.channel}): {names}"
        if len(self.changes) == 1 and self.changes[0].old_version:
            change = self.changes[0]
            return (
                f"release({self.channel}): {change.name} "
                f"{change.old_version} → {change.new_version}"
            )
        return f"release({self.channel}): {names}"

    def commit_message(self) -> str:
        """A commit message listing every change, ready for a pull request."""
        old = "none" if self.old_serial is None else str(self.old_serial)
        lines = [
            self.title(),
            "",
            f"channel: {self.channel}",
            f"serial: {old} → {self.new_serial}",
            f"issued_at: {format_timestamp(self.issued_at)}",
            f"expires: {format_timestamp(self.expires)}",
        ]
        if self.promoted_from is not None:
            lines.append(f"promoted from: {self.promoted_from} (same digests)")
        lines.append("")
        for change in self.changes:
            old_version = change.old_version or "(new)"
            lines.append(
                f"- {change.name}: {old_version} → {change.new_version}"
                + (" (downgrade)" if change.downgrade else "")
            )
            lines.append(f"  source: {change.reference}")
            lines.append(f"  digest: {change.new_digest}")
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        """A few lines for the terminal."""
        old = "new" if self.old_serial is None else str(self.old_serial)
        head = f"{self.channel}: serial {old} → {self.new_serial}, expires " + (
            format_timestamp(self.expires)
        )
        return "\n".join([head, *(f"  {c.describe()}" for c in self.changes)])


def unified_diff(old: str, new: str, name: str) -> str:
    """The unified diff from ``old`` to ``new`` for a file called ``name``."""
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"a/{name}",
            tofile=f"b/{name}",
        )
    )


def manifest_path(manifests_dir: Path, channel: str) -> Path:
    """``<manifests_dir>/<channel>/manifest.yaml``, for a well-formed channel.

    Raises :class:`ConfigError` when ``channel`` is not a channel name (it
    becomes a folder name, so nothing like ``..`` may pass).
    """
    if not _CHANNEL.fullmatch(channel):
        raise ConfigError(
            f"channel {channel!r} is not a channel name",
            reason="usage",
            hint="lowercase letters, digits and hyphens, at most 63",
        )
    return manifests_dir / channel / MANIFEST_FILENAME


# -- the pure core: planning -----------------------------------------------------


def plan_release(
    current: str | None,
    *,
    source: str,
    channel: str,
    item: ReleaseItem,
    now: datetime,
    after: str | None = None,
    expires_in: timedelta = DEFAULT_EXPIRES_IN,
    allow_downgrade: bool = False,
    allow_insecure_http: bool = False,
    max_horizon: timedelta = DEFAULT_MAX_HORIZON,
) -> ReleasePlan:
    """Plan writing ``item`` into the ``channel`` manifest whose text is ``current``.

    Plan:

    1. load the current manifest strictly (it must be valid) and round-trip;
    2. update the component in place, or insert it after ``after`` (or last);
       an older version is refused unless ``allow_downgrade``, and then marked
       ``downgrade: true``;
    3. raise the serial by one, set ``issued_at`` to ``now`` and ``expires``
       to ``now + expires_in``;
    4. validate the new text as CI does.

    Raises :class:`ReleaseRefused` (the request or the result is not
    acceptable) and :class:`ConfigError` (bad options).
    """
    old, document = _load(current, source=source, channel=channel)
    items = _component_list(document)
    change = _put(
        items,
        item,
        old=old,
        after=after,
        allow_downgrade=allow_downgrade,
        allow_new=True,
    )
    return _finish(
        document,
        old=old,
        current=current,
        source=source,
        channel=channel,
        changes=(change,),
        now=now,
        expires_in=expires_in,
        allow_insecure_http=allow_insecure_http,
        max_horizon=max_horizon,
        promoted_from=None,
    )


def plan_promotion(
    source_text: str,
    target_text: str | None,
    *,
    source: str,
    target: str,
    source_channel: str,
    target_channel: str,
    now: datetime,
    names: Sequence[str] = (),
    expires_in: timedelta = DEFAULT_EXPIRES_IN,
    allow_downgrade: bool = False,
    allow_insecure_http: bool = False,
    max_horizon: timedelta = DEFAULT_MAX_HORIZON,
) -> ReleasePlan:
    """Plan copying components of one channel's manifest into another's.

    Copies every component of the source manifest, or those in ``names``, with
    the same version, source, digest and dependencies. A component the target
    has keeps its position; new ones are appended in source order, which keeps
    dependencies first. Components only the target has stay. The target gets
    a new serial and times, and is validated as CI does.

    Raises :class:`ReleaseRefused` and :class:`ConfigError`.
    """
    if source_channel == target_channel:
        raise ConfigError("--from and --to name the same channel", reason="usage")
    tested = _parse_current(source_text, source=source, channel=source_channel)
    if len(names) > MAX_PROMOTED_COMPONENTS:
        raise ConfigError("too many --component options", reason="usage")
    chosen = list(tested.components)
    if names:
        unknown = [n for n in names if tested.component(n) is None]
        if unknown:
            raise ConfigError(
                f"{source_channel} has no component {', '.join(map(repr, unknown))}",
                reason="component-unknown",
                hint=f"components of {source_channel}: "
                + ", ".join(c.name for c in tested.components),
            )
        chosen = [c for c in chosen if c.name in set(names)]

    old, document = _load(target_text, source=target, channel=target_channel)
    items = _component_list(document)
    changes = tuple(
        _put(
            items,
            ReleaseItem(c.name, c.version, c.source, c.depends_on),
            old=old,
            after=None,
            allow_downgrade=allow_downgrade,
            allow_new=True,
        )
        for c in chosen
    )
    if old is not None and all(
        c.old_version == c.new_version and c.old_digest == c.new_digest for c in changes
    ):
        raise ReleaseRefused(
            f"nothing to promote: {target_channel} already has these components "
            f"of {source_channel} at the same versions and digests",
            reason="nothing-to-promote",
        )
    return _finish(
        document,
        old=old,
        current=target_text,
        source=target,
        channel=target_channel,
        changes=changes,
        now=now,
        expires_in=expires_in,
        allow_insecure_http=allow_insecure_http,
        max_horizon=max_horizon,
        promoted_from=source_channel,
    )


def _parse_current(text: str, *, source: str, channel: str) -> Manifest:
    # Loopback http URLs may already be in a test or demo manifest; whether the
    # result may keep them is decided when the result is validated.
    try:
        manifest = parse_manifest(
            text.encode(), source=source, allow_insecure_http=True
        )
    except ManifestError as exc:
        raise ReleaseRefused(
            f"{source}: the current manifest is invalid; fix it first",
            reason="current-manifest-invalid",
            problems=[str(p) for p in exc.problems],
        ) from exc
    if manifest.channel != channel:
        raise ReleaseRefused(
            f"{source} is for channel {manifest.channel!r}, not {channel!r}",
            reason="channel-mismatch",
        )
    return manifest


def _load(
    text: str | None, *, source: str, channel: str
) -> tuple[Manifest | None, CommentedMap]:
    if text is None:
        document = CommentedMap()
        document["schema_version"] = "v1"
        document["channel"] = channel
        document["serial"] = 0  # raised to 1 below
        document["issued_at"] = DoubleQuotedScalarString("")
        document["expires"] = DoubleQuotedScalarString("")
        document["components"] = CommentedSeq()
        return None, document
    old = _parse_current(text, source=source, channel=channel)
    try:
        loaded = _yaml(text).load(text)
    except YAMLError as exc:  # pragma: no cover - the strict loader read it
        raise ReleaseRefused(
            f"{source}: cannot round-trip: {exc}", reason="current-manifest-invalid"
        ) from exc
    if not isinstance(loaded, CommentedMap):  # pragma: no cover - as above
        raise ReleaseRefused(
            f"{source}: not a mapping", reason="current-manifest-invalid"
        )
    return old, loaded


def _component_list(document: CommentedMap) -> CommentedSeq:
    key = "includes" if "includes" in document else "components"
    items = document[key]
    if not isinstance(items, CommentedSeq):  # pragma: no cover - parsed as a list
        raise ReleaseRefused(f"`{key}` is not a list", reason="manifest-invalid")
    return items


def _put(
    items: CommentedSeq,
    item: ReleaseItem,
    *,
    old: Manifest | None,
    after: str | None,
    allow_downgrade: bool,
    allow_new: bool,
) -> ComponentChange:
    """Write ``item`` into ``items``: in place when present, else inserted."""
    previous = old.component(item.name) if old is not None else None
    index = next(
        (
            i
            for i, entry in enumerate(items)
            if isinstance(entry, CommentedMap) and entry.get("component") == item.name
        ),
        None,
    )
    new_digest = _digest_of(item.source)
    downgrade = False
    if previous is not None:
        if version_key(item.version) < version_key(previous.version):
            if not allow_downgrade:
                raise ReleaseRefused(
                    f"{item.name} would move from {previous.version} to the older "
                    f"{item.version}",
                    reason="downgrade-refused",
                    hint="pass --downgrade if that is intended; the manifest then "
                    "says `downgrade: true`",
                )
            downgrade = True
        elif item.version == previous.version and new_digest != previous.digest:
            raise ReleaseRefused(
                f"{item.name} {item.version} is released already with "
                f"{previous.digest}, not {new_digest}; a released version is "
                "immutable",
                reason="version-content-changed",
                hint="release the new content under a new version",
            )
    elif allow_downgrade:
        log.info("%s is new in this channel; --downgrade has no effect", item.name)

    if index is None:
        entry = CommentedMap()
        entry["component"] = item.name
        _fill(entry, item, downgrade=downgrade)
        _insert(items, entry, _position(items, after))
    else:
        if after is not None:
            raise ConfigError(
                f"{item.name} is already in the manifest and keeps its position; "
                "--after is for new components only",
                reason="usage",
            )
        _fill(items[index], item, downgrade=downgrade)
    return ComponentChange(
        name=item.name,
        old_version=previous.version if previous is not None else None,
        new_version=item.version,
        old_digest=previous.digest if previous is not None else None,
        new_digest=new_digest,
        reference=_display(item.source),
        downgrade=downgrade,
    )


def _position(items: CommentedSeq, after: str | None) -> int:
    if after is None:
        return len(items)
    for i, entry in enumerate(items):
        if isinstance(entry, CommentedMap) and entry.get("component") == after:
            return i + 1
    raise ConfigError(
        f"--after {after!r}: no such component in the manifest", reason="usage"
    )


def _fill(entry: CommentedMap, item: ReleaseItem, *, downgrade: bool) -> None:
    """Set version, source fields, dependencies and the downgrade mark."""
    _set(entry, "version", _text_scalar(item.version, like=entry.get("version")))
    wanted = _source_fields(item.source, inline=_is_inline(entry))
    for key in _SOURCE_KEYS:
        if key not in wanted and key in entry:
            _delete(entry, key)
    for key, value in wanted.items():
        _set(entry, key, value)
    if item.depends_on is not None:
        if item.depends_on:
            needs = CommentedSeq(item.depends_on)
            needs.fa.set_flow_style()
            _set(entry, "depends_on", needs)
        elif "depends_on" in entry:
            _delete(entry, "depends_on")
    if downgrade:
        _set(entry, "downgrade", True)
    elif "downgrade" in entry:
        _delete(entry, "downgrade")


def _is_inline(entry: CommentedMap) -> bool:
    image = entry.get("image")
    return isinstance(image, str) and "@" in image and "sha256" not in entry


def _source_fields(source: Source, *, inline: bool) -> dict[str, Any]:
    if isinstance(source, ImageSource):
        hexpart = source.digest.removeprefix(DIGEST_PREFIX)
        if source.tag is not None and not inline:
            # The README's form: the tag for people, the digest for pulling.
            return {"image": f"{source.repository}:{source.tag}", "sha256": hexpart}
        return {"image": source.reference}
    fields: dict[str, Any] = {
        "url": source.url,
        "sha256": source.sha256,
        "size": source.size,
    }
    if isinstance(source, FileSource):
        fields["path"] = source.path
    return fields


def _digest_of(source: Source) -> str:
    if isinstance(source, ImageSource):
        return source.digest
    return DIGEST_PREFIX + source.sha256


def _display(source: Source) -> str:
    if isinstance(source, ImageSource):
        if source.tag is not None:
            return f"{source.repository}:{source.tag}"
        return source.reference
    if isinstance(source, FileSource):
        return f"{source.url} -> {source.path}"
    return source.url


def _text_scalar(value: str, *, like: Any) -> str:
    """``value`` as a scalar that stays text, quoted like the old one if it was."""
    quoted = isinstance(like, DoubleQuotedScalarString)
    if quoted or value[:1].isdigit() or value.lower() in _NOT_TEXT_WORDS:
        text: str = DoubleQuotedScalarString(value)
        return text
    return value


def _finish(
    document: CommentedMap,
    *,
    old: Manifest | None,
    current: str | None,
    source: str,
    channel: str,
    changes: tuple[ComponentChange, ...],
    now: datetime,
    expires_in: timedelta,
    allow_insecure_http: bool,
    max_horizon: timedelta,
    promoted_from: str | None,
) -> ReleasePlan:
    """Raise the serial, set the times, render, and validate the result."""
    issued_at = now.replace(microsecond=0)
    expires = issued_at + expires_in
    serial = (old.serial if old is not None else 0) + 1
    document["serial"] = serial
    document["issued_at"] = DoubleQuotedScalarString(format_timestamp(issued_at))
    document["expires"] = DoubleQuotedScalarString(format_timestamp(expires))
    new_text = _dump(document, like=current)
    manifest = check_release(
        new_text,
        source=source,
        channel=channel,
        old=old,
        now=now,
        expected={c.name: c.new_digest for c in changes},
        allow_insecure_http=allow_insecure_http,
        max_horizon=max_horizon,
    )
    return ReleasePlan(
        channel=channel,
        source=source,
        old_text=current,
        new_text=new_text,
        old_serial=old.serial if old is not None else None,
        new_serial=serial,
        issued_at=issued_at,
        expires=expires,
        changes=changes,
        promoted_from=promoted_from,
        manifest=manifest,
    )


def check_release(
    text: str,
    *,
    source: str,
    channel: str,
    old: Manifest | None,
    now: datetime,
    expected: Mapping[str, str],
    allow_insecure_http: bool = False,
    max_horizon: timedelta = DEFAULT_MAX_HORIZON,
) -> Manifest:
    """Validate a manifest about to be written, with CI's rules; return it.

    The strict loader and the time window, as ``centops validate``; against
    ``old``, what ``validate --base`` checks (serial raised, no silent
    downgrade, no new content under a released version); and every component
    in ``expected`` carries exactly the digest that was resolved. Raises
    :class:`ReleaseRefused` listing every problem.
    """
    try:
        manifest = parse_manifest(
            text.encode(), source=source, allow_insecure_http=allow_insecure_http
        )
    except ManifestError as exc:
        raise ReleaseRefused(
            f"{source}: the new manifest would be invalid; nothing was written",
            reason="manifest-invalid",
            problems=[str(p) for p in exc.problems],
        ) from exc
    problems = [
        f"{source}: {key}: {message}"
        for key, message in time_problems(manifest, now=now, max_horizon=max_horizon)
    ]
    if manifest.channel != channel:
        problems.append(f"{source}: channel is {manifest.channel!r}, not {channel!r}")
    if old is not None:
        problems += [
            f"{source}: {message}" for _, _, message in change_problems(old, manifest)
        ]
    for name, digest in expected.items():
        written = manifest.component(name)
        if written is None or written.digest != digest:
            problems.append(
                f"{source}: {name} does not carry the resolved digest {digest}"
            )
    if problems:
        raise ReleaseRefused(
            f"{source}: the new manifest would be refused by CI; nothing was written",
            reason="manifest-invalid",
            problems=problems,
        )
    return manifest


# -- round-trip YAML and its comments ---------------------------------------------


def _yaml(like: str | None) -> YAML:
    """A round-trip YAML that writes lists indented as in ``like``."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long image reference or URL
    sequence, offset = 4, 2  # the README's `  - component:` layout
    if like:
        try:
            _, guessed, guessed_offset = load_yaml_guess_indent(like)
        except YAMLError:  # pragma: no cover - the strict loader read it
            guessed = None
        if guessed is not None and guessed_offset is not None:
            sequence, offset = guessed, guessed_offset
    yaml.indent(mapping=2, sequence=sequence, offset=offset)
    return yaml


def _dump(document: CommentedMap, *, like: str | None) -> str:
    out = io.StringIO()
    _yaml(like).dump(document, out)
    return out.getvalue()


# ruamel attaches the full-line comments that follow a mapping's last key, up
# to the next item or to the end of the file, to that last key. When keys or
# items are added after it, those lines must travel to the new last key, or
# they would end up in the middle of the edited component.


def _split_trailing(mapping: CommentedMap, key: Any) -> str:
    """Detach the full-line comments after ``key``; keep its end-of-line one.

    ruamel stores them as one token: the end-of-line comment (or nothing),
    a newline, then the following lines. Those lines are returned.
    """
    entry = mapping.ca.items.get(key)
    if not entry or len(entry) < 3 or entry[2] is None:
        return ""
    token = entry[2]
    head, _, rest = str(token.value).partition("\n")
    if head.strip():
        token.value = head + "\n"
    else:
        entry[2] = None
    return rest


def _attach_trailing(mapping: CommentedMap, key: Any, lines: str) -> None:
    """Put full-line comments ``lines`` after ``key`` (and its own comment)."""
    if not lines:
        return
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    entry = mapping.ca.items.setdefault(key, [None, None, None, None])
    while len(entry) < 4:
        entry.append(None)
    if entry[2] is not None:
        entry[2].value = str(entry[2].value) + lines
    else:
        entry[2] = CommentToken("\n" + lines, CommentMark(0), None)


def _last_key(mapping: CommentedMap) -> Any:
    return next(reversed(mapping)) if mapping else None


def _set(mapping: CommentedMap, key: str, value: Any) -> None:
    """Set ``key``; a new key goes last and inherits the trailing comments."""
    if key in mapping:
        mapping[key] = value
        return
    last = _last_key(mapping)
    trailing = _split_trailing(mapping, last) if last is not None else ""
    mapping[key] = value
    _attach_trailing(mapping, key, trailing)


def _delete(mapping: CommentedMap, key: str) -> None:
    """Remove ``key``; its trailing full-line comments stay with the one before."""
    keys = list(mapping)
    trailing = _split_trailing(mapping, key)
    mapping.ca.items.pop(key, None)
    del mapping[key]
    position = keys.index(key)
    if trailing and position > 0:
        _attach_trailing(mapping, keys[position - 1], trailing)


def _insert(items: CommentedSeq, entry: CommentedMap, index: int) -> None:
    """Insert ``entry``; the comments that preceded the next item stay before it."""
    if index > 0:
        before = items[index - 1]
        if isinstance(before, CommentedMap) and before:
            trailing = _split_trailing(before, _last_key(before))
            _attach_trailing(entry, _last_key(entry), trailing)
    items.insert(index, entry)


# -- registry: pin an image tag to its digest --------------------------------------


@dataclass(frozen=True)
class HttpAnswer:
    """A complete HTTP answer; header names are lower case."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


class HttpTransport(Protocol):
    """Sends one request and reads at most ``max_bytes`` of the answer."""

    def request(
        self, method: str, url: str, *, headers: Mapping[str, str], max_bytes: int
    ) -> HttpAnswer: ...


@dataclass(frozen=True)
class DirectHttp:
    """:class:`HttpTransport` over ``http.client``: timeouts, caps, no proxy.

    NOTE: proxies from the environment are not used, so a registry reachable
    only through a proxy cannot be resolved; adding CONNECT support here would
    remove that limit.
    """

    timeout_s: float = REGISTRY_TIMEOUT_S
    ca_bundle: Path | None = None

    def request(
        self, method: str, url: str, *, headers: Mapping[str, str], max_bytes: int
    ) -> HttpAnswer:
        with _connect(url, self.timeout_s, self.ca_bundle) as conn:
            try:
                # One deadline for the exchange, not only per read.
                with hard_deadline(
                    connected_socket(conn), EXCHANGE_DEADLINE_FACTOR * self.timeout_s
                ):
                    conn.request(method, _target(url), headers=dict(headers))
                    response = conn.getresponse()
                    body = response.read(max_bytes + 1) if method != "HEAD" else b""
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise TransportError(
                    f"{_origin(url)}: {type(exc).__name__}: {exc}",
                    reason="registry-unreachable",
                    hint="check the registry address and that it is up",
                ) from exc
            if len(body) > max_bytes:
                raise RemoteContentError(
                    f"{_origin(url)}: answer larger than {max_bytes} bytes",
                    reason="answer-too-large",
                )
            return HttpAnswer(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                body,
            )


@contextmanager
def _connect(
    url: str, timeout_s: float, ca_bundle: Path | None = None
) -> Iterator[http.client.HTTPConnection]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context(
            cafile=str(ca_bundle) if ca_bundle else None
        )
        conn = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout_s, context=context
        )
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout_s)
    try:
        yield conn
    finally:
        conn.close()


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _origin(url: str) -> str:
    """Scheme, host and port only: what may appear in logs and errors."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (
        f":{parts.port}" if parts.port else ""
    )


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries.

    ``credentials_file`` is a Docker ``config.json`` (``auths`` keyed by
    registry host, with ``auth`` = base64 of ``user:password``, or
    ``username`` and ``password``); its secrets are sent only to the registry
    and to the token service it names, never logged.
    """

    timeout_s: float = REGISTRY_TIMEOUT_S
    credentials_file: Path | None = None
    allow_insecure_http_loopback: bool = False
    ca_bundle: Path | None = None


@dataclass(frozen=True)
class ImageReference:
    """A parsed ``[host/]repo[:tag][@sha256:hex]``."""

    repository: str
    tag: str | None
    digest: str | None

    @property
    def host(self) -> str:
        return ImageSource(self.repository, "", None).registry

    @property
    def path(self) -> str:
        """The repository name within its registry, as the API wants it."""
        first, _, rest = self.repository.partition("/")
        if self.host == _DOCKER_HUB:
            explicit = first in ("docker.io", "index.docker.io")
            name = rest if explicit else self.repository
            return name if "/" in name else f"library/{name}"
        return rest


def parse_image_reference(text: str) -> ImageReference:
    """Split an image reference; raise :class:`ConfigError` if it is not one."""
    match = IMAGE_REFERENCE.fullmatch(text)
    digest = match["digest"] if match else None
    if match is None or (
        digest is not None
        and not (digest.startswith(DIGEST_PREFIX) and HEX64.fullmatch(digest[7:]))
    ):
        raise ConfigError(
            f"{text!r} is not an image reference",
            reason="usage",
            hint="write registry/repo:tag or registry/repo@sha256:<64 hex>",
        )
    return ImageReference(match["repo"], match["tag"], match["digest"])


def resolve_image(
    reference: str,
    *,
    options: RegistryOptions,
    transport: HttpTransport | None = None,
) -> ImageSource:
    """Pin ``reference`` to a digest; a reference with a digest is taken as is.

    For a tag: GET ``/v2/<repo>/manifests/<tag>`` accepting OCI and Docker
    indexes and manifests (anonymous bearer token or credentials when the
    registry asks), then hash the returned bytes: the ``Docker-Content-Digest``
    header must equal that hash, and the body must be a schema 2 manifest or
    index. https always, except plain http to a loopback registry when
    ``options.allow_insecure_http_loopback``.

    Raises :class:`ConfigError` (no tag, bad reference, credentials refused),
    :class:`RemoteContentError` (unknown tag, digest mismatch, not a manifest)
    and :class:`TransportError` (registry unreachable or failing).
    """
    ref = parse_image_reference(reference)
    if ref.digest is not None:
        return ImageSource(ref.repository, ref.digest, ref.tag)
    if ref.tag is None:
        raise ConfigError(
            f"{reference!r} has neither a tag nor a digest",
            reason="usage",
            hint="name the tag to release explicitly, e.g. repo:v1.2.3",
        )
    http_client = transport or DirectHttp(options.timeout_s, options.ca_bundle)
    host = _DOCKER_HUB_API if ref.host == _DOCKER_HUB else ref.host
    scheme = "https"
    if options.allow_insecure_http_loopback and is_loopback_host(_hostname(host)):
        log.warning("insecure: plain http to the loopback registry %s", host)
        scheme = "http"
    url = f"{scheme}://{host}/v2/{ref.path}/manifests/{ref.tag}"
    session = _RegistrySession(http_client, options, ref)
    answer = session.get(url)
    if answer.status == 404:
        raise RemoteContentError(
            f"{ref.repository}:{ref.tag} was not found in {host}",
            reason="image-not-found",
            hint="check the tag; was it pushed?",
        )
    if answer.status in (401, 403):
        raise ConfigError(
            f"{host} refused access to {ref.path} (HTTP {answer.status})",
            reason="registry-auth",
            hint="give --registry-credentials with a login for this registry",
        )
    if answer.status != 200:
        raise TransportError(
            f"{host}: HTTP {answer.status} for {ref.repository}:{ref.tag}",
            reason="registry-error",
        )
    digest = _verified_digest(answer, f"{ref.repository}:{ref.tag}")
    log.info("resolved %s:%s to %s", ref.repository, ref.tag, digest)
    return ImageSource(ref.repository, digest, ref.tag)


def _hostname(host: str) -> str:
    return urlsplit(f"//{host}").hostname or host


def _verified_digest(answer: HttpAnswer, what: str) -> str:
    """The sha256 of the manifest bytes, checked against what the registry says."""
    computed = DIGEST_PREFIX + hashlib.sha256(answer.body).hexdigest()
    claimed = answer.header("docker-content-digest")
    if claimed and claimed != computed:
        raise RemoteContentError(
            f"{what}: the registry says {claimed}, the manifest it sent hashes to "
            f"{computed}",
            reason="digest-mismatch",
            hint="the registry or something in between altered the manifest",
        )
    media_type = answer.header("content-type").split(";")[0].strip()
    try:
        document = json.loads(answer.body)
    except ValueError as exc:
        raise RemoteContentError(
            f"{what}: the registry's answer is not JSON", reason="not-a-manifest"
        ) from exc
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise RemoteContentError(
            f"{what}: not a schema 2 manifest or index", reason="not-a-manifest"
        )
    declared = document.get("mediaType") or media_type
    if declared not in MANIFEST_MEDIA_TYPES:
        raise RemoteContentError(
            f"{what}: media type {declared!r} is not an image manifest or index",
            reason="not-a-manifest",
        )
    return computed


class _RegistrySession:
    """One registry conversation: the request, and at most one auth round."""

    def __init__(
        self, http_client: HttpTransport, options: RegistryOptions, ref: ImageReference
    ) -> None:
        self.http = http_client
        self.options = options
        self.ref = ref
        self.authorization = ""

    def get(self, url: str) -> HttpAnswer:
        answer = self._send(url)
        if answer.status != 401:
            return answer
        # One round of authentication (Docker token flow or Basic), then the
        # registry's answer stands: no loop.
        challenge = answer.header("www-authenticate")
        self.authorization = self._authorize(challenge, url)
        if not self.authorization:
            return answer
        return self._send(url)

    def _send(self, url: str) -> HttpAnswer:
        headers = {
            "Accept": ", ".join(MANIFEST_MEDIA_TYPES),
            "User-Agent": "centops-release",
        }
        if self.authorization:
            headers["Authorization"] = self.authorization
        answer = self.http.request(
            "GET", url, headers=headers, max_bytes=MAX_REGISTRY_MANIFEST_BYTES
        )
        if answer.status in (301, 302, 303, 307, 308):
            # NOTE: registries answer manifest reads directly; following a
            # redirect here would need the same scheme and credential rules as
            # the token realm, so it is refused until a registry needs it.
            raise TransportError(
                f"{_origin(url)} redirected a manifest read (HTTP {answer.status})",
                reason="registry-error",
            )
        return answer

    def _authorize(self, challenge: str, url: str) -> str:
        scheme, _, rest = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(rest))
        login = _credentials_for(self.options.credentials_file, self.ref.host)
        if scheme.lower() == "basic":
            return f"Basic {login}" if login else ""
        if scheme.lower() != "bearer" or "realm" not in params:
            return ""
        realm = params["realm"]
        problem = url_problem(
            realm, allow_insecure_http=self.options.allow_insecure_http_loopback
        )
        if problem:
            raise RemoteContentError(
                f"{_origin(url)} names a token service that is refused: {problem}",
                reason="token-realm-refused",
            )
        query = {
            "service": params.get("service", ""),
            "scope": params.get("scope", f"repository:{self.ref.path}:pull"),
        }
        separator = "&" if urlsplit(realm).query else "?"
        headers = {"User-Agent": "centops-release"}
        # The registry's login goes only to its own host (Docker Hub's token
        # service is the one known exception); any other token service gets
        # an anonymous request, so a hostile registry cannot collect it.
        realm_host = (urlsplit(realm).hostname or "").lower()
        trusted = _TOKEN_SERVICES.get(self.ref.host, set()) | {
            self.ref.host.split(":")[0].lower()
        }
        if login and realm_host in trusted:
            headers["Authorization"] = f"Basic {login}"
        elif login:
            log.warning(
                "not sending the login for %s to the token service %s",
                self.ref.host,
                _origin(realm),
            )
            login = ""
        log.debug(
            "token from %s for %s (%s)",
            _origin(realm),
            query["scope"],
            "with credentials" if login else "anonymous",
        )
        answer = self.http.request(
            "GET",
            realm + separator + urlencode({k: v for k, v in query.items() if v}),
            headers=headers,
            max_bytes=MAX_TOKEN_ANSWER_BYTES,
        )
        if answer.status != 200:
            raise ConfigError(
                f"the token service {_origin(realm)} answered HTTP {answer.status}",
                reason="registry-auth",
                hint="check --registry-credentials for this registry",
            )
        try:
            body = json.loads(answer.body)
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError) as exc:
            raise RemoteContentError(
                f"the token service {_origin(realm)} sent no JSON token",
                reason="token-invalid",
            ) from exc
        if not isinstance(token, str) or not token:
            raise RemoteContentError(
                f"the token service {_origin(realm)} sent no token",
                reason="token-invalid",
            )
        return f"Bearer {token}"


def _credentials_for(path: Path | None, host: str) -> str:
    """The base64 ``user:password`` for ``host`` from a Docker config.json, or ""."""
    if path is None:
        return ""
    try:
        raw = read_regular(path, MAX_CREDENTIALS_FILE_BYTES)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the credentials file {path}: {exc.strerror}",
            reason="credentials-unreadable",
        ) from exc
    try:
        if len(raw) > MAX_CREDENTIALS_FILE_BYTES:
            raise ValueError("too large")
        auths = json.loads(raw).get("auths", {})
        if not isinstance(auths, dict):
            raise ValueError("`auths` is not a mapping")
    except (ValueError, AttributeError) as exc:
        # The message names the file only: a parser's excerpt could be a secret.
        raise ConfigError(
            f"the credentials file {path} is not a Docker config.json",
            reason="credentials-invalid",
        ) from exc
    names = [host, f"https://{host}", f"http://{host}"]
    if host == _DOCKER_HUB:
        names += ["https://index.docker.io/v1/", "index.docker.io"]
    entry = next((auths[n] for n in names if isinstance(auths.get(n), dict)), None)
    if entry is None:
        return ""
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        return str(entry["auth"])
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(password, str):
        return base64.b64encode(f"{user}:{password}".encode()).decode()
    return ""


# -- downloads: hash a script or file ----------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """What a download delivered: its sha256 (hex) and size in bytes."""

    url: str
    sha256: str
    size: int


def fetch_artifact(
    url: str,
    *,
    max_bytes: int = MAX_ARTIFACT_BYTES,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
    allow_insecure_http: bool = False,
    ca_bundle: Path | None = None,
) -> Artifact:
    """Download ``url`` (hashing as it streams, nothing kept) and measure it.

    The URL, and every redirect (at most :data:`MAX_REDIRECTS`), must pass the
    manifest's own URL rules, so the URL written is one agents will fetch.
    Raises :class:`RemoteContentError` (URL refused, empty, over
    ``max_bytes``) and :class:`TransportError` (connection, timeout, HTTP
    status).
    """
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        problem = url_problem(current, allow_insecure_http=allow_insecure_http)
        if problem:
            raise RemoteContentError(
                f"refusing to download: {problem}", reason="url-refused"
            )
        if urlsplit(current).scheme == "http":
            log.warning("insecure: plain http download from %s", _origin(current))
        # Bounded in time as in bytes: the declared cap at a minimum rate.
        allowed = timeout_s + max_bytes / MIN_DOWNLOAD_BYTES_PER_SECOND
        with _connect(current, timeout_s, ca_bundle) as conn:
            try:
                with hard_deadline(connected_socket(conn), allowed) as cut:
                    conn.request(
                        "GET",
                        _target(current),
                        headers={"User-Agent": "centops-release"},
                    )
                    response = conn.getresponse()
                    if response.status in (301, 302, 303, 307, 308):
                        location = response.getheader("Location") or ""
                        current = urljoin(current, location)
                        continue
                    if response.status != 200:
                        raise TransportError(
                            f"{current}: HTTP {response.status}",
                            reason="download-failed",
                        )
                    digest, size = _hash_stream(response, current, max_bytes)
                if cut.is_set():
                    raise TransportError(
                        f"{current}: too slow; gave up after {allowed:.0f} s",
                        reason="download-failed",
                    )
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise TransportError(
                    f"{current}: {type(exc).__name__}: {exc}",
                    reason="download-failed",
                ) from exc
        if size == 0:
            raise RemoteContentError(
                f"{current}: the download is empty", reason="empty"
            )
        log.info("downloaded %s: %s bytes, sha256 %s", url, size, digest)
        return Artifact(url, digest, size)
    raise RemoteContentError(f"{url}: too many redirects", reason="url-refused")


def _hash_stream(
    response: http.client.HTTPResponse, url: str, max_bytes: int
) -> tuple[str, int]:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RemoteContentError(
            f"{url}: {declared} bytes announced, more than the cap of {max_bytes}",
            reason="too-large",
        )
    digest = hashlib.sha256()
    size = 0
    while block := response.read(min(CHUNK_BYTES, max_bytes + 1 - size)):
        size += len(block)
        if size > max_bytes:
            raise RemoteContentError(
                f"{url}: more than the cap of {max_bytes} bytes; stopped reading",
                reason="too-large",
            )
        digest.update(block)
    return digest.hexdigest(), size


# -- persisting a plan ---------------------------------------------------------------


def read_manifest(path: Path) -> str | None:
    """The text at ``path``, or None when there is none; capped like the loader.

    Raises :class:`ConfigError` when it cannot be read or is too large.
    """
    try:
        data = read_regular(path, MAX_DOCUMENT_BYTES, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}", reason="usage"
        ) from exc
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ConfigError(
            f"{path} is larger than {MAX_DOCUMENT_BYTES} bytes", reason="usage"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8", reason="usage") from exc


def write_plan(plan: ReleasePlan, path: Path) -> None:
    """Write the plan's text atomically, if ``path`` still holds its old text.

    Raises :class:`ConfigError` when the file changed since it was planned.
    """
    if read_manifest(path) != plan.old_text:
        raise ConfigError(
            f"{path} changed while the release was prepared; nothing was written",
            reason="manifest-changed",
            hint="run the release again",
        )
    atomic_write(path, plan.new_text.encode())
    log.info("wrote %s (serial %s)", path, plan.new_serial)


@dataclass(frozen=True)
class Commit:
    """A commit made for a release: its branch and id."""

    branch: str
    sha: str


def commit_plan(plan: ReleasePlan, path: Path, *, branch: str) -> Commit:
    """Create ``branch`` at HEAD, write the plan there and commit only it.

    Plan:

    1. find the git work tree holding ``path``; refuse a branch name git would
       refuse, an existing branch, staged changes, or local edits of the
       manifest (the commit must hold exactly this release);
    2. create and check out the branch (the work tree stays as it is);
    3. write atomically, stage the manifest and commit with
       :meth:`ReleasePlan.commit_message`. Nothing is pushed.

    Raises :class:`ConfigError`.
    """
    import git  # GitPython: needed only with --branch

    try:
        repo = git.Repo(
            path.parent if path.parent.exists() else Path.cwd(),
            search_parent_directories=True,
        )
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise ConfigError(
            f"{path} is not inside a git work tree",
            reason="git",
            hint="run from a clone of the manifest repository, or drop --branch",
        ) from exc
    top = Path(str(repo.working_tree_dir)).resolve()
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link; refusing", reason="usage")
    try:
        relative = path.resolve().relative_to(top).as_posix()
    except ValueError as exc:
        raise ConfigError(f"{path} is outside {top}", reason="git") from exc
    # A new, plain branch name: never a full ref (refs/heads/main would
    # commit onto main), a revision expression (@, @{-1}) or an option.
    if (
        not _BRANCH_NAME.fullmatch(branch)
        or ".." in branch
        or branch.endswith((".lock", "/", "."))
    ):
        raise ConfigError(
            f"{branch!r} is not a plain new branch name",
            reason="usage",
            hint="use letters, digits and ._/- , e.g. release/telemetry-2.3.1",
        )
    try:
        repo.git.check_ref_format(f"refs/heads/{branch}")
        exists = bool(
            repo.git.for_each_ref(f"refs/heads/{branch}", f"refs/remotes/{branch}")
        )
    except git.GitCommandError as exc:
        raise ConfigError(
            f"{branch!r} is not a valid branch name", reason="usage"
        ) from exc
    if not repo.head.is_valid():
        raise ConfigError(f"{top} has no commit yet", reason="git")
    if exists or branch in repo.heads:
        raise ConfigError(
            f"branch {branch!r} exists already",
            reason="git",
            hint="choose another --branch name",
        )
    if repo.index.diff("HEAD"):
        raise ConfigError(
            "the git index holds staged changes; they would join the release commit",
            reason="git",
            hint="commit or unstage them first",
        )
    if repo.git.status("--porcelain", "--", relative):
        raise ConfigError(
            f"{relative} has local changes; the commit must hold the release only",
            reason="git",
            hint="commit or discard them first",
        )

    repo.create_head(branch).checkout()
    write_plan(plan, path)
    try:
        repo.git.add("--", relative)
        repo.git.commit("-m", plan.commit_message())
    except git.GitCommandError as exc:
        raise ConfigError(
            f"git commit failed on branch {branch!r}: {exc.stderr.strip()}",
            reason="git",
            hint="the manifest is written on the branch; commit it by hand",
        ) from exc
    sha = repo.head.commit.hexsha
    log.info("committed %s on branch %s", sha[:12], branch)
    return Commit(branch, sha)


# -- the whole flows ---------------------------------------------------------------


@dataclass(frozen=True)
class ImageInput:
    """Release a container image: a tag to resolve, or a digest as is."""

    reference: str


@dataclass(frozen=True)
class ScriptInput:
    """Release a script at ``url``; it is downloaded to measure it."""

    url: str


@dataclass(frozen=True)
class FileInput:
    """Release a file at ``url``, placed at ``path`` under the file root."""

    url: str
    path: str


SourceInput = ImageInput | ScriptInput | FileInput


@dataclass(frozen=True)
class FetchOptions:
    """Limits and switches for the network reads of a release."""

    registry: RegistryOptions = field(default_factory=RegistryOptions)
    download_timeout_s: float = DOWNLOAD_TIMEOUT_S
    max_download_bytes: int = MAX_ARTIFACT_BYTES
    allow_insecure_http_loopback: bool = False


def pin_source(
    given: SourceInput,
    *,
    options: FetchOptions,
    transport: HttpTransport | None = None,
) -> Source:
    """Resolve what the engineer named to a pinned source (digest, size).

    Raises what :func:`resolve_image` and :func:`fetch_artifact` raise.
    """
    if isinstance(given, ImageInput):
        return resolve_image(
            given.reference, options=options.registry, transport=transport
        )
    artifact = fetch_artifact(
        given.url,
        max_bytes=options.max_download_bytes,
        timeout_s=options.download_timeout_s,
        allow_insecure_http=options.allow_insecure_http_loopback,
    )
    if isinstance(given, FileInput):
        return FileSource(artifact.url, artifact.sha256, artifact.size, given.path)
    return ScriptSource(artifact.url, artifact.sha256, artifact.size)


@dataclass(frozen=True)
class Outcome:
    """What a release run did: the plan, and the commit when one was made."""

    plan: ReleasePlan
    path: Path
    written: bool
    commit: Commit | None = None


def persist(
    plan: ReleasePlan, path: Path, *, dry_run: bool, branch: str | None
) -> Outcome:
    """Write ``plan`` (or not, for a dry run), on a new branch when asked."""
    if dry_run:
        return Outcome(plan, path, written=False)
    if branch is not None:
        return Outcome(
            plan, path, written=True, commit=commit_plan(plan, path, branch=branch)
        )
    write_plan(plan, path)
    return Outcome(plan, path, written=True)
