"""Strict manifest loading: what CI and every agent accept, and what they refuse."""

from __future__ import annotations

import pytest
from manifests_factory import DIGEST_A, DIGEST_B, design_note_manifest, manifest_with

from centops.agent import yamlstrict
from centops.agent.manifest import (
    FileSource,
    ImageSource,
    ManifestError,
    ScriptSource,
    parse_manifest,
)

HEX = DIGEST_A


def refuse(text: str | bytes, **kwargs: bool) -> ManifestError:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data, source="m.yaml", **kwargs)
    return caught.value


def test_design_note_manifest_loads_with_includes_alias() -> None:
    manifest = parse_manifest(design_note_manifest().encode(), source="m.yaml")
    assert [c.name for c in manifest.components] == [
        "telemetry-agent",
        "pipeline-runner",
    ]
    first = manifest.components[0].source
    assert isinstance(first, ImageSource)
    assert first.reference == f"ghcr.io/org/centops-telemetry@sha256:{DIGEST_A}"
    assert first.tag == "v2.3.0"
    assert first.registry == "ghcr.io"
    assert manifest.components[1].digest == f"sha256:{DIGEST_B}"


def test_shipped_example_manifests_load() -> None:
    from pathlib import Path

    for path in sorted(Path("manifests").glob("*/manifest.yaml")):
        manifest = parse_manifest(path.read_bytes(), source=str(path))
        assert manifest.channel == path.parent.name


def test_all_three_source_kinds() -> None:
    text = manifest_with(
        f"""\
  - component: agent
    version: "2.0"
    image: registry.local:5000/team/agent@sha256:{HEX}
  - component: setup
    version: "1"
    url: https://cdn.example/setup.sh
    sha256: {HEX}
    size: 120
    depends_on: [agent]
  - component: policy
    version: "3"
    url: https://cdn.example/p.yaml
    sha256: {HEX}
    size: 50
    path: policies/default.yaml
"""
    )
    manifest = parse_manifest(text.encode(), source="m.yaml")
    kinds = [type(c.source) for c in manifest.components]
    assert kinds == [ImageSource, ScriptSource, FileSource]
    image = manifest.components[0].source
    assert isinstance(image, ImageSource) and image.registry == "registry.local:5000"


@pytest.mark.parametrize(
    ("version_text", "kept"),
    [
        ("1.10", "1.10"),  # YAML 1.1 reads the float 1.1
        ("1.0", "1.0"),
        ("1e3", "1e3"),
        ("0x1F", "0x1F"),
        ("2026-01-02", "2026-01-02"),
        ("v1.2.3", "v1.2.3"),
        ("010", "010"),  # a leading zero is not a number here
        ("no", "no"),  # YAML 1.1 reads the boolean False
        ("off", "off"),
    ],
)
def test_version_is_kept_as_written(version_text: str, kept: str) -> None:
    text = manifest_with(
        f"  - component: a\n    version: {version_text}\n    image: r/a@sha256:{HEX}\n"
    )
    assert parse_manifest(text.encode(), source="m").components[0].version == kept


