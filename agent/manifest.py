"""The update manifest: its model and its one strict loader.

``parse_manifest`` is what both CI (``centops validate``) and every agent run,
so what passes review is exactly what a client accepts. It takes the very
bytes that were (or will be) signature-checked and returns an immutable
:class:`Manifest`, or raises :class:`ManifestError` listing every problem with
its file, line and column. Nothing is half-loaded.

Plan of :func:`parse_manifest`:

1. strict YAML (``yamlstrict``): one document, no duplicate keys, no aliases,
   no YAML 1.1 retyping, bounded size and depth;
2. the JSON Schema in ``schemas/manifest.schema.json``;
3. rules a schema cannot state: a component's single source, digests, URLs,
   safe file destinations, names unique after case folding and Unicode
   normalisation, ``depends_on`` naming earlier components only;
4. build the model.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from . import schemas, yamlstrict
from .errors import RemoteContentError
from .timeutil import TIMESTAMP as _TIMESTAMP
from .timeutil import format_timestamp, parse_timestamp
from .yamlstrict import Document, Path

MANIFEST_FILENAME = "manifest.yaml"
BUNDLE_SUFFIX = ".sigstore.json"
DIGEST_PREFIX = "sha256:"

HEX64 = re.compile(r"[0-9a-f]{64}")
_DOMAIN = (
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?"
)
_PATH_PART = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
# An image reference as Docker reads it: [registry[:port]/]path[:tag][@digest].
# The digest part is captured loosely here and checked separately, so a bad
# digest gets its own message.
IMAGE_REFERENCE = re.compile(
    rf"(?P<repo>(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>[^@]+))?"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- the model ---------------------------------------------------------------


@dataclass(frozen=True)
class ImageSource:
    """A container image, always installed as ``repository@digest``."""

    repository: str
    digest: str  # "sha256:<64 hex>"
    tag: str | None = None  # kept for display only; never pulled

    @property
    def reference(self) -> str:
        return f"{self.repository}@{self.digest}"

    @property
    def registry(self) -> str:
        """The registry host, as Docker decides it (docker.io when none)."""
        first, _, rest = self.repository.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            return first
        return "docker.io"


@dataclass(frozen=True)
class ScriptSource:
    """A script downloaded, checked against ``sha256`` and ``size``, then run."""

    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class FileSource:
    """A file downloaded, checked, and placed at ``path`` under the file root."""

    url: str
    sha256: str
    size: int
    path: str


Source = ImageSource | ScriptSource | FileSource


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    source: Source
    depends_on: tuple[str, ...] = ()
    downgrade: bool = False

    @property
    def kind(self) -> str:
        return {ImageSource: "image", ScriptSource: "script", FileSource: "file"}[
            type(self.source)
        ]

    @property
    def digest(self) -> str:
        """The pinned content digest, ``sha256:<hex>``, whatever the kind."""
        if isinstance(self.source, ImageSource):
            return self.source.digest
        return DIGEST_PREFIX + self.source.sha256


@dataclass(frozen=True)
class Manifest:
    channel: str
    serial: int
    issued_at: datetime
    expires: datetime
    components: tuple[Component, ...]
    sha256: str  # of the exact bytes parsed
    source: str = field(default="", compare=False)

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)


# -- problems ----------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One reason a manifest is invalid, and where."""

    file: str
    line: int
    column: int
    message: str
    code: str = "manifest-invalid"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ManifestError(RemoteContentError):
    """A manifest broke the format; ``problems`` lists every fault found."""

    reason = "manifest-invalid"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(
            f"{problems[0].file}: invalid manifest ({len(problems)} problem(s)):\n"
            f"{lines}",
            hint="fix each listed line; `centops validate` shows the same report",
        )


class _Problems:
    def __init__(self, document: Document) -> None:
        self.document = document
        self.found: list[Problem] = []

    def add(self, path: Path, message: str, code: str = "manifest-invalid") -> None:
        where = self.document.position_of(path)
        self.found.append(
            Problem(self.document.source, where.line, where.column, message, code)
        )


# -- loading -----------------------------------------------------------------


