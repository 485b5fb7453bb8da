"""Every CentOps benchmark, written to ``docs/benchmarks.md``: ``make bench``.

Run as ``python -m centops.tools.bench [--only SECTION ...] [--output FILE]``.
Sections (each runnable alone with ``--only``):

1. ``validator``: ``centops validate`` against ``check-jsonschema`` on the
   same 1,000 generated manifests and the same schema, one process each;
2. ``signing``: :func:`centops.tools.bench_signing.run`;
3. ``noop``: a no-op poll (fresh ``centops-agent sync`` process, and
   ``Controller.sync`` inside one process) against a raw ``git fetch`` from
   the same smart-HTTP server, before and after 10,000 extra refs;
4. ``history``: the agent's :class:`~centops.agent.gitsource.LocalMirror`
   following a branch through 10,000 commits, its size against a full clone;
5. ``images``: :func:`centops.tools.bench_images.bench_pull`, and a second
   sync of the same images (nothing to pull) against the no-op poll.

Every figure is a ratio against a reference measured in the same run, on the
same machine, so numbers from different hosts are never compared directly.
Servers run on loopback only, each started here and stopped by its PID; all
files live in temporary folders that are removed afterwards.

Benchmarks are scripts, not tests: they do not run in CI, and a missed goal is
printed as MISSED rather than failing anything.

NOTE: figures are wall-clock medians on a possibly shared machine. Read the
ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import yaml

from centops.tools.localsigstore import LocalSigstore
from centops.tools.stack.clients import ISSUER, SIGNER, loopback_agent_config
from centops.tools.stack.gitserver import (
    ServerProcess,
    WorkRepo,
    git_auth_env,
    init_bare,
    isolated_git_env,
    run_git,
    spawn_http_server,
)

# -- constants -------------------------------------------------------------------

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT: Final = REPO_ROOT / "docs" / "benchmarks.md"
SCHEMA: Final = REPO_ROOT / "schemas" / "manifest.schema.json"
BIN: Final = Path(sys.executable).parent

SECTIONS: Final = ("validator", "signing", "noop", "history", "images")

VALIDATOR_MANIFESTS: Final = 1_000
VALIDATOR_RUNS: Final = 3
NOOP_RUNS: Final = 30
NOOP_WARMUP: Final = 3
EXTRA_REFS: Final = 10_000
BYTES_SAMPLE_POLLS: Final = 10
HISTORY_COMMITS: Final = 10_000
HISTORY_STEP: Final = 1_000
HISTORY_SHORT_STEPS: Final = 60
IMAGES: Final = 5
SECOND_SYNC_RUNS: Final = 5
SECOND_SYNC_LAYER_BYTES: Final = 1024 * 1024

GOAL_NOOP_PROCESS_RATIO: Final = 2.0
GOAL_NOOP_IN_PROCESS_RATIO: Final = 1.0
# "No growth" with 10,000 extra refs, allowing for run-to-run noise.
GOAL_REFS_GROWTH: Final = 1.10
GOAL_PULL_RATIO: Final = 1.15

COMMAND_TIMEOUT_S: Final = 600.0
POLL_TIMEOUT_S: Final = 60.0
STATS_SETTLE_S: Final = 0.3

TOKEN: Final = "centops-bench-token-5e1b"  # noqa: S105 - loopback only
CHANNEL: Final = "stable"
MANIFEST_PATH: Final = f"manifests/{CHANNEL}/manifest.yaml"


class BenchError(Exception):
    """A benchmark could not set itself up or a measured command failed."""


# -- results ---------------------------------------------------------------------


@dataclass
class Section:
    """One section of the report: a title, prose, tables, and goal verdicts."""

    title: str
    intro: str = ""
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    goals: list[tuple[str, bool]] = field(default_factory=list)

    def goal(self, text: str, met: bool) -> None:
        self.goals.append((text, met))

    def render(self) -> str:
        parts = [f"## {self.title}", ""]
        if self.intro:
            parts += [self.intro, ""]
        for table in self.tables:
            parts += [table, ""]
        for text, met in self.goals:
            parts.append(f"- Goal {'met' if met else '**MISSED**'}: {text}")
        if self.goals:
            parts.append("")
        for note in self.notes:
            parts.append(f"- {note}")
        if self.notes:
            parts.append("")
        return "\n".join(parts)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; the first column left-aligned, the others right."""
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else float("inf")


def kib(size: int) -> str:
    return f"{size / 1024:,.0f} KiB"


# -- shared machinery ------------------------------------------------------------


