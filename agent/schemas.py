"""The JSON Schemas shipped in ``schemas/``, loaded and compiled once.

``jsonschema`` costs tens of milliseconds to import, so nothing on the agent's
no-op poll imports this module.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .yamlstrict import Document, Path

MANIFEST = "manifest.schema.json"
AGENT_CONFIG = "agent-config.schema.json"
TELEMETRY = "telemetry.schema.json"

_JSON_TYPES = {
    "string": "a string",
    "integer": "an integer",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
}


def schema_text(name: str) -> str:
    """The text of a shipped schema file."""
    return resources.files("centops.schemas").joinpath(name).read_text("utf-8")


@cache
def validator(name: str) -> Draft202012Validator:
    """A compiled validator for the shipped schema ``name``."""
    schema: dict[str, Any] = json.loads(schema_text(name))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@cache
def schema_id(name: str) -> str:
    schema: dict[str, Any] = json.loads(schema_text(name))
    return str(schema["$id"])


def schema_problems(name: str, value: Any) -> list[tuple[Path, str]]:
    """Every place where ``value`` breaks schema ``name``, as (path, message)."""
    found = []
    for error in validator(name).iter_errors(value):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(
            error.instance, dict
        ):
            known = _properties(error)
            for key in sorted(set(error.instance) - known):
                where = ".".join(str(p) for p in (*path, key))
                found.append(((*path, key), f"{where}: unknown field {key!r}"))
            continue
        found.append((path, describe(error)))
    return sorted(found, key=lambda item: [str(part) for part in item[0]])


def check_document(name: str, document: Document) -> list[tuple[Path, str]]:
    """Schema problems of a loaded document, paths as in ``document.positions``."""
    return schema_problems(name, document.value)


def describe(error: ValidationError) -> str:
    """A message that says what was expected, in the terms a YAML author uses."""
    where = ".".join(str(part) for part in error.absolute_path) or "document"
    rule: Any = error.validator_value
    schema: dict[str, Any] = (
        dict(error.schema) if isinstance(error.schema, dict) else {}
    )
    got = _shown(error.instance)
    if error.validator == "type":
        names = [rule] if isinstance(rule, str) else list(rule)
        expected = " or ".join(_JSON_TYPES.get(name, name) for name in names)
        message = f"{where}: expected {expected}, got {got}"
        if "string" in names and not isinstance(error.instance, dict | list):
            message += "; quote this value so it is kept exactly as written"
        return message
    if error.validator == "pattern":
        wanted = str(schema.get("description", f"a match for {rule}"))
        wanted = wanted.rstrip(".")
        return f"{where}: {error.instance!r} is not valid; expected {wanted}"
    if error.validator == "const":
        return f"{where}: expected {rule!r}, got {got}"
    return f"{where}: {error.message}"


def _properties(error: ValidationError) -> set[str]:
    schema = error.schema if isinstance(error.schema, dict) else {}
    return set(schema.get("properties", {}))


def _shown(value: Any) -> str:
    if value is None:
        return "an empty value (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the number {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
