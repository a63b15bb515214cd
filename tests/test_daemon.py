"""``edged run`` end to end: the real daemon as a subprocess, a real Mosquitto, real clips, real signals."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from edged.evaluation import evaluate_messages, load_ground_truth
from edged.synthetic import write_clip
from tests.broker import Broker, Subscriber, wait_until
from tests.conftest import REPO, Clip
from tests.daemon import DEVICE, P, SCHEMAS, Daemon, detections, events, statuses, write_config


def test_detections_health_and_events_on_the_eval_clip(eval_clip: Clip, tmp_path: Path, broker: Broker) -> None:
    """Every frame of the clip arrives, schema-valid and accurate; status online, then offline on SIGTERM."""
    zone = tmp_path / "sysfs" / "sys" / "class" / "thermal" / "thermal_zone0"  # a thermal sensor, faked
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("47500\n")
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(write_config(tmp_path, broker, [{"name": "eval", "source": str(eval_clip.video)}],
                                     resources={"sysfs_root": str(tmp_path / "sysfs")}))
        try:
            sub.wait_for(lambda: len(detections(sub, "eval")) >= 600, timeout=120, what="600 detections")
            sub.wait_for(lambda: events(sub, "stream_down"), timeout=10, what="end of file")
            sub.wait_for(lambda: sub.messages(f"{P}/health"), timeout=10, what="health")
            assert daemon.stop() == 0, daemon.log()
        finally:
            daemon.kill()
        sub.wait_for(lambda: statuses(sub)[-1:] == ["offline"], timeout=5, what="offline")
    messages = detections(sub, "eval")
    assert [m["seq"] for m in messages] == list(range(600))
    assert [m["frame_id"] for m in messages] == list(range(600))  # a file: every frame, none dropped
    for message in messages:
        jsonschema.validate(message, SCHEMAS["detections"])
    labels, truths = load_ground_truth(eval_clip.truth)
    assert evaluate_messages(messages, labels, truths) >= 0.90
    health = sub.messages(f"{P}/health")[-1].json()
    jsonschema.validate(health, SCHEMAS["health"])
    assert health["inference"]["provider"] == "cpu" and health["mqtt"]["dropped"] == 0
    assert health["resources"]["temperatures_c"] == {"cpu-thermal": 47.5}
    for event in events(sub):
        jsonschema.validate(event, SCHEMAS["event"])
    stream_events = [e["kind"] for e in events(sub) if e.get("stream") == "eval" and e["kind"].startswith("stream_")]
    assert stream_events[:2] == ["stream_up", "stream_down"]
    assert statuses(sub)[0] == "online" and statuses(sub)[-1] == "offline"
    # The retained state a dashboard finds when it connects later:
    with Subscriber(broker, [f"{P}/status", f"{P}/health"], client_id="late").start() as late:
        late.wait_for(lambda: len(late.messages()) >= 2, what="retained status and health")
        assert late.messages(f"{P}/status")[0].text == "offline" and late.messages(f"{P}/status")[0].retained


def test_last_will_after_sigkill(tmp_path: Path, broker: Broker, looping_clip: Path) -> None:
    with Subscriber(broker, f"{P}/status").start() as sub:
        daemon = Daemon(write_config(tmp_path, broker, [{"name": "a", "source": str(looping_clip), "loop": True}]))
        try:
            sub.wait_for(lambda: statuses(sub)[-1:] == ["online"], timeout=30, what="online")
            daemon.send(signal.SIGKILL)
            daemon.process.wait(5)
            sub.wait_for(lambda: statuses(sub)[-1:] == ["offline"], timeout=10, what="the last will")
        finally:
            daemon.kill()


@pytest.mark.slow
def test_broker_outage_loses_no_message(tmp_path: Path, looping_clip: Path) -> None:
    """The broker stops for 10 s mid-run and comes back: at QoS 1 no seq is missing."""
    with Broker(tmp_path / "broker", persistence=True) as broker, \
            Subscriber(broker, f"{P}/streams/+/detections", persistent=True).start() as sub:
        config = write_config(tmp_path, broker, [{"name": "a", "source": str(looping_clip), "loop": True,
                                                  "max_fps": 20}])
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: len(detections(sub, "a")) >= 20, timeout=30, what="detections before the outage")
            broker.stop()
            time.sleep(10)
            broker.start()
            last_before = detections(sub, "a")[-1]["seq"]
            sub.wait_for(lambda: detections(sub, "a")[-1]["seq"] > last_before + 250, timeout=60,
                         what="the queued messages and new ones")
            assert daemon.stop() == 0, daemon.log()
        finally:
            daemon.kill()
    seqs = sorted({m["seq"] for m in detections(sub, "a")})
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a seq is missing"
    assert seqs[0] == 0


def test_late_file_source_comes_up_and_others_keep_running(tmp_path: Path, broker: Broker,
                                                           looping_clip: Path) -> None:
    late = tmp_path / "late.mp4"
    streams = [{"name": "steady", "source": str(looping_clip), "loop": True, "max_fps": 20},
               {"name": "late", "source": str(late)}]
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(write_config(tmp_path, broker, streams))
        try:
            sub.wait_for(lambda: events(sub, "stream_down"), timeout=30, what="the late stream going down")
            assert events(sub, "stream_down")[0]["stream"] == "late"
            before = len(detections(sub, "steady"))
            write_clip(tmp_path / "render.mp4", seed=12, frames=30, width=320, height=240).replace(late)
            sub.wait_for(lambda: len(detections(sub, "late")) >= 30, timeout=40, what="the late stream's frames")
            assert any(e["stream"] == "late" for e in events(sub, "stream_up"))
            assert len(detections(sub, "steady")) > before + 20
            assert daemon.stop() == 0
        finally:
            daemon.kill()


@pytest.mark.parametrize("body, key", [("streams: [{name: a, source: 0, max_fps: fast}]", "streams[0].max_fps"),
                                       ("model: {path: none.onnx}", "model.path")])  # what check-config checks too
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, body: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body + "\n")
    result = subprocess.run([sys.executable, "-m", "edged", "run", "-c", str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"{path}: {key}:" in result.stderr and "Traceback" not in result.stderr


def test_sighup_reload_rejects_a_bad_file_and_applies_a_good_one(tmp_path: Path, broker: Broker,
                                                                 looping_clip: Path) -> None:
    streams = [{"name": "a", "source": str(looping_clip), "loop": True, "max_fps": 20}]
    config = write_config(tmp_path, broker, streams)
    good = config.read_text()
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: detections(sub, "a"), timeout=30, what="detections")
            config.write_text(good.replace("max_fps: 20", "max_fps: -5"))
            daemon.send(signal.SIGHUP)
            sub.wait_for(lambda: events(sub, "config_rejected"), timeout=15, what="config_rejected")
            rejected = events(sub, "config_rejected")[0]
            assert any("streams[0].max_fps" in e for e in rejected["errors"])
            count = len(detections(sub, "a"))
            sub.wait_for(lambda: len(detections(sub, "a")) > count + 10, timeout=15, what="the old config running")
            config.write_text(good.replace("name: a", "name: b"))
            daemon.send(signal.SIGHUP)
            sub.wait_for(lambda: detections(sub, "b"), timeout=30, what="the reloaded config's stream")
            assert events(sub, "config_applied")
            assert daemon.process.poll() is None
            assert daemon.stop() == 0
        finally:
            daemon.kill()


@pytest.mark.parametrize("kind", ["password", "tls"])
def test_authenticated_and_tls_brokers(tmp_path: Path, looping_clip: Path, kind: str) -> None:
    options = {"username": "edge", "password": "s3cret"} if kind == "password" else {"require_certificate": True}
    with Broker(tmp_path / "broker", **options) as broker, Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(write_config(tmp_path, broker, [{"name": "a", "source": str(looping_clip), "loop": True}]))
        try:
            sub.wait_for(lambda: len(detections(sub, "a")) >= 5, timeout=30, what=f"detections over {kind}")
            assert statuses(sub)[0] == "online"
            assert daemon.stop() == 0
        finally:
            daemon.kill()


def test_wrong_password_keeps_running_and_says_why(tmp_path: Path, looping_clip: Path) -> None:
    with Broker(tmp_path / "broker", username="edge", password="s3cret") as broker:
        config = write_config(tmp_path, broker, [{"name": "a", "source": str(looping_clip), "loop": True}])
        (tmp_path / "broker" / "client-password").write_text("wrong\n")
        daemon = Daemon(config)
        try:
            wait_until(lambda: "not authorized" in daemon.log().lower() or "bad user name or password"
                       in daemon.log().lower(), timeout=30, what="a log line about the refused login")
            assert daemon.process.poll() is None
            assert daemon.stop() == 0
        finally:
            daemon.kill()


def test_notify_protocol(tmp_path: Path, looping_clip: Path) -> None:
    """READY, STATUS, WATCHDOG and STOPPING on a real NOTIFY_SOCKET; no broker running at all."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(1.0)
        config = write_config(tmp_path, None, [{"name": "a", "source": str(looping_clip), "loop": True}])
        daemon = Daemon(config, env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
        received: list[str] = []

        def read_until(wanted: str, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while not any(m.startswith(wanted) for m in received):
                assert time.monotonic() < deadline, f"no {wanted} in {received}\n{daemon.log()}"
                try:
                    received.extend(notify.recv(4096).decode().splitlines())
                except socket.timeout:
                    pass

        try:
            read_until("READY=1", 30)
            read_until("STATUS=", 10)
            read_until("WATCHDOG=1", 10)
            daemon.send(signal.SIGTERM)
            read_until("STOPPING=1", 10)
            assert daemon.process.wait(5) == 0
        finally:
            daemon.kill()
    status = [m for m in received if m.startswith("STATUS=")]
    assert any("a up" in s for s in status), status


def test_watch_prints_a_live_summary(tmp_path: Path, broker: Broker, looping_clip: Path) -> None:
    statuses_seen = Subscriber(broker, "edged/+/status", client_id="status-watch").start()
    daemon = Daemon(write_config(tmp_path, broker, [{"name": "a", "source": str(looping_clip), "loop": True}]))
    try:
        with Subscriber(broker, f"{P}/streams/a/detections").start() as sub:
            sub.wait_for(lambda: sub.messages(), timeout=30, what="detections")
        watch = subprocess.run([sys.executable, "-m", "edged", "watch", "--host", "127.0.0.1", "--port",
                                str(broker.port), "--duration", "3"], cwd=REPO, capture_output=True, text=True,
                               timeout=30)
        assert watch.returncode == 0, watch.stderr
        lines = watch.stdout.splitlines()
        assert f"{DEVICE}: online (retained)" in lines
        summaries = [line for line in lines if line.startswith(f"{DEVICE}/a ")]
        assert len(summaries) >= 2 and "msg/s" in summaries[-1] and "detections" in summaries[-1]
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        statuses_seen.stop()
    # The watcher is an observer: only the device itself ever appears on a status topic.
    assert {m.topic for m in statuses_seen.messages()} == {f"{P}/status"}
