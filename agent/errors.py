"""The one exception tree of CentOps.

Branches are chosen by who has to act next, because that is what the agent's
loop and the command-line exit codes depend on:

- :class:`RemoteContentError`: what the repository, a registry or a download
  server delivered is not acceptable (bad signature, wrong channel, stale,
  rollback, wrong hash). Retrying the same content cannot help; the agent keeps
  what is installed and reports a refusal.
- :class:`TransportError`: the network or a server failed. Retry later with
  backoff.
- :class:`InstallError`: a verified component could not be installed on this
  client (a script failed, a container did not become healthy).
- :class:`ConfigError`: the local configuration or environment is wrong; a
  person must fix it.

Every error carries a stable kebab-case ``reason`` that telemetry and JSON
output report, a message that says what was observed against what was
expected, and an optional ``hint`` that says what to do.
"""

from __future__ import annotations


class CentOpsError(Exception):
    """Root of every error CentOps raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None, hint: str = ""):
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def describe(self) -> str:
        """The message followed by the hint, for people."""
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class RemoteContentError(CentOpsError):
    """Content from a remote source is not acceptable; do not retry blindly."""

    reason = "remote-content"


class TransportError(CentOpsError):
    """A remote read or write failed in transit; retry with backoff."""

    reason = "transport"


class InstallError(CentOpsError):
    """A verified component could not be installed on this client."""

    reason = "install-failed"


class ConfigError(CentOpsError):
    """Local configuration or environment is wrong; a person must act."""

    reason = "config"
