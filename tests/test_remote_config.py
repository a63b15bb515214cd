"""Remote config end to end: the real daemon, a real Mosquitto, pushes published as an operator would."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

from edged.remote.push import sign
from tests.broker import Broker, Subscriber
from tests.conftest import DEMO_MODEL, run_edged
from tests.daemon import DEVICE, P, SCHEMAS, Daemon, detections, events, write_config

pytestmark = pytest.mark.slow
APPLIED_WITHIN_S = 2.0


def results(sub: Subscriber, device: str = DEVICE) -> list[dict[str, Any]]:
    return [m.json() for m in sub.messages(f"edged/{device}/config/result")]


def push(sub: Subscriber, patch: dict[str, Any] | None = None, *, version: int, push_id: str | None = None,
         raw: bytes | None = None, key: bytes | None = None, signature: str | None = None,
         topic: str = f"{P}/config/set", timeout: float = 30) -> dict[str, Any]:
    """Publish a push (``raw`` bytes as they are, else ``{id, version, config: patch}`` as JSON) and wait for
    its result; the result, checked against its schema."""
    push_id = push_id or uuid.uuid4().hex
    payload = raw if raw is not None else json.dumps({"id": push_id, "version": version, "config": patch}).encode()
    if key is not None:
        signature = sign(payload, key)
    answered = len(results(sub))
    sub.publish(topic, payload, user_properties={"signature": signature} if signature else None)
    sub.wait_for(lambda: len(results(sub)) > answered and (raw is not None or results(sub)[-1]["id"] == push_id),
                 timeout=timeout, what=f"the result of push {push_id}")
    result = results(sub)[-1]
    jsonschema.validate(result, SCHEMAS["config_result"])
    return result


def state(sub: Subscriber) -> dict[str, Any]:
    message = sub.messages(f"{P}/config/state")[-1].json()
    jsonschema.validate(message, SCHEMAS["config_state"])
    return message


def assert_contiguous(values: list[int], what: str) -> None:
    assert values == list(range(values[0], values[0] + len(values))), f"{what}: a gap, or it went back"


def stream(name: str, clip: Path, **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": str(clip), "loop": True, "realtime": True, "max_fps": 10, **extra}


def after(sub: Subscriber, name: str, ts: float) -> list[dict[str, Any]]:
    return [m for m in detections(sub, name) if m["ts"] > ts]


def test_a_threshold_push_applies_live_and_survives_a_restart(tmp_path: Path, broker: Broker,
                                                              looping_clip: Path) -> None:
    config = write_config(tmp_path, broker, [stream("a", looping_clip)])
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: len(detections(sub, "a")) >= 5, timeout=30, what="detections")
            labels = {d["label"] for m in detections(sub, "a") for d in m["detections"]}
            assert {"circle", "square"} <= labels
            assert state(sub)["version"] is None
            sent = time.time()
            result = push(sub, {"model": {"classes": ["circle"], "confidence": 0.6}}, version=1)
            took = time.time() - sent
            assert result["status"] == "applied" and result["errors"] == [] and result["version"] == 1, result
            assert took < APPLIED_WITHIN_S, f"applied after {took:.2f} s"
            sub.wait_for(lambda: len(after(sub, "a", sent + took)) >= 5, timeout=10, what="detections after it")
            found = [d for m in after(sub, "a", sent + took) for d in m["detections"]]
            assert found and {d["label"] for d in found} == {"circle"} and min(d["score"] for d in found) >= 0.6
            assert_contiguous([m["seq"] for m in detections(sub, "a")], "seq")  # applied in place
            sub.wait_for(lambda: state(sub)["version"] == 1, timeout=5, what="the config state")
            assert state(sub)["config"]["model"]["classes"] == ["circle"]
            since_push = [m.json() for m in sub.messages(f"{P}/config/state") if m.json()["ts"] > sent]
            assert [s["version"] for s in since_push] == [1]  # one state a push, already with its version
            assert [e["kind"] for e in events(sub) if e["kind"].startswith("config_")] == ["config_applied"]
            print(f"\nthreshold push: result after {took:.2f} s")
            assert daemon.stop() == 0
        finally:
            daemon.kill()
        restarted = Daemon(config)  # the same config file: the push is persisted beside it
        try:
            started = time.time()
            sub.wait_for(lambda: len(after(sub, "a", started)) >= 5, timeout=30, what="detections after restart")
            labels = {d["label"] for m in after(sub, "a", started) for d in m["detections"]}
            assert labels == {"circle"}, labels
            assert "persisted pushes applied" in restarted.log()
            applied = len(events(sub, "config_applied"))
            restarted.send(signal.SIGHUP)  # the file read again, the pushes applied over it again
            sub.wait_for(lambda: len(events(sub, "config_applied")) > applied, timeout=10, what="the reload")
            reloaded = time.time()
            sub.wait_for(lambda: len(after(sub, "a", reloaded)) >= 5, timeout=10, what="detections after SIGHUP")
            assert {d["label"] for m in after(sub, "a", reloaded) for d in m["detections"]} == {"circle"}
            assert push(sub, {"model": {"classes": None}}, version=1)["errors"][0].startswith("version: 1 is stale")
            assert restarted.stop() == 0
        finally:
            restarted.kill()


def test_a_stream_is_added_then_removed_live(tmp_path: Path, broker: Broker, looping_clip: Path) -> None:
    config = write_config(tmp_path, broker, [stream("a", looping_clip)])
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: len(detections(sub, "a")) >= 5, timeout=30, what="detections on a")
            both = [stream("a", looping_clip), stream("b", looping_clip)]
            assert push(sub, {"streams": both}, version=1)["status"] == "applied"
            sub.wait_for(lambda: len(detections(sub, "b")) >= 5, timeout=30, what="detections on b")
            assert push(sub, {"streams": [stream("a", looping_clip)]}, version=2)["status"] == "applied"
            removed = time.time()
            sub.wait_for(lambda: len(after(sub, "a", removed + 1)) >= 5, timeout=10, what="a going on")
            assert not after(sub, "b", removed + 1), "b still publishes"
            a = detections(sub, "a")
            assert_contiguous([m["seq"] for m in a], "a's seq")
            frame_ids = [m["frame_id"] for m in a]
            assert all(x < y for x, y in zip(frame_ids, frame_ids[1:])), "a was restarted"
            assert daemon.stop() == 0
        finally:
            daemon.kill()


def test_bad_pushes_are_refused_and_change_nothing(tmp_path: Path, broker: Broker, looping_clip: Path) -> None:
    """Each refusal names the key path; the device keeps its config (same state hash) and seq has no gap."""
    config = write_config(tmp_path, broker, [stream("a", looping_clip)])
    data = yaml.safe_load(config.read_text())
    data["remote_config"]["max_payload_kb"] = 2
    config.write_text(yaml.safe_dump(data))
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere" / "other.onnx"
    outside.parent.mkdir()
    shutil.copy(DEMO_MODEL, outside)
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: len(detections(sub, "a")) >= 5, timeout=30, what="detections")
            assert push(sub, {"health": {"interval_s": 2}}, version=10)["status"] == "applied"
            sub.wait_for(lambda: state(sub)["version"] == 10, timeout=5, what="the config state")
            before = state(sub)["hash"]
            cases: list[tuple[dict[str, Any], str]] = [
                ({"patch": {"model": {"confidence": 2}}}, "config.model.confidence: Input should be less than"),
                ({"patch": {"model": {"confidence": 0.5}}, "version": 9}, "version: 9 is stale"),
                ({"raw": json.dumps({"id": "big", "version": 11, "config": {"device_id": "x" * 3000}}).encode()},
                 "payload of"),
                ({"raw": b"id: broken\nversion: 11\nconfig: {model: [\n"}, "not valid JSON or YAML"),
                ({"raw": b"\xff\xfe{]"}, "not valid JSON or YAML"),
                ({"patch": {"model": {"path": str(outside)}}}, "model.path: "),
                ({"patch": {"model": {"labels": "../../etc/labels.txt"}}}, "model.labels: '..' refused"),
                ({"patch": {"mqtt": {"password": "hunter2"}}}, "mqtt.password: inline secret refused"),
                ({"patch": {"streams": [stream("a", looping_clip, source="rtsp://u:pw@10.0.0.9/live")]}},
                 "streams[0].source: inline secret refused"),
                ({"patch": {"model": {"colour": "red"}}}, "config.model.colour: unknown key"),
                ({"patch": {"remote_config": {"enabled": False}}}, "remote_config.enabled: set in the config file"),
                ({"patch": [1, 2]}, "config: must be a mapping"),
            ]
            for case, expected in cases:
                result = push(sub, case.get("patch"), version=case.get("version", 11), raw=case.get("raw"))
                assert result["status"] == "rejected", (case, result)
                assert any(expected in e for e in result["errors"]), (expected, result["errors"])
            assert "outside the folders a push may use" in push(sub, {"model": {"path": str(outside)}},
                                                                  version=11)["errors"][0]
            answered = len(results(sub))
            sub.publish(f"{P}/config/set", json.dumps({"id": "kept", "version": 12, "config": {}}), retain=True)
            time.sleep(1.0)
            assert len(results(sub)) == answered, "a retained push was answered"
            sub.publish(f"{P}/config/set", b"", retain=True)  # clear it from the broker
            assert state(sub)["hash"] == before and state(sub)["version"] == 10
            rejected = events(sub, "config_rejected")
            assert len(rejected) == len(cases) + 1 and all(e["errors"] for e in rejected)
            for event in rejected:
                jsonschema.validate(event, SCHEMAS["event"])
            time.sleep(1.0)
            assert_contiguous([m["seq"] for m in detections(sub, "a")], "seq")
            assert daemon.process.poll() is None and daemon.stop() == 0
        finally:
            daemon.kill()


def test_signed_pushes(tmp_path: Path, broker: Broker, looping_clip: Path) -> None:
    key = b"0123456789abcdef0123456789abcdef"
    (tmp_path / "push.key").write_bytes(key + b"\n")
    config = write_config(tmp_path, broker, [stream("a", looping_clip)])
    data = yaml.safe_load(config.read_text())
    data["remote_config"]["hmac_key_file"] = "push.key"  # relative: beside the config file
    config.write_text(yaml.safe_dump(data))
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: len(detections(sub, "a")) >= 3, timeout=30, what="detections")
            patch = {"model": {"confidence": 0.5}}
            assert push(sub, patch, version=1)["errors"][0].startswith("unsigned")
            assert push(sub, patch, version=1, signature="00" * 32)["errors"][0].startswith("bad signature")
            assert push(sub, patch, version=1, key=b"another key")["errors"][0].startswith("bad signature")
            assert push(sub, patch, version=1, key=key)["status"] == "applied"
            assert daemon.stop() == 0
        finally:
            daemon.kill()


class ModelServer(ThreadingHTTPServer):
    """Serves files by name; ``die`` names the files whose body stops half-way, every time."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.die = files, set()
        super().__init__(("127.0.0.1", 0), _ModelHandler)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _ModelHandler(BaseHTTPRequestHandler):
    server: ModelServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.server.die:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    server = ModelServer({"shapes-v2.onnx": DEMO_MODEL.read_bytes(), "broken.onnx": b"not an onnx model" * 1000})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_model_updates(tmp_path: Path, broker: Broker, looping_clip: Path, model_server: ModelServer) -> None:
    model = model_server.files["shapes-v2.onnx"]
    sha = hashlib.sha256(model).hexdigest()
    config = write_config(tmp_path, broker, [stream("a", looping_clip)])
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: len(detections(sub, "a")) >= 3, timeout=30, what="detections")

            def serving() -> str:
                return detections(sub, "a")[-1]["model"]["name"]

            bad = [({"url": model_server.url("shapes-v2.onnx"), "sha256": "0" * 64}, "sha256 mismatch"),
                   ({"url": model_server.url("broken.onnx"),
                     "sha256": hashlib.sha256(model_server.files["broken.onnx"]).hexdigest()}, "model.path"),
                   ({"url": model_server.url("missing.onnx"), "sha256": sha}, "HTTP 404")]
            for version, (model_patch, expected) in enumerate(bad, 1):
                result = push(sub, {"model": model_patch}, version=version)
                assert result["status"] == "rejected" and any(expected in e for e in result["errors"]), result
                assert serving() == "shapes-yolov8"
            model_server.die.add("shapes-v2.onnx")
            result = push(sub, {"model": {"url": model_server.url("shapes-v2.onnx"), "sha256": sha}}, version=4)
            assert result["status"] == "rejected" and "bytes arrived" in result["errors"][0], result
            assert serving() == "shapes-yolov8" and not events(sub, "model_switched")
            model_server.die.clear()
            result = push(sub, {"model": {"url": model_server.url("shapes-v2.onnx"), "sha256": sha}}, version=5)
            assert result["status"] == "applied", result
            switched = events(sub, "model_switched")
            assert len(switched) == 1 and switched[0]["from"].startswith("shapes-yolov8 ")
            assert switched[0]["to"].startswith("shapes-v2 ")
            jsonschema.validate(switched[0], SCHEMAS["event"])
            sub.wait_for(lambda: serving() == "shapes-v2", timeout=10, what="detections from the new model")
            assert_contiguous([m["seq"] for m in detections(sub, "a")], "seq")
            stored = tmp_path / "state" / "models" / sha / "shapes-v2.onnx"
            assert stored.read_bytes() == model
            assert "resuming" in daemon.log() or "bytes arrived" in daemon.log()
            assert daemon.stop() == 0
        finally:
            daemon.kill()


