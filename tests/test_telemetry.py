"""Scenarios for telemetry delivery: the results branch and the CloudEvents sink.

Every server here is real and bound to 127.0.0.1: the smart HTTP git server
(git http-backend behind a token check) and a CloudEvents receiver written
below on ``ThreadingHTTPServer``. Locally, a machine that cannot run them
skips; with ``CI`` set, a server that fails to start fails the run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from agent_support import must_start

from centops.agent.config import (
    AgentConfig,
    HttpSinkConfig,
    RepositoryConfig,
    ResultsBranchConfig,
    TelemetryConfig,
    TokenSource,
    TrustConfig,
)
from centops.agent.errors import ConfigError
from centops.agent.gitsource import Credentials, LocalMirror
from centops.agent.telemetry.deliver import (
    DeliveryReport,
    backoff_delay,
    deliver_all,
    sinks_for,
)
from centops.agent.telemetry.events import ComponentOutcome, make_event
from centops.agent.telemetry.gitsink import events_path, merge_lines
from centops.agent.telemetry.httpsink import check_url
from centops.agent.telemetry.outbox import Outbox
from centops.tools.stack.gitserver import (
    SmartHttpGitServer,
    WorkRepo,
    init_bare,
    isolated_git_env,
    run_git,
)

REPO = "fleet.git"
RESULTS = "centops-results"
TOKEN_ENV = "CENTOPS_TEST_TELEMETRY_TOKEN"
TESTS_DIR = Path(__file__).parent
CLIENTS = 50
EVENTS_PER_CLIENT = 3
CONCURRENT_MAX_ATTEMPTS = 12
PROCESS_TIMEOUT_S = 240.0

T = TypeVar("T")


# --------------------------------------------------------------------------- #
# Building agents
# --------------------------------------------------------------------------- #


def make_config(
    state_dir: Path,
    client_id: str,
    *,
    repo_url: str = "http://127.0.0.1:1/never-contacted.git",
    git: bool = True,
    http: HttpSinkConfig | None = None,
    max_attempts: int = 5,
) -> AgentConfig:
    """An agent configuration with only what telemetry delivery reads."""
    return AgentConfig(
        client_id=client_id,
        channel="stable",
        repository=RepositoryConfig(
            url=repo_url, token=TokenSource(env=TOKEN_ENV), timeout_seconds=60
        ),
        trust=TrustConfig(
            trusted_root=state_dir / "absent-root.json",
            issuer="https://issuer.invalid",
            identities=("https://signer.invalid",),
        ),
        state_dir=state_dir,
        files_root=state_dir / "files",
        telemetry=TelemetryConfig(
            results_branch=ResultsBranchConfig(
                enabled=git, branch=RESULTS, max_attempts=max_attempts
            ),
            http=http,
        ),
    )


def make_outbox(config: AgentConfig) -> Outbox:
    return Outbox(config.state_dir / "outbox", sinks_for(config), max_events=100)


def emit_sync_events(outbox: Outbox, client_id: str, *, serial: int = 7) -> list[str]:
    """What one sync reports: started, then succeeded. Returns the event ids."""
    events = [
        make_event(
            kind="update.started",
            client_id=client_id,
            channel="stable",
            outcome="started",
            serial=serial,
        ),
        make_event(
            kind="component.installed",
            client_id=client_id,
            channel="stable",
            outcome="reported",
            serial=serial,
        ),
        make_event(
            kind="update.succeeded",
            client_id=client_id,
            channel="stable",
            outcome="succeeded",
            serial=serial,
            commit="a" * 40,
            components=[
                ComponentOutcome(
                    "web", "image", "1.2.3", "sha256:" + "b" * 64, "installed"
                )
            ],
        ),
    ]
    for event in events:
        outbox.emit(event)
    return [str(e["id"]) for e in events]


def _child_main(argv: list[str]) -> None:
    """One agent process: queue a sync's events, wait for "go", deliver.

    argv: client_id state_dir repo_url go_file max_attempts [kill-before-deliver]
    """
    client_id, state, url, go_file, attempts = argv[:5]
    state_dir = Path(state)
    state_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=state_dir / "agent.log",
        level=logging.DEBUG,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = make_config(state_dir, client_id, repo_url=url, max_attempts=int(attempts))
    outbox = make_outbox(config)
    ids = emit_sync_events(outbox, client_id)
    (state_dir / "ids.json").write_text(json.dumps(ids))
    if argv[5:] == ["kill-before-deliver"]:
        os.kill(os.getpid(), signal.SIGKILL)  # the events are on disk; no delivery
    (state_dir / "ready").touch()
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while not Path(go_file).exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    started = time.monotonic()
    reports = deliver_all(config, outbox)
    result = {
        "elapsed": time.monotonic() - started,
        "reports": {k: v.as_dict() for k, v in reports.items()},
    }
    (state_dir / "result.json").write_text(json.dumps(result))


def _spawn_agent(
    client_id: str, state_dir: Path, url: str, go_file: Path, token: str, *extra: str
) -> subprocess.Popen[bytes]:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import test_telemetry as t; t._child_main(sys.argv[2:])"
    )
    env = dict(os.environ, **{TOKEN_ENV: token})  # the token: environment only
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            str(TESTS_DIR),
            client_id,
            str(state_dir),
            url,
            str(go_file),
            str(CONCURRENT_MAX_ATTEMPTS),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


# --------------------------------------------------------------------------- #
# Reading the results branch on the server
# --------------------------------------------------------------------------- #


def _git(bare: Path, *args: str) -> str:
    return run_git(args, cwd=bare, env=isolated_git_env())


def branch_events(bare: Path, client_id: str) -> list[dict[str, Any]]:
    text = _git(bare, "show", f"{RESULTS}:{events_path(client_id)}")
    return [json.loads(line) for line in text.splitlines() if line]


def branch_tip(bare: Path, branch: str = RESULTS) -> str:
    return _git(bare, "rev-parse", f"refs/heads/{branch}").strip()


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "tok-" + secrets.token_urlsafe(24)
    monkeypatch.setenv(TOKEN_ENV, value)
    return value


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """``fleet.git`` with a manifest on main; every ref update is logged."""
    root = tmp_path / "repos"
    path = init_bare(root / REPO)
    _git(path, "config", "core.logAllRefUpdates", "always")
    work = WorkRepo.clone(path, tmp_path / "work")
    work.commit_files({"manifests/stable/manifest.yaml": b"serial: 7\n"}, "manifest")
    work.push("main")
    return path


@pytest.fixture
def git_server(bare: Path, token: str) -> Iterator[SmartHttpGitServer]:
    server = SmartHttpGitServer(bare.parent, token=token)
    must_start("smart HTTP git server", server.start)
    yield server
    server.stop()


# --------------------------------------------------------------------------- #
# The results branch
# --------------------------------------------------------------------------- #


def test_fifty_agents_reporting_at_once_land_every_event_once_on_linear_history(
    git_server: SmartHttpGitServer, bare: Path, token: str, tmp_path: Path
) -> None:
    url = git_server.repo_url(REPO)
    main_before = branch_tip(bare, "main")
    go = tmp_path / "go"
    states = {
        f"client-{n:02d}": tmp_path / "agents" / f"c{n:02d}" for n in range(CLIENTS)
    }
    procs = {
        cid: _spawn_agent(cid, state, url, go, token) for cid, state in states.items()
    }
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while time.monotonic() < deadline:
            if all((s / "ready").exists() for s in states.values()):
                break
            failed = [c for c, p in procs.items() if p.poll() not in (None, 0)]
            assert not failed, f"agents died before delivering: {failed}"
            time.sleep(0.02)
        started = time.monotonic()
        go.touch()  # every agent pushes at this moment
        for cid, proc in procs.items():
            _, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
            assert proc.returncode == 0, f"{cid}: {err.decode()[-2000:]}"
        elapsed = time.monotonic() - started
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    reports = {
        cid: json.loads((s / "result.json").read_text())["reports"]["git"]
        for cid, s in states.items()
    }
    attempts = [r["attempts"] for r in reports.values()]
    print(
        f"\n{CLIENTS} agents: {elapsed:.1f}s, {sum(a - 1 for a in attempts)} retries, "
        f"max {max(attempts)} tries (bound {CONCURRENT_MAX_ATTEMPTS})"
    )
    # Every agent delivered, within its bound, and its outbox is empty.
    for cid, report in reports.items():
        assert report["error"] is None, f"{cid}: {report}"
        assert report["delivered"] == EVENTS_PER_CLIENT
        assert report["remaining"] == 0
        assert 1 <= report["attempts"] <= CONCURRENT_MAX_ATTEMPTS
    # Every event is on the branch exactly once, in its own client's file.
    for cid, state in states.items():
        ids = json.loads((state / "ids.json").read_text())
        on_branch = [e["id"] for e in branch_events(bare, cid)]
        assert on_branch == ids
    # History is linear and never rewritten: one commit per successful push,
    # one root, and each ref update moved from the previous tip to a child.
    commits = _git(bare, "rev-list", "--parents", RESULTS).splitlines()
    assert len(commits) == CLIENTS
    assert sum(1 for line in commits if len(line.split()) == 1) == 1
    assert all(len(line.split()) <= 2 for line in commits)
    updates = _git(bare, "reflog", "show", "--format=%H", f"refs/heads/{RESULTS}")
    chain = list(reversed(updates.split()))
    assert len(chain) == CLIENTS
    for parent, child in itertools.pairwise(chain):
        assert _git(bare, "rev-parse", f"{child}^").strip() == parent
    # The manifest branch was not touched.
    assert branch_tip(bare, "main") == main_before
    # The token is in no agent log, no state file and not in the repository.
    for state in states.values():
        for path in state.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), path
    assert token not in _all_objects(bare)


def _all_objects(bare: Path) -> str:
    return _git(bare, "cat-file", "--batch-all-objects", "--batch")


def test_client_killed_before_delivery_reports_on_its_next_run(
    git_server: SmartHttpGitServer, bare: Path, token: str, tmp_path: Path
) -> None:
    state = tmp_path / "agent"
    url = git_server.repo_url(REPO)
    proc = _spawn_agent(
        "client-k", state, url, tmp_path / "go", token, "kill-before-deliver"
    )
    proc.communicate(timeout=PROCESS_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL
    ids = json.loads((state / "ids.json").read_text())
    assert not (state / "result.json").exists()

    # The next run: a fresh process builds the outbox from disk and delivers.
    config = make_config(state, "client-k", repo_url=url)
    outbox = make_outbox(config)
    assert outbox.counts() == {"git": EVENTS_PER_CLIENT}
    reports = deliver_all(config, outbox)
    assert reports["git"].delivered == EVENTS_PER_CLIENT
    assert [e["id"] for e in branch_events(bare, "client-k")] == ids
    assert outbox.counts() == {"git": 0}


def test_push_accepted_but_not_acknowledged_is_not_appended_twice(
    git_server: SmartHttpGitServer,
    bare: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(
        tmp_path / "agent", "client-a", repo_url=git_server.repo_url(REPO)
    )
    outbox = make_outbox(config)
    ids = emit_sync_events(outbox, "client-a")
    # The process "dies" between the accepted push and the acknowledgement.
    with monkeypatch.context() as patched:
        patched.setattr(Outbox, "ack", lambda self, pending: None)
        assert deliver_all(config, outbox)["git"].ok
    tip = branch_tip(bare)

    again = deliver_all(config, make_outbox(config))["git"]
    assert again.ok and again.delivered == EVENTS_PER_CLIENT
    assert [e["id"] for e in branch_events(bare, "client-a")] == ids
    assert branch_tip(bare) == tip  # nothing new to push: no new commit


def test_later_sync_appends_to_the_clients_own_file_only(
    git_server: SmartHttpGitServer, bare: Path, tmp_path: Path
) -> None:
    url = git_server.repo_url(REPO)
    first = make_config(tmp_path / "a", "client-a", repo_url=url)
    second = make_config(tmp_path / "b", "client-b", repo_url=url)
    ids_a = emit_sync_events(make_outbox(first), "client-a", serial=7)
    ids_b = emit_sync_events(make_outbox(second), "client-b", serial=7)
    deliver_all(first, make_outbox(first))
    deliver_all(second, make_outbox(second))
    ids_a += emit_sync_events(make_outbox(first), "client-a", serial=8)
    assert deliver_all(first, make_outbox(first))["git"].delivered == 3
    assert [e["id"] for e in branch_events(bare, "client-a")] == ids_a
    assert [e["id"] for e in branch_events(bare, "client-b")] == ids_b
    files = _git(bare, "ls-tree", "-r", "--name-only", RESULTS).split()
    assert files == [events_path("client-a"), events_path("client-b")]


@pytest.mark.parametrize(
    "planted",
    ["clients/client-a/events.jsonl/inside", "clients/client-a"],
    ids=["folder-at-the-file", "file-at-the-folder"],
)
def test_another_writer_cannot_block_a_clients_reports(
    git_server: SmartHttpGitServer, bare: Path, tmp_path: Path, planted: str
) -> None:
    url = git_server.repo_url(REPO)
    writer = WorkRepo.clone(bare, tmp_path / "writer")
    writer.git("checkout", "--quiet", "--orphan", RESULTS)
    writer.commit_files({planted: b"in the way\n"}, "planted")
    writer.git("push", "--quiet", "origin", RESULTS)
    config = make_config(tmp_path / "a", "client-a", repo_url=url)
    ids = emit_sync_events(make_outbox(config), "client-a", serial=7)
    report = deliver_all(config, make_outbox(config))["git"]
    assert report.delivered == len(ids), report
    assert [e["id"] for e in branch_events(bare, "client-a")] == ids


def test_wrong_token_keeps_events_queued_and_is_not_retried(
    git_server: SmartHttpGitServer,
    tmp_path: Path,
    token: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="centops")
    wrong = token[:-2] + "xx"
    monkeypatch.setenv(TOKEN_ENV, wrong)
    config = make_config(
        tmp_path / "agent", "client-a", repo_url=git_server.repo_url(REPO)
    )
    outbox = make_outbox(config)
    emit_sync_events(outbox, "client-a")
    slept: list[float] = []
    report = deliver_all(config, outbox, sleep=slept.append)["git"]
    assert report.reason == "git-auth-rejected"
    assert report.attempts == 1 and not slept
    assert report.remaining == EVENTS_PER_CLIENT
    assert wrong not in (report.error or "") and wrong not in caplog.text


def test_manifest_poll_never_downloads_the_results_branch(
    git_server: SmartHttpGitServer, bare: Path, tmp_path: Path, token: str
) -> None:
    config = make_config(
        tmp_path / "agent", "client-a", repo_url=git_server.repo_url(REPO)
    )
    emit_sync_events(make_outbox(config), "client-a")
    deliver_all(config, make_outbox(config))
    results_tip = branch_tip(bare)

    mirror = LocalMirror(
        tmp_path / "mirror.git",
        git_server.repo_url(REPO),
        "main",
        credentials=Credentials(token=token, scheme="bearer"),
        timeout=60,
    )
    mirror.fetch(None)
    refs = _git(mirror.path, "for-each-ref", "--format=%(refname)").split()
    assert refs == ["refs/centops/head"]
    missing = subprocess.run(
        ["git", "--git-dir", str(mirror.path), "cat-file", "-e", results_tip],
        env=isolated_git_env(),
        capture_output=True,
        check=False,
    )
    assert missing.returncode != 0
    # And the agent's results repository never fetched the manifest branch.
    manifest_commit = subprocess.run(
        [
            "git",
            "--git-dir",
            str(tmp_path / "agent" / "results.git"),
            "cat-file",
            "-e",
            branch_tip(bare, "main"),
        ],
        env=isolated_git_env(),
        capture_output=True,
        check=False,
    )
    assert manifest_commit.returncode != 0


@pytest.mark.parametrize(
    "client_id", ["../escape", "a/b", "", "UPPER", "-lead", "x" * 64, "café"]
)
def test_client_id_that_could_name_another_path_is_refused(client_id: str) -> None:
    with pytest.raises(ConfigError):
        events_path(client_id)


def test_merge_skips_events_already_on_the_branch_and_keeps_lines_whole() -> None:
    old = make_event(
        kind="update.started", client_id="c", channel="s", outcome="started"
    )
    new = make_event(kind="update.failed", client_id="c", channel="s", outcome="failed")
    existing = json.dumps(old).encode()  # no trailing newline: still a line
    content, added = merge_lines(existing, [old, new])
    assert added == 1
    assert [json.loads(x)["id"] for x in content.splitlines()] == [old["id"], new["id"]]


def test_backoff_is_bounded_and_jittered() -> None:
    import random

    rng = random.Random(1)
    delays = [backoff_delay(n, rng=rng) for n in range(1, 40)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) == len(delays)


# --------------------------------------------------------------------------- #
# The CloudEvents HTTP sink
# --------------------------------------------------------------------------- #


@dataclass
class Receiver:
    """A scripted CloudEvents receiver: one behaviour per request, then "ok"."""

    script: list[str]
    token: str
    delay_s: float = 2.5
    stored: list[str] = field(default_factory=list)  # ids, in arrival order
    seen: list[tuple[str, str, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_behaviour(self) -> str:
        with self.lock:
            return self.script.pop(0) if self.script else "ok"


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            logging.getLogger("test.receiver").debug(format, *args)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            kind = self.headers.get("Content-Type") or ""
            authorized = self.headers.get("Authorization") == f"Bearer {receiver.token}"
            parsed = json.loads(body)
            events = parsed if isinstance(parsed, list) else [parsed]
            ids = [str(e["id"]) for e in events]
            behaviour = receiver.next_behaviour() if authorized else "401"
            with receiver.lock:
                receiver.seen.append((behaviour, kind, authorized))
            if behaviour == "drop":
                self.close_connection = True
                return  # no answer at all: the client sees the link drop
            if behaviour in ("ok", "slow"):
                with receiver.lock:
                    receiver.stored.extend(ids)  # stored, whatever happens next
                if behaviour == "slow":
                    time.sleep(receiver.delay_s)
                return self._answer(202, b"")
            status = int(behaviour)
            self._answer(status, f"refused: status {status} ".encode() * 300)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The client may have timed out on a slow answer: expected here.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    return Handler


@pytest.fixture
def receiver(token: str) -> Iterator[tuple[Receiver, str]]:
    state = Receiver(script=[], token=token)

    def start() -> ThreadingHTTPServer:
        return ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))

    server = must_start("CloudEvents receiver", start)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/events"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _http_config(url: str, *, batch: bool, max_attempts: int = 6) -> HttpSinkConfig:
    return HttpSinkConfig(
        url=url,
        token=TokenSource(env=TOKEN_ENV),
        batch=batch,
        timeout_seconds=1,
        max_attempts=max_attempts,
        insecure_allow_http_loopback=True,
    )


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "single"])
def test_receiver_that_drops_fails_and_stalls_then_recovers_gets_every_event(
    receiver: tuple[Receiver, str],
    tmp_path: Path,
    token: str,
    batch: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="centops")
    state, url = receiver
    state.script = ["drop", "500", "slow", "503", "429"]
    config = make_config(
        tmp_path, "client-a", git=False, http=_http_config(url, batch=batch)
    )
    outbox = make_outbox(config)
    ids = emit_sync_events(outbox, "client-a")
    slept: list[float] = []

    report = deliver_all(config, outbox, sleep=slept.append)["http"]

    assert report.ok, report
    assert report.delivered == EVENTS_PER_CLIENT and report.remaining == 0
    assert set(state.stored) == set(ids)  # nothing lost
    duplicates = {i for i in state.stored if state.stored.count(i) > 1}
    assert duplicates <= set(ids)  # a duplicate is recognisable by its id
    assert duplicates  # the slow answer was stored, timed out and sent again
    assert len(slept) == 5 and all(d >= 0 for d in slept)
    expected = (
        "application/cloudevents-batch+json"
        if batch
        else ("application/cloudevents+json")
    )
    assert {kind for _, kind, _ in state.seen} == {expected}
    assert all(authorized for _, _, authorized in state.seen)
    assert "plain http" in caplog.text  # the insecure switch is named, each use
    assert token not in caplog.text


def test_receiver_that_never_recovers_keeps_events_queued_within_the_bound(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    state, url = receiver
    state.script = ["500"] * 10
    http = _http_config(url, batch=True, max_attempts=3)
    config = make_config(tmp_path, "client-a", git=False, http=http)
    outbox = make_outbox(config)
    emit_sync_events(outbox, "client-a")
    report = deliver_all(config, outbox, sleep=lambda _: None)["http"]
    assert report.attempts == 3 and len(state.seen) == 3
    assert report.remaining == EVENTS_PER_CLIENT and report.reason == "http-unavailable"


def test_refused_event_goes_to_dead_letters_with_the_response(
    receiver: tuple[Receiver, str], tmp_path: Path, token: str
) -> None:
    state, url = receiver
    # The batch is refused; sent singly, only the second event is refused.
    state.script = ["400", "ok", "400", "ok"]
    config = make_config(
        tmp_path, "client-a", git=False, http=_http_config(url, batch=True)
    )
    outbox = make_outbox(config)
    ids = emit_sync_events(outbox, "client-a")

    report = deliver_all(config, outbox, sleep=lambda _: None)["http"]

    assert report.delivered == 2 and report.dead_lettered == 1 and report.remaining == 0
    (letter,) = outbox.dead_letters("http")
    record = json.loads(letter.read_text())
    assert record["event"]["id"] == ids[1]
    assert record["reason"].startswith("HTTP 400 from http://127.0.0.1:")
    assert "refused: status 400" in record["reason"]
    assert len(record["reason"]) <= 4000  # the body is capped
    assert token not in letter.read_text()
    assert sorted(state.stored) == sorted([ids[0], ids[2]])


def test_a_redirecting_receiver_keeps_events_queued_and_gets_no_token_elsewhere(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    state, url = receiver
    state.script = ["307"]
    config = make_config(
        tmp_path, "client-a", git=False, http=_http_config(url, batch=True)
    )
    outbox = make_outbox(config)
    emit_sync_events(outbox, "client-a")
    report = deliver_all(config, outbox, sleep=lambda _: None)["http"]
    assert report.reason == "http-redirected"
    assert report.remaining == EVENTS_PER_CLIENT
    assert outbox.dead_letters("http") == []
    assert len(state.seen) == 1  # not followed, not retried


def test_rejected_token_keeps_events_queued(
    receiver: tuple[Receiver, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = receiver
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    config = make_config(
        tmp_path, "client-a", git=False, http=_http_config(url, batch=True)
    )
    outbox = make_outbox(config)
    emit_sync_events(outbox, "client-a")
    report = deliver_all(config, outbox, sleep=lambda _: None)["http"]
    assert report.reason == "http-auth-rejected" and report.remaining == 3
    assert not outbox.dead_letters("http")


def test_one_sink_failing_does_not_hold_back_the_other(
    receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    _, url = receiver
    # The git sink points at the CloudEvents receiver, which speaks no git:
    # the git sink fails, the http sink delivers.
    config = make_config(
        tmp_path,
        "client-a",
        repo_url=url.replace("/events", "/fleet.git"),
        http=_http_config(url, batch=True),
        max_attempts=2,
    )
    outbox = make_outbox(config)
    emit_sync_events(outbox, "client-a")
    reports = deliver_all(config, outbox, sleep=lambda _: None)
    assert reports["http"].ok and reports["http"].delivered == 3
    assert not reports["git"].ok and reports["git"].remaining == 3


@pytest.mark.parametrize(
    ("url", "insecure"),
    [
        ("http://192.0.2.10/events", True),  # plain http off loopback
        ("http://127.0.0.1:8080/events", False),  # loopback without the switch
        ("http://localhost.example/events", True),
        ("ftp://127.0.0.1/events", True),
        ("https://user:secret@127.0.0.1/events", False),
        ("https:///events", False),
    ],
)
def test_unsafe_telemetry_url_is_refused(url: str, insecure: bool) -> None:
    with pytest.raises(ConfigError) as caught:
        check_url(url, insecure_allow_http_loopback=insecure)
    assert "secret" not in str(caught.value)


def test_sinks_follow_the_configuration(tmp_path: Path) -> None:
    http = _http_config("https://127.0.0.1/e", batch=True)
    assert sinks_for(make_config(tmp_path, "c")) == ["git"]
    assert sinks_for(make_config(tmp_path, "c", http=http)) == ["git", "http"]
    assert sinks_for(make_config(tmp_path, "c", git=False)) == []
    report = DeliveryReport(sink="git", delivered=1)
    assert report.ok and report.as_dict()["delivered"] == 1
