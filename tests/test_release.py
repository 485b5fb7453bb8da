"""`centops release` and `centops release promote` as an engineer uses them.

Tags are resolved against a real registry (Debian's docker-registry) started
on loopback; scripts and files come from a loopback HTTP server; auth and a
lying registry are loopback servers of this module. Where the registry cannot
start the tests skip, except under CI (env ``CI`` set), where that fails.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_support import FileServer, must_start
from typer.testing import CliRunner

from centops.agent.manifest import parse_manifest
from centops.tools import release as r
from centops.tools.cli import app
from centops.tools.stack import (
    OCI,
    ImageConfig,
    LayerFile,
    Platform,
    RegistryServer,
    push_image,
    push_index,
    start_registry,
    stop_registry,
)
from centops.tools.stack._proc import free_loopback_port

runner = CliRunner()
INSECURE = "--insecure-allow-http-loopback"
DIGEST_A = "0f4c5a3e6c9b1d2a7e8f90123456789abcdef0123456789abcdef0123456789a"
DIGEST_B = "7d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e"
DIGEST_C = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b"

STABLE = f"""\
# The update manifest of the `stable` channel.
# CI validates every change to this file.
schema_version: v1
channel: stable
serial: 7  # raised by every release
issued_at: "2026-12-01T00:00:00Z"
expires: "2027-01-15T00:00:00Z"
includes:
  - component: telemetry-agent  # the collector
    version: v2.3.0
    image: ghcr.io/org/centops-telemetry:v2.3.0
    sha256: {DIGEST_A}
  # the runner needs the agent
  - component: pipeline-runner
    version: v1.9.2
    image: ghcr.io/org/centops-runner:v1.9.2
    sha256: {DIGEST_B}
    depends_on: [telemetry-agent]
# end of the channel
"""

CANARY = f"""\
# canary: tried on a few clients first
schema_version: v1
channel: canary
serial: 3
issued_at: "2026-12-01T00:00:00Z"
expires: "2027-01-15T00:00:00Z"
components:
  - component: telemetry-agent
    version: v2.4.0
    image: ghcr.io/org/centops-telemetry@sha256:{DIGEST_C}
  - component: pipeline-runner
    version: v1.9.2
    image: ghcr.io/org/centops-runner:v1.9.2
    sha256: {DIGEST_B}
    depends_on: [telemetry-agent]
  - component: bootstrap
    version: "1.10"
    url: https://cdn.example/bootstrap.sh
    sha256: {DIGEST_A}
    size: 2048
"""


# --- fixtures


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A real registry on loopback for this module; under CI it must start."""
    server = must_start(
        "registry", lambda: start_registry(tmp_path_factory.mktemp("registry"))
    )
    yield server
    stop_registry(server)


