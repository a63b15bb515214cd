"""edged under a real systemd: scripts/install.sh on a fresh Debian root booted with systemd-nspawn (tests/nspawn.py),
then the installed unit started, reloaded, frozen until its watchdog fires, read in the journal, and stopped, with
the real daemon publishing to the tests' broker on the host.

The tests of this module run in order, on one container and one installation. Where the host cannot boot the root
(not root, no systemd-nspawn, no root built by scripts/systemd-test-root.sh) they are skipped, saying why, except in
CI (``CI`` set), whose .ci/run builds the root: there they fail. Figures the issue asks for are printed (pytest -s).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edged.synthetic import write_clip
from tests import nspawn
from tests.broker import Broker, Subscriber
from tests.conftest import REPO
from tests.daemon import DEVICE, P, events
from tests.rtsp import RtspServer
from tests.rtsp import missing as rtsp_missing

pytestmark = pytest.mark.slow

SOURCE = "/opt/edged-src"  # the checkout, as install.sh is run from it
MEDIA = "/srv/edged-test"  # the test clip, readable by the service user
WHEELS = "/var/cache/edged-wheels"  # in the root: install.sh's pip installs from here, offline
WATCHDOG_S = 4  # the test's drop-in (the unit's own is 30 s, with RestartSec=5)
RESTART_S = 1
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, RtspServer | None, Path]]:
    if problem := nspawn.missing():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"no real systemd to test against: {problem}")
    folder = tmp_path_factory.mktemp("systemd")
    with Broker(folder / "broker") as broker:
        camera = None if rtsp_missing() else RtspServer(folder / "rtsp")
        try:
            if camera:
                camera.start()
            yield broker, camera, folder
        finally:
            if camera:
                camera.stop()


@pytest.fixture(scope="module")
def container(host: tuple[Broker, RtspServer | None, Path]) -> Iterator[nspawn.Container]:
    _, _, folder = host
    # A copy of the checkout (pip builds in the tree), and a clip for the daemon: both bound into the container.
    source = folder / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", ".train", "samples", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", ".ruff_cache"))
    media = folder / "media"
    write_clip(media / "clip.mp4", seed=3, frames=90)
    for path in (folder, media):
        path.chmod(0o755)  # the service user reads the clip
    box = nspawn.Container(nspawn.DEFAULT_ROOT, folder / "container.log", {source: SOURCE, media: MEDIA})
    started = time.monotonic()
    try:  # a container that fails to come up is stopped too: it would hold the root for the next run
        box.start()
        FIGURES["boot_s"] = time.monotonic() - started
        yield box
    finally:
        box.stop()


def daemon_config(broker: Broker, camera: RtspServer | None, **extra: Any) -> str:
    streams = [{"name": "clip", "source": f"{MEDIA}/clip.mp4", "loop": True, "realtime": True, "max_fps": 10}]
    if camera:
        streams.append({"name": "cam", "source": camera.url, "stall_s": 1})
    return yaml.safe_dump({"device_id": DEVICE, "mqtt": {"host": "127.0.0.1", "port": broker.port},
                           "streams": streams, "health": {"interval_s": 1}, **extra})


def health(sub: Subscriber) -> list[dict[str, Any]]:
    return [m.json() for m in sub.messages(f"{P}/health")]


def test_install_sh_on_a_fresh_root(container: nspawn.Container) -> None:
    started = time.monotonic()
    result = container.run("bash", f"{SOURCE}/scripts/install.sh", timeout=600,
                           env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS})
    FIGURES["install_s"] = time.monotonic() - started
    assert "creating system user edged" in result.stdout, result.stdout
    user = container.run("getent", "passwd", "edged").stdout.split(":")
    assert int(user[2]) < 1000 and user[6].strip() == "/usr/sbin/nologin", user  # a system user with no shell
    assert "video" in container.run("id", "-nG", "edged").stdout.split()
    assert container.run("systemctl", "is-enabled", "edged").stdout.strip() == "enabled"
    assert container.run("stat", "-c", "%a %U:%G", "/etc/edged/edged.yaml").stdout.split() == ["640", "root:edged"]
    assert "edged" in container.run("/opt/edged/venv/bin/edged", "--version").stdout
    again = container.run("bash", f"{SOURCE}/scripts/install.sh", timeout=600,
                          env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS})
    assert "keeping the existing /etc/edged/edged.yaml" in again.stdout, again.stdout


def test_start_reaches_ready_with_a_status_line(container: nspawn.Container,
                                                host: tuple[Broker, RtspServer | None, Path]) -> None:
    broker, camera, _ = host
    container.write("/etc/edged/edged.yaml", daemon_config(broker, camera), mode="0640", owner="root:edged")
    container.write("/etc/systemd/system/edged.service.d/test.conf",
                    f"[Service]\nWatchdogSec={WATCHDOG_S}\nRestartSec={RESTART_S}\n")
    container.run("systemctl", "daemon-reload")
    with Subscriber(broker, f"{P}/#").start() as sub:
        started = time.monotonic()
        container.run("systemctl", "start", "edged", timeout=120)  # Type=notify: returns at READY=1
        FIGURES["ready_s"] = time.monotonic() - started
        state = container.show("edged", "ActiveState", "SubState", "StatusText", "MainPID", "User")
        sub.wait_for(lambda: b"online" in sub.payloads(f"{P}/status"), timeout=15, what="online")
        sub.wait_for(lambda: sub.messages(f"{P}/streams/clip/detections"), timeout=15, what="detections")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert state["StatusText"], state  # a STATUS= line
    owner = container.run("ps", "-o", "user=", "-p", state["MainPID"]).stdout.strip()
    assert owner == "edged" and state["User"] == "edged"


def test_reload_applies_a_changed_config(container: nspawn.Container,
                                         host: tuple[Broker, RtspServer | None, Path]) -> None:
    broker, camera, _ = host
    with Subscriber(broker, f"{P}/#").start() as sub:
        container.write("/etc/edged/edged.yaml", daemon_config(broker, camera, model={"confidence": 0.6}),
                        mode="0640", owner="root:edged")
        container.run("systemctl", "reload", "edged")
        sub.wait_for(lambda: events(sub, "config_applied"), timeout=30, what="config_applied")
    assert container.show("edged", "ActiveState")["ActiveState"] == "active"


def test_hardening_leaves_cameras_sensors_and_state_readable(container: nspawn.Container) -> None:
    """In the service's own mount namespace, as its user: what ProtectSystem=, PrivateTmp= and the rest leave."""
    pid = container.show("edged", "MainPID")["MainPID"]

    def as_service(script: str) -> Any:
        return container.run("nsenter", "-t", pid, "-m", "setpriv", "--reuid=edged", "--regid=edged",
                             "--init-groups", "sh", "-c", script, check=False)

    # A camera node: /dev/null's numbers (the container may have no real camera), the video group's, as udev sets it.
    container.run("sh", "-c", "[ -e /dev/video9 ] || mknod -m 0660 /dev/video9 c 1 3 && chgrp video /dev/video9")
    assert as_service("head -c 1 /dev/video9 >/dev/null").returncode == 0, "cannot open a camera node"
    assert as_service("ls /sys/class/thermal >/dev/null && cat /proc/meminfo >/dev/null").returncode == 0
    assert as_service("touch /var/lib/edged/probe && rm /var/lib/edged/probe").returncode == 0, "state dir"
    assert as_service("touch /var/cache/edged/probe && rm /var/cache/edged/probe").returncode == 0, "cache dir"
    # ProtectSystem=strict: a folder the user owns, outside the unit's own directories, is read-only to the service.
    container.run("install", "-d", "-o", "edged", "/srv/edged-owned")
    denied = as_service("touch /srv/edged-owned/probe")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied


