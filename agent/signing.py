"""Offline Sigstore verification of manifests against a pinned identity.

One function, :func:`verify_manifest_signature`, is the only way CentOps
checks a signature: the agent, ``centops verify`` and ``centops validate
--require-signatures`` all call it. It fails closed: every fault, including
any exception raised inside sigstore or cryptography, becomes a
:class:`SignatureError` (or a :class:`~centops.agent.errors.ConfigError` for a
local problem) with a stable reason code.

Trust inputs are explicit and keyword-only: a trusted root *file* that the
client pins (never refreshed from the network, never sigstore's unverified
offline cache), an identity policy, and the exact bytes. The bytes verified
here must be the bytes the caller then parses; callers pass one ``bytes``
object to both.

``sigstore`` is imported inside the function: it costs about 0.3 s and 55 MB,
which a no-op poll must not pay.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, RemoteContentError
from .fsutil import read_regular

if TYPE_CHECKING:
    from sigstore.verify import Verifier

MAX_BUNDLE_BYTES = 64 * 1024
MAX_TRUSTED_ROOT_BYTES = 1024 * 1024
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
# Fulcio's certificate extension carrying the OIDC issuer (raw UTF-8).
FULCIO_ISSUER_OID = "1.3.6.1.4.1.57264.1.1"

# Sigstore's messages are not an API; these map the failure steps they name to
# our stable codes. Only the first line of a message is searched, the first
# match wins, and the order matters: step prefixes that embed other text (log
# entry errors quote hashes, chain errors quote certificates) come before the
# short needles that text could contain. Anything unmatched is plain
# "signature-invalid"; tests/test_signing.py pins each forged-bundle variant to
# its code, so a sigstore upgrade that rewords a message shows up there.
_FAILURE_CODES = (
    # Step 0: no verified time (no inclusion promise and no timestamp).
    ("not enough sources of verified time", "signature-no-trusted-time"),
    ("inclusion promise or signed timestamp", "signature-no-trusted-time"),
    # Steps 4-5: inclusion proof, checkpoint or inclusion promise (SET); and
    # a bundle without exactly one log entry to check them on.
    ("invalid log entry", "signature-tlog-invalid"),
    ("checkpoint", "signature-tlog-invalid"),
    ("exactly one log entry", "signature-tlog-invalid"),
    # Step 2: the certificate's embedded SCT.
    ("failed to verify SCT", "signature-sct-invalid"),
    # Steps 1 and 6: the leaf was not valid at the logged time.
    ("not valid at validation time", "signature-certificate-expired"),
    ("expired at time of signing", "signature-certificate-expired"),
    # Step 1: the leaf does not chain to a CA in the trusted root.
    ("certificate chain", "signature-untrusted-certificate"),
    # Step 7: the signature is not over these bytes.
    ("digest mismatch", "signature-artifact-mismatch"),
    ("Signature is invalid for input", "signature-artifact-mismatch"),
    # Step 8: the log entry is for other materials (CVE-2022-36056 variants).
    ("inconsistent with other materials", "signature-tlog-mismatch"),
    ("hashedrekord", "signature-tlog-mismatch"),
)
# Bundle.from_json's wrapper around a JSON or schema failure; the text after it
# quotes the input, so it is never searched for the needles above.
_LOAD_FAILURE_PREFIX = "failed to load bundle"


@dataclass(frozen=True)
class IdentityPolicy:
    """Who may sign: one OIDC issuer and one or more exact SANs.

    ``repository`` and ``ref``, when set, must also match the certificate's
    source-repository claims (GitHub: ``https://github.com/ORG/REPO`` and
    ``refs/heads/main``).
    """

    issuer: str
    identities: tuple[str, ...]
    repository: str | None = None
    ref: str | None = None

    def describe(self) -> str:
        sans = ", ".join(self.identities) or "(none)"
        return f"issuer {self.issuer}, identity {sans}"


@dataclass(frozen=True)
class VerifiedSignature:
    """What a successful verification established."""

    identity: str
    issuer: str
    log_index: int
    log_time: datetime
    artifact_sha256: str


class SignatureError(RemoteContentError):
    """The bundle does not prove that the pinned identity signed these bytes."""

    reason = "signature-invalid"


def verify_manifest_signature(
    *,
    trusted_root: Path,
    policy: IdentityPolicy,
    manifest: bytes,
    bundle: bytes | None,
) -> VerifiedSignature:
    """Verify ``bundle`` over exactly ``manifest`` for ``policy``, offline.

    Raises :class:`SignatureError` (remote content refused) or
    :class:`ConfigError` (the pinned trust inputs are unusable).
    """
    # 1. Check the local trust inputs before touching remote content.
    if not policy.identities or not all(policy.identities):
        raise ConfigError(
            "the signer identity list is empty",
            reason="policy-empty",
            hint="pin at least one exact signer SAN (e.g. the sign workflow at main)",
        )
    if not policy.issuer:
        raise ConfigError(
            "the signer issuer is empty", reason="policy-empty", hint="pin the issuer"
        )
    verifier = _verifier(trusted_root)

    # 2. Bound and parse the bundle.
    if bundle is None:
        raise SignatureError(
            "no signature bundle beside the manifest",
            reason="signature-missing",
            hint="sign it with `centops sign` (CI does this on merge to main)",
        )
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise SignatureError(
            f"signature bundle is {len(bundle)} bytes; the limit is {MAX_BUNDLE_BYTES}",
            reason="signature-bundle-too-large",
        )
    from sigstore.models import Bundle

    try:
        parsed = Bundle.from_json(bundle)
    except Exception as exc:  # any parse failure is a refusal
        # Bundle.from_json also runs structural checks (no checkpoint, no time
        # source); those name a specific fault rather than bad JSON.
        code = None
        if not _first_line(exc).startswith(_LOAD_FAILURE_PREFIX):
            code = _failure_code(exc)
        if code is not None:
            raise SignatureError(
                f"signature bundle is incomplete: {_short(exc)}",
                reason=code,
                hint="re-sign the manifest; a complete bundle carries a log entry "
                "with its checkpoint and inclusion promise",
            ) from exc
        raise SignatureError(
            f"signature bundle is malformed: {_short(exc)}",
            reason="signature-bundle-malformed",
            hint="re-sign the manifest; the bundle may be truncated",
        ) from exc

    # 3. Verify with sigstore's own verifier; classify any failure.
    recorder = _PolicyRecorder(_sigstore_policy(policy))
    try:
        verifier.verify_artifact(manifest, parsed, recorder)
        return _summary(parsed, manifest)
    except Exception as exc:  # fail closed on every exception
        raise _classified(exc, recorder, policy) from exc


class _PolicyRecorder:
    """Wraps a policy to tell an identity mismatch from a broken signature."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.rejected = False

    def verify(self, cert: Any) -> None:
        try:
            self.inner.verify(cert)
        except Exception:
            self.rejected = True
            raise


