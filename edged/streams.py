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
- On failure (cannot open, a read fails, a live stream ends) the stream goes down once and
  retries with exponential backoff (1 s doubling to 30 s; stop() cuts a wait short); it is up
  again when frames flow. stop() reports no state change: the state becomes "stopped".
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

import cv2

from edged.health import RollingWindow
from edged.sources import CaptureSource, Frame, open_source, redact, source_kind

log = logging.getLogger("edged.streams")

LIVE_KINDS = frozenset({"camera", "url", "gstreamer"})
FILE_QUEUE_DEPTH = 4  # frames a file may be decoded ahead of the consumer
CAMERA_BUFFER_FRAMES = 1  # the driver's own queue: as little stale backlog as possible
RATE_WINDOW_S = 5.0
JOIN_TIMEOUT_S = 5.0  # a read blocked in a driver cannot be interrupted; stop() waits this long for it
PACE_SLACK = 0.1  # with max_fps, a frame this share of the period early still counts as due (jitter)

StateCallback = Callable[[str, str, str], None]  # (stream, "up" | "down", detail sentence)


def backoff_delays(initial_s: float, max_s: float) -> Iterator[float]:
    """``initial_s``, doubling each time, capped at ``max_s``; endless."""
    delay = initial_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)


class _Handoff:
    """Frames from the capture thread to one consumer: a slot where the newest frame wins
    (``overwrite``), or a bounded queue that makes the reader wait."""

    def __init__(self, capacity: int, overwrite: bool):
        self._frames: deque[Frame] = deque()
        self._capacity = capacity
        self._overwrite = overwrite
        self._cond = threading.Condition()
        self._finished = False  # no more frames will come: drain, then end
        self._stopped = False  # end now; frames not taken are discarded

    def put(self, frame: Frame) -> bool:
        """Hand ``frame`` over; True if that overwrote a frame the consumer never took."""
        with self._cond:
            while not self._overwrite and len(self._frames) >= self._capacity and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return False
            overwritten = len(self._frames) >= self._capacity
            if overwritten:
                self._frames.popleft()
            self._frames.append(frame)
            self._cond.notify_all()
            return overwritten

    def get(self) -> Frame | None:
        """The next frame, waiting for one; None once stopped, or finished and drained."""
        with self._cond:
            while not self._frames and not self._finished and not self._stopped:
                self._cond.wait()
            if self._stopped or not self._frames:
                return None
            frame = self._frames.popleft()
            self._cond.notify_all()
            return frame

    def finish(self) -> None:
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._frames.clear()
            self._cond.notify_all()


class StreamReader:
    """One stream's capture thread: ``start()``, iterate ``frames()`` in one consumer, ``stop()``.

    ``on_state(stream, "up" | "down", detail)`` is called from the capture thread on each change.
    Counters (``frames_in``, ``frames_out``, ``dropped``), ``state``, ``fps_in``, ``fps_out`` and
    ``stats()`` may be read from any thread.
    """

    def __init__(self, name: str, source_spec: str | int, *, realtime: bool | None = None,
                 max_fps: float | None = None, loop: bool = False, on_state: StateCallback | None = None,
                 backoff_initial_s: float = 1.0, backoff_max_s: float = 30.0):
        self.name = name
        self.spec = str(source_spec)
        self.kind = source_kind(self.spec)
        self.realtime = self.kind in LIVE_KINDS if realtime is None else realtime
        self.max_fps = max_fps
        self.loop = loop
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.shown_spec = redact(self.spec)  # for logs and events: no passwords
        self.frames_in = self.frames_out = self.dropped = 0
        self._on_state = on_state
        self._state = "starting"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._handoff = _Handoff(1, overwrite=True) if self.realtime else _Handoff(FILE_QUEUE_DEPTH, overwrite=False)
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
        """``starting``, ``up``, ``down`` or ``stopped``."""
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

    def stop(self) -> None:
        """Ends ``frames()`` at once and joins the capture thread (``JOIN_TIMEOUT_S`` at most)."""
        self._stop.set()
        self._handoff.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("stream %s: capture thread still blocked in a read after %.0f s; left behind",
                            self.name, JOIN_TIMEOUT_S)
        self._state = "stopped"

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
                try:
                    count = self._read_source()
                    if self._stop.is_set():
                        break
                    if count and self.kind not in LIVE_KINDS:  # a file (or images) came to its end
                        if self.loop:
                            continue
                        if self._set_state("down", "end of file"):
                            log.info("stream %s: down: end of file", self.name)
                        break
                    problem = f"{self.shown_spec}: {'the stream ended' if count else 'no frame could be read'}"
                except Exception as exc:  # any source failure (SourceError, cv2.error, OSError): retry
                    problem = str(exc).replace(self.spec, self.shown_spec)
                if self._state == "up":
                    delays = backoff_delays(self.backoff_initial_s, self.backoff_max_s)
                delay = next(delays)
                if self._set_state("down", problem):
                    log.warning("stream %s: down: %s; retrying in %g s", self.name, problem, delay)
                elif not self._stop.is_set():
                    log.info("stream %s: still down: %s; retrying in %g s", self.name, problem, delay)
                self._stop.wait(delay)
        finally:
            self._handoff.finish()

    def _read_source(self) -> int:
        """Open the source and hand its frames over until it ends or ``stop()``; the frames read."""
        count = 0
        with open_source(self.spec) as source:
            if self.kind == "camera" and isinstance(source, CaptureSource) \
                    and not source.capture.set(cv2.CAP_PROP_BUFFERSIZE, CAMERA_BUFFER_FRAMES):
                log.debug("stream %s: the camera driver ignores CAP_PROP_BUFFERSIZE", self.name)
            fps = source.fps if self.kind not in LIVE_KINDS else None  # a file's own timeline
            interval = 1.0 / fps if fps and self.realtime else 0.0  # a realtime file plays at its own rate
            started = time.monotonic()
            for frame in source:
                if self._stop.is_set():
                    break
                count += 1
                frame.frame_id = self._next_id
                self._next_id += 1
                if count == 1:
                    height, width = frame.image.shape[:2]
                    detail = f"Reading {width}x{height} frames from {self.shown_spec}."
                    if self._set_state("up", detail):
                        log.info("stream %s: up: %s", self.name, detail)
                self._hand_over(frame, frame.frame_id / fps if fps else time.monotonic())
                if interval:
                    self._stop.wait(max(0.0, started + count * interval - time.monotonic()))
        return count

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

    def _set_state(self, state: str, detail: str) -> bool:
        """Record a change and tell ``on_state``; False if nothing changed (or stopping)."""
        if self._state == state or self._stop.is_set():
            return False
        self._state = state
        if self._on_state is not None:
            try:
                self._on_state(self.name, state, detail)
            except Exception:  # a failing listener must not end the capture thread
                log.exception("stream %s: the state callback failed", self.name)
        return True
