"""Delivering telemetry to the results branch of the repository.

Every client appends its events, one JSON object per line, to its own file
``clients/<client_id>/events.jsonl`` on a dedicated branch (default
``centops-results``) of the manifest repository. Clients never edit the same
file, so concurrent reports only ever race on the branch tip, never on content.

One delivery, step by step:

1. Take this sink's pending events from the outbox (oldest first, bounded).
2. Fetch only the results branch, at depth 1, into a private bare repository
   under the state directory (``results.git``). The manifest branch is never
   fetched here, and the manifest poll (``gitsource``) never fetches this one.
3. Build the new commit with plumbing only: the client's file at the fetched
   tip plus the new lines (events already on the branch are skipped, by id),
   ``hash-object``, a tree from a temporary index (``read-tree``,
   ``update-index``, ``write-tree``) and ``commit-tree`` with the tip as
   parent. No work tree exists.
4. Push ``<commit>:refs/heads/<branch>``, never forced. If the branch is
   absent, this push creates it.
5. A rejection means another client pushed first: wait (exponential backoff
   with full jitter), fetch the new tip and replay this client's lines on it,
   up to ``max_attempts`` tries in all.
6. Acknowledge the events in the outbox only after the push was accepted;
   whatever was not pushed stays queued for the next run.

The token reaches git only through :func:`~..gitsource.git_environment`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import AgentConfig, TokenSource
from ..errors import ConfigError, TransportError
from ..gitsource import BareRepo, Credentials, redact_url
from .deliver import SINK_GIT, DeliveryReport, Sleep, backoff_delay
from .outbox import Outbox, PendingEvent

logger = logging.getLogger(__name__)

RESULTS_REPO_DIR = "results.git"
RESULTS_REF = "refs/centops/results"
MAX_EVENTS_PER_PUSH = 500
# A client's file is trimmed to its newest lines beyond this size; the older
# lines remain in the branch history.
MAX_EVENTS_FILE_BYTES = 4 * 1024 * 1024
# Objects pile up in results.git (every fetched tip); past this many loose
# objects they are pruned after a successful delivery.
COMPACT_LOOSE_OBJECTS = 2000
# Losing the race for the tip is normal when many clients report together; a
# wider backoff window than the HTTP sink's lets a crowd drain in a few tries.
PUSH_BACKOFF_BASE_SECONDS = 1.0
PUSH_BACKOFF_CAP_SECONDS = 30.0
_CLIENT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# What git prints when a push lost the race for the branch tip.
_REJECTION_MARKERS = (
    "[rejected]",
    "non-fast-forward",
    "fetch first",
    "failed to update ref",
    "cannot lock ref",
    "failed to lock",
    "reference already exists",
    "stale info",
    "[remote rejected]",
)


def events_path(client_id: str) -> str:
    """Where ``client_id`` writes on the results branch.

    Raises ConfigError when the id could name another path.
    """
    if not _CLIENT_ID.fullmatch(client_id):
        raise ConfigError(
            f"client_id {client_id!r} cannot name a results file",
            reason="config-invalid",
            hint="use lowercase letters, digits and '-' (at most 63)",
        )
    return f"clients/{client_id}/events.jsonl"


def event_line(event: dict[str, Any]) -> bytes:
    """One event as a canonical JSON line."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def merge_lines(existing: bytes, events: Sequence[dict[str, Any]]) -> tuple[bytes, int]:
    """The file content with ``events`` appended, and how many were new.

    Events whose id is already in ``existing`` are not appended again (a run
    that pushed and then died before acknowledging). The result is trimmed
    from the front, whole lines only, to :data:`MAX_EVENTS_FILE_BYTES`.
    """
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    present = set()
    for line in existing.splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                present.add(str(value.get("id")))
    added = []
    for event in events:
        if str(event.get("id")) in present:
            continue
        present.add(str(event.get("id")))
        added.append(event_line(event))
    content = existing + b"".join(added)
    if len(content) > MAX_EVENTS_FILE_BYTES:
        cut = content.find(b"\n", len(content) - MAX_EVENTS_FILE_BYTES)
        content = content[cut + 1 :] if cut >= 0 else b""
    return content, len(added)


@dataclass(frozen=True)
class _Attempt:
    pushed: bool
    commit: str | None = None
    new_events: int = 0


