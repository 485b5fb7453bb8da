"""The convenience API: one local Sigstore instance living in one directory.

Directory layout (all written by this package):

- ``trusted_root.json``: the trust root to pass explicitly to a verifier;
- ``trust_config.json``: a ``ClientTrustConfig`` pointing at the running
  loopback services (written when they start, since it names their port);
- the throwaway CA, CT and log keys (mode 0600) and CA certificates;
- ``localsigstore.pid`` while ``python -m centops.tools.localsigstore serve``
  runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

from . import forge, oidc
from .material import (
    TrustMaterial,
    dump_json,
    generate_material,
    has_material,
    load_material,
    save_material,
    trust_config_document,
    trusted_root_document,
    write_atomic,
)
from .service import (
    DEFAULT_HOST,
    LocalSigstoreServer,
    ServerThread,
    SigstoreServices,
)

_logger = logging.getLogger(__name__)

TRUSTED_ROOT_FILE = "trusted_root.json"
TRUST_CONFIG_FILE = "trust_config.json"
PID_FILE = "localsigstore.pid"


class NotRunningError(RuntimeError):
    """Signing needs the loopback services, and none has written its config."""


def sign_with_trust_config(trust_config_path: Path, data: bytes, *, token: str) -> str:
    """Sign ``data`` through sigstore's own client; return the bundle JSON.

    Uses ``SigningContext.from_trust_config`` on the given client trust
    config, so the CSR and the log entry go to the URLs it lists. Errors from
    sigstore (network, refused token, bad SCT) propagate unchanged.
    """
    # Imported here: sigstore's signing stack costs a noticeable import time.
    from sigstore.models import ClientTrustConfig
    from sigstore.oidc import IdentityToken
    from sigstore.sign import SigningContext

    config = ClientTrustConfig.from_json(trust_config_path.read_text(encoding="utf-8"))
    context = SigningContext.from_trust_config(config)
    with context.signer(IdentityToken(token), cache=True) as signer:
        return signer.sign_artifact(data).to_json()


class LocalSigstore:
    """A throwaway CA, CT log and transparency log, plus their services.

    Build one with :meth:`create` (new keys) or :meth:`open` (keys already in
    the directory). ``with instance:`` runs the loopback services for the
    block. Nothing here is trusted anywhere unless its ``trusted_root.json``
    is passed to a verifier explicitly.
    """

    def __init__(self, directory: Path, material: TrustMaterial) -> None:
        self.directory = directory
        self.material = material
        self._thread: ServerThread | None = None

    @classmethod
    def create(cls, directory: Path) -> LocalSigstore:
        """New keys in ``directory`` (created if needed) and its trusted root."""
        material = generate_material()
        save_material(material, directory)
        instance = cls(directory, material)
        write_atomic(
            instance.trusted_root_path, dump_json(trusted_root_document(material))
        )
        return instance

    @classmethod
    def open(cls, directory: Path) -> LocalSigstore:
        """The instance whose keys are in ``directory``; creates them if absent."""
        if not has_material(directory):
            return cls.create(directory)
        return cls(directory, load_material(directory))

    @property
    def trusted_root_path(self) -> Path:
        """The ``trusted_root.json`` that trusts exactly this instance."""
        return self.directory / TRUSTED_ROOT_FILE

    @property
    def trust_config_path(self) -> Path:
        """The client trust config; exists once services have started."""
        return self.directory / TRUST_CONFIG_FILE

    @property
    def pid_path(self) -> Path:
        """Where ``serve`` records its process ID while it runs."""
        return self.directory / PID_FILE

    @property
    def url(self) -> str:
        """Base URL of the in-process services; raises if they are not running."""
        if self._thread is None:
            raise NotRunningError("services are not running in this process")
        return self._thread.server.url

    def bind(self, *, host: str = DEFAULT_HOST, port: int = 0) -> LocalSigstoreServer:
        """A server bound to ``host:port`` (0: ephemeral) with its config written.

        The caller runs it (``serve_forever``) and closes it.
        """
        server = LocalSigstoreServer(
            SigstoreServices(self.material), host=host, port=port
        )
        self.write_trust_config(server.url)
        return server

    def write_trust_config(self, url: str) -> None:
        """Write ``trust_config.json`` sending signing clients to ``url``."""
        document = trust_config_document(self.material, url=url)
        write_atomic(self.trust_config_path, dump_json(document))

    def start(self, *, port: int = 0) -> LocalSigstore:
        """Serve Fulcio and Rekor on 127.0.0.1 in a daemon thread of this process."""
        if self._thread is not None:
            raise RuntimeError("services already running")
        self._thread = ServerThread(self.bind(port=port))
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the in-process services, if running."""
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    def __enter__(self) -> LocalSigstore:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def identity_token(
        self, *, san: str, issuer: str, lifetime_s: int = oidc.DEFAULT_LIFETIME_S
    ) -> str:
        """A token for which the local Fulcio certifies ``san`` under ``issuer``."""
        return oidc.token_for_identity(san=san, issuer=issuer, lifetime_s=lifetime_s)

    def sign(self, data: bytes, *, san: str, issuer: str) -> str:
        """Bundle JSON for ``data`` made by sigstore's client via the services.

        Works with the in-process services or with a ``serve`` subprocess on
        this directory. Raises :class:`NotRunningError` if neither has written
        ``trust_config.json``.
        """
        if not self.trust_config_path.is_file():
            raise NotRunningError(
                f"{self.trust_config_path} is missing; start() the services first"
            )
        token = self.identity_token(san=san, issuer=issuer)
        return sign_with_trust_config(self.trust_config_path, data, token=token)

    def forge_bundle(self, data: bytes, *, san: str, issuer: str, variant: str) -> str:
        """A bundle broken as ``variant`` says (see :data:`forge.VARIANTS`)."""
        return forge.forge_bundle(
            self.material, data, san=san, issuer=issuer, variant=variant
        )
