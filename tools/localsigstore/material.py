"""Throwaway key material of a local Sigstore and the trust files made from it.

One :class:`TrustMaterial` holds everything a local Fulcio and Rekor need: an
issuing CA (an intermediate under a self-signed root), a CT log key that signs
SCTs and a transparency-log key that signs checkpoints and inclusion promises.
Its public halves become a ``trusted_root.json`` that sigstore's ``Verifier``
loads, and a client trust config whose signing config points sigstore's
signing client at loopback services.

Every key here is generated for one test run or demo; none of it is ever a
production trust anchor.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
SIGNING_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.signingconfig.v0.2+json"
TRUST_CONFIG_MEDIA_TYPE = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"

# Validity starts a day in the past: sigstore drops trust-root keys and
# services whose validity has not started yet, and clocks drift.
BACKDATE = dt.timedelta(days=1)
CA_LIFETIME = dt.timedelta(days=30)
OPERATOR = "centops-localsigstore"
ORGANIZATION = "CentOps local Sigstore (test only)"
# A name under .invalid (RFC 2606) can never resolve. The trusted root needs a
# log URL, but the verifier never contacts it, so nothing real is named.
PLACEHOLDER_URL = "https://localsigstore.invalid"

_ROOT_CERT_FILE = "ca-root.pem"
_INTERMEDIATE_CERT_FILE = "ca-intermediate.pem"
_INTERMEDIATE_KEY_FILE = "ca-intermediate.key"
_CT_KEY_FILE = "ctlog.key"
_LOG_KEY_FILE = "rekor.key"


@dataclass(frozen=True)
class IssuingCA:
    """A CA able to issue leaves: its key and its chain, issuer first, root last."""

    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate whose key signs leaves."""
        return self.chain[0]


@dataclass(frozen=True)
class TrustMaterial:
    """All secret and public material of one local Sigstore instance."""

    ca: IssuingCA
    ct_key: ec.EllipticCurvePrivateKey
    log_key: ec.EllipticCurvePrivateKey
    valid_from: dt.datetime


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 key, the only key type this package uses."""
    return ec.generate_private_key(ec.SECP256R1())


def public_der(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo of ``key`` (or of its public half)."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """The RFC 6962 key ID: SHA-256 over the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(public_der(key)).digest()


