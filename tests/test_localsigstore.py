"""The local Sigstore against sigstore-python's real signing client and verifier.

Every scenario signs through sigstore's own ``SigningContext`` (over the
loopback Fulcio and Rekor) or forges a bundle, then asks sigstore's real
``Verifier``, pinned to the local trusted root, for a decision.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sigstore._internal.merkle import verify_merkle_inclusion
from sigstore.errors import Error as SigstoreError
from sigstore.models import Bundle, ClientTrustConfig, TransparencyLogEntry, TrustedRoot
from sigstore.oidc import IdentityToken
from sigstore.verify import Verifier
from sigstore.verify.policy import (
    AllOf,
    GitHubWorkflowRepository,
    Identity,
    OIDCIssuerV2,
    OIDCSourceRepositoryRef,
    OIDCSourceRepositoryURI,
    VerificationPolicy,
)
from sigstore_models.rekor.v1 import TransparencyLogEntry as InnerEntry

from centops.tools.localsigstore import (
    GITHUB_ISSUER,
    VARIANTS,
    LocalSigstore,
    NotRunningError,
    ServerProcess,
    mint_identity_token,
    rekor,
)
from centops.tools.localsigstore.material import PLACEHOLDER_URL, utc_now

WORKFLOW_SAN = (
    "https://github.com/acme/centops-channel/.github/workflows/release.yml"
    "@refs/heads/main"
)
EMAIL_SAN = "releaser@example.org"
EMAIL_ISSUER = "https://accounts.google.com"
ARTIFACT = b"kind: Manifest\nrevision: 7\n"
HTTP_TIMEOUT_S = 10


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep sigstore's HTTP client off any proxy from the environment."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def sigstore_dir(tmp_path: Path) -> LocalSigstore:
    """Fresh keys and trusted root; services not running."""
    return LocalSigstore.create(tmp_path / "sigstore")


@pytest.fixture
def local_sigstore(
    sigstore_dir: LocalSigstore, no_proxy: None
) -> Iterator[LocalSigstore]:
    """The local Sigstore with its services running in this process."""
    with sigstore_dir as running:
        yield running


@pytest.fixture
def verifier(sigstore_dir: LocalSigstore) -> Verifier:
    """sigstore's real verifier, trusting only the local trusted root."""
    root = TrustedRoot.from_file(str(sigstore_dir.trusted_root_path))
    return Verifier(trusted_root=root)


def _verify(
    verifier: Verifier, data: bytes, bundle_json: str, policy: VerificationPolicy
) -> None:
    verifier.verify_artifact(data, Bundle.from_json(bundle_json), policy)


# --- accepted -------------------------------------------------------------


def test_workflow_signature_made_through_sigstore_client_is_accepted(
    local_sigstore: LocalSigstore, verifier: Verifier
) -> None:
    bundle = local_sigstore.sign(ARTIFACT, san=WORKFLOW_SAN, issuer=GITHUB_ISSUER)

    _verify(
        verifier,
        ARTIFACT,
        bundle,
        Identity(identity=WORKFLOW_SAN, issuer=GITHUB_ISSUER),
    )


def test_workflow_leaf_carries_github_claims_for_v2_policies(
    local_sigstore: LocalSigstore, verifier: Verifier
) -> None:
    bundle = local_sigstore.sign(ARTIFACT, san=WORKFLOW_SAN, issuer=GITHUB_ISSUER)
    policy = AllOf(
        [
            OIDCIssuerV2(GITHUB_ISSUER),
            OIDCSourceRepositoryURI("https://github.com/acme/centops-channel"),
            OIDCSourceRepositoryRef("refs/heads/main"),
            GitHubWorkflowRepository("acme/centops-channel"),
        ]
    )

    _verify(verifier, ARTIFACT, bundle, policy)


def test_email_identity_signature_is_accepted(
    local_sigstore: LocalSigstore, verifier: Verifier
) -> None:
    bundle = local_sigstore.sign(ARTIFACT, san=EMAIL_SAN, issuer=EMAIL_ISSUER)

    _verify(
        verifier, ARTIFACT, bundle, Identity(identity=EMAIL_SAN, issuer=EMAIL_ISSUER)
    )


def test_successive_entries_get_growing_log_and_all_verify(
    local_sigstore: LocalSigstore, verifier: Verifier
) -> None:
    policy = Identity(identity=WORKFLOW_SAN, issuer=GITHUB_ISSUER)
    artifacts = [ARTIFACT + bytes([n]) for n in range(5)]
    bundles = [
        local_sigstore.sign(data, san=WORKFLOW_SAN, issuer=GITHUB_ISSUER)
        for data in artifacts
    ]

    for data, bundle in zip(artifacts, bundles, strict=True):
        _verify(verifier, data, bundle, policy)
    indexes = [Bundle.from_json(b).log_entry._inner.log_index for b in bundles]
    assert indexes == [0, 1, 2, 3, 4]


