"""``centops``: the engineers' and CI's command line.

A thin layer: it parses options, sets up logging, calls the library and maps
errors to exit codes in one table (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from centops.agent.errors import CentOpsError, ConfigError, RemoteContentError
from centops.agent.fsutil import read_regular
from centops.tools.release_cli import release_app

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_CODES_HELP = """
Exit codes: 0 valid or done; 1 invalid (a manifest or signature was refused);
2 usage or environment error (bad options, unreadable trust root, no git).
"""

app = typer.Typer(
    name="centops",
    help="Validate, sign, verify and release CentOps update manifests."
    + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _fail(exc: CentOpsError) -> typer.Exit:
    typer.echo(f"error: {exc.describe()}", err=True)
    if isinstance(exc, ConfigError):
        return typer.Exit(EXIT_USAGE)
    if isinstance(exc, RemoteContentError):
        return typer.Exit(EXIT_INVALID)
    return typer.Exit(EXIT_USAGE)


def _policy(
    identity: list[str] | None,
    issuer: str | None,
    repository: str | None,
    ref: str | None,
) -> object:
    from centops.agent.signing import IdentityPolicy

    if not identity or not issuer:
        raise ConfigError(
            "an identity (--identity, repeatable) and --issuer are required",
            reason="usage",
            hint="pin the signing workflow: see README, 'Who signs'",
        )
    return IdentityPolicy(
        issuer=issuer, identities=tuple(identity), repository=repository, ref=ref
    )


TrustedRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--trusted-root",
        envvar="CENTOPS_TRUSTED_ROOT",
        help="Pinned Sigstore trusted_root.json.",
    ),
]
IdentityOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--identity",
        envvar="CENTOPS_IDENTITY",
        help="Exact signer SAN; repeat for several.",
    ),
]
IssuerOpt = Annotated[
    str | None,
    typer.Option("--issuer", envvar="CENTOPS_ISSUER", help="OIDC issuer URL."),
]
RepositoryOpt = Annotated[
    str | None, typer.Option(help="Required source repository claim (URI).")
]
RefOpt = Annotated[str | None, typer.Option(help="Required source ref claim.")]
InsecureOpt = Annotated[
    bool,
    typer.Option(
        "--insecure-allow-http-loopback",
        help="Accept plain-http URLs on loopback (tests and demos only).",
    ),
]

app.add_typer(release_app, name="release")


@app.command()
def validate(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Manifests or folders.")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(help="Git revision to compare changed manifests with."),
    ] = None,
    output: Annotated[
        str, typer.Option("--format", help="text, github or json.")
    ] = "text",
    require_signatures: Annotated[
        bool, typer.Option(help="Fail manifests whose bundle is missing or invalid.")
    ] = False,
    trusted_root: TrustedRootOpt = None,
    identity: IdentityOpt = None,
    issuer: IssuerOpt = None,
    repository: RepositoryOpt = None,
    ref: RefOpt = None,
    max_horizon_days: Annotated[
        int, typer.Option(min=1, max=3650, help="Latest allowed expiry, in days.")
    ] = 90,
    insecure_allow_http_loopback: InsecureOpt = False,
) -> None:
    """Check manifests strictly, as every agent will.

    Examples:

      centops validate                       # everything under manifests/

      centops validate --base origin/main --format github

      centops validate --require-signatures --trusted-root root.json \\
          --identity https://github.com/ORG/REPO/.github/workflows/sign.yml@refs/heads/main \\
          --issuer https://token.actions.githubusercontent.com
    """  # noqa: E501
    from centops.tools import validate as v

    if output not in ("text", "github", "json"):
        typer.echo("error: --format must be text, github or json", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        signatures = None
        if require_signatures:
            if trusted_root is None:
                raise ConfigError(
                    "--require-signatures needs --trusted-root", reason="usage"
                )
            signatures = v.SignatureRequirement(
                trusted_root,
                _policy(identity, issuer, repository, ref),  # type: ignore[arg-type]
            )
        options = v.ValidateOptions(
            now=datetime.now(UTC),
            base=base,
            max_horizon=timedelta(days=max_horizon_days),
            allow_insecure_http=insecure_allow_http_loopback,
            signatures=signatures,
        )
        files = v.discover(paths or [Path("manifests")])
        reports = v.validate_files(files, options)
    except CentOpsError as exc:
        raise _fail(exc) from exc
    if output == "json":
        typer.echo(json.dumps(v.render_json(reports), indent=2))
    elif output == "github":
        typer.echo(v.render_github(reports))
    else:
        typer.echo(v.render_text(reports))
    if not files:
        typer.echo("error: no manifest.yaml found", err=True)
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(EXIT_OK if all(r.valid for r in reports) else EXIT_INVALID)


@app.command()
def verify(
    manifest: Annotated[Path, typer.Argument(help="The manifest file.")],
    bundle: Annotated[
        Path | None, typer.Option(help="Bundle (default: MANIFEST.sigstore.json).")
    ] = None,
    trusted_root: TrustedRootOpt = None,
    identity: IdentityOpt = None,
    issuer: IssuerOpt = None,
    repository: RepositoryOpt = None,
    ref: RefOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Verify a manifest's Sigstore bundle offline against a pinned identity.

    Example:

      centops verify manifests/stable/manifest.yaml --trusted-root root.json \\
          --identity https://github.com/ORG/REPO/.github/workflows/sign.yml@refs/heads/main \\
          --issuer https://token.actions.githubusercontent.com
    """  # noqa: E501
    from centops.agent.manifest import BUNDLE_SUFFIX
    from centops.agent.signing import MAX_BUNDLE_BYTES, verify_manifest_signature
    from centops.agent.yamlstrict import MAX_DOCUMENT_BYTES

    bundle = bundle or manifest.with_name(manifest.name + BUNDLE_SUFFIX)
    try:
        if trusted_root is None:
            raise ConfigError("--trusted-root is required", reason="usage")
        policy = _policy(identity, issuer, repository, ref)
        data = _read(manifest, MAX_DOCUMENT_BYTES + 1)
        # Verifying a prefix would vouch for bytes nobody checked.
        if len(data) > MAX_DOCUMENT_BYTES:
            raise RemoteContentError(
                f"{manifest} is larger than {MAX_DOCUMENT_BYTES} bytes",
                reason="manifest-too-large",
            )
        bundle_bytes: bytes | None = None
        if bundle.exists():  # absent: the core reports signature-missing
            bundle_bytes = _read(bundle, MAX_BUNDLE_BYTES + 1)
        result = verify_manifest_signature(
            trusted_root=trusted_root,
            policy=policy,  # type: ignore[arg-type]
            manifest=data,
            bundle=bundle_bytes,
        )
    except CentOpsError as exc:
        if as_json:
            typer.echo(
                json.dumps(
                    {"verified": False, "reason": exc.reason, "message": exc.message}
                )
            )
        else:
            typer.echo(f"not verified {manifest} [{exc.reason}]")
        raise _fail(exc) from exc
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "verified": True,
                    "identity": result.identity,
                    "issuer": result.issuer,
                    "log_index": result.log_index,
                    "log_time": result.log_time.isoformat(),
                    "sha256": result.artifact_sha256,
                }
            )
        )
    else:
        typer.echo(
            f"verified {manifest}\n  identity: {result.identity}\n"
            f"  issuer:   {result.issuer}\n"
            f"  log:      entry {result.log_index} at {result.log_time.isoformat()}\n"
            f"  sha256:   {result.artifact_sha256}"
        )


