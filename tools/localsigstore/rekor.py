"""A Rekor v1-like transparency log over a real RFC 6962 Merkle tree.

Each appended ``hashedrekord`` body gets an index, an inclusion proof against
the new tree head, a signed checkpoint (a signed note) and a signed entry
timestamp (the inclusion promise). The log lives in memory; it is rebuilt
empty whenever a server starts, which is all tests and the demo need.

The keys that sign checkpoints and promises, and the integrated time, are
parameters, so the forgery helpers can make entries that a verifier trusting
a different key, or the original time, must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .material import key_id

# Bounds the memory a long-running demo server can take.
MAX_ENTRIES = 100_000
ORIGIN = "localsigstore.invalid - centops-local-rekor"
_SHA256_HEX_CHARS = 64
_MAX_SIGNATURE_BYTES = 1024


class EntryError(ValueError):
    """A proposed log entry is malformed or its signature does not verify."""


class LogFullError(RuntimeError):
    """The log holds :data:`MAX_ENTRIES` entries and accepts no more."""


def leaf_hash(body: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256 over 0x00 and the entry body."""
    return hashlib.sha256(b"\x00" + body).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two strictly below ``size`` (``size`` >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def tree_hash(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash over leaf hashes (section 2.1)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node_hash(tree_hash(leaves[:k]), tree_hash(leaves[k:]))


def inclusion_path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 audit path for ``leaves[index]``, lowest level first (2.1.1)."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*inclusion_path(index, leaves[:k]), tree_hash(leaves[k:])]
    return [*inclusion_path(index - k, leaves[k:]), tree_hash(leaves[:k])]


def sign_checkpoint(
    *,
    tree_size: int,
    root_hash: bytes,
    key: ec.EllipticCurvePrivateKey,
    hint_key: ec.EllipticCurvePrivateKey | None = None,
    origin: str = ORIGIN,
) -> str:
    """A signed-note checkpoint for the tree head, signed by ``key``.

    The signature line starts with the first four bytes of the key ID of
    ``hint_key`` (default: ``key``), which lets a forgery claim to come from
    the trusted log while being signed by another key.
    """
    note = f"{origin}\n{tree_size}\n{base64.b64encode(root_hash).decode()}\n"
    signature = key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
    hint = key_id(hint_key or key)[:4]
    name = origin.split(" ", 1)[0]
    line = base64.b64encode(hint + signature).decode()
    return f"{note}\n\u2014 {name} {line}\n"


def sign_promise(
    *,
    body: bytes,
    integrated_time: int,
    log_index: int,
    key: ec.EllipticCurvePrivateKey,
) -> bytes:
    """The signed entry timestamp: ``key`` over the canonical JSON sigstore rebuilds."""
    payload = rfc8785.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "integratedTime": integrated_time,
            "logID": key_id(key).hex(),
            "logIndex": log_index,
        }
    )
    return key.sign(payload, ec.ECDSA(hashes.SHA256()))


@dataclass(frozen=True)
class LoggedEntry:
    """One entry as the log reported it when it was integrated."""

    body: bytes
    log_index: int
    tree_size: int
    root_hash: bytes
    proof: tuple[bytes, ...]
    checkpoint: str
    integrated_time: int
    log_id: bytes
    promise: bytes | None

    @property
    def uuid(self) -> str:
        """The entry's identifier: its leaf hash in hex."""
        return leaf_hash(self.body).hex()