# --- refused --------------------------------------------------------------


@pytest.mark.parametrize(
    ("san", "issuer"),
    [
        pytest.param(
            "https://github.com/acme/centops-channel/.github/workflows/other.yml"
            "@refs/heads/main",
            GITHUB_ISSUER,
            id="wrong-workflow-san",
        ),
        pytest.param(
            WORKFLOW_SAN.replace("refs/heads/main", "refs/tags/v1"),
            GITHUB_ISSUER,
            id="wrong-ref-san",
        ),
        pytest.param(WORKFLOW_SAN, "https://accounts.google.com", id="wrong-issuer"),
    ],
)
def test_signature_by_another_identity_is_refused(
    local_sigstore: LocalSigstore, verifier: Verifier, san: str, issuer: str
) -> None:
    bundle = local_sigstore.sign(ARTIFACT, san=WORKFLOW_SAN, issuer=GITHUB_ISSUER)

    with pytest.raises(SigstoreError, match=r"(does|do) not match"):
        _verify(verifier, ARTIFACT, bundle, Identity(identity=san, issuer=issuer))


def test_changed_artifact_is_refused(
    local_sigstore: LocalSigstore, verifier: Verifier
) -> None:
    bundle = local_sigstore.sign(ARTIFACT, san=WORKFLOW_SAN, issuer=GITHUB_ISSUER)

    with pytest.raises(SigstoreError, match="digest mismatch"):
        _verify(
            verifier,
            ARTIFACT + b"#",
            bundle,
            Identity(identity=WORKFLOW_SAN, issuer=GITHUB_ISSUER),
        )


# Each forgery must fail for its own reason, not for an incidental one.
FORGERY_REFUSALS = {
    "foreign-ca": "failed to build timestamp certificate chain",
    "no-sct": "does not contain a signed certificate timestamp",
    "foreign-ct-key": "SCT verify failed",
    "bad-checkpoint": "checkpoint: invalid signature",
    "swapped-body": "inconsistent with other materials",
    "edited-body": "inclusion proof contains invalid root hash",
    "no-trusted-time": "must contain an inclusion promise or signed timestamp",
    "edited-time": "invalid inclusion promise",
    "foreign-log-key": "checkpoint: invalid signature",
    "time-outside-validity": "not valid at validation time",
    "no-checkpoint": "with checkpoint",
}


def test_every_forgery_variant_has_an_expected_refusal() -> None:
    assert set(FORGERY_REFUSALS) == set(VARIANTS) - {"good"}


def test_forged_control_bundle_is_accepted(
    sigstore_dir: LocalSigstore, verifier: Verifier
) -> None:
    bundle = sigstore_dir.forge_bundle(
        ARTIFACT, san=WORKFLOW_SAN, issuer=GITHUB_ISSUER, variant="good"
    )

    _verify(
        verifier,
        ARTIFACT,
        bundle,
        Identity(identity=WORKFLOW_SAN, issuer=GITHUB_ISSUER),
    )


@pytest.mark.parametrize(("variant", "reason"), sorted(FORGERY_REFUSALS.items()))
def test_forged_bundle_is_refused(
    sigstore_dir: LocalSigstore, verifier: Verifier, variant: str, reason: str
) -> None:
    bundle = sigstore_dir.forge_bundle(
        ARTIFACT, san=WORKFLOW_SAN, issuer=GITHUB_ISSUER, variant=variant
    )

    with pytest.raises(SigstoreError, match=re.escape(reason)):
        _verify(
            verifier,
            ARTIFACT,
            bundle,
            Identity(identity=WORKFLOW_SAN, issuer=GITHUB_ISSUER),
        )


def test_bundle_from_another_local_sigstore_is_refused(
    local_sigstore: LocalSigstore, tmp_path: Path
) -> None:
    bundle = local_sigstore.sign(ARTIFACT, san=WORKFLOW_SAN, issuer=GITHUB_ISSUER)
    other = LocalSigstore.create(tmp_path / "other")
    other_verifier = Verifier(
        trusted_root=TrustedRoot.from_file(str(other.trusted_root_path))
    )

    with pytest.raises(SigstoreError):
        _verify(
            other_verifier,
            ARTIFACT,
            bundle,
            Identity(identity=WORKFLOW_SAN, issuer=GITHUB_ISSUER),
        )


def test_unknown_forgery_variant_is_an_error(sigstore_dir: LocalSigstore) -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        sigstore_dir.forge_bundle(
            ARTIFACT, san=EMAIL_SAN, issuer=EMAIL_ISSUER, variant="x"
        )


# --- trust files and tokens ------------------------------------------------


