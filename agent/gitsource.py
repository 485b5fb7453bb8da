"""Following one branch of the manifest repository, cheaply and safely.

Phase 1 of a sync ("is there an update?") costs the fleet on every poll, so:

- Over HTTP(S) the branch tip is read with a single protocol-v2 ``ls-refs``
  request carrying ``ref-prefix refs/heads/<branch>``: its cost does not grow
  with the number of other refs on the server (for example per-client results
  branches), and the server builds no pack. Other transports fall back to
  ``git ls-remote`` (see :func:`remote_tip`).
- Only when the tip moved is anything fetched: ``git fetch --depth=1`` of that
  one branch into a bare repository under the state directory. History never
  accumulates; :meth:`LocalMirror.compact` drops unreachable objects.
- The manifest and its bundle are read from the fetched commit's objects
  (``git cat-file``); no work tree exists.

Tokens reach git through ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/
``GIT_CONFIG_VALUE_n`` environment variables (an ``http.extraHeader``), so they
never appear in process arguments, ``.git/config``, logs or error messages;
error text from git is scrubbed of the token before it is raised. Every git
process has a timeout, and a file-size limit bounds what a hostile server can
make it write.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError, RemoteContentError, TransportError

MAX_FETCH_FILE_BYTES = 256 * 1024 * 1024
MAX_BLOB_BYTES = 1024 * 1024
ANCESTRY_PROBE_DEPTH = 64
FETCHED_REF = "refs/centops/head"
log = logging.getLogger(__name__)
_OID = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")


@dataclass(frozen=True)
class Credentials:
    """A token and how to present it; ``repr`` never shows the token."""

    token: str
    username: str = "x-access-token"
    scheme: str = "basic"

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, scheme={self.scheme!r})"

    def header(self) -> str:
        from .lsrefs import auth_header

        return auth_header(self.token, username=self.username, scheme=self.scheme)


def git_environment(
    credentials: Credentials | None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """An environment for git: isolated from user config, token in env only."""
    env = {
        k: v
        for k, v in (base if base is not None else os.environ).items()
        if not k.startswith(("GIT_CONFIG", "GIT_DIR", "GIT_WORK_TREE", "GIT_ASKPASS"))
    }
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_ASKPASS="/bin/false",
        SSH_ASKPASS="/bin/false",
    )
    settings = [
        ("protocol.version", "2"),
        ("transfer.fsckObjects", "true"),
        ("http.lowSpeedLimit", "1000"),
        ("http.lowSpeedTime", "30"),
        ("credential.helper", ""),
        ("gc.auto", "0"),
        ("maintenance.auto", "false"),
    ]
    if credentials is not None:
        settings.append(("http.extraHeader", f"Authorization: {credentials.header()}"))
    env["GIT_CONFIG_COUNT"] = str(len(settings))
    for index, (key, value) in enumerate(settings):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def scrub(text: str, credentials: Credentials | None) -> str:
    """Remove the token (and its Basic encoding) from text meant for people."""
    if credentials is None:
        return text
    for secret in (credentials.token, credentials.header()):
        text = text.replace(secret, "***")
    return text


def redact_url(url: str) -> str:
    """The URL without any user or password part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=host).geturl()


def _limit_file_size() -> None:  # runs in the child, before exec
    resource.setrlimit(
        resource.RLIMIT_FSIZE, (MAX_FETCH_FILE_BYTES, MAX_FETCH_FILE_BYTES)
    )


def run_git(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float,
    credentials: Credentials | None = None,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
    what: str = "git",
) -> bytes:
    """Run git; TransportError (scrubbed) on failure or timeout."""
    try:
        done = subprocess.run(
            ["git", *args],
            env=dict(env),
            cwd=cwd,
            input=input_bytes,
            capture_output=True,
            timeout=timeout,
            check=False,
            # setrlimit only: safe in the child even with threads running.
            preexec_fn=_limit_file_size,
        )
    except subprocess.TimeoutExpired as exc:
        raise TransportError(
            f"{what} timed out after {timeout:.0f} s",
            reason="git-timeout",
            hint="check the repository server and network; the agent retries",
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot run git: {exc.strerror}", reason="git-missing"
        ) from exc
    if done.returncode != 0:
        detail = scrub(done.stderr.decode("utf-8", "replace"), credentials).strip()
        raise TransportError(
            f"{what} failed: {detail[-600:] or f'exit {done.returncode}'}",
            reason=_classify(detail),
            hint="check the repository URL, the token and the network",
        )
    return done.stdout


