"""Scenarios for the loopback git servers in `centops.tools.stack.gitserver`.

Every server here is real (git http-backend, git daemon) and bound to
127.0.0.1. Locally, a machine without them skips; with `CI` set, a server that
fails to start fails the run instead, so a broken stack cannot pass silently.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from agent_support import must_start

from centops.tools.stack.gitserver import (
    GitDaemon,
    GitServerError,
    ServerProcess,
    SmartHttpGitServer,
    WorkRepo,
    git_auth_env,
    init_bare,
    isolated_git_env,
    spawn_http_server,
)

REPO = "fleet.git"
GIT_TIMEOUT_S = 60.0

T = TypeVar("T")


def _git(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run git (without raising) with an isolated environment."""
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env if env is not None else isolated_git_env(),
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_S,
        check=False,
    )


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def git_root(tmp_path: Path) -> Path:
    root = tmp_path / "repos"
    root.mkdir()
    return root


@pytest.fixture
def work(git_root: Path, tmp_path: Path) -> WorkRepo:
    """A bare `fleet.git` with one commit on main, and the clone that wrote it."""
    bare = init_bare(git_root / REPO)
    repo = WorkRepo.clone(bare, tmp_path / "work")
    repo.commit_files({"manifests/app.yaml": b"version: 1\n"}, "first manifest")
    repo.push("main")
    return repo


@pytest.fixture
def http_server(
    git_root: Path, work: WorkRepo, token: str
) -> Iterator[SmartHttpGitServer]:
    server = SmartHttpGitServer(git_root, token=token)
    must_start("git http-backend server", server.start)
    yield server
    server.stop()


@pytest.fixture
def git_daemon(git_root: Path, work: WorkRepo) -> Iterator[GitDaemon]:
    daemon = GitDaemon(git_root)
    must_start("git daemon", daemon.start)
    yield daemon
    daemon.stop()


@pytest.fixture
def client_env(token: str) -> dict[str, str]:
    """What a client runs git with: the token only in environment config."""
    return git_auth_env(token, base=isolated_git_env())


@pytest.fixture
def clone(
    http_server: SmartHttpGitServer, client_env: dict[str, str], tmp_path: Path
) -> Path:
    target = tmp_path / "client"
    done = _git("clone", http_server.repo_url(REPO), str(target), env=client_env)
    assert done.returncode == 0, done.stderr
    return target


# --------------------------------------------------------------------------- #
# Fetching over smart HTTP
# --------------------------------------------------------------------------- #


def test_clone_with_token_from_env_config_gets_main(
    clone: Path, work: WorkRepo, token: str
) -> None:
    head = _git("rev-parse", "HEAD", cwd=clone).stdout.strip()
    assert head == work.git("rev-parse", "HEAD").strip()
    assert token not in (clone / ".git" / "config").read_text()


def test_fetch_sees_a_new_commit(
    clone: Path, work: WorkRepo, client_env: dict[str, str]
) -> None:
    sha = work.commit_files({"manifests/app.yaml": b"version: 2\n"}, "second")
    work.push("main")
    done = _git("fetch", "origin", "main", cwd=clone, env=client_env)
    assert done.returncode == 0, done.stderr
    assert _git("rev-parse", "FETCH_HEAD", cwd=clone).stdout.strip() == sha