def _read(path: Path, limit: int) -> bytes:
    try:
        return read_regular(path, limit - 1, follow_symlinks=False)
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}", reason="usage"
        ) from exc


@app.command()
def sign(
    manifests: Annotated[list[Path], typer.Argument(help="Manifest files to sign.")],
    identity_token: Annotated[
        str | None,
        typer.Option(
            envvar="SIGSTORE_IDENTITY_TOKEN",
            help="OIDC token; prefer the environment variable, which stays out "
            "of process listings.",
            show_default=False,
        ),
    ] = None,
    trust_config: Annotated[
        Path | None,
        typer.Option(help="Sigstore client trust config of a private deployment."),
    ] = None,
    insecure_allow_http_loopback: InsecureOpt = False,
) -> None:
    """Sign manifests with Sigstore (keyless), writing MANIFEST.sigstore.json.

    In CI the ambient OIDC credential is used; otherwise a browser flow starts.

    Example:

      centops sign manifests/stable/manifest.yaml
    """
    from centops.tools.sign import sign_manifests

    try:
        for item in sign_manifests(
            manifests,
            trust_config=trust_config,
            identity_token=identity_token,
            allow_insecure_http=insecure_allow_http_loopback,
        ):
            typer.echo(f"signed {item.manifest} -> {item.bundle} as {item.identity}")
    except CentOpsError as exc:
        raise _fail(exc) from exc


from centops.tools.fleet_cli import fleet_app  # noqa: E402 - registered last

app.add_typer(fleet_app, name="fleet", help="The fleet view from the results branch.")


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("centops").setLevel(logging.INFO)
    app()
    sys.exit(0)
