"""A throwaway, offline Sigstore: TEST AND DEMO SUPPORT ONLY.

Nothing in this package is, or may become, a production trust anchor. It
makes a private CA, CT log key and transparency-log key, writes a
``trusted_root.json`` and a client trust config for them, runs Fulcio- and
Rekor-shaped services on 127.0.0.1, mints unverified identity tokens, and can
forge deliberately broken bundles for negative tests.

Its trust root only takes effect where a caller passes its path explicitly
(``TrustedRoot.from_file(instance.trusted_root_path)``); nothing here changes
how production verification chooses its trust root or identity policy.

Typical use in a test::

    with LocalSigstore.create(tmp_path) as sigstore:
        bundle = sigstore.sign(b"data", san=SAN, issuer=ISSUER)
        verifier = Verifier(
            trusted_root=TrustedRoot.from_file(str(sigstore.trusted_root_path))
        )
"""

from __future__ import annotations

from .forge import VARIANTS, forge_bundle
from .local import (
    LocalSigstore,
    NotRunningError,
    sign_with_trust_config,
)
from .material import (
    TrustMaterial,
    generate_material,
    trust_config_document,
    trusted_root_document,
)
from .oidc import (
    GITHUB_ISSUER,
    mint_identity_token,
    token_for_identity,
)
from .process import ServerProcess

__all__ = [
    "GITHUB_ISSUER",
    "VARIANTS",
    "LocalSigstore",
    "NotRunningError",
    "ServerProcess",
    "TrustMaterial",
    "forge_bundle",
    "generate_material",
    "mint_identity_token",
    "sign_with_trust_config",
    "token_for_identity",
    "trust_config_document",
    "trusted_root_document",
]
