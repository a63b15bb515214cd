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
- Tracks are per class, and a detector unsure of an object's class does not break them (``track``, what the
  pipeline calls): of the boxes of other classes on one object (IoU >= SAME_OBJECT_IOU; the detector's NMS is per
  class), only one takes part, the one a seen track took, else the best scored (``_not_other_classes_view``); a
  track prefers detections of its own class
  (CLASS_CHANGE_COST on top of 1 - IoU) but takes one of another class, and a track's class is the one of its best
  score. (Strictly per-class tracks swapped such an object between two tracks from frame to frame: 6 id switches
  on a 12-object test clip; and the second box of an object let a lost track of that class take it over.)
  ``update`` does the same when given ``one_class_per_object``, and otherwise keeps every class's detection.
- Birth uses ``min_hits`` everywhere (ByteTrack confirms every track of the first frame at once);
  a tentative track needs high-score detections, and dies the first frame it misses, as there.
- One pool of tracks, but the high-score detections go first to the tracks seen in the previous frame where they
  overlap well (IoU >= SEEN_FIRST_IOU), then to every track left, tentative, confirmed and lost (unmatched for
  fewer than ``max_age`` frames) alike, at ``match_iou``: a lost track's box, carried on by its last velocity,
  drifts over other objects, and took over their detections from the tracks that follow them. The second stage
  matches the low-score ones to the confirmed tracks left, lost ones included, as the paper's Algorithm 1 does
  (the reference code leaves lost tracks out of it). A third, for lost tracks that no box overlaps any more,
  takes up the high-score detections left of their class within the filter's gate (``_recover``): an object that
  comes out from behind another, or that the detector missed for a while, gets its id back instead of a new one.
  (The three measured on crowd clips: benchmarks/bench_tracking_quality.py.)
- No score fusion into the IoU cost, no new-track threshold above ``high``, and no removal of
  duplicate tracks between the tracked and lost pools (there is one pool).

Why not a library: norfair pins numpy<2, and Roboflow's ``trackers`` pulls ``supervision`` and
the GUI ``opencv-python``, which clashes with the ``opencv-python-headless`` edged depends on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
from scipy.optimize import linear_sum_assignment

from edged.config import Config
from edged.evaluation import iou_matrix
from edged.detections import Detection, DetectionResult, TrackedDetection, TrackInfo, TrackUpdate

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
SEEN_FIRST_IOU = 0.7  # the first association's gate for the tracks seen in the previous frame (_match)
RECOVERY_GATE = 13.28  # chi-square, 4 degrees of freedom, 0.99: a lost track's gate on (cx, cy, w, h) (_recover)
NO_MATCH = 1e6  # cost of a pair ruled out (gate, class): the assignment makes as many allowed pairs as it can
# The filter of every track in one array, (5, tracks, 2, 2): the 5 quantities below, each for
# ((cx, cy), (w, h)); the noise of x and w scales with the width, that of y and h with the height,
# so a track's (w, h) row scales both rows. Quantity first: each is one contiguous block, which numpy
# updates in place several times faster than a strided one.
STATE, VELOCITY, VAR_P, COV_PV, VAR_V = range(5)


class _Track:
    """A track's bookkeeping; its filter is its column of ``Tracker._filter``."""

    __slots__ = ("track_id", "class_id", "label", "hits", "misses", "confirmed", "first_seen", "last_seen",
                 "best_score", "best_box")

    def __init__(self, track_id: int, class_id: int, label: str, score: float, box: tuple[float, ...], ts: float,
                 confirmed: bool):
        self.track_id, self.class_id, self.label = track_id, class_id, label
        self.hits, self.misses, self.confirmed = 1, 0, confirmed
        self.first_seen = self.last_seen = ts
        self.best_score, self.best_box = score, box

    def info(self) -> TrackInfo:
        return TrackInfo(self.track_id, self.label, self.class_id, self.best_score, self.best_box, self.first_seen,
                         self.last_seen)


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


Labels = Mapping[int, str] | Sequence[str]  # class id -> label