@contextlib.contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A private temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f"centops-bench-{name}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def patched_env(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for a block."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def loopback_env() -> dict[str, str | None]:
    """No proxy for anything: every server here is on loopback."""
    return {
        "HTTP_PROXY": None,
        "HTTPS_PROXY": None,
        "http_proxy": None,
        "https_proxy": None,
        "ALL_PROXY": None,
        "all_proxy": None,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def timed(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    expect: int = 0,
) -> tuple[float, bytes]:
    """Wall seconds of one process and its stdout; raise if its exit is wrong."""
    started = time.perf_counter()
    done = subprocess.run(
        list(argv),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != expect:
        detail = (done.stderr or done.stdout).decode("utf-8", "replace")[-800:]
        raise BenchError(f"{argv[0]} exited {done.returncode}: {detail}")
    return elapsed, done.stdout


def interleaved(
    calls: Sequence[Callable[[], object]], runs: int, *, warmup: int = NOOP_WARMUP
) -> list[list[float]]:
    """Seconds per call of each, alternating so drift hits all alike."""
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for call, sink in zip(calls, times, strict=True):
            started = time.perf_counter()
            call()
            sink.append(time.perf_counter() - started)
    return times


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under ``path``, as ``du`` counts them."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in (folder, *(os.path.join(folder, f) for f in files)):
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(name).st_blocks * 512
    return total


@dataclass
class GitHost:
    """A smart-HTTP git server process serving ``root``, and its token."""

    root: Path
    server: ServerProcess

    def url(self, name: str) -> str:
        return self.server.repo_url(name)

    def wire_bytes(self) -> tuple[int, int]:
        """(requests, bytes both ways) so far, once the server has settled."""
        time.sleep(STATS_SETTLE_S)
        stats = self.server.read_stats()
        moved = int(stats.get("bytes_sent", 0)) + int(stats.get("bytes_received", 0))
        return int(stats.get("requests", 0)), moved


@contextlib.contextmanager
def git_host(folder: Path) -> Iterator[GitHost]:
    """Serve ``folder/repos`` from a separate process; stop it by PID."""
    root = folder / "repos"
    root.mkdir(parents=True, exist_ok=True)
    token_file = folder / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    server = spawn_http_server(
        root,
        token_file,
        pid_file=folder / "gitserver.pid",
        stats_file=folder / "gitserver-stats.json",
        log_file=folder / "gitserver.log",
        log_level="WARNING",
    )
    with server:
        yield GitHost(root, server)


def git_client_env() -> dict[str, str]:
    """A raw git client's environment: isolated config, token in GIT_CONFIG_*."""
    return git_auth_env(TOKEN, base=isolated_git_env())


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest_text(serial: int, components: list[dict[str, Any]]) -> bytes:
    now = datetime.now(UTC)
    body = {
        "schema_version": "v1",
        "channel": CHANNEL,
        "serial": serial,
        "issued_at": stamp(now - timedelta(minutes=1)),
        "expires": stamp(now + timedelta(days=30)),
        "components": components,
    }
    return yaml.safe_dump(body, sort_keys=False).encode()


@dataclass
class Fleet:
    """A signed manifest repository behind a git host, and one agent."""

    host: GitHost
    sigstore: LocalSigstore
    work: WorkRepo
    config: Path
    agent_env: dict[str, str]

    def publish(self, serial: int, components: list[dict[str, Any]]) -> str:
        data = manifest_text(serial, components)
        bundle = self.sigstore.sign(data, san=SIGNER, issuer=ISSUER).encode()
        sha = self.work.commit_files(
            {MANIFEST_PATH: data, MANIFEST_PATH + ".sigstore.json": bundle},
            f"serial {serial}",
        )
        self.work.push("main")
        return sha

    def agent_sync(self) -> tuple[float, bytes]:
        """One ``centops-agent sync --config F`` process: (seconds, stdout)."""
        return timed(
            [str(BIN / "centops-agent"), "sync", "--config", str(self.config)],
            env=self.agent_env,
        )


@contextlib.contextmanager
def fleet(folder: Path, *, docker: dict[str, Any] | None = None) -> Iterator[Fleet]:
    """A local Sigstore, a git host with ``fleet.git`` and an agent config."""
    with (
        patched_env(loopback_env()),
        LocalSigstore.create(folder / "sigstore") as sigstore,
        git_host(folder) as host,
    ):
        bare = init_bare(host.root / "fleet.git")
        work = WorkRepo.clone(bare, folder / "work")
        config = loopback_agent_config(
            folder,
            repo_url=host.url("fleet.git"),
            trusted_root=sigstore.trusted_root_path,
            token_variable="CENTOPS_TEST_TOKEN",  # noqa: S106 - a variable name
            client_id="bench",
            channel=CHANNEL,
        )
        if docker is not None:
            config["docker"] = docker
        config_path = folder / "agent.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        agent_env = {
            **os.environ,
            "CENTOPS_TEST_TOKEN": TOKEN,
            "CENTOPS_AGENT_CACHE_DIR": str(folder / "agent-cache"),
        }
        yield Fleet(host, sigstore, work, config_path, agent_env)


@contextlib.contextmanager
def file_server(files: Mapping[str, bytes]) -> Iterator[str]:
    """Serve ``files`` (path -> bytes) on 127.0.0.1 in a thread; yield base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- environment -----------------------------------------------------------------


def machine() -> Section:
    """The machine and the versions the figures were measured with."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(argv: list[str]) -> str:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"
        return done.stdout.strip().splitlines()[0] if done.stdout.strip() else "?"

    def package(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    rows = [
        ("CPU", cpu),
        ("cores", str(os.cpu_count())),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("python", platform.python_version()),
        ("git", version(["git", "--version"])),
        ("sigstore (python)", package("sigstore")),
        ("docker engine", version(["dockerd", "--version"])),
        ("docker CLI", version(["docker", "--version"])),
        ("check-jsonschema", package("check-jsonschema")),
        ("date", stamp(datetime.now(UTC))),
    ]
    section = Section("Machine and versions")
    section.tables.append(table(["", "value"], rows))
    return section


# -- 1. validator ----------------------------------------------------------------


def _component(n: int, i: int, earlier: list[str]) -> dict[str, Any]:
    """A valid component of a kind chosen by ``n`` and ``i``."""
    name = f"svc{n % 97}-part{i}"
    digest = hashlib.sha256(f"{n}/{i}".encode()).hexdigest()
    entry: dict[str, Any]
    kind = (n + i) % 4
    if kind == 0:
        entry = {
            "component": name,
            "version": f"v{i}.{n % 13}.0",
            "image": f"ghcr.io/org/{name}@sha256:{digest}",
        }
    elif kind == 1:
        entry = {
            "component": name,
            "version": f"v{i}.{n % 7}.1",
            "image": f"ghcr.io/org/{name}:v{i}",
            "sha256": digest,
        }
    elif kind == 2:
        entry = {
            "component": name,
            "version": f"{i}.{n % 5}",
            "url": f"https://downloads.example.com/{name}/install-{i}.sh",
            "sha256": digest,
            "size": 1000 + n + i,
        }
    else:
        entry = {
            "component": name,
            "version": f"{i}.0.{n % 11}",
            "url": f"https://downloads.example.com/{name}/file-{i}.conf",
            "sha256": digest,
            "size": 2000 + n,
            "path": f"etc/{name}/settings-{i}.conf",
        }
    if earlier and (n + i) % 3 == 0:
        entry["depends_on"] = earlier[-2:]
    if (n * 7 + i) % 17 == 0:
        entry["downgrade"] = False
    return entry


def write_manifests(folder: Path, count: int) -> list[Path]:
    """``count`` valid manifests, one per channel folder, 1 to 12 components."""
    now = datetime.now(UTC)
    paths = []
    for n in range(count):
        channel = f"ch{n:04d}"
        components: list[dict[str, Any]] = []
        for i in range(1 + n % 12):
            components.append(_component(n, i, [c["component"] for c in components]))
        body = {
            "schema_version": "v1",
            "channel": channel,
            "serial": 1 + n,
            "issued_at": stamp(now - timedelta(minutes=n % 60 + 1)),
            "expires": stamp(now + timedelta(days=1 + n % 60)),
            ("includes" if n % 5 == 0 else "components"): components,
        }
        path = folder / channel / "manifest.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        paths.append(path)
    return paths


def bench_validator(runs: int = VALIDATOR_RUNS) -> Section:
    section = Section("1. Validator: `centops validate` vs `check-jsonschema`")
    with scratch("validate") as folder:
        manifests = folder / "manifests"
        files = write_manifests(manifests, VALIDATOR_MANIFESTS)
        env = dict(os.environ)
        ours_argv = [
            str(BIN / "centops"),
            "validate",
            str(manifests),
            "--format",
            "json",
        ]
        theirs_argv = [
            str(BIN / "check-jsonschema"),
            "--schemafile",
            str(SCHEMA),
            *(str(f) for f in files),
        ]

        def ours() -> None:
            _, out = timed(ours_argv, env=env)
            report = json.loads(out)
            if not _all_valid(report, len(files)):
                raise BenchError(f"centops validate refused a manifest: {out[:400]!r}")

        def theirs() -> None:
            timed(theirs_argv, env=env)

        ours_s, theirs_s = interleaved([ours, theirs], runs, warmup=1)
    ours_med, theirs_med = statistics.median(ours_s), statistics.median(theirs_s)
    section.intro = (
        f"{VALIDATOR_MANIFESTS:,} generated valid manifests (1 to 12 components "
        "each, all four component shapes, `depends_on`, both list spellings), "
        "one process per tool over all files, median of "
        f"{runs} interleaved runs after one warm-up. `centops validate` applies "
        "the schema plus the loader's rules (strict YAML, unique names, "
        "dependency order, https URLs, safe paths, time window, channel/folder "
        "match); `check-jsonschema` applies the same JSON schema only, reading "
        "YAML through ruamel."
    )
    section.tables.append(
        table(
            ["command", "median wall time", "per manifest", "ratio"],
            [
                (
                    "`centops validate DIR --format json`",
                    ms(ours_med),
                    ms(ours_med / VALIDATOR_MANIFESTS),
                    "1.00",
                ),
                (
                    "`check-jsonschema --schemafile ... FILES`",
                    ms(theirs_med),
                    ms(theirs_med / VALIDATOR_MANIFESTS),
                    f"{ratio(theirs_med, ours_med):.2f}",
                ),
            ],
        )
    )
    section.goal(
        f"ours faster while doing more: centops / check-jsonschema = "
        f"{ratio(ours_med, theirs_med):.2f}",
        ours_med < theirs_med,
    )
    return section


def _all_valid(report: Any, expected: int) -> bool:
    """Whether a ``--format json`` report lists ``expected`` valid files."""
    files = report.get("files") if isinstance(report, dict) else None
    return (
        isinstance(files, list)
        and len(files) == expected
        and all(isinstance(f, dict) and f.get("valid") is True for f in files)
    )


# -- 2. signing ------------------------------------------------------------------


def bench_signing_section() -> Section:
    from centops.tools import bench_signing

    with patched_env(loopback_env()):
        results = bench_signing.run()
    section = Section("2. Signature verification")
    section.intro = (
        "`centops.tools.bench_signing.run()`: warm verification of one manifest "
        "through the agent's core against sigstore's own `Verifier` on the same "
        "bundle, and the import cost of `sigstore.verify` against a bare "
        "interpreter."
    )
    section.tables.append(bench_signing.render(results))
    section.goal(
        f"warm verify <= {results['goal_warm_ms']} ms "
        f"(ours / sigstore = {results['overhead_ratio']})",
        bool(results["goal_met"]),
    )
    return section


# -- 3. no-op poll ---------------------------------------------------------------


@dataclass
class PollFigures:
    process_s: float
    in_process_s: float
    git_s: float
    git_in_process_ref_s: float
    agent_bytes: float
    agent_requests: float
    git_bytes: float
    git_requests: float


def bench_noop(runs: int = NOOP_RUNS) -> Section:
    section = Section("3. No-op poll: agent vs raw `git fetch`")
    script = b"#!/bin/sh\nexit 0\n"
    with (
        scratch("noop") as folder,
        file_server({"/setup.sh": script}) as files_url,
        fleet(folder) as f,
    ):
        f.publish(1, [_script_component(files_url, script)])
        f.agent_sync()  # the first sync installs; every later one is a no-op
        _, out = f.agent_sync()
        if b"up to date" not in out:
            raise BenchError(f"the second sync took the full path: {out[:300]!r}")
        clone = folder / "clone"
        git_env = git_client_env()
        run_git(["clone", "--quiet", f.host.url("fleet.git"), str(clone)], env=git_env)
        before = measure_polls(f, clone, git_env, runs)
        f.work.add_refs(EXTRA_REFS)
        after = measure_polls(f, clone, git_env, runs)
        profile = import_profile(f)
    section.intro = (
        f"A smart-HTTP git server in its own process (`git http-backend` behind "
        f"a token check), a signed manifest, and an agent that has synced once. "
        f"Medians of {runs} interleaved runs after {NOOP_WARMUP} warm-ups. The "
        "reference is `git fetch origin main` in an existing clone from the same "
        "server, token in `GIT_CONFIG_*` environment variables. Bytes per poll "
        f"are the server's wire counters over {BYTES_SAMPLE_POLLS} polls."
    )
    rows: list[tuple[object, ...]] = []
    for label, p in (
        ("plain repository", before),
        (f"+{EXTRA_REFS:,} extra refs", after),
    ):
        rows += [
            (
                f"{label}: `centops-agent sync --config F` (process)",
                ms(p.process_s),
                f"{ratio(p.process_s, p.git_s):.2f}",
                f"{p.agent_bytes:,.0f} B, {p.agent_requests:.0f} req",
            ),
            (
                f"{label}: `Controller(config).sync()` in one process",
                ms(p.in_process_s),
                f"{ratio(p.in_process_s, p.git_in_process_ref_s):.2f}",
                "same request as above",
            ),
            (
                f"{label}: `git fetch origin main` (reference)",
                ms(p.git_s),
                "1.00",
                f"{p.git_bytes:,.0f} B, {p.git_requests:.0f} req",
            ),
        ]
    section.tables.append(
        table(["poll", "median wall time", "ratio to git fetch", "wire per poll"], rows)
    )
    proc_ratio = ratio(before.process_s, before.git_s)
    inproc_ratio = ratio(before.in_process_s, before.git_in_process_ref_s)
    growth = ratio(after.process_s, before.process_s)
    growth_in = ratio(after.in_process_s, before.in_process_s)
    byte_growth = ratio(after.agent_bytes, before.agent_bytes)
    section.goal(
        f"fresh process <= {GOAL_NOOP_PROCESS_RATIO:.0f}x git fetch, start-up "
        f"included: {proc_ratio:.2f}x",
        proc_ratio <= GOAL_NOOP_PROCESS_RATIO,
    )
    section.goal(
        f"in-process poll ~1x git fetch: {inproc_ratio:.2f}x",
        inproc_ratio <= GOAL_NOOP_IN_PROCESS_RATIO * 1.1,
    )
    section.goal(
        f"no growth with {EXTRA_REFS:,} extra refs (within "
        f"{(GOAL_REFS_GROWTH - 1) * 100:.0f}% noise): process {growth:.2f}x, "
        f"in-process {growth_in:.2f}x, bytes {byte_growth:.2f}x",
        max(growth, growth_in, byte_growth) <= GOAL_REFS_GROWTH,
    )
    section.notes.append(
        "Where a fresh process spends its time (`python -X importtime`, "
        "cumulative, top entries): " + profile
    )
    return section


def _script_component(files_url: str, script: bytes) -> dict[str, Any]:
    return {
        "component": "setup",
        "version": "1",
        "url": f"{files_url}/setup.sh",
        "sha256": hashlib.sha256(script).hexdigest(),
        "size": len(script),
    }


def measure_polls(
    f: Fleet, clone: Path, git_env: dict[str, str], runs: int
) -> PollFigures:
    """Process poll, in-process poll and raw fetch; wall time and wire bytes."""
    from centops.agent.config import load_config
    from centops.agent.controller import Controller

    def git_fetch() -> None:
        timed(["git", "fetch", "--quiet", "origin", "main"], env=git_env, cwd=clone)

    def agent_process() -> None:
        _, out = f.agent_sync()
        if b"up to date" not in out:
            raise BenchError(f"a no-op poll took the full path: {out[:300]!r}")

    process_s, git_s = interleaved([agent_process, git_fetch], runs)

    agent_vars = {
        k: f.agent_env[k] for k in ("CENTOPS_TEST_TOKEN", "CENTOPS_AGENT_CACHE_DIR")
    }
    with patched_env(agent_vars):
        controller = Controller(load_config(f.config))

        def in_process() -> None:
            outcome = controller.sync()
            if outcome.outcome != "up-to-date":
                raise BenchError(f"in-process poll found work: {outcome.outcome}")

        in_s, git_ref_s = interleaved([in_process, git_fetch], runs)

        def wire(call: Callable[[], None]) -> tuple[float, float]:
            req0, bytes0 = f.host.wire_bytes()
            for _ in range(BYTES_SAMPLE_POLLS):
                call()
            req1, bytes1 = f.host.wire_bytes()
            return (
                (req1 - req0) / BYTES_SAMPLE_POLLS,
                (bytes1 - bytes0) / BYTES_SAMPLE_POLLS,
            )

        agent_req, agent_bytes = wire(agent_process)
        git_req, git_bytes = wire(git_fetch)
    return PollFigures(
        process_s=statistics.median(process_s),
        in_process_s=statistics.median(in_s),
        git_s=statistics.median(git_s),
        git_in_process_ref_s=statistics.median(git_ref_s),
        agent_bytes=agent_bytes,
        agent_requests=agent_req,
        git_bytes=git_bytes,
        git_requests=git_req,
    )


def import_profile(f: Fleet, top: int = 6) -> str:
    """The heaviest top-level imports of one ``centops-agent sync`` process."""
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "centops.agent",
            "sync",
            "--config",
            str(f.config),
        ],
        env=f.agent_env,
        capture_output=True,
        text=True,
        timeout=POLL_TIMEOUT_S,
        check=False,
    )
    entries: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue  # the header line, or not an import line at all
        raw_name = fields[2]
        # One leading space marks a top-level import; nested ones are indented
        # further and already counted in their parent's cumulative time.
        if raw_name.startswith(" ") and not raw_name.startswith("  "):
            entries.append((int(fields[1]), raw_name.strip()))
    entries.sort(reverse=True)
    total = sum(us for us, _ in entries)
    shown = ", ".join(f"`{name}` {us / 1000:.1f} ms" for us, name in entries[:top])
    return f"{shown}; all top-level imports {total / 1000:.1f} ms."


