"""The local update controller: one sync cycle, in ordered steps.

Plan of :func:`sync` (each step either completes or leaves state from which
the next sync completes the cycle):

1. lock the state directory (a second agent exits at once);
2. poll: where is the followed branch now? If it is the commit already
   processed and nothing is pending, stop: a no-op poll does nothing else;
3. fetch that commit (depth 1) and read the manifest and bundle from it;
4. decide trust (:mod:`.trust`); a refusal changes nothing installed;
5. store the accepted manifest and raise the accepted serial *before*
   installing, so a crash cannot reopen a rollback window;
6. install components in manifest order, skipping those already in place;
   state is saved after each one; the first failure stops the sequence and
   the rest are reported as skipped;
7. emit telemetry into the outbox at each transition, then deliver it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import AgentConfig
from .errors import (
    CentOpsError,
    ConfigError,
    InstallError,
    RemoteContentError,
    TransportError,
)
from .fastpath import write_cache
from .gitsource import Credentials, LocalMirror, remote_tip
from .installers.base import (
    InstallContext,
    InstalledRecord,
    Installer,
    Progress,
    no_progress,
)
from .manifest import BUNDLE_SUFFIX, Component
from .state import (
    SETTLED_OUTCOMES,
    AgentState,
    Applied,
    ChannelMark,
    LastResult,
    StateDir,
)
from .telemetry.deliver import sinks_for
from .telemetry.events import ComponentOutcome, make_event
from .telemetry.outbox import EventTooLarge, Outbox
from .timeutil import format_timestamp, parse_timestamp

if TYPE_CHECKING:
    from .trust import Decision

log = logging.getLogger(__name__)


@dataclass
class SyncOutcome:
    """What one sync did; ``outcome`` is also the final telemetry outcome."""

    outcome: str  # up-to-date, succeeded, failed, refused, rolled-back, stale
    reason: str | None = None
    message: str = ""
    serial: int | None = None
    commit: str | None = None
    components: list[ComponentOutcome] = field(default_factory=list)
    history_rewritten: bool = False
    unreachable: bool = False  # the repository could not be reached


@dataclass(frozen=True)
class SyncOptions:
    progress: Progress = no_progress
    should_stop: Callable[[], bool] = lambda: False
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    deliver_telemetry: bool = True


def credentials_for(config: AgentConfig) -> Credentials | None:
    token = config.repository.token
    return token.credentials() if token is not None else None


def needs_work(
    state: AgentState, config: AgentConfig, tip: str | None, now: datetime
) -> bool:
    """Whether a poll that found ``tip`` must go on past step 2."""
    if tip is None or tip != state.processed_commit:
        return True
    if state.config_sha256 != config.sha256:
        return True
    last = state.last_result
    if last is None or last.outcome not in SETTLED_OUTCOMES:
        return True
    # A frozen repository must not hide an expired manifest: re-check once due.
    return (
        state.applied is not None
        and _expired(state.applied.expires, now)
        and (last.outcome != "stale")
    )


def heartbeat_due(state: AgentState, config: AgentConfig, now: datetime) -> bool:
    """Whether an idle client should report that it is alive."""
    every = config.telemetry.heartbeat_seconds
    if not config.telemetry.enabled or every is None:
        return False
    last = state.last_report_at
    return last is None or parse_timestamp(last) + timedelta(seconds=every) <= now


def _expired(expires: str, now: datetime) -> bool:
    return parse_timestamp(expires) <= now


class Controller:
    def __init__(
        self,
        config: AgentConfig,
        *,
        options: SyncOptions | None = None,
        installers: dict[str, Installer] | None = None,
    ) -> None:
        self.config = config
        self.options = options or SyncOptions()
        self.dirs = StateDir(config.state_dir)
        self.installers = installers or default_installers()
        self.outbox = Outbox(
            self.dirs.outbox,
            sinks_for(config),
            max_events=config.telemetry.outbox_max_events,
        )

    # -- the cycle --------------------------------------------------------------

    def sync(self) -> SyncOutcome:
        with self.dirs.locked():
            state = self.dirs.load()
            try:
                result = self._cycle(state)
            except TransportError as exc:
                result = SyncOutcome(
                    "failed", exc.reason, exc.message, unreachable=True
                )
                self._finish(state, result, commit=state.seen_commit)
            except RemoteContentError as exc:  # refused before a decision
                result = SyncOutcome("refused", exc.reason, exc.message)
                self._finish(state, result, commit=state.seen_commit)
            except ConfigError as exc:  # a person must act; report it, then stop
                failed = SyncOutcome("failed", exc.reason, exc.message)
                self._finish(state, failed, commit=state.seen_commit)
                raise
            except Exception as exc:  # the backstop: record, report, re-raise
                log.exception("sync failed unexpectedly")
                failed = SyncOutcome(
                    "failed", "internal-error", f"{type(exc).__name__}: {exc}"
                )
                self._finish(state, failed, commit=state.seen_commit)
                raise
        # Delivery runs after the lock is released: a slow receiver must not
        # hold up the next poll. Each sink serialises its own deliveries.
        if self.options.deliver_telemetry and self.config.telemetry.enabled:
            self._deliver()
        return result

    def _cycle(self, state: AgentState) -> SyncOutcome:
        config = self.config
        now = self.options.now()
        credentials = credentials_for(config)

        # 2. Poll.
        tip = remote_tip(
            config.repository.url,
            config.repository.branch,
            credentials=credentials,
            timeout=float(config.repository.timeout_seconds),
            ca_bundle=config.repository.ca_bundle,
        )
        if tip is None:
            raise TransportError(
                f"branch {config.repository.branch!r} not found on the repository",
                reason="git-ref-missing",
            )
        self._touch_last_poll(now)
        if not needs_work(state, config, tip, now) and not self._outbox_pending():
            if heartbeat_due(state, config, now):
                self._emit(
                    "client.alive", "reported", serial=state.highest_serial, commit=tip
                )
                state.last_report_at = format_timestamp(now)
                self.dirs.save(state)
            write_cache(config)
            return SyncOutcome("up-to-date", serial=state.highest_serial, commit=tip)

        # 3. Fetch the commit and read the manifest and its bundle from it.
        mirror = LocalMirror(
            self.dirs.mirror,
            config.repository.url,
            config.repository.branch,
            credentials=credentials,
            timeout=float(config.repository.timeout_seconds),
        )
        fetched = mirror.fetch(state.seen_commit)
        commit = fetched.commit
        if fetched.history_rewritten:
            log.warning(
                "history of %s was rewritten: %s is not an ancestor of %s",
                config.repository.branch,
                fetched.previous,
                commit,
            )
        state.seen_commit = commit
        path = config.manifest_path
        blobs = mirror.read_files(commit, [path, path + BUNDLE_SUFFIX])
        manifest_bytes, bundle_bytes = blobs[path], blobs[path + BUNDLE_SUFFIX]

        # 4. Decide.
        decision = self._decide(state, manifest_bytes, bundle_bytes, now, path)
        extra = {
            "history_rewritten": fetched.history_rewritten,
            "previous_commit": fetched.previous,
        }
        if not decision.accepted:
            outcome = "stale" if decision.reason == "expired" else "refused"
            log.warning("refused manifest at %s: %s", commit[:12], decision.message)
            result = SyncOutcome(
                outcome,
                decision.reason,
                decision.message,
                serial=decision.manifest.serial if decision.manifest else None,
                commit=commit,
                history_rewritten=fetched.history_rewritten,
            )
            self._finish(state, result, commit=commit, extra=extra)
            return result
        manifest = decision.manifest
        assert manifest is not None and manifest_bytes is not None  # noqa: S101

        # 5. Store and raise the serial before installing anything.
        applied = state.applied
        if decision.is_resume and applied and applied.sha256 == manifest.sha256:
            applied.commit = commit  # the same manifest, reached by a new commit
        else:
            self.dirs.store_manifest(
                manifest.serial, manifest_bytes, bundle_bytes or b""
            )
            state.channels[manifest.channel] = ChannelMark(
                manifest.serial, manifest.sha256
            )
            state.applied = Applied(
                serial=manifest.serial,
                sha256=manifest.sha256,
                commit=commit,
                expires=format_timestamp(manifest.expires),
                accepted_at=format_timestamp(now),
            )
            log.info(
                "accepted %s serial %d at %s",
                manifest.channel,
                manifest.serial,
                commit[:12],
            )
        state.channel = manifest.channel
        self.dirs.save(state)
        self._emit(
            "sync.started",
            "started",
            serial=manifest.serial,
            sha=manifest.sha256,
            commit=commit,
            extra=extra,
        )

        # 6. Install in order.
        outcomes, failure = self._install_all(
            state, list(manifest.components), manifest.serial
        )
        if failure is None:
            result = SyncOutcome(
                "succeeded", None, f"serial {manifest.serial} installed"
            )
        else:
            result = SyncOutcome(
                "rolled-back" if failure.reason == "rolled-back" else "failed",
                failure.reason,
                failure.message,
            )
        result.serial, result.commit, result.components = (
            manifest.serial,
            commit,
            outcomes,
        )
        result.history_rewritten = fetched.history_rewritten
        self._finish(state, result, commit=commit, sha=manifest.sha256, extra=extra)
        mirror.compact_if_needed(max_loose_objects=200)
        return result

    def _decide(
        self,
        state: AgentState,
        manifest_bytes: bytes | None,
        bundle_bytes: bytes | None,
        now: datetime,
        path: str,
    ) -> Decision:
        from .signing import IdentityPolicy, verify_manifest_signature
        from .trust import TrustState, decide

        trust = self.config.trust
        mark = state.mark(self.config.channel)
        policy = IdentityPolicy(
            issuer=trust.issuer,
            identities=trust.identities,
            repository=trust.repository,
            ref=trust.ref,
        )

        def check(manifest: bytes, bundle: bytes | None) -> Any:
            return verify_manifest_signature(
                trusted_root=trust.trusted_root,
                policy=policy,
                manifest=manifest,
                bundle=bundle,
            )

        return decide(
            manifest_bytes=manifest_bytes,
            bundle_bytes=bundle_bytes,
            state=TrustState(
                channel=self.config.channel,
                highest_serial=mark.serial if mark else 0,
                accepted_sha256=mark.sha256 if mark else None,
            ),
            now=now,
            clock_skew=timedelta(seconds=trust.clock_skew_seconds),
            check_signature=check,
            source=path,
            allow_insecure_http=self.config.insecure_allow_http_loopback,
        )

    def _install_all(
        self, state: AgentState, components: list[Component], serial: int
    ) -> tuple[list[ComponentOutcome], CentOpsError | None]:
        outcomes: list[ComponentOutcome] = []
        failure: CentOpsError | None = None
        for component in components:
            if failure is not None or self.options.should_stop():
                why = "an earlier component failed" if failure else "agent stopping"
                outcomes.append(self._outcome(component, "skipped", 0, "skipped", why))
                failure = failure or InstallError(
                    "stopped before finishing; the next sync resumes",
                    reason="interrupted",
                )
                continue
            started = time.monotonic()
            try:
                did = self._install_one(state, component, serial)
            except Exception as exc:  # any fault fails this component, cleanly
                if not isinstance(exc, CentOpsError):
                    log.exception("%s: unexpected error", component.name)
                    exc = InstallError(
                        f"{type(exc).__name__}: {exc}", reason="internal-error"
                    )
                failure = exc
                ms = int((time.monotonic() - started) * 1000)
                outcome = "rolled-back" if exc.reason == "rolled-back" else "failed"
                log.error(
                    "%s %s %s: %s",
                    component.name,
                    component.version,
                    outcome,
                    exc.message,
                )
                outcomes.append(
                    self._outcome(component, outcome, ms, exc.reason, exc.message)
                )
                continue
            ms = int((time.monotonic() - started) * 1000)
            outcomes.append(self._outcome(component, did, ms))
        return outcomes, failure

    def _install_one(self, state: AgentState, component: Component, serial: int) -> str:
        installer = self.installers.get(component.kind)
        if installer is None:
            raise InstallError(
                f"no {component.kind} installer on this agent",
                reason=f"no-{component.kind}-installer",
            )
        work = self.dirs.work / component.name
        work.mkdir(parents=True, exist_ok=True)
        ctx = InstallContext(
            config=self.config,
            serial=serial,
            work_dir=work,
            log_dir=self.dirs.logs,
            progress=self.options.progress,
        )
        record = state.components.get(component.name)
        if installer.is_current(component, record, ctx):
            if record is None or record.digest != component.digest:
                state.components[component.name] = self._record(component, serial, {})
                self.dirs.save(state)
            return "current"
        log.info(
            "installing %s %s (%s)", component.name, component.version, component.kind
        )
        result = installer.install(component, ctx)
        state.components[component.name] = self._record(
            component, serial, result.detail
        )
        self.dirs.save(state)
        self._emit(
            f"component.{result.outcome}",
            "reported",
            serial=serial,
            components=[self._outcome(component, result.outcome, 0)],
        )
        return result.outcome

    def _record(
        self, component: Component, serial: int, detail: dict[str, Any]
    ) -> InstalledRecord:
        return InstalledRecord(
            name=component.name,
            kind=component.kind,
            version=component.version,
            digest=component.digest,
            serial=serial,
            installed_at=format_timestamp(self.options.now()),
            detail=detail,
        )

    @staticmethod
    def _outcome(
        component: Component,
        outcome: str,
        ms: int,
        reason: str | None = None,
        message: str | None = None,
    ) -> ComponentOutcome:
        return ComponentOutcome(
            component=component.name,
            kind=component.kind,
            version=component.version,
            digest=component.digest,
            outcome=outcome,
            duration_ms=ms,
            reason=reason,
            message=message,
        )

    # -- bookkeeping ---------------------------------------------------------------

    def _finish(
        self,
        state: AgentState,
        result: SyncOutcome,
        *,
        commit: str | None,
        sha: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Record the final outcome, and emit it if it is a transition."""
        now = format_timestamp(self.options.now())
        previous = state.last_result
        repeated = (
            previous is not None
            and previous.outcome == result.outcome
            and previous.reason == result.reason
            and previous.commit == commit
        )
        state.last_result = LastResult(
            outcome=result.outcome,
            at=now,
            commit=commit,
            serial=result.serial,
            reason=result.reason,
            message=result.message[:2000],
        )
        if result.outcome in SETTLED_OUTCOMES:
            state.processed_commit = commit
        state.config_sha256 = self.config.sha256
        if not (repeated and result.outcome != "succeeded"):
            state.last_report_at = now
        self.dirs.save(state)
        if result.outcome in SETTLED_OUTCOMES:
            write_cache(self.config)
        if repeated and result.outcome != "succeeded":
            return  # events on transitions only; a retried failure is not news
        self._emit(
            f"update.{result.outcome}",
            result.outcome,
            serial=result.serial,
            sha=sha,
            commit=commit,
            components=result.components,
            reason=result.reason,
            message=result.message,
            extra=extra,
        )

    def _emit(
        self,
        kind: str,
        outcome: str,
        *,
        serial: int | None = None,
        sha: str | None = None,
        commit: str | None = None,
        components: list[ComponentOutcome] | None = None,
        reason: str | None = None,
        message: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Queue one event. Telemetry never changes what a sync did: a failure
        to record it is logged, not raised."""
        if not self.config.telemetry.enabled or not self.outbox.sinks:
            return

        def build(parts: list[ComponentOutcome] | None) -> dict[str, Any]:
            return make_event(
                kind=kind,
                client_id=self.config.client_id,
                channel=self.config.channel,
                outcome=outcome,
                serial=serial,
                manifest_sha256=sha,
                commit=commit,
                components=parts,
                reason=reason,
                message=message,
                extra=extra,
                now=self.options.now(),
            )

        try:
            try:
                self.outbox.emit(build(components))
            except EventTooLarge:
                # A manifest of many components: keep those that need a look.
                self.outbox.emit(build(_notable(components or [])))
        except (OSError, ValueError) as exc:
            log.warning("telemetry event %s not recorded: %s", kind, exc)

    def _outbox_pending(self) -> bool:
        return any(self.outbox.counts().values())

    def _deliver(self) -> None:
        try:
            from .telemetry.deliver import deliver_all
        except ImportError:  # pragma: no cover - sinks not installed
            return
        for sink in self.outbox.sinks:
            self.outbox.take_dropped_report(
                sink, client_id=self.config.client_id, channel=self.config.channel
            )
        try:
            deliver_all(self.config, self.outbox)
        except CentOpsError as exc:
            log.warning("telemetry delivery failed: %s", exc.message)

    def _touch_last_poll(self, now: datetime) -> None:
        write_last_poll(self.dirs.last_poll, now)


def _notable(components: list[ComponentOutcome]) -> list[ComponentOutcome]:
    """The components whose outcome is news, with short messages."""
    return [
        replace(c, message=(c.message or "")[:200] or None)
        for c in components
        if c.outcome not in ("current", "skipped")
    ][:32]


def write_last_poll(path: Path, now: datetime) -> None:
    """Informational only (``status``), so not fsynced: a lost write is harmless."""
    try:
        temp = path.with_name(path.name + ".tmp")
        temp.write_text(format_timestamp(now))
        temp.replace(path)
    except OSError:
        pass


def default_installers() -> dict[str, Installer]:
    from .installers.file import FileInstaller
    from .installers.script import ScriptInstaller

    installers: dict[str, Installer] = {
        "script": ScriptInstaller(),
        "file": FileInstaller(),
    }
    try:
        from .installers.image import ImageInstaller
    except ImportError:
        pass  # image components then fail with "no image installer"
    else:
        installers["image"] = ImageInstaller()
    return installers


@dataclass(frozen=True)
class CheckResult:
    update_waiting: bool
    tip: str
    processed: str | None
    reason: str


def check(config: AgentConfig) -> CheckResult:
    """Whether a sync would do work, without installing or fetching objects."""
    dirs = StateDir(config.state_dir)
    state = dirs.load()
    tip = remote_tip(
        config.repository.url,
        config.repository.branch,
        credentials=credentials_for(config),
        timeout=float(config.repository.timeout_seconds),
        ca_bundle=config.repository.ca_bundle,
    )
    if tip is None:
        raise TransportError(
            f"branch {config.repository.branch!r} not found", reason="git-ref-missing"
        )
    waiting = needs_work(state, config, tip, datetime.now(UTC))
    if tip != state.processed_commit:
        reason = "new commit"
    elif waiting:
        reason = "a full sync is due (unfinished sync, new configuration or expiry)"
    else:
        reason = "up to date"
    return CheckResult(waiting, tip, state.processed_commit, reason)
