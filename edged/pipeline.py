"""One stream's path: frame -> preprocess -> inference -> postprocess -> message -> sinks.

``edged detect`` and ``edged run`` share it; they differ in the source policy and the sinks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from edged.inference.detector import DetectionResult, Detector
from edged.inference.preprocess import Letterbox
from edged.messages import detections_message, model_descriptor
from edged.sinks import Sink
from edged.sources import Frame

log = logging.getLogger("edged.pipeline")

STAGE_DEPTH = 4  # items a stage may run ahead of the next one
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
    """A frame between stages: ``tensor`` is the model input until inference, then its output."""

    frame: Frame
    transform: Letterbox
    tensor: np.ndarray
    timings_ms: dict[str, float]


@dataclass
class _Failure:
    error: BaseException


_END = object()


def in_background(items: Iterable[T], name: str, depth: int = STAGE_DEPTH) -> Iterator[T]:
    """Iterate ``items`` in a helper thread, up to ``depth`` items ahead of the consumer.

    Exceptions raised while producing reach the consumer; closing the returned iterator
    stops the helper and closes ``items``. Stages chain: each runs in its own thread,
    which pays off because OpenCV and ONNX Runtime release the GIL.
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(item):
                    return
        except BaseException as exc:  # handed over; the consumer raises it
            put(_Failure(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            put(_END)

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while (item := handoff.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)  # a blocked camera read must not hold up the exit


class Pipeline:
    def __init__(self, detector: Detector, stream: str, sinks: Sequence[Sink], device_id: str):
        self.detector = detector
        self.stream = stream
        self.sinks = list(sinks)
        self.device_id = device_id
        self.seq = 0  # detections messages published on this stream
        self.model = model_descriptor(detector)

    def publish(self, frame: Frame, result: DetectionResult) -> dict[str, Any]:
        message = detections_message(self.device_id, self.stream, self.seq, frame, result, self.model)
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
            prepared = in_background((self._preprocess(f) for f in frames), f"preprocess-{self.stream}")
            inferred = in_background((self._infer(item) for item in prepared), f"inference-{self.stream}")
            results: Iterator[tuple[Frame, DetectionResult]] = (
                (item.frame, self._postprocess(item)) for item in inferred)
        else:
            inferred = None
            results = ((frame, self.detector.detect(frame.image)) for frame in frames)
        try:
            for frame, result in results:
                self.publish(frame, result)
                stats.frames += 1
                stats.detections += len(result.detections)
        finally:
            if inferred is not None:
                inferred.close()
            stats.seconds = time.perf_counter() - started
            for sink in self.sinks:
                sink.close()
        log.info("stream %s: %d frames, %d detections, %.1f fps", self.stream, stats.frames, stats.detections,
                 stats.fps)
        return stats

    def _preprocess(self, frame: Frame) -> InFlight:
        t0 = time.perf_counter()
        blob, transform = self.detector.preprocess(frame.image)
        return InFlight(frame, transform, blob, {"preprocess": (time.perf_counter() - t0) * 1000})

    def _infer(self, item: InFlight) -> InFlight:
        t0 = time.perf_counter()
        item.tensor = self.detector.infer(item.tensor)
        item.timings_ms["inference"] = (time.perf_counter() - t0) * 1000
        return item

    def _postprocess(self, item: InFlight) -> DetectionResult:
        t0 = time.perf_counter()
        detections = self.detector.postprocess(item.tensor, item.transform)
        item.timings_ms["postprocess"] = (time.perf_counter() - t0) * 1000
        return DetectionResult(detections, item.transform.source_width, item.transform.source_height,
                               item.timings_ms)