def test_mqtt_changes_are_tried_first_and_lose_nothing(tmp_path: Path, broker: Broker, looping_clip: Path) -> None:
    config = write_config(tmp_path, broker, [stream("a", looping_clip)])
    with Broker(tmp_path / "second") as second, Subscriber(broker, f"{P}/#").start() as sub, \
            Subscriber(second, f"{P}/#", client_id="second-subscriber").start() as sub2:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: len(detections(sub, "a")) >= 5, timeout=30, what="detections")
            dead = second.port + 1 if second.port < 65535 else second.port - 1
            result = push(sub, {"mqtt": {"port": dead}}, version=1)
            assert result["status"] == "rejected" and result["errors"][0].startswith("mqtt: "), result
            rejected_at = time.time()
            sub.wait_for(lambda: len(after(sub, "a", rejected_at)) >= 3, timeout=10, what="the first broker")
            sent = time.time()
            moved = json.dumps({"id": "move", "version": 2, "config": {"mqtt": {"port": second.port}}})
            # The second broker answers the daemon's probe only a second after the first stops acknowledging:
            # whatever the daemon publishes meanwhile is queued when it moves, and must reach the second broker.
            second.pause()
            sub.publish(f"{P}/config/set", moved)
            time.sleep(0.05)  # the push is with the daemon
            broker.pause()
            time.sleep(1.0)
            second.resume()
            try:
                sub2.wait_for(lambda: [r for r in results(sub2) if r["id"] == "move"], timeout=30,
                              what="the result, from the second broker")
                assert results(sub2)[-1]["status"] == "applied"
                sub2.wait_for(lambda: len(detections(sub2, "a")) >= 10, timeout=30, what="detections on the second")
                assert daemon.stop() == 0
            finally:
                broker.resume()
        finally:
            daemon.kill()
        seqs = sorted({m["seq"] for m in detections(sub, "a") + detections(sub2, "a")})
        assert_contiguous(seqs, "seq across the two brokers")
        handed = re.search(r"handing (\d+) queued messages over", daemon.log())
        assert handed and int(handed[1]) > 0, "nothing was queued at the move: the test proves nothing"
        assert [m.text for m in sub2.messages(f"{P}/status")][:1] == ["online"]
        print(f"\nmoved brokers {time.time() - sent:.1f} s after the push; {handed[1]} queued messages handed over; "
              f"{len(seqs)} messages, none lost")


