"""The one verification core, against a local Sigstore and hostile bundles.

Every scenario goes through :func:`verify_manifest_signature`, the only path
the agent, ``centops verify`` and ``centops validate`` use. Good bundles are
made by sigstore's own signing client over the loopback Fulcio and Rekor;
broken ones are forged by ``centops.tools.localsigstore`` (each variant breaks
exactly one thing) or edited here from a good one. Each refusal asserts its
stable reason code, not only that something failed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests_factory import design_note_manifest

from centops.agent.errors import ConfigError
from centops.agent.signing import (
    MAX_BUNDLE_BYTES,
    IdentityPolicy,
    SignatureError,
    VerifiedSignature,
    verify_manifest_signature,
)
from centops.tools.localsigstore import VARIANTS, LocalSigstore

ISSUER = "https://token.actions.githubusercontent.com"
REPOSITORY = "https://github.com/centops/fleet"
SAN = f"{REPOSITORY}/.github/workflows/sign.yml@refs/heads/main"
POLICY = IdentityPolicy(issuer=ISSUER, identities=(SAN,))

# The log time comes from the loopback Rekor's clock in whole seconds.
LOG_TIME_SLACK = timedelta(seconds=2)


@dataclass(frozen=True)
class Signed:
    """A manifest and the bundle sigstore's client made for it."""

    manifest: bytes
    bundle: bytes
    signed_after: datetime
    signed_before: datetime


@pytest.fixture(scope="session")
def sigstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSigstore]:
    """One local Sigstore with its loopback services, for the whole session."""
    with pytest.MonkeyPatch.context() as env:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.delenv(name, raising=False)
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        with LocalSigstore.create(tmp_path_factory.mktemp("sigstore")) as running:
            yield running


def sign(
    sigstore: LocalSigstore, manifest: bytes, *, san: str = SAN, issuer: str = ISSUER
) -> Signed:
    after = datetime.now(UTC)
    bundle = sigstore.sign(manifest, san=san, issuer=issuer).encode()
    return Signed(manifest, bundle, after, datetime.now(UTC))


@pytest.fixture(scope="session")
def signed(sigstore: LocalSigstore) -> Signed:
    """The stable channel's manifest, serial 7, signed by the pinned workflow."""
    return sign(sigstore, design_note_manifest(serial=7).encode())


def verify(
    sigstore: LocalSigstore,
    manifest: bytes,
    bundle: bytes | None,
    *,
    policy: IdentityPolicy = POLICY,
) -> VerifiedSignature:
    return verify_manifest_signature(
        trusted_root=sigstore.trusted_root_path,
        policy=policy,
        manifest=manifest,
        bundle=bundle,
    )


def refusal(
    sigstore: LocalSigstore,
    manifest: bytes,
    bundle: bytes | None,
    *,
    policy: IdentityPolicy = POLICY,
) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        verify(sigstore, manifest, bundle, policy=policy)
    return caught.value


def edited(bundle: bytes, change: Callable[[dict[str, Any]], object]) -> bytes:
    """``bundle`` re-serialised after ``change`` edited its JSON document."""
    document = json.loads(bundle)
    change(document)
    return json.dumps(document).encode()


