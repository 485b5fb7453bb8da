"""The agent's configuration: one YAML file, checked against the shipped schema.

The configuration names where secrets come from (an environment variable or a
file), never a secret itself. Relative paths are resolved against the folder
of the configuration file. The ``update_notification`` and
``update_execution`` blocks of the first CentOps configuration format are
accepted as written (``update_notification.endpoint`` is the repository URL).

:func:`load_config` validates with the JSON Schema (which imports jsonschema,
tens of milliseconds) unless ``validate=False``; the no-op poll does not read
this file's model at all (see :mod:`.fastpath`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import yamlstrict
from .errors import ConfigError
from .fsutil import read_regular

if TYPE_CHECKING:
    from .gitsource import Credentials

CONFIG_ENV = "CENTOPS_AGENT_CONFIG"
DEFAULT_CONFIG = Path("/etc/centops/agent.yaml")
DEFAULT_STATE_DIR = "/var/lib/centops-agent"
DEFAULT_TOKEN_ENV = "CENTOPS_TOKEN"  # noqa: S105 - a variable name
MAX_CONFIG_BYTES = 256 * 1024
MAX_TOKEN_BYTES = 16 * 1024


@dataclass(frozen=True)
class TokenSource:
    """Where a token is read from, and how it is presented."""

    env: str | None = None
    file: Path | None = None
    username: str = "x-access-token"
    scheme: str = "basic"

    def credentials(self) -> Credentials:
        """The token with how to present it; ConfigError as :meth:`read`."""
        from .gitsource import Credentials

        return Credentials(self.read(), username=self.username, scheme=self.scheme)

    def read(self) -> str:
        """The token; ConfigError when its source is missing or empty."""
        if self.env is not None:
            value = os.environ.get(self.env, "")
            where = f"environment variable {self.env}"
        else:
            assert self.file is not None  # noqa: S101 - guaranteed by the schema
            where = f"token file {self.file}"
            try:
                raw = read_regular(self.file, MAX_TOKEN_BYTES)
                value = raw.decode("utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"cannot read the {where}", reason="token-unavailable"
                ) from exc
            if len(value) > MAX_TOKEN_BYTES:
                raise ConfigError(
                    f"the {where} is too large", reason="token-unavailable"
                )
        if not value or not value.isprintable() or not value.isascii():
            raise ConfigError(
                f"the {where} is empty or holds a line break, control or "
                "non-ASCII character",
                reason="token-unavailable",
                hint="provide the repository token there (it is never logged)",
            )
        return value


@dataclass(frozen=True)
class RepositoryConfig:
    url: str
    branch: str = "main"
    manifest_path: str = "manifests/{channel}/manifest.yaml"
    token: TokenSource | None = None
    ca_bundle: Path | None = None
    timeout_seconds: int = 60
    insecure_allow_http_loopback: bool = False


@dataclass(frozen=True)
class TrustConfig:
    trusted_root: Path
    issuer: str
    identities: tuple[str, ...]
    repository: str | None = None
    ref: str | None = None
    clock_skew_seconds: int = 300


@dataclass(frozen=True)
class ContainerSpec:
    """How this client runs a component's image (never set by a manifest)."""

    name: str
    command: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, int], ...] = ()
    volumes: tuple[tuple[str, str], ...] = ()
    restart_policy: str = "unless-stopped"
    network: str | None = None
    health_timeout_seconds: int = 60
    healthy_after_seconds: int = 5


@dataclass(frozen=True)
class DockerConfig:
    host: str | None = None
    allowed_registries: tuple[str, ...] = ()
    credentials_file: Path | None = None
    pull_timeout_seconds: int = 900
    containers: tuple[tuple[str, ContainerSpec], ...] = ()

    def container(self, component: str) -> ContainerSpec | None:
        return dict(self.containers).get(component)


@dataclass(frozen=True)
class ResultsBranchConfig:
    enabled: bool = True
    url: str | None = None  # None: the manifest repository
    branch: str = "centops-results"
    token: TokenSource | None = None  # None: the repository's token
    max_attempts: int = 5


@dataclass(frozen=True)
class HttpSinkConfig:
    url: str
    token: TokenSource | None = None
    ca_bundle: Path | None = None
    batch: bool = True
    timeout_seconds: int = 10
    max_attempts: int = 4
    insecure_allow_http_loopback: bool = False


@dataclass(frozen=True)
class TelemetryConfig:
    enabled: bool = True
    outbox_max_events: int = 10_000
    # An idle client reports it is alive this often, so the fleet view can
    # tell "nothing to do" from "gone"; None: twice the poll frequency.
    heartbeat_seconds: int | None = None
    results_branch: ResultsBranchConfig = field(default_factory=ResultsBranchConfig)
    http: HttpSinkConfig | None = None


@dataclass(frozen=True)
class PollConfig:
    frequency_seconds: int = 3600
    jitter_seconds: int = 300
    max_backoff_seconds: int = 6 * 3600


