"""``centops sign``: keyless Sigstore signing of manifests.

Signing goes through sigstore's own client (Fulcio for a short-lived
certificate bound to the OIDC identity, Rekor for the transparency log). The
identity token comes, in order, from the caller, from the ambient CI
credential (GitHub Actions with ``id-token: write``), or from the interactive
browser flow. A ``trust_config`` file points at a private Sigstore deployment
(or, in tests and the demo, at the local one in ``centops.tools.localsigstore``).

A manifest is parsed with the agent's loader before it is signed: CentOps
never signs a manifest its own agents would refuse as malformed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from centops.agent import yamlstrict
from centops.agent.errors import ConfigError, TransportError
from centops.agent.fsutil import atomic_write, read_regular
from centops.agent.manifest import BUNDLE_SUFFIX, parse_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Signed:
    """A manifest, its new bundle and the SAN its certificate carries."""

    manifest: Path
    bundle: Path
    identity: str


def bundle_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.name + BUNDLE_SUFFIX)


def sign_manifests(
    manifests: Sequence[Path],
    *,
    trust_config: Path | None = None,
    identity_token: str | None = None,
    allow_insecure_http: bool = False,
) -> list[Signed]:
    """Sign each manifest, writing ``<manifest>.sigstore.json`` atomically.

    Every manifest is read and parsed before anything is signed. Raises
    ConfigError when a manifest is unreadable, no identity is available, the
    token is unusable or the trust config is unusable; ManifestError when a
    manifest is malformed (nothing is signed); TransportError when Fulcio or
    Rekor fail (bundles written before the failure stay).
    """
    payloads = []
    for path in manifests:
        try:
            data = read_regular(
                path, yamlstrict.MAX_DOCUMENT_BYTES, follow_symlinks=False
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot read {path}: {exc.strerror}", reason="usage"
            ) from exc
        parse_manifest(data, source=str(path), allow_insecure_http=allow_insecure_http)
        payloads.append((path, data))

    from sigstore.models import ClientTrustConfig
    from sigstore.oidc import IdentityToken
    from sigstore.sign import SigningContext

    try:
        config = (
            ClientTrustConfig.from_json(trust_config.read_text("utf-8"))
            if trust_config
            else ClientTrustConfig.production()
        )
    except Exception as exc:
        raise ConfigError(
            f"cannot use the Sigstore trust config {trust_config}: {exc}",
            reason="trust-config",
        ) from exc
    raw_token = identity_token or _ambient_or_interactive(config)
    try:
        token = IdentityToken(raw_token)
    except Exception as exc:
        # sigstore's messages name the fault, never the token itself.
        raise ConfigError(
            f"the identity token is not usable: {exc}",
            reason="identity-token-invalid",
            hint="mint a fresh token for audience 'sigstore'; tokens expire quickly",
        ) from exc
    signed = []
    try:
        context = SigningContext.from_trust_config(config)
        with context.signer(token, cache=True) as signer:
            for path, data in payloads:
                bundle = signer.sign_artifact(data)
                target = _write_bundle(path, bundle.to_json().encode("utf-8"))
                identity = _certified_identity(bundle.signing_certificate)
                log.info("signed %s as %s", path, identity)
                signed.append(Signed(path, target, identity))
    except ConfigError:
        raise
    except Exception as exc:  # Fulcio, Rekor or the HTTP client refused
        done = ", ".join(str(item.manifest) for item in signed) or "none"
        raise TransportError(
            f"signing failed: {type(exc).__name__}: {exc}; already signed: {done}",
            reason="signing-failed",
            hint="check the trust config's Fulcio and Rekor URLs and retry",
        ) from exc
    return signed


def _certified_identity(cert: x509.Certificate) -> str:
    """The SAN Fulcio certified: what verifiers pin with ``--identity``.

    For GitHub Actions this is the workflow URI, not the token's ``sub``.
    """
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    for kind in (x509.UniformResourceIdentifier, x509.RFC822Name):
        values = sans.value.get_values_for_type(kind)
        if values:
            return str(values[0])
    return "(no URI or email SAN)"


def _write_bundle(manifest: Path, bundle: bytes) -> Path:
    target = bundle_path(manifest)
    try:
        atomic_write(target, bundle)
    except OSError as exc:
        raise ConfigError(
            f"cannot write {target}: {exc.strerror}", reason="usage"
        ) from exc
    return target


def _ambient_or_interactive(config: object) -> str:
    from sigstore.oidc import Issuer, detect_credential

    ambient = detect_credential()
    if ambient:
        return ambient
    try:
        oidc_url = config.signing_config.get_oidc_url()  # type: ignore[attr-defined]
        return str(Issuer(oidc_url).identity_token())
    except Exception as exc:
        raise ConfigError(
            f"no identity token: no ambient CI credential and the interactive "
            f"flow failed ({type(exc).__name__})",
            reason="no-identity",
            hint="set SIGSTORE_IDENTITY_TOKEN, or run in CI with id-token: write",
        ) from exc
