"""Fulcio-like leaf certificates: identity from token claims, SCT embedded.

A leaf follows the profile sigstore's verifier checks: empty subject, EC
P-256 key, KeyUsage digitalSignature, ExtendedKeyUsage codeSigning, a critical
SubjectAlternativeName, the OIDC issuer extensions and exactly one embedded
SCT from the CT log key. ``ct_key=None`` leaves the SCT out, and any CA or CT
key may be passed, which is how the forgery helpers make untrusted leaves.
"""

from __future__ import annotations

import datetime as dt
import string
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, ObjectIdentifier

from .material import IssuingCA, key_id

LEAF_LIFETIME = dt.timedelta(minutes=10)
_SIGSTORE_OID = "1.3.6.1.4.1.57264.1"
OIDC_ISSUER_OID = ObjectIdentifier(f"{_SIGSTORE_OID}.1")
OIDC_ISSUER_V2_OID = ObjectIdentifier(f"{_SIGSTORE_OID}.8")

# Fulcio's GitHub Actions extensions: (OID suffix, value template over token
# claims, DER UTF8String?). Suffixes 2-6 are the deprecated raw-bytes forms.
_GITHUB_EXTENSIONS: tuple[tuple[int, str, bool], ...] = (
    (2, "{event_name}", False),
    (3, "{sha}", False),
    (4, "{workflow}", False),
    (5, "{repository}", False),
    (6, "{ref}", False),
    (9, "https://github.com/{job_workflow_ref}", True),
    (10, "{job_workflow_sha}", True),
    (11, "{runner_environment}", True),
    (12, "https://github.com/{repository}", True),
    (13, "{sha}", True),
    (14, "{ref}", True),
    (15, "{repository_id}", True),
    (16, "https://github.com/{repository_owner}", True),
    (17, "{repository_owner_id}", True),
    (18, "https://github.com/{workflow_ref}", True),
    (19, "{workflow_sha}", True),
    (20, "{event_name}", True),
    (
        21,
        "https://github.com/{repository}/actions/runs/{run_id}/attempts/{run_attempt}",
        True,
    ),
    (22, "{repository_visibility}", True),
)

# RFC 5246 codes used inside the SCT's digitally-signed struct.
_TLS_HASH_SHA256 = 4
_TLS_SIG_ECDSA = 3
_SCT_V1 = 0
_PRECERT_ENTRY = 1


class IdentityClaimError(ValueError):
    """The token claims name no identity the local Fulcio can certify."""


@dataclass(frozen=True)
class CertIdentity:
    """What a leaf certifies: its SAN, the OIDC issuer and extra extensions."""

    san: x509.GeneralName
    issuer: str
    extensions: tuple[x509.UnrecognizedExtension, ...] = ()


def identity_from_claims(claims: Mapping[str, Any]) -> CertIdentity:
    """The identity a Fulcio would certify for these (already checked) claims.

    ``job_workflow_ref`` wins (URI SAN ``https://github.com/<ref>`` plus the
    GitHub extensions), then ``email``, then ``sub`` (a URI if it has a
    scheme, an address if it has an ``@``). Raises :class:`IdentityClaimError`.
    """
    issuer = str(claims["iss"])
    workflow_ref = claims.get("job_workflow_ref")
    if isinstance(workflow_ref, str) and workflow_ref:
        return CertIdentity(
            san=x509.UniformResourceIdentifier(f"https://github.com/{workflow_ref}"),
            issuer=issuer,
            extensions=_github_extensions(claims),
        )
    email = claims.get("email")
    if isinstance(email, str) and email:
        return CertIdentity(san=x509.RFC822Name(email), issuer=issuer)
    subject = str(claims["sub"])
    if "://" in subject:
        return CertIdentity(san=x509.UniformResourceIdentifier(subject), issuer=issuer)
    if "@" in subject:
        return CertIdentity(san=x509.RFC822Name(subject), issuer=issuer)
    raise IdentityClaimError(
        f"subject {subject!r} is neither a URI nor an address and no "
        "email or job_workflow_ref claim is present"
    )