# -- 4. history ------------------------------------------------------------------


def fast_import_history(bare: Path, commits: int) -> list[str]:
    """Write ``commits`` commits of one manifest file to ``bare``; their ids."""
    marks = bare.parent / "marks"
    chunks: list[bytes] = []
    when = 1_700_000_000
    for n in range(1, commits + 1):
        body = manifest_body_for_history(n)
        chunks.append(
            b"commit refs/heads/main\n"
            + f"mark :{n}\n".encode()
            + f"committer Bench <bench@centops.invalid> {when + n} +0000\n".encode()
            + b"data 0\n"
            + (f"from :{n - 1}\n".encode() if n > 1 else b"")
            + f"M 100644 inline {MANIFEST_PATH}\n".encode()
            + f"data {len(body)}\n".encode()
            + body
            + b"\n"
        )
    stream = b"".join(chunks)
    run_git(
        ["fast-import", "--quiet", f"--export-marks={marks}"],
        cwd=bare,
        input_bytes=stream,
    )
    ids = [""] * commits
    for line in marks.read_text().splitlines():
        mark, oid = line.split()
        ids[int(mark[1:]) - 1] = oid
    run_git(["repack", "-a", "-d", "--quiet"], cwd=bare)
    return ids


def manifest_body_for_history(n: int) -> bytes:
    """A manifest of ordinary size (about 1 KB) that changes on each commit."""
    lines = [
        "schema_version: v1",
        f"channel: {CHANNEL}",
        f"serial: {n}",
        'issued_at: "2026-01-01T00:00:00Z"',
        'expires: "2026-03-01T00:00:00Z"',
        "components:",
    ]
    for i in range(6):
        digest = hashlib.sha256(f"{n}/{i}".encode()).hexdigest()
        lines += [
            f"  - component: c{i}",
            f"    version: v1.{n // (i + 1)}.0",
            f"    image: ghcr.io/org/c{i}@sha256:{digest}",
        ]
    return ("\n".join(lines) + "\n").encode()


