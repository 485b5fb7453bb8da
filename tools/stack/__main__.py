"""Command line: ``python -m centops.tools.stack selfcheck --dir DIR``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import selfcheck
from .errors import StackError

EXIT_OK = 0
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m centops.tools.stack")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("selfcheck", help="start the stack and exercise it")
    check.add_argument("--dir", type=Path, required=True, help="work directory")
    check.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; return the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        report = selfcheck.run(args.dir.resolve())
    except StackError as e:
        print(f"selfcheck FAILED [{e.reason}]: {e.describe()}", file=sys.stderr)
        return EXIT_FAILED
    for step, seconds in report.timings.items():
        print(f"{step:>16}: {seconds:6.2f} s")
    print("selfcheck OK")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
