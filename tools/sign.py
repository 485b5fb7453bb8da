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

from centops.agent import yamlstrict
from centops.agent.errors import ConfigError
from centops.agent.fsutil import atomic_write
from centops.agent.manifest import BUNDLE_SUFFIX, parse_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Signed:
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

    Raises ConfigError when no identity is available or the trust config is
    unusable, ManifestError when a manifest is malformed (nothing is signed).
    """
    payloads = []
    for path in manifests:
        with path.open("rb") as handle:
            data = handle.read(yamlstrict.MAX_DOCUMENT_BYTES + 1)
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
    token = IdentityToken(identity_token or _ambient_or_interactive(config))
    context = SigningContext.from_trust_config(config)
    signed = []
    with context.signer(token, cache=True) as signer:
        for path, data in payloads:
            bundle = signer.sign_artifact(data)
            target = bundle_path(path)
            atomic_write(target, bundle.to_json().encode("utf-8"))
            log.info("signed %s as %s", path, token.identity)
            signed.append(Signed(path, target, str(token.identity)))
    return signed


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
