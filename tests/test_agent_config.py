"""The agent's configuration: the template, the design note's blocks, bad input."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from centops.agent.cli import app, next_delay
from centops.agent.config import load_config
from centops.agent.errors import ConfigError
from centops.agent.fastpath import parse_sync_argv

runner = CliRunner()

MINIMAL = """\
client_id: client-a
channel: stable
trust:
  trusted_root: root.json
  issuer: https://token.actions.githubusercontent.com
  identities: [https://github.com/o/r/.github/workflows/sign.yml@refs/heads/main]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_init_writes_a_commented_configuration_that_loads(tmp_path: Path) -> None:
    target = tmp_path / "agent.yaml"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    assert "# centops-agent configuration" in target.read_text()
    config = load_config(target)
    assert config.channel == "stable" and config.poll.frequency_seconds == 3600
    assert config.trust.trusted_root.is_file()  # the shipped public-good root
    assert target.stat().st_mode & 0o077 == 0
    assert runner.invoke(app, ["init", str(target)]).exit_code == 2  # no overwrite


def test_design_note_blocks_are_accepted_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = MINIMAL + (
        "update_notification:\n"
        "  method: polling\n"
        "  endpoint: https://git.example/fleet.git\n"
        "  token_type: environment_token\n"
        "  frequency_seconds: 3600\n"
        "update_execution:\n"
        "  triggered_by: local_controller\n"
        "  order: defined_by_manifest\n"
        "  post_update_telemetry: true\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.repository.url == "https://git.example/fleet.git"
    assert config.poll.frequency_seconds == 3600
    assert config.repository.token is not None
    assert config.repository.token.env == "CENTOPS_TOKEN"
    monkeypatch.setenv("CENTOPS_TOKEN", "abc")
    assert config.repository.token.read() == "abc"
    assert config.telemetry.enabled is True


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("repository: {url: https://x/r.git, token: {value: abc}}\n", "unknown field"),
        (
            "repository: {url: https://x/r.git}\npoll: {frequency_seconds: 0}\n",
            "minimum",
        ),
        ("repository: {url: https://x/r.git}\nbogus: 1\n", "unknown field 'bogus'"),
        (
            "repository: {url: https://x/r.git}\n"
            "update_notification: {endpoint: https://y/r.git}\n",
            "differ",
        ),
        ("repository: {url: https://x/r.git}\nclient_id: Bad_Name\n", "duplicate key"),
        (
            "update_notification: {method: push, endpoint: https://y/r.git}\n",
            "expected 'polling'",
        ),
        ("repository: {url: http://git.example/r.git}\n", "plain http"),
        ("repository: {url: http://127.0.0.1:8/r.git}\n", "plain http"),
        ("repository: {url: ftp://x/r.git}\n", "not supported"),
    ],
)
def test_bad_configuration_names_file_and_field(
    tmp_path: Path, extra: str, needle: str
) -> None:
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert needle in str(caught.value)
    assert str(path) in str(caught.value)


def test_token_never_comes_from_the_configuration_itself(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    text = (
        MINIMAL
        + f"repository:\n  url: https://x/r.git\n  token: {{file: {token_file}}}\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.repository.token is not None
    assert config.repository.token.read() == "from-file"
    assert "from-file" not in repr(config)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["sync"], (True, None)),
        (["sync", "--config", "a.yaml"], (True, "a.yaml")),
        (["sync", "-c", "a.yaml"], (True, "a.yaml")),
        (["sync", "--config=a.yaml"], (True, "a.yaml")),
        (["sync", "--json"], (False, None)),
        (["sync", "--config", "a.yaml", "--json"], (False, None)),
        (["status"], (False, None)),
        ([], (False, None)),
    ],
)
def test_only_a_plain_sync_takes_the_lean_path(
    argv: list[str], expected: tuple[bool, str | None]
) -> None:
    assert parse_sync_argv(argv) == expected


def test_timer_jitters_and_backs_off_up_to_the_cap(tmp_path: Path) -> None:
    text = MINIMAL + (
        "repository: {url: https://x/r.git}\n"
        "poll: {frequency_seconds: 3600, jitter_seconds: 60,"
        " max_backoff_seconds: 600}\n"
    )
    config = load_config(write(tmp_path, text))
    rng = random.Random(7)
    delays = [next_delay(config, 0, rng) for _ in range(50)]
    assert all(3600 <= d <= 3660 for d in delays) and len(set(delays)) > 1
    backoff = [next_delay(config, n, random.Random(1)) - 0 for n in range(1, 8)]
    bases = [min(600, 30 * 2 ** (n - 1)) for n in range(1, 8)]
    assert all(b <= d <= b + 60 for b, d in zip(bases, backoff, strict=True))


def test_help_lists_exit_codes_and_version() -> None:
    result = runner.invoke(app, ["--help"])
    assert "Exit codes" in result.output
    assert runner.invoke(app, ["--version"]).output.startswith("centops-agent ")


def test_the_lean_poll_path_shares_the_full_paths_rules() -> None:
    """fastpath repeats a few constants to stay free of heavy imports."""
    from centops.agent import config, fastpath, state

    assert set(fastpath.SETTLED) == set(state.SETTLED_OUTCOMES)
    assert fastpath.MAX_TOKEN_BYTES == config.MAX_TOKEN_BYTES
    assert fastpath.CONFIG_ENV == config.CONFIG_ENV
    assert str(config.DEFAULT_CONFIG) == fastpath.DEFAULT_CONFIG