def test_a_fleet_push_reaches_two_daemons_and_the_cli_reports_both(tmp_path: Path, broker: Broker,
                                                                  looping_clip: Path) -> None:
    daemons = []
    try:
        for device in ("fleet-1", "fleet-2"):
            folder = tmp_path / device
            folder.mkdir()
            config = write_config(folder, broker, [stream("a", looping_clip, max_fps=2)])
            data = yaml.safe_load(config.read_text())
            data["device_id"] = device
            data["remote_config"]["groups"] = ["north"]
            config.write_text(yaml.safe_dump(data))
            daemons.append(Daemon(config))
        with Subscriber(broker, "edged/+/config/state").start() as sub:
            sub.wait_for(lambda: len({m.topic for m in sub.messages()}) == 2, timeout=60, what="both daemons up")
        patch = tmp_path / "patch.yaml"
        patch.write_text("model:\n  confidence: 0.55\n")
        done = run_edged("config", "push", "--fleet", patch, "--port", broker.port, "--timeout", 20)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "fleet-1: applied" in done.stdout and "fleet-2: applied" in done.stdout, done.stdout
        done = run_edged("config", "push", "--group", "north", patch, "--port", broker.port, "--timeout", 20)
        assert done.returncode == 0 and "2 applied" in done.stdout, done.stdout + done.stderr
        got = run_edged("config", "get", "fleet-2", "--port", broker.port)
        assert got.returncode == 0 and json.loads(got.stdout)["config"]["model"]["confidence"] == 0.55
        for daemon in daemons:
            assert daemon.stop() == 0
    finally:
        for daemon in daemons:
            daemon.kill()


