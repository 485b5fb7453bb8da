"""Loopback HTTP services shaped like Fulcio and Rekor v1.

One ``ThreadingHTTPServer`` bound to 127.0.0.1 serves both APIs:

- ``POST /api/v2/signingCert``: a CSR and a bearer identity token in, a
  certificate chain (leaf with embedded SCT, intermediate, root) out.
- ``POST /api/v1/log/entries``: a ``hashedrekord`` proposal in, the
  integrated entry with inclusion proof, checkpoint and promise out.

Request bodies are capped at :data:`MAX_BODY_BYTES` and every connection has
a socket timeout. The server only ever binds a loopback address.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import fulcio, oidc, rekor
from .material import TrustMaterial, utc_now

_logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
SOCKET_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
SIGNING_CERT_PATH = "/api/v2/signingCert"
LOG_ENTRIES_PATH = "/api/v1/log/entries"
DEFAULT_HOST = "127.0.0.1"


class _BadRequest(Exception):
    """A request the local services refuse, with the status to answer."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


class SigstoreServices:
    """The request logic of the local Fulcio and Rekor, free of HTTP."""

    def __init__(self, material: TrustMaterial) -> None:
        self.material = material
        self.log = rekor.MerkleLog(material.log_key)

    def signing_cert(self, request: Any, authorization: str) -> dict[str, Any]:
        """Answer a Fulcio v2 ``signingCert`` request; raises ``_BadRequest``."""
        claims = _token_claims(authorization)
        public_key = _csr_public_key(request)
        try:
            identity = fulcio.identity_from_claims(claims)
        except fulcio.IdentityClaimError as exc:
            raise _BadRequest(str(exc)) from exc
        leaf = fulcio.issue_leaf(
            public_key=public_key,
            identity=identity,
            ca=self.material.ca,
            ct_key=self.material.ct_key,
            not_before=utc_now(),
        )
        pem = serialization.Encoding.PEM
        chain = [leaf, *self.material.ca.chain]
        certificates = [cert.public_bytes(pem).decode() for cert in chain]
        return {
            "signedCertificateEmbeddedSct": {"chain": {"certificates": certificates}}
        }

    def log_entry(self, proposal: Any) -> dict[str, Any]:
        """Answer a Rekor v1 ``POST log/entries``; raises ``_BadRequest``."""
        try:
            body = rekor.body_from_proposal(proposal)
            entry = self.log.append(body, integrated_time=int(time.time()))
        except rekor.EntryError as exc:
            raise _BadRequest(str(exc)) from exc
        except rekor.LogFullError as exc:
            raise _BadRequest(str(exc), HTTPStatus.INSUFFICIENT_STORAGE) from exc
        return rekor.rekor_v1_response(entry)


def _token_claims(authorization: str) -> dict[str, Any]:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _BadRequest("missing bearer identity token", HTTPStatus.UNAUTHORIZED)
    try:
        return oidc.read_claims(token.strip())
    except oidc.TokenError as exc:
        message = f"identity token refused: {exc}"
        raise _BadRequest(message, HTTPStatus.UNAUTHORIZED) from exc


def _csr_public_key(request: Any) -> ec.EllipticCurvePublicKey:
    """The CSR's P-256 key, once the CSR's proof of possession verifies."""
    encoded = (
        request.get("certificateSigningRequest") if isinstance(request, dict) else None
    )
    if not isinstance(encoded, str):
        raise _BadRequest("request lacks certificateSigningRequest")
    try:
        csr = x509.load_pem_x509_csr(base64.b64decode(encoded, validate=True))
    except ValueError as exc:
        raise _BadRequest(f"certificateSigningRequest does not decode: {exc}") from exc
    if not csr.is_signature_valid:
        raise _BadRequest("CSR signature does not verify (no proof of possession)")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise _BadRequest("CSR key must be EC P-256")
    return key


class _Handler(BaseHTTPRequestHandler):
    """Routes the two POST endpoints to :class:`SigstoreServices`."""

    server: LocalSigstoreServer
    timeout = SOCKET_TIMEOUT_S
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        try:
            request = self._read_json()
            if self.path == SIGNING_CERT_PATH:
                auth = self.headers.get("Authorization", "")
                answer = self.server.services.signing_cert(request, auth)
            elif self.path == LOG_ENTRIES_PATH:
                answer = self.server.services.log_entry(request)
            else:
                raise _BadRequest(f"no endpoint {self.path}", HTTPStatus.NOT_FOUND)
        except _BadRequest as exc:
            _logger.debug("refused %s: %s", self.path, exc)
            self._send(exc.status, {"code": int(exc.status), "message": str(exc)})
            return
        self._send(HTTPStatus.CREATED, answer)

    def do_GET(self) -> None:
        self._send(HTTPStatus.NOT_FOUND, {"code": 404, "message": "POST only"})

    def _read_json(self) -> Any:
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            raise _BadRequest("Content-Length required", HTTPStatus.LENGTH_REQUIRED)
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _BadRequest(
                f"body of {length} bytes exceeds {MAX_BODY_BYTES}",
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
        try:
            return json.loads(self.rfile.read(length))
        except ValueError as exc:
            raise _BadRequest(f"body is not JSON: {exc}") from exc

    def _send(self, status: HTTPStatus, document: dict[str, Any]) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("%s " + format, self.address_string(), *args)


class LocalSigstoreServer(ThreadingHTTPServer):
    """A loopback-only HTTP server carrying :class:`SigstoreServices`."""

    daemon_threads = True

    def __init__(
        self, services: SigstoreServices, *, host: str = DEFAULT_HOST, port: int = 0
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"refusing to bind {host!r}: only loopback is allowed")
        self.services = services
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. ``http://127.0.0.1:40123``."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class ServerThread:
    """Runs a :class:`LocalSigstoreServer` in a daemon thread of this process."""

    def __init__(self, server: LocalSigstoreServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="localsigstore", daemon=True
        )

    def start(self) -> None:
        """Start serving; returns at once."""
        self._thread.start()
        _logger.debug("local sigstore serving at %s", self.server.url)

    def stop(self) -> None:
        """Stop serving, close the socket and wait (bounded) for the thread."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=STOP_TIMEOUT_S)