def _classify(stderr: str) -> str:
    lowered = stderr.lower()
    auth_words = ("401", "403", "authentication", "could not read username")
    if any(word in lowered for word in auth_words):
        return "git-auth-rejected"
    if "couldn't find remote ref" in lowered or "not found" in lowered:
        return "git-ref-missing"
    return "git-unreachable"


# -- phase 1: where is the branch now? -----------------------------------------


def remote_tip(
    url: str,
    branch: str,
    *,
    credentials: Credentials | None,
    timeout: float,
    ca_bundle: Path | None = None,
) -> str | None:
    """The commit at ``refs/heads/<branch>`` on the remote, or None if absent."""
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        return _ls_refs_http(url, branch, credentials, timeout, ca_bundle)
    # git://, ssh and file:// have no cheap single-ref query in git's CLI;
    # ls-remote lists every ref there (fine for file://, costly at scale).
    out = run_git(
        ["ls-remote", "--", url, f"refs/heads/{branch}"],
        env=git_environment(credentials),
        timeout=timeout,
        credentials=credentials,
        what="git ls-remote",
    )
    for line in out.decode("ascii", "replace").splitlines():
        oid, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}" and _OID.fullmatch(oid):
            return oid
    return None


def _ls_refs_http(
    url: str,
    branch: str,
    credentials: Credentials | None,
    timeout: float,
    ca_bundle: Path | None,
) -> str | None:
    from .lsrefs import LsRefsError, branch_tip

    try:
        return branch_tip(
            url,
            branch,
            authorization=credentials.header() if credentials else None,
            timeout=timeout,
            ca_bundle=str(ca_bundle) if ca_bundle else None,
        )
    except LsRefsError as exc:
        where = redact_url(url)
        if exc.kind == "auth":
            raise TransportError(
                f"{where}: {exc}",
                reason="git-auth-rejected",
                hint="check the token source in the agent configuration",
            ) from exc
        if exc.kind in ("too-large", "protocol"):
            raise RemoteContentError(f"{where}: {exc}", reason="git-protocol") from exc
        raise TransportError(
            f"cannot reach {where}: {exc}",
            reason="git-unreachable",
            hint="the agent keeps what is installed and retries on the next poll",
        ) from exc


# -- fetching and reading ------------------------------------------------------


@dataclass(frozen=True)
class FetchResult:
    commit: str
    previous: str | None
    history_rewritten: bool


