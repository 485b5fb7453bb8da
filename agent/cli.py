"""``centops-agent``: the client's command line (a thin layer over the library).

Exit codes, in one place (also printed by ``--help``):

==== =====================================================================
code meaning
==== =====================================================================
0    done: synced, or nothing to do (``check``: no update waiting)
1    the sync ran and failed (an install failed or was rolled back)
2    usage or configuration error (a person must act)
3    the repository could not be reached (retried on the next poll)
4    the manifest was refused (signature, channel, rollback, expiry, format)
5    another agent holds the state directory
10   ``check`` only: an update is waiting
==== =====================================================================
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
import threading
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .config import CONFIG_ENV, AgentConfig, config_path, load_config
from .errors import CentOpsError, ConfigError, RemoteContentError, TransportError
from .state import StateDir, StateLocked

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_LOCKED = 5
EXIT_UPDATE_WAITING = 10

EXIT_TABLE = """\
Exit codes: 0 done or nothing to do; 1 sync failed (install failed or rolled
back); 2 usage or configuration error; 3 repository unreachable; 4 manifest
refused; 5 state directory locked by another agent; 10 (check) update waiting.
"""

OUTCOME_EXIT = {
    "up-to-date": EXIT_OK,
    "succeeded": EXIT_OK,
    "failed": EXIT_FAILED,
    "rolled-back": EXIT_FAILED,
    "refused": EXIT_REFUSED,
    "stale": EXIT_REFUSED,
}

app = typer.Typer(
    name="centops-agent",
    help="Pull signed CentOps updates from the manifest repository and install "
    "them in order.\n\n" + EXIT_TABLE,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("centops.agent")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"Agent configuration (default: ${CONFIG_ENV}, else "
        "/etc/centops/agent.yaml).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"centops-agent {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show version."
        ),
    ] = False,
    log_format: Annotated[
        str, typer.Option(help="plain, or json (one object per line, for journald).")
    ] = "plain",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    _setup_logging(log_format, logging.DEBUG if verbose else logging.INFO)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def _setup_logging(fmt: str, level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    package = logging.getLogger("centops")
    package.handlers[:] = [handler]
    package.setLevel(level)
    package.propagate = False


def _config(path: Path | None) -> AgentConfig:
    """The configuration; schema-checked unless these exact bytes already were.

    A sync records the digest of the configuration it ran with, and only a
    configuration that passed the schema ever runs, so equal bytes need no
    second check (it costs about 0.1 s, mostly importing jsonschema).
    """
    target = config_path(path)
    try:
        quick = load_config(target, validate=False)
    except (CentOpsError, LookupError, TypeError, ValueError):
        return load_config(target)  # reports what is wrong, with positions
    if StateDir(quick.state_dir).config_digest() == quick.sha256:
        return quick
    return load_config(target)


def _exit_for(exc: CentOpsError) -> int:
    if isinstance(exc, StateLocked):
        return EXIT_LOCKED
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, TransportError):
        return EXIT_UNREACHABLE
    if isinstance(exc, RemoteContentError):
        return EXIT_REFUSED
    return EXIT_FAILED


def _fail(exc: CentOpsError, as_json: bool = False) -> typer.Exit:
    if as_json:
        typer.echo(json.dumps({"error": exc.reason, "message": exc.message}))
    typer.echo(f"centops-agent: {exc.describe()}", err=True)
    return typer.Exit(_exit_for(exc))


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the configuration.")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented configuration to edit.

    Example: centops-agent init /etc/centops/agent.yaml
    """
    from importlib import resources

    from .fsutil import atomic_write
    from .templates import config_template

    if path.exists() and not force:
        typer.echo(f"{path} exists; use --force to overwrite", err=True)
        raise typer.Exit(EXIT_CONFIG)
    root = resources.files("centops.agent") / "trustroots/public-good.trusted_root.json"
    text = config_template(trusted_root=str(root))
    atomic_write(path, text.encode(), mode=0o600)
    typer.echo(f"wrote {path}; edit it, then run: centops-agent check -c {path}")


