"""The live view and recording (issue 17): the real daemon recording MCAP with a Foxglove client connected over
WebSocket, read back with the mcap reader; rotation and the folder's limit; a file cut short; what cannot start."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from foxglove import Context
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from mcap.reader import make_reader
from mcap.stream_reader import StreamReader
from mcap_protobuf.decoder import DecoderFactory
from websockets.sync.client import connect

from edged.foxglove_messages import StreamChannels, image_message, json_bytes, nanoseconds
from edged.recording import Recorder, recordings
from edged.synthetic import write_clip
from tests.broker import Broker, Subscriber
from tests.conftest import REPO, run_edged
from tests.daemon import P, Daemon, detections, events, free_port, write_config

SUBPROTOCOL = "foxglove.sdk.v1"  # what foxglove-sdk's server speaks: foxglove.websocket.v1's successor
STREAM = "cam"
SCREENSHOT = REPO / "docs" / "live-view.png"


class FoxgloveClient:
    """A WebSocket client of the Foxglove protocol, in a thread: subscribes to topics as they are advertised and
    keeps what arrives, (topic, log time ns, decoded message; the raw bytes with ``decode=False``)."""

    def __init__(self, url: str, topics: list[str], decode: bool = True):
        self.url, self.topics, self.decode = url, topics, decode
        self.received: list[tuple[str, int, Any]] = []
        self.advertised: dict[str, dict[str, Any]] = {}
        self._classes: dict[int, tuple[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> FoxgloveClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _decoder(self, channel: dict[str, Any]) -> Any:
        if not self.decode:
            return bytes
        if channel["encoding"] == "json":
            return json.loads
        files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(channel["schema"]))
        pool = descriptor_pool.DescriptorPool()
        for file in files.file:
            pool.Add(file)
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(channel["schemaName"])).FromString

    def _run(self) -> None:
        try:
            with connect(self.url, subprotocols=[SUBPROTOCOL], open_timeout=10) as ws:
                while not self._stop.is_set():
                    try:
                        data = ws.recv(timeout=0.2)
                    except TimeoutError:
                        continue
                    if isinstance(data, str):
                        message = json.loads(data)
                        if message["op"] == "advertise":
                            wanted = [c for c in message["channels"] if c["topic"] in self.topics]
                            for channel in wanted:
                                self.advertised[channel["topic"]] = channel
                                self._classes[channel["id"]] = (channel["topic"], self._decoder(channel))
                            ws.send(json.dumps({"op": "subscribe", "subscriptions": [
                                {"id": c["id"], "channelId": c["id"]} for c in wanted]}))
                    elif data[0] == 1:  # message data: op, subscription id, log time (ns), payload
                        _, subscription, log_time = struct.unpack_from("<BIQ", data)
                        topic, decode = self._classes[subscription]
                        self.received.append((topic, log_time, decode(data[13:])))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def of(self, topic: str) -> list[tuple[int, Any]]:
        return [(log_time, message) for name, log_time, message in self.received if name == topic]

    def wait_for(self, topic: str, count: int, timeout: float = 30) -> None:
        """Until ``count`` messages of ``topic`` arrived (the test fails after ``timeout``, or on an error)."""
        deadline = time.monotonic() + timeout
        while len(self.of(topic)) < count and self.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.error is None, self.error
        assert len(self.of(topic)) >= count, f"{len(self.of(topic))} of {count} messages on {topic} in {timeout} s"


def read_recording(path: Path) -> dict[str, list[tuple[int, str, Any]]]:
    """Topic -> [(log time, schema name, decoded message)] of a whole MCAP file."""
    found: dict[str, list[tuple[int, str, Any]]] = {}
    protobuf = DecoderFactory()
    with path.open("rb") as f:
        for schema, channel, message in make_reader(f).iter_messages(log_time_order=False):
            if channel.message_encoding == "json":
                value = json.loads(message.data)
            else:
                value = protobuf.decoder_for(channel.message_encoding, schema)(message.data)
            found.setdefault(channel.topic, []).append((message.log_time, schema.name, value))
    return found


def annotated_boxes(annotations: Any) -> list[list[float]]:
    """x1, y1, x2, y2 of each line loop of an ImageAnnotations message."""
    return sorted([[p.points[0].x, p.points[0].y, p.points[2].x, p.points[2].y] for p in annotations.points])


def render(image: np.ndarray, annotations: Any) -> np.ndarray:
    """A recorded frame with its recorded annotations drawn, as Foxglove's image panel shows them."""
    out = image.copy()
    for box, text in zip(annotations.points, annotations.texts):
        color = tuple(int(c * 255) for c in (box.outline_color.b, box.outline_color.g, box.outline_color.r))
        (x1, y1), (x2, y2) = (box.points[0].x, box.points[0].y), (box.points[2].x, box.points[2].y)
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), color, 2, cv2.LINE_AA)
        cv2.putText(out, text.text, (int(text.position.x), int(text.position.y)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    color, 1, cv2.LINE_AA)
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("live") / "live.mp4", seed=31, frames=30, width=320, height=240)