def parse_manifest(
    data: bytes, *, source: str, allow_insecure_http: bool = False
) -> Manifest:
    """Strictly load the manifest in ``data`` (see the module plan).

    ``allow_insecure_http`` admits plain-http URLs whose host is loopback, for
    tests and demos only. Raises :class:`ManifestError`.
    """
    try:
        document = yamlstrict.load(data, source=source)
    except yamlstrict.YamlError as exc:
        where = exc.position
        raise ManifestError(
            [Problem(source, where.line, where.column, exc.detail, "yaml-invalid")]
        ) from exc
    problems = _Problems(document)
    value = document.value
    if not isinstance(value, dict):
        problems.add((), "the top level must be a mapping of manifest fields")
        raise ManifestError(problems.found)

    key = (
        "includes"
        if "includes" in value and "components" not in value
        else "components"
    )
    if "includes" in value and "components" in value:
        problems.add(("includes",), "use either `components` or `includes`, not both")
    elif key not in value:
        problems.add((), "missing `components`: the ordered list of components")
    _invisible_characters(value, (), problems)
    for path, message in schemas.check_document(schemas.MANIFEST, document):
        if not _is_source_choice(path, message):
            problems.add(path, message)

    items = value.get(key)
    components: list[Component] = []
    if isinstance(items, list):
        components = _components(items, key, problems, allow_insecure_http)
        if len(components) != len(items) and not problems.found:
            # Defence in depth: a component must never vanish silently.
            problems.add((key,), "a component could not be read; check each entry")
    issued_at = _timestamp(value, "issued_at", problems)
    expires = _timestamp(value, "expires", problems)
    if issued_at and expires and expires <= issued_at:
        problems.add(("expires",), "`expires` must be later than `issued_at`")
    if problems.found:
        raise ManifestError(sorted(problems.found, key=lambda p: (p.line, p.column)))
    if issued_at is None or expires is None:  # pragma: no cover - reported above
        raise ManifestError([Problem(source, 1, 1, "missing timestamps")])
    return Manifest(
        channel=value["channel"],
        serial=value["serial"],
        issued_at=issued_at,
        expires=expires,
        components=tuple(components),
        sha256=hashlib.sha256(data).hexdigest(),
        source=source,
    )


def _invisible_characters(value: Any, path: Path, problems: _Problems) -> None:
    """Refuse control and format characters (newlines, zero-width spaces,
    direction marks) in every key and value: no field needs them, and they
    make two different values look the same to a reviewer."""
    stack: list[tuple[Any, Path]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, (*where, key), problems)
                stack.append((child, (*where, key)))
        elif isinstance(item, list):
            stack.extend((child, (*where, i)) for i, child in enumerate(item))
        else:
            _check_text(item, where, problems)


def _check_text(text: Any, path: Path, problems: _Problems) -> None:
    if not isinstance(text, str):
        return
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Co", "Cs"):
            name = unicodedata.name(char, "control character")
            problems.add(
                path,
                f"contains the invisible character U+{ord(char):04X} ({name}); "
                "remove it",
                "invisible-character",
            )
            return


def _is_source_choice(path: Path, message: str) -> bool:
    # The schema's oneOf over sources (and components/includes) yields a
    # message that names no field; _source() below explains those faults.
    return "is valid under each of" in message or "is not valid under any" in message


def _components(
    items: list[Any], key: str, problems: _Problems, insecure_http: bool
) -> list[Component]:
    built: list[Component] = []
    seen_names: dict[str, int] = {}
    seen_paths: dict[str, int] = {}
    for index, item in enumerate(items):
        path = (key, index)
        if not isinstance(item, dict):
            continue  # the schema reported it
        name = item.get("component")
        if isinstance(name, str):
            folded = _fold(name)
            if folded in seen_names:
                problems.add(
                    (*path, "component"),
                    f"component {name!r} duplicates component #{seen_names[folded] + 1}"
                    " (names are compared after case folding and normalisation)",
                )
            seen_names.setdefault(folded, index)
        source = _source(item, path, problems, insecure_http)
        if isinstance(source, FileSource):
            folded_path = _fold(source.path)
            if folded_path in seen_paths:
                problems.add(
                    (*path, "path"),
                    f"destination {source.path!r} is also used by component "
                    f"#{seen_paths[folded_path] + 1}",
                )
            seen_paths.setdefault(folded_path, index)
        _dependencies(item, index, items, key, problems)
        if isinstance(source, FileSource):
            _nested_destination(source.path, built, path, problems)
        if source is not None and isinstance(name, str):
            built.append(
                Component(
                    name=name,
                    version=str(item.get("version")),
                    source=source,
                    depends_on=tuple(item.get("depends_on") or ()),
                    downgrade=item.get("downgrade") is True,
                )
            )
    return built