@pytest.mark.parametrize(
    ("field_line", "needle"),
    [
        ("    version: 10", "quote this value"),
        ("    version: true", "quote this value"),
        ("    version:", "quote this value"),
        ("    version: -3", "quote this value"),
    ],
)
def test_scalars_that_are_not_strings_are_refused_with_quote_hint(
    field_line: str, needle: str
) -> None:
    text = manifest_with(
        f"  - component: a\n{field_line}\n    image: r/a@sha256:{HEX}\n"
    )
    error = refuse(text)
    assert needle in str(error)
    assert error.problems[0].line == 8


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("schema_version: v1\nschema_version: v1\n", 2, "duplicate key"),
        (
            manifest_with(
                f"  - component: a\n    version: '1'\n    version: '2'\n"
                f"    image: r/a@sha256:{HEX}\n"
            ),
            9,
            "duplicate key 'version' (first at line 8)",
        ),
        ("a: &x [1]\nb: *x\n", 2, "aliases"),
        ("<<: {a: 1}\n", 1, "merge keys"),
        ("a: !!python/object:os.system x\n", 1, "explicit tag"),
        ("a: 1\n---\nb: 2\n", 2, "second YAML document"),
        ("- 1\n- 2\n", 1, "top level must be a mapping"),
        ("just text\n", 1, "top level must be a mapping"),
        ("", 1, "empty"),
        ("   \n\n", 1, "empty"),
        ("# only a comment\n", 2, "no document"),
        ("a: [1, 2\n", 2, "YAML syntax"),
        ("? [a, b]\n: 1\n", 1, "keys must be plain strings"),
        ("x" * 10 + ": [" + "[" * 40 + "]" * 40 + "]\n", 1, "nesting deeper"),
    ],
)
def test_malformed_yaml_is_refused_with_position(
    text: str, line: int, needle: str
) -> None:
    error = refuse(text)
    assert needle in str(error), str(error)
    assert error.problems[0].line == line
    assert error.problems[0].file == "m.yaml"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\xef\xbb\xbfschema_version: v1\n", "byte-order mark"),
        (b"\xff\xfes\x00", "byte-order mark"),
        (b"channel: caf\xe9\n", "not UTF-8"),
        (b"a: " + b"x" * (yamlstrict.MAX_DOCUMENT_BYTES), "limit is"),
    ],
)
def test_bytes_that_are_not_a_utf8_document_are_refused(
    data: bytes, needle: str
) -> None:
    assert needle in str(refuse(data))


def test_billion_laughs_is_refused_without_expansion() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    error = refuse("\n".join(lines) + "\n")
    assert "aliases" in str(error)


def test_very_long_list_is_bounded() -> None:
    text = "a: [" + ",".join(["1"] * (yamlstrict.MAX_NODES + 10)) + "]\n"
    assert "YAML nodes" in str(refuse(text))


def test_too_many_components_is_refused() -> None:
    one = "  - component: c{i}\n    version: '1'\n    image: r/c@sha256:" + HEX + "\n"
    text = manifest_with("".join(one.format(i=i) for i in range(300)))
    assert "too long" in str(refuse(text)) or "300" in str(refuse(text))


NAME_CASES = [
    ("Telemetry", "not valid"),
    ("-lead", "not valid"),
    ("under_score", "not valid"),
    ("a" * 64, "too long"),
    ("café", "not valid"),
]


@pytest.mark.parametrize(("name", "needle"), NAME_CASES)
def test_component_names_must_be_dns_labels(name: str, needle: str) -> None:
    text = manifest_with(
        f"  - component: {name}\n    version: '1'\n    image: r/a@sha256:{HEX}\n"
    )
    error = refuse(text)
    assert needle in str(error)
    assert error.problems[0].line == 7


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("agent", "agent"),
        ("agent", "AGENT"),
        ("agent", "\uff41\uff47\uff45\uff4e\uff54"),  # fullwidth: NFKC gives "agent"
        ("straße", "STRASSE"),  # case folding turns ß into ss
    ],
)
def test_names_colliding_after_folding_are_duplicates(first: str, second: str) -> None:
    text = manifest_with(
        f"  - component: {first}\n    version: '1'\n    image: r/a@sha256:{HEX}\n"
        f"  - component: {second}\n    version: '1'\n    image: r/b@sha256:{HEX}\n"
    )
    assert "duplicates component #1" in str(refuse(text))


FILE = "  - component: f\n    version: '1'\n    url: https://h/x\n"
FILE += f"    sha256: {HEX}\n    size: 10\n    path: {{path}}\n"


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "../escape",
        "a/../../b",
        "a/./b",
        "a//b",
        "a/",
        "~/x",
        "'C:/win'",
        "'a\\\\b'",
        "'..'",
        '"a/\\0b"',
    ],
)
def test_file_destinations_that_could_escape_the_root_are_refused(path: str) -> None:
    error = refuse(manifest_with(FILE.format(path=path)))
    assert "destination" in str(error)


def test_two_files_with_one_destination_are_refused() -> None:
    both = FILE.format(path="p/x.yaml") + FILE.format(path="P/X.yaml").replace(
        "component: f", "component: g"
    )
    assert "also used by component #1" in str(refuse(manifest_with(both)))


