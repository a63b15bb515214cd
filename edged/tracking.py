"""Multi-object tracking for one stream, after ByteTrack.

The method is ByteTrack's (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every
Detection Box", ECCV 2022) and follows its reference implementation (github.com/ifzhang/ByteTrack,
``yolox/tracker/byte_tracker.py`` and ``yolox/tracker/kalman_filter.py``): a constant-velocity
Kalman filter per track, and two association stages per frame by IoU with the Hungarian method:
the high-score detections first, then the low-score ones (score in [low, high)), which mostly are
the partly hidden or blurred objects that a single threshold would drop, with the tracks left over.

What differs here:

- Time is the capture timestamps' seconds, not frame counts: the filter's step is the time since
  the previous frame, so a dropped frame (a gap in time) still gives velocities in pixels per
  second. The process noise, ByteTrack's per-frame values taken at 30 fps, grows with that time
  (a random walk per second); only ``max_age`` counts frames.
- The state is centre, width and height (cx, cy, w, h) and their velocities, as in BoT-SORT,
  instead of ByteTrack's aspect ratio and height: the noise of x and w scales with the width,
  that of y and h with the height. The filter's matrices never couple one coordinate with
  another (ByteTrack's do not either), so each coordinate is a (position, velocity) filter of its
  own: the covariance is kept as three numbers per coordinate, and predicting or correcting every
  track at once is a few elementwise numpy operations; the numbers are those of the 8x8 form.
- Tracks are per class, and a detector unsure of a small object's class does not break them: of boxes of
  different classes on one object (IoU >= SAME_OBJECT_IOU; NMS is per class) only the best-scored is kept, a
  track prefers detections of its own class (CLASS_CHANGE_COST on top of 1 - IoU) but takes one of another
  class for the same object, and a track's class is the one of its best score. (Strictly per-class tracks
  swapped such an object between two tracks from frame to frame: 6 id switches on a 12-object test clip.)
- Birth uses ``min_hits`` everywhere (ByteTrack confirms every track of the first frame at once);
  a tentative track needs high-score detections, and dies the first frame it misses, as there.
- One pool of tracks: the first stage matches the high-score detections to every track, tentative,
  confirmed and lost (unmatched for fewer than ``max_age`` frames) alike; the second matches the
  low-score ones to the confirmed tracks left, lost ones included, as the paper's Algorithm 1
  does (the reference code leaves lost tracks out of the second stage).
- No score fusion into the IoU cost, no new-track threshold above ``high``, and no removal of
  duplicate tracks between the tracked and lost pools (there is one pool).

Why not a library: norfair pins numpy<2, and Roboflow's ``trackers`` pulls ``supervision`` and
the GUI ``opencv-python``, which clashes with the ``opencv-python-headless`` edged depends on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from edged.evaluation import iou_matrix
from edged.inference.detector import Detection, DetectionResult

# Kalman filter noise as fractions of the box's size (width for x and w, height for y and h).
# ByteTrack's per-frame standard deviations are 1/20 of the size for positions and 1/160 of the
# size per frame for velocities; taken at a reference 30 fps they become per-second rates here,
# so a 30 fps stream gets ByteTrack's noise frame by frame, and variance grows linearly with time.
REFERENCE_FPS = 30.0
MEASUREMENT_STD = 1 / 20
POSITION_NOISE = MEASUREMENT_STD * math.sqrt(REFERENCE_FPS)  # std after one second, fraction of size
VELOCITY_NOISE = REFERENCE_FPS / 160 * math.sqrt(REFERENCE_FPS)  # (size/s) after one second
INITIAL_POSITION_STD = 2 * MEASUREMENT_STD
INITIAL_VELOCITY_STD = 10 * REFERENCE_FPS / 160  # size per second: a new track's speed is unknown
MIN_DT = 1e-3  # seconds: the step for a first frame or a timestamp that did not increase
NO_MATCH = 1e6  # cost of a pair ruled out (gate, class): the assignment makes as many allowed pairs as it can
_SIZES = [2, 3, 2, 3]  # noise of cx, cy, w, h scales with w, h, w, h: their columns in (cx, cy, w, h)


@dataclass(frozen=True)
class TrackedDetection:
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
    best_box: tuple[float, float, float, float]
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
    in_view: dict[str, int]  # label -> confirmed tracks alive (matched within the last max_age frames)


def _xyxy(state: np.ndarray) -> np.ndarray:
    centre, half = state[:, :2], np.maximum(state[:, 2:], 1e-3) / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def _cxcywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)


def _scale(state: np.ndarray) -> np.ndarray:
    """Per track and coordinate of (cx, cy, w, h): the box size (px) that its noise is a fraction of."""
    return np.maximum(state[:, _SIZES], 1.0)


CLASS_CHANGE_COST = 0.5  # added to 1 - IoU when a track would take a detection of another class
SAME_OBJECT_IOU = 0.7  # boxes of two classes overlapping this much are one object seen as both
IN_VIEW_MISSES = 3  # a confirmed track counts as in view until it has been missed this many frames in a row


Labels = Mapping[int, str] | Sequence[str]  # class id -> label


class Tracker:
    """ByteTrack-style tracker for one stream: feed it every frame's detections, in capture order."""

    def __init__(self, *, min_hits: int = 3, max_age: int = 30, high: float = 0.5, low: float = 0.1,
                 match_iou: float = 0.2, second_match_iou: float = 0.5, first_id: int = 1):
        """``first_id``: a stream started again carries on from its last tracker's ``next_id``, so that ids stay
        unique per stream for the daemon's lifetime."""
        self.min_hits, self.max_age = min_hits, max_age
        self.high, self.low = high, low
        self.match_iou, self.second_match_iou = match_iou, second_match_iou
        self._next_id = first_id
        self._last_ts: float | None = None
        self._tracks = self._empty()

    @staticmethod
    def _empty() -> dict[str, np.ndarray]:
        """The tracks, one row each, in birth (so id) order. The filter: ``state`` (cx, cy, w, h) and
        ``velocity`` (per second) of each, and per coordinate the covariance of position and
        velocity: ``var_p``, ``cov_pv``, ``var_v``."""
        return {**{name: np.zeros((0, 4)) for name in ("state", "velocity", "var_p", "cov_pv", "var_v")},
                "id": np.zeros(0, np.int64), "class_id": np.zeros(0, np.int64), "label": np.zeros(0, object),
                "hits": np.zeros(0, np.int64), "misses": np.zeros(0, np.int64), "confirmed": np.zeros(0, bool),
                "first_seen": np.zeros(0), "last_seen": np.zeros(0), "best_score": np.zeros(0),
                "best_box": np.zeros((0, 4))}

    def update(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, labels: Labels,
               ts: float) -> TrackUpdate:
        """boxes (N,4) float x1,y1,x2,y2 in source pixels; scores (N,); class_ids (N,) int; labels: class
        id -> label name; ts: the frame's capture time, seconds (monotonic increase expected; a
        non-increasing ts is treated as a tiny dt, never negative)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        dt = MIN_DT if self._last_ts is None else max(ts - self._last_ts, MIN_DT)
        self._last_ts = ts
        t = self._tracks
        self._predict(dt)

        predicted = _xyxy(t["state"])
        iou = iou_matrix(predicted, boxes)  # once a frame: both stages take their part of it
        high = np.flatnonzero(scores >= self.high)
        low = np.flatnonzero((scores >= self.low) & (scores < self.high))
        first_t, first_d = self._associate(np.arange(len(predicted)), high, iou, class_ids, self.match_iou)
        left_over = t["confirmed"].copy()
        left_over[first_t] = False
        second_t, second_d = self._associate(np.flatnonzero(left_over), low, iou, class_ids, self.second_match_iou)
        matched_t, matched_d = np.concatenate([first_t, second_t]), np.concatenate([first_d, second_d])

        self._correct(matched_t, _cxcywh(boxes[matched_d]))
        t["hits"][matched_t] += 1
        t["misses"] += 1
        t["misses"][matched_t] = 0
        t["last_seen"][matched_t] = ts
        better = scores[matched_d] > t["best_score"][matched_t]
        t["best_score"][matched_t[better]] = scores[matched_d[better]]
        # A track is of the class it was seen as at its best score.
        t["class_id"][matched_t[better]] = class_ids[matched_d[better]]
        t["label"][matched_t[better]] = [labels[c] for c in class_ids[matched_d[better]].tolist()]
        t["best_box"][matched_t[better]] = boxes[matched_d[better]]
        newly = matched_t[~t["confirmed"][matched_t] & (t["hits"][matched_t] >= self.min_hits)]
        t["confirmed"][newly] = True
        entered = self._infos(np.sort(newly))

        shown = t["confirmed"][matched_t]
        rows, dets = matched_t[shown], matched_d[shown]
        tracked = [TrackedDetection(d, i, (vx, vy), ts - first) for d, i, (vx, vy), first in zip(
            dets.tolist(), t["id"][rows].tolist(), t["velocity"][rows, :2].tolist(), t["first_seen"][rows].tolist())]

        # A confirmed track dies after max_age frames unmatched; a tentative one at its first miss.
        dead = np.where(t["confirmed"], t["misses"] >= self.max_age, t["misses"] > 0)
        left = self._infos(np.flatnonzero(dead & t["confirmed"]))
        if dead.any():
            self._tracks = t = {name: values[~dead] for name, values in t.items()}

        fresh = np.ones(len(scores), bool)
        fresh[first_d] = False
        unmatched = high[fresh[high]]
        if len(unmatched):
            born = len(t["id"])
            self._birth(boxes[unmatched], scores[unmatched], class_ids[unmatched], labels, ts)
            if self.min_hits <= 1:
                entered += self._infos(np.arange(born, born + len(unmatched)))
                tracked += [TrackedDetection(d, i, (0.0, 0.0), 0.0)
                            for d, i in zip(unmatched.tolist(), self._tracks["id"][born:].tolist())]
        tracked.sort(key=lambda d: d.detection_index)

        t = self._tracks
        in_view = t["confirmed"] & (t["misses"] < IN_VIEW_MISSES)
        return TrackUpdate(tracked, entered, left, dict(Counter(t["label"][in_view].tolist())))

    @property
    def next_id(self) -> int:
        return self._next_id

    def track(self, result: DetectionResult, ts: float) -> DetectionResult:
        """``result`` as published with tracking: the detections of confirmed tracks this frame (those from
        ``low`` up that keep a track alive included), each with its track id, velocity and age, and
        ``tracks`` set. The detector must report down to ``low`` (``detection_floor``)."""
        detections = result.detections
        count = len(detections)
        boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(count, 4)
        scores = np.fromiter((d.score for d in detections), np.float64, count)
        class_ids = np.fromiter((d.class_id for d in detections), np.int64, count)
        kept = _one_class_per_object(boxes, scores, class_ids)
        if kept is not None:
            detections = [detections[i] for i in kept.tolist()]
            boxes, scores, class_ids = boxes[kept], scores[kept], class_ids[kept]
        update = self.update(boxes, scores, class_ids, {d.class_id: d.label for d in detections}, ts)
        tracked = []
        for t in update.tracked:  # not dataclasses.replace: 4x slower, and this is per detection per frame
            d = detections[t.detection_index]
            tracked.append(Detection(d.label, d.class_id, d.score, d.box, t.track_id, t.velocity, t.age_s))
        return replace(result, detections=tracked, tracks=update)

    def flush(self) -> list[TrackInfo]:
        """End every confirmed track now (stream stopped): returns them as left."""
        left = self._infos(np.flatnonzero(self._tracks["confirmed"]))
        self._tracks = self._empty()
        self._last_ts = None
        return left

    def _predict(self, dt: float) -> None:
        t = self._tracks
        t["velocity"][t["misses"] > 0, 2:] = 0.0  # as ByteTrack: an unmatched track's size stops changing
        scale = _scale(t["state"])
        t["state"] += dt * t["velocity"]
        t["var_p"] += dt * (2 * t["cov_pv"] + dt * t["var_v"]) + dt * (POSITION_NOISE * scale) ** 2
        t["cov_pv"] += dt * t["var_v"]
        t["var_v"] += dt * (VELOCITY_NOISE * scale) ** 2

    def _correct(self, rows: np.ndarray, measured: np.ndarray) -> None:
        """Kalman update of the tracks at ``rows`` with their measured (cx, cy, w, h)."""
        t = self._tracks
        state, var_p, cov_pv = t["state"][rows], t["var_p"][rows], t["cov_pv"][rows]
        innovation = measured - state
        innovation_var = var_p + (MEASUREMENT_STD * _scale(state)) ** 2
        gain_p, gain_v = var_p / innovation_var, cov_pv / innovation_var
        t["state"][rows] = state + gain_p * innovation
        t["velocity"][rows] += gain_v * innovation
        t["var_v"][rows] -= gain_v * cov_pv
        t["var_p"][rows] = var_p * (1 - gain_p)
        t["cov_pv"][rows] = cov_pv * (1 - gain_p)

    def _associate(self, rows: np.ndarray, dets: np.ndarray, ious: np.ndarray, class_ids: np.ndarray,
                   gate: float) -> tuple[np.ndarray, np.ndarray]:
        """Hungarian matching of tracks ``rows`` to detections ``dets`` on 1 - IoU (IoU >= gate), plus
        CLASS_CHANGE_COST where the classes differ: a track takes a detection of its own class first."""
        if not len(rows) or not len(dets):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        iou = ious[np.ix_(rows, dets)]
        allowed = iou >= gate
        other_class = self._tracks["class_id"][rows][:, None] != class_ids[dets][None, :]
        r, c = linear_sum_assignment(np.where(allowed, 1.0 - iou + CLASS_CHANGE_COST * other_class, NO_MATCH))
        ok = allowed[r, c]
        return rows[r[ok]], dets[c[ok]]

    def _birth(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, labels: Labels,
               ts: float) -> None:
        n = len(boxes)
        state = _cxcywh(boxes)
        scale = _scale(state)
        new = {"state": state, "velocity": np.zeros((n, 4)), "var_p": (INITIAL_POSITION_STD * scale) ** 2,
               "cov_pv": np.zeros((n, 4)), "var_v": (INITIAL_VELOCITY_STD * scale) ** 2,
               "id": np.arange(self._next_id, self._next_id + n), "class_id": class_ids,
               "label": np.array([labels[c] for c in class_ids.tolist()], dtype=object),
               "hits": np.ones(n, np.int64), "misses": np.zeros(n, np.int64),
               "confirmed": np.full(n, self.min_hits <= 1), "first_seen": np.full(n, ts),
               "last_seen": np.full(n, ts), "best_score": scores, "best_box": boxes}
        self._next_id += n
        self._tracks = {name: np.concatenate([values, new[name]]) for name, values in self._tracks.items()}

    def _infos(self, rows: np.ndarray) -> list[TrackInfo]:
        t = self._tracks
        return [TrackInfo(int(t["id"][i]), t["label"][i], int(t["class_id"][i]), float(t["best_score"][i]),
                          tuple(t["best_box"][i].tolist()), float(t["first_seen"][i]), float(t["last_seen"][i]))
                for i in rows.tolist()]


def _one_class_per_object(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray) -> np.ndarray | None:
    """The indices of the detections to keep, in order, when some must go, else None: those that another,
    higher-scored detection of another class covers (IoU at least SAME_OBJECT_IOU) go. A detector unsure
    between two classes for a small object reports one box per class (NMS is per class), and per-class tracks
    would then swap the object between two tracks from frame to frame."""
    if len(boxes) < 2 or (class_ids == class_ids[0]).all():
        return None
    order = np.argsort(-scores, kind="stable")
    ranked = class_ids[order]
    covered = (iou_matrix(boxes[order], boxes[order]) >= SAME_OBJECT_IOU) & (ranked[:, None] != ranked[None, :])
    if not covered.any():  # the usual case
        return None
    kept: list[int] = []
    for rank in range(len(order)):
        if not covered[rank, kept].any():
            kept.append(rank)
    return np.sort(order[kept])


def detection_floor(confidence: float, low: float) -> float:
    """The score down to which the detector reports while tracking: ``low``, for ByteTrack's second stage,
    unless the confidence threshold is lower still."""
    return min(confidence, low)
