"""Signals for ``edged run``, caught from the process's first instant.

The handlers are installed before the heavy imports (numpy, OpenCV, ONNX Runtime) and the model load,
which take a second or more: without them, a ``systemctl reload`` (SIGHUP) during start-up would kill
the service, and a Ctrl-C would surface as a traceback from inside an import. Until the daemon is up the
handlers only record what arrived; the daemon acts on it once it can: a stop request ends start-up
promptly with exit 0, a reload request is honoured once the daemon runs.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class SignalLatch:
    """``stop`` is set by SIGTERM and SIGINT, ``reload`` by SIGHUP. The handlers stay installed until the
    process exits, so a second SIGTERM cannot turn a clean exit into death by signal."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.installed = False

    def install(self) -> SignalLatch:
        """Install the handlers (main thread only); returns itself."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        self.installed = True
        return self

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self.reload.set()
