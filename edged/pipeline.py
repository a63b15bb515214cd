"""One stream's path: frame -> preprocess -> inference -> postprocess -> message -> sinks.

``edged detect`` and ``edged run`` share it; they differ in the source policy and the sinks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from edged.inference.detector import DetectionResult, Detector
from edged.inference.preprocess import Letterbox
from edged.messages import detections_message, model_descriptor
from edged.sinks import Sink
from edged.sources import Frame

log = logging.getLogger("edged.pipeline")

PREFETCH_DEPTH = 4  # frames decoded and preprocessed ahead of inference
_END = object()


@dataclass
class PipelineStats:
    frames: int = 0
    detections: int = 0
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Prepared:
    frame: Frame
    blob: np.ndarray
    transform: Letterbox
    preprocess_ms: float


class Pipeline:
    def __init__(self, detector: Detector, stream: str, sinks: Sequence[Sink], device_id: str):
        self.detector = detector
        self.stream = stream
        self.sinks = list(sinks)
        self.device_id = device_id
        self.seq = 0  # detections messages published on this stream
        self.model = model_descriptor(detector)

    def process(self, frame: Frame) -> dict[str, Any]:
        """One frame, start to finish, in the calling thread."""
        return self.publish(frame, self.detector.detect(frame.image))

    def publish(self, frame: Frame, result: DetectionResult) -> dict[str, Any]:
        message = detections_message(self.device_id, self.stream, self.seq, frame, result, self.model)
        self.seq += 1
        for sink in self.sinks:
            sink.write(message, frame, result)
        return message

    def run(self, frames: Iterable[Frame], max_frames: int | None = None) -> PipelineStats:
        """Every frame of ``frames``, in order. Decoding and preprocessing run in a helper thread,
        a few frames ahead, so they overlap inference (OpenCV and ONNX Runtime release the GIL)."""
        stats = PipelineStats()
        started = time.perf_counter()
        try:
            for item in self._prepared(frames):
                result = self.detector.detect_prepared(item.blob, item.transform, item.preprocess_ms)
                message = self.publish(item.frame, result)
                stats.frames += 1
                stats.detections += len(message["detections"])
                if max_frames is not None and stats.frames >= max_frames:
                    break
        finally:
            stats.seconds = time.perf_counter() - started
            for sink in self.sinks:
                sink.close()
        log.info("stream %s: %d frames, %d detections, %.1f fps", self.stream, stats.frames, stats.detections,
                 stats.fps)
        return stats

    def _prepared(self, frames: Iterable[Frame]) -> Iterator[Prepared]:
        handoff: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_DEPTH)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                for frame in frames:
                    t0 = time.perf_counter()
                    blob, transform = self.detector.preprocess(frame.image)
                    if not put(Prepared(frame, blob, transform, (time.perf_counter() - t0) * 1000)):
                        return
            except BaseException as exc:  # handed to the consuming thread, which raises it
                put(exc)
            finally:
                put(_END)

        reader = threading.Thread(target=read, name=f"prefetch-{self.stream}", daemon=True)
        reader.start()
        try:
            while (item := handoff.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            reader.join(timeout=5)  # a blocked camera read must not hold up the exit