def _nested_destination(
    dest: str, built: list[Component], path: Path, problems: _Problems
) -> None:
    """Refuse a file destination that is a folder of another file's (x, x/y)."""
    mine = _fold(dest)
    for other in built:
        if not isinstance(other.source, FileSource):
            continue
        theirs = _fold(other.source.path)
        if mine.startswith(theirs + "/") or theirs.startswith(mine + "/"):
            problems.add(
                (*path, "path"),
                f"destination {dest!r} and {other.source.path!r} (component "
                f"{other.name!r}) would need one path to be both a file and a folder",
            )
            return


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _source(
    item: dict[str, Any], path: Path, problems: _Problems, insecure_http: bool
) -> Source | None:
    has = {k for k in ("image", "url", "path") if k in item}
    if "image" in item:
        if has - {"image"} or "size" in item:
            problems.add(
                path,
                "an image component takes `image` and `sha256` only; "
                "`url`, `size` and `path` belong to scripts and files",
            )
            return None
        return _image(item, path, problems)
    if "url" not in item:
        problems.add(
            path,
            "no source: give `image` (container), `url`+`sha256`+`size` (script) "
            "or `url`+`sha256`+`size`+`path` (file)",
        )
        return None
    url, sha256, size = item.get("url"), item.get("sha256"), item.get("size")
    url_ok = _url_ok(url, (*path, "url"), problems, insecure_http)
    dest = item.get("path")
    dest_ok = dest is None or _path_ok(dest, (*path, "path"), problems)
    # Faults in sha256 and size were reported, precisely, by the schema.
    if not (
        url_ok
        and dest_ok
        and isinstance(url, str)
        and isinstance(sha256, str)
        and HEX64.fullmatch(sha256)
        and isinstance(size, int)
        and not isinstance(size, bool)
        and size >= 1
    ):
        return None
    if isinstance(dest, str):
        return FileSource(url, sha256, size, dest)
    return ScriptSource(url, sha256, size)