class GitResultsSink:
    """Appends this client's pending events to the results branch."""

    def __init__(
        self,
        *,
        url: str,
        branch: str,
        client_id: str,
        state_dir: Path,
        credentials: Credentials | None,
        timeout: float,
        max_attempts: int,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.branch = branch
        self.client_id = client_id
        self.path_in_branch = events_path(client_id)
        self.bare = BareRepo(
            state_dir / RESULTS_REPO_DIR,
            credentials=credentials,
            timeout=timeout,
            extra_env={
                "GIT_AUTHOR_NAME": f"centops-agent {client_id}",
                "GIT_AUTHOR_EMAIL": f"{client_id}@clients.centops.invalid",
                "GIT_COMMITTER_NAME": f"centops-agent {client_id}",
                "GIT_COMMITTER_EMAIL": f"{client_id}@clients.centops.invalid",
            },
        )
        self.max_attempts = max(1, max_attempts)
        self.sleep = sleep
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy

    @classmethod
    def from_config(
        cls, config: AgentConfig, *, sleep: Sleep = time.sleep
    ) -> GitResultsSink:
        """The sink the configuration describes; reads the token (ConfigError)."""
        results = config.telemetry.results_branch
        source = results.token or config.repository.token
        return cls(
            url=results.url or config.repository.url,
            branch=results.branch,
            client_id=config.client_id,
            state_dir=config.state_dir,
            credentials=_credentials(source),
            timeout=float(config.repository.timeout_seconds),
            max_attempts=results.max_attempts,
            sleep=sleep,
        )

    # -- the delivery ------------------------------------------------------

    def deliver(self, outbox: Outbox) -> DeliveryReport:
        """Push pending events; acknowledge those the branch now holds.

        Never raises for a git or network failure: the report says what
        happened and the events stay queued. Raises ConfigError only when
        git itself is missing.
        """
        pending = outbox.pending(SINK_GIT, limit=MAX_EVENTS_PER_PUSH)
        if not pending:
            return DeliveryReport(sink=SINK_GIT)
        with self._locked() as locked:
            if not locked:
                return self._report(
                    outbox,
                    attempts=0,
                    error="another delivery to the results branch is running",
                    reason="results-busy",
                )
            return self._deliver_locked(outbox, pending)

    def _deliver_locked(
        self, outbox: Outbox, pending: list[PendingEvent]
    ) -> DeliveryReport:
        events = [item.event for item in pending]
        error: TransportError | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                outcome, error = self._try_once(events), None
            except TransportError as exc:
                outcome, error = _Attempt(pushed=False), exc
                if _auth_rejected(exc):
                    return self._report(
                        outbox,
                        attempts=attempt,
                        error=exc.message,
                        reason="git-auth-rejected",
                    )
            if outcome.pushed:
                outbox.ack(pending)
                logger.info(
                    "telemetry: %d event(s) on %s %s (commit %s, try %d)",
                    outcome.new_events,
                    redact_url(self.url),
                    self.branch,
                    (outcome.commit or "-")[:12],
                    attempt,
                )
                self.bare.compact_if_needed(max_loose_objects=COMPACT_LOOSE_OBJECTS)
                return self._report(
                    outbox, attempts=attempt, delivered=len(pending), error=None
                )
            if attempt < self.max_attempts:
                delay = backoff_delay(
                    attempt,
                    rng=self.rng,
                    base=PUSH_BACKOFF_BASE_SECONDS,
                    cap=PUSH_BACKOFF_CAP_SECONDS,
                )
                logger.debug(
                    "telemetry: push %d/%d to %s lost or failed (%s); retry in %.2fs",
                    attempt,
                    self.max_attempts,
                    self.branch,
                    error.reason if error else "rejected",
                    delay,
                )
                self.sleep(delay)
        message = (
            error.message if error else "the branch tip kept moving; push rejected"
        )
        return self._report(
            outbox,
            attempts=self.max_attempts,
            error=f"gave up after {self.max_attempts} tries: {message}",
            reason=error.reason if error else "results-push-rejected",
        )

    def _try_once(self, events: Sequence[dict[str, Any]]) -> _Attempt:
        """Fetch, build on the tip, push. ``pushed`` False: lost the race.

        Raises TransportError for failures other than a lost race.
        """
        tip = self._fetch_tip()
        existing = self._read_own_file(tip) if tip else b""
        content, new = merge_lines(existing, events)
        if tip is not None and new == 0:
            return _Attempt(pushed=True, commit=tip)  # already there: nothing to do
        commit = self._commit(tip, content, new)
        try:
            self.bare.git(
                "push",
                "--quiet",
                "--no-verify",
                "--",
                self.url,
                f"{commit}:refs/heads/{self.branch}",
                what=f"git push to {redact_url(self.url)} {self.branch}",
            )
        except TransportError as exc:
            if any(marker in exc.message for marker in _REJECTION_MARKERS):
                return _Attempt(pushed=False, commit=commit)
            raise
        return _Attempt(pushed=True, commit=commit, new_events=new)

    # -- git plumbing --------------------------------------------------------

    def _fetch_tip(self) -> str | None:
        """Fetch the results branch at depth 1; None when it does not exist yet."""
        self.bare.ensure()
        try:
            self.bare.git(
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-recurse-submodules",
                "--depth=1",
                "--",
                self.url,
                f"+refs/heads/{self.branch}:{RESULTS_REF}",
                what=f"git fetch of {redact_url(self.url)} {self.branch}",
            )
        except TransportError as exc:
            if "couldn't find remote ref" in exc.message.lower():
                return None
            raise
        out = self.bare.git(
            "rev-parse",
            "--verify",
            "--quiet",
            f"{RESULTS_REF}^{{commit}}",
            what="git rev-parse",
        )
        return out.decode().strip()

    def _read_own_file(self, tip: str) -> bytes:
        """This client's file at ``tip`` (empty when absent), size-checked first."""
        name = f"{tip}:{self.path_in_branch}"
        check = (
            self.bare.git(
                "cat-file",
                "--batch-check",
                what="git cat-file",
                input_bytes=f"{name}\n".encode(),
            )
            .decode()
            .split()
        )
        if len(check) != 3 or check[1] != "blob":
            return b""
        if int(check[2]) > 2 * MAX_EVENTS_FILE_BYTES:
            # Not this agent's writing: start the file afresh rather than load it.
            logger.warning(
                "telemetry: %s on %s is %s bytes; starting it afresh",
                self.path_in_branch,
                self.branch,
                check[2],
            )
            return b""
        return self.bare.git("cat-file", "blob", check[0], what="git cat-file")

    def _commit(self, tip: str | None, content: bytes, new: int) -> str:
        """A commit whose tree is ``tip``'s with this client's file replaced."""
        blob = (
            self.bare.git(
                "hash-object",
                "-w",
                "--stdin",
                what="git hash-object",
                input_bytes=content,
            )
            .decode()
            .strip()
        )
        with tempfile.TemporaryDirectory(
            dir=self.bare.path, prefix="index-"
        ) as scratch:
            env = dict(self.bare.env, GIT_INDEX_FILE=str(Path(scratch) / "index"))
            if tip is not None:
                self.bare.git("read-tree", tip, what="git read-tree", env=env)
            # --replace: whatever another writer put at or under this
            # client's path (a folder, a file where the folder belongs) is
            # replaced, so no one can block a client's reports.
            self.bare.git(
                "update-index",
                "--add",
                "--replace",
                "--cacheinfo",
                f"100644,{blob},{self.path_in_branch}",
                what="git update-index",
                env=env,
            )
            tree = self.bare.git("write-tree", what="git write-tree", env=env)
        args = [
            "commit-tree",
            tree.decode().strip(),
            "-m",
            f"{self.client_id}: {new} event(s)",
        ]
        if tip is not None:
            args += ["-p", tip]
        return self.bare.git(*args, what="git commit-tree").decode().strip()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool]:
        """Hold an exclusive, non-blocking lock on the results repository."""
        self.bare.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            self.bare.path.parent / f"{RESULTS_REPO_DIR}.lock",
            os.O_CREAT | os.O_RDWR,
            0o600,
        )
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _report(
        self,
        outbox: Outbox,
        *,
        attempts: int,
        error: str | None,
        reason: str | None = None,
        delivered: int = 0,
    ) -> DeliveryReport:
        return DeliveryReport(
            sink=SINK_GIT,
            delivered=delivered,
            attempts=attempts,
            remaining=outbox.counts().get(SINK_GIT, 0),
            error=error,
            reason=reason,
        )


def _auth_rejected(exc: TransportError) -> bool:
    """True when the server refused the credentials: retrying cannot help.

    With prompts disabled, git reports a 401 as being unable to read a
    username, which ``gitsource`` classifies as unreachable; both count here.
    """
    text = exc.message.lower()
    return exc.reason == "git-auth-rejected" or "could not read username" in text


def _credentials(source: TokenSource | None) -> Credentials | None:
    return source.credentials() if source is not None else None
