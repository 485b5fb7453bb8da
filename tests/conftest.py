"""Shared fixtures. Every server here is real, on loopback, started by the test
session and stopped by it; one that cannot start fails the test, never skips."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agent_support import TOKEN, FileServer, ManifestRepo

from centops.tools.localsigstore import LocalSigstore
from centops.tools.stack import (
    Stack,
    StackError,
    build_app,
    connect,
    start_stack,
    stop_stack,
)
from centops.tools.stack.gitserver import SmartHttpGitServer


@pytest.fixture(scope="session")
def local_sigstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSigstore]:
    """A throwaway Sigstore (CA, CT log, Rekor) for the whole session."""
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    with LocalSigstore.create(tmp_path_factory.mktemp("sigstore")) as sigstore:
        yield sigstore


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.stop()


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[SmartHttpGitServer]:
    (tmp_path / "repos").mkdir(exist_ok=True)
    with SmartHttpGitServer(tmp_path / "repos", token=TOKEN) as server:
        yield server


@pytest.fixture
def manifest_repo(
    tmp_path: Path, local_sigstore: LocalSigstore, git_server: SmartHttpGitServer
) -> ManifestRepo:
    return ManifestRepo(tmp_path, local_sigstore, git_server.url)


@pytest.fixture
def agent_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The environment an agent process gets: the token, and a private cache."""
    monkeypatch.setenv("CENTOPS_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("CENTOPS_AGENT_CACHE_DIR", str(tmp_path / "cache"))
    return dict(os.environ)


@pytest.fixture(scope="session")
def app_binary(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A static binary that runs as a container (built once per session)."""
    try:
        return build_app(tmp_path_factory.mktemp("app-cache")).read_bytes()
    except StackError as e:
        pytest.fail(f"cannot build the sample image binary: {e.describe()}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real registry and Docker Engine on loopback; failing to start fails."""
    try:
        started = start_stack(tmp_path_factory.mktemp("image-stack"))
    except StackError as e:
        pytest.fail(f"the container stack did not start: {e.describe()}")
    yield started
    stop_stack(started)


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[Any]:
    session_client = connect(stack.daemon.docker_host)
    yield session_client
    session_client.close()
