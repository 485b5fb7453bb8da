"""Entry point of ``centops-agent``.

A plain ``centops-agent sync [--config FILE]`` first tries the lean no-op
poll (:mod:`centops.agent.fastpath`), which imports neither typer nor the
verification stack; everything else, and every poll that finds work, runs the
typer application.
"""

from __future__ import annotations

import sys


def main() -> None:
    from .fastpath import parse_sync_argv, try_noop

    plain_sync, explicit = parse_sync_argv(sys.argv[1:])
    if plain_sync and try_noop(explicit):
        print("up to date")
        sys.exit(0)
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
