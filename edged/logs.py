"""Logging: one event a line, the component named (``edged.<component>``)."""

from __future__ import annotations

import logging
import sys

from edged.systemd import journald_handler, under_systemd


def setup_logging(verbosity: int = 0) -> None:
    """Log to journald when started by systemd, to stderr otherwise.

    ``verbosity`` -1 quiet (warnings), 0 info, 1 debug.
    """
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = journald_handler() if under_systemd() else None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
