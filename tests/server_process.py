"""A server the tests run as a real process (mosquitto, the RTSP camera) and treat as the field would:
stopped, crashed, frozen and brought back on the same port."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import TypeVar

T = TypeVar("T", bound="ServerProcess")


class ServerProcess:
    """Subclasses set ``log_file`` and implement ``start()``, which sets ``process``."""

    log_file: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, in case it is paused): a clean exit, connections closed."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def kill(self) -> None:
        """A crash: SIGKILL, nothing saved; the kernel resets the connections and the port refuses new ones."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """SIGSTOP, a hung server: connections stay open and the kernel still accepts new ones (into the
        listen backlog), but no packet is sent and no request answered (until ``resume()``, ``stop()`` or
        ``kill()``)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``: it serves again (clients that gave up meanwhile must reconnect)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop, and start again on the same port."""
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __enter__(self: T) -> T:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
