"""Signals from the first instant of ``edged run``: real processes, real signals, a real broker."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.broker import Broker, Subscriber, wait_until
from tests.daemon import P, Daemon, detections, events, write_config

WATCHED = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)


def handlers_installed(pid: int) -> bool:
    """Whether the process catches SIGHUP, SIGINT and SIGTERM (``SigCgt`` in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return all(caught >> (sig - 1) & 1 for sig in WATCHED)


def send_when(daemon: Daemon, sig: int, when: str | float) -> None:
    """Send ``sig`` ``when`` seconds after start, or ("handlers") the moment the process catches signals,
    before numpy, OpenCV or the model load."""
    if when == "handlers":
        wait_until(lambda: handlers_installed(daemon.process.pid), timeout=10, what="signal handlers")
    else:
        time.sleep(float(when))
    daemon.send(sig)


def start(tmp_path: Path, broker: Broker | None, clip: Path) -> Daemon:
    config = write_config(tmp_path, broker, [{"name": "a", "source": str(clip), "loop": True, "max_fps": 20}])
    return Daemon(config)


@pytest.mark.parametrize("when", ["handlers", 0.3, 1.0])
def test_sighup_during_startup_is_honoured_once_up(tmp_path: Path, broker: Broker, looping_clip: Path,
                                                   when: str | float) -> None:
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = start(tmp_path, broker, looping_clip)
        try:
            send_when(daemon, signal.SIGHUP, when)
            sub.wait_for(lambda: events(sub, "config_applied"), timeout=30, what="the reload, once up")
            sub.wait_for(lambda: len(detections(sub, "a")) >= 5, timeout=30, what="detections")
            assert daemon.process.poll() is None
            assert daemon.stop() == 0, daemon.log()
        finally:
            daemon.kill()
    assert "nothing changed" in events(sub, "config_applied")[0]["detail"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("when", ["handlers", 0.3, 1.0])
def test_stop_during_startup_exits_0_promptly(tmp_path: Path, looping_clip: Path, sig: int,
                                              when: str | float) -> None:
    daemon = start(tmp_path, None, looping_clip)  # no broker: start-up goes on regardless
    try:
        send_when(daemon, sig, when)
        assert daemon.process.wait(3) == 0, daemon.log()
    finally:
        daemon.kill()
    assert "Traceback" not in daemon.log()


@pytest.mark.parametrize("phase", ["starting", "running"])
def test_a_second_sigterm_does_not_turn_a_clean_exit_into_death_by_signal(tmp_path: Path, broker: Broker,
                                                                          looping_clip: Path, phase: str) -> None:
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = start(tmp_path, broker, looping_clip)
        try:
            if phase == "starting":
                wait_until(lambda: handlers_installed(daemon.process.pid), timeout=10, what="signal handlers")
            else:
                sub.wait_for(lambda: detections(sub, "a"), timeout=30, what="detections")
            daemon.send(signal.SIGTERM)
            time.sleep(0.05)
            daemon.send(signal.SIGTERM)
            assert daemon.process.wait(3) == 0, daemon.log()
        finally:
            daemon.kill()
    assert "Traceback" not in daemon.log()