IMAGE = "  - component: a\n    version: '1'\n{source}"


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("    image: ghcr.io/org/app:v2.3.0\n", "a tag alone is mutable"),
        ("    image: ghcr.io/org/app\n", "a tag alone is mutable"),
        ("    image: ghcr.io/org/app@sha256:abc\n", "64 lowercase hex"),
        (f"    image: ghcr.io/org/app@sha256:{HEX.upper()}\n", "64 lowercase hex"),
        (f"    image: ghcr.io/org/app@md5:{HEX}\n", "must be sha256"),
        (f"    image: app:v1\n    sha256: {HEX.upper()}\n", "sha256"),
        (f"    image: app:v1\n    sha256: sha256:{HEX}\n", "sha256"),
        ("    image: app:v1\n    sha256: 1e5\n", "sha256"),
        (f"    image: app:v1\n    sha256: {'1' * 12}\n", "quote this value"),
        (f"    image: 'org/UPPER@sha256:{HEX}'\n", "not an image reference"),
        (f"    image: 'org/app:bad tag@sha256:{HEX}'\n", "not an image reference"),
        (
            f"    image: app@sha256:{HEX}\n    sha256: {DIGEST_B}\n",
            "differs from the digest",
        ),
        (
            f"    image: app@sha256:{HEX}\n    url: https://x/y\n",
            "image component takes",
        ),
    ],
)
def test_image_sources_must_pin_a_full_digest(source: str, needle: str) -> None:
    error = refuse(manifest_with(IMAGE.format(source=source)))
    assert needle in str(error), str(error)


SCRIPT = "  - component: s\n    version: '1'\n    url: {url}\n    sha256: {sha}\n"
SCRIPT += "    size: {size}\n"


@pytest.mark.parametrize(
    ("url", "sha", "size", "needle"),
    [
        ("http://cdn.example/s.sh", HEX, 10, "must use https"),
        ("ftp://cdn.example/s.sh", HEX, 10, "must use https"),
        ("file:///etc/passwd", HEX, 10, "https"),
        ("https://user:pw@cdn.example/s.sh", HEX, 10, "credentials"),
        ("http://127.0.0.1:8000/s.sh", HEX, 10, "insecure option"),
        ("https://cdn.example/s.sh", HEX, -1, "minimum"),
        ("https://cdn.example/s.sh", HEX, 0, "minimum"),
        ("https://cdn.example/s.sh", HEX, 10**12, "maximum"),
        ("https://cdn.example/s.sh", HEX, "'10'", "expected an integer"),
        ("https://cdn.example/s.sh", HEX, "1.5", "expected an integer"),
        ("https://cdn.example/s.sh", "abc", 10, "64 lowercase"),
        ("'https://cdn.example/a b'", HEX, 10, "spaces"),
    ],
)
def test_script_sources_are_checked(
    url: str, sha: str, size: object, needle: str
) -> None:
    text = manifest_with(SCRIPT.format(url=url, sha=sha, size=size))
    assert needle in str(refuse(text)), str(refuse(text))


def test_all_digit_digest_is_kept_as_written_text() -> None:
    digits = "1" * 64  # plain digits: YAML 1.1 would read a number
    text = manifest_with(
        IMAGE.format(source=f"    image: a:v1\n    sha256: {digits}\n")
    )
    manifest = parse_manifest(text.encode(), source="m")
    assert manifest.components[0].digest == f"sha256:{digits}"


def test_loopback_http_needs_the_insecure_option() -> None:
    text = manifest_with(SCRIPT.format(url="http://127.0.0.1:8/s", sha=HEX, size=1))
    manifest = parse_manifest(text.encode(), source="m", allow_insecure_http=True)
    assert isinstance(manifest.components[0].source, ScriptSource)
    remote = manifest_with(SCRIPT.format(url="http://10.0.0.1/s", sha=HEX, size=1))
    assert "must use https" in str(refuse(remote, allow_insecure_http=True))


def component(name: str, deps: str = "") -> str:
    extra = f"    depends_on: {deps}\n" if deps else ""
    image = f"    image: r/{name}@sha256:{HEX}\n"
    return f"  - component: {name}\n    version: '1'\n{image}{extra}"


