"""One stream of the daemon: its capture thread (``edged.streams``), its pipeline thread, where its
detections go, and the numbers health reports."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from edged.config import StreamSettings
from edged.dashboards import StreamObjects
from edged.detections import DetectionResult
from edged.health import RollingWindow, rounded
from edged.inference.detector import Detector
from edged.mqtt import MqttClient
from edged.pipeline import Pipeline
from edged.sinks import Sink
from edged.sources import Frame
from edged.streams import OUTAGE_STATES, StreamReader
from edged.tracking import Tracker

log = logging.getLogger("edged.daemon")  # the daemon's component (edged/logs.py): its log lines keep their name

PIPELINE_STUCK_S = 10.0  # an 'up' stream whose pipeline publishes nothing for this long is stuck: no watchdog


class MqttSink:
    """Publishes each detections message on ``P/streams/<stream>/detections`` through whichever MQTT client
    the daemon runs now (a reload may replace it)."""

    def __init__(self, mqtt: Callable[[], MqttClient], stream: str):
        self._mqtt = mqtt
        self._suffix = f"streams/{stream}/detections"

    def write(self, message: dict[str, Any], frame: Frame, result: DetectionResult) -> None:
        client = self._mqtt()
        client.publish(client.topic(self._suffix), message, droppable=True)

    def close(self) -> None:
        pass


class StreamRunner:
    """One stream: its capture thread, its pipeline thread, and the numbers health reports."""

    def __init__(self, settings: StreamSettings, detector: Detector, mqtt: Callable[[], MqttClient], device_id: str,
                 seq: int, on_state: Callable[[str, str, str], None], tracker: Tracker | None = None,
                 objects: StreamObjects | None = None, live_view: Sink | None = None):
        """``tracker`` and ``objects``: with tracking, the stream's tracker, and what publishes its objects;
        ``live_view``: the stream's sink of the live view and recording (edged.live_view)."""
        self.name = settings.name
        self.settings = settings
        self.reader = StreamReader(settings.name, str(settings.source), realtime=settings.realtime,
                                   max_fps=settings.max_fps, loop=settings.loop, on_state=self._on_state,
                                   stall_s=settings.stall_s, backoff_max_s=settings.reconnect_max_s)
        self._report_state = on_state
        self.objects = objects
        sinks: list[Sink] = [MqttSink(mqtt, settings.name), self, *([objects] if objects else []),
                             *([live_view] if live_view else [])]
        self.pipeline = Pipeline(detector, settings.name, sinks, device_id, seq, tracker)
        self.latency = RollingWindow()
        self.inference_ms = RollingWindow()
        self.settled = threading.Event()  # first result published, or the source reported down
        self.last_progress = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"pipeline-{self.name}", daemon=True)
        self._stopping = False

    # Sink interface: the pipeline hands every published message here too.
    def write(self, message: dict[str, Any], frame: Frame, result: DetectionResult) -> None:
        self.latency.add(message["latency_ms"]["total"])
        self.inference_ms.add(message["latency_ms"]["inference"])
        self.last_progress = time.monotonic()
        self.settled.set()

    def close(self) -> None:
        pass

    def _on_state(self, stream: str, state: str, detail: str) -> None:
        if state in OUTAGE_STATES:
            self.settled.set()
        else:
            self.last_progress = time.monotonic()
        self._report_state(stream, state, detail)

    def start(self) -> None:
        self.reader.start()
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            try:
                # Live streams: the newest frame goes straight through, none waits between stages.
                self.pipeline.run(self.reader.frames(), overlap=not self.reader.realtime)
                return  # frames() ends when the reader stops, or at the end of a file
            except Exception:  # keep the stream alive: a bug in one frame must not end it
                log.exception("stream %s: pipeline failed; restarting it", self.name)
                time.sleep(1.0)

    def shed_memory(self, shedding: bool) -> None:
        """Hold fewer decoded frames while memory is short: in the reader's queue and between the stages."""
        self.reader.shed_memory(shedding)
        self.pipeline.shed_memory(shedding)

    def request_stop(self) -> None:
        """Stop reading; the frames in flight still finish and publish (``join`` waits for them)."""
        self._stopping = True
        self.reader.request_stop()

    def join(self, deadline: float) -> None:
        """Wait for the capture and pipeline threads until ``deadline`` (monotonic)."""
        self.reader.join(deadline - time.monotonic())
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        if self._thread.is_alive():
            log.warning("stream %s: pipeline still busy when stopped; left behind", self.name)

    def progressing(self, now: float) -> bool:
        """False while the source is stalled, or while it is up and the pipeline publishes nothing."""
        state = self.reader.state
        return state != "stalled" and (state != "up" or now - self.last_progress < PIPELINE_STUCK_S)

    def health(self) -> dict[str, Any]:
        latency = {"p50": rounded(self.latency.percentile(50)), "p95": rounded(self.latency.percentile(95))}
        return {**self.reader.stats(), "latency_ms": latency}