@pytest.fixture
def repo_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with the stable and canary manifests; the cwd."""
    for channel, text in (("stable", STABLE), ("canary", CANARY)):
        folder = tmp_path / "manifests" / channel
        folder.mkdir(parents=True)
        (folder / "manifest.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def stable(root: Path) -> str:
    return (root / "manifests/stable/manifest.yaml").read_text()


def push_sample(server: RegistryServer, repo: str, tag: str, text: str) -> str:
    return push_image(
        server.url,
        repo,
        tag,
        layers=[{"/hello.txt": LayerFile(text.encode())}],
        config=ImageConfig(entrypoint=("/hello",)),
    )


def release(*args: str) -> Any:
    return runner.invoke(app, ["release", *args])


def image_args(image: str, version: str = "v2.3.1") -> list[str]:
    return [
        "--channel",
        "stable",
        "--component",
        "telemetry-agent",
        "--version",
        version,
        "--image",
        image,
    ]


def timestamps(text: str) -> tuple[datetime, datetime]:
    manifest = parse_manifest(text.encode(), source="t")
    return manifest.issued_at, manifest.expires


# --- images against the real registry


def test_tag_is_pinned_to_the_pushed_digest_keeping_comments_and_order(
    registry: RegistryServer, repo_root: Path
) -> None:
    digest = push_sample(registry, "org/telemetry", "v2.3.1", "one")
    image = f"{registry.host}/org/telemetry:v2.3.1"
    before = datetime.now(UTC).replace(microsecond=0)

    result = release(*image_args(image), INSECURE)

    assert result.exit_code == 0, result.output
    text = stable(repo_root)
    issued, expires = timestamps(text)
    assert before <= issued <= datetime.now(UTC)
    assert expires - issued == timedelta(days=30)
    expected = (
        STABLE.replace("serial: 7  #", "serial: 8  #")
        .replace('"2026-12-01T00:00:00Z"', f'"{issued:%Y-%m-%dT%H:%M:%SZ}"')
        .replace('"2027-01-15T00:00:00Z"', f'"{expires:%Y-%m-%dT%H:%M:%SZ}"')
        .replace("version: v2.3.0", "version: v2.3.1")
        .replace("ghcr.io/org/centops-telemetry:v2.3.0", image)
        .replace(f"sha256: {DIGEST_A}", f"sha256: {digest.removeprefix('sha256:')}")
    )
    assert text == expected
    assert "telemetry-agent: v2.3.0 → v2.3.1" in result.output


def test_index_tag_is_pinned_to_the_index_digest(
    registry: RegistryServer, repo_root: Path
) -> None:
    layers = [{"/hello.txt": LayerFile(b"multi")}]
    config = ImageConfig(entrypoint=("/hello",))
    digest = push_index(
        registry.url,
        "org/multi",
        "v2.4.0",
        platforms={
            Platform("amd64"): (layers, config),
            Platform("arm64", variant="v8"): (layers, config),
        },
        media=OCI,
    )
    image = f"{registry.host}/org/multi:v2.4.0"

    result = release(*image_args(image, "v2.4.0"), INSECURE)

    assert result.exit_code == 0, result.output
    component = parse_manifest(stable(repo_root).encode(), source="t").component(
        "telemetry-agent"
    )
    assert component is not None and component.digest == digest


def test_unknown_tag_is_refused_and_nothing_written(
    registry: RegistryServer, repo_root: Path
) -> None:
    result = release(*image_args(f"{registry.host}/org/telemetry:nope"), INSECURE)
    assert result.exit_code == 1
    assert "was not found" in result.output
    assert stable(repo_root) == STABLE


def test_registry_down_is_refused(repo_root: Path) -> None:
    image = f"127.0.0.1:{free_loopback_port()}/org/telemetry:v2.3.1"
    result = release(*image_args(image), INSECURE, "--timeout", "2")
    assert result.exit_code == 2
    assert "registry" in result.output
    assert stable(repo_root) == STABLE


def test_loopback_registry_needs_the_insecure_switch(
    registry: RegistryServer, repo_root: Path
) -> None:
    push_sample(registry, "org/telemetry", "v2.3.1", "one")
    result = release(*image_args(f"{registry.host}/org/telemetry:v2.3.1"))
    assert result.exit_code == 2  # https to a plain-http registry fails
    assert stable(repo_root) == STABLE


def test_digest_given_directly_is_written_as_is_without_a_registry(
    repo_root: Path,
) -> None:
    image = f"ghcr.io/org/centops-telemetry@sha256:{DIGEST_C}"
    result = release(*image_args(image))
    assert result.exit_code == 0, result.output
    text = stable(repo_root)
    assert f"    image: {image}\n" in text
    assert f"sha256: {DIGEST_A}" not in text  # one digest, the inline one


def test_tag_without_digest_and_without_registry_is_never_written(
    repo_root: Path,
) -> None:
    result = release(*image_args("ghcr.io/org/centops-telemetry"))
    assert result.exit_code == 2
    assert "neither a tag nor a digest" in result.output
    assert stable(repo_root) == STABLE


# --- registries of this module: token auth and a lying registry


class FakeRegistry:
    """A loopback registry speaking just enough of the API for one manifest."""

    def __init__(
        self, *, lie: bool = False, login: str = "", realm_host: str = "127.0.0.1"
    ) -> None:
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {},
                "layers": [],
            }
        ).encode()
        self.digest = "sha256:" + hashlib.sha256(self.manifest).hexdigest()
        self.token = "s3cr3t-token-value"
        self.seen_logins: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/token"):
                    given = self.headers.get("Authorization", "")
                    outer.seen_logins.append(given)
                    if login and given != f"Basic {login}":
                        self.send_error(401)
                        return
                    self._send(200, json.dumps({"token": outer.token}).encode())
                    return
                if self.headers.get("Authorization") != f"Bearer {outer.token}":
                    self.send_response(401)
                    realm = f"http://{realm_host}:{outer.port}/token"
                    self.send_header(
                        "WWW-Authenticate",
                        f'Bearer realm="{realm}",service="fake",'
                        'scope="repository:org/app:pull"',
                    )
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                claimed = "sha256:" + "0" * 64 if lie else outer.digest
                self._send(200, outer.manifest, claimed)

            def _send(self, status: int, body: bytes, digest: str = "") -> None:
                self.send_response(status)
                self.send_header(
                    "Content-Type", "application/vnd.oci.image.manifest.v1+json"
                )
                if digest:
                    self.send_header("Docker-Content-Digest", digest)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_registry() -> Callable[..., FakeRegistry]:
    started: list[FakeRegistry] = []

    def start(**kwargs: Any) -> FakeRegistry:
        started.append(FakeRegistry(**kwargs))
        return started[-1]

    yield start  # type: ignore[misc]
    for server in started:
        server.stop()


def test_token_flow_with_credentials_file_keeps_the_token_out_of_logs(
    fake_registry: Callable[..., FakeRegistry],
    repo_root: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    login = base64.b64encode(b"ci:hunter2").decode()
    server = fake_registry(login=login)
    host = f"127.0.0.1:{server.port}"
    credentials = repo_root / "config.json"
    credentials.write_text(json.dumps({"auths": {host: {"auth": login}}}))
    caplog.set_level(logging.DEBUG, logger="centops")

    result = release(
        *image_args(f"{host}/org/app:v2.3.1"),
        INSECURE,
        "--registry-credentials",
        str(credentials),
    )

    assert result.exit_code == 0, result.output
    assert server.seen_logins == [f"Basic {login}"]
    assert server.digest.removeprefix("sha256:") in stable(repo_root)
    for text in (caplog.text, result.output):
        assert server.token not in text
        assert login not in text


def test_login_is_not_sent_to_a_token_service_on_another_host(
    fake_registry: Callable[..., FakeRegistry], repo_root: Path
) -> None:
    login = base64.b64encode(b"ci:hunter2").decode()
    server = fake_registry(realm_host="localhost")  # another name, same loopback
    host = f"127.0.0.1:{server.port}"
    credentials = repo_root / "config.json"
    credentials.write_text(json.dumps({"auths": {host: {"auth": login}}}))
    result = release(
        *image_args(f"{host}/org/app:v2.3.1"),
        INSECURE,
        "--registry-credentials",
        str(credentials),
    )
    assert result.exit_code == 0, result.output
    assert server.seen_logins == [""]  # asked anonymously


def test_anonymous_token_flow(
    fake_registry: Callable[..., FakeRegistry], repo_root: Path
) -> None:
    server = fake_registry()
    result = release(*image_args(f"127.0.0.1:{server.port}/org/app:v2.3.1"), INSECURE)
    assert result.exit_code == 0, result.output
    assert server.seen_logins == [""]


def test_registry_lying_about_the_digest_is_refused(
    fake_registry: Callable[..., FakeRegistry], repo_root: Path
) -> None:
    server = fake_registry(lie=True)
    result = release(*image_args(f"127.0.0.1:{server.port}/org/app:v2.3.1"), INSECURE)
    assert result.exit_code == 1
    assert "hashes to" in result.output
    assert stable(repo_root) == STABLE


# --- scripts and files


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.stop()


def test_script_release_records_hash_and_size(
    files: FileServer, repo_root: Path
) -> None:
    body = b"#!/bin/sh\necho bootstrap\n"
    url = files.add("/bootstrap.sh", body)
    result = release(
        "--channel", "stable", "--component", "bootstrap", "--version", "1.11",
        "--script-url", url, "--depends-on", "telemetry-agent",
        "--after", "telemetry-agent", INSECURE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = parse_manifest(
        stable(repo_root).encode(), source="t", allow_insecure_http=True
    )
    assert [c.name for c in manifest.components] == [
        "telemetry-agent",
        "bootstrap",
        "pipeline-runner",
    ]
    bootstrap = manifest.components[1]
    assert bootstrap.version == "1.11"
    assert bootstrap.digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert bootstrap.depends_on == ("telemetry-agent",)
    assert 'version: "1.11"' in stable(repo_root)
    # the comment that introduced the runner still stands right above it
    assert "  # the runner needs the agent\n  - component: pipeline-runner" in (
        stable(repo_root)
    )


def test_file_release_appends_with_its_destination(
    files: FileServer, repo_root: Path
) -> None:
    body = b"rules: []\n"
    url = files.add("/policy.yaml", body)
    result = release(
        "--channel", "stable", "--component", "default-policy", "--version", "3",
        "--file-url", url, "--path", "policies/default.yaml", INSECURE,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = stable(repo_root)
    assert text.endswith(
        f"  - component: default-policy\n"
        f'    version: "3"\n'
        f"    url: {url}\n"
        f"    sha256: {hashlib.sha256(body).hexdigest()}\n"
        f"    size: 10\n"
        f"    path: policies/default.yaml\n"
        f"# end of the channel\n"
    )


def test_download_over_the_cap_is_refused(files: FileServer, repo_root: Path) -> None:
    url = files.add("/big.sh", b"x" * 2048)
    result = release(
        "--channel", "stable", "--component", "bootstrap", "--version", "1",
        "--script-url", url, "--max-download-bytes", "1024", INSECURE,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "cap of 1024" in result.output
    assert stable(repo_root) == STABLE


@pytest.mark.parametrize(
    "dest", ["../etc/passwd", "/etc/passwd", "policies/../../x", "a\\b"]
)
def test_hostile_file_destination_is_refused(
    files: FileServer, repo_root: Path, dest: str
) -> None:
    url = files.add("/p.yaml", b"p\n")
    result = release(
        "--channel", "stable", "--component", "p", "--version", "1",
        "--file-url", url, "--path", dest, INSECURE,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "destination" in result.output
    assert stable(repo_root) == STABLE


# --- the rules of a release


def test_older_version_is_refused_without_downgrade(repo_root: Path) -> None:
    image = f"ghcr.io/org/centops-telemetry@sha256:{DIGEST_C}"
    result = release(*image_args(image, "v2.2.9"))
    assert result.exit_code == 1
    assert "older" in result.output and "--downgrade" in result.output
    assert stable(repo_root) == STABLE

    result = release(*image_args(image, "v2.2.9"), "--downgrade")
    assert result.exit_code == 0, result.output
    manifest = parse_manifest(stable(repo_root).encode(), source="t")
    agent = manifest.component("telemetry-agent")
    assert agent is not None and agent.downgrade and agent.version == "v2.2.9"


def test_new_content_under_a_released_version_is_refused(repo_root: Path) -> None:
    image = f"ghcr.io/org/centops-telemetry@sha256:{DIGEST_C}"
    result = release(*image_args(image, "v2.3.0"))
    assert result.exit_code == 1
    assert "immutable" in result.output
    assert stable(repo_root) == STABLE


def test_invalid_result_leaves_the_file_untouched(repo_root: Path) -> None:
    image = f"ghcr.io/org/other@sha256:{DIGEST_C}"
    result = release(
        "--channel", "stable", "--component", "extra", "--version", "1.0.0",
        "--image", image, "--depends-on", "missing",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "'missing', which is not in this manifest" in result.output
    assert stable(repo_root) == STABLE

    result = release(*image_args(image), "--expires-in-days", "200")
    assert result.exit_code == 1
    assert "more than 90 days ahead" in result.output
    assert stable(repo_root) == STABLE


def test_dry_run_prints_a_diff_and_writes_nothing(repo_root: Path) -> None:
    image = f"ghcr.io/org/centops-telemetry@sha256:{DIGEST_C}"
    result = release(*image_args(image), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "--- a/manifests/stable/manifest.yaml" in result.output
    assert "-serial: 7  # raised by every release" in result.output
    assert "+serial: 8  # raised by every release" in result.output
    assert "dry run: nothing written" in result.output
    assert stable(repo_root) == STABLE


def test_new_channel_starts_at_serial_one(repo_root: Path) -> None:
    image = f"ghcr.io/org/centops-telemetry@sha256:{DIGEST_C}"
    result = runner.invoke(
        app,
        ["release", "--channel", "edge", "--component", "telemetry-agent",
         "--version", "v3.0.0", "--image", image],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = (repo_root / "manifests/edge/manifest.yaml").read_text()
    manifest = parse_manifest(text.encode(), source="t")
    assert (manifest.channel, manifest.serial) == ("edge", 1)
    assert manifest.components[0].digest == f"sha256:{DIGEST_C}"


@pytest.mark.parametrize("channel", ["../stable", "Stable", "a/b", ""])
def test_hostile_channel_names_are_refused(repo_root: Path, channel: str) -> None:
    image = f"ghcr.io/org/centops-telemetry@sha256:{DIGEST_C}"
    result = runner.invoke(
        app,
        ["release", "--channel", channel, "--component", "x", "--version", "1",
         "--image", image],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "not a channel name" in result.output


# --- git: a branch and a commit ready for a pull request


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
        timeout=30,
    ).stdout  # fmt: skip


@pytest.fixture
def git_root(repo_root: Path) -> Path:
    git(repo_root, "init", "-q", "-b", "main")
    git(repo_root, "config", "user.name", "Release Engineer")
    git(repo_root, "config", "user.email", "re@example.invalid")
    git(repo_root, "add", "manifests")
    git(repo_root, "commit", "-q", "-m", "initial")
    return repo_root


def test_branch_holds_one_commit_describing_the_release(
    registry: RegistryServer, git_root: Path
) -> None:
    digest = push_sample(registry, "org/telemetry", "v2.3.1", "one")
    image = f"{registry.host}/org/telemetry:v2.3.1"
    result = release(*image_args(image), INSECURE, "--branch", "release/agent")
    assert result.exit_code == 0, result.output
    assert git(git_root, "branch", "--show-current").strip() == "release/agent"
    message = git(git_root, "log", "-1", "--format=%B")
    assert message.startswith("release(stable): telemetry-agent v2.3.0 → v2.3.1\n")
    assert "serial: 7 → 8" in message
    assert f"digest: {digest}" in message
    changed = git(git_root, "show", "--name-only", "--format=", "HEAD").split()
    assert changed == ["manifests/stable/manifest.yaml"]
    assert git(git_root, "status", "--porcelain") == ""
    assert git(git_root, "rev-parse", "main") != git(git_root, "rev-parse", "HEAD")


def test_branch_refuses_staged_changes_and_existing_branches(git_root: Path) -> None:
    image = f"ghcr.io/org/centops-telemetry@sha256:{DIGEST_C}"
    git(git_root, "branch", "taken")
    result = release(*image_args(image), "--branch", "taken")
    assert result.exit_code == 2 and "exists already" in result.output

    (git_root / "other.txt").write_text("x")
    git(git_root, "add", "other.txt")
    result = release(*image_args(image), "--branch", "fresh")
    assert result.exit_code == 2 and "staged" in result.output
    assert stable(git_root) == STABLE
    assert git(git_root, "branch", "--show-current").strip() == "main"


@pytest.mark.parametrize(
    "name",
    [
        "refs/heads/main",
        "main",
        "@",
        "@{-1}",
        "-x",
        "--upload-pack=x",
        "a..b",
        "origin/main",
        "x.lock",
        "a b",
    ],
)
def test_branch_must_be_a_plain_new_name(git_root: Path, name: str) -> None:
    git(git_root, "update-ref", "refs/remotes/origin/main", "HEAD")
    image = f"ghcr.io/org/centops-telemetry@sha256:{DIGEST_C}"
    result = release(*image_args(image), "--branch", name)
    assert result.exit_code == 2, result.output
    assert git(git_root, "branch", "--show-current").strip() == "main"
    assert stable(git_root) == STABLE
    assert git(git_root, "log", "-1", "--format=%s", "main").strip() != ""


# --- promotion


def test_promote_copies_digests_and_raises_the_target_serial(repo_root: Path) -> None:
    result = release("promote", "--from", "canary", "--to", "stable")
    assert result.exit_code == 0, result.output
    target = parse_manifest(
        stable(repo_root).encode(), source="t", allow_insecure_http=True
    )
    tested = parse_manifest(CANARY.encode(), source="c")
    assert target.serial == 8
    assert [c.name for c in target.components] == [
        "telemetry-agent",
        "pipeline-runner",
        "bootstrap",
    ]
    for component in tested.components:
        copied = target.component(component.name)
        assert copied is not None
        assert (copied.version, copied.digest) == (component.version, component.digest)
    text = stable(repo_root)
    assert text.startswith("# The update manifest of the `stable` channel.\n")
    assert "# the runner needs the agent\n" in text
    assert text.endswith("# end of the channel\n")


def test_promote_one_component_with_dry_run_then_branch(git_root: Path) -> None:
    args = ["promote", "--from", "canary", "--to", "stable"]
    dry = release(*args, "--component", "telemetry-agent", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"+    image: ghcr.io/org/centops-telemetry@sha256:{DIGEST_C}" in dry.output
    assert "bootstrap" not in dry.output
    assert stable(git_root) == STABLE

    done = release(*args, "--component", "telemetry-agent", "--branch", "promote/1")
    assert done.exit_code == 0, done.output
    message = git(git_root, "log", "-1", "--format=%B")
    assert message.startswith("promote(canary → stable): telemetry-agent v2.4.0\n")
    assert "telemetry-agent: v2.3.0 → v2.4.0" in message
    target = parse_manifest(stable(git_root).encode(), source="t")
    assert [c.name for c in target.components] == ["telemetry-agent", "pipeline-runner"]


def test_promoting_what_the_target_already_has_is_refused(repo_root: Path) -> None:
    assert release("promote", "--from", "canary", "--to", "stable").exit_code == 0
    before = stable(repo_root)
    again = release("promote", "--from", "canary", "--to", "stable")
    assert again.exit_code == 1
    assert "nothing to promote" in again.output
    assert stable(repo_root) == before


def test_promote_unknown_component_is_a_usage_error(repo_root: Path) -> None:
    result = release("promote", "--from", "canary", "--to", "stable",
                     "--component", "nope")  # fmt: skip
    assert result.exit_code == 2
    assert "no component 'nope'" in result.output


# --- the pure core


def test_plan_keeps_end_of_line_comments_when_keys_change() -> None:
    text = STABLE.replace(
        f"    sha256: {DIGEST_A}\n", f"    sha256: {DIGEST_A}  # pinned\n"
    )
    plan = r.plan_release(
        text,
        source="manifests/stable/manifest.yaml",
        channel="stable",
        item=r.ReleaseItem(
            "telemetry-agent",
            "v2.3.1",
            r.ScriptSource("https://cdn.example/agent.sh", DIGEST_C, 10),
        ),
        now=datetime(2026, 12, 4, 12, 0, tzinfo=UTC),
    )
    assert "    size: 10\n  # the runner needs the agent\n" in plan.new_text
    assert "image:" not in plan.new_text.split("pipeline-runner")[0]
    assert plan.new_serial == 8
    assert plan.changes[0].describe() == (
        f"telemetry-agent: v2.3.0 → v2.3.1, sha256:{DIGEST_C}"
    )
