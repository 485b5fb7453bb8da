"""`centops sign`, `verify` and `validate --require-signatures` end to end.

Signing goes through sigstore's own client to the loopback Fulcio and Rekor of
a local Sigstore; the identity token comes from the environment, as in CI.
Verification pins the local trusted root and the signing workflow.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from manifests_factory import design_note_manifest
from typer.testing import CliRunner, Result

from centops.agent.manifest import BUNDLE_SUFFIX
from centops.agent.yamlstrict import MAX_DOCUMENT_BYTES
from centops.tools.cli import app
from centops.tools.localsigstore import LocalSigstore

ISSUER = "https://token.actions.githubusercontent.com"
SAN = "https://github.com/centops/fleet/.github/workflows/sign.yml@refs/heads/main"
FORK_SAN = "https://github.com/evil/fleet/.github/workflows/sign.yml@refs/heads/main"
TOKEN_ENV = "SIGSTORE_IDENTITY_TOKEN"

runner = CliRunner()


@pytest.fixture(scope="session")
def sigstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSigstore]:
    """One local Sigstore with its loopback services, for the whole session."""
    with pytest.MonkeyPatch.context() as env:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.delenv(name, raising=False)
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        with LocalSigstore.create(tmp_path_factory.mktemp("sigstore")) as running:
            yield running


@pytest.fixture(autouse=True)
def no_pinned_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options come from the command line only, never from the environment."""
    for name in (
        "CENTOPS_TRUSTED_ROOT",
        "CENTOPS_IDENTITY",
        "CENTOPS_ISSUER",
        TOKEN_ENV,
    ):
        monkeypatch.delenv(name, raising=False)


def write_manifest(root: Path, channel: str = "stable", *, serial: int = 1) -> Path:
    path = root / "manifests" / channel / "manifest.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(design_note_manifest(serial=serial, channel=channel))
    return path


def bundle_of(manifest: Path) -> Path:
    return manifest.with_name(manifest.name + BUNDLE_SUFFIX)


def sign(
    sigstore: LocalSigstore,
    *manifests: Path,
    san: str = SAN,
    token: str | None = None,
    trust_config: Path | None = None,
) -> Result:
    token = token or sigstore.identity_token(san=san, issuer=ISSUER)
    return runner.invoke(
        app,
        [
            "sign",
            "--trust-config",
            str(trust_config or sigstore.trust_config_path),
            *map(str, manifests),
        ],
        env={TOKEN_ENV: token},
    )


def pinned(sigstore: LocalSigstore, *, san: str = SAN) -> list[str]:
    return [
        "--trusted-root",
        str(sigstore.trusted_root_path),
        "--identity",
        san,
        "--issuer",
        ISSUER,
    ]


def verify(sigstore: LocalSigstore, manifest: Path, *extra: str) -> Result:
    return runner.invoke(app, ["verify", str(manifest), *pinned(sigstore), *extra])


def validate(sigstore: LocalSigstore, *manifests: Path) -> Result:
    return runner.invoke(
        app,
        ["validate", "--require-signatures", *pinned(sigstore), *map(str, manifests)],
    )


@pytest.fixture
def signed(sigstore: LocalSigstore, tmp_path: Path) -> Path:
    """A stable manifest signed by the pinned workflow through `centops sign`."""
    manifest = write_manifest(tmp_path)
    result = sign(sigstore, manifest)
    assert result.exit_code == 0, result.output
    return manifest


# --- sign ---------------------------------------------------------------------


def test_sign_writes_bundle_beside_the_manifest(
    sigstore: LocalSigstore, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path)
    token = sigstore.identity_token(san=SAN, issuer=ISSUER)

    result = sign(sigstore, manifest, token=token)

    assert result.exit_code == 0, result.output
    assert bundle_of(manifest).is_file()
    assert json.loads(bundle_of(manifest).read_bytes())["mediaType"].startswith(
        "application/vnd.dev.sigstore.bundle"
    )
    assert f"as {SAN}" in result.output
    assert token not in result.output


def test_sign_several_manifests_in_one_run(
    sigstore: LocalSigstore, tmp_path: Path
) -> None:
    stable = write_manifest(tmp_path, "stable")
    canary = write_manifest(tmp_path, "canary")

    result = sign(sigstore, stable, canary)

    assert result.exit_code == 0, result.output
    assert verify(sigstore, stable).exit_code == 0
    assert verify(sigstore, canary).exit_code == 0


def test_signing_an_invalid_manifest_refuses_and_writes_no_bundle(
    sigstore: LocalSigstore, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path)
    manifest.write_text(manifest.read_text().replace("serial: 1", "serial: -1"))

    result = sign(sigstore, manifest)

    assert result.exit_code == 1
    assert "serial" in result.output
    assert not bundle_of(manifest).exists()