def test_trust_files_load_in_sigstore_and_start_in_the_past(
    local_sigstore: LocalSigstore,
) -> None:
    root = json.loads(local_sigstore.trusted_root_path.read_text())
    config = ClientTrustConfig.from_json(local_sigstore.trust_config_path.read_text())

    assert (
        root["mediaType"] == "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
    )
    assert root["tlogs"][0]["baseUrl"] == PLACEHOLDER_URL
    assert len(root["certificateAuthorities"][0]["certChain"]["certificates"]) == 2
    assert config.signing_config.get_fulcio().url == local_sigstore.url
    start = config.trusted_root._inner.ctlogs[0].public_key.valid_for
    assert start is not None and start.start < utc_now()


def test_minted_token_is_accepted_by_sigstore_identity_token() -> None:
    token = mint_identity_token(
        issuer=GITHUB_ISSUER,
        subject="repo:acme/centops-channel:ref:refs/heads/main",
        extra_claims={
            "job_workflow_ref": "acme/x/.github/workflows/a.yml@refs/heads/main"
        },
    )

    identity = IdentityToken(token)

    assert identity.issuer == GITHUB_ISSUER
    assert identity.identity == "repo:acme/centops-channel:ref:refs/heads/main"


def test_sign_without_running_services_says_so(sigstore_dir: LocalSigstore) -> None:
    with pytest.raises(NotRunningError, match="start"):
        sigstore_dir.sign(ARTIFACT, san=EMAIL_SAN, issuer=EMAIL_ISSUER)


# --- the HTTP services ------------------------------------------------------


def _post(
    url: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    connection = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=HTTP_TIMEOUT_S
    )
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read(1024 * 1024))
    finally:
        connection.close()


def test_fulcio_refuses_expired_token(local_sigstore: LocalSigstore) -> None:
    token = mint_identity_token(
        issuer=EMAIL_ISSUER, subject=EMAIL_SAN, email=EMAIL_SAN, now=1_000_000
    )
    body = json.dumps({"certificateSigningRequest": "AAAA"}).encode()

    status, answer = _post(
        local_sigstore.url,
        "/api/v2/signingCert",
        body,
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )

    assert status == 401
    assert "valid from" in str(answer["message"])


def test_oversized_request_body_is_refused(local_sigstore: LocalSigstore) -> None:
    status, answer = _post(
        local_sigstore.url, "/api/v1/log/entries", b" " * (1024 * 1024 + 1)
    )

    assert status == 413
    assert "exceeds" in str(answer["message"])


def test_rekor_refuses_entry_whose_signature_does_not_match(
    local_sigstore: LocalSigstore,
) -> None:
    good = Bundle.from_json(
        local_sigstore.sign(ARTIFACT, san=EMAIL_SAN, issuer=EMAIL_ISSUER)
    )
    proposal = json.loads(good.log_entry._inner.canonicalized_body)
    proposal["spec"]["data"]["hash"]["value"] = "00" * 32

    status, answer = _post(
        local_sigstore.url, "/api/v1/log/entries", json.dumps(proposal).encode()
    )

    assert status == 400
    assert "does not verify" in str(answer["message"])


def test_unknown_endpoint_is_not_found(local_sigstore: LocalSigstore) -> None:
    status, _ = _post(local_sigstore.url, "/api/v1/other", b"{}")

    assert status == 404


# --- the Merkle log ----------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17])
def test_inclusion_proofs_verify_in_sigstore_for_every_index(size: int) -> None:
    bodies = [f"entry {n}".encode() for n in range(size)]
    leaves = [rekor.leaf_hash(body) for body in bodies]
    root = rekor.tree_hash(leaves)
    for index, body in enumerate(bodies):
        entry = rekor.LoggedEntry(
            body=body,
            log_index=index,
            tree_size=size,
            root_hash=root,
            proof=tuple(rekor.inclusion_path(index, leaves)),
            checkpoint="unused\n",
            integrated_time=0,
            log_id=b"\x00" * 32,
            promise=None,
        )
        document = rekor.bundle_tlog_entry(entry)

        verify_merkle_inclusion(TransparencyLogEntry(InnerEntry.from_dict(document)))


# --- as a subprocess --------------------------------------------------------


def test_serve_subprocess_signs_and_records_its_pid(
    sigstore_dir: LocalSigstore, verifier: Verifier, no_proxy: None
) -> None:
    with ServerProcess(sigstore_dir.directory) as server:
        assert urlsplit(server.url).hostname == "127.0.0.1"
        assert sigstore_dir.pid_path.read_text().strip() == str(server.pid)
        bundle = sigstore_dir.sign(ARTIFACT, san=WORKFLOW_SAN, issuer=GITHUB_ISSUER)

    _verify(
        verifier,
        ARTIFACT,
        bundle,
        Identity(identity=WORKFLOW_SAN, issuer=GITHUB_ISSUER),
    )
    assert not sigstore_dir.pid_path.exists()
