"""The trust decision: may this client install this manifest?

A pure function of bytes, local state and the clock; no IO of its own (the
signature check is passed in, so tests can drive the core with fakes and the
agent with sigstore's real verifier). A manifest is accepted only if all of
these hold, checked in this order so the first failure is the reason given:

1. authentic: the bundle verifies over exactly these bytes for the pinned
   identity (nothing is parsed before that);
2. well formed: the same strict loading CI applies, on the same bytes;
3. for this client: its ``channel`` is the configured channel;
4. newer: its ``serial`` is above the highest this client accepted. The same
   serial with the same bytes is the current manifest (resume); the same
   serial with other bytes is refused and reported; a lower serial, even
   validly signed, is a rollback attempt;
5. fresh: ``expires`` is in the future, allowing a small clock skew.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import RemoteContentError
from .manifest import Manifest, ManifestError, parse_manifest
from .signing import VerifiedSignature
from .timeutil import format_timestamp

SignatureCheck = Callable[[bytes, bytes | None], VerifiedSignature]


@dataclass(frozen=True)
class TrustState:
    """What the decision needs from local state."""

    channel: str
    highest_serial: int
    accepted_sha256: str | None  # of the manifest at highest_serial


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str  # "accepted", "current", or a refusal code
    message: str
    manifest: Manifest | None = None
    signature: VerifiedSignature | None = None

    @property
    def is_resume(self) -> bool:
        return self.reason == "current"


def decide(
    *,
    manifest_bytes: bytes | None,
    bundle_bytes: bytes | None,
    state: TrustState,
    now: datetime,
    clock_skew: timedelta,
    check_signature: SignatureCheck,
    source: str,
    allow_insecure_http: bool = False,
) -> Decision:
    """Decide on one manifest; never raises for bad remote content.

    A ConfigError from ``check_signature`` (an unusable pinned trust root or
    policy) propagates: it is the client's fault, not the manifest's.
    """
    if manifest_bytes is None:
        return _refuse("manifest-missing", f"{source} is not in the fetched commit")

    # 1. Authentic: over the exact bytes, before anything is parsed.
    try:
        signature = check_signature(manifest_bytes, bundle_bytes)
    except RemoteContentError as exc:  # local trust faults (ConfigError) propagate
        return _refuse(exc.reason, exc.message)

    # 2. Well formed: the very bytes whose signature was checked.
    try:
        manifest = parse_manifest(
            manifest_bytes, source=source, allow_insecure_http=allow_insecure_http
        )
    except ManifestError as exc:
        return _refuse(exc.reason, exc.message, signature=signature)

    # 3. For this client.
    if manifest.channel != state.channel:
        return _refuse(
            "wrong-channel",
            f"manifest is for channel {manifest.channel!r}; this client follows "
            f"{state.channel!r}",
            manifest,
            signature,
        )

    # 4. Newer than anything accepted before.
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    if manifest.serial < state.highest_serial:
        return _refuse(
            "rollback",
            f"serial {manifest.serial} is older than the accepted serial "
            f"{state.highest_serial}: refusing a rollback",
            manifest,
            signature,
        )
    current = manifest.serial == state.highest_serial
    if current and digest != state.accepted_sha256:
        return _refuse(
            "serial-reused",
            f"serial {manifest.serial} was already accepted with other content "
            f"(sha256 {str(state.accepted_sha256)[:12]}, now {digest[:12]})",
            manifest,
            signature,
        )

    # 5. Fresh.
    if manifest.expires <= now - clock_skew:
        return _refuse(
            "expired",
            f"manifest serial {manifest.serial} expired at "
            f"{format_timestamp(manifest.expires)} (now {format_timestamp(now)})",
            manifest,
            signature,
        )
    if current:
        return Decision(
            True, "current", "manifest already accepted", manifest, signature
        )
    return Decision(
        True, "accepted", f"serial {manifest.serial} accepted", manifest, signature
    )


def _refuse(
    reason: str,
    message: str,
    manifest: Manifest | None = None,
    signature: VerifiedSignature | None = None,
) -> Decision:
    return Decision(False, reason, message, manifest, signature)