def tlog_entry(document: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = document["verificationMaterial"]["tlogEntries"][0]
    return entry


# --- accepted ----------------------------------------------------------------


def test_bundle_from_pinned_workflow_is_accepted(
    sigstore: LocalSigstore, signed: Signed
) -> None:
    result = verify(sigstore, signed.manifest, signed.bundle)

    assert result.identity == SAN
    assert result.issuer == ISSUER
    assert result.artifact_sha256 == hashlib.sha256(signed.manifest).hexdigest()
    assert result.log_index >= 0
    assert result.log_time.tzinfo is not None
    assert (
        signed.signed_after - LOG_TIME_SLACK
        <= result.log_time
        <= signed.signed_before + LOG_TIME_SLACK
    )


def test_log_time_is_the_integrated_time_of_the_entry(
    sigstore: LocalSigstore, signed: Signed
) -> None:
    integrated = int(tlog_entry(json.loads(signed.bundle))["integratedTime"])

    result = verify(sigstore, signed.manifest, signed.bundle)

    assert result.log_time == datetime.fromtimestamp(integrated, UTC)


def test_one_of_several_pinned_identities_is_enough(
    sigstore: LocalSigstore, signed: Signed
) -> None:
    other = f"{REPOSITORY}/.github/workflows/release.yml@refs/heads/main"
    policy = IdentityPolicy(issuer=ISSUER, identities=(other, SAN))

    assert verify(sigstore, signed.manifest, signed.bundle, policy=policy).identity == (
        SAN
    )


def test_forger_control_bundle_is_accepted(
    sigstore: LocalSigstore, signed: Signed
) -> None:
    # The refusals of forged variants below mean something only if the
    # forger's unbroken bundle passes the same check.
    bundle = sigstore.forge_bundle(
        signed.manifest, san=SAN, issuer=ISSUER, variant="good"
    )

    assert verify(sigstore, signed.manifest, bundle.encode()).identity == SAN


def test_bundle_padded_to_exactly_the_size_cap_is_accepted(
    sigstore: LocalSigstore, signed: Signed
) -> None:
    padded = signed.bundle + b" " * (MAX_BUNDLE_BYTES - len(signed.bundle))

    assert len(padded) == MAX_BUNDLE_BYTES
    assert verify(sigstore, signed.manifest, padded).identity == SAN


# --- the manifest is not the signed one --------------------------------------


def _flip_one_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def _reserialised(data: bytes) -> bytes:
    return yaml.safe_dump(yaml.safe_load(data), sort_keys=False).encode()


CHANGED_MANIFESTS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("one-byte-flipped", _flip_one_byte),
    ("trailing-space", lambda data: data + b" "),
    ("trailing-newline", lambda data: data + b"\n"),
    ("crlf-line-endings", lambda data: data.replace(b"\n", b"\r\n")),
    ("equivalent-yaml-reserialised", _reserialised),
    ("truncated", lambda data: data[:-1]),
    ("empty", lambda data: b""),
]


@pytest.mark.parametrize(
    "change", [c for _, c in CHANGED_MANIFESTS], ids=[n for n, _ in CHANGED_MANIFESTS]
)
def test_changed_manifest_bytes_are_refused(
    sigstore: LocalSigstore, signed: Signed, change: Callable[[bytes], bytes]
) -> None:
    changed = change(signed.manifest)
    assert changed != signed.manifest

    error = refusal(sigstore, changed, signed.bundle)

    assert error.reason == "signature-artifact-mismatch"
    assert error.__cause__ is not None


def test_reserialised_yaml_is_equivalent_yet_refused(
    sigstore: LocalSigstore, signed: Signed
) -> None:
    # The signature covers bytes, not meaning: the same document written
    # differently is a different manifest.
    changed = _reserialised(signed.manifest)
    assert yaml.safe_load(changed) == yaml.safe_load(signed.manifest)

    assert refusal(sigstore, changed, signed.bundle).reason == (
        "signature-artifact-mismatch"
    )


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"channel": "canary", "serial": 7}, id="other-channel"),
        pytest.param({"channel": "stable", "serial": 6}, id="older-serial"),
    ],
)
def test_valid_bundle_of_another_manifest_is_refused(
    sigstore: LocalSigstore, signed: Signed, other: dict[str, Any]
) -> None:
    older = sign(sigstore, design_note_manifest(**other).encode())
    assert verify(sigstore, older.manifest, older.bundle).identity == SAN

    error = refusal(sigstore, signed.manifest, older.bundle)

    assert error.reason == "signature-artifact-mismatch"


def test_signature_of_another_manifest_spliced_in_is_refused(
    sigstore: LocalSigstore, signed: Signed
) -> None:
    other = sign(sigstore, design_note_manifest(serial=8).encode())
    spliced = edited(
        signed.bundle,
        lambda d: d.update(
            messageSignature=json.loads(other.bundle)["messageSignature"]
        ),
    )

    assert refusal(sigstore, signed.manifest, spliced).reason == (
        "signature-artifact-mismatch"
    )


# --- signed by someone else --------------------------------------------------


FOREIGN_SIGNERS = [
    pytest.param(
        f"{REPOSITORY}/.github/workflows/sign.yml@refs/pull/1/merge",
        ISSUER,
        id="pull-request-ref",
    ),
    pytest.param(
        "https://github.com/evil/fleet/.github/workflows/sign.yml@refs/heads/main",
        ISSUER,
        id="same-workflow-in-a-fork",
    ),
    pytest.param(
        f"{REPOSITORY}/.github/workflows/other.yml@refs/heads/main",
        ISSUER,
        id="other-workflow-same-repository",
    ),
    pytest.param(
        f"{REPOSITORY}/.github/workflows/sign.yml@refs/tags/v1",
        ISSUER,
        id="tag-ref",
    ),
    pytest.param(SAN, "https://gitlab.com", id="other-issuer"),
    pytest.param(SAN, f"{ISSUER}.evil.example", id="lookalike-issuer"),
    pytest.param("releaser@example.org", ISSUER, id="email-identity"),
]