def test_persisted_pushes_that_no_longer_fit_are_set_aside(tmp_path: Path, broker: Broker,
                                                          looping_clip: Path) -> None:
    config = write_config(tmp_path, broker, [stream("a", looping_clip)])
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "remote-config.json").write_text(json.dumps(
        {"schema": "edged.remote_state/1", "version": 3, "ids": ["x"], "patches": [{"model": {"iou": 7}}]}))
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: len(detections(sub, "a")) >= 3, timeout=30, what="detections")
            rejected = events(sub, "config_rejected")
            assert rejected and "config.model.iou" in rejected[0]["detail"], rejected
            assert list(state_dir.glob("remote-config.json.bad-*")) and state(sub)["version"] is None
            daemon.send(signal.SIGHUP)  # nothing changed: applied, and the pushes go on working
            sub.wait_for(lambda: events(sub, "config_applied"), timeout=10, what="the reload")  # the first one
            assert push(sub, {"model": {"iou": 0.6}}, version=1)["status"] == "applied"
            assert daemon.stop() == 0
        finally:
            daemon.kill()


def test_an_unwritable_state_dir_refuses_pushes_and_the_daemon_runs_on(tmp_path: Path, broker: Broker,
                                                                        looping_clip: Path) -> None:
    config = write_config(tmp_path, broker, [stream("a", looping_clip)])
    data = yaml.safe_load(config.read_text())
    (tmp_path / "a-file").write_text("")
    data["remote_config"]["state_dir"] = str(tmp_path / "a-file" / "state")  # cannot be made: not writable
    config.write_text(yaml.safe_dump(data))
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: len(detections(sub, "a")) >= 3, timeout=30, what="detections")
            result = push(sub, {"model": {"confidence": 0.5}}, version=1)
            assert result["status"] == "rejected" and "not writable" in result["errors"][0], result
            seen = len(detections(sub, "a"))
            sub.wait_for(lambda: len(detections(sub, "a")) > seen + 3, timeout=10, what="detections going on")
            assert daemon.stop() == 0
        finally:
            daemon.kill()