def bench_history() -> Section:
    from centops.agent.gitsource import Credentials, LocalMirror

    section = Section(
        f"4. History: a follower's mirror through {HISTORY_COMMITS:,} commits"
    )
    with scratch("history") as folder, git_host(folder) as host:
        bare = init_bare(host.root / "history.git")
        started = time.perf_counter()
        ids = fast_import_history(bare, HISTORY_COMMITS)
        import_s = time.perf_counter() - started
        url = host.url("history.git")
        credentials = Credentials(TOKEN)

        def move_tip(index: int) -> None:
            run_git(["update-ref", "refs/heads/main", ids[index]], cwd=bare)

        # (a) A follower that polls rarely: one sync per 1,000 commits.
        mirror = LocalMirror(
            folder / "sparse" / "mirror.git",
            url,
            "main",
            credentials=credentials,
            timeout=120.0,
        )
        rows: list[tuple[object, ...]] = []
        previous: str | None = None
        first_size = 0
        rewritten_flags = 0
        points = [0, *range(HISTORY_STEP - 1, HISTORY_COMMITS, HISTORY_STEP)]
        for index in points:
            move_tip(index)
            fetch_started = time.perf_counter()
            result = mirror.fetch(previous)
            fetch_s = time.perf_counter() - fetch_started
            if result.commit != ids[index]:
                raise BenchError(f"mirror at {result.commit}, expected {ids[index]}")
            rewritten_flags += int(result.history_rewritten)
            fetched = disk_usage(mirror.path)
            mirror.compact()
            compacted = disk_usage(mirror.path)
            first_size = first_size or compacted
            rows.append(
                (
                    f"{index + 1:,}",
                    kib(fetched),
                    kib(compacted),
                    f"{ratio(compacted, first_size):.2f}",
                    ms(fetch_s),
                    "yes" if result.history_rewritten else "no",
                )
            )
            previous = result.commit
        last_compacted = disk_usage(mirror.path)

        # (b) A follower that polls every commit for a while, compacting only
        # every 50 commits as the controller does: growth between compactions.
        dense = LocalMirror(
            folder / "dense" / "mirror.git",
            url,
            "main",
            credentials=credentials,
            timeout=120.0,
        )
        previous = None
        dense_max = 0
        dense_flags = 0
        base = HISTORY_COMMITS - HISTORY_SHORT_STEPS
        for step, index in enumerate(range(base, HISTORY_COMMITS)):
            move_tip(index)
            result = dense.fetch(previous)
            dense_flags += int(result.history_rewritten and previous is not None)
            dense_max = max(dense_max, disk_usage(dense.path))
            if (step + 1) % 50 == 0:
                dense.compact()
            previous = result.commit
        dense.compact()
        dense_final = disk_usage(dense.path)

        # Reference: a full clone of the same branch from the same server.
        full = folder / "full.git"
        run_git(["clone", "--quiet", "--bare", url, str(full)], env=git_client_env())
        full_size = disk_usage(full)
        server_size = disk_usage(bare)
        empty = folder / "empty.git"
        run_git(["init", "--bare", "--quiet", str(empty)])
        empty_size = disk_usage(empty)
    section.intro = (
        f"A bare repository of {HISTORY_COMMITS:,} commits of one ~1 KB manifest "
        f"(written with `git fast-import` in {import_s:.1f} s), served over smart "
        "HTTP. The agent's `LocalMirror` follows `main` as the controller does "
        "(`fetch(previous)`: depth 1, plus a depth-64 ancestry probe when the "
        "previous commit is not the parent), moving the tip 1,000 commits "
        "between syncs, then `compact()`. Sizes are disk usage of `mirror.git` "
        "(as `du`)."
    )
    section.tables.append(
        table(
            [
                "tip at commit",
                "mirror after fetch",
                "after compact()",
                "vs first commit",
                "fetch time",
                "reported rewritten",
            ],
            rows,
        )
    )
    section.tables.append(
        table(
            ["reference", "size", "ratio to the mirror"],
            [
                ("mirror after the last compact()", kib(last_compacted), "1.00"),
                (
                    f"full bare clone ({HISTORY_COMMITS:,} commits)",
                    kib(full_size),
                    f"{ratio(full_size, last_compacted):.1f}",
                ),
                (
                    "the server's repository",
                    kib(server_size),
                    f"{ratio(server_size, last_compacted):.1f}",
                ),
                (
                    f"dense follower ({HISTORY_SHORT_STEPS} syncs, one per commit): "
                    "largest between compactions",
                    kib(dense_max),
                    f"{ratio(dense_max, last_compacted):.2f}",
                ),
                (
                    "dense follower after compact()",
                    kib(dense_final),
                    f"{ratio(dense_final, last_compacted):.2f}",
                ),
            ],
        )
    )
    growth = ratio(last_compacted, first_size)
    section.goal(
        f"mirror size independent of history: after {HISTORY_COMMITS:,} commits "
        f"it is {growth:.2f}x its size after the first",
        growth <= GOAL_REFS_GROWTH,
    )
    if rewritten_flags > 1:
        section.notes.append(
            f"{rewritten_flags} of {len(points)} sparse syncs reported "
            "`history_rewritten` although history was only appended: the "
            f"previous tip was {HISTORY_STEP} commits back, beyond the "
            "64-commit ancestry probe, so a follower that polls rarely "
            "logs a false force-push warning."
        )
    section.notes.append(
        f"Most of the mirror is git's own skeleton: an empty `git init --bare` "
        f"takes {kib(empty_size)} here. A sparse sync costs three fetches "
        "(depth 1, the depth-64 probe, depth 1 again), hence its fetch time."
    )
    section.notes.append(
        f"Dense follower: {dense_flags} false rewrite reports over "
        f"{HISTORY_SHORT_STEPS - 1} parent-to-child syncs."
    )
    return section


