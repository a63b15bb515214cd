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
  track at once is a few numpy operations on one array; the numbers are those of the 8x8 form.
  (With tens of tracks numpy's cost is per call, not per track: a frame's work is a fixed number
  of calls, whatever the number of objects; benchmarks/bench_tracker.py.)
- Tracks are per class, and a detector unsure of a small object's class does not break them (``track``, what the
  pipeline calls): a track prefers detections of its own class (CLASS_CHANGE_COST on top of 1 - IoU) but takes one
  of another class for the same object, a detection that another class's detection on the same object (IoU >=
  SAME_OBJECT_IOU; NMS is per class) already serves starts no track, and a track's class is the one of its best
  score. (Strictly per-class tracks swapped such an object between two tracks from frame to frame: 6 id switches on
  a 12-object test clip.) ``update`` does the same when given ``one_class_per_object``, and otherwise starts a
  track for each class's detection.
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
from dataclasses import dataclass

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
# The filter of every track in one array, (tracks, 5, 2, 2): the 5 quantities below, each for
# ((cx, cy), (w, h)); the noise of x and w scales with the width, that of y and h with the height,
# so a track's (w, h) row scales both rows.
STATE, VELOCITY, VAR_P, COV_PV, VAR_V = range(5)


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
    """What one frame did to the tracks. The detections of confirmed tracks matched this frame (those published) come
    as parallel arrays in detection order: arrays, because ``track`` runs every frame and a Python object per
    detection here would cost as much as the tracking itself."""

    detection_index: np.ndarray  # (n,) int: index into the detections given to update()
    track_id: np.ndarray  # (n,) int
    velocity: np.ndarray  # (n, 2): vx, vy of the box centre in pixels per second, from the filter
    age_s: np.ndarray  # (n,): ts - first_seen
    entered: list[TrackInfo]  # tracks confirmed this frame
    left: list[TrackInfo]  # confirmed tracks that died this frame
    in_view: dict[str, int]  # label -> confirmed tracks alive (matched within the last max_age frames)

    @property
    def tracked(self) -> list[TrackedDetection]:
        return [TrackedDetection(d, i, (vx, vy), age) for d, i, (vx, vy), age in zip(
            self.detection_index.tolist(), self.track_id.tolist(), self.velocity.tolist(), self.age_s.tolist())]


def _xyxy(state: np.ndarray) -> np.ndarray:
    """(n, 2, 2) ((cx, cy), (w, h)) -> (n, 4) x1, y1, x2, y2."""
    centre, half = state[:, 0], np.maximum(state[:, 1], 1e-3) / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def _centre_size(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) x1, y1, x2, y2 -> (n, 2, 2) ((cx, cy), (w, h))."""
    return np.stack([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)


def _size_squared(state: np.ndarray) -> np.ndarray:
    """(n, 1, 2): per track, the square of the (w, h) (px) that the noise of ((cx, cy), (w, h)) is a fraction of."""
    return np.maximum(state[:, 1:], 1.0) ** 2


def _transition(dt: float) -> np.ndarray:
    """The prediction's linear part on (state, velocity, var_p, cov_pv, var_v) of each coordinate."""
    return np.array([[1.0, dt, 0.0, 0.0, 0.0],
                     [0.0, 1.0, 0.0, 0.0, 0.0],
                     [0.0, 0.0, 1.0, 2 * dt, dt * dt],
                     [0.0, 0.0, 0.0, 1.0, dt],
                     [0.0, 0.0, 0.0, 0.0, 1.0]])