def test_a_frozen_pipeline_stops_the_watchdog_and_systemd_restarts_edged(
        container: nspawn.Container, host: tuple[Broker, RtspServer | None, Path]) -> None:
    broker, camera, _ = host
    if camera is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"no RTSP test camera to freeze: {rtsp_missing()}")
    before = container.show("edged", "MainPID", "NRestarts")
    with Subscriber(broker, f"{P}/#").start() as sub:
        sub.wait_for(lambda: sub.messages(f"{P}/streams/cam/detections"), timeout=20, what="the camera's detections")
        camera.pause()  # frames stop: the stream stalls, and the daemon stops feeding the watchdog
        frozen = time.monotonic()
        deadline = frozen + WATCHDOG_S + 30
        while container.show("edged", "NRestarts")["NRestarts"] == before["NRestarts"]:
            assert time.monotonic() < deadline, container.run("journalctl", "-u", "edged", "-n", "30").stdout
            time.sleep(0.2)
        FIGURES["frozen_to_restart_s"] = time.monotonic() - frozen
        camera.resume()
        count = len(sub.payloads(f"{P}/status"))
        sub.wait_for(lambda: b"online" in sub.payloads(f"{P}/status")[count:], timeout=60, what="online again")
        FIGURES["frozen_to_online_s"] = time.monotonic() - frozen
        while container.show("edged", "ActiveState")["ActiveState"] != "active":  # READY=1 again
            assert time.monotonic() < deadline + 60, container.run("journalctl", "-u", "edged", "-n", "30").stdout
            time.sleep(0.2)
        FIGURES["frozen_to_ready_s"] = time.monotonic() - frozen
    assert container.show("edged", "MainPID")["MainPID"] != before["MainPID"]
    journal = container.run("journalctl", "-u", "edged", "--no-pager").stdout
    assert "Watchdog timeout" in journal, journal[-3000:]


