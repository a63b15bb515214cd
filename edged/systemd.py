"""systemd integration: the sd_notify protocol and journald logging.

Everything here is optional: without systemd (no ``$NOTIFY_SOCKET``, no journal) the
notifier does nothing and logging stays on stderr. The ``systemd-python`` package is used
when it imports (``pip install 'edged[systemd]'``); otherwise the protocol, a datagram on
a unix socket, is spoken directly.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

try:  # optional: pip install 'edged[systemd]'
    from systemd import daemon as _daemon
    from systemd import journal as _journal
except ImportError:
    _daemon = None
    _journal = None

log = logging.getLogger("edged.systemd")

SYSLOG_IDENTIFIER = "edged"
# Python levels to syslog priorities, which journald reads from a "<N>" line prefix.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def under_systemd() -> bool:
    """True when started by systemd as a service (it sets these for every unit it runs)."""
    return "INVOCATION_ID" in os.environ or "JOURNAL_STREAM" in os.environ


class Notifier:
    """Tells the service manager how the daemon is doing; every method is a no-op off systemd.

    The environment is read once, at construction. Sending never raises: a failure is logged
    once at debug level and the daemon carries on.
    """

    def __init__(self) -> None:
        self._address = _socket_address(os.environ.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = _watchdog_interval_s()
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self) -> None:
        """Start-up is complete (``Type=notify`` units are "starting" until this)."""
        self._send("READY=1")

    def status(self, text: str) -> None:
        """A one-line status a person reads in ``systemctl status``."""
        self._send("STATUS=" + " ".join(text.split()))

    def watchdog(self) -> None:
        """Keep-alive; send it every ``watchdog_interval_s`` while the daemon makes progress."""
        if self.watchdog_interval_s is not None:
            self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """The current start-up or shutdown step needs up to ``seconds`` more, counted from now."""
        self._send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self._send("STOPPING=1")

    def _send(self, state: str) -> None:
        if self._address is None:
            return
        try:
            if _daemon is not None:
                _daemon.notify(state)
            else:
                # Non-blocking: a notify socket nobody reads must never stall the daemon.
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                    sock.sendto(state.encode(), self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.debug("sd_notify to %s failed (further failures not logged): %s", self._address, exc)


def _socket_address(value: str) -> str | None:
    """``$NOTIFY_SOCKET`` as a socket address: a path, or ``@name`` for an abstract socket."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    if value:
        log.debug("NOTIFY_SOCKET=%r: not a unix socket address, notifications off", value)
    return None


def _watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, or None when the watchdog is not ours or is off."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


class _PriorityFormatter(logging.Formatter):
    """Prefixes every line with ``<N>``, the syslog priority, so journald records the level.

    No timestamp: journald adds its own.
    """

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in _PRIORITIES if record.levelno >= level), 7)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def _stderr_is_journal() -> bool:
    """``$JOURNAL_STREAM`` (``device:inode``) names the stream stderr is connected to."""
    try:
        device, inode = (int(part) for part in os.environ["JOURNAL_STREAM"].split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (KeyError, ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def journald_handler() -> logging.Handler | None:
    """A handler writing to the journal, or None when the journal is not reachable.

    With systemd-python: a ``JournalHandler`` (structured fields, ``SYSLOG_IDENTIFIER=edged``).
    Without it, when stderr is the journal stream: stderr with ``<N>`` priority prefixes.
    """
    handler: logging.Handler
    if _journal is not None:
        handler = _journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        return handler
    if _stderr_is_journal():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PriorityFormatter())
        return handler
    return None
