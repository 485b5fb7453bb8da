"""Agent configurations for clients on loopback (tests, the demo, benchmarks).

Every server these configurations name is a loopback one started by the
caller, which is why plain http is allowed for the repository and downloads.
Production configurations come from ``centops-agent init``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SIGNER = "https://github.com/centops/fleet/.github/workflows/sign.yml@refs/heads/main"
ISSUER = "https://token.actions.githubusercontent.com"


def loopback_agent_config(
    root: Path,
    *,
    repo_url: str,
    trusted_root: Path,
    token_variable: str,
    client_id: str = "client-a",
    channel: str = "stable",
    **overrides: Any,
) -> dict[str, Any]:
    """A configuration whose state and file root live under ``root``.

    ``overrides`` replace top-level sections; a mapping given for a section
    that exists is merged into it one level deep.
    """
    config: dict[str, Any] = {
        "client_id": client_id,
        "channel": channel,
        "repository": {
            "url": repo_url,
            "branch": "main",
            "token": {"env": token_variable},
            "timeout_seconds": 20,
            "insecure_allow_http_loopback": True,
        },
        "trust": {
            "trusted_root": str(trusted_root),
            "issuer": ISSUER,
            "identities": [SIGNER],
        },
        "state_dir": str(root / "state"),
        "files": {"root": str(root / "files")},
        "scripts": {"timeout_seconds": 10},
        "downloads": {"timeout_seconds": 10, "insecure_allow_http_loopback": True},
        "telemetry": {"results_branch": {"enabled": False}},
        "poll": {"frequency_seconds": 60, "jitter_seconds": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config
