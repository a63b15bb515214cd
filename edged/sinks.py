"""Where detections go: JSON lines, a human-readable summary, an annotated video."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, TextIO

import cv2
import numpy as np

from edged.errors import SourceError
from edged.detections import DetectionResult
from edged.sources import Frame

# One colour per class id (BGR), cycling.
_PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
            (23, 204, 146), (134, 219, 61), (211, 188, 0), (255, 148, 0), (255, 55, 0), (236, 24, 0)]


class Sink(Protocol):
    def write(self, message: dict[str, Any], frame: Frame, result: DetectionResult) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One compact JSON object per line, flushed per line so a reader sees frames as they come."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, message: dict[str, Any], frame: Frame, result: DetectionResult) -> None:
        self.stream.write(json.dumps(message, separators=(",", ":")) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class SummarySink:
    """``frame 12  14.2 ms  3 detections: circle 0.93, square 0.88, ...``"""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, message: dict[str, Any], frame: Frame, result: DetectionResult) -> None:
        found = ", ".join(f"{d.label} {d.score:.2f}" for d in result.detections)
        name = f" {frame.file}" if frame.file else ""
        latency = message["latency_ms"]
        self.stream.write(f"frame {message['frame_id']:>5}{name}  {latency['inference']:6.1f} ms inference  "
                          f"{len(result.detections):>2} detections{': ' + found if found else ''}\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def annotate(image: np.ndarray, result: DetectionResult) -> np.ndarray:
    """A copy of the image with boxes, labels and scores drawn on it."""
    out = image.copy()
    for d in result.detections:
        color = _PALETTE[d.class_id % len(_PALETTE)]
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2, cv2.LINE_AA)
        text = f"{d.label} {d.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1 - th - base - 2, 0)
        cv2.rectangle(out, (x1, top), (x1 + tw + 4, top + th + base + 2), color, -1)
        cv2.putText(out, text, (x1 + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class AnnotatedVideoSink:
    """An annotated copy of the input as an mp4v video; opened on the first frame (size known then)."""

    def __init__(self, path: str | Path, fps: float | None):
        self.path = Path(path)
        self.fps = fps or 30.0
        self.writer: cv2.VideoWriter | None = None

    def write(self, message: dict[str, Any], frame: Frame, result: DetectionResult) -> None:
        height, width = frame.image.shape[:2]
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self.writer.isOpened():
                raise SourceError(f"{self.path}: cannot write a video here")
            self.size = (width, height)
        image = annotate(frame.image, result)
        if (width, height) != self.size:  # a folder of images of several sizes
            image = cv2.resize(image, self.size)
        self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
