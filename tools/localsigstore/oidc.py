"""Locally minted OIDC identity tokens, and how the local Fulcio reads them.

sigstore's signing client forwards the identity token to Fulcio without
checking its signature, so a JWT with the right claims (``aud`` of
``sigstore``, ``iss``, ``sub``, ``iat``, ``exp``) is all it needs. The tokens
made here carry an HMAC-SHA256 signature under a random key that is thrown
away at once: they are well formed but prove nothing, which is the point.

NOTE: the local Fulcio does not verify token signatures either (there is no
issuer to fetch keys from); it only checks the audience and the validity
window. A real Fulcio verifies the token against its issuer's published keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

AUDIENCE = "sigstore"
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
DEFAULT_LIFETIME_S = 600
MAX_TOKEN_CHARS = 16 * 1024
# Accepted clock skew, as sigstore's own client allows.
LEEWAY_S = 5

_WORKFLOW_SAN = re.compile(
    r"^https://github\.com/(?P<repo>[^/@\s]+/[^/@\s]+)/(?P<path>\.github/workflows/"
    r"[^@\s]+)@(?P<ref>\S+)$"
)


class TokenError(ValueError):
    """An identity token is malformed, expired or not meant for Sigstore."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_identity_token(
    *,
    issuer: str,
    subject: str,
    email: str | None = None,
    extra_claims: Mapping[str, str] | None = None,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    now: int | None = None,
) -> str:
    """A compact JWT that sigstore's ``IdentityToken`` accepts.

    ``extra_claims`` carries GitHub-style claims (``job_workflow_ref``,
    ``repository``, ``ref``, ...). The token is valid from ``now`` (default:
    the current time) for ``lifetime_s`` seconds.
    """
    issued = int(time.time()) if now is None else now
    claims: dict[str, Any] = dict(extra_claims or {})
    claims.update(
        {
            "aud": AUDIENCE,
            "iss": issuer,
            "sub": subject,
            "iat": issued,
            "nbf": issued,
            "exp": issued + lifetime_s,
        }
    )
    if email is not None:
        claims.update({"email": email, "email_verified": True})
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps(claims, sort_keys=True).encode())
    signing_input = f"{header}.{payload}".encode()
    mac = hmac.new(secrets.token_bytes(32), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(mac)}"


def claims_for_identity(*, san: str) -> dict[str, str]:
    """The token claims (issuer aside) that make the local Fulcio issue ``san``.

    - A GitHub workflow URI (``https://github.com/ORG/REPO/.github/workflows/
      X.yml@REF``) becomes GitHub Actions claims (``job_workflow_ref``,
      ``repository``, ``ref``, ...), as a real Actions token would carry.
    - A bare address (``name@example.org``) becomes an ``email`` claim.
    - Anything else is used as ``sub`` and issued as a URI SAN.
    """
    workflow = _WORKFLOW_SAN.match(san)
    if workflow is not None:
        return _github_claims(
            repo=workflow["repo"], path=workflow["path"], ref=workflow["ref"]
        )
    if "@" in san and "://" not in san:
        return {"sub": san, "email": san}
    return {"sub": san}


def _github_claims(*, repo: str, path: str, ref: str) -> dict[str, str]:
    owner = repo.split("/", 1)[0]
    fake_sha = hashlib.sha1(f"{repo}@{ref}".encode(), usedforsecurity=False)
    return {
        "sub": f"repo:{repo}:ref:{ref}",
        "job_workflow_ref": f"{repo}/{path}@{ref}",
        "job_workflow_sha": fake_sha.hexdigest(),
        "workflow_ref": f"{repo}/{path}@{ref}",
        "workflow_sha": fake_sha.hexdigest(),
        "repository": repo,
        "repository_owner": owner,
        "ref": ref,
        "sha": fake_sha.hexdigest(),
        "event_name": "push",
        "runner_environment": "github-hosted",
        "run_id": "1",
        "run_attempt": "1",
    }


def token_for_identity(
    *, san: str, issuer: str, lifetime_s: int = DEFAULT_LIFETIME_S
) -> str:
    """A token for which the local Fulcio issues ``san`` under ``issuer``."""
    claims = claims_for_identity(san=san)
    subject = claims.pop("sub")
    email = claims.pop("email", None)
    return mint_identity_token(
        issuer=issuer,
        subject=subject,
        email=email,
        extra_claims=claims,
        lifetime_s=lifetime_s,
    )


def read_claims(token: str, *, now: int | None = None) -> dict[str, Any]:
    """The claims of ``token`` after the checks the local Fulcio makes.

    Checks shape, size, ``aud`` == ``sigstore``, ``iss``/``sub`` present and
    the validity window; the signature is NOT verified (see the module
    docstring). Raises :class:`TokenError`.
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError(
            f"token has {len(token)} characters; at most {MAX_TOKEN_CHARS}"
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError(f"token has {len(parts)} dot-separated parts; expected 3")
    try:
        claims = json.loads(_b64url_decode(parts[1]))
    except ValueError as exc:
        raise TokenError("token payload is not base64url JSON") from exc
    if not isinstance(claims, dict):
        raise TokenError("token payload is not a JSON object")
    _check_claims(claims, int(time.time()) if now is None else now)
    return claims


def _check_claims(claims: dict[str, Any], now: int) -> None:
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if AUDIENCE not in audiences:
        raise TokenError(f"token audience is {aud!r}; expected {AUDIENCE!r}")
    for name in ("iss", "sub"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise TokenError(f"token lacks a string {name!r} claim")
    exp, nbf = claims.get("exp"), claims.get("nbf", 0)
    if not isinstance(exp, int) or not isinstance(nbf, int):
        raise TokenError("token 'exp'/'nbf' claims are not integers")
    if not nbf - LEEWAY_S <= now < exp + LEEWAY_S:
        raise TokenError(f"token is valid from {nbf} to {exp}; now is {now}")
