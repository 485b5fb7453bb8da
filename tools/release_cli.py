"""``centops release`` and ``centops release promote``: the engineer's release flow.

A thin layer over :mod:`centops.tools.release`: it parses options, calls the
library and maps errors to exit codes in one table (:func:`_exit_code`).
``release_app`` is mounted by ``centops`` with
``app.add_typer(release_app, name="release")``; its callback is the release
itself, so ``centops release --channel ...`` and ``centops release promote``
both work.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from centops.agent.errors import (
    CentOpsError,
    ConfigError,
    RemoteContentError,
)

if TYPE_CHECKING:
    from centops.tools.release import Outcome, SourceInput

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

release_app = typer.Typer(
    help="Release a component into a channel manifest, or promote between "
    "channels.\n\nExit codes: 0 done; 1 refused (the result would be invalid, a "
    "downgrade, an unknown tag, a digest mismatch); 2 usage or environment error "
    "(bad options, registry unreachable, git).",
    pretty_exceptions_enable=False,
)


def _exit_code(exc: CentOpsError) -> int:
    """The one table from errors to exit codes."""
    from centops.tools.release import ReleaseRefused

    if isinstance(exc, ReleaseRefused | RemoteContentError):
        return EXIT_REFUSED
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    return EXIT_USAGE  # transport and anything else: the environment


def _fail(exc: CentOpsError) -> typer.Exit:
    typer.echo(f"error: {exc.describe()}", err=True)
    return typer.Exit(_exit_code(exc))


ManifestsOpt = Annotated[
    Path, typer.Option("--manifests", help="Folder with one folder per channel.")
]
ExpiresOpt = Annotated[
    int,
    typer.Option(
        "--expires-in-days", min=1, max=3650, help="Days until the manifest expires."
    ),
]
DowngradeOpt = Annotated[
    bool,
    typer.Option(
        "--downgrade", help="Allow an older version; marks it `downgrade: true`."
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the diff; write nothing.")
]
BranchOpt = Annotated[
    str | None,
    typer.Option(
        "--branch", help="Create this git branch and commit the change on it."
    ),
]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure-allow-http-loopback",
        help="Allow plain http to loopback registries and URLs (tests, demos).",
    ),
]


@release_app.callback(invoke_without_command=True)
def release(
    ctx: typer.Context,
    channel: Annotated[
        str | None, typer.Option("--channel", help="Channel to release into.")
    ] = None,
    component: Annotated[
        str | None, typer.Option("--component", help="Component name.")
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="The version released.")
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image", help="repo:tag (resolved to its digest) or repo@sha256:..."
        ),
    ] = None,
    script_url: Annotated[
        str | None, typer.Option("--script-url", help="URL of a script.")
    ] = None,
    file_url: Annotated[
        str | None, typer.Option("--file-url", help="URL of a file (with --path).")
    ] = None,
    dest: Annotated[
        str | None,
        typer.Option("--path", help="Destination of a file, under the file root."),
    ] = None,
    manifests: ManifestsOpt = Path("manifests"),
    after: Annotated[
        str | None,
        typer.Option("--after", help="Place a new component after this one."),
    ] = None,
    depends_on: Annotated[
        list[str] | None,
        typer.Option(
            "--depends-on", help="A dependency (repeatable); replaces the list."
        ),
    ] = None,
    expires_in_days: ExpiresOpt = 30,
    downgrade: DowngradeOpt = False,
    dry_run: DryRunOpt = False,
    branch: BranchOpt = None,
    registry_credentials: Annotated[
        Path | None,
        typer.Option(
            "--registry-credentials",
            envvar="CENTOPS_REGISTRY_CREDENTIALS",
            help="Docker config.json with registry logins.",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, max=600, help="Network timeout, s.")
    ] = 30.0,
    max_download_bytes: Annotated[
        int,
        typer.Option(min=1, max=268435456, help="Largest script or file accepted."),
    ] = 268435456,
    insecure_allow_http_loopback: InsecureOpt = False,
) -> None:
    """Pin a component's new version and write it into a channel manifest.

    Examples:

      centops release --channel stable --component telemetry-agent \\
          --version v2.3.1 --image ghcr.io/org/centops-telemetry:v2.3.1

      centops release --channel stable --component bootstrap --version "1.11" \\
          --script-url https://cdn.example/bootstrap.sh --branch release/bootstrap

      centops release promote --from canary --to stable
    """
    if ctx.invoked_subcommand is not None:
        return
    from centops.tools import release as r

    try:
        if channel is None or component is None or version is None:
            raise ConfigError(
                "--channel, --component and --version are required",
                reason="usage",
                hint="see centops release --help",
            )
        given = _source_input(image, script_url, file_url, dest)
        path = r.manifest_path(manifests, channel)
        if insecure_allow_http_loopback:
            log.warning("insecure: plain http allowed to loopback hosts")
        fetch = r.FetchOptions(
            registry=r.RegistryOptions(
                timeout_s=timeout,
                credentials_file=registry_credentials,
                allow_insecure_http_loopback=insecure_allow_http_loopback,
            ),
            download_timeout_s=timeout,
            max_download_bytes=max_download_bytes,
            allow_insecure_http_loopback=insecure_allow_http_loopback,
        )
        current = r.read_manifest(path)
        source = r.pin_source(given, options=fetch)
        plan = r.plan_release(
            current,
            source=str(path),
            channel=channel,
            item=r.ReleaseItem(
                component,
                version,
                source,
                tuple(depends_on) if depends_on else None,
            ),
            now=datetime.now(UTC),
            after=after,
            expires_in=timedelta(days=expires_in_days),
            allow_downgrade=downgrade,
            allow_insecure_http=insecure_allow_http_loopback,
        )
        outcome = r.persist(plan, path, dry_run=dry_run, branch=branch)
    except CentOpsError as exc:
        raise _fail(exc) from exc
    _report(outcome, dry_run=dry_run)


def _source_input(
    image: str | None, script_url: str | None, file_url: str | None, dest: str | None
) -> SourceInput:
    from centops.tools import release as r

    given = [x for x in (image, script_url, file_url) if x is not None]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of --image, --script-url and --file-url",
            reason="usage",
        )
    if (file_url is None) != (dest is None):
        raise ConfigError(
            "--path goes with --file-url, and only with it", reason="usage"
        )
    if image is not None:
        return r.ImageInput(image)
    if file_url is not None and dest is not None:
        return r.FileInput(file_url, dest)
    assert script_url is not None  # noqa: S101 - one of the three is set
    return r.ScriptInput(script_url)


def _report(outcome: Outcome, *, dry_run: bool) -> None:
    plan = outcome.plan
    if dry_run:
        typer.echo(plan.diff(), nl=False)
        typer.echo(plan.summary())
        typer.echo("dry run: nothing written")
        return
    typer.echo(plan.summary())
    if outcome.commit is not None:
        typer.echo(
            f"committed {outcome.commit.sha[:12]} on branch {outcome.commit.branch}; "
            f"push it and open a pull request: git push -u origin "
            f"{outcome.commit.branch}"
        )
    else:
        typer.echo(f"wrote {outcome.path}")


@release_app.command("promote")
def promote(
    source_channel: Annotated[
        str, typer.Option("--from", help="The tested channel to copy from.")
    ],
    target_channel: Annotated[
        str, typer.Option("--to", help="The channel to copy into.")
    ],
    components: Annotated[
        list[str] | None,
        typer.Option("--component", help="Only this component (repeatable)."),
    ] = None,
    manifests: ManifestsOpt = Path("manifests"),
    expires_in_days: ExpiresOpt = 30,
    downgrade: DowngradeOpt = False,
    dry_run: DryRunOpt = False,
    branch: BranchOpt = None,
    insecure_allow_http_loopback: InsecureOpt = False,
) -> None:
    """Copy tested components (same digests) from one channel to another.

    Example:

      centops release promote --from canary --to stable --component telemetry-agent
    """
    from centops.tools import release as r

    try:
        source_path = r.manifest_path(manifests, source_channel)
        target_path = r.manifest_path(manifests, target_channel)
        source_text = r.read_manifest(source_path)
        if source_text is None:
            raise ConfigError(f"{source_path} does not exist", reason="usage")
        plan = r.plan_promotion(
            source_text,
            r.read_manifest(target_path),
            source=str(source_path),
            target=str(target_path),
            source_channel=source_channel,
            target_channel=target_channel,
            names=tuple(components or ()),
            now=datetime.now(UTC),
            expires_in=timedelta(days=expires_in_days),
            allow_downgrade=downgrade,
            allow_insecure_http=insecure_allow_http_loopback,
        )
        outcome = r.persist(plan, target_path, dry_run=dry_run, branch=branch)
    except CentOpsError as exc:
        raise _fail(exc) from exc
    _report(outcome, dry_run=dry_run)