class MerkleLog:
    """An append-only, thread-safe log signed by one key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self._leaves: list[bytes] = []
        self._lock = threading.Lock()

    def append(self, body: bytes, *, integrated_time: int) -> LoggedEntry:
        """Integrate ``body`` and return it with proof, checkpoint and promise.

        Raises :class:`LogFullError` once :data:`MAX_ENTRIES` is reached.
        """
        with self._lock:
            if len(self._leaves) >= MAX_ENTRIES:
                raise LogFullError(f"log holds {MAX_ENTRIES} entries; no more fit")
            self._leaves.append(leaf_hash(body))
            leaves = list(self._leaves)
        index, size = len(leaves) - 1, len(leaves)
        root = tree_hash(leaves)
        return LoggedEntry(
            body=body,
            log_index=index,
            tree_size=size,
            root_hash=root,
            proof=tuple(inclusion_path(index, leaves)),
            checkpoint=sign_checkpoint(tree_size=size, root_hash=root, key=self._key),
            integrated_time=integrated_time,
            log_id=key_id(self._key),
            promise=sign_promise(
                body=body,
                integrated_time=integrated_time,
                log_index=index,
                key=self._key,
            ),
        )


def hashedrekord_body(*, digest: bytes, signature: bytes, cert_pem: bytes) -> bytes:
    """The canonical (RFC 8785) ``hashedrekord`` 0.0.1 body Rekor stores."""
    return rfc8785.dumps(
        {
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
                "signature": {
                    "content": base64.b64encode(signature).decode(),
                    "publicKey": {"content": base64.b64encode(cert_pem).decode()},
                },
            },
        }
    )


def _field(document: Any, *path: str) -> Any:
    """``document[path[0]][path[1]]...`` or :class:`EntryError` naming the path."""
    for name in path:
        if not isinstance(document, dict) or name not in document:
            raise EntryError(f"proposed entry lacks {'.'.join(path)}")
        document = document[name]
    return document


def body_from_proposal(proposal: Any) -> bytes:
    """Check a proposed ``hashedrekord`` entry and return its canonical body.

    As Rekor does, the signature must verify over the digest with the key
    of the certificate in the entry. Raises :class:`EntryError`.
    """
    if _field(proposal, "kind") != "hashedrekord":
        raise EntryError(
            f"entry kind is {proposal.get('kind')!r}; expected hashedrekord"
        )
    if _field(proposal, "apiVersion") != "0.0.1":
        raise EntryError("entry apiVersion must be 0.0.1")
    if _field(proposal, "spec", "data", "hash", "algorithm") != "sha256":
        raise EntryError("entry hash algorithm must be sha256")
    digest_hex = str(_field(proposal, "spec", "data", "hash", "value"))
    sig_b64 = str(_field(proposal, "spec", "signature", "content"))
    cert_b64 = str(_field(proposal, "spec", "signature", "publicKey", "content"))
    if len(digest_hex) != _SHA256_HEX_CHARS:
        raise EntryError("entry digest is not a SHA-256 hex digest")
    try:
        digest = bytes.fromhex(digest_hex)
        signature = base64.b64decode(sig_b64, validate=True)
        cert_pem = base64.b64decode(cert_b64, validate=True)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise EntryError(f"entry field does not decode: {exc}") from exc
    if len(signature) > _MAX_SIGNATURE_BYTES:
        raise EntryError("entry signature is too long")
    _verify_prehashed(cert, signature, digest)
    canonical_pem = cert.public_bytes(serialization.Encoding.PEM)
    return hashedrekord_body(digest=digest, signature=signature, cert_pem=canonical_pem)


def _verify_prehashed(cert: x509.Certificate, signature: bytes, digest: bytes) -> None:
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise EntryError("entry certificate key is not an EC key")
    try:
        public_key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except Exception as exc:
        raise EntryError("entry signature does not verify over the digest") from exc


def rekor_v1_response(entry: LoggedEntry) -> dict[str, Any]:
    """The ``POST /api/v1/log/entries`` response body for ``entry``."""
    verification: dict[str, Any] = {
        "inclusionProof": {
            "checkpoint": entry.checkpoint,
            "hashes": [h.hex() for h in entry.proof],
            "logIndex": entry.log_index,
            "rootHash": entry.root_hash.hex(),
            "treeSize": entry.tree_size,
        }
    }
    if entry.promise is not None:
        verification["signedEntryTimestamp"] = base64.b64encode(entry.promise).decode()
    return {
        entry.uuid: {
            "body": base64.b64encode(entry.body).decode(),
            "integratedTime": entry.integrated_time,
            "logID": entry.log_id.hex(),
            "logIndex": entry.log_index,
            "verification": verification,
        }
    }


def bundle_tlog_entry(entry: LoggedEntry) -> dict[str, Any]:
    """``entry`` as a bundle ``tlogEntries`` item (protobuf JSON).

    An entry without a promise also goes without ``integratedTime``: the time
    is only trusted when a promise binds it.
    """
    b64 = base64.b64encode
    item: dict[str, Any] = {
        "logIndex": str(entry.log_index),
        "logId": {"keyId": b64(entry.log_id).decode()},
        "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
        "inclusionProof": {
            "logIndex": str(entry.log_index),
            "rootHash": b64(entry.root_hash).decode(),
            "treeSize": str(entry.tree_size),
            "hashes": [b64(h).decode() for h in entry.proof],
            "checkpoint": {"envelope": entry.checkpoint},
        },
        "canonicalizedBody": b64(entry.body).decode(),
    }
    if entry.promise is not None:
        item["integratedTime"] = str(entry.integrated_time)
        item["inclusionPromise"] = {"signedEntryTimestamp": b64(entry.promise).decode()}
    return item
