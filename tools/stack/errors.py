"""Errors of the test container stack.

Deliberately not under the product's ``CentOpsError`` root: a failure of the
test infrastructure must never be mistaken, in a test, for a refusal or an
error of the agent itself. The shape is the same (a stable ``reason`` and a
``hint`` that says what to do).
"""

from __future__ import annotations


class StackError(Exception):
    """The local registry, engine or image tooling did not do its job."""

    reason: str = "test-stack"

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def describe(self) -> str:
        """The message followed by the hint, for people."""
        text = str(self.args[0]) if self.args else ""
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class StartError(StackError):
    """A daemon did not start or did not answer within its time bound."""

    reason = "test-stack-start"


class ToolchainError(StackError):
    """A host tool the stack needs (gcc -static, dockerd, ...) is missing."""

    reason = "test-stack-toolchain"


class RegistryError(StackError):
    """The registry answered a push with an unexpected status or digest."""

    reason = "test-stack-registry"


class PullError(StackError):
    """The engine reported an error while pulling an image."""

    reason = "test-stack-pull"