# -- 5. images -------------------------------------------------------------------


def bench_images_section() -> Section:
    from centops.tools.bench_images import bench_pull

    section = Section("5. Images: agent install vs `docker pull`; second sync")
    with scratch("images") as folder:
        pull = bench_pull(folder / "pull", images=IMAGES)
        second = second_sync(folder / "second")
    ours, cli = pull["centops_total_s"], pull["docker_cli_total_s"]
    pull_ratio = ratio(ours, cli)
    rows = [
        (f"image {n}", f"{a:.3f} s", f"{b:.3f} s", f"{ratio(a, b):.2f}")
        for n, (a, b) in enumerate(
            zip(pull["centops_s"], pull["docker_cli_s"], strict=True)
        )
    ]
    rows.append(("total", f"{ours:.3f} s", f"{cli:.3f} s", f"{pull_ratio:.2f}"))
    section.intro = (
        f"`centops.tools.bench_images.bench_pull`: {IMAGES} images that share "
        f"nothing ({pull['layer_bytes'] // (1024 * 1024)} MiB random layer "
        "each) from a private registry into a private engine (both on "
        "loopback), pulled by digest through the agent's `ImageInstaller` and "
        "with `docker pull`, the image removed between the two."
    )
    section.tables.append(
        table(["image", "ImageInstaller", "docker pull", "ratio"], rows)
    )
    section.goal(
        f"install <= {GOAL_PULL_RATIO}x docker pull: {pull_ratio:.2f}x",
        pull_ratio <= GOAL_PULL_RATIO,
    )
    section.tables.append(
        table(
            [
                "`centops-agent sync --config F` (process)",
                "median wall time",
                "ratio to no-op poll",
            ],
            [
                (
                    "first sync: install the 5 images",
                    ms(second["first_s"]),
                    f"{ratio(second['first_s'], second['noop_s']):.1f}",
                ),
                (
                    f"new serial, same 5 images (no pull), median of "
                    f"{SECOND_SYNC_RUNS}",
                    ms(second["second_s"]),
                    f"{ratio(second['second_s'], second['noop_s']):.1f}",
                ),
                ("no-op poll (reference)", ms(second["noop_s"]), "1.00"),
            ],
        )
    )
    section.notes.append(
        "The second sync publishes a new signed serial naming the same digests, "
        "so the agent fetches, verifies and checks each image in the engine "
        "but pulls nothing. Where it spends its time (cProfile, cumulative, "
        "inflated by the profiler): " + second["profile"]
    )
    section.notes.append(
        "Its top-level imports (`python -X importtime`, cumulative): "
        + second["imports"]
    )
    return section


