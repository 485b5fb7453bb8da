"""Command line of the local Sigstore (tests and demo only).

``python -m centops.tools.localsigstore init --dir DIR`` makes keys and the
trusted root; ``serve --dir DIR [--port N]`` also runs the loopback services
until SIGTERM or SIGINT, printing ``localsigstore serving <URL>`` when ready
and keeping its process ID in ``DIR/localsigstore.pid`` while it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .local import LocalSigstore
from .material import write_atomic
from .process import READY_PREFIX


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m centops.tools.localsigstore",
        description="Throwaway local Sigstore for tests and the demo.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create keys and trusted_root.json")
    init.add_argument("--dir", type=Path, required=True)
    serve = commands.add_parser("serve", help="run Fulcio/Rekor on 127.0.0.1")
    serve.add_argument("--dir", type=Path, required=True)
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--verbose", action="store_true")
    return parser


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _serve(directory: Path, port: int) -> int:
    instance = LocalSigstore.open(directory)
    server = instance.bind(port=port)
    write_atomic(instance.pid_path, f"{os.getpid()}\n")
    signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        print(f"{READY_PREFIX}{server.url}", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        instance.pid_path.unlink(missing_ok=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "init":
        instance = LocalSigstore.open(args.dir)
        print(instance.trusted_root_path)
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    return _serve(args.dir, args.port)


if __name__ == "__main__":
    sys.exit(main())
