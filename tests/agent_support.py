"""Real loopback parts for agent tests: a download server, a signed manifest
repository behind the token-checking git server, and agent configurations."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from centops.tools.localsigstore import LocalSigstore
from centops.tools.stack.clients import ISSUER, SIGNER, loopback_agent_config
from centops.tools.stack.gitserver import WorkRepo, init_bare

TOKEN = "s3cret-token-for-tests-7f1d"
T = TypeVar("T")


class FileServer:
    """Serves registered byte strings on 127.0.0.1, with per-path behaviours."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[
            str, Callable[[http.server.BaseHTTPRequestHandler], bool]
        ] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                hook = outer.behaviour.get(self.path)
                if hook is not None and hook(self):
                    return
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url + path

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Release:
    """Components of a manifest, built as dictionaries."""

    channel: str = "stable"
    serial: int = 1
    components: list[dict[str, Any]] = field(default_factory=list)
    expires_in: timedelta = timedelta(days=7)
    issued_ago: timedelta = timedelta(minutes=1)

    def text(self) -> str:
        now = datetime.now(UTC)
        body = {
            "schema_version": "v1",
            "channel": self.channel,
            "serial": self.serial,
            "issued_at": stamp(now - self.issued_ago),
            "expires": stamp(now + self.expires_in),
            "components": self.components,
        }
        return yaml.safe_dump(body, sort_keys=False)


def script_component(
    files: FileServer, name: str, script: bytes, *, version: str = "1", **over: Any
) -> dict[str, Any]:
    url = files.add(f"/{name}-{version}.sh", script)
    entry = {
        "component": name,
        "version": version,
        "url": url,
        "sha256": hashlib.sha256(script).hexdigest(),
        "size": len(script),
    }
    entry.update(over)
    return entry


def file_component(
    files: FileServer, name: str, body: bytes, path: str, *, version: str = "1"
) -> dict[str, Any]:
    url = files.add(f"/{name}-{version}.dat", body)
    return {
        "component": name,
        "version": version,
        "url": url,
        "sha256": hashlib.sha256(body).hexdigest(),
        "size": len(body),
        "path": path,
    }


class ManifestRepo:
    """The manifest repository: a bare repo served over smart HTTP, and a clone."""

    def __init__(self, root: Path, sigstore: LocalSigstore, server_url: str) -> None:
        self.bare = init_bare(root / "repos" / "fleet.git")
        self.work = WorkRepo.clone(self.bare, root / "work")
        self.sigstore = sigstore
        self.url = f"{server_url}/fleet.git"

    def publish(
        self,
        release: Release,
        *,
        sign: bool = True,
        san: str = SIGNER,
        issuer: str = ISSUER,
        tamper: Callable[[bytes], bytes] | None = None,
        bundle_from: bytes | None = None,
        message: str = "release",
        force: bool = False,
    ) -> str:
        """Commit (and push) a manifest; returns the commit id."""
        data = release.text().encode()
        path = f"manifests/{release.channel}/manifest.yaml"
        files = {path: tamper(data) if tamper else data}
        if sign:
            signed = bundle_from if bundle_from is not None else data
            bundle = self.sigstore.sign(signed, san=san, issuer=issuer)
            files[path + ".sigstore.json"] = bundle.encode()
        if not sign:
            bundle_path = self.work.path / (path + ".sigstore.json")
            if bundle_path.exists():
                self.work.git("rm", "--quiet", path + ".sigstore.json")
        sha = self.work.commit_files(files, message)
        self.work.push("main", force=force)
        return sha


def agent_config(
    root: Path,
    *,
    repo_url: str,
    sigstore: LocalSigstore,
    channel: str = "stable",
    client_id: str = "client-a",
    **extra: Any,
) -> Path:
    """Write an agent configuration for the test's loopback servers."""
    extra.setdefault("scripts", {"timeout_seconds": 5})
    extra.setdefault("downloads", {"timeout_seconds": 5})
    config = loopback_agent_config(
        root,
        repo_url=repo_url,
        trusted_root=sigstore.trusted_root_path,
        token_variable="CENTOPS_TEST_TOKEN",
        client_id=client_id,
        channel=channel,
        **extra,
    )
    path = root / "agent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def must_start(what: str, start: Callable[[], T]) -> T:
    """Start a real part the tests need. One that cannot start fails the test:
    a real-server test is never skipped, on CI or anywhere else."""
    try:
        return start()
    except Exception as exc:  # any reason it did not start is the failure
        describe = getattr(exc, "describe", None)
        detail = describe() if callable(describe) else str(exc)
        pytest.fail(f"{what} did not start: {detail}")


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")