def test_shallow_fetch_speaks_protocol_v2(
    clone: Path,
    http_server: SmartHttpGitServer,
    work: WorkRepo,
    client_env: dict[str, str],
) -> None:
    sha = work.commit_files({"manifests/app.yaml": b"version: 3\n"}, "third")
    work.push("main")
    http_server.stats.reset()
    done = _git(
        "-c", "protocol.version=2", "fetch", "--depth=1", "origin", "main",
        cwd=clone, env=client_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _git("rev-parse", "FETCH_HEAD", cwd=clone).stdout.strip() == sha
    stats = http_server.stats.snapshot()
    assert stats["requests"] >= 2
    assert stats["protocol_v2_requests"] == stats["requests"]


def test_basic_auth_with_any_user_and_the_token_as_password(
    http_server: SmartHttpGitServer, token: str
) -> None:
    env = git_auth_env(token, scheme="basic", user="anyone", base=isolated_git_env())
    done = _git("ls-remote", http_server.repo_url(REPO), "refs/heads/main", env=env)
    assert done.returncode == 0, done.stderr
    assert "refs/heads/main" in done.stdout


def test_large_negotiation_arrives_gzipped_and_is_understood(
    clone: Path,
    http_server: SmartHttpGitServer,
    work: WorkRepo,
    client_env: dict[str, str],
) -> None:
    # Local commits the server lacks make the client send many "have" lines,
    # which git compresses once a request passes 1 KB.
    _add_local_commits(clone, 200)
    sha = work.commit_files({"manifests/app.yaml": b"version: 4\n"}, "fourth")
    work.push("main")
    http_server.stats.reset()
    done = _git("fetch", "origin", "main", cwd=clone, env=client_env)
    assert done.returncode == 0, done.stderr
    assert _git("rev-parse", "FETCH_HEAD", cwd=clone).stdout.strip() == sha
    assert http_server.stats.snapshot()["gzip_requests"] >= 1


def test_fetch_with_10000_extra_refs_still_works(
    clone: Path,
    http_server: SmartHttpGitServer,
    work: WorkRepo,
    client_env: dict[str, str],
) -> None:
    work.add_refs(10_000)
    listed = _git("--git-dir", str(work.bare), "for-each-ref", "refs/extra/")
    assert len(listed.stdout.splitlines()) == 10_000
    http_server.stats.reset()
    done = _git("fetch", "origin", "main", cwd=clone, env=client_env)
    assert done.returncode == 0, done.stderr
    # ref-prefix keeps the poll small: far below a listing of 10,000 refs.
    assert http_server.stats.snapshot()["bytes_sent"] < 20_000


def _add_local_commits(clone: Path, count: int) -> None:
    """Add `count` commits on a local branch in one `git fast-import` run."""
    # Newer than anything on the server, so the client offers them first.
    start = int(time.time()) + 3600
    stream = []
    for i in range(count):
        message = f"local {i}\n".encode()
        parent = b"from refs/heads/main^0\n" if i == 0 else b""
        stream.append(
            b"commit refs/heads/local\n"
            b"committer T <t@example.invalid> %d +0000\n"
            b"data %d\n%b%b" % (start + i, len(message), message, parent)
        )
    done = subprocess.run(
        ["git", "fast-import", "--quiet"],
        cwd=clone,
        env=isolated_git_env(),
        input=b"".join(stream),
        capture_output=True,
        timeout=GIT_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- #
# Authentication
# --------------------------------------------------------------------------- #


def test_clone_without_token_is_refused_with_401(
    http_server: SmartHttpGitServer, tmp_path: Path
) -> None:
    done = _git("clone", http_server.repo_url(REPO), str(tmp_path / "anon"))
    assert done.returncode != 0
    assert http_server.stats.snapshot()["by_status"].get("401", 0) >= 1
    assert http_server.stats.snapshot()["by_status"].get("200", 0) == 0


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token",
        "Bearer {token}x",
        "bearer {token} extra",
        "Basic " + base64.b64encode(b"user:wrong").decode(),
        "Basic " + base64.b64encode(b"{token}").decode(),  # no colon: no password
        "Basic not-base64!!",
        "Token {token}",
    ],
)
def test_wrong_or_missing_credentials_get_401_with_basic_challenge(
    http_server: SmartHttpGitServer, token: str, authorization: str | None
) -> None:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.replace("{token}", token)
    status, reply_headers = _get_info_refs(http_server, headers)
    assert status == 401
    assert reply_headers.get("WWW-Authenticate", "").startswith("Basic realm=")


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
def test_both_auth_schemes_are_accepted_over_raw_http(
    http_server: SmartHttpGitServer, token: str, scheme: str
) -> None:
    if scheme == "bearer":
        value = f"Bearer {token}"
    else:
        value = "Basic " + base64.b64encode(f"u:{token}".encode()).decode()
    status, _ = _get_info_refs(http_server, {"Authorization": value})
    assert status == 200


