"""The agent against a real git server, a real local Sigstore and a real
download server: installs, refusals, faults and recovery."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from agent_support import (
    ISSUER,
    SIGNER,
    TOKEN,
    FileServer,
    ManifestRepo,
    Release,
    agent_config,
    file_component,
    script_component,
    wait_for,
)
from typer.testing import CliRunner

from centops.agent.cli import EXIT_LOCKED, app
from centops.agent.config import load_config
from centops.agent.controller import Controller
from centops.agent.state import StateDir, StateLocked
from centops.tools.localsigstore import LocalSigstore

runner = CliRunner()
MARKER_SCRIPT = b'#!/bin/sh\nset -e\nmkdir -p "$CENTOPS_FILES_ROOT"\n'
MARKER_SCRIPT += b'echo "ran $CENTOPS_COMPONENT $CENTOPS_VERSION"\n'
MARKER_SCRIPT += (
    b'echo "$CENTOPS_COMPONENT $CENTOPS_VERSION" >> "$CENTOPS_FILES_ROOT/../ran.log"\n'
)
POLICY = b"policy: strict\nlevel: 3\n"


def marker(tmp_path: Path) -> list[str]:
    ran = tmp_path / "ran.log"
    return ran.read_text().splitlines() if ran.exists() else []


def sync(config: Path) -> Any:
    return Controller(load_config(config)).sync()


@pytest.fixture
def setup(
    tmp_path: Path,
    manifest_repo: ManifestRepo,
    file_server: FileServer,
    local_sigstore: LocalSigstore,
    agent_env: dict[str, str],
) -> tuple[ManifestRepo, FileServer, Path]:
    config = agent_config(tmp_path, repo_url=manifest_repo.url, sigstore=local_sigstore)
    return manifest_repo, file_server, config


def basic_release(files: FileServer, serial: int = 1, version: str = "1") -> Release:
    return Release(
        serial=serial,
        components=[
            script_component(files, "bootstrap", MARKER_SCRIPT, version=version),
            file_component(
                files,
                "policy",
                POLICY + version.encode(),
                "policies/p.yaml",
                version=version,
            ),
        ],
    )


def test_signed_manifest_installs_in_order_and_second_sync_is_a_noop(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    commit = repo.publish(basic_release(files))

    result = sync(config)
    assert result.outcome == "succeeded", result
    assert [c.outcome for c in result.components] == ["installed", "installed"]
    assert marker(tmp_path) == ["bootstrap 1"]
    assert (tmp_path / "files/policies/p.yaml").read_bytes() == POLICY + b"1"
    state = StateDir(tmp_path / "state").load()
    assert state.highest_serial == 1 and state.processed_commit == commit
    assert (tmp_path / "state/manifests/1/manifest.yaml").exists()
    assert set(state.components) == {"bootstrap", "policy"}

    before = len(files.requests)
    again = sync(config)
    assert again.outcome == "up-to-date"
    assert len(files.requests) == before  # no download, no script run
    assert marker(tmp_path) == ["bootstrap 1"]


def test_new_serial_is_picked_up_and_unchanged_components_are_skipped(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    first = basic_release(files)
    repo.publish(first)
    assert sync(config).outcome == "succeeded"
    second = Release(
        serial=2,
        components=[
            first.components[0],
            file_component(files, "policy", b"v2\n", "policies/p.yaml", version="2"),
        ],
    )
    repo.publish(second)
    result = sync(config)
    assert result.outcome == "succeeded"
    assert [c.outcome for c in result.components] == ["current", "installed"]
    assert marker(tmp_path) == ["bootstrap 1"]  # the script did not run again
    assert (tmp_path / "files/policies/p.yaml").read_bytes() == b"v2\n"


def tamper_one_byte(data: bytes) -> bytes:
    return data.replace(b"serial: 2", b"serial: 3")


REFUSALS = [
    ("unsigned", {"sign": False}, "signature-missing"),
    (
        "other identity",
        {"san": SIGNER.replace("refs/heads/main", "refs/pull/7/merge")},
        "signature-identity-mismatch",
    ),
    (
        "fork",
        {"san": SIGNER.replace("centops/fleet", "evil/fleet")},
        "signature-identity-mismatch",
    ),
    (
        "other issuer",
        {"issuer": "https://issuer.example"},
        "signature-identity-mismatch",
    ),
    ("tampered", {"tamper": tamper_one_byte}, "signature-artifact-mismatch"),
]


@pytest.mark.parametrize(
    ("case", "publish", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_bad_manifests_are_refused_and_nothing_changes(
    setup: tuple[ManifestRepo, FileServer, Path],
    tmp_path: Path,
    case: str,
    publish: dict[str, Any],
    reason: str,
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files))
    assert sync(config).outcome == "succeeded"
    before = (tmp_path / "files/policies/p.yaml").read_bytes()

    repo.publish(basic_release(files, serial=2, version="2"), **publish)
    result = sync(config)
    assert (result.outcome, result.reason) == ("refused", reason)
    state = StateDir(tmp_path / "state").load()
    assert state.highest_serial == 1
    assert (tmp_path / "files/policies/p.yaml").read_bytes() == before
    assert marker(tmp_path) == ["bootstrap 1"]
    assert sync(config).outcome == "up-to-date"  # refusal is settled; no retry storm


def test_manifest_for_another_channel_is_refused(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    other = basic_release(files)
    other.channel = "canary"
    text = other.text().encode()
    # the canary manifest, validly signed, placed where stable clients look
    bundle = repo.sigstore.sign(text, san=SIGNER, issuer=ISSUER)
    repo.work.commit_files(
        {
            "manifests/stable/manifest.yaml": text,
            "manifests/stable/manifest.yaml.sigstore.json": bundle.encode(),
        },
        "mix and match",
    )
    repo.work.push("main")
    result = sync(config)
    assert (result.outcome, result.reason) == ("refused", "wrong-channel")
    assert not (tmp_path / "files").exists()


def test_expired_manifest_is_refused_as_stale(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    release = basic_release(files)
    release.expires_in = -__import__("datetime").timedelta(hours=1)
    release.issued_ago = __import__("datetime").timedelta(days=2)
    repo.publish(release)
    result = sync(config)
    assert (result.outcome, result.reason) == ("stale", "expired")
    assert marker(tmp_path) == []


def test_older_validly_signed_manifest_is_a_rollback(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files, serial=5, version="5"))
    assert sync(config).outcome == "succeeded"
    repo.publish(basic_release(files, serial=4, version="4"))
    result = sync(config)
    assert (result.outcome, result.reason) == ("refused", "rollback")
    assert (tmp_path / "files/policies/p.yaml").read_bytes() == POLICY + b"5"


def test_same_serial_with_other_bytes_is_refused(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files, serial=3, version="3"))
    assert sync(config).outcome == "succeeded"
    repo.publish(basic_release(files, serial=3, version="3b"))
    result = sync(config)
    assert (result.outcome, result.reason) == ("refused", "serial-reused")


SCRIPT_FAULTS = [
    (
        "hash mismatch",  # same length, other bytes
        lambda f, c: f.files.__setitem__(
            "/bootstrap-1.sh", MARKER_SCRIPT.replace(b"ran", b"pwn")
        ),
        "hash-mismatch",
    ),
    (
        "larger than declared",
        lambda f, c: f.files.__setitem__(
            "/bootstrap-1.sh", MARKER_SCRIPT + b"# more\n"
        ),
        "size-mismatch",
    ),
]


@pytest.mark.parametrize(
    ("case", "fault", "reason"), SCRIPT_FAULTS, ids=[s[0] for s in SCRIPT_FAULTS]
)
def test_script_whose_bytes_do_not_match_is_not_run(
    setup: tuple[ManifestRepo, FileServer, Path],
    tmp_path: Path,
    case: str,
    fault: Any,
    reason: str,
) -> None:
    repo, files, config = setup
    release = basic_release(files)
    repo.publish(release)
    fault(files, release)
    result = sync(config)
    assert result.outcome == "failed"
    assert [(c.outcome, c.reason) for c in result.components] == [
        ("failed", reason),
        ("skipped", "skipped"),
    ]
    assert marker(tmp_path) == []
    assert not (tmp_path / "files/policies/p.yaml").exists()


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        (b"#!/bin/sh\nsleep 60\n", "script-timeout"),
        (b"#!/bin/sh\necho failing\nexit 3\n", "script-failed"),
        (b"no shebang here\n", "script-failed"),
    ],
    ids=["hangs", "exits non-zero", "not executable"],
)
def test_failing_script_stops_the_sequence_and_is_retried(
    setup: tuple[ManifestRepo, FileServer, Path],
    tmp_path: Path,
    script: bytes,
    reason: str,
) -> None:
    repo, files, config = setup
    release = Release(
        components=[
            script_component(files, "setup", script),
            file_component(files, "policy", POLICY, "p.yaml"),
        ]
    )
    repo.publish(release)
    result = sync(config)
    assert result.outcome == "failed"
    assert result.components[0].reason == reason
    assert result.components[1].outcome == "skipped"
    assert not (tmp_path / "files/p.yaml").exists()
    # a failure is not settled: the next cycle tries again
    assert sync(config).outcome == "failed"


def test_file_destination_planted_symlink_is_refused(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "files").mkdir()
    (tmp_path / "files/policies").symlink_to(outside)
    repo.publish(basic_release(files))
    result = sync(config)
    assert result.outcome == "failed"
    assert result.components[1].reason == "path-escapes-root"
    assert list(outside.iterdir()) == []


def test_unreachable_server_and_rejected_token_keep_what_is_installed(
    setup: tuple[ManifestRepo, FileServer, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files))
    assert sync(config).outcome == "succeeded"
    monkeypatch.setenv("CENTOPS_TEST_TOKEN", "wrong-token")
    result = sync(config)
    assert (result.outcome, result.reason) == ("failed", "git-auth-rejected")
    assert "wrong-token" not in result.message

    text = config.read_text().replace(repo.url, "http://127.0.0.1:9/fleet.git")
    config.write_text(text)
    monkeypatch.setenv("CENTOPS_TEST_TOKEN", "x")
    down = runner.invoke(app, ["sync", "--config", str(config)])
    assert down.exit_code == 3, down.output
    assert (tmp_path / "files/policies/p.yaml").exists()


def test_force_push_is_followed_and_reported(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files))
    assert sync(config).outcome == "succeeded"
    # rewrite history: a new root commit carrying serial 2
    repo.work.git("checkout", "--orphan", "rewritten")
    repo.work.git("rm", "-rf", "--quiet", ".")
    repo.work.git("branch", "-D", "main")
    repo.work.git("checkout", "-b", "main")
    repo.publish(basic_release(files, serial=2, version="2"), force=True)
    result = sync(config)
    assert result.outcome == "succeeded", result
    assert result.history_rewritten is True
    assert StateDir(tmp_path / "state").load().highest_serial == 2
    assert (tmp_path / "files/policies/p.yaml").read_bytes() == POLICY + b"2"


def test_follower_far_behind_is_not_reported_as_a_rewrite(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files))
    assert sync(config).outcome == "succeeded"
    # more unrelated commits than the ancestry probe looks at, then a release
    start = int(time.time()) + 5
    stream = "".join(
        f"commit refs/heads/main\ncommitter t <t@e> {start + i} +0000\n"
        f"data 4\nnote\n{'from refs/heads/main^0' + chr(10) if i == 0 else ''}"
        f"M 644 inline notes.txt\ndata {len(str(i))}\n{i}\n"
        for i in range(100)
    )
    repo.work.git("fast-import", "--quiet", input_bytes=stream.encode())
    repo.work.git("reset", "--hard", "--quiet", "main")
    repo.publish(basic_release(files, serial=2, version="2"))
    result = sync(config)
    assert result.outcome == "succeeded"
    assert result.history_rewritten is False


def test_two_agents_on_one_state_directory(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files))
    dirs = StateDir(tmp_path / "state")
    with dirs.locked():
        with pytest.raises(StateLocked, match="another centops-agent"):
            sync(config)
        second = runner.invoke(app, ["sync", "--config", str(config)])
        assert second.exit_code == EXIT_LOCKED
    assert sync(config).outcome == "succeeded"


# -- killed at any point --------------------------------------------------------


def agent_process(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "centops.agent", "sync", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_killed_during_download_completes_on_next_sync(
    setup: tuple[ManifestRepo, FileServer, Path],
    tmp_path: Path,
    agent_env: dict[str, str],
) -> None:
    repo, files, config = setup
    release = basic_release(files)
    repo.publish(release)
    hit: list[bool] = []

    def stall(handler: Any) -> bool:
        body = files.files["/policy-1.dat"]
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:5])
        handler.wfile.flush()
        hit.append(True)
        time.sleep(3)
        return True

    files.behaviour["/policy-1.dat"] = stall
    proc = agent_process(config, agent_env)
    wait_for(lambda: bool(hit))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not (tmp_path / "files/policies/p.yaml").exists()
    del files.behaviour["/policy-1.dat"]

    result = sync(config)
    assert result.outcome == "succeeded"
    assert [c.outcome for c in result.components] == ["current", "installed"]
    assert (tmp_path / "files/policies/p.yaml").read_bytes() == POLICY + b"1"
    assert not list((tmp_path / "state/work").rglob(".dl-*"))  # no partial reused


def test_killed_while_script_runs_reruns_it(
    setup: tuple[ManifestRepo, FileServer, Path],
    tmp_path: Path,
    agent_env: dict[str, str],
) -> None:
    repo, files, config = setup
    flag = tmp_path / "started"
    log = tmp_path / "ran.log"
    script = f'#!/bin/sh\ntouch "{flag}"\nsleep 3\necho done >> "{log}"\n'.encode()
    repo.publish(Release(components=[script_component(files, "slow", script)]))
    proc = agent_process(config, agent_env)
    wait_for(flag.exists)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert StateDir(tmp_path / "state").load().components == {}
    result = sync(config)
    assert result.outcome == "succeeded"
    assert marker(tmp_path) == ["done"]


def test_killed_between_components_resumes_without_redoing_work(
    setup: tuple[ManifestRepo, FileServer, Path],
    tmp_path: Path,
    agent_env: dict[str, str],
) -> None:
    repo, files, config = setup
    release = basic_release(files)
    repo.publish(release)
    reached: list[bool] = []

    def hold(handler: Any) -> bool:  # the second component's download begins
        reached.append(True)
        time.sleep(3)
        handler.send_error(503)
        return True

    files.behaviour["/policy-1.dat"] = hold
    proc = agent_process(config, agent_env)
    wait_for(lambda: bool(reached))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    state = StateDir(tmp_path / "state").load()
    assert set(state.components) == {"bootstrap"} and state.highest_serial == 1
    del files.behaviour["/policy-1.dat"]
    result = sync(config)
    assert [c.outcome for c in result.components] == ["current", "installed"]
    assert marker(tmp_path) == ["bootstrap 1"]


CRASH_CHILD = """
import os, sys
from pathlib import Path
import centops.agent.fsutil as fsutil
from centops.agent.config import load_config
from centops.agent.controller import Controller
real = os.replace
count = {"n": 0}
def crashing(src, dst, *a, **k):
    if str(dst).endswith("state.json"):
        count["n"] += 1
        if count["n"] == int(sys.argv[2]):
            os._exit(9)  # killed between the temp write and the rename
    return real(src, dst, *a, **k)