@dataclass(frozen=True)
class AgentConfig:
    client_id: str
    channel: str
    repository: RepositoryConfig
    trust: TrustConfig
    state_dir: Path
    files_root: Path
    script_timeout_seconds: int = 600
    download_timeout_seconds: int = 60
    download_ca_bundle: Path | None = None
    insecure_allow_http_loopback: bool = False
    docker: DockerConfig = field(default_factory=DockerConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    poll: PollConfig = field(default_factory=PollConfig)
    log_format: str = "plain"
    log_level: str = "info"
    source: Path = Path()
    sha256: str = ""

    @property
    def manifest_path(self) -> str:
        return self.repository.manifest_path.replace("{channel}", self.channel)


def config_path(explicit: Path | None) -> Path:
    """The configuration file: ``--config``, else $CENTOPS_AGENT_CONFIG, else /etc."""
    if explicit is not None:
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG


def read_bytes(path: Path) -> bytes:
    try:
        return read_regular(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError(
            f"cannot read configuration {path}: {exc.strerror}",
            reason="config-unreadable",
            hint=f"pass --config, set {CONFIG_ENV}, or run `centops-agent init`",
        ) from exc


def load_config(path: Path, *, validate: bool = True) -> AgentConfig:
    """Read, check and build the configuration at ``path``.

    Raises ConfigError naming the file, line and field at fault.
    """
    data = read_bytes(path)
    return parse_config(data, path=path, validate=validate)


def parse_config(data: bytes, *, path: Path, validate: bool = True) -> AgentConfig:
    source = str(path)
    try:
        document = yamlstrict.load(data, source=source, max_bytes=MAX_CONFIG_BYTES)
    except yamlstrict.YamlError as exc:
        raise ConfigError(str(exc), reason="config-invalid") from exc
    value = document.value
    if not isinstance(value, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping", reason="config-invalid"
        )
    if validate:
        from .schemas import AGENT_CONFIG, schema_problems

        problems = schema_problems(AGENT_CONFIG, value)
        if problems:
            lines = []
            for where, message in problems:
                at = document.position_of(where)
                lines.append(f"  {source}:{at.line}:{at.column}: {message}")
            raise ConfigError(
                f"{source}: invalid configuration:\n" + "\n".join(lines),
                reason="config-invalid",
                hint="see `centops-agent init` for a commented example",
            )
    return _build(value, path.parent.resolve(), path, hashlib.sha256(data).hexdigest())


def _build(v: dict[str, Any], base: Path, path: Path, digest: str) -> AgentConfig:
    def p(text: str | None) -> Path | None:
        return None if text is None else (base / os.path.expanduser(text))

    note = v.get("update_notification") or {}
    execution = v.get("update_execution") or {}
    repo = dict(v.get("repository") or {})
    endpoint = note.get("endpoint")
    if endpoint and repo.get("url") and endpoint != repo["url"]:
        raise ConfigError(
            f"{path}: update_notification.endpoint and repository.url differ",
            reason="config-invalid",
            hint="give the repository URL once",
        )
    url = repo.get("url") or endpoint
    if not url:
        raise ConfigError(
            f"{path}: no repository URL: set repository.url "
            "(or update_notification.endpoint)",
            reason="config-invalid",
        )
    _check_repository_url(url, path, repo.get("insecure_allow_http_loopback", False))
    token = _token(repo.get("token"), p) or _note_token(note, p)
    trust = v["trust"]
    tele = v.get("telemetry") or {}
    results = tele.get("results_branch") or {}
    http = tele.get("http")
    poll = v.get("poll") or {}
    frequency = poll.get("frequency_seconds") or note.get("frequency_seconds") or 3600
    docker = v.get("docker") or {}
    downloads = v.get("downloads") or {}
    logging_ = v.get("logging") or {}
    telemetry_on = tele.get("enabled", True) and execution.get(
        "post_update_telemetry", True
    )
    config = AgentConfig(
        client_id=v["client_id"],
        channel=v["channel"],
        repository=RepositoryConfig(
            url=url if "://" in url else str(base / url),
            branch=repo.get("branch", "main"),
            manifest_path=repo.get(
                "manifest_path", "manifests/{channel}/manifest.yaml"
            ),
            token=token,
            ca_bundle=p(repo.get("ca_bundle")),
            timeout_seconds=repo.get("timeout_seconds", 60),
            insecure_allow_http_loopback=repo.get(
                "insecure_allow_http_loopback", False
            ),
        ),
        trust=TrustConfig(
            trusted_root=base / trust["trusted_root"],
            issuer=trust["issuer"],
            identities=tuple(trust["identities"]),
            repository=trust.get("repository"),
            ref=trust.get("ref"),
            clock_skew_seconds=trust.get("clock_skew_seconds", 300),
        ),
        state_dir=base / os.path.expanduser(v.get("state_dir", DEFAULT_STATE_DIR)),
        files_root=base / (v.get("files") or {}).get("root", "files"),
        script_timeout_seconds=(v.get("scripts") or {}).get("timeout_seconds", 600),
        download_timeout_seconds=downloads.get("timeout_seconds", 60),
        download_ca_bundle=p(downloads.get("ca_bundle")),
        insecure_allow_http_loopback=downloads.get(
            "insecure_allow_http_loopback", False
        ),
        docker=DockerConfig(
            host=docker.get("host"),
            allowed_registries=tuple(docker.get("allowed_registries") or ()),
            credentials_file=p(docker.get("credentials_file")),
            pull_timeout_seconds=docker.get("pull_timeout_seconds", 900),
            containers=tuple(
                (name, _container(name, spec))
                for name, spec in sorted((docker.get("containers") or {}).items())
            ),
        ),
        telemetry=TelemetryConfig(
            enabled=bool(telemetry_on),
            outbox_max_events=tele.get("outbox_max_events", 10_000),
            heartbeat_seconds=tele.get("heartbeat_seconds", 2 * frequency),
            results_branch=ResultsBranchConfig(
                enabled=results.get("enabled", True),
                url=results.get("url"),
                branch=results.get("branch", "centops-results"),
                token=_token(results.get("token"), p),
                max_attempts=results.get("max_attempts", 5),
            ),
            http=None
            if http is None
            else HttpSinkConfig(
                url=http["url"],
                token=_token(http.get("token"), p),
                ca_bundle=p(http.get("ca_bundle")),
                batch=http.get("batch", True),
                timeout_seconds=http.get("timeout_seconds", 10),
                max_attempts=http.get("max_attempts", 4),
                insecure_allow_http_loopback=http.get(
                    "insecure_allow_http_loopback", False
                ),
            ),
        ),
        poll=PollConfig(
            frequency_seconds=frequency,
            jitter_seconds=poll.get("jitter_seconds", min(300, frequency // 10)),
            max_backoff_seconds=poll.get("max_backoff_seconds", 6 * 3600),
        ),
        log_format=logging_.get("format", "plain"),
        log_level=logging_.get("level", "info"),
        source=path,
        sha256=digest,
    )
    _check_files(config, path)
    return config


def _check_files(config: AgentConfig, path: Path) -> None:
    """Local files the configuration names must be readable now, so a typo
    is a configuration error and not a network failure retried forever."""
    named = {
        "repository.ca_bundle": config.repository.ca_bundle,
        "downloads.ca_bundle": config.download_ca_bundle,
        "telemetry.http.ca_bundle": config.telemetry.http.ca_bundle
        if config.telemetry.http
        else None,
    }
    for field_name, file in named.items():
        if file is not None and not file.is_file():
            raise ConfigError(
                f"{path}: {field_name} {file} is not a readable file",
                reason="config-invalid",
            )


def _check_repository_url(url: str, path: Path, insecure_http: bool) -> None:
    """https (or ssh, git, file) only; plain http for loopback behind the flag."""
    scheme = url.partition("://")[0] if "://" in url else "file"
    if scheme in ("https", "ssh", "git", "file"):
        return
    if scheme == "http":
        from urllib.parse import urlsplit

        from .manifest import is_loopback_host

        if is_loopback_host(urlsplit(url).hostname or "") and insecure_http:
            return
        raise ConfigError(
            f"{path}: repository.url {url!r} uses plain http",
            reason="config-invalid",
            hint="use https; plain http is only for loopback, with "
            "repository.insecure_allow_http_loopback: true",
        )
    raise ConfigError(
        f"{path}: repository.url scheme {scheme!r} is not supported",
        reason="config-invalid",
    )


def _token(spec: dict[str, Any] | None, p: Any) -> TokenSource | None:
    if not spec:
        return None
    return TokenSource(
        env=spec.get("env"),
        file=p(spec.get("file")),
        username=spec.get("username", "x-access-token"),
        scheme=spec.get("scheme", "basic"),
    )


def _note_token(note: dict[str, Any], p: Any) -> TokenSource | None:
    kind = note.get("token_type")
    if kind == "environment_token":
        return TokenSource(env=note.get("token_env", DEFAULT_TOKEN_ENV))
    if kind == "file_token":
        if "token_file" not in note:
            raise ConfigError(
                "update_notification.token_type file_token needs token_file",
                reason="config-invalid",
            )
        return TokenSource(file=p(note["token_file"]))
    return None


def _container(name: str, spec: dict[str, Any]) -> ContainerSpec:
    return ContainerSpec(
        name=spec.get("name", f"centops-{name}"),
        command=tuple(spec.get("command") or ()),
        environment=tuple(sorted((spec.get("environment") or {}).items())),
        ports=tuple(sorted((spec.get("ports") or {}).items())),
        volumes=tuple(sorted((spec.get("volumes") or {}).items())),
        restart_policy=spec.get("restart_policy", "unless-stopped"),
        network=spec.get("network"),
        health_timeout_seconds=spec.get("health_timeout_seconds", 60),
        healthy_after_seconds=spec.get("healthy_after_seconds", 5),
    )
