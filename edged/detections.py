"""What detection and tracking make of a frame: the detections, and the tracks' changes.

Plain data, shared by the detector (``edged.inference.detector``), the tracker (``edged.tracking``) and the
pipeline's sinks; it imports neither, so that they need not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(frozen=True)
class Detection:
    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in source-image pixels
    # With tracking (edged.tracking): the track's id, its velocity (px/s) and age (s).
    track_id: int | None = None
    velocity: tuple[float, float] | None = None
    age_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"label": self.label, "class_id": self.class_id, "score": round(self.score, 4),
                                "box": [round(v, 1) for v in self.box]}
        if self.track_id is not None:
            assert self.velocity is not None and self.age_s is not None
            data.update(track_id=self.track_id, velocity=[round(v, 1) for v in self.velocity],
                        age_s=round(self.age_s, 3))
        return data


@dataclass
class DetectionResult:
    detections: list[Detection]
    width: int
    height: int
    timings_ms: dict[str, float] = field(default_factory=dict)  # preprocess, inference, postprocess
    tracks: TrackUpdate | None = None  # with tracking: what the stream's tracker made of this frame


class TrackedDetection(NamedTuple):  # a NamedTuple, not a dataclass: one is made per detection per frame
    detection_index: int  # index into the detections given to update()
    track_id: int
    velocity: tuple[float, float]  # vx, vy of the box centre in pixels per second, from the filter
    age_s: float  # ts - first_seen


@dataclass(frozen=True)
class TrackInfo:
    """A track's summary, for object events."""

    track_id: int
    label: str
    class_id: int
    best_score: float
    best_box: tuple[float, ...]  # x1, y1, x2, y2
    first_seen: float  # capture ts of the first detection
    last_seen: float  # capture ts of the last matched detection

    @property
    def duration_s(self) -> float:
        return self.last_seen - self.first_seen


@dataclass(frozen=True)
class TrackUpdate:
    tracked: list[TrackedDetection]  # detections of confirmed tracks matched this frame, in detection order
    entered: list[TrackInfo]  # tracks confirmed this frame
    left: list[TrackInfo]  # confirmed tracks that died this frame
    in_view: dict[str, int]  # label -> confirmed tracks missed fewer than IN_VIEW_MISSES frames in a row