@pytest.mark.parametrize(("san", "issuer"), FOREIGN_SIGNERS)
def test_bundle_from_unpinned_identity_is_refused(
    sigstore: LocalSigstore, signed: Signed, san: str, issuer: str
) -> None:
    other = sign(sigstore, signed.manifest, san=san, issuer=issuer)

    error = refusal(sigstore, other.manifest, other.bundle)

    assert error.reason == "signature-identity-mismatch"
    assert SAN in error.message


# --- forged bundles: one broken part each ------------------------------------


FORGED_VARIANT_CODES = {
    "foreign-ca": "signature-untrusted-certificate",
    "no-sct": "signature-sct-invalid",
    "foreign-ct-key": "signature-sct-invalid",
    "bad-checkpoint": "signature-tlog-invalid",
    "swapped-body": "signature-tlog-mismatch",
    "edited-body": "signature-tlog-invalid",
    "no-trusted-time": "signature-no-trusted-time",
    "edited-time": "signature-tlog-invalid",
    "foreign-log-key": "signature-tlog-invalid",
    "time-outside-validity": "signature-certificate-expired",
    "no-checkpoint": "signature-tlog-invalid",
}


def test_every_forged_variant_has_an_expected_reason() -> None:
    assert set(FORGED_VARIANT_CODES) == set(VARIANTS) - {"good"}


@pytest.mark.parametrize(
    ("variant", "reason"), sorted(FORGED_VARIANT_CODES.items()), ids=str
)
def test_forged_bundle_is_refused_with_specific_reason(
    sigstore: LocalSigstore, signed: Signed, variant: str, reason: str
) -> None:
    bundle = sigstore.forge_bundle(
        signed.manifest, san=SAN, issuer=ISSUER, variant=variant
    )

    error = refusal(sigstore, signed.manifest, bundle.encode())

    assert error.reason == reason
    assert error.__cause__ is not None


# --- a real bundle edited after signing --------------------------------------


def _shift_integrated_time(document: dict[str, Any]) -> None:
    entry = tlog_entry(document)
    entry["integratedTime"] = str(int(entry["integratedTime"]) + 60)


def _zero_root_hash(document: dict[str, Any]) -> None:
    tlog_entry(document)["inclusionProof"]["rootHash"] = base64.b64encode(
        bytes(32)
    ).decode()


def _edit_checkpoint(document: dict[str, Any]) -> None:
    proof = tlog_entry(document)["inclusionProof"]
    proof["checkpoint"]["envelope"] = proof["checkpoint"]["envelope"].replace(
        "\n1\n", "\n2\n", 1
    )


EDITED_BUNDLES: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    ("integrated-time-edited", _shift_integrated_time, "signature-tlog-invalid"),
    (
        "log-index-edited",
        lambda d: tlog_entry(d).update(logIndex="3"),
        "signature-tlog-invalid",
    ),
    ("root-hash-zeroed", _zero_root_hash, "signature-tlog-invalid"),
    ("checkpoint-edited", _edit_checkpoint, "signature-tlog-invalid"),
    (
        "inclusion-promise-removed",
        lambda d: tlog_entry(d).pop("inclusionPromise"),
        "signature-no-trusted-time",
    ),
    (
        "checkpoint-removed",
        lambda d: tlog_entry(d)["inclusionProof"].pop("checkpoint"),
        "signature-tlog-invalid",
    ),
    (
        "log-entries-removed",
        lambda d: d["verificationMaterial"].update(tlogEntries=[]),
        "signature-tlog-invalid",
    ),
    (
        "log-entry-duplicated",
        lambda d: d["verificationMaterial"].update(
            tlogEntries=[tlog_entry(d), tlog_entry(d)]
        ),
        "signature-tlog-invalid",
    ),
    (
        "certificate-garbage",
        lambda d: d["verificationMaterial"]["certificate"].update(
            rawBytes=base64.b64encode(b"not a certificate").decode()
        ),
        "signature-bundle-malformed",
    ),
    (
        "unknown-media-type",
        lambda d: d.update(mediaType="application/vnd.dev.sigstore.bundle.v9+json"),
        "signature-bundle-malformed",
    ),
]