def second_sync(folder: Path) -> dict[str, Any]:
    """A full sync that finds every image in place, against the no-op poll."""
    from .stack import build_app, push_image, start_stack, stop_stack
    from .stack.images import AppKind, app_config, app_layers

    binary = build_app(folder / "cache").read_bytes()
    stack = start_stack(folder / "stack")
    try:
        components = []
        for n in range(IMAGES):
            digest = push_image(
                stack.registry.url,
                f"second/app{n}",
                "v1",
                layers=[*app_layers(binary), {"/payload": _payload(n)}],
                config=app_config(AppKind.HEALTHY, version=f"second-{n}"),
            )
            components.append(
                {
                    "component": f"app{n}",
                    "version": "1",
                    "image": f"{stack.registry.host}/second/app{n}@{digest}",
                }
            )
        with fleet(folder / "fleet", docker={"host": stack.daemon.docker_host}) as f:
            f.publish(1, components)
            first_s, _ = f.agent_sync()
            noop = [f.agent_sync()[0] for _ in range(NOOP_RUNS // 3)]
            seconds = []
            for serial in range(2, 2 + SECOND_SYNC_RUNS):
                f.publish(serial, components)
                elapsed, out = f.agent_sync()
                if b"up to date" in out:
                    raise BenchError("the second sync took the no-op path")
                seconds.append(elapsed)
                noop.append(f.agent_sync()[0])
            profile = profile_full_sync(f, components, 2 + SECOND_SYNC_RUNS)
            f.publish(3 + SECOND_SYNC_RUNS, components)
            imports = import_profile(f)
    finally:
        stop_stack(stack)
    return {
        "first_s": first_s,
        "second_s": statistics.median(seconds),
        "noop_s": statistics.median(noop),
        "profile": profile,
        "imports": imports,
    }


def _payload(n: int) -> Any:
    from .stack import LayerFile

    return LayerFile(
        hashlib.sha256(str(n).encode()).digest() * (SECOND_SYNC_LAYER_BYTES // 32)
    )


def profile_full_sync(f: Fleet, components: list[dict[str, Any]], serial: int) -> str:
    """cProfile of one more full no-pull sync process: the heaviest entries."""
    f.publish(serial, components)
    out_file = f.config.parent / "sync.prof"
    timed(
        [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(out_file),
            "-m",
            "centops.agent",
            "sync",
            "--config",
            str(f.config),
        ],
        env=f.agent_env,
    )
    import pstats

    stats = pstats.Stats(str(out_file))
    raw: Any = stats.stats  # type: ignore[attr-defined]  # undocumented, stable
    interesting = []
    for (filename, _, func), (_, _, _, cumulative, _) in raw.items():
        label = f"{Path(filename).name}:{func}"
        if func in ("<module>", "<built-in method builtins.exec>"):
            continue
        interesting.append((float(cumulative), label))
    interesting.sort(reverse=True)
    picked = [
        f"`{label}` {seconds * 1000:.0f} ms"
        for seconds, label in interesting
        if any(
            key in label
            for key in (
                "subprocess.py:run",
                "controller.py:_cycle",
                "controller.py:_decide",
                "signing.py:verify_manifest_signature",
                "_install_all",
                "is_current",
                "gitsource.py:fetch",
                "from_env",
                "read_files",
                "load_config",
                "compact",
            )
        )
    ]
    return ", ".join(picked[:10]) + "."


# -- driver ----------------------------------------------------------------------

RUNNERS: Final[dict[str, Callable[[], Section]]] = {
    "validator": bench_validator,
    "signing": bench_signing_section,
    "noop": bench_noop,
    "history": bench_history,
    "images": bench_images_section,
}


def render(sections: Sequence[Section]) -> str:
    head = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m centops.tools.bench`); do not edit "
        "by hand. Every figure is compared with a reference measured in the same "
        "run on the same machine: read the ratios, not the absolute times. A "
        "missed goal is reported as **MISSED**, not tuned away.",
        "",
    ]
    return "\n".join(head + [s.render() for s in sections]).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m centops.tools.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", action="append", choices=SECTIONS, default=[])
    parser.add_argument(
        "--output",
        type=Path,
        help=f"markdown file to write (default: {DEFAULT_OUTPUT} when every "
        "section runs; none with --only)",
    )
    args = parser.parse_args(argv)
    chosen = args.only or list(SECTIONS)
    output: Path | None = args.output or (None if args.only else DEFAULT_OUTPUT)
    sections = [machine()]
    print(sections[0].render(), flush=True)
    for name in chosen:
        started = time.perf_counter()
        try:
            section = RUNNERS[name]()
        except Exception as exc:  # one broken section must not hide the rest
            section = Section(f"{name}: could not run")
            section.notes.append(f"`{type(exc).__name__}`: {exc}")
            section.goal("section ran", False)
        section.notes.append(
            f"Section wall time {time.perf_counter() - started:.0f} s."
        )
        sections.append(section)
        print(section.render(), flush=True)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(render(sections))
        print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
