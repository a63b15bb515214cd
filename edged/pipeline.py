"""One stream's path: frame -> preprocess -> inference -> postprocess -> message -> sinks.

``edged detect`` and ``edged run`` share it; they differ in the source policy and the sinks.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from edged.handoff import Handoff
from edged.detections import DetectionResult
from edged.inference.detector import Detector
from edged.inference.preprocess import Letterbox
from edged.messages import detections_message, model_descriptor
from edged.sinks import Sink
from edged.sources import Frame
from edged.tracking import Tracker

log = logging.getLogger("edged.pipeline")

STAGE_DEPTH = 4  # items a stage may run ahead of the next one
SHED_STAGE_DEPTH = 1  # the same under memory pressure
T = TypeVar("T")


@dataclass
class PipelineStats:
    frames: int = 0
    detections: int = 0
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class InFlight:
    """A frame between stages: ``tensor`` is the model input until inference, then its output.
    ``detector`` is the one that preprocessed it: every stage of a frame uses the same one, even when
    ``Pipeline.detector`` is replaced meanwhile."""

    frame: Frame
    detector: Detector | None  # None once postprocessed
    transform: Letterbox
    tensor: np.ndarray
    timings_ms: dict[str, float]


@dataclass
class _Failure:
    error: BaseException


def in_background(items: Iterable[T], name: str, handoff: Handoff[Any] | None = None) -> Iterator[T]:
    """Iterate ``items`` in a helper thread, up to ``handoff``'s capacity (``STAGE_DEPTH`` by default)
    ahead of the consumer.

    Exceptions raised while producing reach the consumer; closing the returned iterator
    stops the helper and closes ``items``. Stages chain: each runs in its own thread,
    which pays off because OpenCV and ONNX Runtime release the GIL.
    """
    queued: Handoff[Any] = handoff if handoff is not None else Handoff(STAGE_DEPTH)

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                queued.put(item)
                if queued.stopped:
                    return
        except BaseException as exc:  # handed over; the consumer raises it
            queued.put(_Failure(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            queued.finish()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while (item := queued.get()) is not None:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        queued.stop()
        worker.join(timeout=5)  # a blocked camera read must not hold up the exit


class Pipeline:
    """``detector`` may be replaced at any time from another thread (a reload, a resource step): the
    next frame to be preprocessed uses the new one, frames already in flight finish on theirs."""

    def __init__(self, detector: Detector, stream: str, sinks: Sequence[Sink], device_id: str, seq: int = 0,
                 tracker: Tracker | None = None):
        """``tracker``: publish tracked detections (``Tracker.track``); its detector must report down to the
        tracker's ``low``."""
        self.detector = detector
        self.tracker = tracker
        self.stream = stream
        self.sinks = list(sinks)
        self.device_id = device_id
        self.seq = seq  # the next detections message's seq: a restarted stream carries on from its last one
        self._stage_depth = STAGE_DEPTH
        self._stages: list[Handoff[Any]] = []  # the running overlapped stages' queues

    def shed_memory(self, shedding: bool) -> None:
        """Under memory pressure each overlapped stage runs at most one frame ahead of the next (instead of
        ``STAGE_DEPTH``), from the next frame on: each queued item holds a decoded frame and its blob."""
        self._stage_depth = SHED_STAGE_DEPTH if shedding else STAGE_DEPTH
        for stage in self._stages:
            stage.resize(self._stage_depth)

    def publish(self, frame: Frame, result: DetectionResult, model: dict[str, Any]) -> dict[str, Any]:
        """Track (with a tracker), number the message, hand it to every sink; ``model`` is the
        ``model_descriptor`` of the detector that produced ``result``."""
        if self.tracker is not None:
            result = self.tracker.track(result, frame.ts_scene)
        message = detections_message(self.device_id, self.stream, self.seq, frame, result, model)
        self.seq += 1
        for sink in self.sinks:
            sink.write(message, frame, result)
        return message

    def run(self, frames: Iterable[Frame], max_frames: int | None = None, overlap: bool = True) -> PipelineStats:
        """Every frame of ``frames``, in order.

        ``overlap``: three overlapping stages (decode + preprocess, then inference, each in a helper
        thread, then postprocess + publish in the calling thread), for throughput on files. Without
        it, each frame goes through in the calling thread: for live sources, whose newest frame is
        taken only when inference is free for it, so no frame ages in a queue between stages.
        """
        stats = PipelineStats()
        started = time.perf_counter()
        if max_frames is not None:
            frames = (frame for frame, _ in zip(frames, range(max_frames)))
        if overlap:
            self._stages = [Handoff(self._stage_depth), Handoff(self._stage_depth)]
            prepared = in_background((self._preprocess(f) for f in frames), f"preprocess-{self.stream}",
                                     self._stages[0])
            inferred = in_background((self._infer(item) for item in prepared), f"inference-{self.stream}",
                                     self._stages[1])
            results: Iterator[tuple[Frame, DetectionResult, dict[str, Any]]] = (
                self._postprocess(item) for item in inferred)
        else:
            inferred = None
            results = (self._detect(frame) for frame in frames)
        try:
            for frame, result, model in results:
                self.publish(frame, result, model)
                stats.frames += 1
                stats.detections += len(result.detections)
        finally:
            if inferred is not None:
                inferred.close()
            self._stages = []
            stats.seconds = time.perf_counter() - started
            for sink in self.sinks:
                sink.close()
        log.info("stream %s: %d frames, %d detections, %.1f fps", self.stream, stats.frames, stats.detections,
                 stats.fps)
        return stats

    # The stages hand on the model's descriptor, never the detector: between frames, nothing in a stage may
    # hold a replaced detector, so that its session is freed as soon as its last frame is out.
    def _detect(self, frame: Frame) -> tuple[Frame, DetectionResult, dict[str, Any]]:
        detector = self.detector  # read once: it may be replaced while this frame is detected
        return frame, detector.detect(frame.image), model_descriptor(detector)

    def _preprocess(self, frame: Frame) -> InFlight:
        t0 = time.perf_counter()
        detector = self.detector
        blob, transform = detector.preprocess(frame.image)
        return InFlight(frame, detector, transform, blob, {"preprocess": (time.perf_counter() - t0) * 1000})

    def _infer(self, item: InFlight) -> InFlight:
        t0 = time.perf_counter()
        assert item.detector is not None
        item.tensor = item.detector.infer(item.tensor)
        item.timings_ms["inference"] = (time.perf_counter() - t0) * 1000
        return item

    def _postprocess(self, item: InFlight) -> tuple[Frame, DetectionResult, dict[str, Any]]:
        t0 = time.perf_counter()
        detector = item.detector
        detections = detector.postprocess(item.tensor, item.transform)
        item.timings_ms["postprocess"] = (time.perf_counter() - t0) * 1000
        item.detector = None  # the earlier stages' generators still hold this item until their next frame
        return item.frame, DetectionResult(detections, item.transform.source_width, item.transform.source_height,
                                           item.timings_ms), model_descriptor(detector)
