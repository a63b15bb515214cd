"""systemd integration: sd_notify over a real unix datagram socket, journald logging, the unit file."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from edged.logs import setup_logging
from edged.systemd import Notifier, journald_handler, under_systemd

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "edged.service"
try:  # not find_spec("systemd"): the repo's systemd/ folder passes for a namespace package
    import systemd.journal  # noqa: F401

    HAS_SYSTEMD_PYTHON = True
except ImportError:
    HAS_SYSTEMD_PYTHON = False


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)


def _receive_all(sock: socket.socket) -> list[str]:
    messages = []
    sock.settimeout(0.5)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
            sock.settimeout(0.05)
    except (socket.timeout, BlockingIOError):
        return messages


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_sends_every_state(notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier()
    assert notifier.enabled
    notifier.ready()
    notifier.status("2 streams running:\nfront 30 fps, back 15 fps")
    notifier.watchdog()
    notifier.extend_timeout(90)
    notifier.extend_timeout(0.25)
    notifier.stopping()
    assert _receive_all(notify_socket) == [
        "READY=1",
        "STATUS=2 streams running: front 30 fps, back 15 fps",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=90000000",
        "EXTEND_TIMEOUT_USEC=250000",
        "STOPPING=1",
    ]


@pytest.mark.skipif(HAS_SYSTEMD_PYTHON, reason="systemd-python sends through libsystemd")
@pytest.mark.timeout(20)  # a blocking send hangs here
def test_a_socket_nobody_reads_never_blocks(notify_socket: socket.socket) -> None:
    """The kernel queue of an unread datagram socket fills up; sending must not block the daemon then."""
    notifier = Notifier()
    for i in range(5000):  # far more than a unix datagram queue holds
        notifier.status(f"frame {i}")
    assert _receive_all(notify_socket)[0] == "STATUS=frame 0"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edged-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier()
        notifier.ready()
        notifier.status("ready")
        assert _receive_all(sock) == ["READY=1", "STATUS=ready"]


def test_no_op_without_notify_socket() -> None:
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    notifier.ready()
    notifier.status("nobody listens")
    notifier.watchdog()
    notifier.extend_timeout(10)
    notifier.stopping()


def test_send_failure_does_not_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    notifier = Notifier()
    with caplog.at_level(logging.DEBUG, logger="edged.systemd"):
        notifier.ready()
        notifier.stopping()
    assert len([r for r in caplog.records if r.name == "edged.systemd"]) == 1


def test_watchdog_interval_is_half_of_watchdog_usec(notify_socket: socket.socket,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert Notifier().watchdog_interval_s == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval_s == 15.0
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert Notifier().watchdog_interval_s is None


def test_watchdog_off_without_watchdog_usec(notify_socket: socket.socket) -> None:
    notifier = Notifier()
    assert notifier.watchdog_interval_s is None
    notifier.watchdog()
    notifier.ready()
    assert _receive_all(notify_socket) == ["READY=1"]


def test_watchdog_pid_of_another_process_disables_the_watchdog(notify_socket: socket.socket,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    notifier = Notifier()
    assert notifier.watchdog_interval_s is None
    notifier.watchdog()
    notifier.ready()
    assert _receive_all(notify_socket) == ["READY=1"]


def test_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not under_systemd()
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    assert under_systemd()


# stderr is redirected inside each test, not in a fixture: pytest sets its own capture
# stream again when the test body starts.

@pytest.mark.skipif(HAS_SYSTEMD_PYTHON, reason="systemd-python installed: journald_handler uses JournalHandler")
def test_journal_stream_gets_priority_prefixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stderr:  # stands in for the journal stream systemd connects
        monkeypatch.setattr(sys, "stderr", stderr)
        stat = os.fstat(stderr.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        handler = journald_handler()
        assert handler is not None
        logger = logging.getLogger("edged.test")
        handler.handle(logger.makeRecord("edged.test", logging.ERROR, __file__, 1, "two\nlines", (), None))
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
            handler.handle(logger.makeRecord("edged.test", level, __file__, 1, "level %s", (level,), None))
    assert path.read_text().splitlines() == [
        "<3>ERROR edged.test: two",
        "<3>lines",
        "<7>DEBUG edged.test: level 10",
        "<6>INFO edged.test: level 20",
        "<4>WARNING edged.test: level 30",
        "<3>ERROR edged.test: level 40",
        "<2>CRITICAL edged.test: level 50",
    ]


@pytest.mark.skipif(HAS_SYSTEMD_PYTHON, reason="systemd-python installed: journald_handler uses JournalHandler")
def test_no_journal_handler_when_stderr_is_not_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (tmp_path / "stderr").open("w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        assert journald_handler() is None
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")
        assert journald_handler() is None


@pytest.mark.skipif(HAS_SYSTEMD_PYTHON, reason="systemd-python installed: journald_handler uses JournalHandler")
def test_setup_logging_under_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    path = tmp_path / "stderr"
    try:
        with path.open("w") as stderr:
            monkeypatch.setattr(sys, "stderr", stderr)
            setup_logging(0)
            logging.getLogger("edged.test").warning("on a terminal")
            stat = os.fstat(stderr.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
            setup_logging(0)
            logging.getLogger("edged.test").warning("in the journal")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    terminal, journal = path.read_text().splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING edged.test: on a terminal", terminal)
    assert journal == "<4>WARNING edged.test: in the journal"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt: systemd)")
def test_unit_verifies(tmp_path: Path) -> None:
    # The daemon is not installed here: point ExecStart= at a stand-in executable, since
    # verify checks that the command exists. Any other output is a warning about the unit.
    program = "/opt/edged/venv/bin/edged"
    text = UNIT.read_text()
    assert f"ExecStart={program} run -c /etc/edged/edged.yaml" in text
    stand_in = tmp_path / "edged"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "edged.service"
    unit.write_text(text.replace(program, str(stand_in)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