def _classified(
    exc: Exception, recorder: _PolicyRecorder, policy: IdentityPolicy
) -> SignatureError:
    if recorder.rejected:
        return SignatureError(
            f"signed by an identity that is not pinned ({_short(exc)}); "
            f"expected {policy.describe()}",
            reason="signature-identity-mismatch",
            hint="only the pinned signing workflow on main may sign manifests",
        )
    return SignatureError(
        f"signature verification failed: {_short(exc)}",
        reason=_failure_code(exc) or "signature-invalid",
        hint="the manifest or its bundle was altered, or signed outside the "
        "pinned trust root; do not install it",
    )


def _failure_code(exc: BaseException) -> str | None:
    """Our reason code for the sigstore failure step ``exc`` names, if known."""
    text = _first_line(exc)
    return next((code for needle, code in _FAILURE_CODES if needle in text), None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _short(exc: BaseException) -> str:
    text = _first_line(exc)
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _sigstore_policy(policy: IdentityPolicy) -> Any:
    from sigstore.verify import policy as sp

    def one(san: str) -> Any:
        checks: list[Any] = [sp.Identity(identity=san, issuer=policy.issuer)]
        if policy.repository:
            checks.append(sp.OIDCSourceRepositoryURI(policy.repository))
        if policy.ref:
            checks.append(sp.OIDCSourceRepositoryRef(policy.ref))
        return sp.AllOf(checks) if len(checks) > 1 else checks[0]

    return sp.AnyOf([one(san) for san in policy.identities])


def _summary(bundle: Any, manifest: bytes) -> VerifiedSignature:
    from cryptography.x509 import (
        ExtensionNotFound,
        ObjectIdentifier,
        SubjectAlternativeName,
    )

    cert = bundle.signing_certificate
    sans = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
    identity = next(iter(sans.get_values_for_type(_uri_type())), "") or next(
        iter(sans.get_values_for_type(_email_type())), ""
    )
    try:
        raw = cert.extensions.get_extension_for_oid(
            ObjectIdentifier(FULCIO_ISSUER_OID)
        ).value.value
        issuer = raw.decode("utf-8", "replace")
    except ExtensionNotFound:
        issuer = ""
    entry = bundle.log_entry
    return VerifiedSignature(
        identity=identity,
        issuer=issuer,
        log_index=int(entry._inner.log_index),
        log_time=datetime.fromtimestamp(int(entry._inner.integrated_time), UTC),
        artifact_sha256=hashlib.sha256(manifest).hexdigest(),
    )


def _uri_type() -> Any:
    from cryptography.x509 import UniformResourceIdentifier

    return UniformResourceIdentifier


def _email_type() -> Any:
    from cryptography.x509 import RFC822Name

    return RFC822Name


_verifiers: dict[tuple[str, str], Verifier] = {}
_verifiers_lock = threading.Lock()


def _verifier(trusted_root: Path) -> Verifier:
    """A verifier for the pinned root file, reused while its bytes are unchanged."""
    try:
        data = read_regular(trusted_root, MAX_TRUSTED_ROOT_BYTES)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the trusted root {trusted_root}: {exc.strerror}",
            reason="trust-root-unreadable",
            hint="point `trusted_root` at the pinned trusted_root.json",
        ) from exc
    if len(data) > MAX_TRUSTED_ROOT_BYTES:
        raise ConfigError(
            f"trusted root {trusted_root} is larger than {MAX_TRUSTED_ROOT_BYTES} "
            "bytes",
            reason="trust-root-unreadable",
        )
    key = (str(trusted_root), hashlib.sha256(data).hexdigest())
    with _verifiers_lock:
        cached = _verifiers.get(key)
        if cached is not None:
            return cached
        try:
            from sigstore.models import TrustedRoot
            from sigstore.verify import Verifier
            from sigstore_models.trustroot import v1

            # Built from the bytes hashed above, not by re-reading the file.
            root = TrustedRoot(v1.TrustedRoot.from_json(data))
            verifier = Verifier(trusted_root=root)
        except Exception as exc:  # any failure to load pinned trust is fatal
            raise ConfigError(
                f"trusted root {trusted_root} is not usable: {_short(exc)}",
                reason="trust-root-unreadable",
                hint="use a trusted_root.json from your Sigstore deployment",
            ) from exc
        _verifiers.clear()  # one pinned root per process in practice
        _verifiers[key] = verifier
        return verifier
