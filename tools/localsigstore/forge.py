"""Deliberately bad Sigstore bundles, for negative tests only.

:func:`forge_bundle` builds a bundle directly from the generator's parts (no
HTTP): the ``"good"`` variant is a bundle the real verifier accepts, and every
other variant changes exactly one thing a verifier must refuse. Keeping the
good variant in the same code path shows the forgeries fail for the stated
reason and not because the forger is broken.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from . import fulcio, rekor
from .material import (
    IssuingCA,
    TrustMaterial,
    generate_ca,
    new_key,
    utc_now,
)
from .oidc import claims_for_identity

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"

VARIANTS: dict[str, str] = {
    "good": "a bundle the verifier must accept (control)",
    "foreign-ca": "leaf issued by a CA that is not in the trusted root",
    "no-sct": "leaf carries no SCT",
    "foreign-ct-key": "SCT signed by a CT key that is not in the trusted root",
    "bad-checkpoint": "checkpoint signed by another key under the log's key hint",
    "swapped-body": "valid log entry for another artifact by the same signer",
    "edited-body": "log body edited after integration (inclusion proof stale)",
    "no-trusted-time": "no inclusion promise, integrated time or timestamp",
    "edited-time": "integratedTime edited after the promise was signed",
    "foreign-log-key": "entry, checkpoint and promise from an untrusted log",
    "time-outside-validity": "log time after the leaf certificate expired",
    "no-checkpoint": "inclusion proof without a checkpoint",
}

# Entries logged before the forged one, so its inclusion proof is not empty.
_FILLER_ENTRIES = 5
_EDITED_TIME_SHIFT_S = 60
_OUTSIDE_VALIDITY_SHIFT_S = 3600


def forge_bundle(
    material: TrustMaterial, data: bytes, *, san: str, issuer: str, variant: str
) -> str:
    """Bundle JSON over ``data`` for ``san``/``issuer``, broken as ``variant`` says.

    ``variant`` is a key of :data:`VARIANTS`; raises ``ValueError`` otherwise.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    now = utc_now()
    claims = {**claims_for_identity(san=san), "iss": issuer}
    identity = fulcio.identity_from_claims(claims)
    signing_key = new_key()
    leaf = fulcio.issue_leaf(
        public_key=signing_key.public_key(),
        identity=identity,
        ca=_issuing_ca(material, variant),
        ct_key=_ct_key(material, variant),
        not_before=now,
    )
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
    digest, signature = _sign(signing_key, data)
    logged_digest, logged_signature = digest, signature
    if variant == "swapped-body":
        logged_digest, logged_signature = _sign(signing_key, data + b"\n(other)")
    body = rekor.hashedrekord_body(
        digest=logged_digest, signature=logged_signature, cert_pem=leaf_pem
    )
    integrated_time = int(now.timestamp())
    if variant == "time-outside-validity":
        integrated_time = int(leaf.not_valid_after_utc.timestamp())
        integrated_time += _OUTSIDE_VALIDITY_SHIFT_S
    log_key = new_key() if variant == "foreign-log-key" else material.log_key
    entry = _log(log_key, body, integrated_time=integrated_time)
    entry = _tamper_entry(entry, material, variant)
    tlog_entry = rekor.bundle_tlog_entry(entry)
    if variant == "no-checkpoint":
        del tlog_entry["inclusionProof"]["checkpoint"]
    return _bundle_json(
        leaf_der=leaf.public_bytes(serialization.Encoding.DER),
        digest=digest,
        signature=signature,
        tlog_entry=tlog_entry,
    )


def _issuing_ca(material: TrustMaterial, variant: str) -> IssuingCA:
    if variant == "foreign-ca":
        return generate_ca(valid_from=material.valid_from, label="foreign")
    return material.ca


def _ct_key(material: TrustMaterial, variant: str) -> ec.EllipticCurvePrivateKey | None:
    if variant == "no-sct":
        return None
    if variant == "foreign-ct-key":
        return new_key()
    return material.ct_key


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> tuple[bytes, bytes]:
    """SHA-256 of ``data`` and the ECDSA signature over it, as sigstore signs."""
    digest = hashlib.sha256(data).digest()
    return digest, key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def _log(
    key: ec.EllipticCurvePrivateKey, body: bytes, *, integrated_time: int
) -> rekor.LoggedEntry:
    """``body`` integrated into a fresh log that already holds filler entries."""
    log = rekor.MerkleLog(key)
    for number in range(_FILLER_ENTRIES):
        log.append(f"filler entry {number}".encode(), integrated_time=integrated_time)
    return log.append(body, integrated_time=integrated_time)


def _tamper_entry(
    entry: rekor.LoggedEntry, material: TrustMaterial, variant: str
) -> rekor.LoggedEntry:
    """``entry`` with the after-the-fact edit ``variant`` names, if any."""
    if variant == "bad-checkpoint":
        checkpoint = rekor.sign_checkpoint(
            tree_size=entry.tree_size,
            root_hash=entry.root_hash,
            key=new_key(),
            hint_key=material.log_key,
        )
        return dataclasses.replace(entry, checkpoint=checkpoint)
    if variant == "edited-body":
        document = json.loads(entry.body)
        document["spec"]["data"]["hash"]["value"] = hashlib.sha256(b"edit").hexdigest()
        return dataclasses.replace(entry, body=rfc8785.dumps(document))
    if variant == "no-trusted-time":
        return dataclasses.replace(entry, promise=None)
    if variant == "edited-time":
        shifted = entry.integrated_time + _EDITED_TIME_SHIFT_S
        return dataclasses.replace(entry, integrated_time=shifted)
    return entry


def _bundle_json(
    *, leaf_der: bytes, digest: bytes, signature: bytes, tlog_entry: dict[str, Any]
) -> str:
    """A v0.3 bundle document holding a message signature."""
    b64 = base64.b64encode
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "certificate": {"rawBytes": b64(leaf_der).decode()},
            "tlogEntries": [tlog_entry],
        },
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": b64(digest).decode()},
            "signature": b64(signature).decode(),
        },
    }
    return json.dumps(bundle, indent=2)
