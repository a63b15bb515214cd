"""The daemon's live view and recording (``foxglove``): a Foxglove WebSocket server and an MCAP recorder on one
foxglove-sdk context, each stream's channels (edged.foxglove_messages), and the thread that encodes the frames.

A pipeline hands every frame to its stream's ``LiveViewSink``. Only where a client subscribed to the stream's
image or annotations, or a recording runs, and at most ``foxglove.max_fps`` a stream (by capture time), does it
keep a reference to the frame for the encoder thread (newest wins: the pipeline never waits); the detections
JSON goes out every frame to whoever subscribed to it. With no client and no recording, nothing is encoded.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import foxglove
import numpy as np
from foxglove import Context

from edged.config import FoxgloveSettings
from edged.detections import DetectionResult
from edged.errors import EdgedError
from edged.foxglove_messages import (StreamChannels, annotations_message, encode_image, health_channel, image_message,
                                     json_bytes, nanoseconds)
from edged.recording import FLUSH_S, Recorder
from edged.sources import Frame

log = logging.getLogger("edged.live_view")

RATE_SLACK_S = 0.005  # capture times jitter: a frame this early for the max_fps interval still goes


class LiveView:
    """The server, the recorder and the channels; ``start`` raises nothing: what cannot start is logged (and
    returned) and the daemon goes on serving MQTT."""

    def __init__(self, settings: FoxgloveSettings, device_id: str, record_dir: Path | None = None):
        self.settings = settings
        self.device_id = device_id
        self.record_dir = record_dir  # edged run --record DIR: recording on, in DIR
        self.context = Context()
        self.server: foxglove.WebSocketServer | None = None
        self.recorder: Recorder | None = None
        self._health = health_channel(self.context)
        self._streams: dict[str, StreamChannels] = {}
        self._lock = threading.RLock()  # the channels' logging against a recording's next file
        self._pending: dict[str, tuple[StreamChannels, Frame, list[dict[str, Any]]]] = {}
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="live-view", daemon=True)
        self.encoded = 0  # frames encoded, all streams

    @property
    def recording_dir(self) -> Path | None:
        return self.record_dir or (self.settings.mcap.dir if self.settings.mcap.enabled else None)

    def start(self) -> list[str]:
        """Start what is enabled; the problems, each naming its config key (logged as errors too)."""
        problems = []
        if self.settings.server.enabled:
            server = self.settings.server
            try:
                self.server = foxglove.start_server(name=f"edged {self.device_id}", host=server.host,
                                                    port=server.port, context=self.context)
                log.info("live view: ws://%s:%d (open it in Foxglove: Open connection)", server.host, self.server.port)
            except Exception as exc:  # the SDK's RuntimeError: a port in use, an address not here
                problems.append(f"foxglove.server: cannot listen on {server.host}:{server.port} ({exc})")
        if (folder := self.recording_dir) is not None:
            mcap = self.settings.mcap
            self.recorder = Recorder(self.context, folder, mcap.max_file_mb, mcap.max_total_mb, self.device_id,
                                     "--record" if self.record_dir else "foxglove.mcap.dir")
            try:
                self.recorder.start()
            except EdgedError as exc:
                problems.append(str(exc))
                self.recorder = None
        for problem in problems:
            log.error("live view: %s; the daemon goes on without it", problem)
        self._thread.start()
        return problems

    def sink(self, stream: str) -> LiveViewSink:
        with self._lock:
            channels = self._streams.get(stream)
            if channels is None:
                channels = self._streams[stream] = StreamChannels(self.context, stream)
        return LiveViewSink(self, stream, channels)

    def health(self, message: dict[str, Any]) -> None:
        if self._health.has_sinks():
            with self._lock:
                self._health.log(json_bytes(message), log_time=nanoseconds(message["ts"]))

    def log_detections(self, channels: StreamChannels, message: dict[str, Any]) -> None:
        if channels.detections.has_sinks():
            with self._lock:
                channels.detections.log(json_bytes(message), log_time=nanoseconds(message["ts_capture"]))

    def submit(self, stream: str, channels: StreamChannels, frame: Frame, detections: list[dict[str, Any]]) -> None:
        with self._wake:
            self._pending[stream] = (channels, frame, detections)  # a frame not yet encoded is replaced
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._pending and not self._stopping:
                    self._wake.wait(FLUSH_S / 2)
                pending, self._pending = self._pending, {}
                stopping = self._stopping
            for stream, (channels, frame, detections) in pending.items():
                self._encode(stream, channels, frame.image, frame.ts_capture, detections)
            if self.recorder is not None:
                with self._lock:
                    self.recorder.tick(time.monotonic())
            if stopping:
                return

    def _encode(self, stream: str, channels: StreamChannels, image: np.ndarray, ts_capture: float,
                detections: list[dict[str, Any]]) -> None:
        try:
            data = encode_image(image, self.settings.image_format, self.settings.jpeg_quality)
        except Exception as exc:  # one frame's problem: the next one is tried
            log.warning("live view: %s: a frame was not encoded: %s", stream, exc)
            return
        log_time = nanoseconds(ts_capture)
        with self._lock:
            channels.image.log(image_message(stream, ts_capture, data, self.settings.image_format), log_time=log_time)
            channels.annotations.log(annotations_message(ts_capture, detections), log_time=log_time)
        self.encoded += 1

    def stop(self) -> None:
        """Encode what is pending, close the recording (its summary written) and the server."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:
            if self.recorder is not None:
                self.recorder.close()
                log.info("recording closed: %s", self.recorder.path)
            for channels in self._streams.values():
                channels.close()
            self._health.close()
        if self.server is not None:
            self.server.stop()


class LiveViewSink:
    """A pipeline sink: one stream's frames to the live view."""

    def __init__(self, view: LiveView, stream: str, channels: StreamChannels):
        self.view, self.stream, self.channels = view, stream, channels
        self.interval = 1.0 / view.settings.max_fps
        self._last_ts = -1e18

    def write(self, message: dict[str, Any], frame: Frame, result: DetectionResult) -> None:
        self.view.log_detections(self.channels, message)
        if frame.ts_capture - self._last_ts < self.interval - RATE_SLACK_S or not self.channels.wants_images():
            return
        self._last_ts = frame.ts_capture
        self.view.submit(self.stream, self.channels, frame, message["detections"])

    def close(self) -> None:
        pass