def test_recorded_by_the_daemon_with_a_client_connected(broker: Broker, clip: Path, tmp_path: Path) -> None:
    port = free_port()
    record = tmp_path / "rec"
    # 10 frames a second, the live view's limit above it: every frame is recorded and sent.
    config = write_config(tmp_path, broker, [{"name": STREAM, "source": str(clip), "realtime": True, "loop": True,
                                              "max_fps": 10}],
                          foxglove={"server": {"enabled": True, "port": port}, "max_fps": 30})
    topics = [f"/{STREAM}/annotations", f"/{STREAM}/detections", "/health"]
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config, args=("--record", str(record)))
        try:
            sub.wait_for(lambda: detections(sub, STREAM), timeout=60, what="the first detections")
            with FoxgloveClient(f"ws://127.0.0.1:{port}", topics) as client:
                client.wait_for(f"/{STREAM}/annotations", 20)
            assert daemon.stop(10) == 0
        finally:
            daemon.kill()
        published = detections(sub, STREAM)
    by_time = {nanoseconds(m["ts_capture"]): m for m in published}

    # The WebSocket client: annotations whose boxes are the MQTT detections' of the same frame.
    assert {c["schemaName"] for c in client.advertised.values()} == {"foxglove.ImageAnnotations",
                                                                     "edged.detections/1", "edged.health/1"}
    annotations = client.of(f"/{STREAM}/annotations")
    compared = 0
    for log_time, message in annotations:
        assert log_time in by_time, "an annotation at a time no detections message has"
        assert annotated_boxes(message) == sorted(d["box"] for d in by_time[log_time]["detections"])
        assert [t.text.split()[0] for t in message.texts] == [d["label"] for d in by_time[log_time]["detections"]]
        compared += bool(message.points)
    assert compared >= 10
    assert all(m["detections"] == by_time[t]["detections"] for t, m in client.of(f"/{STREAM}/detections"))

    # The recording, read back with the mcap reader: every published frame, at its capture time.
    files = recordings(record)
    assert len(files) == 1, files
    recorded = read_recording(files[0])
    assert set(recorded) == {f"/{STREAM}/image", f"/{STREAM}/annotations", f"/{STREAM}/detections", "/health"}
    schemas = {topic: {schema for _, schema, _ in items} for topic, items in recorded.items()}
    assert schemas == {f"/{STREAM}/image": {"foxglove.CompressedImage"},
                       f"/{STREAM}/annotations": {"foxglove.ImageAnnotations"},
                       f"/{STREAM}/detections": {"edged.detections/1"}, "/health": {"edged.health/1"}}
    for topic in (f"/{STREAM}/image", f"/{STREAM}/annotations", f"/{STREAM}/detections"):
        assert sorted(t for t, _, _ in recorded[topic]) == sorted(by_time), topic
    images = recorded[f"/{STREAM}/image"]
    for log_time, _, image in images:
        stamp = image.timestamp.seconds * 1_000_000_000 + image.timestamp.nanos
        assert stamp == log_time and image.format == "jpeg" and image.frame_id == STREAM
    assert [json.loads(json.dumps(m)) for _, _, m in recorded[f"/{STREAM}/detections"]] == \
        [by_time[t] for t, _, _ in recorded[f"/{STREAM}/detections"]]
    print(f"\n{len(published)} frames published: {len(images)} images, "
          f"{len(recorded[f'/{STREAM}/annotations'])} annotations, {len(recorded[f'/{STREAM}/detections'])} "
          f"detections recorded ({files[0].stat().st_size / 1e6:.2f} MB); {len(annotations)} annotations by "
          f"WebSocket")

    # The README's picture: a recorded frame with its recorded annotations (the first with four or more boxes).
    annotations_at = {t: a for t, _, a in recorded[f"/{STREAM}/annotations"]}
    log_time, _, image = next(item for item in images if len(annotations_at[item[0]].points) >= 4)
    frame = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR)
    picture = render(frame, annotations_at[log_time])
    assert picture.shape == frame.shape and not np.array_equal(picture, frame)
    target = SCREENSHOT if os.environ.get("EDGED_WRITE_DOCS") else tmp_path / SCREENSHOT.name
    cv2.imwrite(str(target), cv2.resize(picture, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))