fsutil.os.replace = crashing
Controller(load_config(Path(sys.argv[1]))).sync()
"""


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_killed_while_writing_state_leaves_state_the_next_sync_completes(
    setup: tuple[ManifestRepo, FileServer, Path],
    tmp_path: Path,
    agent_env: dict[str, str],
    crash_at: int,
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files))
    child = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(config), str(crash_at)],
        env=agent_env,
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == 9, child.stderr.decode()
    StateDir(tmp_path / "state").load()  # still parses: old or new, never half
    result = sync(config)
    assert result.outcome == "succeeded"
    assert (tmp_path / "files/policies/p.yaml").read_bytes() == POLICY + b"1"
    assert marker(tmp_path).count("bootstrap 1") <= 2


def test_noop_poll_process_imports_no_verification_stack(
    setup: tuple[ManifestRepo, FileServer, Path],
    tmp_path: Path,
    agent_env: dict[str, str],
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files))
    first = subprocess.run(
        [sys.executable, "-m", "centops.agent", "sync", "--config", str(config)],
        env=agent_env,
        capture_output=True,
        timeout=120,
    )
    assert first.returncode == 0, first.stderr.decode()
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['centops-agent', 'sync', '--config', {str(config)!r}]\n"
        "try:\n    runpy.run_module('centops.agent', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "names = ('sigstore', 'docker', 'typer', 'jsonschema', 'yaml', 'git')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(code, heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=agent_env, capture_output=True, timeout=60
    )
    assert out.stdout.decode().strip().splitlines()[-1] == "0 []", out.stderr.decode()


def test_status_reports_what_is_applied(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    commit = repo.publish(basic_release(files))
    assert runner.invoke(app, ["sync", "--config", str(config)]).exit_code == 0
    result = runner.invoke(app, ["status", "--config", str(config), "--json"])
    report = json.loads(result.output)
    assert report["applied"]["serial"] == 1 and report["applied"]["commit"] == commit
    assert (
        report["components"]["policy"]["digest"]
        == "sha256:" + hashlib.sha256(POLICY + b"1").hexdigest()
    )
    assert report["last_result"]["outcome"] == "succeeded"
    text = runner.invoke(app, ["status", "--config", str(config)]).output
    assert "policy" in text and "succeeded" in text
    check = runner.invoke(app, ["check", "--config", str(config)])
    assert check.exit_code == 0
    repo.publish(basic_release(files, serial=2, version="2"))
    assert runner.invoke(app, ["check", "--config", str(config)]).exit_code == 10
    assert os.environ.get("CENTOPS_TEST_TOKEN", "") not in json.dumps(report)


def results_branch_events(repo: ManifestRepo, client: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [
            "git",
            "--git-dir",
            str(repo.bare),
            "show",
            f"centops-results:clients/{client}/events.jsonl",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def test_outcomes_reach_the_results_branch_with_their_reason(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, _ = setup
    config = agent_config(
        tmp_path,
        repo_url=repo.url,
        sigstore=repo.sigstore,
        telemetry={"results_branch": {"enabled": True}},
    )
    repo.publish(basic_release(files))
    assert sync(config).outcome == "succeeded"
    repo.publish(basic_release(files, serial=2, version="2"), tamper=tamper_one_byte)
    assert sync(config).outcome == "refused"

    events = results_branch_events(repo, "client-a")
    types = [e["type"] for e in events]
    assert types[0] == "io.centops.sync.started"
    assert "io.centops.update.succeeded" in types
    refused = events[-1]
    assert refused["type"] == "io.centops.update.refused"
    assert refused["data"]["reason"] == "signature-artifact-mismatch"
    assert refused["source"] == "urn:centops:client:client-a"
    succeeded = next(e for e in events if e["type"] == "io.centops.update.succeeded")
    assert succeeded["subject"] == "stable/1"
    assert [c["outcome"] for c in succeeded["data"]["components"]] == [
        "installed",
        "installed",
    ]
    assert len({e["id"] for e in events}) == len(events)
    assert TOKEN not in json.dumps(events)
    # the poll itself never fetched the results branch
    mirror_refs = subprocess.run(
        ["git", "--git-dir", str(tmp_path / "state/mirror.git"), "for-each-ref"],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout.decode()
    assert "centops-results" not in mirror_refs


def test_run_syncs_on_a_timer_and_stops_cleanly_on_sigterm(
    setup: tuple[ManifestRepo, FileServer, Path],
    tmp_path: Path,
    agent_env: dict[str, str],
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files))
    text = config.read_text().replace("frequency_seconds: 60", "frequency_seconds: 1")
    config.write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "centops.agent", "run", "--config", str(config)],
        env=agent_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: (tmp_path / "state/last-poll").exists(), timeout=60)
        repo.publish(basic_release(files, serial=2, version="2"))

        def serial_two_done() -> bool:
            last = StateDir(tmp_path / "state").load().last_result
            return last is not None and (last.serial, last.outcome) == (2, "succeeded")

        wait_for(serial_two_done)
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "stopping on signal" in output
    assert (tmp_path / "files/policies/p.yaml").read_bytes() == POLICY + b"2"


def test_idle_client_sends_a_heartbeat_when_due_and_only_then(
    setup: tuple[ManifestRepo, FileServer, Path],
    tmp_path: Path,
    agent_env: dict[str, str],
) -> None:
    repo, files, _ = setup
    config = agent_config(
        tmp_path,
        repo_url=repo.url,
        sigstore=repo.sigstore,
        telemetry={"results_branch": {"enabled": True}, "heartbeat_seconds": 3600},
    )
    repo.publish(basic_release(files))
    assert sync(config).outcome == "succeeded"
    count = len(results_branch_events(repo, "client-a"))

    def poll() -> None:  # the real command line, lean path included
        done = subprocess.run(
            [sys.executable, "-m", "centops.agent", "sync", "--config", str(config)],
            env=agent_env,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()

    poll()
    assert len(results_branch_events(repo, "client-a")) == count  # not due yet

    dirs = StateDir(tmp_path / "state")
    state = dirs.load()
    state.last_report_at = "2000-01-01T00:00:00Z"
    dirs.save(state)
    poll()
    events = results_branch_events(repo, "client-a")
    assert len(events) == count + 1
    assert events[-1]["type"] == "io.centops.client.alive"
    assert events[-1]["subject"] == "stable/1"
    poll()
    assert len(results_branch_events(repo, "client-a")) == count + 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.update(highest_serial="5"),
        lambda s: s.update(highest_serial=None),
        lambda s: s.update(highest_serial=True),
        lambda s: s.update(components={"x": {"name": 1}}),
        lambda s: s.update(applied=[1, 2]),
        lambda s: s.update(extra_field=1),
        lambda s: s.update(last_result={"outcome": "succeeded"}),
    ],
    ids=[
        "serial-text",
        "serial-null",
        "serial-bool",
        "record",
        "applied-list",
        "unknown-field",
        "partial-result",
    ],
)
def test_damaged_state_is_refused_with_a_clear_error(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path, damage: Any
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files))
    assert sync(config).outcome == "succeeded"
    path = tmp_path / "state/state.json"
    body = json.loads(path.read_text())
    damage(body)
    path.write_text(json.dumps(body))
    result = runner.invoke(app, ["sync", "--config", str(config)])
    assert result.exit_code == 2
    assert "is damaged" in result.output


def test_deeply_nested_state_is_refused_not_a_crash(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    _, _, config = setup
    (tmp_path / "state").mkdir()
    (tmp_path / "state/state.json").write_text("[" * 100_000 + "]" * 100_000)
    result = runner.invoke(app, ["sync", "--config", str(config)])
    assert result.exit_code == 2 and "is damaged" in result.output


def test_a_folder_in_the_way_fails_the_component_cleanly(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    (tmp_path / "files/policies/p.yaml").mkdir(parents=True)
    repo.publish(basic_release(files))
    result = sync(config)
    assert result.outcome == "failed"
    assert result.components[1].reason == "file-place-failed"
    state = StateDir(tmp_path / "state").load()
    assert state.last_result is not None and state.last_result.outcome == "failed"


def test_hostile_download_servers_fail_the_component_cleanly(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    config.write_text(
        config.read_text().replace("timeout_seconds: 5", "timeout_seconds: 1")
    )
    release = basic_release(files)
    repo.publish(release)

    def redirect_non_ascii(handler: Any) -> bool:
        handler.send_response(302)
        handler.send_header("Location", "/caf\u00e9.sh")
        handler.end_headers()
        return True

    files.behaviour["/bootstrap-1.sh"] = redirect_non_ascii
    result = sync(config)
    assert result.outcome == "failed"
    assert result.components[0].reason in ("url-refused", "download-failed")

    def drip(handler: Any) -> bool:
        body = MARKER_SCRIPT
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for byte in body[:20]:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.5)
        return True

    files.behaviour["/bootstrap-1.sh"] = drip
    started = time.monotonic()
    result = sync(config)
    assert result.components[0].reason == "download-too-slow"
    assert time.monotonic() - started < 8
    assert marker(tmp_path) == []


def test_a_frozen_repository_is_noticed_when_the_manifest_expires(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    from centops.agent.controller import SyncOptions

    repo, files, config = setup
    repo.publish(basic_release(files))  # expires in 7 days
    assert sync(config).outcome == "succeeded"
    later = datetime.now(UTC) + timedelta(days=8)
    frozen = Controller(load_config(config), options=SyncOptions(now=lambda: later))
    result = frozen.sync()
    assert (result.outcome, result.reason) == ("stale", "expired")
    assert (tmp_path / "files/policies/p.yaml").exists()  # nothing removed
    again = Controller(load_config(config), options=SyncOptions(now=lambda: later))
    assert again.sync().outcome == "up-to-date"  # reported once, not every poll


def test_a_client_moved_to_another_channel_is_not_locked_out_as_a_rollback(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    repo, files, config = setup
    repo.publish(basic_release(files, serial=7, version="7"))
    assert sync(config).outcome == "succeeded"
    canary = basic_release(files, serial=5, version="5")
    canary.channel = "canary"
    repo.publish(canary)
    config.write_text(config.read_text().replace("channel: stable", "channel: canary"))
    moved = sync(config)
    assert (moved.outcome, moved.serial) == ("succeeded", 5)
    # an older canary is still a rollback on canary
    repo.publish(Release(channel="canary", serial=4, components=canary.components))
    assert sync(config).reason == "rollback"


def test_a_noisy_script_cannot_fill_the_disk_with_its_log(
    setup: tuple[ManifestRepo, FileServer, Path], tmp_path: Path
) -> None:
    from centops.agent.installers.script import MAX_LOG_BYTES

    repo, files, config = setup
    noisy = b"#!/bin/sh\nhead -c 12000000 /dev/zero | tr '\\\\0' x\necho done\n"
    repo.publish(Release(components=[script_component(files, "noisy", noisy)]))
    assert sync(config).outcome == "succeeded"
    log = tmp_path / "state/logs/serial-1-noisy.log"
    assert MAX_LOG_BYTES <= log.stat().st_size <= MAX_LOG_BYTES + 100
    assert log.read_bytes().endswith(b"[log truncated]\n")
