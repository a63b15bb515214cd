"""The ``edged`` command's entry point (also ``python -m edged``).

For ``edged run`` the signal handlers go in before anything heavy is imported (see ``edged.signals``).
"""

from __future__ import annotations

import sys


def _command(argv: list[str]) -> str | None:
    """The subcommand: the first argument that is not an option (the global options take no value)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main() -> int:
    latch = None
    if _command(sys.argv[1:]) == "run":
        from edged.signals import SignalLatch

        latch = SignalLatch().install()
    from edged.cli import main as cli_main

    return cli_main(signals=latch)


if __name__ == "__main__":
    sys.exit(main())