def _log_frames(channels: StreamChannels, frames: int, size: int, start: float) -> None:
    noise = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()  # incompressible
    for index in range(frames):
        ts = start + index / 10
        channels.image.log(image_message(STREAM, ts, noise, "jpeg"), log_time=nanoseconds(ts))
        channels.detections.log(json_bytes({"frame_id": index, "ts_capture": ts}), log_time=nanoseconds(ts))


def test_rotation_keeps_the_folder_under_its_limit(tmp_path: Path) -> None:
    context = Context()
    channels = StreamChannels(context, STREAM)
    old = tmp_path / "older-run.mcap"
    old.write_bytes(b"\0" * 300_000)  # a previous run's file: the oldest, deleted first
    os.utime(old, (1, 1))
    recorder = Recorder(context, tmp_path, max_file_mb=0.25, max_total_mb=1.0, device_id="dev")
    recorder.start()
    limit = 1.0 * 1024 * 1024
    for second in range(40):  # 40 x 10 frames of 20 kB: about 8 MB through a 1 MB folder
        _log_frames(channels, 10, 20_000, 1000.0 + second)
        recorder.tick(time.monotonic())
        files = recordings(tmp_path)
        # Between two ticks the open file may pass its size by what was logged meanwhile (200 kB here).
        assert sum(p.stat().st_size for p in files) <= limit + 200_000
    recorder.close()
    files = recordings(tmp_path)
    assert not old.exists() and recorder.files >= 10
    assert sum(p.stat().st_size for p in files) <= limit + 200_000
    assert all(p.stat().st_size <= 0.25 * 1024 * 1024 + 200_000 for p in files)
    messages = [read_recording(p) for p in files]  # every file whole and readable, the newest last
    first = [min(t for t, _, _ in m[f"/{STREAM}/image"]) for m in messages]
    assert first == sorted(first)
    print(f"\n{recorder.files} files written, {len(files)} kept: {sum(p.stat().st_size for p in files)} bytes")


def test_a_file_cut_short_keeps_its_flushed_chunks(tmp_path: Path) -> None:
    """A power cut: the file as it is on disk mid-recording (no summary, no footer), plus half a chunk."""
    context = Context()
    channels = StreamChannels(context, STREAM)
    recorder = Recorder(context, tmp_path, max_file_mb=64, max_total_mb=64, device_id="dev")
    recorder.start()
    _log_frames(channels, 30, 5_000, 1000.0)
    recorder.tick(time.monotonic() + 10)  # a flush: the chunk ends and reaches the disk
    _log_frames(channels, 5, 5_000, 1003.0)  # after the last flush: lost
    assert recorder.path is not None
    cut = tmp_path / "cut.mcap"
    shutil.copy(recorder.path, cut)
    with cut.open("ab") as f:
        f.write(b"\x06" + b"\x00" * 100)  # a chunk record whose write the power cut stopped
    recorder.close()
    images = []
    with cut.open("rb") as f:
        try:
            for record in StreamReader(f, skip_magic=False).records:
                if type(record).__name__ == "Message":
                    images.append(record.log_time)
        except Exception:  # the torn record at the end
            pass
    assert len(images) == 2 * 30  # image and detections of every frame up to the flush
    with cut.open("rb") as f, pytest.raises(Exception):
        make_reader(f).get_summary()  # a seeking reader wants the footer


