"""Strict, bounded YAML loading for manifests and configuration.

PyYAML's safe loader follows YAML 1.1, whose implicit typing silently changes
what people wrote: ``version: 1.10`` becomes the float 1.1, ``no`` becomes
False, ``2026-01-01`` becomes a date, and a duplicated key keeps the last value.
None of that is acceptable for a document that decides what a fleet installs,
so this module builds Python values from the parser's *event stream* itself,
with these rules:

- Plain scalars resolve only to what YAML 1.2's core schema and the reader
  agree on: decimal integers without leading zeros, ``true``/``false``,
  ``null``/``~``/empty. Every other scalar is kept as its exact text, so
  ``1.10`` stays ``"1.10"`` and ``off`` stays ``"off"``. A field that needs a
  string but receives an integer or a boolean is rejected by the schema with
  "quote this value", never converted.
- Duplicate keys, aliases, merge keys, explicit tags, non-scalar keys and
  several documents in one stream are errors.
- Work is bounded: byte size, nesting depth and node count are capped, and
  since aliases are refused there is no expansion to bound.

Every error names the source, line and column (1-based).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import RemoteContentError

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 50_000

Path = tuple[str | int, ...]

_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})
_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_STANDARD_TAGS = frozenset({"tag:yaml.org,2002:str", "!"})
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")

try:  # libyaml's parser is several times faster; the rules above are ours.
    _Loader: type[Any] = yaml.CBaseLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.BaseLoader


@dataclass(frozen=True)
class Position:
    """A 1-based line and column in a source file."""

    line: int
    column: int


class YamlError(RemoteContentError):
    """The bytes are not a YAML document CentOps accepts."""

    reason = "yaml-invalid"

    def __init__(self, source: str, position: Position, message: str) -> None:
        super().__init__(
            f"{source}:{position.line}:{position.column}: {message}",
            hint="fix the YAML at that position",
        )
        self.source = source
        self.position = position
        self.detail = message


@dataclass
class Document:
    """A loaded document: its value and where each part of it was written."""

    source: str
    value: Any
    positions: dict[Path, Position] = field(default_factory=dict)

    def position_of(self, path: Path) -> Position:
        """Where ``path`` (or its nearest written ancestor) starts."""
        for end in range(len(path), -1, -1):
            found = self.positions.get(path[:end])
            if found is not None:
                return found
        return Position(1, 1)


def load(data: bytes, *, source: str, max_bytes: int = MAX_DOCUMENT_BYTES) -> Document:
    """Load exactly one YAML document from ``data`` under the rules above.

    Raises :class:`YamlError` naming ``source`` and the position of the fault.
    """
    if len(data) > max_bytes:
        raise YamlError(
            source,
            Position(1, 1),
            f"file is {len(data)} bytes; the limit is {max_bytes} bytes",
        )
    text = _decode(data, source)
    if not text.strip():
        raise YamlError(source, Position(1, 1), "file is empty; expected a mapping")
    loader = _Loader(text)
    try:
        return _Builder(loader, source).document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Position(mark.line + 1, mark.column + 1) if mark else Position(1, 1)
        raise YamlError(source, where, f"YAML syntax: {exc.problem}") from exc
    except yaml.YAMLError as exc:  # reader errors carry no mark attribute
        raise YamlError(source, Position(1, 1), f"YAML: {exc}") from exc
    finally:
        loader.dispose()


def _decode(data: bytes, source: str) -> str:
    if data.startswith(_BOMS):
        raise YamlError(
            source, Position(1, 1), "file starts with a byte-order mark; save as UTF-8"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlError(
            source,
            Position(line, column),
            f"not UTF-8 (byte 0x{data[exc.start]:02x})",
        ) from exc


def _where(event: Any) -> Position:
    mark = event.start_mark
    return Position(mark.line + 1, mark.column + 1)


class _Builder:
    """Turns parser events into plain Python values, recording positions."""

    def __init__(self, loader: Any, source: str) -> None:
        self._loader = loader
        self._source = source
        self._nodes = 0
        self.positions: dict[Path, Position] = {}

    def _fail(self, event: Any, message: str) -> YamlError:
        return YamlError(self._source, _where(event), message)

    def _next(self) -> Any:
        return self._loader.get_event()

    def document(self) -> Document:
        self._next()  # StreamStartEvent
        start = self._next()
        if isinstance(start, yaml.StreamEndEvent):
            raise self._fail(start, "file holds no document; expected a mapping")
        first = self._next()
        value = self._value(first, ())
        self._next()  # DocumentEndEvent
        end = self._next()
        if not isinstance(end, yaml.StreamEndEvent):
            raise self._fail(
                end, "a second YAML document ('---') follows; one document per file"
            )
        return Document(self._source, value, self.positions)

    def _value(self, event: Any, path: Path) -> Any:
        """Build the node that starts with ``event``, iteratively in depth."""
        stack: list[tuple[Any, Path, Iterator[Any] | None]] = []
        result: Any = None
        root = self._open(event, path)
        if not isinstance(root, list | dict):
            return root
        result = root
        stack.append((root, path, None))
        while stack:
            container, cpath, _ = stack[-1]
            ev = self._next()
            if isinstance(ev, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                stack.pop()
                continue
            if isinstance(container, list):
                child_path = (*cpath, len(container))
                child = self._open(ev, child_path)
                container.append(child)
            else:
                key = self._key(ev, container, cpath)
                child_path = (*cpath, key)
                child = self._open(self._next(), child_path)
                container[key] = child
            if isinstance(child, list | dict):
                if len(stack) >= MAX_DEPTH:
                    raise self._fail(ev, f"nesting deeper than {MAX_DEPTH} levels")
                stack.append((child, child_path, None))
        return result

    def _open(self, event: Any, path: Path) -> Any:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise self._fail(event, f"more than {MAX_NODES} YAML nodes")
        if isinstance(event, yaml.AliasEvent):
            raise self._fail(event, "aliases (*name) are not allowed; write it out")
        self.positions[path] = _where(event)
        tag = getattr(event, "tag", None)
        if isinstance(event, yaml.ScalarEvent):
            if tag is not None and tag not in _STANDARD_TAGS:
                raise self._fail(event, f"explicit tag {tag!r} is not allowed")
            return _resolve(event)
        if tag is not None:
            raise self._fail(event, f"explicit tag {tag!r} is not allowed")
        if isinstance(event, yaml.SequenceStartEvent):
            return []
        if isinstance(event, yaml.MappingStartEvent):
            return {}
        raise self._fail(event, f"unexpected YAML event {type(event).__name__}")

    def _key(self, event: Any, mapping: dict[str, Any], path: Path) -> str:
        if not isinstance(event, yaml.ScalarEvent):
            raise self._fail(event, "mapping keys must be plain strings")
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in _STANDARD_TAGS:
            raise self._fail(event, f"explicit tag {tag!r} is not allowed")
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise self._fail(event, f"more than {MAX_NODES} YAML nodes")
        key = str(event.value)
        if key == "<<" and _is_plain(event):
            raise self._fail(event, "merge keys (<<) are not allowed")
        if key in mapping:
            first = self.positions.get((*path, key))
            seen = f" (first at line {first.line})" if first else ""
            raise self._fail(event, f"duplicate key {key!r}{seen}")
        return key


def _is_plain(event: Any) -> bool:
    # libyaml reports a plain scalar's style as "", the pure parser as None.
    return not event.style


def _resolve(event: Any) -> Any:
    text: str = event.value
    if not _is_plain(event) or event.tag is not None:
        return text  # quoted or tagged as a string: exactly what was written
    if _INT.fullmatch(text):
        return int(text)
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text in _NULL:
        return None
    return text
