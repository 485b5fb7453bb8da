"""``centops fleet``: what the fleet reported on the results branch.

A thin layer over :mod:`centops.tools.fleet`: it parses options, reads the
branch, folds it, renders the chosen format and maps errors to exit codes
(0 done; 1 the branch content was refused; 2 usage, configuration or
transport error).
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from centops.agent.errors import CentOpsError, RemoteContentError
from centops.agent.gitsource import Credentials
from centops.tools import fleet

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
FORMATS = ("table", "json", "html")

fleet_app = typer.Typer(
    name="fleet",
    help="The fleet's state, from the telemetry on the results branch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@fleet_app.callback()
def fleet_group() -> None:
    """The fleet's state, from the telemetry on the results branch."""


@fleet_app.command()
def status(
    repo: Annotated[
        str, typer.Option("--repo", help="Repository URL, or a local repository path.")
    ],
    branch: Annotated[
        str, typer.Option(help="The results branch.")
    ] = fleet.DEFAULT_BRANCH,
    output_format: Annotated[
        str, typer.Option("--format", help="table, json or html.")
    ] = "table",
    output: Annotated[
        Path | None, typer.Option("--output", help="Write here instead of stdout.")
    ] = None,
    stale_intervals: Annotated[
        int, typer.Option(min=1, max=1000, help="Poll intervals without news: stale.")
    ] = 3,
    interval_seconds: Annotated[
        int, typer.Option(min=1, help="The clients' poll interval.")
    ] = 3600,
    token_env: Annotated[
        str | None,
        typer.Option(help="Environment variable holding the repository token."),
    ] = None,
    timeout_seconds: Annotated[
        int, typer.Option(min=1, max=3600, help="Timeout of each git command.")
    ] = 120,
) -> None:
    """Fold every client's events into per-client and per-channel state.

    Examples:

      centops fleet status --repo https://git.example/fleet.git --token-env TOKEN

      centops fleet status --repo ./fleet.git --format html --output fleet.html
    """
    if output_format not in FORMATS:
        typer.echo("error: --format must be table, json or html", err=True)
        raise typer.Exit(EXIT_USAGE)
    credentials = None
    if token_env:
        token = os.environ.get(token_env, "")
        if not token:
            typer.echo(f"error: environment variable {token_env} is empty", err=True)
            raise typer.Exit(EXIT_USAGE)
        credentials = Credentials(token=token, scheme="bearer")
    try:
        files = fleet.read_results(
            repo, branch, credentials=credentials, timeout=float(timeout_seconds)
        )
    except CentOpsError as exc:
        typer.echo(f"error: {exc.describe()}", err=True)
        code = EXIT_INVALID if isinstance(exc, RemoteContentError) else EXIT_USAGE
        raise typer.Exit(code) from exc
    view = fleet.fold(
        files,
        now=datetime.now(UTC),
        stale_after=timedelta(seconds=stale_intervals * interval_seconds),
    )
    if output_format == "json":
        _write(fleet.render_json(view), output)
    elif output_format == "html":
        _write(fleet.render_html(view), output)
    elif output is None:
        _print_tables(view, Console())
    else:
        with output.open("w", encoding="utf-8") as handle:
            _print_tables(view, Console(file=handle, width=160, no_color=True))


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


def _print_tables(view: fleet.FleetView, console: Console) -> None:
    channels = Table(title="Channels")
    for column in ("channel", "clients", "serials (clients)", "failing", "stale"):
        channels.add_column(column)
    for ch in view.channels:
        serials = ", ".join(f"{s}: {n}" for s, n in ch.serials)
        channels.add_row(
            escape(ch.channel),
            str(ch.clients),
            escape(serials),
            str(ch.failing),
            str(ch.stale),
        )
    clients = Table(title="Clients")
    for column in (
        "client",
        "channel",
        "serial",
        "commit",
        "outcome",
        "last seen",
        "failing component",
        "reason",
    ):
        clients.add_column(column)
    for c in view.clients:
        # Everything below comes from clients: escape rich markup.
        outcome = escape(c.outcome)
        if outcome in fleet.FAILING_OUTCOMES:
            outcome = f"[red]{outcome}[/red]"
        seen = fleet.iso(c.last_seen) or ""
        if c.stale:
            seen += " [yellow](stale)[/yellow]"
        clients.add_row(
            escape(c.client_id),
            escape(c.channel),
            escape(c.serial_label),
            escape((c.commit or "")[:12]),
            outcome,
            seen,
            escape(c.failing_component or ""),
            escape(c.failing_reason or ""),
        )
    console.print(channels)
    console.print(clients)
    if view.duplicates or view.rejected:
        console.print(
            f"{view.duplicates} duplicate event(s) ignored; "
            f"{view.rejected} invalid line(s) skipped."
        )
