"""``edged run``: a thin supervisor. It owns the lifecycle and the signals, and routes changes: a reload
becomes a new config, ``Plan.between`` says which parts it touches, and ``apply`` changes just those."""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import replace
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from edged.config import Config, ConfigError, StreamSettings, load_config
from edged.dashboards import HomeAssistant, SnapshotEncoder, StreamObjects
from edged.demo import demo_clip_path, demo_model_path
from edged.heap import limit_arenas, release_freed_memory
from edged.health import RollingWindow, rounded
from edged.inference.detector import Detector
from edged.bench import Variant
from edged.ladder import Ladder, LadderSpec, load_ladder
from edged.errors import EdgedError
from edged.messages import event_message, health_message, model_descriptor
from edged.mqtt import MqttClient, probe
from edged.plan import Plan
from edged.preflight import check_runtime
from edged.remote.service import RemoteConfig
from edged.resources.governor import fps_cap, max_fps_halvings
from edged.resources.manager import SHED_DETECTIONS, ResourceManager
from edged.signals import SignalLatch
from edged.stream_runner import StreamRunner
from edged.systemd import Notifier
from edged.tracking import Tracker, detection_floor

if TYPE_CHECKING:
    from edged.live_view import LiveView

log = logging.getLogger("edged.daemon")

LOOP_S = 0.25  # main loop tick
FLUSH_S = 3.0  # how long shutdown waits for queued MQTT messages
STOP_JOIN_S = 1.5  # how long stopping streams waits for their threads, all together
RELEASE_WAIT_S = 5.0  # how long a replaced model session may take to finish the frames in flight on it
STATUS_EVERY_S = 5.0  # STATUS= at most this often, unless a stream's state changes
EXTEND_EVERY_S = 10.0  # while a model loads (a TensorRT engine build takes minutes), ask systemd for more time
EXTEND_BY_S = 30.0
EXTEND_LIMIT_S = 20 * 60.0  # a build that hangs longer than this still fails the start
MQTT_SWITCH_TIMEOUT_S = 10.0  # a changed MQTT connection must come up within this, or the change is refused
T = TypeVar("T")
ASSUMED_LIVE_FPS = 30.0  # an uncapped live stream's frame rate, for the number of fps steps down there are


def demo_config() -> Config:
    """The bundled demo: demo model, the sample clip on a loop, a broker on localhost:1883."""
    return Config(streams=[StreamSettings(name="demo", source=str(demo_clip_path()), loop=True, realtime=True)])


def make_detector(config: Config, variant: Variant | None = None) -> Detector:
    """The config's model, or (``variant``) a rung of its ladder: another file, provider, precision or input
    size, with the config's family, labels and thresholds."""
    model = config.model
    session = config.session_config()
    path, input_size = model.path or demo_model_path(), model.input_size
    if variant is not None:
        session = replace(session, providers=(variant.provider,), precision=variant.precision)
        path, input_size = variant.model, variant.input_size
    return Detector(path, session, family=model.family, labels=model.labels, input_size=input_size,
                    confidence=reported_from(config), iou=model.iou, classes=model.classes)


def reported_from(config: Config) -> float:
    """The score from which the detector reports: the confidence threshold, or lower with tracking (ByteTrack's
    low-score detections keep tracks alive; only those of confirmed tracks are published)."""
    confidence = config.model.confidence
    return detection_floor(confidence, config.tracking.low) if config.tracking.enabled else confidence


def _label(model: dict[str, Any]) -> str:
    """A model descriptor as events name it: ``shapes-yolov8 fp32@416``."""
    height, width = model["input_size"]
    return f"{model['name']} {model['precision']}@{height if height == width else f'{height}x{width}'}"