@app.command()
def check(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Say whether an update is waiting, without installing anything.

    Exit 0: up to date; 10: an update is waiting.

    Example: centops-agent check --json
    """
    from .controller import check as do_check

    try:
        result = do_check(_config(config))
    except CentOpsError as exc:
        raise _fail(exc, as_json) from exc
    if as_json:
        typer.echo(json.dumps(asdict(result)))
    else:
        state = "update waiting" if result.update_waiting else "up to date"
        typer.echo(f"{state}: branch at {result.tip[:12]} ({result.reason})")
    raise typer.Exit(EXIT_UPDATE_WAITING if result.update_waiting else EXIT_OK)


@app.command()
def sync(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Run one full cycle: poll, verify, install in order, report.

    Example: centops-agent sync -c /etc/centops/agent.yaml
    """
    code = _sync_once(_config_or_exit(config, as_json), as_json)
    raise typer.Exit(code)


def _config_or_exit(path: Path | None, as_json: bool) -> AgentConfig:
    try:
        return _config(path)
    except CentOpsError as exc:
        raise _fail(exc, as_json) from exc


def _sync_once(
    cfg: AgentConfig, as_json: bool, stop: threading.Event | None = None
) -> int:
    from .controller import Controller, SyncOptions
    from .progress import progress_sink

    with progress_sink(enabled=not as_json) as progress:
        options = SyncOptions(
            progress=progress,
            should_stop=(stop.is_set if stop is not None else lambda: False),
        )
        try:
            result = Controller(cfg, options=options).sync()
        except CentOpsError as exc:
            raise _fail(exc, as_json) from exc
    if as_json:
        body: dict[str, Any] = asdict(result)
        typer.echo(json.dumps(body))
    else:
        typer.echo(_describe(result))
    if result.unreachable:
        return EXIT_UNREACHABLE
    return OUTCOME_EXIT.get(result.outcome, EXIT_FAILED)


def _describe(result: Any) -> str:
    head = {
        "up-to-date": "up to date",
        "succeeded": "installed",
        "failed": "FAILED",
        "rolled-back": "ROLLED BACK",
        "refused": "REFUSED",
        "stale": "REFUSED (stale)",
    }.get(result.outcome, result.outcome)
    where = f" serial {result.serial}" if result.serial is not None else ""
    commit = f" at {result.commit[:12]}" if result.commit else ""
    lines = [
        f"{head}{where}{commit}" + (f": {result.message}" if result.reason else "")
    ]
    for item in result.components:
        extra = f" ({item.reason}: {item.message})" if item.reason else ""
        lines.append(f"  {item.outcome:<11} {item.component} {item.version}{extra}")
    return "\n".join(lines)


@app.command()
def run(
    config: ConfigOpt = None,
    once_then_exit: Annotated[
        bool, typer.Option(hidden=True, help="Testing: one cycle.")
    ] = False,
) -> None:
    """Sync on a timer: every poll.frequency_seconds plus random jitter, backing
    off exponentially after failures; SIGTERM ends it after the current step.

    Example: centops-agent run -c /etc/centops/agent.yaml
    """
    cfg = _config_or_exit(config, False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    failures = 0
    while not stop.is_set():
        try:
            code = _sync_once(cfg, as_json=False, stop=stop)
        except typer.Exit as exc:
            code = exc.exit_code
        except Exception:  # keep the timer alive; the sync recorded what failed
            log.exception("sync failed unexpectedly")
            code = EXIT_FAILED
        if code == EXIT_CONFIG or once_then_exit:
            raise typer.Exit(code)  # a person must act first
        # A locked state directory (someone ran `sync` by hand) is retried.
        retry = (EXIT_FAILED, EXIT_UNREACHABLE, EXIT_LOCKED)
        failures = failures + 1 if code in retry else 0
        delay = next_delay(cfg, failures)
        log.info("next sync in %.0f s", delay)
        stop.wait(delay)
    log.info("stopping on signal")


def next_delay(
    cfg: AgentConfig, failures: int, rng: random.Random | None = None
) -> float:
    """Seconds to the next sync: base interval (or backoff) plus jitter."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not security
    poll = cfg.poll
    base = float(poll.frequency_seconds)
    if failures:  # retry soon, then less and less often, up to the cap
        base = min(float(poll.max_backoff_seconds), 30.0 * 2 ** min(failures - 1, 20))
    return base + rng.uniform(0, float(poll.jitter_seconds))


@app.command()
def status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show the channel, serial and commit applied, each component, and the
    last result.

    Example: centops-agent status --json
    """
    from .status import collect_status, render_status

    try:
        report = collect_status(_config(config))
    except CentOpsError as exc:
        raise _fail(exc, as_json) from exc
    typer.echo(json.dumps(report, indent=2) if as_json else render_status(report))


def main() -> None:
    app()