CLASS_CHANGE_COST = 0.5  # added to 1 - IoU when a track would take a detection of another class
SAME_OBJECT_IOU = 0.7  # boxes of two classes overlapping this much are one object seen as both
IN_VIEW_MISSES = 3  # a confirmed track counts as in view until it has been missed this many frames in a row
_NONE = np.zeros(0, np.int64)


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
        """The tracks, one row each, in birth (so id) order; ``filter``: see STATE."""
        return {"filter": np.zeros((0, 5, 2, 2)), "id": np.zeros(0, np.int64), "class_id": np.zeros(0, np.int64),
                "label": np.zeros(0, object),
                "hits": np.zeros(0, np.int64), "misses": np.zeros(0, np.int64), "confirmed": np.zeros(0, bool),
                "first_seen": np.zeros(0), "last_seen": np.zeros(0), "best_score": np.zeros(0),
                "best_box": np.zeros((0, 4))}

    def update(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, labels: Labels,
               ts: float, *, one_class_per_object: bool = False) -> TrackUpdate:
        """boxes (N,4) float x1,y1,x2,y2 in source pixels; scores (N,); class_ids (N,) int; labels: class
        id -> label name; ts: the frame's capture time, seconds (monotonic increase expected; a
        non-increasing ts is treated as a tiny dt, never negative). ``one_class_per_object``: a detection
        that another class's detection on the same object serves starts no track (module docstring)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        dt = MIN_DT if self._last_ts is None else max(ts - self._last_ts, MIN_DT)
        self._last_ts = ts
        t = self._tracks
        self._predict(dt)

        # Once a frame, for every track and detection; both stages take their part of it.
        iou = iou_matrix(_xyxy(t["filter"][:, STATE]), boxes)
        cost = 1.0 - iou
        cost += CLASS_CHANGE_COST * (t["class_id"][:, None] != class_ids)
        is_high = scores >= self.high
        first_t, first_d = self._associate(iou, cost, self.match_iou, None, is_high)
        left_over = t["confirmed"].copy()
        left_over[first_t] = False
        is_low = ~is_high & (scores >= self.low)
        second_t, second_d = self._associate(iou, cost, self.second_match_iou, left_over, is_low)
        matched_t, matched_d = np.concatenate([first_t, second_t]), np.concatenate([first_d, second_d])

        self._correct(matched_t, _centre_size(boxes[matched_d]))
        t["hits"][matched_t] += 1
        t["misses"] += 1
        t["misses"][matched_t] = 0
        t["last_seen"][matched_t] = ts
        better = scores[matched_d] > t["best_score"][matched_t]
        if better.any():
            rows, dets = matched_t[better], matched_d[better]
            t["best_score"][rows] = scores[dets]
            t["class_id"][rows] = class_ids[dets]  # a track is of the class it was seen as at its best score
            t["label"][rows] = [labels[c] for c in class_ids[dets].tolist()]
            t["best_box"][rows] = boxes[dets]
        newly = matched_t[~t["confirmed"][matched_t] & (t["hits"][matched_t] >= self.min_hits)]
        entered = []
        if len(newly):
            t["confirmed"][newly] = True
            entered = self._infos(np.sort(newly))

        shown = t["confirmed"][matched_t]
        rows, dets = matched_t[shown], matched_d[shown]
        track_ids, velocities, ages = t["id"][rows], t["filter"][rows, VELOCITY, 0], ts - t["first_seen"][rows]

        # A confirmed track dies after max_age frames unmatched; a tentative one at its first miss.
        dead = np.where(t["confirmed"], t["misses"] >= self.max_age, t["misses"] > 0)
        left = []
        if dead.any():
            left = self._infos(np.flatnonzero(dead & t["confirmed"]))
            self._tracks = t = {name: values[~dead] for name, values in t.items()}

        unmatched = is_high.copy()
        unmatched[first_d] = False
        if unmatched.any():
            born = np.flatnonzero(unmatched)
            if one_class_per_object:
                born = _not_other_classes_view(born, matched_d, boxes, scores, class_ids)
            self._birth(boxes[born], scores[born], class_ids[born], labels, ts)
            if self.min_hits <= 1 and len(born):
                entered += self._infos(np.arange(len(t["id"]), len(t["id"]) + len(born)))
                dets = np.concatenate([dets, born])
                track_ids = np.concatenate([track_ids, self._tracks["id"][-len(born):]])
                velocities = np.concatenate([velocities, np.zeros((len(born), 2))])
                ages = np.concatenate([ages, np.zeros(len(born))])
        order = np.argsort(dets)

        t = self._tracks
        in_view = t["confirmed"] & (t["misses"] < IN_VIEW_MISSES)
        return TrackUpdate(dets[order], track_ids[order], velocities[order], ages[order], entered, left,
                           dict(Counter(t["label"][in_view].tolist())))

    @property
    def next_id(self) -> int:
        return self._next_id

    def track(self, result: DetectionResult, ts: float) -> DetectionResult:
        """``result`` as published with tracking: the detections of confirmed tracks this frame (those from
        ``low`` up that keep a track alive included), each with its track id, velocity and age, and
        ``tracks`` set. The detector must report down to ``low`` (``detection_floor``)."""
        detections = result.detections
        boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(len(detections), 4)
        scores = np.array([d.score for d in detections], dtype=np.float64)
        class_ids = np.array([d.class_id for d in detections], dtype=np.int64)
        update = self.update(boxes, scores, class_ids, {d.class_id: d.label for d in detections}, ts,
                             one_class_per_object=True)
        # Detection(...), not dataclasses.replace: 4x faster, and this runs per detection per frame.
        tracked = [Detection(d.label, d.class_id, d.score, d.box, track_id, (vx, vy), age)
                   for d, track_id, (vx, vy), age in zip(map(detections.__getitem__, update.detection_index.tolist()),
                                                         update.track_id.tolist(), update.velocity.tolist(),
                                                         update.age_s.tolist())]
        return DetectionResult(tracked, result.width, result.height, result.timings_ms, update)

    def flush(self) -> list[TrackInfo]:
        """End every confirmed track now (stream stopped): returns them as left."""
        left = self._infos(np.flatnonzero(self._tracks["confirmed"]))
        self._tracks = self._empty()
        self._last_ts = None
        return left

    def _predict(self, dt: float) -> None:
        t = self._tracks
        kf = t["filter"]
        kf[:, VELOCITY, 1] *= (t["misses"] == 0)[:, None]  # as ByteTrack: an unmatched track's size stops changing
        size2 = _size_squared(kf[:, STATE])
        by_coordinate = kf.reshape(-1, 5, 4)
        by_coordinate[:] = _transition(dt) @ by_coordinate
        kf[:, VAR_P] += (dt * POSITION_NOISE ** 2) * size2
        kf[:, VAR_V] += (dt * VELOCITY_NOISE ** 2) * size2

    def _correct(self, rows: np.ndarray, measured: np.ndarray) -> None:
        """Kalman update of the tracks at ``rows`` with their measured ((cx, cy), (w, h))."""
        kf = self._tracks["filter"]
        f = kf[rows]
        innovation = measured - f[:, STATE]
        innovation_var = f[:, VAR_P] + MEASUREMENT_STD ** 2 * _size_squared(f[:, STATE])
        gain = f[:, VAR_P:COV_PV + 1] / innovation_var[:, None]  # (rows, 2, 2, 2): of position, of velocity
        f[:, VAR_V] -= gain[:, 1] * f[:, COV_PV]
        f[:, STATE:VELOCITY + 1] += gain * innovation[:, None]
        f[:, VAR_P:COV_PV + 1] *= 1 - gain[:, :1]  # var_p and cov_pv, each times (1 - position gain)
        kf[rows] = f

    def _associate(self, ious: np.ndarray, costs: np.ndarray, gate: float, tracks: np.ndarray | None,
                   detections: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hungarian matching of the tracks in the ``tracks`` mask (None: every one) to the detections in the
        ``detections`` mask, on ``costs`` (1 - IoU, plus CLASS_CHANGE_COST where the classes differ: a track takes
        a detection of its own class first), pairs with IoU >= ``gate`` only: rows of track, detection indices."""
        allowed = (ious >= gate) & detections
        if tracks is not None:
            allowed &= tracks[:, None]
        if not allowed.any():
            return _NONE, _NONE
        r, c = linear_sum_assignment(np.where(allowed, costs, NO_MATCH))
        ok = allowed[r, c]
        return r[ok], c[ok]

    def _birth(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, labels: Labels,
               ts: float) -> None:
        n = len(boxes)
        kf = np.zeros((n, 5, 2, 2))
        kf[:, STATE] = _centre_size(boxes)
        size2 = _size_squared(kf[:, STATE])
        kf[:, VAR_P] = INITIAL_POSITION_STD ** 2 * size2
        kf[:, VAR_V] = INITIAL_VELOCITY_STD ** 2 * size2
        new = {"filter": kf, "id": np.arange(self._next_id, self._next_id + n), "class_id": class_ids,
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


def _not_other_classes_view(candidates: np.ndarray, matched: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                            class_ids: np.ndarray) -> np.ndarray:
    """Of ``candidates`` (detections that would start tracks), those left once each that is another class's view
    of an object goes: a candidate that a detection of another class covers (IoU >= SAME_OBJECT_IOU), where that
    one is ``matched`` to a track this frame or is a better-scored candidate kept. A detector unsure between two
    classes for a small object reports one box per class (NMS is per class)."""
    others = np.concatenate([matched, candidates])
    if (class_ids[others] == class_ids[candidates[0]]).all():  # the usual case: nothing to compare
        return candidates
    covered = ((iou_matrix(boxes[candidates], boxes[others]) >= SAME_OBJECT_IOU)
               & (class_ids[candidates][:, None] != class_ids[others]))
    if not covered.any():
        return candidates
    by_matched, by_candidate = covered[:, :len(matched)].any(axis=1), covered[:, len(matched):]
    kept: list[int] = []
    for i in np.argsort(-scores[candidates], kind="stable").tolist():
        if not by_matched[i] and not by_candidate[i, kept].any():
            kept.append(i)
    return candidates[sorted(kept)]


def detection_floor(confidence: float, low: float) -> float:
    """The score down to which the detector reports while tracking: ``low``, for ByteTrack's second stage,
    unless the confidence threshold is lower still."""
    return min(confidence, low)