class Daemon:
    def __init__(self, config: Config, config_file: Path | None, signals: SignalLatch | None = None,
                 record_dir: Path | None = None):
        """``record_dir``: edged run --record DIR (recording on, in DIR, whatever the config says)."""
        self.config = config  # the file's; run() applies the persisted config pushes over it
        self.config_file = config_file
        self.signals = signals or SignalLatch()
        self.remote = RemoteConfig(self, config_file)
        self.notifier = Notifier()
        self.started = time.monotonic()
        self.mqtt: MqttClient | None = None
        self.detector: Detector | None = None
        self.ladder: Ladder | None = None  # the governor's steps down, preferred first; read with each session
        self.runners: dict[str, StreamRunner] = {}
        self.resources: ResourceManager | None = None  # with the first session: it steps through its ladder
        self._applying = False  # a change is being applied: the resource manager waits
        self._next_seq: dict[str, int] = {}  # streams stopped so far: one started again carries on from here
        self._next_track_id: dict[str, int] = {}  # the same for track ids: unique per stream for the daemon's life
        self.snapshots = SnapshotEncoder(lambda: self.mqtt)
        self.home_assistant = HomeAssistant(lambda: self.mqtt)
        self.record_dir = record_dir
        self.live_view: LiveView | None = None  # with the live view or a recording on (edged.live_view)
        self._ready = False
        self._stalled: list[str] = []  # the streams holding the watchdog back at the last check
        self._states: list[str] = []
        self._next_status = self._next_watchdog = self._next_health = 0.0
        self._unsent_events: list[dict[str, Any]] = []  # said before the MQTT connection existed

    @property
    def device_id(self) -> str:
        return self.config.device_id

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> int:
        if not self.signals.installed:
            self.signals.install()
        limit_arenas()
        self.config = self.remote.effective(self.config, starting=True)
        self.mqtt = MqttClient(self.config.mqtt, self.device_id)
        self.mqtt.start()
        for message in self._unsent_events:
            self.mqtt.publish(self.mqtt.topic("events"), message)
        try:
            started = self._start()
        except Exception:
            self.mqtt.stop(FLUSH_S)
            raise
        if not started:
            log.info("stop requested while the model loaded: exiting")
            self.mqtt.stop(FLUSH_S)
            return 0
        self.remote.attach()
        self._announce()
        while not self.signals.stop.wait(LOOP_S):
            self._housekeeping(time.monotonic())
            if self.signals.reload.is_set():
                self.signals.reload.clear()
                self._reload_config()
            self.remote.handle_pending()
        self._shutdown()
        return 0

    def _start(self) -> bool:
        """Load the model and start the streams; False if a stop was requested meanwhile. (A method of its
        own so that no local variable outlives it: a reload must be able to free this first session.)"""
        detector = self._load_detector(self.config, starting=True)
        if detector is None:
            return False
        self._use_detector(detector)
        self._start_live_view()
        for settings in self.config.streams:
            self._start_stream(settings)
        self._start_resources()
        return True

    def _start_live_view(self) -> None:
        """The live view and recording the config (or --record) asks for; what cannot start is an error event,
        and the daemon serves MQTT without it."""
        settings = self.config.foxglove
        if not (settings.server.enabled or settings.mcap.enabled or self.record_dir):
            self.live_view = None
            return
        from edged.live_view import LiveView  # foxglove-sdk is imported only where it is used

        self.live_view = view = LiveView(settings, self.device_id, self.record_dir)
        for problem in view.start():
            self._event("error", f"Live view: {problem}.", errors=[problem])

    def _stop_live_view(self) -> None:
        if self.live_view is not None:
            self.live_view.stop()
            self.live_view = None

    def _housekeeping(self, now: float) -> None:
        """Each tick: stalls, READY, STATUS, the watchdog, health."""
        runners = list(self.runners.values())
        for runner in runners:
            runner.reader.check_stall(now)
        if self.resources is not None and not self._applying:
            self.resources.tick(now)
        if not self._ready and all(r.settled.is_set() for r in runners):
            self._ready = True
            self.notifier.ready()
            log.info("ready: %d stream(s) running", len(runners))
        states = [f"{r.name} {r.reader.state}" for r in runners]
        if self._ready and (now >= self._next_status or states != self._states):
            self._states = states
            self.notifier.status(self._status_line())
            self._next_status = now + STATUS_EVERY_S
        if self._ready:
            self._feed_watchdog(now, [r.name for r in runners if not r.progressing(now)])
        if now >= self._next_health:
            self._publish_health()
            for runner in runners:
                if runner.objects is not None:
                    runner.objects.resend()
            self._next_health = now + self.config.health.interval_s

    def _feed_watchdog(self, now: float, stalled: list[str]) -> None:
        """WATCHDOG=1 only while every stream makes progress; the reason is logged once per change."""
        if stalled != self._stalled:
            if stalled:
                log.warning("stream(s) %s stalled: watchdog not fed", ", ".join(stalled))
            else:
                log.info("every stream makes progress again: watchdog fed")
            self._stalled = stalled
        if not stalled and now >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = now + min(self.notifier.watchdog_interval_s or 1.0, 1.0)

    def _load_detector(self, config: Config, *, starting: bool) -> Detector | None:
        """Load the model beside the streams (``_beside``): None if a stop was requested before it finished.
        Starting, systemd's start timeout is extended while it runs (a TensorRT engine build takes minutes)."""
        self.notifier.status(f"loading model {config.model.path or 'demo'}")
        return self._beside(lambda: make_detector(config), "model-load", starting=starting)

    def while_serving(self, work: Callable[[], T], what: str) -> T | None:
        """Remote config's long steps (a model download): run beside the streams, which carry on."""
        self.notifier.status(what)
        return self._beside(work, what, starting=False)

    def _beside(self, work: Callable[[], T], name: str, *, starting: bool) -> T | None:
        """Run ``work`` in a helper thread, so that signals are heard meanwhile: None if a stop was requested
        before it finished (the helper is left to finish or die with the process); its exception if it
        raised. Not starting, the running streams carry on meanwhile, fed to the watchdog and reported in
        health."""
        outcome: list[Any] = []

        def run() -> None:
            try:
                outcome.append(work())
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)

        helper = threading.Thread(target=run, name=name, daemon=True)
        helper.start()
        started = time.monotonic()
        next_extend = started + EXTEND_EVERY_S
        while True:
            helper.join(LOOP_S)
            if not helper.is_alive():
                break
            if self.signals.stop.is_set():
                return None
            now = time.monotonic()
            if not starting:
                self._housekeeping(now)
            elif now >= next_extend and now - started < EXTEND_LIMIT_S:
                self.notifier.extend_timeout(EXTEND_BY_S)
                next_extend = now + EXTEND_EVERY_S
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _use_detector(self, detector: Detector) -> None:
        """Make ``detector`` the one every stream uses, and release the one it replaces: once its last
        frames in flight are out, nothing refers to it, so its ONNX Runtime session and threads go."""
        replaced = weakref.ref(self.detector) if self.detector is not None else None
        self.detector = detector
        for runner in self.runners.values():
            runner.pipeline.detector = detector
        if replaced is None:
            return
        deadline = time.monotonic() + RELEASE_WAIT_S
        while replaced() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
            gc.collect()  # in case an exception's traceback left a cycle holding it
        if replaced() is not None:
            log.warning("the replaced model session is still in use after %.0f s; it is freed when its last "
                        "frame is out", RELEASE_WAIT_S)
        else:
            release_freed_memory()
            log.info("replaced model session released")

    def _start_resources(self) -> None:
        """(Re)start the resource manager at the top of the ladder of the session that serves now (one built
        from the config), every stream at its configured frame cap."""
        assert self.detector is not None
        self.ladder = load_ladder(LadderSpec.from_config(self.config), self.detector)
        log.info("%s", self.ladder.summary())
        settings = self.config.resources
        caps = [s.max_fps or ASSUMED_LIVE_FPS for s in self.config.streams if self.runners[s.name].reader.realtime]
        self.set_fps_halvings(0)
        self.shed_memory(False)
        self.resources = ResourceManager(settings, self.ladder, max_fps_halvings(caps, settings.min_fps), self)

    # The resource manager's actuator: what it asks of the daemon.
    def set_fps_halvings(self, halvings: int) -> None:
        for runner in self.runners.values():
            self._cap(runner, halvings)

    def build_session(self, variant: Variant) -> Detector:
        return make_detector(self.config, variant)

    def swap_session(self, detector: Detector) -> None:
        self._use_detector(detector)

    def shed_memory(self, shedding: bool) -> None:
        assert self.mqtt is not None
        self.mqtt.limit_droppable(SHED_DETECTIONS if shedding else None)
        for runner in self.runners.values():
            runner.shed_memory(shedding)

    def event(self, kind: str, detail: str, **fields: Any) -> None:
        self._event(kind, detail, **fields)

    def _cap(self, runner: StreamRunner, halvings: int) -> None:
        """A live stream's frame cap after ``halvings`` fps steps: its configured cap (else the rate its
        source delivers) halved, never below ``resources.min_fps``. Files are left alone: every frame of
        a file is wanted."""
        if not runner.reader.realtime:
            return
        configured = runner.settings.max_fps
        if halvings == 0:
            runner.reader.max_fps = configured
            return
        base = configured or round(runner.reader.fps_in) or ASSUMED_LIVE_FPS
        runner.reader.max_fps = fps_cap(base, halvings, self.config.resources.min_fps)

    def _start_stream(self, settings: StreamSettings) -> None:
        assert self.detector is not None
        tracker, objects = None, None
        if self.config.tracking.enabled:
            tracker = Tracker.from_config(self.config, self._next_track_id.get(settings.name, 1))
            objects = StreamObjects(settings.name, tracker, self.config, lambda: self.mqtt, self._event,
                                    self.snapshots)
        live_view = self.live_view.sink(settings.name) if self.live_view is not None else None
        self.runners[settings.name] = runner = StreamRunner(
            settings, self.detector, lambda: self.mqtt, self.device_id, self._next_seq.get(settings.name, 0),
            self._on_stream_state, tracker, objects, live_view)
        if self.resources is not None:
            self._cap(runner, self.resources.governor.fps_halvings)
            runner.shed_memory(self.resources.shedding)
        runner.start()

    def _stop_streams(self, names: list[str]) -> None:
        """Stop these streams together, remembering where their seq stands."""
        runners = [self.runners.pop(name) for name in names]
        for runner in runners:
            runner.request_stop()
        deadline = time.monotonic() + STOP_JOIN_S
        for runner in runners:
            runner.join(deadline)
            self._next_seq[runner.name] = runner.pipeline.seq
            if runner.pipeline.tracker is not None:
                self._next_track_id[runner.name] = runner.pipeline.tracker.next_id
        if runners:
            release_freed_memory()

    def _shutdown(self) -> None:
        log.info("stopping: finishing frames in flight")
        self.notifier.stopping()
        self._stop_streams(list(self.runners))
        self._stop_live_view()
        self.snapshots.stop()
        assert self.mqtt is not None
        self.mqtt.stop(FLUSH_S)
        log.info("stopped")

    # ---------------------------------------------------------------- changes
    def _reload_config(self) -> None:
        if self.config_file is None:
            log.warning("SIGHUP: no config file to reload (running the bundled demo config)")
            return
        try:
            new = load_config(self.config_file)
            check_runtime(new, str(self.config_file))
            new = self.remote.effective(new, starting=False)  # the persisted pushes, applied again
        except (ConfigError, EdgedError) as exc:
            self._reject(f"Reloaded config {self.config_file} is invalid", getattr(exc, "errors", [str(exc)]))
            return
        log.info("SIGHUP: applying %s", self.config_file)
        self.apply(new, f"Config {self.config_file} reloaded on SIGHUP")

    def apply(self, new: Config, cause: str) -> list[str]:
        """Change the running daemon into ``new``, touching only what ``Plan.between`` says changed; the errors
        if the change was refused (the running config then stays whole), else none.

        What can fail (loading a new model, thresholds naming unknown classes, a new MQTT connection) runs
        first, before anything running is touched. Should starting what changed fail after that, the previous
        config is applied again. The resource manager waits meanwhile; a new session or new resource settings
        start it again from the top.
        """
        self._applying = True
        try:
            return self._apply(new, cause)
        finally:
            self._applying = False

    def _apply(self, new: Config, cause: str) -> list[str]:
        plan = Plan.between(self.config, new)
        restart_resources = plan.rebuild_session or bool({"resources", "remote_config"} & set(plan.in_place))
        stepped_down = self.resources is not None and self.resources.serving != 0
        detector = self.detector
        assert detector is not None and self.mqtt is not None
        try:
            if plan.rebuild_session or (restart_resources and stepped_down):  # back to the config's own model
                detector = self._load_detector(new, starting=False)
                if detector is None:  # stopping
                    return ["the daemon is stopping"]
            elif plan.thresholds:
                detector.set_thresholds(reported_from(new), new.model.iou, new.model.classes)
                for runner in self.runners.values():
                    if runner.pipeline.tracker is not None:
                        runner.pipeline.tracker.high = new.model.confidence
        except Exception as exc:  # ModelError, or ONNX Runtime failing in a way it does not name
            return self._reject(f"{cause}: its model could not be used", [f"model: {exc}"])
        if plan.reconnect_mqtt and (problem := self._reconnect(new)):
            return self._reject(f"{cause}: its MQTT settings could not be used", [f"mqtt: {problem}"])
        # Only the descriptor of the detector being replaced: holding it would keep its session from being freed.
        old, was, switching = self.config, model_descriptor(self.detector), detector is not self.detector
        try:
            self._commit(plan, new, detector, restart_resources)
        except Exception as exc:  # a stream or the resource manager that cannot start: undo it all
            log.exception("applying the change failed; going back to the previous config")
            del detector
            previous = self._load_detector(old, starting=False) if switching else self.detector
            self._commit(Plan.between(new, old), old, previous or self.detector, True)
            return self._reject(f"{cause}: applying it failed, and the previous config was restored", [str(exc)])
        if switching:
            now = model_descriptor(self.detector)
            self._event("model_switched", f"Model switched from {_label(was)} to {_label(now)} ({cause}).",
                        **{"from": _label(was), "to": _label(now), "reason": cause})
        log.info("config applied: %s", plan.describe())
        self._event("config_applied", f"{cause}: {plan.describe()}.")
        self.remote.attach()
        self._announce()
        return []

    def _commit(self, plan: Plan, new: Config, detector: Detector, restart_resources: bool) -> None:
        """Make ``new`` the running config: what ``plan`` says, with ``detector`` serving."""
        self.config = new
        self._stop_streams(list(plan.streams_removed + plan.streams_restarted))
        if "foxglove" in plan.in_place:  # Plan restarts every stream then: they start with sinks on the new one
            self._stop_live_view()
            self._start_live_view()
        if detector is not self.detector:
            self._use_detector(detector)
        streams = {s.name: s for s in new.streams}
        for name in plan.streams_restarted + plan.streams_added:
            self._start_stream(streams[name])
        if restart_resources:
            self._start_resources()
        for name in plan.streams_retuned:
            runner = self.runners[name]
            runner.settings = streams[name]
            self._cap(runner, self.resources.governor.fps_halvings if self.resources else 0)

    def _reconnect(self, new: Config) -> str | None:
        """Move to the MQTT connection ``new`` asks for. It is tried first (a probe with its settings, as a
        client of its own); if it does not come up within MQTT_SWITCH_TIMEOUT_S, the current connection stays
        and the reason is returned. Every queued message moves over to the new connection."""
        assert self.mqtt is not None
        problem = self._beside(lambda: probe(new.mqtt, f"{new.device_id}-probe-{os.getpid()}",
                                             MQTT_SWITCH_TIMEOUT_S), "mqtt-probe", starting=False)
        if self.signals.stop.is_set():
            return "the daemon is stopping"
        if problem is not None:
            return problem
        try:
            successor = MqttClient(new.mqtt, new.device_id)
        except ConfigError as exc:
            return "; ".join(exc.errors)
        log.info("MQTT: moving to %s:%d", new.mqtt.host, new.mqtt.port)
        self.mqtt.hand_over(successor, farewell=new.device_id != self.device_id)
        self.mqtt = successor
        successor.start()
        for runner in self.runners.values():
            runner.pipeline.device_id = new.device_id
        if self.resources is not None and self.resources.shedding:
            successor.limit_droppable(SHED_DETECTIONS)
        return None

    def _announce(self) -> None:
        """Home Assistant discovery for the config in force and the sensors the host has (withdrawn when turned off)."""
        assert self.detector is not None and self.resources is not None
        classes = self.config.model.classes
        labels = [label for label in self.detector.labels if classes is None or label in classes]
        self.home_assistant.configure(self.config, labels, self.resources.sensors.present(self.resources.sample))

    def _reject(self, why: str, errors: list[str]) -> list[str]:
        for line in errors:
            log.error("config rejected: %s", line)
        self._event("config_rejected", f"{why}; the running config stays.", errors=errors)
        return errors

    # ---------------------------------------------------------------- publishing
    def _on_stream_state(self, stream: str, state: str, detail: str) -> None:
        if state == "up":
            self._event("stream_up", f"Stream {stream} is up: {detail}", stream=stream)
        elif state == "stalled":
            self._event("stream_down", f"Stream {stream} stalled: {detail}; reopening it.", stream=stream,
                        reason="stalled")
        else:
            self._event("stream_down", f"Stream {stream} is down: {detail}", stream=stream)

    def _event(self, kind: str, detail: str, stream: str | None = None, **fields: Any) -> None:
        message = event_message(self.device_id, kind, detail, stream, **fields)
        if self.mqtt is not None:
            self.mqtt.publish(self.mqtt.topic("events"), message)
        else:
            self._unsent_events.append(message)

    def _publish_health(self) -> None:
        if self.mqtt is None or self.detector is None:
            return
        runners = list(self.runners.values())
        inference = RollingWindow.merged([r.inference_ms for r in runners])
        message = health_message(
            self.device_id,
            uptime_s=round(time.monotonic() - self.started, 1),
            streams={r.name: r.health() for r in runners},
            inference={"provider": self.detector.provider, "precision": self.detector.precision,
                       "input_size": list(self.detector.input_size), "ms_p50": rounded(inference.percentile(50))},
            resources=self.resources.sample if self.resources else {},
            resource_manager=self.resources.state() if self.resources else {"level": "normal", "active_steps": []},
            mqtt=self.mqtt.stats(),
        )
        self.mqtt.set_retained(self.mqtt.topic("health"), message)
        if self.live_view is not None:
            self.live_view.health(message)

    def _status_line(self) -> str:
        parts = [f"{r.name} {r.reader.state} {r.reader.fps_out:.1f} fps" for r in self.runners.values()]
        queue = self.mqtt.queue_depth if self.mqtt else 0
        return "; ".join(parts) + (f"; mqtt queue {queue}" if queue else "")