def test_wrong_token_through_env_config_fails(
    http_server: SmartHttpGitServer, tmp_path: Path
) -> None:
    env = git_auth_env("not-the-token", base=isolated_git_env())
    done = _git("clone", http_server.repo_url(REPO), str(tmp_path / "x"), env=env)
    assert done.returncode != 0
    assert http_server.stats.snapshot()["by_status"].get("200", 0) == 0


def _get_info_refs(
    server: SmartHttpGitServer, headers: dict[str, str]
) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(
            "GET", f"/{REPO}/info/refs?service=git-upload-pack", headers=headers
        )
        reply = conn.getresponse()
        reply.read()
        return reply.status, dict(reply.getheaders())
    finally:
        conn.close()


# --------------------------------------------------------------------------- #
# Hostile requests
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "path",
    [
        "/../etc/passwd",
        "/fleet.git/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/fleet.git/%00/info/refs",
    ],
)
def test_paths_leaving_the_root_are_not_served(
    http_server: SmartHttpGitServer, token: str, path: str
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", http_server.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        reply = conn.getresponse()
        body = reply.read()
    finally:
        conn.close()
    assert reply.status == 404
    assert b"root:" not in body


def test_oversized_request_body_is_refused_with_413(
    git_root: Path, work: WorkRepo, token: str
) -> None:
    with SmartHttpGitServer(git_root, token=token, max_request_bytes=1000) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        try:
            conn.request(
                "POST",
                f"/{REPO}/git-upload-pack",
                body=b"0" * 5000,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/x-git-upload-pack-request",
                },
            )
            reply = conn.getresponse()
            reply.read()
        finally:
            conn.close()
    assert reply.status == 413


# --------------------------------------------------------------------------- #
# Pushing
# --------------------------------------------------------------------------- #


def test_push_over_http_updates_the_bare_repository(
    clone: Path,
    http_server: SmartHttpGitServer,
    work: WorkRepo,
    client_env: dict[str, str],
) -> None:
    (clone / "results.txt").write_text("ok\n")
    _git("add", "results.txt", cwd=clone)
    _git("commit", "-q", "-m", "result", cwd=clone)
    sha = _git("rev-parse", "HEAD", cwd=clone).stdout.strip()
    done = _git("push", "origin", "HEAD:refs/heads/results", cwd=clone, env=client_env)
    assert done.returncode == 0, done.stderr
    assert work.git("ls-remote", "origin", "refs/heads/results").startswith(sha)


