"""One stream's path: frame -> preprocess -> inference -> postprocess -> message -> sinks.

``edged detect`` and ``edged run`` share it; they differ in the source policy and the sinks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from edged.inference.detector import Detector
from edged.messages import detections_message, model_descriptor
from edged.sinks import Sink
from edged.sources import Frame

log = logging.getLogger("edged.pipeline")


@dataclass
class PipelineStats:
    frames: int = 0
    detections: int = 0
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class Pipeline:
    def __init__(self, detector: Detector, stream: str, sinks: Sequence[Sink], device_id: str):
        self.detector = detector
        self.stream = stream
        self.sinks = list(sinks)
        self.device_id = device_id
        self.seq = 0  # detections messages published on this stream
        self.model = model_descriptor(detector)

    def process(self, frame: Frame) -> dict[str, Any]:
        result = self.detector.detect(frame.image)
        message = detections_message(self.device_id, self.stream, self.seq, frame, result, self.model)
        self.seq += 1
        for sink in self.sinks:
            sink.write(message, frame, result)
        return message

    def run(self, frames: Iterable[Frame], max_frames: int | None = None) -> PipelineStats:
        stats = PipelineStats()
        started = time.perf_counter()
        try:
            for frame in frames:
                message = self.process(frame)
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
