"""Shared fixtures. Every server here is real, on loopback, started by the test
session and stopped by it; one that cannot start fails the test, never skips."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agent_support import TOKEN, FileServer, ManifestRepo

from centops.tools.localsigstore import LocalSigstore
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
