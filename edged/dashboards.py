"""What dashboards subscribe to, derived from each stream's tracks: counts, object events, snapshots, and Home
Assistant discovery (contract: DESIGN.md 1.3; README "Objects, events and snapshots").

- ``P/streams/<stream>/objects`` (retained, ``edged.objects/1``): confirmed tracks in view per label, sent when a
  count has held for ``tracking.count_debounce_s`` (a flicker of one frame is no change), and again every
  health interval.
- ``object_entered`` / ``object_left`` events on ``P/events`` when a track is confirmed / dies (or the stream
  stops), with its best score and the box at it. Room for zones: an event could carry the zone it concerns.
- ``P/streams/<stream>/<label>/snapshot`` (retained JPEG): the frame where the newest object of that label had
  its best score so far, at most every ``snapshots.interval_s``. The pipeline only keeps a reference to the
  frame; scaling, drawing and JPEG encoding happen in one encoder thread, newest request wins, so a slow
  encode never holds up inference.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np

from edged import __version__
from edged.config import Config, SnapshotSettings, TrackingSettings
from edged.home_assistant import DiscoveryPublisher, discovery_entities
from edged.detections import DetectionResult
from edged.mqtt import MqttClient
from edged.sources import Frame
from edged.detections import TrackInfo
from edged.tracking import Tracker

log = logging.getLogger("edged.dashboards")

OBJECTS_SCHEMA = "edged.objects/1"
EventSink = Callable[..., None]  # (kind, detail, stream=..., **fields): the daemon's event publisher


@dataclass
class _Snapshot:
    frame: np.ndarray
    box: tuple[float, float, float, float]
    track_id: int
    score: float


class SnapshotEncoder:
    """One thread that turns frames into JPEGs and publishes them retained; per topic only the newest request
    waits, so it never falls behind the pipelines."""

    def __init__(self, mqtt: Callable[[], MqttClient | None]):
        self._mqtt = mqtt
        self._pending: dict[str, tuple[_Snapshot, SnapshotSettings]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
        self._thread.start()
        self.encoded = 0

    def submit(self, topic: str, snapshot: _Snapshot, settings: SnapshotSettings) -> None:
        with self._cond:
            self._pending[topic] = (snapshot, settings)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    return
                topic = next(iter(self._pending))
                snapshot, settings = self._pending.pop(topic)
            try:
                jpeg = encode_snapshot(snapshot.frame, snapshot.box, settings)
            except cv2.error as exc:
                log.warning("snapshot for %s not encoded: %s", topic, exc)
                continue
            mqtt = self._mqtt()
            if mqtt is not None:
                mqtt.set_retained(topic, jpeg)
                self.encoded += 1


def encode_snapshot(frame: np.ndarray, box: tuple[float, float, float, float], settings: SnapshotSettings) -> bytes:
    """The frame as a JPEG: at most ``max_width`` wide, the box drawn on it when ``boxes``."""
    height, width = frame.shape[:2]
    scale = min(1.0, settings.max_width / width)
    image = cv2.resize(frame, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA) \
        if scale < 1.0 else frame.copy()
    if settings.boxes:
        x1, y1, x2, y2 = (round(v * scale) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), (0, 255, 0), max(1, round(2 * scale)))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, settings.quality])
    if not ok:
        raise cv2.error("imencode failed")
    return data.tobytes()


class StreamObjects:
    """A pipeline sink for one stream: its counts, object events and snapshots."""

    def __init__(self, stream: str, tracker: Tracker, config: Config, mqtt: Callable[[], MqttClient | None],
                 event: EventSink, encoder: SnapshotEncoder):
        self.stream, self.tracker = stream, tracker
        self.tracking: TrackingSettings = config.tracking
        self.snapshots: SnapshotSettings = config.snapshots
        self.device_id = config.device_id
        self._mqtt, self._event, self._encoder = mqtt, event, encoder
        self._lock = threading.Lock()  # write() runs on the pipeline thread, resend() on the daemon's
        self._counts: dict[str, int] | None = None  # as last published
        self._seen: dict[str, int] = {}  # as the last frame had them
        self._seen_since = 0.0
        self._newest: dict[str, _Snapshot] = {}  # per label: the newest object's best frame so far
        self._sent_at: dict[str, float] = {}
        self._unsent: set[str] = set()

    # Sink interface
    def write(self, message: dict[str, Any], frame: Frame, result: DetectionResult) -> None:
        update = result.tracks
        if update is None:
            return
        for info in update.entered:
            self._object_event("object_entered", info)
        for info in update.left:
            self._object_event("object_left", info)
        self._count(update.in_view)
        if self.snapshots.enabled:
            self._snapshot_candidates(frame, result)

    def close(self) -> None:
        """The stream stopped: its objects are gone (their last frame was its last)."""
        for info in self.tracker.flush():
            self._object_event("object_left", info)
        self._count({})
        self.resend()

    def resend(self) -> None:
        """Publish the counts of the last frame now (every health interval, whether they changed or not, so
        that counts that keep flickering faster than the debounce still go out)."""
        with self._lock:
            self._counts = counts = dict(self._seen)
        self._publish_counts(counts)

    # counts
    def _count(self, in_view: dict[str, int]) -> None:
        now = time.monotonic()
        with self._lock:
            if in_view != self._seen:
                self._seen, self._seen_since = dict(in_view), now
            settled = now - self._seen_since >= self.tracking.count_debounce_s
            if self._seen == self._counts or not settled:
                return
            self._counts = dict(self._seen)
            counts = self._counts
        self._publish_counts(counts)

    def _publish_counts(self, counts: dict[str, int]) -> None:
        mqtt = self._mqtt()
        if mqtt is not None:
            mqtt.set_retained(mqtt.topic(f"streams/{self.stream}/objects"),
                              {"schema": OBJECTS_SCHEMA, "device_id": self.device_id, "ts": time.time(),
                               "stream": self.stream, "counts": counts, "total": sum(counts.values())})

    # events
    def _object_event(self, kind: str, info: TrackInfo) -> None:
        verb = "entered" if kind == "object_entered" else "left"
        detail = (f"{info.label} {info.track_id} {verb} stream {self.stream}"
                  + (f" after {info.duration_s:.1f} s." if verb == "left" else "."))
        self._event(kind, detail, stream=self.stream, track_id=info.track_id, label=info.label,
                    score=round(info.best_score, 4), box=[round(v, 1) for v in info.best_box],
                    first_seen=info.first_seen, last_seen=info.last_seen, duration_s=round(info.duration_s, 3))

    # snapshots
    def _snapshot_candidates(self, frame: Frame, result: DetectionResult) -> None:
        """Per label, the newest object (highest track id) and the frame of its best score; sent at most every
        ``interval_s``, and held back until then."""
        now = time.monotonic()
        for detection in result.detections:
            label, current = detection.label, self._newest.get(detection.label)
            assert detection.track_id is not None
            newer = current is None or detection.track_id > current.track_id
            better = current is not None and detection.track_id == current.track_id and detection.score > current.score
            if newer or better:
                self._newest[label] = _Snapshot(frame.image, detection.box, detection.track_id, detection.score)
                self._unsent.add(label)
        for label in list(self._unsent):
            if now - self._sent_at.get(label, -1e9) >= self.snapshots.interval_s:
                mqtt = self._mqtt()
                if mqtt is not None:
                    self._encoder.submit(mqtt.topic(f"streams/{self.stream}/{label}/snapshot"), self._newest[label],
                                         self.snapshots)
                self._sent_at[label] = now
                self._unsent.discard(label)


class HomeAssistant:
    """Discovery configs in step with the config and the connection; re-announced when Home Assistant says
    ``online`` on ``<discovery_prefix>/status``."""

    def __init__(self, mqtt: Callable[[], MqttClient | None]):
        self._mqtt = mqtt
        self._publisher = DiscoveryPublisher(self._publish)
        self._status_topic: str | None = None
        self._subscribed_on: MqttClient | None = None

    def configure(self, config: Config, labels: list[str], readings: set[str]) -> None:
        """Announce the entities for ``config`` and the sensor ``readings`` the host has (``Sensors.present``)."""
        mqtt = self._mqtt()
        if mqtt is None:
            return
        settings = config.home_assistant
        if not settings.enabled:
            self._publisher.withdraw()
            return
        try:
            entities = discovery_entities(config.device_id, config.mqtt.topic_prefix,
                                          [s.name for s in config.streams], labels, __version__, readings)
        except ValueError as exc:  # two names that would make one entity id
            log.error("Home Assistant discovery not announced: %s", exc)
            return
        self._publisher.announce(settings.discovery_prefix, entities, config.device_id)
        status = self._publisher.status_topic()
        if status is not None and (status != self._status_topic or mqtt is not self._subscribed_on):
            if self._status_topic is not None and mqtt is self._subscribed_on:
                mqtt.unsubscribe(self._status_topic)
            mqtt.subscribe(status, self._on_status)
            self._status_topic, self._subscribed_on = status, mqtt

    def _on_status(self, topic: str, payload: bytes, retained: bool, properties: dict[str, str]) -> None:
        if payload.strip() == b"online":
            log.info("Home Assistant is online: announcing the entities again")
            self._publisher.reannounce()

    def _publish(self, topic: str, payload: bytes | str, retain: bool) -> None:
        mqtt = self._mqtt()
        if mqtt is None:
            return
        if payload:
            mqtt.set_retained(topic, payload if isinstance(payload, bytes) else payload.encode())
        else:
            mqtt.clear_retained(topic)