def _image(item: dict[str, Any], path: Path, problems: _Problems) -> ImageSource | None:
    ref = item["image"]
    if not isinstance(ref, str):
        return None  # the schema reported the type
    match = IMAGE_REFERENCE.fullmatch(ref)
    if match is None:
        problems.add(
            (*path, "image"),
            f"{ref!r} is not an image reference; "
            "expected repo:tag or repo@sha256:<hex>",
        )
        return None
    inline = match["digest"]
    pinned = item.get("sha256")
    if inline is not None:
        hexpart = inline.removeprefix(DIGEST_PREFIX)
        if not inline.startswith(DIGEST_PREFIX) or not HEX64.fullmatch(hexpart):
            problems.add(
                (*path, "image"),
                f"digest {inline!r} must be sha256: followed by 64 lowercase hex "
                "characters",
            )
            return None
        if isinstance(pinned, str) and pinned != hexpart:
            problems.add(
                (*path, "sha256"),
                "`sha256` differs from the digest in `image`; give one digest",
            )
            return None
        return ImageSource(match["repo"], inline, match["tag"])
    if pinned is None:
        problems.add(
            (*path, "image"),
            f"{ref!r} has no digest: a tag alone is mutable; add `sha256: <64 hex>` "
            "or write repo@sha256:<64 hex>",
        )
        return None
    if not isinstance(pinned, str) or not HEX64.fullmatch(pinned):
        return None  # the schema reported the exact fault
    return ImageSource(match["repo"], DIGEST_PREFIX + pinned, match["tag"])


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine: localhost or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _valid_host(host: str) -> bool:
    """An IP address, or DNS labels of at most 63 characters (253 in all)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def url_problem(url: str, *, allow_insecure_http: bool) -> str | None:
    """Why ``url`` may not be downloaded from, or None when it may."""
    if not url.isascii() or _CONTROL.search(url) or " " in url:
        return (
            f"{url!r} must be plain ASCII without spaces or control characters "
            "(percent-encode the path; write international hosts in punycode)"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return f"{url!r} is not a valid URL"
    if port == 0:
        return f"{url!r} names port 0"
    if parts.username is not None or parts.password is not None:
        return "URLs may not carry credentials; configure them on the client"
    if parts.scheme not in ("https", "http"):
        return f"{url!r} must use https"
    if not host:
        return f"{url!r} has no host"
    if not _valid_host(host):
        return f"{url!r} has an invalid host name {host!r}"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback_host(host):
        if allow_insecure_http:
            return None
        return "plain http is only allowed for loopback with the insecure option"
    return f"{url!r} must use https"


def _url_ok(url: Any, path: Path, problems: _Problems, insecure_http: bool) -> bool:
    if not isinstance(url, str):
        return False
    problem = url_problem(url, allow_insecure_http=insecure_http)
    if problem:
        problems.add(path, problem)
    return problem is None


def destination_problem(dest: str) -> str | None:
    """Why ``dest`` is not a safe relative destination, or None."""
    if _CONTROL.search(dest) or "\\" in dest:
        return f"destination {dest!r} contains a backslash or control character"
    if dest.startswith(("/", "~")) or re.match(r"[A-Za-z]:", dest):
        return f"destination {dest!r} must be relative to the file root"
    parts = dest.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return (
            f"destination {dest!r} may not contain '..', '.' or empty segments; "
            "it must stay under the file root"
        )
    return None


def _path_ok(dest: Any, path: Path, problems: _Problems) -> bool:
    if not isinstance(dest, str):
        return False
    problem = destination_problem(dest)
    if problem:
        problems.add(path, problem)
    return problem is None


def _dependencies(
    item: dict[str, Any], index: int, items: list[Any], key: str, problems: _Problems
) -> None:
    needs = item.get("depends_on")
    if not isinstance(needs, list):
        return
    positions = {
        other.get("component"): i
        for i, other in enumerate(items)
        if isinstance(other, dict) and isinstance(other.get("component"), str)
    }
    for dep_index, dep in enumerate(needs):
        path = (key, index, "depends_on", dep_index)
        if not isinstance(dep, str):
            continue
        where = positions.get(dep)
        if where is None:
            problems.add(path, f"depends on {dep!r}, which is not in this manifest")
        elif where == index:
            problems.add(path, f"{dep!r} depends on itself (a cycle)")
        elif where > index:
            cycle = _cycle_through(items, index, positions)
            detail = f"; dependency cycle {' -> '.join(cycle)}" if cycle else ""
            problems.add(
                path,
                f"depends on {dep!r}, which comes later (#{where + 1}); list "
                f"dependencies first{detail}",
            )


def _cycle_through(
    items: list[Any], start: int, positions: dict[Any, int]
) -> list[str]:
    """A dependency cycle through component ``start``, if there is one."""

    def needs(i: int) -> list[int]:
        deps = items[i].get("depends_on") if isinstance(items[i], dict) else None
        return [positions[d] for d in deps or () if d in positions]

    trail = [start]
    stack = [(start, iter(needs(start)))]
    on_trail = {start}
    steps = 0
    while stack and steps < 10_000:  # bounded: at most 256 components
        steps += 1
        _, children = stack[-1]
        nxt = next(children, None)
        if nxt is None:
            stack.pop()
            on_trail.discard(trail.pop())
            continue
        if nxt == start:
            return [str(items[i]["component"]) for i in (*trail, start)]
        if nxt not in on_trail:
            trail.append(nxt)
            on_trail.add(nxt)
            stack.append((nxt, iter(needs(nxt))))
    return []


def _timestamp(value: dict[str, Any], key: str, problems: _Problems) -> datetime | None:
    text = value.get(key)
    if not isinstance(text, str):
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        if _TIMESTAMP.fullmatch(text):  # well shaped, but no such moment
            problems.add((key,), f"{key}: {text!r} is not a real date and time")
        return None


# -- time rules shared by CI and agents ----------------------------------------


DEFAULT_CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_MAX_HORIZON = timedelta(days=90)


def time_problems(
    manifest: Manifest,
    *,
    now: datetime,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    max_horizon: timedelta | None = DEFAULT_MAX_HORIZON,
) -> list[tuple[str, str]]:
    """Freshness faults as (field, message); empty when the manifest is current."""
    found = []
    if manifest.expires <= now - clock_skew:
        found.append(
            (
                "expires",
                f"expired at {format_timestamp(manifest.expires)} "
                f"(now {format_timestamp(now)}); release a new serial",
            )
        )
    if max_horizon is not None and manifest.expires > now + max_horizon:
        found.append(
            (
                "expires",
                f"expires {format_timestamp(manifest.expires)}, more than "
                f"{max_horizon.days} days ahead; choose a nearer expiry",
            )
        )
    if manifest.issued_at > now + clock_skew:
        found.append(
            (
                "issued_at",
                f"issued_at {format_timestamp(manifest.issued_at)} lies in "
                f"the future (now {format_timestamp(now)})",
            )
        )
    return found