def test_large_push_arrives_chunked_and_is_stored(
    clone: Path,
    http_server: SmartHttpGitServer,
    work: WorkRepo,
    client_env: dict[str, str],
) -> None:
    # Past http.postBuffer (1 MiB) git streams the pack with chunked encoding.
    (clone / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    _git("add", "blob.bin", cwd=clone)
    _git("commit", "-q", "-m", "big", cwd=clone)
    sha = _git("rev-parse", "HEAD", cwd=clone).stdout.strip()
    http_server.stats.reset()
    done = _git("push", "origin", "HEAD:refs/heads/big", cwd=clone, env=client_env)
    assert done.returncode == 0, done.stderr
    assert work.git("ls-remote", "origin", "refs/heads/big").startswith(sha)
    assert http_server.stats.snapshot()["chunked_requests"] >= 1


def test_work_repo_force_push_rewrites_the_branch(work: WorkRepo) -> None:
    work.git("reset", "--quiet", "--hard", "HEAD")
    first = work.git("rev-parse", "HEAD").strip()
    work.commit_files({"x.txt": b"1"}, "to be rewritten")
    work.push("main")
    work.git("reset", "--quiet", "--hard", first)
    rewritten = work.commit_files({"y.txt": b"2"}, "rewrite")
    with pytest.raises(GitServerError):
        work.push("main")
    work.push("main", force=True)
    assert work.git("ls-remote", "origin", "refs/heads/main").startswith(rewritten)


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a/../../b", ""])
def test_work_repo_refuses_paths_outside_the_clone(work: WorkRepo, name: str) -> None:
    with pytest.raises(ValueError):
        work.commit_files({name: b"x"}, "hostile")


# --------------------------------------------------------------------------- #
# git daemon
# --------------------------------------------------------------------------- #


def test_git_daemon_serves_fetch(
    git_daemon: GitDaemon, work: WorkRepo, tmp_path: Path
) -> None:
    target = tmp_path / "daemon-client"
    done = _git("clone", git_daemon.repo_url(REPO), str(target))
    assert done.returncode == 0, done.stderr
    sha = work.commit_files({"manifests/app.yaml": b"version: 5\n"}, "fifth")
    work.push("main")
    done = _git("fetch", "origin", "main", cwd=target)
    assert done.returncode == 0, done.stderr
    assert _git("rev-parse", "FETCH_HEAD", cwd=target).stdout.strip() == sha


def test_git_daemon_stops_by_pid(git_root: Path, work: WorkRepo) -> None:
    daemon = must_start("git daemon", GitDaemon(git_root).start)
    pid = daemon.pid
    daemon.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --------------------------------------------------------------------------- #
# The server as its own process, and what it logs
# --------------------------------------------------------------------------- #


@pytest.fixture
def server_process(
    git_root: Path, work: WorkRepo, token: str, tmp_path: Path
) -> Iterator[ServerProcess]:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    proc = must_start(
        "git HTTP server process",
        lambda: spawn_http_server(
            git_root,
            token_file,
            pid_file=tmp_path / "server.pid",
            stats_file=tmp_path / "stats.json",
            log_file=tmp_path / "server.log",
            log_level="DEBUG",
        ),
    )
    yield proc
    proc.stop()


def test_server_process_serves_fetch_and_stops_by_pid(
    server_process: ServerProcess,
    client_env: dict[str, str],
    tmp_path: Path,
) -> None:
    assert int(server_process.pid_file.read_text()) == server_process.pid
    done = _git(
        "clone", server_process.repo_url(REPO), str(tmp_path / "c"), env=client_env
    )
    assert done.returncode == 0, done.stderr
    assert server_process.read_stats()["requests"] >= 2
    server_process.stop()
    assert server_process.process.returncode == 0
    assert not server_process.pid_file.exists()


def test_token_never_appears_in_server_logs(
    server_process: ServerProcess,
    http_server: SmartHttpGitServer,
    client_env: dict[str, str],
    token: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="centops")
    for n, url in enumerate((server_process.url, http_server.url)):
        good = _git("clone", f"{url}/{REPO}", str(tmp_path / f"g{n}"), env=client_env)
        assert good.returncode == 0, good.stderr
        wrong = git_auth_env(token[:-1], base=isolated_git_env())
        _git("clone", f"{url}/{REPO}", str(tmp_path / f"w{n}"), env=wrong)
    server_process.stop()
    log = (tmp_path / "server.log").read_text()
    assert "GET /fleet.git/info/refs" in log  # it did log the requests
    assert "GET /fleet.git/info/refs" in caplog.text
    for text in (log, caplog.text):
        assert token not in text
        assert token[:-1] not in text
        assert base64.b64encode(f"centops:{token}".encode()).decode() not in text


# --------------------------------------------------------------------------- #
# The fixtures' own contract
# --------------------------------------------------------------------------- #


def _broken_start() -> None:
    raise GitServerError("port already taken")


def test_server_that_fails_to_start_fails_the_test() -> None:
    with pytest.raises(pytest.fail.Exception):
        must_start("broken server", _broken_start)