def test_a_port_in_use_leaves_the_daemon_serving(broker: Broker, clip: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, broker, [{"name": STREAM, "source": str(clip), "realtime": True,
                                                  "loop": True, "max_fps": 10}],
                              foxglove={"server": {"enabled": True, "port": port}})
        with Subscriber(broker, f"{P}/#").start() as sub:
            daemon = Daemon(config)
            try:
                sub.wait_for(lambda: len(detections(sub, STREAM)) >= 5, timeout=60, what="detections")
                errors = events(sub, "error")
                assert daemon.stop(10) == 0
            finally:
                daemon.kill()
    assert any("foxglove.server" in e["detail"] and str(port) in e["detail"] for e in errors), errors
    assert "foxglove.server: cannot listen" in daemon.log()


def test_an_unwritable_recording_folder_is_refused_at_start(broker: Broker, clip: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    config = write_config(tmp_path, broker, [{"name": STREAM, "source": str(clip)}],
                          foxglove={"mcap": {"enabled": True, "dir": str(blocked / "rec")}})
    result = run_edged("run", "-c", config)
    assert result.returncode == 2 and f"foxglove.mcap.dir: {blocked / 'rec'}: cannot write" in result.stderr, \
        result.stderr
    result = run_edged("check-config", "-c", config)
    assert result.returncode == 2 and "foxglove.mcap.dir" in result.stderr
    plain = write_config(tmp_path, broker, [{"name": STREAM, "source": str(clip)}])
    result = run_edged("run", "-c", plain, "--record", blocked / "rec")
    assert result.returncode == 2 and "--record:" in result.stderr, result.stderr


def test_a_reload_turns_the_live_view_on(broker: Broker, clip: Path, tmp_path: Path) -> None:
    port = free_port()
    streams = [{"name": STREAM, "source": str(clip), "realtime": True, "loop": True, "max_fps": 10}]
    config = write_config(tmp_path, broker, streams)
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: detections(sub, STREAM), timeout=60, what="the first detections")
            write_config(tmp_path, broker, streams, foxglove={"server": {"enabled": True, "port": port}})
            daemon.send(signal.SIGHUP)
            sub.wait_for(lambda: events(sub, "config_applied"), timeout=30, what="config_applied")
            with FoxgloveClient(f"ws://127.0.0.1:{port}", [f"/{STREAM}/image"]) as client:
                client.wait_for(f"/{STREAM}/image", 3)
            assert daemon.stop(10) == 0
        finally:
            daemon.kill()
    assert "applied in place: foxglove" in events(sub, "config_applied")[-1]["detail"]
    images = client.of(f"/{STREAM}/image")
    stamps = [t2 - t1 for (t1, _), (t2, _) in zip(images, images[1:])]
    assert min(stamps) >= 0.2e9 - 5e6  # foxglove.max_fps 5 of a 10 fps stream: every other frame


def test_no_client_and_no_recording_encode_nothing(tmp_path: Path) -> None:
    from edged.config import FoxgloveSettings
    from edged.live_view import LiveView
    from edged.sources import Frame

    port = free_port()
    view = LiveView(FoxgloveSettings.model_validate({"server": {"enabled": True, "port": port}, "max_fps": 5}),
                    "dev")
    assert view.start() == []
    sink = view.sink(STREAM)
    image = np.zeros((48, 64, 3), np.uint8)

    def feed(frames: int, start: float) -> None:
        for index in range(frames):  # 30 fps for a second
            ts = start + index / 30
            sink.write({"ts_capture": ts, "detections": []}, Frame(index, image, ts), None)  # type: ignore[arg-type]
            time.sleep(1 / 30)

    try:
        feed(30, 1000.0)
        assert view.encoded == 0
        with FoxgloveClient(f"ws://127.0.0.1:{port}", [f"/{STREAM}/image"]) as client:
            deadline = time.monotonic() + 10
            while not client.advertised and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # the subscription reaches the server
            feed(30, 1001.0)
            time.sleep(0.5)
        assert client.error is None, client.error
    finally:
        view.stop()
    assert 4 <= view.encoded <= 6  # max_fps 5 over a second of 30 fps
    assert len(client.of(f"/{STREAM}/image")) == view.encoded