def test_one_invalid_manifest_stops_the_whole_batch(
    sigstore: LocalSigstore, tmp_path: Path
) -> None:
    good = write_manifest(tmp_path, "stable")
    bad = write_manifest(tmp_path, "canary")
    bad.write_text(bad.read_text() + "unexpected: key\n")

    result = sign(sigstore, good, bad)

    assert result.exit_code == 1
    assert not bundle_of(good).exists()
    assert not bundle_of(bad).exists()


BAD_TOKENS = [
    pytest.param("not-a-jwt", id="not-a-jwt"),
    pytest.param("a.b.c", id="three-garbage-parts"),
]


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_unusable_token_is_a_configuration_error(
    sigstore: LocalSigstore, tmp_path: Path, token: str
) -> None:
    manifest = write_manifest(tmp_path)

    result = sign(sigstore, manifest, token=token)

    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # handled, no traceback
    assert "identity token is not usable" in result.output
    assert not bundle_of(manifest).exists()


def test_signing_a_missing_manifest_is_a_usage_error(
    sigstore: LocalSigstore, tmp_path: Path
) -> None:
    result = sign(sigstore, tmp_path / "absent.yaml")

    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert "cannot read" in result.output


class _Unavailable(BaseHTTPRequestHandler):
    """A Fulcio and Rekor that answer every request with 503."""

    def do_POST(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_trust_config(sigstore: LocalSigstore, tmp_path: Path) -> Iterator[Path]:
    """The local trust config, its service URLs sent to a loopback 503 server."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        config = tmp_path / "trust_config.json"
        text = sigstore.trust_config_path.read_text()
        assert sigstore.url in text
        config.write_text(text.replace(sigstore.url, url))
        yield config
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_unavailable_signing_services_fail_without_a_bundle(
    sigstore: LocalSigstore, tmp_path: Path, unavailable_trust_config: Path
) -> None:
    manifest = write_manifest(tmp_path)

    result = sign(sigstore, manifest, trust_config=unavailable_trust_config)

    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert "signing failed" in result.output
    assert not bundle_of(manifest).exists()


# --- verify -------------------------------------------------------------------


def test_verify_prints_identity_and_log_time(
    sigstore: LocalSigstore, signed: Path
) -> None:
    entry = json.loads(bundle_of(signed).read_bytes())["verificationMaterial"][
        "tlogEntries"
    ][0]
    log_time = datetime.fromtimestamp(int(entry["integratedTime"]), UTC)

    result = verify(sigstore, signed)

    assert result.exit_code == 0, result.output
    assert f"verified {signed}" in result.stdout
    assert f"identity: {SAN}" in result.stdout
    assert f"issuer:   {ISSUER}" in result.stdout
    assert log_time.isoformat() in result.stdout


def test_verify_json_reports_what_was_established(
    sigstore: LocalSigstore, signed: Path
) -> None:
    result = verify(sigstore, signed, "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verified"] is True
    assert report["identity"] == SAN
    assert report["issuer"] == ISSUER
    assert report["sha256"] == hashlib.sha256(signed.read_bytes()).hexdigest()
    assert datetime.fromisoformat(report["log_time"]).tzinfo is not None
    assert isinstance(report["log_index"], int)


def test_verify_with_explicit_bundle_path(
    sigstore: LocalSigstore, signed: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    bundle_of(signed).rename(elsewhere)

    assert verify(sigstore, signed).exit_code == 1
    assert verify(sigstore, signed, "--bundle", str(elsewhere)).exit_code == 0


def _append_line(manifest: Path) -> None:
    manifest.write_bytes(manifest.read_bytes() + b"# reviewed\n")


def _drop_bundle(manifest: Path) -> None:
    bundle_of(manifest).unlink()


def _garble_bundle(manifest: Path) -> None:
    bundle = bundle_of(manifest)
    bundle.write_bytes(bundle.read_bytes()[:100])


REFUSALS: list[tuple[str, Callable[[Path], None], str]] = [
    ("tampered-manifest", _append_line, "signature-artifact-mismatch"),
    ("missing-bundle", _drop_bundle, "signature-missing"),
    ("truncated-bundle", _garble_bundle, "signature-bundle-malformed"),
]


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [(s, r) for _, s, r in REFUSALS],
    ids=[n for n, _, _ in REFUSALS],
)
def test_verify_refuses_naming_the_reason(
    sigstore: LocalSigstore, signed: Path, spoil: Callable[[Path], None], reason: str
) -> None:
    spoil(signed)

    result = verify(sigstore, signed)

    assert result.exit_code == 1
    assert f"[{reason}]" in result.stdout
    assert "error:" in result.stderr
    assert not result.stdout.startswith("verified")


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [(s, r) for _, s, r in REFUSALS],
    ids=[n for n, _, _ in REFUSALS],
)
def test_verify_json_refusal_carries_the_reason(
    sigstore: LocalSigstore, signed: Path, spoil: Callable[[Path], None], reason: str
) -> None:
    spoil(signed)

    result = verify(sigstore, signed, "--json")

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["verified"] is False
    assert report["reason"] == reason


def test_verify_refuses_a_signature_by_another_identity(
    sigstore: LocalSigstore, tmp_path: Path
) -> None:
    manifest = write_manifest(tmp_path)
    assert sign(sigstore, manifest, san=FORK_SAN).exit_code == 0

    result = verify(sigstore, manifest)

    assert result.exit_code == 1
    assert "[signature-identity-mismatch]" in result.stdout


def test_content_appended_past_the_read_cap_is_refused(
    sigstore: LocalSigstore, tmp_path: Path
) -> None:
    # Regression: verify used to read only the first MiB, so a signed first
    # MiB vouched for whatever was appended after it.
    text = design_note_manifest().encode()
    head = text + b"#" * (MAX_DOCUMENT_BYTES - len(text) - 1) + b"\n"
    assert len(head) == MAX_DOCUMENT_BYTES
    manifest = tmp_path / "manifest.yaml"
    manifest.write_bytes(head)
    bundle_of(manifest).write_text(sigstore.sign(head, san=SAN, issuer=ISSUER))
    assert verify(sigstore, manifest).exit_code == 0

    manifest.write_bytes(head + b"channel: evil\n")
    result = verify(sigstore, manifest)

    assert result.exit_code == 1
    assert "[manifest-too-large]" in result.stdout


def test_verify_with_unreadable_trust_root_is_a_usage_error(
    signed: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        [
            "verify",
            str(signed),
            "--trusted-root",
            str(tmp_path / "absent.json"),
            "--identity",
            SAN,
            "--issuer",
            ISSUER,
        ],
    )

    assert result.exit_code == 2
    assert "[trust-root-unreadable]" in result.stdout


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param(["--identity"], id="no-identity"),
        pytest.param(["--issuer"], id="no-issuer"),
        pytest.param(["--trusted-root"], id="no-trusted-root"),
    ],
)
def test_verify_without_a_pinned_policy_is_a_usage_error(
    sigstore: LocalSigstore, signed: Path, missing: list[str]
) -> None:
    args = pinned(sigstore)
    at = args.index(missing[0])
    del args[at : at + 2]

    result = runner.invoke(app, ["verify", str(signed), *args])

    assert result.exit_code == 2


# --- validate --require-signatures ---------------------------------------------


def test_validate_passes_a_signed_manifest(
    sigstore: LocalSigstore, signed: Path
) -> None:
    result = validate(sigstore, signed)

    assert result.exit_code == 0, result.output
    assert "1 manifest(s) checked, 0 invalid" in result.output


def _other_manifest(manifest: Path) -> Path:
    return manifest.parents[2] / "other" / manifest.relative_to(manifest.parents[2])


def _bundle_of_other_manifest(manifest: Path) -> None:
    other = bundle_of(_other_manifest(manifest))
    bundle_of(manifest).write_bytes(other.read_bytes())


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        *[(s, r) for _, s, r in REFUSALS],
        (_bundle_of_other_manifest, "signature-artifact-mismatch"),
    ],
    ids=[*(n for n, _, _ in REFUSALS), "bundle-of-another-manifest"],
)
def test_validate_fails_a_manifest_without_a_valid_signature(
    sigstore: LocalSigstore,
    signed: Path,
    spoil: Callable[[Path], None],
    reason: str,
) -> None:
    if spoil is _bundle_of_other_manifest:
        other = write_manifest(signed.parents[2] / "other", serial=2)
        assert other == _other_manifest(signed)
        assert sign(sigstore, other).exit_code == 0
    spoil(signed)

    result = validate(sigstore, signed)

    assert result.exit_code == 1
    assert f"[{reason}]" in result.output


def test_validate_reports_an_unreadable_bundle_instead_of_crashing(
    sigstore: LocalSigstore, signed: Path
) -> None:
    bundle = bundle_of(signed)
    bundle.unlink()
    bundle.mkdir()

    result = validate(sigstore, signed)

    assert result.exit_code == 1
    assert "[signature-bundle-unreadable]" in result.output


def test_validate_checks_every_manifest(
    sigstore: LocalSigstore, tmp_path: Path
) -> None:
    stable = write_manifest(tmp_path, "stable")
    canary = write_manifest(tmp_path, "canary")
    assert sign(sigstore, stable).exit_code == 0

    result = validate(sigstore, stable, canary)

    assert result.exit_code == 1
    assert "2 manifest(s) checked, 1 invalid" in result.output
    assert "[signature-missing]" in result.output