class Tracker:
    """ByteTrack-style tracker for one stream: feed it every frame's detections, in capture order.

    The work per track (bookkeeping) is plain Python, and what is per pair of track and detection (IoU, cost,
    assignment) or per track of the filter is numpy, a few calls a frame for every track at once: with the few to
    few tens of objects of a scene, numpy's cost is per call, and a frame takes under a hundred."""

    def __init__(self, *, min_hits: int = 3, max_age: int = 30, high: float = 0.5, low: float = 0.1,
                 match_iou: float = 0.2, second_match_iou: float = 0.5, first_id: int = 1):
        """``first_id``: a stream started again carries on from its last tracker's ``next_id``, so that ids stay
        unique per stream for the daemon's lifetime."""
        self.min_hits, self.max_age = min_hits, max_age
        self.high, self.low = high, low
        self.match_iou, self.second_match_iou = match_iou, second_match_iou
        self._next_id = first_id
        self._last_ts: float | None = None
        self._tracks: list[_Track] = []  # in birth (so id) order
        self._filter = np.zeros((5, 0, 2, 2))  # a column per track: see STATE

    @classmethod
    def from_config(cls, config: Config, first_id: int = 1) -> Tracker:
        """The daemon's tracker: ``tracking`` settings, and high-score detections from ``model.confidence``."""
        tracking = config.tracking
        return cls(min_hits=tracking.min_hits, max_age=tracking.max_age, high=config.model.confidence,
                   low=tracking.low, first_id=first_id)

    def update(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, labels: Labels,
               ts: float, *, one_class_per_object: bool = False) -> TrackUpdate:
        """boxes (N,4) float x1,y1,x2,y2 in source pixels; scores (N,); class_ids (N,) int; labels: class
        id -> label name; ts: the frame's capture time, seconds (monotonic increase expected; a
        non-increasing ts is treated as a tiny dt, never negative). ``one_class_per_object``: a detection
        that another class's detection on the same object serves starts no track (module docstring)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        score_list = np.asarray(scores, dtype=np.float64).reshape(-1).tolist()
        class_array = np.asarray(class_ids, dtype=np.int64).reshape(-1)
        class_list = class_array.tolist()
        dt = MIN_DT if self._last_ts is None else max(ts - self._last_ts, MIN_DT)
        self._last_ts = ts
        tracks, kf = self._tracks, self._filter
        high = [d for d, score in enumerate(score_list) if score >= self.high]
        low = [d for d, score in enumerate(score_list) if self.low <= score < self.high]

        if tracks:
            self._predict(dt)
        one_view = partial(_not_other_classes_view, boxes=boxes, scores=score_list, class_ids=class_array) \
            if one_class_per_object else None
        pairs, born = self._match(boxes, class_array, high, low, one_view)  # (track row, detection); free ones
        if pairs:
            self._correct([row for row, _ in pairs], _centre_size(boxes[[d for _, d in pairs]]))
        box_list = boxes.tolist()

        entered: list[TrackInfo] = []
        shown: list[tuple[int, int]] = []  # (detection, track row) of confirmed tracks
        for row, d in pairs:
            track = tracks[row]
            track.hits += 1
            track.last_seen = ts
            if score_list[d] > track.best_score:
                track.best_score, track.best_box = score_list[d], tuple(box_list[d])
                track.class_id = class_list[d]  # a track is of the class it was seen as at its best score
                track.label = labels[track.class_id]
            if not track.confirmed and track.hits >= self.min_hits:
                track.confirmed = True
                entered.append(track.info())
            if track.confirmed:
                shown.append((d, row))
        entered.sort(key=lambda info: info.track_id)
        tracked: list[TrackedDetection] = []
        if shown:
            velocities = kf[VELOCITY, [row for _, row in shown], 0].tolist()
            tracked = [TrackedDetection(d, tracks[row].track_id, (vx, vy), ts - tracks[row].first_seen)
                       for (d, row), (vx, vy) in zip(shown, velocities)]

        left = self._count_misses({row for row, _ in pairs})

        if born:
            self._birth(boxes[born], [score_list[d] for d in born], [class_list[d] for d in born], labels, ts)
            if self.min_hits <= 1:
                new = self._tracks[-len(born):]
                entered += [track.info() for track in new]
                tracked += [TrackedDetection(d, track.track_id, (0.0, 0.0), 0.0) for d, track in zip(born, new)]
        tracked.sort()  # by detection index

        in_view = Counter(t.label for t in self._tracks if t.confirmed and t.misses < IN_VIEW_MISSES)
        return TrackUpdate(tracked, entered, left, dict(in_view))

    def _match(self, boxes: np.ndarray, class_ids: np.ndarray, high: list[int], low: list[int],
               one_view: OneView | None) -> tuple[list[tuple[int, int]], list[int]]:
        """ByteTrack's stages (module docstring): (track row, detection) pairs, in the order matched, and the
        high-score detections left to start tracks. ``one_view``: with one class per object, what is left of the
        detections not yet matched, once the other classes' views of an object go (``_not_other_classes_view``)."""
        tracks = self._tracks
        if not tracks or not len(boxes):
            return [], one_view(high, []) if one_view and high else high
        # Once a frame, for every track and detection; the stages take their part of it.
        iou = iou_matrix(_xyxy(self._filter[STATE]), boxes)
        cost = 1.0 - iou
        cost += CLASS_CHANGE_COST * (np.array([t.class_id for t in tracks])[:, None] != class_ids)
        # The tracks seen in the previous frame first, where they overlap a box well: a lost track, its box carried
        # on by its last velocity, must not take the object that another track follows.
        seen = [row for row, t in enumerate(tracks) if not t.misses]
        pairs = self._associate(iou, cost, SEEN_FIRST_IOU, seen, high)
        free = _not_in(high, pairs)
        if one_view:
            # An object's box of another class must not go to a lost track of that class (nor start one). After
            # the first stage, as most detections are matched by then and few are left to compare.
            if free or low:
                left, low_scored = one_view(free + low, [d for _, d in pairs]), set(low)  # in one call: cheaper
                free, low = [d for d in left if d not in low_scored], [d for d in left if d in low_scored]
        taken = {row for row, _ in pairs}
        rest = [row for row in range(len(tracks)) if row not in taken]
        pairs += self._associate(iou, cost, self.match_iou, rest, free)
        first = {row for row, _ in pairs}
        left_over = [row for row, t in enumerate(tracks) if t.confirmed and row not in first]
        pairs += self._associate(iou, cost, self.second_match_iou, left_over, low)
        rows = {row for row, _ in pairs}
        lost = [row for row in left_over if tracks[row].misses and row not in rows]
        free = _not_in(free, pairs)
        if lost and free:
            recovered = self._recover(boxes, class_ids, lost, free)
            pairs += recovered
            free = _not_in(free, recovered)
        return pairs, free

    def _recover(self, boxes: np.ndarray, class_ids: np.ndarray, rows: list[int],
                 dets: list[int]) -> list[tuple[int, int]]:
        """Lost tracks (``rows``) that no box overlaps any more, taken up again by high-score detections (``dets``)
        that nothing else took: those of the track's class within the filter's gate (the normalised distance of
        centre and size, chi-square with 4 degrees of freedom), nearest first. The filter's uncertainty grows while
        a track is lost, and so does the gate: an object that comes out from behind another where it was heading,
        or stopped while hidden, gets its id back instead of a new one."""
        f = self._filter[:, rows]
        expected_var = f[VAR_P] + MEASUREMENT_STD ** 2 * _size_squared(f[STATE])  # (rows, 2, 2)
        offset = _centre_size(boxes[dets])[None] - f[STATE][:, None]  # (rows, dets, 2, 2)
        distance = (offset * offset / expected_var[:, None]).sum(axis=(2, 3))
        classes = np.array([self._tracks[row].class_id for row in rows])
        allowed = (distance <= RECOVERY_GATE) & (classes[:, None] == class_ids[dets])
        if not allowed.any():
            return []
        r, c = linear_sum_assignment(np.where(allowed, distance, NO_MATCH))
        return [(rows[i], dets[j]) for i, j in zip(r.tolist(), c.tolist()) if allowed[i, j]]

    def _count_misses(self, matched: set[int]) -> list[TrackInfo]:
        """After matching: a miss more for each track not ``matched``; a confirmed track dies after max_age frames
        unmatched, a tentative one at its first miss. Returns the confirmed ones that died."""
        left, missed, alive = [], [], []
        for row, track in enumerate(self._tracks):
            if row in matched:
                track.misses = 0
            else:
                track.misses += 1
                if not track.confirmed or track.misses >= self.max_age:
                    if track.confirmed:
                        left.append(track.info())
                    continue
                missed.append(row)
            alive.append(row)
        if missed:  # as ByteTrack: an unmatched track's size stops changing
            self._filter[VELOCITY, missed, 1] = 0.0
        if len(alive) < len(self._tracks):
            self._tracks = [self._tracks[row] for row in alive]
            self._filter = self._filter[:, alive]
        return left

    @property
    def next_id(self) -> int:
        return self._next_id

    def track(self, result: DetectionResult, ts: float) -> DetectionResult:
        """``result`` as published with tracking: the detections of confirmed tracks this frame (those from
        ``low`` up that keep a track alive included), each with its track id, velocity and age, and
        ``tracks`` set. The detector must report down to ``low`` (``detection_floor``)."""
        detections = result.detections
        boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(len(detections), 4)
        update = self.update(boxes, [d.score for d in detections], [d.class_id for d in detections],
                             {d.class_id: d.label for d in detections}, ts, one_class_per_object=True)
        # Detection(...), not dataclasses.replace: 4x faster, and this runs per detection per frame.
        tracked = [Detection(d.label, d.class_id, d.score, d.box, t.track_id, t.velocity, t.age_s)
                   for t in update.tracked for d in (detections[t.detection_index],)]
        return DetectionResult(tracked, result.width, result.height, result.timings_ms, update)

    def flush(self) -> list[TrackInfo]:
        """End every confirmed track now (stream stopped): returns them as left."""
        left = [track.info() for track in self._tracks if track.confirmed]
        self._tracks, self._filter = [], np.zeros((5, 0, 2, 2))
        self._last_ts = None
        return left

    def _predict(self, dt: float) -> None:
        kf = self._filter
        size2 = _size_squared(kf[STATE])
        # Assigned back whole: after tracks were removed, kf is not contiguous, and reshape() would give a copy.
        kf[...] = (_transition(dt) @ kf.reshape(5, -1)).reshape(kf.shape)
        kf[VAR_P] += (dt * POSITION_NOISE ** 2) * size2
        kf[VAR_V] += (dt * VELOCITY_NOISE ** 2) * size2

    def _correct(self, rows: list[int], measured: np.ndarray) -> None:
        """Kalman update of the tracks at ``rows`` with their measured ((cx, cy), (w, h))."""
        kf = self._filter
        f = kf[:, rows]
        innovation = measured - f[STATE]
        innovation_var = f[VAR_P] + MEASUREMENT_STD ** 2 * _size_squared(f[STATE])
        gain = f[VAR_P:COV_PV + 1] / innovation_var  # (2, rows, 2, 2): of position, of velocity
        f[VAR_V] -= gain[1] * f[COV_PV]
        f[STATE:VELOCITY + 1] += gain * innovation
        f[VAR_P:COV_PV + 1] *= 1 - gain[0]  # var_p and cov_pv, each times (1 - position gain)
        kf[:, rows] = f

    @staticmethod
    def _associate(ious: np.ndarray, costs: np.ndarray, gate: float, rows: list[int] | None,
                   dets: list[int]) -> list[tuple[int, int]]:
        """Hungarian matching of the tracks at ``rows`` (None: every one) to the detections ``dets`` on ``costs``
        (1 - IoU, plus CLASS_CHANGE_COST where the classes differ: a track takes a detection of its own class
        first), pairs with IoU >= ``gate`` only: (track row, detection) pairs."""
        if rows == [] or not dets:
            return []
        iou, cost = (ious[:, dets], costs[:, dets]) if rows is None else (ious[rows][:, dets], costs[rows][:, dets])
        allowed = iou >= gate
        if not allowed.any():
            return []
        r, c = linear_sum_assignment(np.where(allowed, cost, NO_MATCH))
        return [(i if rows is None else rows[i], dets[j]) for i, j in zip(r.tolist(), c.tolist()) if allowed[i, j]]

    def _birth(self, boxes: np.ndarray, scores: list[float], class_ids: list[int], labels: Labels, ts: float) -> None:
        n = len(boxes)
        kf = np.zeros((5, n, 2, 2))
        kf[STATE] = _centre_size(boxes)
        size2 = _size_squared(kf[STATE])
        kf[VAR_P] = INITIAL_POSITION_STD ** 2 * size2
        kf[VAR_V] = INITIAL_VELOCITY_STD ** 2 * size2
        self._tracks += [_Track(self._next_id + i, c, labels[c], score, box, ts, self.min_hits <= 1)
                         for i, (c, score, box) in enumerate(zip(class_ids, scores, map(tuple, boxes.tolist())))]
        self._filter = np.concatenate([self._filter, kf], axis=1)
        self._next_id += n


