"""The no-op poll, kept lean: no typer, yaml, jsonschema, sigstore or docker.

Most polls find nothing new, and every client pays for each one, so a plain
``centops-agent sync`` first tries this path. It relies on a small cache the
full sync writes after a settled outcome (:func:`write_cache`): the few
configuration values a poll needs, keyed by the configuration file's path and
exact bytes, so any edit of the file invalidates it. With that it reads
``state.json``, asks the server for the branch tip in one request
(:mod:`.lsrefs`) and stops if that commit was already processed, nothing is
pending and the applied manifest has not expired.

Any doubt (no cache, a new commit, a failed or interrupted sync, undelivered
telemetry, any error at all) falls through to the full sync, which does
everything properly and reports errors. This path never installs anything and
writes nothing but the informational last-poll time. The cache holds no
secret: a token source is a variable name or a file path.
"""

from __future__ import annotations

import json
import os
import time

try:  # the builtin module: hashlib would load OpenSSL (~6 ms) for one digest
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Python built without it
    from hashlib import sha256

TYPE_CHECKING = False  # importing typing for its flag alone costs 2 ms here
if TYPE_CHECKING:
    from .config import AgentConfig

CONFIG_ENV = "CENTOPS_AGENT_CONFIG"
CACHE_ENV = "CENTOPS_AGENT_CACHE_DIR"
DEFAULT_CONFIG = "/etc/centops/agent.yaml"
MAX_READ = 4 * 1024 * 1024
SETTLED = ("succeeded", "refused", "stale")  # as state.SETTLED_OUTCOMES
MAX_TOKEN_BYTES = 16 * 1024  # as config.MAX_TOKEN_BYTES
_BREAKS = frozenset("\r\n\0")


def parse_sync_argv(argv: list[str]) -> tuple[bool, str | None]:
    """(is a plain ``sync``, its --config value) for the command line."""
    if not argv or argv[0] != "sync":
        return False, None
    rest = argv[1:]
    if not rest:
        return True, None
    if len(rest) == 2 and rest[0] in ("--config", "-c"):
        return True, rest[1]
    if len(rest) == 1 and rest[0].startswith("--config="):
        return True, rest[0].split("=", 1)[1]
    return False, None


def cache_dir() -> str:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return "/var/cache/centops-agent"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "centops-agent")


def cache_key(config_file: str, data: bytes) -> str:
    path = os.path.realpath(config_file).encode()
    return str(sha256(path + b"\0" + data).hexdigest())


def write_cache(config: AgentConfig) -> None:
    """Record what the no-op poll needs (called by the full sync; no secrets)."""
    try:
        data = config.source.read_bytes()
    except OSError:
        return
    if sha256(data).hexdigest() != config.sha256:
        return  # the file changed under us; the next full sync writes it
    repo = config.repository
    token = repo.token
    body = {
        "config_sha256": config.sha256,
        "state_dir": str(config.state_dir),
        "url": repo.url,
        "branch": repo.branch,
        "timeout": repo.timeout_seconds,
        "heartbeat_seconds": config.telemetry.heartbeat_seconds
        if config.telemetry.enabled
        else None,
        "ca_bundle": str(repo.ca_bundle) if repo.ca_bundle else None,
        "token": None
        if token is None
        else {
            "env": token.env,
            "file": str(token.file) if token.file else None,
            "username": token.username,
            "scheme": token.scheme,
        },
    }
    folder = cache_dir()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        target = os.path.join(folder, f"{cache_key(str(config.source), data)}.json")
        temp = f"{target}.{os.getpid()}.tmp"
        with open(temp, "w") as handle:
            handle.write(json.dumps(body))
        os.replace(temp, target)
    except OSError:
        pass  # without the cache every poll takes the full path; still correct


def try_noop(explicit: str | None) -> bool:
    """True when this poll is a no-op and was handled here."""
    try:
        return _noop(explicit)
    except Exception:
        return False


def _read(path: str, limit: int = MAX_READ) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(limit)


def _noop(explicit: str | None) -> bool:
    config_file = explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    data = _read(config_file)
    key = cache_key(config_file, data)
    cache = json.loads(_read(os.path.join(cache_dir(), f"{key}.json")))
    if cache["config_sha256"] != sha256(data).hexdigest():
        return False
    state_dir = cache["state_dir"]
    state = json.loads(_read(os.path.join(state_dir, "state.json")))
    last = state.get("last_result") or {}
    applied = state.get("applied") or {}
    processed = state.get("processed_commit")
    if (
        not processed
        or state.get("config_sha256") != cache["config_sha256"]
        or last.get("outcome") not in SETTLED
    ):
        return False
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    expires = applied.get("expires")
    if expires and last.get("outcome") != "stale" and expires <= now:
        return False  # same fixed-width UTC format: text order is time order
    if _outbox_pending(os.path.join(state_dir, "outbox")):
        return False
    every = cache.get("heartbeat_seconds")
    last_report = state.get("last_report_at")
    if every is not None:
        if not last_report:
            return False
        due = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - float(every))
        )
        if last_report <= due:
            return False  # the full sync sends the heartbeat
    scheme = cache["url"].partition("://")[0]
    if scheme not in ("http", "https"):
        return False

    from .lsrefs import auth_header, branch_tip

    authorization = None
    token = cache["token"]
    if token is not None:
        secret = (
            os.environ.get(token["env"], "")
            if token["env"]
            else _read(token["file"], MAX_TOKEN_BYTES + 1).decode().strip()
        )
        # The same rules as TokenSource.read: anything odd goes to the full
        # path, which reports it.
        if not secret or len(secret) > MAX_TOKEN_BYTES or _BREAKS.intersection(secret):
            return False
        authorization = auth_header(
            secret, username=token["username"], scheme=token["scheme"]
        )
    tip = branch_tip(
        cache["url"],
        cache["branch"],
        authorization=authorization,
        timeout=float(cache["timeout"]),
        ca_bundle=cache["ca_bundle"],
    )
    if tip != processed:
        return False
    try:
        temp = os.path.join(state_dir, "last-poll.tmp")
        with open(temp, "w") as handle:
            handle.write(now)
        os.replace(temp, os.path.join(state_dir, "last-poll"))
    except OSError:
        pass
    return True


def _outbox_pending(outbox: str) -> bool:
    try:
        sinks = list(os.scandir(outbox))
    except FileNotFoundError:
        return False
    for sink in sinks:
        if sink.is_dir() and sink.name != "dead":
            with os.scandir(sink.path) as entries:
                if any(e.name.endswith(".json") for e in entries):
                    return True
    return False