def _github_extensions(
    claims: Mapping[str, Any],
) -> tuple[x509.UnrecognizedExtension, ...]:
    """The GitHub extensions whose claims are all present as strings."""
    found: list[x509.UnrecognizedExtension] = []
    for suffix, template, der in _GITHUB_EXTENSIONS:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        if not all(isinstance(claims.get(name), str) for name in names):
            continue
        value = template.format_map({name: claims[name] for name in names})
        found.append(_string_extension(f"{_SIGSTORE_OID}.{suffix}", value, der=der))
    return tuple(found)


def _string_extension(oid: str, value: str, *, der: bool) -> x509.UnrecognizedExtension:
    raw = asn1.encode_der(value) if der else value.encode()
    return x509.UnrecognizedExtension(ObjectIdentifier(oid), raw)


def _leaf_builder(
    *,
    public_key: ec.EllipticCurvePublicKey,
    identity: CertIdentity,
    ca: IssuingCA,
    not_before: dt.datetime,
    lifetime: dt.timedelta,
    serial: int,
) -> x509.CertificateBuilder:
    """Every leaf field except the SCT list, in a fixed order."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([identity.san]), critical=True)
        .add_extension(
            _string_extension(
                OIDC_ISSUER_OID.dotted_string, identity.issuer, der=False
            ),
            critical=False,
        )
        .add_extension(
            _string_extension(
                OIDC_ISSUER_V2_OID.dotted_string, identity.issuer, der=True
            ),
            critical=False,
        )
    )
    for extension in identity.extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def issue_leaf(
    *,
    public_key: ec.EllipticCurvePublicKey,
    identity: CertIdentity,
    ca: IssuingCA,
    ct_key: ec.EllipticCurvePrivateKey | None,
    not_before: dt.datetime,
    lifetime: dt.timedelta = LEAF_LIFETIME,
) -> x509.Certificate:
    """A leaf for ``public_key`` signed by ``ca``, with an SCT from ``ct_key``.

    The SCT signs the precertificate form: the certificate is built once
    without the SCT list to get those TBS bytes, then again with the list
    added last, so the TBS the verifier reconstructs by removing it matches.
    ``ct_key=None`` returns the leaf without any SCT.
    """
    builder = _leaf_builder(
        public_key=public_key,
        identity=identity,
        ca=ca,
        not_before=not_before,
        lifetime=lifetime,
        serial=x509.random_serial_number(),
    )
    if ct_key is None:
        return builder.sign(ca.key, hashes.SHA256())
    precert_tbs = builder.sign(ca.key, hashes.SHA256()).tbs_certificate_bytes
    sct_list = signed_sct_list(
        precert_tbs=precert_tbs,
        issuer_public_key=ca.key.public_key(),
        ct_key=ct_key,
        timestamp_ms=int(not_before.timestamp() * 1000),
    )
    extension = x509.UnrecognizedExtension(
        ExtensionOID.PRECERT_SIGNED_CERTIFICATE_TIMESTAMPS, asn1.encode_der(sct_list)
    )
    return builder.add_extension(extension, critical=False).sign(
        ca.key, hashes.SHA256()
    )


def _u24(data: bytes) -> bytes:
    return struct.pack(">I", len(data))[1:] + data


def _u16(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def signed_sct_list(
    *,
    precert_tbs: bytes,
    issuer_public_key: ec.EllipticCurvePublicKey,
    ct_key: ec.EllipticCurvePrivateKey,
    timestamp_ms: int,
) -> bytes:
    """A TLS-encoded ``SignedCertificateTimestampList`` holding one v1 SCT.

    The signature covers the RFC 6962 section 3.2 ``digitally-signed`` struct
    for a precertificate entry: issuer key hash plus the precertificate TBS.
    """
    extensions = b""
    signed = (
        struct.pack(">BBQH", _SCT_V1, 0, timestamp_ms, _PRECERT_ENTRY)
        + key_id(issuer_public_key)
        + _u24(precert_tbs)
        + _u16(extensions)
    )
    signature = ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
    sct = (
        struct.pack(">B", _SCT_V1)
        + key_id(ct_key)
        + struct.pack(">Q", timestamp_ms)
        + _u16(extensions)
        + struct.pack(">BB", _TLS_HASH_SHA256, _TLS_SIG_ECDSA)
        + _u16(signature)
    )
    return _u16(_u16(sct))