class BareRepo:
    """A bare repository under the state directory, driven through git with
    the token in the environment only (see :func:`git_environment`)."""

    def __init__(
        self,
        path: Path,
        *,
        credentials: Credentials | None,
        timeout: float,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        self.credentials = credentials
        self.timeout = timeout
        self.env = git_environment(credentials)
        self.env.update(extra_env or {})

    def git(
        self,
        *args: str,
        what: str,
        input_bytes: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> bytes:
        return run_git(
            ["--git-dir", str(self.path), *args],
            env=self.env if env is None else env,
            timeout=self.timeout,
            credentials=self.credentials,
            input_bytes=input_bytes,
            what=what,
        )

    def ensure(self) -> None:
        """Create the repository if it does not exist yet."""
        if (self.path / "HEAD").exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        run_git(
            ["init", "--bare", "--quiet", str(self.path)],
            env=self.env,
            timeout=self.timeout,
            what="git init",
        )

    def compact(self) -> None:
        """Drop objects no longer reachable from the refs kept."""
        self.git("reflog", "expire", "--expire=now", "--all", what="git reflog")
        self.git("gc", "--prune=now", "--quiet", what="git gc")

    def compact_if_needed(self, *, max_loose_objects: int = 1000) -> None:
        """Compact once loose objects pile up; never fails the caller."""
        try:
            out = self.git("count-objects", what="git count-objects").decode()
            if int(out.split(" ", 1)[0]) > max_loose_objects:
                self.compact()
        except (TransportError, ValueError) as exc:
            log.debug("compacting %s skipped: %s", self.path, exc)


class LocalMirror(BareRepo):
    """A bare, shallow copy of one branch under the state directory."""

    def __init__(
        self,
        path: Path,
        url: str,
        branch: str,
        *,
        credentials: Credentials | None,
        timeout: float,
    ) -> None:
        super().__init__(path, credentials=credentials, timeout=timeout)
        self.url = url
        self.branch = branch

    def fetch(self, previous: str | None) -> FetchResult:
        """Fetch the branch tip at depth 1 and tell whether history was rewritten.

        When ``previous`` is not the tip's parent, the last
        ANCESTRY_PROBE_DEPTH commits are fetched to look for it. It counts as
        rewritten (a force push) when it is not among them although the probe
        reaches back past its commit time; a follower that fell further
        behind than the probe cannot tell, and reports no rewrite. Either
        way the new tip is then verified like any other: this is reporting,
        not a trust decision (the serial is what stops a rollback).
        """
        self.ensure()
        refspec = f"+refs/heads/{self.branch}:{FETCHED_REF}"
        self._fetch("--depth=1", refspec)
        commit = self.resolve(FETCHED_REF)
        rewritten = False
        if previous and previous != commit and previous not in self._parents(commit):
            previous_time = self._commit_time(previous)
            self._fetch(f"--depth={ANCESTRY_PROBE_DEPTH}", refspec)
            if not self._is_ancestor(previous, commit):
                oldest = self._oldest_time(commit)
                # The probe reached commits older than the previous tip, so
                # an ancestor would have been seen.
                rewritten = previous_time is None or previous_time > oldest
            self._fetch("--depth=1", refspec)
        return FetchResult(
            commit=commit, previous=previous, history_rewritten=rewritten
        )

    def _fetch(self, depth: str, refspec: str) -> None:
        self.git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            depth,
            "--",
            self.url,
            refspec,
            what=f"git fetch of {redact_url(self.url)} {self.branch}",
        )

    def resolve(self, ref: str) -> str:
        out = self.git(
            "rev-parse",
            "--verify",
            "--quiet",
            f"{ref}^{{commit}}",
            what="git rev-parse",
        )
        return out.decode().strip()

    def _parents(self, commit: str) -> list[str]:
        out = self.git("cat-file", "commit", commit, what="git cat-file")
        return [
            line.split(" ", 1)[1]
            for line in out.decode("utf-8", "replace").splitlines()
            if line.startswith("parent ")
        ]

    def _commit_time(self, commit: str) -> int | None:
        try:
            out = self.git("show", "-s", "--format=%ct", commit, what="git show")
        except TransportError:
            return None  # no longer in the mirror
        return int(out.decode().strip() or 0)

    def _oldest_time(self, commit: str) -> int:
        """Commit time of the oldest commit the probe fetched."""
        out = self.git(
            "log",
            "--format=%ct",
            f"--max-count={ANCESTRY_PROBE_DEPTH}",
            commit,
            what="git log",
        )
        times = [int(t) for t in out.decode().split()]
        return min(times) if len(times) >= ANCESTRY_PROBE_DEPTH else 0

    def _is_ancestor(self, ancestor: str, commit: str) -> bool:
        try:
            self.git("merge-base", "--is-ancestor", ancestor, commit, what="merge-base")
        except TransportError:
            return False
        return True

    def read_files(self, commit: str, paths: Sequence[str]) -> dict[str, bytes | None]:
        """Blobs at ``commit`` for ``paths`` (None where absent); size-capped.

        Sizes are checked with ``--batch-check`` before any content is read,
        so an oversized blob is refused without loading it.
        """
        names = [f"{commit}:{p}" for p in paths]
        request = "".join(f"{n}\n" for n in names).encode()
        checks = self.git(
            "cat-file", "--batch-check", what="git cat-file", input_bytes=request
        )
        found: dict[str, bytes | None] = {}
        for path, line in zip(paths, checks.decode().splitlines(), strict=True):
            fields = line.split(" ")
            if len(fields) != 3 or fields[1] != "blob":
                found[path] = None  # "<name> missing", or not a file
                continue
            if int(fields[2]) > MAX_BLOB_BYTES:
                raise RemoteContentError(
                    f"{path} at {commit[:12]} is {fields[2]} bytes; the limit is "
                    f"{MAX_BLOB_BYTES}",
                    reason="manifest-too-large",
                )
            found[path] = self.git("cat-file", "blob", fields[0], what="git cat-file")
        return found
