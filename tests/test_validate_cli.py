"""`centops validate` as an engineer and CI use it."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from manifests_factory import (
    DIGEST_A,
    DIGEST_B,
    design_note_manifest,
    manifest_with,
    stamp,
)
from typer.testing import CliRunner

from centops.tools.cli import app

runner = CliRunner()


def write(root: Path, channel: str, text: str) -> Path:
    path = root / "manifests" / channel / "manifest.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@e", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


def test_valid_manifests_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "stable", design_note_manifest())
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert "1 manifest(s) checked, 0 invalid" in result.output


def test_broken_manifest_fails_with_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = design_note_manifest().replace(f"sha256: {DIGEST_B}", "sha256: deadbeef")
    path = write(tmp_path, "stable", text)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:14:13:" in result.output


def test_github_format_annotates_the_diff(tmp_path: Path) -> None:
    text = design_note_manifest().replace("version: v1.9.2", "version: 1.9")
    text = text.replace("channel: stable", "channel: stable\nchannel: again")
    path = write(tmp_path, "stable", text)
    result = runner.invoke(app, ["validate", "--format", "github", str(path)])
    assert result.exit_code == 1
    line = result.output.splitlines()[0]
    assert line.startswith(f"::error file={path},line=3,col=1,title=yaml-invalid::")
    assert "duplicate key 'channel'" in line


def test_json_format_is_machine_readable(tmp_path: Path) -> None:
    good = write(tmp_path, "stable", design_note_manifest())
    bad = write(tmp_path, "canary", design_note_manifest(channel="canary") + "x: 1\n")
    result = runner.invoke(app, ["validate", "--format", "json", str(good), str(bad)])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["valid"] is False
    assert [f["valid"] for f in report["files"]] == [True, False]
    assert report["files"][1]["problems"][0]["line"] == 15


def test_channel_must_match_its_folder(tmp_path: Path) -> None:
    path = write(tmp_path, "stable", design_note_manifest(channel="canary"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "does not match its folder 'stable'" in result.output


@pytest.mark.parametrize(
    ("issued", "expires", "needle"),
    [
        (timedelta(days=-10), timedelta(days=-1), "expired at"),
        (timedelta(0), timedelta(days=200), "more than 90 days ahead"),
        (timedelta(hours=2), timedelta(days=10), "lies in the future"),
    ],
)
def test_time_window_is_enforced(
    tmp_path: Path, issued: timedelta, expires: timedelta, needle: str
) -> None:
    now = datetime.now(UTC)
    text = manifest_with(
        f"  - component: a\n    version: '1'\n    image: r/a@sha256:{DIGEST_A}\n"
    )
    lines = [
        f'issued_at: "{stamp(now + issued)}"'
        if line.startswith("issued_at")
        else f'expires: "{stamp(now + expires)}"'
        if line.startswith("expires")
        else line
        for line in text.splitlines()
    ]
    path = write(tmp_path, "stable", "\n".join(lines) + "\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert needle in result.output


def test_horizon_is_configurable(tmp_path: Path) -> None:
    path = write(tmp_path, "stable", design_note_manifest())  # expires in 30 days
    result = runner.invoke(app, ["validate", "--max-horizon-days", "7", str(path)])
    assert result.exit_code == 1 and "more than 7 days ahead" in result.output


@pytest.mark.parametrize(
    "args",
    [["validate", "--format", "xml"], ["validate", "no/such/path"]],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    write(tmp_path, "stable", design_note_manifest())
    assert runner.invoke(app, args).exit_code == 2


def test_require_signatures_without_trust_root_is_a_usage_error(tmp_path: Path) -> None:
    path = write(tmp_path, "stable", design_note_manifest())
    result = runner.invoke(app, ["validate", "--require-signatures", str(path)])
    assert result.exit_code == 2
    assert "--trusted-root" in result.output


class TestAgainstBase:
    """`--base REF` on a real temporary git repository."""

    @pytest.fixture
    def repo(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        git(tmp_path, "init", "-q", "-b", "main")
        write(tmp_path, "stable", design_note_manifest(serial=5))
        git(tmp_path, "add", "-A")
        git(tmp_path, "commit", "-qm", "base")
        monkeypatch.chdir(tmp_path)
        return tmp_path

    def run(self) -> tuple[int, str]:
        result = runner.invoke(app, ["validate", "--base", "main", "manifests"])
        return result.exit_code, result.output

    def test_unchanged_manifest_passes(self, repo: Path) -> None:
        assert self.run()[0] == 0

    def test_change_with_raised_serial_passes(self, repo: Path) -> None:
        text = design_note_manifest(serial=6).replace("v2.3.0", "v2.4.0")
        write(repo, "stable", text.replace(DIGEST_A, DIGEST_B, 1))
        code, output = self.run()
        assert code == 0, output

    def test_change_without_raised_serial_fails(self, repo: Path) -> None:
        write(
            repo, "stable", design_note_manifest(serial=5).replace("v2.3.0", "v2.4.0")
        )
        code, output = self.run()
        assert code == 1
        assert "serial 5 is not above the base serial 5; raise it to 6" in output

    def test_channel_change_fails(self, repo: Path) -> None:
        write(repo, "stable", design_note_manifest(serial=6, channel="canary"))
        code, output = self.run()
        assert code == 1 and "channel changed from 'stable' to 'canary'" in output

    def test_silent_downgrade_fails_and_explicit_one_passes(self, repo: Path) -> None:
        older = design_note_manifest(serial=6).replace("v2.3.0", "v2.2.9")
        write(repo, "stable", older.replace(DIGEST_A, DIGEST_B, 1))
        code, output = self.run()
        assert code == 1 and "set `downgrade: true`" in output
        explicit = older.replace(
            "    version: v2.2.9\n", "    version: v2.2.9\n    downgrade: true\n"
        )
        write(repo, "stable", explicit.replace(DIGEST_A, DIGEST_B, 1))
        assert self.run()[0] == 0

    def test_same_version_with_other_digest_fails(self, repo: Path) -> None:
        write(
            repo, "stable", design_note_manifest(serial=6).replace(DIGEST_A, "1" * 64)
        )
        code, output = self.run()
        assert code == 1 and "a released version is immutable" in output

    def test_new_channel_has_no_base_to_compare(self, repo: Path) -> None:
        write(repo, "canary", design_note_manifest(channel="canary", serial=1))
        assert self.run()[0] == 0

    def test_prerelease_numbers_compare_as_numbers(self, repo: Path) -> None:
        rc10 = design_note_manifest(serial=6).replace("v2.3.0", "v2.4.0-rc.10")
        write(repo, "stable", rc10.replace(DIGEST_A, DIGEST_B, 1))
        git(repo, "commit", "-qam", "rc.10")
        rc9 = design_note_manifest(serial=7).replace("v2.3.0", "v2.4.0-rc.9")
        write(repo, "stable", rc9.replace(DIGEST_A, "2" * 64, 1))
        result = runner.invoke(app, ["validate", "--base", "HEAD", "manifests"])
        assert result.exit_code == 1 and "silent-downgrade" in result.output

    def test_a_symlinked_manifest_is_refused(self, repo: Path) -> None:
        target = repo / "elsewhere.yaml"
        target.write_text(design_note_manifest(serial=1))
        link = repo / "manifests/stable/manifest.yaml"
        link.unlink()
        link.symlink_to(target)
        code, output = self.run()
        assert code == 1 and "symbolic link" in output

    def test_a_base_that_does_not_load_fails_closed(self, repo: Path) -> None:
        write(repo, "stable", "not: [valid\n")
        git(repo, "commit", "-qam", "broken base")
        write(repo, "stable", design_note_manifest(serial=1))
        result = runner.invoke(app, ["validate", "--base", "HEAD", "manifests"])
        assert result.exit_code == 1 and "base-unusable" in result.output

    def test_unknown_base_is_a_usage_error(self, repo: Path) -> None:
        result = runner.invoke(app, ["validate", "--base", "nope", "manifests"])
        assert result.exit_code == 2


def test_workflows_match_githubs_schema() -> None:
    workflows = sorted(Path(".github/workflows").glob("*.yml"))
    assert workflows
    result = subprocess.run(
        [
            "check-jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, workflows),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "schema", sorted(Path("schemas").glob("*.schema.json")), ids=lambda p: p.name
)
def test_shipped_schemas_are_valid_draft_2020_12_with_id(schema: Path) -> None:
    from jsonschema import Draft202012Validator

    document = json.loads(schema.read_text())
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"].startswith("https://")