@pytest.mark.parametrize(
    ("change", "reason"),
    [(c, r) for _, c, r in EDITED_BUNDLES],
    ids=[n for n, _, _ in EDITED_BUNDLES],
)
def test_edited_bundle_is_refused(
    sigstore: LocalSigstore,
    signed: Signed,
    change: Callable[[dict[str, Any]], object],
    reason: str,
) -> None:
    bundle = edited(signed.bundle, change)
    assert bundle != edited(signed.bundle, lambda d: None)

    assert refusal(sigstore, signed.manifest, bundle).reason == reason


def test_log_entry_of_another_signing_is_refused(
    sigstore: LocalSigstore, signed: Signed
) -> None:
    # A valid entry from the same log and signer, for another manifest.
    other = sign(sigstore, design_note_manifest(serial=9).encode())
    entries = json.loads(other.bundle)["verificationMaterial"]["tlogEntries"]
    swapped = edited(
        signed.bundle, lambda d: d["verificationMaterial"].update(tlogEntries=entries)
    )

    assert refusal(sigstore, signed.manifest, swapped).reason == (
        "signature-tlog-mismatch"
    )


# --- bundle bytes that are not a bundle --------------------------------------


HOSTILE_BUNDLE_BYTES: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("truncated-json", lambda b: b[: len(b) // 2], "signature-bundle-malformed"),
    ("last-brace-missing", lambda b: b.rstrip()[:-1], "signature-bundle-malformed"),
    (
        "garbled-json",
        lambda b: b.replace(b'"', b"'", 3),
        "signature-bundle-malformed",
    ),
    ("not-json", lambda b: b"\x00\xff\xfe binary \x80", "signature-bundle-malformed"),
    ("empty", lambda b: b"", "signature-bundle-malformed"),
    ("whitespace", lambda b: b" \n\t", "signature-bundle-malformed"),
    ("json-null", lambda b: b"null", "signature-bundle-malformed"),
    ("json-array", lambda b: b"[]", "signature-bundle-malformed"),
    ("empty-object", lambda b: b"{}", "signature-bundle-malformed"),
    ("utf-16", lambda b: b.decode().encode("utf-16"), "signature-bundle-malformed"),
    (
        "one-byte-over-cap",
        lambda b: b + b" " * (MAX_BUNDLE_BYTES + 1 - len(b)),
        "signature-bundle-too-large",
    ),
    (
        "huge",
        lambda b: b"[" * (16 * MAX_BUNDLE_BYTES),
        "signature-bundle-too-large",
    ),
]


@pytest.mark.parametrize(
    ("change", "reason"),
    [(c, r) for _, c, r in HOSTILE_BUNDLE_BYTES],
    ids=[n for n, _, _ in HOSTILE_BUNDLE_BYTES],
)
def test_hostile_bundle_bytes_are_refused(
    sigstore: LocalSigstore,
    signed: Signed,
    change: Callable[[bytes], bytes],
    reason: str,
) -> None:
    assert refusal(sigstore, signed.manifest, change(signed.bundle)).reason == reason


def test_missing_bundle_is_refused(sigstore: LocalSigstore, signed: Signed) -> None:
    error = refusal(sigstore, signed.manifest, None)

    assert error.reason == "signature-missing"
    assert error.hint


# --- the pinned trust inputs are unusable ------------------------------------


EMPTY_POLICIES = [
    pytest.param(IdentityPolicy(issuer=ISSUER, identities=()), id="no-identity"),
    pytest.param(IdentityPolicy(issuer=ISSUER, identities=("",)), id="empty-identity"),
    pytest.param(
        IdentityPolicy(issuer=ISSUER, identities=(SAN, "")), id="one-empty-identity"
    ),
    pytest.param(IdentityPolicy(issuer="", identities=(SAN,)), id="empty-issuer"),
]


@pytest.mark.parametrize("policy", EMPTY_POLICIES)
def test_empty_identity_policy_is_a_configuration_error(
    sigstore: LocalSigstore, signed: Signed, policy: IdentityPolicy
) -> None:
    with pytest.raises(ConfigError) as caught:
        verify(sigstore, signed.manifest, signed.bundle, policy=policy)

    assert caught.value.reason == "policy-empty"


def _write(content: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "trusted_root.json"
        path.write_bytes(content)
        return path

    return make


def _folder(folder: Path) -> Path:
    path = folder / "trusted_root.json"
    path.mkdir()
    return path


UNUSABLE_TRUST_ROOTS: list[tuple[str, Callable[[Path], Path]]] = [
    ("missing", lambda folder: folder / "absent.json"),
    ("a-folder", _folder),
    ("empty", _write(b"")),
    ("garbage", _write(b"\x00\x01 not json")),
    ("json-but-not-a-root", _write(b'{"hello": "world"}')),
    ("json-array", _write(b"[]")),
    ("too-large", _write(b" " * (2 * 1024 * 1024))),
]


@pytest.mark.parametrize(
    "make",
    [m for _, m in UNUSABLE_TRUST_ROOTS],
    ids=[n for n, _ in UNUSABLE_TRUST_ROOTS],
)
@pytest.mark.parametrize("with_bundle", [True, False], ids=["bundle", "no-bundle"])
def test_unusable_trust_root_is_a_configuration_error(
    signed: Signed,
    tmp_path: Path,
    make: Callable[[Path], Path],
    with_bundle: bool,
) -> None:
    # A broken local setup is reported as such, before any bundle is judged.
    with pytest.raises(ConfigError) as caught:
        verify_manifest_signature(
            trusted_root=make(tmp_path),
            policy=POLICY,
            manifest=signed.manifest,
            bundle=signed.bundle if with_bundle else None,
        )

    assert caught.value.reason == "trust-root-unreadable"


def test_trust_root_of_another_sigstore_refuses_the_bundle(
    signed: Signed, tmp_path: Path
) -> None:
    other = LocalSigstore.create(tmp_path / "other")

    with pytest.raises(SignatureError) as caught:
        verify_manifest_signature(
            trusted_root=other.trusted_root_path,
            policy=POLICY,
            manifest=signed.manifest,
            bundle=signed.bundle,
        )

    assert caught.value.reason == "signature-untrusted-certificate"


def test_replaced_trust_root_file_is_reread_not_served_from_cache(
    sigstore: LocalSigstore, signed: Signed, tmp_path: Path
) -> None:
    pinned = tmp_path / "trusted_root.json"
    pinned.write_bytes(sigstore.trusted_root_path.read_bytes())
    assert verify_manifest_signature(
        trusted_root=pinned,
        policy=POLICY,
        manifest=signed.manifest,
        bundle=signed.bundle,
    )

    other = LocalSigstore.create(tmp_path / "other")
    pinned.write_bytes(other.trusted_root_path.read_bytes())

    with pytest.raises(SignatureError) as caught:
        verify_manifest_signature(
            trusted_root=pinned,
            policy=POLICY,
            manifest=signed.manifest,
            bundle=signed.bundle,
        )
    assert caught.value.reason == "signature-untrusted-certificate"


# --- source repository and ref claims ----------------------------------------


def test_matching_repository_and_ref_claims_are_accepted(
    sigstore: LocalSigstore, signed: Signed
) -> None:
    policy = IdentityPolicy(
        issuer=ISSUER, identities=(SAN,), repository=REPOSITORY, ref="refs/heads/main"
    )

    assert verify(sigstore, signed.manifest, signed.bundle, policy=policy).identity == (
        SAN
    )


@pytest.mark.parametrize(
    ("repository", "ref"),
    [
        pytest.param(REPOSITORY, "refs/heads/release", id="wrong-ref"),
        pytest.param(REPOSITORY, "refs/pull/1/merge", id="pull-request-ref"),
        pytest.param("https://github.com/evil/fleet", None, id="wrong-repository"),
        pytest.param(
            "https://github.com/evil/fleet", "refs/heads/main", id="fork-with-ref"
        ),
    ],
)
def test_mismatched_repository_or_ref_claim_is_refused(
    sigstore: LocalSigstore, signed: Signed, repository: str, ref: str | None
) -> None:
    policy = IdentityPolicy(
        issuer=ISSUER, identities=(SAN,), repository=repository, ref=ref
    )

    error = refusal(sigstore, signed.manifest, signed.bundle, policy=policy)

    assert error.reason == "signature-identity-mismatch"


# --- cost --------------------------------------------------------------------


def test_importing_the_core_does_not_import_sigstore() -> None:
    # sigstore costs ~0.3 s and ~55 MB at import; a no-op poll must not pay it.
    code = "import centops.agent.signing, sys; assert 'sigstore' not in sys.modules"

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