def utc_now() -> dt.datetime:
    """The current time in UTC, truncated to whole seconds like X.509 times."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(
    *,
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    path_length: int,
    valid_from: dt.datetime,
) -> x509.Certificate:
    """A CA certificate that passes the WebPKI CA profile sigstore applies."""
    subject = _ca_name(common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_from + CA_LIFETIME)
        .add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        )
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def generate_ca(*, valid_from: dt.datetime, label: str = "local Fulcio") -> IssuingCA:
    """A new root and an intermediate under it; the root key is discarded.

    Sigstore's Fulcio client refuses chains shorter than two certificates,
    hence the intermediate.
    """
    root_key, intermediate_key = new_key(), new_key()
    root = _ca_certificate(
        common_name=f"{label} root",
        key=root_key,
        issuer=None,
        issuer_key=root_key,
        path_length=1,
        valid_from=valid_from,
    )
    intermediate = _ca_certificate(
        common_name=f"{label} intermediate",
        key=intermediate_key,
        issuer=root,
        issuer_key=root_key,
        path_length=0,
        valid_from=valid_from,
    )
    return IssuingCA(key=intermediate_key, chain=(intermediate, root))


def generate_material(*, now: dt.datetime | None = None) -> TrustMaterial:
    """Fresh CA, CT log key and transparency-log key, valid from a day ago."""
    valid_from = (now or utc_now()) - BACKDATE
    return TrustMaterial(
        ca=generate_ca(valid_from=valid_from),
        ct_key=new_key(),
        log_key=new_key(),
        valid_from=valid_from,
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, replacing ``path`` atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def save_material(material: TrustMaterial, directory: Path) -> None:
    """Store ``material`` in ``directory`` so another process can load it.

    The private keys are written unencrypted (mode 0600): they are throwaway
    test keys, and a subprocess server must read them without a passphrase.
    """
    directory.mkdir(parents=True, exist_ok=True)
    intermediate, root = material.ca.chain
    pem = serialization.Encoding.PEM
    write_atomic(directory / _ROOT_CERT_FILE, root.public_bytes(pem).decode())
    write_atomic(
        directory / _INTERMEDIATE_CERT_FILE, intermediate.public_bytes(pem).decode()
    )
    _write_private(directory / _INTERMEDIATE_KEY_FILE, _key_pem(material.ca.key))
    _write_private(directory / _CT_KEY_FILE, _key_pem(material.ct_key))
    _write_private(directory / _LOG_KEY_FILE, _key_pem(material.log_key))


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: expected an EC private key")
    return key


def has_material(directory: Path) -> bool:
    """Whether ``directory`` holds material written by :func:`save_material`."""
    return (directory / _LOG_KEY_FILE).is_file()


def load_material(directory: Path) -> TrustMaterial:
    """Read back what :func:`save_material` wrote; raises ``OSError``/``ValueError``."""
    root = x509.load_pem_x509_certificate((directory / _ROOT_CERT_FILE).read_bytes())
    intermediate = x509.load_pem_x509_certificate(
        (directory / _INTERMEDIATE_CERT_FILE).read_bytes()
    )
    return TrustMaterial(
        ca=IssuingCA(
            key=_load_key(directory / _INTERMEDIATE_KEY_FILE),
            chain=(intermediate, root),
        ),
        ct_key=_load_key(directory / _CT_KEY_FILE),
        log_key=_load_key(directory / _LOG_KEY_FILE),
        valid_from=root.not_valid_before_utc,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log_instance(
    key: ec.EllipticCurvePrivateKey, *, base_url: str, valid_from: dt.datetime
) -> dict[str, Any]:
    """A ``TransparencyLogInstance`` entry (used for both tlogs and ctlogs)."""
    return {
        "baseUrl": base_url,
        "hashAlgorithm": "SHA2_256",
        "publicKey": {
            "rawBytes": _b64(public_der(key)),
            "keyDetails": "PKIX_ECDSA_P256_SHA_256",
            "validFor": {"start": _timestamp(valid_from)},
        },
        "logId": {"keyId": _b64(key_id(key))},
    }


def trusted_root_document(
    material: TrustMaterial, *, base_url: str = PLACEHOLDER_URL
) -> dict[str, Any]:
    """The ``trusted_root.json`` content that trusts exactly ``material``."""
    start = material.valid_from
    return {
        "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
        "tlogs": [_log_instance(material.log_key, base_url=base_url, valid_from=start)],
        "certificateAuthorities": [
            {
                "subject": {"organization": ORGANIZATION, "commonName": "local Fulcio"},
                "uri": base_url,
                "certChain": {
                    "certificates": [
                        {
                            "rawBytes": _b64(
                                cert.public_bytes(serialization.Encoding.DER)
                            )
                        }
                        for cert in material.ca.chain
                    ]
                },
                "validFor": {"start": _timestamp(start)},
            }
        ],
        "ctlogs": [_log_instance(material.ct_key, base_url=base_url, valid_from=start)],
        "timestampAuthorities": [],
    }


def _service(url: str, valid_from: dt.datetime) -> dict[str, Any]:
    return {
        "url": url,
        "majorApiVersion": 1,
        "validFor": {"start": _timestamp(valid_from)},
        "operator": OPERATOR,
    }


def trust_config_document(material: TrustMaterial, *, url: str) -> dict[str, Any]:
    """A ``ClientTrustConfig`` sending Fulcio and Rekor v1 calls to ``url``.

    ``url`` is the base URL of the loopback service (both APIs share it). No
    OIDC or timestamp authority URL is listed: tokens are minted locally and
    the log's inclusion promise is the time source.
    """
    start = material.valid_from
    return {
        "mediaType": TRUST_CONFIG_MEDIA_TYPE,
        "trustedRoot": trusted_root_document(material, base_url=url),
        "signingConfig": {
            "mediaType": SIGNING_CONFIG_MEDIA_TYPE,
            "caUrls": [_service(url, start)],
            "oidcUrls": [],
            "rekorTlogUrls": [_service(url, start)],
            "rekorTlogConfig": {"selector": "ANY"},
            "tsaUrls": [],
            "tsaConfig": {"selector": "ANY"},
        },
    }


def dump_json(document: dict[str, Any]) -> str:
    """Stable, readable JSON for the files this package writes."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