def test_the_journal_has_the_daemons_lines_with_their_priority(container: nspawn.Container) -> None:
    lines = [json.loads(line) for line in container.run("journalctl", "-u", "edged", "-o", "json",
                                                        "--no-pager").stdout.splitlines()]
    own = [entry for entry in lines if entry.get("_COMM") != "systemd" and entry.get("SYSLOG_IDENTIFIER") != "systemd"]
    priorities = {entry["PRIORITY"] for entry in own}
    print("\n" + "\n".join(f"<{e['PRIORITY']}> {e.get('MESSAGE')}" for e in own[:6] + own[-4:]))
    messages = [entry["MESSAGE"] for entry in own if isinstance(entry.get("MESSAGE"), str)]
    assert "6" in priorities, priorities  # info
    assert any("loaded on providers" in m for m in messages), messages[:20]
    warnings = [entry["MESSAGE"] for entry in own if entry["PRIORITY"] == "4"]
    assert warnings, "no warning line (the frozen stream's, or any)"
    assert not any(m.startswith(("INFO", "WARNING", "<")) for m in messages), "level prefixes left in the journal"


def test_memory_max_is_the_cgroup_limit_the_daemon_reports(container: nspawn.Container,
                                                           host: tuple[Broker, RtspServer | None, Path]) -> None:
    if container.memory_hierarchy is None:
        pytest.skip("this host mounts no memory controller: MemoryMax= cannot take effect in the container")
    broker, _, _ = host
    container.write("/etc/systemd/system/edged.service.d/memory.conf", "[Service]\nMemoryMax=700M\n")
    container.run("systemctl", "daemon-reload")
    restarted = time.time()  # the health topic is retained: the old process's may come first
    with Subscriber(broker, f"{P}/#").start() as sub:
        container.run("systemctl", "restart", "edged", timeout=120)

        def new_health() -> list[dict[str, Any]]:
            return [h for h in health(sub) if h["ts"] > restarted and (h.get("resources") or {}).get("cgroup")]
        sub.wait_for(new_health, timeout=20, what="the restarted daemon's health with the cgroup")
    cgroup = new_health()[0]["resources"]["cgroup"]
    print(f"\nMemoryMax=700M on cgroup {container.memory_hierarchy}: the daemon reports {cgroup}")
    assert cgroup["limit_mb"] == pytest.approx(700, abs=1)


def test_stop_publishes_offline_and_exits_in_time(container: nspawn.Container,
                                                  host: tuple[Broker, RtspServer | None, Path]) -> None:
    broker, _, _ = host
    with Subscriber(broker, f"{P}/#").start() as sub:
        sub.wait_for(lambda: sub.payloads(f"{P}/status"), timeout=10, what="the retained status")
        started = time.monotonic()
        container.run("systemctl", "stop", "edged", timeout=120)
        FIGURES["stop_s"] = time.monotonic() - started
        sub.wait_for(lambda: sub.payloads(f"{P}/status")[-1] == b"offline", timeout=10, what="offline")
    state = container.show("edged", "ActiveState", "Result", "ExecMainStatus")
    assert state["ActiveState"] == "inactive" and state["Result"] == "success" and state["ExecMainStatus"] == "0"
    print("\n" + ", ".join(f"{key} {value:.1f}" for key, value in FIGURES.items()))
    assert FIGURES["stop_s"] < 10  # TimeoutStopSec is the default 90 s: SIGTERM alone ends it, well within