def _not_in(dets: list[int], pairs: list[tuple[int, int]]) -> list[int]:
    """``dets`` less the detections of ``pairs``."""
    taken = {d for _, d in pairs}
    return [d for d in dets if d not in taken]


def _not_other_classes_view(candidates: list[int], matched: list[int], boxes: np.ndarray, scores: list[float],
                            class_ids: np.ndarray) -> list[int]:
    """Of ``candidates`` (detections not matched yet), those left once each that is another class's view of an
    object goes: a candidate that a detection of another class covers (IoU >= SAME_OBJECT_IOU), where that one is
    ``matched`` to a track this frame or is a better-scored candidate kept. A detector unsure between two classes
    reports a box per class (its NMS is per class)."""
    others = matched + candidates
    if (class_ids[others] == class_ids[candidates[0]]).all():  # the usual case: nothing to compare
        return candidates
    covered = ((iou_matrix(boxes[candidates], boxes[others]) >= SAME_OBJECT_IOU)
               & (class_ids[candidates][:, None] != class_ids[others]))
    if not covered.any():
        return candidates
    by_matched, by_candidate = covered[:, :len(matched)].any(axis=1), covered[:, len(matched):]
    kept: list[int] = []
    for i in sorted(range(len(candidates)), key=lambda i: -scores[candidates[i]]):
        if not by_matched[i] and not by_candidate[i, kept].any():
            kept.append(i)
    return [candidates[i] for i in sorted(kept)]


OneView = Callable[[list[int], list[int]], list[int]]  # _not_other_classes_view with a frame's boxes bound


def detection_floor(confidence: float, low: float) -> float:
    """The score down to which the detector reports while tracking: ``low``, for ByteTrack's second stage,
    unless the confidence threshold is lower still."""
    return min(confidence, low)