@pytest.mark.parametrize(
    ("components", "needle"),
    [
        (component("a", "[missing]"), "not in this manifest"),
        (component("a", "[b]") + component("b"), "comes later"),
        (component("a", "[a]"), "depends on itself"),
        (component("a", "[b]") + component("b", "[a]"), "cycle a -> b -> a"),
        (
            component("a", "[c]") + component("b", "[a]") + component("c", "[b]"),
            "cycle",
        ),
        (component("a") + component("b", "[a, a]"), "non-unique"),
    ],
)
def test_dependencies_must_name_earlier_components(
    components: str, needle: str
) -> None:
    assert needle in str(refuse(manifest_with(components)))


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ("schema_version: v2", "expected 'v1'"),
        ("serial: 0", "minimum"),
        ("serial: -4", "minimum"),
        ("serial: '7'", "expected an integer"),
        ("serial: 1.5", "expected an integer"),
        ("serial: 9007199254740993", "maximum"),
        ('issued_at: "2026-12-04T10:00:00+02:00"', "RFC 3339"),
        ('issued_at: "2026-02-30T10:00:00Z"', "not a real date"),
        ("issued_at: 2026-12-04", "RFC 3339"),
        ("channel: Stable", "not valid"),
        ("bogus: 1", "unknown field"),
    ],
)
def test_header_fields_are_checked(header: str, needle: str) -> None:
    key = header.split(":")[0]
    base = manifest_with(component("a"))
    lines = [line for line in base.splitlines() if not line.startswith(f"{key}:")]
    error = refuse("\n".join([header, *lines]) + "\n")
    assert needle in str(error), str(error)
    assert error.problems[0].line == 1


def test_components_and_includes_together_are_refused() -> None:
    text = manifest_with(component("a")) + "includes:\n" + component("b")
    assert "either `components` or `includes`" in str(refuse(text))


def test_expiry_before_issue_is_refused() -> None:
    text = manifest_with(component("a")).replace(
        "expires:", 'expires: "2000-01-01T00:00:00Z"\nold_expires:'
    )
    text = "\n".join(line for line in text.splitlines() if "old_expires" not in line)
    assert "later than `issued_at`" in str(refuse(text + "\n"))


def test_every_problem_is_reported_at_once() -> None:
    text = manifest_with(component("Bad") + component("b", "[zz]")).replace(
        "serial: 1", "serial: 0"
    )
    error = refuse(text)
    assert len(error.problems) >= 3
    assert [p.line for p in error.problems] == sorted(p.line for p in error.problems)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", f'"{HEX}\\n"'),  # `$` in a schema pattern matches before \n
        ("version", '"1\\n"'),
        ("component", '"agent\\n"'),
        ("version", '"1\\u200b"'),  # zero-width space
        ("version", '"\\u202e1"'),  # right-to-left override
        ("component", '"a\\u00ad"'),  # soft hyphen
    ],
)
def test_invisible_characters_are_refused_not_dropped(field: str, value: str) -> None:
    entry = {
        "component": "agent",
        "version": '"1"',
        "image": "r/a:v1",
        "sha256": HEX,
    }
    entry[field] = value
    text = "  - " + "\n    ".join(f"{k}: {v}" for k, v in entry.items()) + "\n"
    error = refuse(manifest_with(text + component("other")))
    assert "invisible" in str(error) or "not valid" in str(error), str(error)


def test_no_component_ever_vanishes_from_a_valid_manifest() -> None:
    text = manifest_with(component("a") + component("b") + component("c"))
    manifest = parse_manifest(text.encode(), source="m")
    assert [c.name for c in manifest.components] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("first", "second"),
    [("x", "x/y"), ("conf/app", "conf/app/extra.yaml"), ("A/b", "a/B/c")],
)
def test_a_destination_cannot_be_both_file_and_folder(first: str, second: str) -> None:
    both = FILE.format(path=first) + FILE.format(path=second).replace(
        "component: f", "component: g"
    )
    assert "both a file and a folder" in str(refuse(manifest_with(both)))


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example/caf\u00e9.sh",  # non-ASCII path: percent-encode it
        "https://exa\u200bmple.com/s.sh",
        "https://\u0435xample.com/s.sh",  # Cyrillic look-alike
        f"https://{'a' * 64}.example/s.sh",
        "https://cdn.example:0/s.sh",
        "https://-bad-.example/s.sh",
    ],
)
def test_urls_must_be_plain_ascii_with_a_valid_host(url: str) -> None:
    text = manifest_with(SCRIPT.format(url=f'"{url}"', sha=HEX, size=1))
    error = refuse(text)
    assert "ASCII" in str(error) or "host" in str(error) or "port 0" in str(error)
