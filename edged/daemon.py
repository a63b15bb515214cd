"""``edged run``: wires config, streams, the detector, MQTT, health and systemd together; owns signals."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from edged.config import Config, ConfigError, StreamSettings, load_config
from edged.demo import demo_clip_path, demo_model_path
from edged.health import RollingWindow, SystemSampler
from edged.inference.detector import DetectionResult, Detector
from edged.ladder import Ladder, LadderSpec, load_ladder
from edged.messages import event_message, health_message
from edged.mqtt import MqttClient
from edged.pipeline import Pipeline
from edged.sources import Frame
from edged.streams import StreamReader
from edged.systemd import Notifier

log = logging.getLogger("edged.daemon")

STALL_S = 10.0  # an 'up' stream that publishes nothing for this long is stalled: the watchdog stops
LOOP_S = 0.25  # main loop tick
FLUSH_S = 3.0  # how long shutdown waits for queued MQTT messages
STATUS_EVERY_S = 5.0  # STATUS= at most this often, unless a stream's state changes
EXTEND_EVERY_S = 10.0  # while a model loads (a TensorRT engine build takes minutes), ask systemd for more time
EXTEND_BY_S = 30.0
EXTEND_LIMIT_S = 20 * 60.0  # a build that hangs longer than this still fails the start


def demo_config() -> Config:
    """The bundled demo: demo model, the sample clip on a loop, a broker on localhost:1883."""
    return Config(streams=[StreamSettings(name="demo", source=str(demo_clip_path()), loop=True, realtime=True)])


def make_detector(config: Config) -> Detector:
    model = config.model
    return Detector(model.path or demo_model_path(), config.session_config(), family=model.family, labels=model.labels,
                    input_size=model.input_size, confidence=model.confidence, iou=model.iou, classes=model.classes)


class MqttSink:
    """Publishes each detections message on ``P/streams/<stream>/detections``."""

    def __init__(self, mqtt: MqttClient, stream: str):
        self.mqtt = mqtt
        self.topic = mqtt.topic(f"streams/{stream}/detections")

    def write(self, message: dict[str, Any], frame: Frame, result: DetectionResult) -> None:
        self.mqtt.publish(self.topic, message, droppable=True)

    def close(self) -> None:
        pass


class StreamRunner:
    """One stream: its capture thread, its pipeline thread, and the numbers health reports."""

    def __init__(self, settings: StreamSettings, detector: Detector, mqtt: MqttClient, device_id: str,
                 on_state: Callable[[str, str, str], None]):
        self.name = settings.name
        self.reader = StreamReader(settings.name, str(settings.source), realtime=settings.realtime,
                                   max_fps=settings.max_fps, loop=settings.loop, on_state=self._on_state)
        self._report_state = on_state
        self.pipeline = Pipeline(detector, settings.name, [MqttSink(mqtt, settings.name), self], device_id)
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
        if state == "down":
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

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, let the frames in flight finish and publish."""
        self._stopping = True
        self.reader.stop()
        self._thread.join(timeout)

    def progressing(self, now: float) -> bool:
        return self.reader.state != "up" or now - self.last_progress < STALL_S

    def health(self) -> dict[str, Any]:
        return {**self.reader.stats(),
                "latency_ms": {"p50": _round(self.latency.percentile(50)), "p95": _round(self.latency.percentile(95))}}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class Daemon:
    def __init__(self, config: Config, config_file: Path | None):
        self.config = config
        self.config_file = config_file
        self.notifier = Notifier()
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.mqtt: MqttClient | None = None
        self.detector: Detector | None = None
        self.ladder: Ladder | None = None  # the governor's steps down, preferred first; read at (re)start
        self.runners: list[StreamRunner] = []
        self.sampler = SystemSampler(config.resources.sysfs_root)

    @property
    def device_id(self) -> str:
        return self.config.device_id

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        self.mqtt = MqttClient(self.config.mqtt, self.device_id)
        self.mqtt.start()
        try:
            self._start_streams(self._load_detector(self.config))
        except Exception:
            self.mqtt.stop(FLUSH_S)
            raise
        ready = False
        states: list[str] = []
        next_health = next_watchdog = next_status = time.monotonic()
        while not self._stop.wait(LOOP_S):
            now = time.monotonic()
            if not ready and all(r.settled.is_set() for r in self.runners):
                ready = True
                self.notifier.ready()
                log.info("ready: %d stream(s) running", len(self.runners))
            if ready and (now >= next_status or states != [r.reader.state for r in self.runners]):
                states = [r.reader.state for r in self.runners]
                self.notifier.status(self._status_line())
                next_status = now + STATUS_EVERY_S
            if ready and now >= next_watchdog:
                stalled = [r.name for r in self.runners if not r.progressing(now)]
                if stalled:
                    log.warning("stream(s) %s stalled: watchdog not fed", ", ".join(stalled))
                else:
                    self.notifier.watchdog()
                    next_watchdog = now + min(self.notifier.watchdog_interval_s or 1.0, 1.0)
            if now >= next_health:
                self._publish_health()
                next_health = now + self.config.health.interval_s
            if self._reload.is_set():
                self._reload.clear()
                self._reload_config()
        self._shutdown()
        return 0

    def _load_detector(self, config: Config) -> Detector:
        """Load the model, keeping systemd's start timeout extended while it runs."""
        self.notifier.status(f"loading model {config.model.path or 'demo'}")
        done = threading.Event()

        def extend() -> None:
            deadline = time.monotonic() + EXTEND_LIMIT_S
            while not done.wait(EXTEND_EVERY_S) and time.monotonic() < deadline:
                self.notifier.extend_timeout(EXTEND_BY_S)

        threading.Thread(target=extend, name="extend-timeout", daemon=True).start()
        try:
            return make_detector(config)
        finally:
            done.set()

    def _start_streams(self, detector: Detector) -> None:
        self.detector = detector
        self.ladder = load_ladder(LadderSpec.from_config(self.config), detector)
        log.info("%s", self.ladder.summary())
        self.runners = [StreamRunner(s, detector, self.mqtt, self.device_id, self._on_stream_state)
                        for s in self.config.streams]
        for runner in self.runners:
            runner.start()

    def _stop_streams(self) -> None:
        for runner in self.runners:
            runner.stop()
        self.runners = []

    def _shutdown(self) -> None:
        log.info("stopping: finishing frames in flight")
        self.notifier.stopping()
        self._stop_streams()
        assert self.mqtt is not None
        self.mqtt.stop(FLUSH_S)
        log.info("stopped")

    def _reload_config(self) -> None:
        if self.config_file is None:
            log.warning("SIGHUP: no config file to reload (running the bundled demo config)")
            return
        try:
            new = load_config(self.config_file)
        except ConfigError as exc:
            for line in exc.errors:
                log.error("config reload rejected: %s", line)
            self._event("config_rejected", f"Reloaded config {self.config_file} is invalid; the running config "
                                           f"stays.", errors=exc.errors)
            return
        log.info("SIGHUP: applying %s", self.config_file)
        try:  # the old pipelines keep running (and feeding the watchdog) while the new model loads
            detector = self._load_detector(new)
        except Exception as exc:
            log.error("config reload rejected: %s", exc)
            self._event("config_rejected", f"Reloaded config could not load its model ({exc}); the running "
                                           f"config stays.", errors=[str(exc)])
            return
        self._stop_streams()
        old, self.config = self.config, new
        if new.mqtt != old.mqtt or new.device_id != old.device_id:
            assert self.mqtt is not None
            self.mqtt.stop(FLUSH_S)
            self.mqtt = MqttClient(new.mqtt, new.device_id)
            self.mqtt.start()
        self.sampler = SystemSampler(new.resources.sysfs_root)
        self._start_streams(detector)
        self._event("config_applied", f"Config {self.config_file} reloaded on SIGHUP.")

    # ---------------------------------------------------------------- publishing
    def _on_stream_state(self, stream: str, state: str, detail: str) -> None:
        self._event(f"stream_{state}", f"Stream {stream} is {state}: {detail}", stream=stream)

    def _event(self, kind: str, detail: str, stream: str | None = None, **fields: Any) -> None:
        if self.mqtt is not None:
            self.mqtt.publish(self.mqtt.topic("events"), event_message(self.device_id, kind, detail, stream, **fields))

    def _publish_health(self) -> None:
        assert self.mqtt is not None and self.detector is not None
        inference = RollingWindow.merged([r.inference_ms for r in self.runners])
        message = health_message(
            self.device_id,
            uptime_s=round(time.monotonic() - self.started, 1),
            streams={r.name: r.health() for r in self.runners},
            inference={"provider": self.detector.provider, "precision": self.detector.precision,
                       "input_size": list(self.detector.input_size), "ms_p50": _round(inference.percentile(50))},
            resources=self.sampler.sample(),
            resource_manager={"level": "normal", "active_steps": []},
            mqtt=self.mqtt.stats(),
        )
        self.mqtt.set_retained(self.mqtt.topic("health"), message)

    def _status_line(self) -> str:
        parts = [f"{r.name} {r.reader.state} {r.reader.fps_out:.1f} fps" for r in self.runners]
        queue = self.mqtt.queue_depth if self.mqtt else 0
        return "; ".join(parts) + (f"; mqtt queue {queue}" if queue else "")
