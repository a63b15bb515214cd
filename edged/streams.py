"""The daemon's streams: one capture thread per stream, reading its source and handing frames over.

- Realtime (default for cameras, URLs and GStreamer pipelines): a one-slot hand-off where the
  newest frame wins; a frame overwritten before the consumer took it counts as dropped (a stale
  frame is worse than a dropped one). A file forced to realtime plays at its own frame rate, like
  a camera.
- Frame by frame (default for files and images): every frame is handed over through a small
  bounded queue; the reader waits for the consumer and drops nothing. ``loop`` starts the file
  again at its end; without it the stream goes down with the detail "end of file", is not
  reopened, and ``frames()`` ends after the last frame.
- ``max_fps`` skips frames beyond the cap on purpose (counted as dropped): by the file's own
  timeline for files (30 fps capped at 10 keeps every third frame), by the read time otherwise.
- ``frame_id`` counts every frame read, across loops and reconnects, so a gap means a drop.
- States: ``starting``, ``up``, ``down`` (cannot open or read the source), ``stalled`` (it was up,
  then delivered no frame for ``stall_s``: a frozen camera, a pulled cable) and ``stopped``. An
  outage keeps the state it began with until frames flow again; ``on_state`` hears of each outage
  once, and of each return to ``up``.
- A stall is seen two ways: a URL's reads time out after ``stall_s`` (OpenCV's FFmpeg backend), and
  ``check_stall()``, called periodically by the owner, catches a read blocked past it in any backend.
- On failure the stream retries with exponential backoff (``backoff_initial_s`` doubling up to
  ``backoff_max_s``, 1 s to 5 s by default), and while it waits it probes the source cheaply
  (``source_reachable``): a source that comes back is reopened at once. stop() cuts a wait short,
  reports no state change (the state becomes "stopped") and waits at most ``JOIN_TIMEOUT_S`` for a
  read blocked in a driver.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Iterator

import cv2

from edged.handoff import Handoff
from edged.health import RollingWindow
from edged.sources import CaptureSource, Frame, open_source, source_reachable
from edged.specs import redact, source_kind

log = logging.getLogger("edged.streams")

LIVE_KINDS = frozenset({"camera", "url", "gstreamer"})
FILE_QUEUE_DEPTH = 4  # frames a file may be decoded ahead of the consumer
CAMERA_BUFFER_FRAMES = 1  # the driver's own queue: as little stale backlog as possible
RATE_WINDOW_S = 5.0
JOIN_TIMEOUT_S = 1.0  # a read blocked in a driver cannot be interrupted; stop() waits this long for it
PACE_SLACK = 0.1  # with max_fps, a frame this share of the period early still counts as due (jitter)
DEFAULT_STALL_S = 5.0
STALL_GRACE_S = 1.0  # check_stall() leaves the read timeout this long to report a stall first
STALL_SHARE = 0.9  # a read that took this share of stall_s (the read timeout) timed out
OPEN_TIMEOUT_S = 10.0  # opening a URL (RTSP: connect, DESCRIBE, SETUP, PLAY) may take this long
BACKOFF_INITIAL_S, BACKOFF_MAX_S = 1.0, 5.0
PROBE_EVERY_S = 0.25  # while waiting to retry, how often the source is probed
STILL_DOWN_LOG_S = 60.0  # during an outage, a failed retry is logged at info level this often (else debug)

StateCallback = Callable[[str, str, str], None]  # (stream, "up" | "down" | "stalled", detail sentence)
OUTAGE_STATES = frozenset({"down", "stalled"})


def backoff_delays(initial_s: float, max_s: float) -> Iterator[float]:
    """``initial_s``, doubling each time, capped at ``max_s``; endless."""
    delay = initial_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)


class StreamReader:
    """One stream's capture thread: ``start()``, iterate ``frames()`` in one consumer, ``stop()``.

    ``on_state(stream, "up" | "down" | "stalled", detail)`` is called from the capture thread (or,
    for a stall, from ``check_stall()``'s caller) when an outage begins and when it ends. Counters
    (``frames_in``, ``frames_out``, ``dropped``), ``state``, ``fps_in``, ``fps_out`` and ``stats()``
    may be read from any thread.
    """

    def __init__(self, name: str, source_spec: str | int, *, realtime: bool | None = None,
                 max_fps: float | None = None, loop: bool = False, on_state: StateCallback | None = None,
                 stall_s: float = DEFAULT_STALL_S, backoff_initial_s: float = BACKOFF_INITIAL_S,
                 backoff_max_s: float = BACKOFF_MAX_S):
        self.name = name
        self.spec = str(source_spec)
        self.kind = source_kind(self.spec)
        self.realtime = self.kind in LIVE_KINDS if realtime is None else realtime
        self.max_fps = max_fps
        self.loop = loop
        self.stall_s = stall_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.shown_spec = redact(self.spec)  # for logs and events: no passwords
        self.frames_in = self.frames_out = self.dropped = 0
        self._on_state = on_state
        self._state = "starting"
        self._state_lock = threading.Lock()  # the capture thread and check_stall()'s caller both change state
        self._reading_since: float | None = None  # monotonic time a read began, None between reads
        self._outage_began = self._outage_logged = 0.0  # monotonic times, for the outage's log lines
        self._attempts = 0  # failed retries in the current outage
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._handoff: Handoff[Frame] = (Handoff(1, overwrite=True) if self.realtime
                                         else Handoff(FILE_QUEUE_DEPTH))
        self._rate_in = RollingWindow(RATE_WINDOW_S)
        self._rate_out = RollingWindow(RATE_WINDOW_S)
        self._next_id = 0
        self._due = -math.inf  # max_fps: the clock time from which the next frame is kept
        self._thread = threading.Thread(target=self._run, name=f"stream-{name}", daemon=True)

    @property
    def max_fps(self) -> float | None:
        """The cap on frames handed over per second (None: no cap); may change while running
        (the resource governor's fps step)."""
        return self._max_fps

    @max_fps.setter
    def max_fps(self, value: float | None) -> None:
        if value is not None and not value > 0:
            raise ValueError(f"stream {self.name}: max_fps must be above 0, or None for no cap")
        self._max_fps = value

    @property
    def state(self) -> str:
        """``starting``, ``up``, ``down``, ``stalled`` or ``stopped``."""
        return self._state

    @property
    def fps_in(self) -> float:
        """Frames read per second over the last ``RATE_WINDOW_S``."""
        return self._rate_in.rate()

    @property
    def fps_out(self) -> float:
        """Frames taken by the consumer per second over the last ``RATE_WINDOW_S``."""
        return self._rate_out.rate()

    def stats(self) -> dict[str, Any]:
        """The capture side of the stream's entry in the health message."""
        with self._lock:
            counts = {"frames_in": self.frames_in, "frames_out": self.frames_out, "frames_dropped": self.dropped}
        return {"state": self._state, "fps_in": round(self.fps_in, 2), "fps_out": round(self.fps_out, 2), **counts}

    def start(self) -> None:
        log.info("stream %s: starting: %s source %s, %s%s%s", self.name, self.kind, self.shown_spec,
                 "realtime" if self.realtime else "frame by frame",
                 f", max {self._max_fps:g} fps" if self._max_fps else "", ", looping" if self.loop else "")
        self._thread.start()

    def request_stop(self) -> None:
        """Ends ``frames()`` at once and tells the capture thread to finish; ``join()`` waits for it.
        Separate, so that many streams can be told first and then waited for together."""
        self._stop.set()
        self._handoff.stop()

    def join(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Wait up to ``timeout`` for the capture thread; one blocked in a driver's read is left behind
        (a daemon thread: it ends with the process, or when the read returns)."""
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(max(timeout, 0.0))
            if self._thread.is_alive():
                log.warning("stream %s: capture thread still blocked in a read; left behind", self.name)
        self._state = "stopped"

    def stop(self) -> None:
        """``request_stop()``, then ``join()`` (``JOIN_TIMEOUT_S`` at most)."""
        self.request_stop()
        self.join()

    def shed_memory(self, shedding: bool) -> None:
        """Under memory pressure a file is decoded at most one frame ahead of the consumer (instead of
        ``FILE_QUEUE_DEPTH``); live streams hold one frame anyway."""
        if not self.realtime:
            self._handoff.resize(1 if shedding else FILE_QUEUE_DEPTH)

    def check_stall(self, now: float | None = None) -> None:
        """Mark the stream stalled when a read has been blocked for more than ``stall_s`` (plus a grace
        that lets a read timeout report it first). Call it periodically: a read blocked in a driver
        cannot report anything itself."""
        since = self._reading_since
        now = time.monotonic() if now is None else now
        if self._state == "up" and since is not None and now - since > self.stall_s + STALL_GRACE_S:
            self._outage("stalled", f"no frame from {self.shown_spec} for {now - since:.0f} s (a read is "
                                    f"blocked)", None)

    def frames(self) -> Iterator[Frame]:
        """The frames for the consumer, in order; ends when ``stop()`` is called, or after the
        last frame of a file that ended without ``loop``."""
        while (frame := self._handoff.get()) is not None:
            with self._lock:
                self.frames_out += 1
            self._rate_out.add()
            yield frame

    def _run(self) -> None:
        delays = backoff_delays(self.backoff_initial_s, self.backoff_max_s)
        try:
            while not self._stop.is_set():
                stalled = False
                try:
                    count, quiet_s = self._read_source()
                    if self._stop.is_set():
                        break
                    if count and self.kind not in LIVE_KINDS:  # a file (or images) came to its end
                        if self.loop:
                            continue
                        if self._set_state("down", "end of file"):
                            log.info("stream %s: down: end of file", self.name)
                        break
                    stalled = count > 0 and quiet_s >= STALL_SHARE * self.stall_s  # a read timed out
                    problem = f"{self.shown_spec}: " + (f"no frame for {quiet_s:.1f} s" if stalled else
                                                       "the stream ended" if count else "no frame could be read")
                except Exception as exc:  # any source failure (SourceError, cv2.error, OSError): retry
                    problem = str(exc).replace(self.spec, self.shown_spec)
                if self._state == "up":
                    delays = backoff_delays(self.backoff_initial_s, self.backoff_max_s)
                delay = next(delays)
                self._outage("stalled" if stalled else "down", problem, delay)
                self._wait_to_retry(delay)
        finally:
            self._handoff.finish()

    def _outage(self, state: str, problem: str, retry_in: float | None) -> None:
        """Report an outage once, when it begins (from ``up`` or ``starting``): a warning and ``on_state``.
        Later failures of the same outage are logged at debug level, and at info level once every
        ``STILL_DOWN_LOG_S``; the state keeps the kind the outage began as."""
        retry = f"; retrying in {retry_in:g} s" if retry_in is not None else "; reopening it"
        now = time.monotonic()
        if self._set_state(state, problem, only_from=("up", "starting")):
            log.warning("stream %s: %s: %s%s", self.name, state, problem, retry)
            self._outage_began = self._outage_logged = now
            self._attempts = 0
        elif retry_in is not None and not self._stop.is_set():
            self._attempts += 1
            level = logging.INFO if now - self._outage_logged >= STILL_DOWN_LOG_S else logging.DEBUG
            if level == logging.INFO:
                self._outage_logged = now
            log.log(level, "stream %s: still %s after %.0f s and %d attempt(s): %s%s", self.name, self._state,
                    now - self._outage_began, self._attempts, problem, retry)

    def _wait_to_retry(self, delay: float) -> None:
        """Wait ``delay`` s before reopening, or less: a source that was unreachable and becomes
        reachable (the file appears, the camera's port accepts again) is reopened at once."""
        deadline = time.monotonic() + delay
        reachable = source_reachable(self.spec)
        while not self._stop.wait(min(PROBE_EVERY_S, max(deadline - time.monotonic(), 0.0))):
            if time.monotonic() >= deadline:
                return
            if reachable is False and source_reachable(self.spec):
                log.info("stream %s: %s is reachable again; reopening now", self.name, self.shown_spec)
                return

    def _read_source(self) -> tuple[int, float]:
        """Open the source and hand its frames over until it ends or ``stop()``: the frames read, and
        the seconds since the last one when reading ended."""
        count = 0
        last_frame = time.monotonic()
        with open_source(self.spec, open_timeout_s=OPEN_TIMEOUT_S, read_timeout_s=self.stall_s) as source:
            if self.kind == "camera" and isinstance(source, CaptureSource) \
                    and not source.capture.set(cv2.CAP_PROP_BUFFERSIZE, CAMERA_BUFFER_FRAMES):
                log.debug("stream %s: the camera driver ignores CAP_PROP_BUFFERSIZE", self.name)
            fps = source.fps if self.kind not in LIVE_KINDS else None  # a file's own timeline
            interval = 1.0 / fps if fps and self.realtime else 0.0  # a realtime file plays at its own rate
            started = time.monotonic()
            frames = iter(source)
            while not self._stop.is_set():
                self._reading_since = read_began = time.monotonic()
                try:
                    frame = next(frames, None)
                finally:
                    self._reading_since = None
                if frame is None or self._stop.is_set():
                    break
                if count and time.monotonic() - read_began >= STALL_SHARE * self.stall_s:
                    break  # a read that timed out can still return a frame the decoder held: old, and the
                    # capture will not recover (FFmpeg), so this is a stall and the source is reopened
                last_frame = time.monotonic()
                count += 1
                frame.frame_id = self._next_id
                if frame.ts_media is not None and fps:  # across loops, the video's time goes on too
                    frame.ts_media = frame.frame_id / fps
                self._next_id += 1
                if count == 1:
                    height, width = frame.image.shape[:2]
                    detail = f"Reading {width}x{height} frames from {self.shown_spec}."
                    if self._set_state("up", detail):
                        log.info("stream %s: up: %s", self.name, detail)
                self._hand_over(frame, frame.frame_id / fps if fps else time.monotonic())
                if interval:
                    self._stop.wait(max(0.0, started + count * interval - time.monotonic()))
        return count, time.monotonic() - last_frame

    def _hand_over(self, frame: Frame, clock: float) -> None:
        with self._lock:
            self.frames_in += 1
        self._rate_in.add()
        if not self._due_at(clock) or self._handoff.put(frame):
            with self._lock:
                self.dropped += 1

    def _due_at(self, clock: float) -> bool:
        """max_fps: whether the frame at ``clock`` (seconds) is kept. Each kept frame makes the
        next one due a period later; more than a period late, the schedule starts again from it."""
        max_fps = self._max_fps
        if max_fps is None:
            return True
        period = 1.0 / max_fps
        if clock < self._due - PACE_SLACK * period:
            return False
        self._due = self._due + period if clock - self._due < period else clock + period
        return True

    def _set_state(self, state: str, detail: str, only_from: tuple[str, ...] | None = None) -> bool:
        """Record a change (only from the states in ``only_from``, when given) and tell ``on_state``;
        False if nothing changed, or when stopping."""
        with self._state_lock:
            if self._state == state or self._stop.is_set() or (only_from and self._state not in only_from):
                return False
            self._state = state
            if self._on_state is not None:
                try:
                    self._on_state(self.name, state, detail)
                except Exception:  # a failing listener must not end the capture thread
                    log.exception("stream %s: the state callback failed", self.name)
        return True
