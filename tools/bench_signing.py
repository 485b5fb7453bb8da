"""Cost of offline signature verification: ``python -m centops.tools.bench_signing``.

Measures, against a throwaway local Sigstore (loopback only, nothing leaves
the machine):

1. warm verification of one manifest through
   :func:`centops.agent.signing.verify_manifest_signature`, against sigstore's
   own ``Verifier.verify_artifact`` on the same bundle in the same run (both
   parse the bundle JSON on every call, as the agent does);
2. the import cost of ``sigstore.verify`` in a fresh interpreter, against a
   bare ``python -c pass``, in wall time and peak resident memory.

:func:`run` returns the figures as a flat dict (for ``make bench``); running
the module prints them as a markdown table. The goal is at most
:data:`GOAL_WARM_MS` per warm verification through our core.

NOTE: figures are wall-clock medians on a shared machine; compare runs made
on the same host, and read the ratio rather than the absolute numbers.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from centops.agent.signing import IdentityPolicy, verify_manifest_signature
from centops.tools.localsigstore import LocalSigstore

GOAL_WARM_MS = 3.0
DEFAULT_ITERATIONS = 300
DEFAULT_IMPORT_RUNS = 7
WARMUP_CALLS = 5
SUBPROCESS_TIMEOUT_S = 60

ISSUER = "https://token.actions.githubusercontent.com"
SAN = "https://github.com/centops/fleet/.github/workflows/sign.yml@refs/heads/main"

# A manifest of typical size; its content does not matter to the verifier.
MANIFEST = (
    b"schema_version: v1\nchannel: stable\nserial: 1\n"
    b'issued_at: "2026-01-01T00:00:00Z"\nexpires: "2026-02-01T00:00:00Z"\n'
    b"includes:\n"
    + b"".join(
        f"  - component: c{n}\n    version: v1.{n}.0\n"
        f"    image: ghcr.io/org/c{n}:v1.{n}.0\n    sha256: {'ab' * 32}\n".encode()
        for n in range(8)
    )
)

# Prints the import's own time and the interpreter's peak resident set in KiB.
# VmHWM belongs to the new process image; getrusage's ru_maxrss is not used
# because Linux carries it over from the parent across exec.
_IMPORT_PROBE = (
    "import time\n"
    "t = time.perf_counter()\n"
    "{statement}\n"
    "t = time.perf_counter() - t\n"
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
    "print(t, hwm[0].split()[1] if hwm else 0)\n"
)


def run(
    *, iterations: int = DEFAULT_ITERATIONS, import_runs: int = DEFAULT_IMPORT_RUNS
) -> dict[str, float | int | bool]:
    """Measure and return the figures; see the module docstring."""
    results: dict[str, float | int | bool] = {"iterations": iterations}
    results.update(_warm_verification(iterations))
    results.update(_import_cost(import_runs))
    results["goal_warm_ms"] = GOAL_WARM_MS
    results["goal_met"] = results["ours_warm_ms"] <= GOAL_WARM_MS
    return results


def _warm_verification(iterations: int) -> dict[str, float]:
    from sigstore.models import Bundle, TrustedRoot
    from sigstore.verify import Verifier
    from sigstore.verify.policy import Identity

    with (
        tempfile.TemporaryDirectory(prefix="centops-bench-") as folder,
        _loopback_only(),
        LocalSigstore.create(Path(folder)) as sigstore,
    ):
        bundle = sigstore.sign(MANIFEST, san=SAN, issuer=ISSUER).encode()
        root = sigstore.trusted_root_path
        policy = IdentityPolicy(issuer=ISSUER, identities=(SAN,))

        def ours() -> None:
            verify_manifest_signature(
                trusted_root=root, policy=policy, manifest=MANIFEST, bundle=bundle
            )

        verifier = Verifier(trusted_root=TrustedRoot.from_file(str(root)))
        identity = Identity(identity=SAN, issuer=ISSUER)

        def direct() -> None:
            verifier.verify_artifact(MANIFEST, Bundle.from_json(bundle), identity)

        ours_s, direct_s = _interleaved(ours, direct, iterations)
    ours_ms, direct_ms = ours_s * 1000, direct_s * 1000
    return {
        "ours_warm_ms": round(ours_ms, 3),
        "sigstore_warm_ms": round(direct_ms, 3),
        "overhead_ratio": round(ours_ms / direct_ms, 2),
    }


def _interleaved(
    first: Callable[[], None], second: Callable[[], None], iterations: int
) -> tuple[float, float]:
    """Median seconds per call of each, alternating so drift hits both alike."""
    for _ in range(WARMUP_CALLS):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(iterations):
        for call, sink in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            call()
            sink.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _import_cost(runs: int) -> dict[str, float]:
    bare = [_probe("pass") for _ in range(runs)]
    loaded = [_probe("import sigstore.verify") for _ in range(runs)]
    bare_wall = min(wall for wall, _, _ in bare)
    loaded_wall = min(wall for wall, _, _ in loaded)
    bare_rss = min(rss for _, _, rss in bare)
    loaded_rss = min(rss for _, _, rss in loaded)
    return {
        "bare_python_ms": round(bare_wall * 1000, 1),
        "import_sigstore_verify_ms": round(loaded_wall * 1000, 1),
        "import_cost_ms": round((loaded_wall - bare_wall) * 1000, 1),
        "import_in_process_ms": round(min(t for _, t, _ in loaded) * 1000, 1),
        "bare_python_rss_mb": round(bare_rss / 1024, 1),
        "import_sigstore_verify_rss_mb": round(loaded_rss / 1024, 1),
        "import_cost_rss_mb": round((loaded_rss - bare_rss) / 1024, 1),
    }


def _probe(statement: str) -> tuple[float, float, int]:
    """Wall seconds of a fresh interpreter, its in-process import time, peak KiB.

    Peak memory reads 0 where ``/proc`` is absent (not Linux).
    """
    code = _IMPORT_PROBE.format(statement=statement)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    wall = time.perf_counter() - start
    inner, rss = done.stdout.split()
    return wall, float(inner), int(rss)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Keep sigstore's HTTP client off any proxy while it signs over loopback."""
    names = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY")
    saved = {name: os.environ.get(name) for name in names}
    for name in names[:-1]:
        os.environ.pop(name, None)
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def render(results: dict[str, float | int | bool]) -> str:
    """The figures as a markdown table."""
    rows = [
        (
            "warm verify, `verify_manifest_signature`",
            f"{results['ours_warm_ms']} ms",
            f"goal <= {GOAL_WARM_MS} ms: {'met' if results['goal_met'] else 'MISSED'}",
        ),
        (
            "warm verify, sigstore `Verifier.verify_artifact`",
            f"{results['sigstore_warm_ms']} ms",
            f"ours / sigstore = {results['overhead_ratio']}",
        ),
        (
            "`python -c pass`",
            f"{results['bare_python_ms']} ms",
            f"{results['bare_python_rss_mb']} MB peak RSS",
        ),
        (
            "`python -c 'import sigstore.verify'`",
            f"{results['import_sigstore_verify_ms']} ms",
            f"{results['import_sigstore_verify_rss_mb']} MB peak RSS",
        ),
        (
            "import cost of `sigstore.verify`",
            f"{results['import_cost_ms']} ms",
            f"+{results['import_cost_rss_mb']} MB; "
            f"{results['import_in_process_ms']} ms inside the interpreter",
        ),
    ]
    lines = [
        f"Median of {results['iterations']} warm calls each; "
        "best of the fresh-interpreter runs.",
        "",
        "| measurement | time | note |",
        "|---|---:|---|",
    ]
    lines += [f"| {name} | {value} | {note} |" for name, value, note in rows]
    return "\n".join(lines)


def main() -> None:
    print(render(run()))


if __name__ == "__main__":
    main()
