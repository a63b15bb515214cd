"""The ByteTrack-style tracker on scripted motions, and CLEAR MOT and IDF1 (py-motmetrics), on hand-made cases and a
rendered clip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edged.evaluation import clear_mot
from edged.synthetic import write_clip
from edged.detections import TrackUpdate
from edged.tracking import IN_VIEW_MISSES, Tracker

LABELS = ["circle", "square", "triangle"]
FPS = 30.0


def box(cx: float, cy: float, w: float = 40.0, h: float = 30.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def step(tracker: Tracker, detections: list[tuple[list[float], float, int]], ts: float) -> TrackUpdate:
    """One frame: detections as (box, score, class id)."""
    boxes = np.array([d[0] for d in detections], dtype=np.float64).reshape(-1, 4)
    return tracker.update(boxes, np.array([d[1] for d in detections]), np.array([d[2] for d in detections]),
                          LABELS, ts)


def ids(update: TrackUpdate) -> dict[int, int]:
    """Detection index -> track id."""
    return {t.detection_index: t.track_id for t in update.tracked}


def test_constant_velocity_confirms_after_min_hits_with_one_id_and_true_velocity():
    tracker = Tracker(min_hits=3)
    velocity = (120.0, -45.0)
    entered, seen = [], set()
    for k in range(60):
        ts = 10.0 + k / FPS
        update = step(tracker, [(box(100 + velocity[0] * k / FPS, 300 + velocity[1] * k / FPS), 0.9, 0)], ts)
        entered += update.entered
        assert len(update.tracked) == (0 if k < 2 else 1)  # tentative for the first two frames
        seen.update(t.track_id for t in update.tracked)
        assert update.left == []
    assert [e.track_id for e in entered] == list(seen) and len(seen) == 1
    assert entered[0].first_seen == 10.0 and entered[0].label == "circle"
    last = update.tracked[0]
    assert last.velocity == pytest.approx(velocity, rel=0.05)
    assert last.age_s == pytest.approx(59 / FPS)


def test_occlusion_keeps_the_id():
    tracker = Tracker()
    updates = []
    for k in range(40):
        hidden = 20 <= k < 25  # five frames without a detection
        detections = [] if hidden else [(box(50 + 3 * k, 200 + k), 0.9, 0)]
        updates.append(step(tracker, detections, k / FPS))
    for k, update in enumerate(updates[20:25]):
        assert update.tracked == [] and update.entered == [] and update.left == []
        # Still counted for the first IN_VIEW_MISSES - 1 frames hidden, then no longer in view (though alive).
        assert update.in_view == ({"circle": 1} if k + 1 < IN_VIEW_MISSES else {})
    assert {t.track_id for u in updates for t in u.tracked} == {1}
    assert sum(len(u.entered) for u in updates) == 1
    assert len(updates[25].tracked) == 1


def test_fast_small_objects_keep_their_ids_after_another_track_dies():
    """16 px boxes moving 8 px a frame: unpredicted, their tracks would fall behind and lose them. Every track must
    still be predicted after another has been removed (the filter is then a copy of the survivors' rows)."""
    tracker = Tracker()
    ids_seen = set()
    for k in range(60):
        detections = [(box(100 + 8 * k, 300, 16, 16), 0.9, 0), (box(100 + 8 * k, 500, 16, 16), 0.9, 0)]
        if k == 5:
            detections.append((box(600, 100), 0.9, 1))  # a one-frame false positive: a track born, then dropped
        update = step(tracker, detections, k / FPS)
        ids_seen.update(ids(update).values())
    assert ids_seen == {1, 2}
    assert update.tracked[0].velocity == pytest.approx((240.0, 0.0), rel=0.02, abs=1.0)


def test_two_objects_of_one_class_crossing_keep_their_ids():
    tracker = Tracker()
    tracks = {}
    for k in range(60):
        t = k / FPS
        a, b = box(100 + 150 * t, 200, 40, 40), box(400 - 150 * t, 215, 40, 40)  # they meet at t = 1 s
        update = step(tracker, [(a, 0.9, 1), (b, 0.8, 1)], t)
        if k >= 2:
            assert len(update.tracked) == 2
            for index, track_id in ids(update).items():
                assert tracks.setdefault(index, track_id) == track_id
    assert len(set(tracks.values())) == 2


def test_a_lost_track_does_not_take_the_object_that_another_track_follows():
    """A square's track is lost while moving right; its box, carried on at that speed, drifts over a resting circle,
    which the detector sees as a square for a while: the circle's track keeps it, though the lost track's class
    fits better."""
    tracker = Tracker()
    for k in range(40):
        square = [(box(100 + 4 * k, 200), 0.9, 1)] if k < 10 else []  # seen for 10 frames, then gone
        resting = (box(215, 202), 0.9, 1 if 25 <= k < 35 else 0)  # in the lost box's way about frames 25-35
        update = step(tracker, square + [resting], k / FPS)
        if k >= 2:
            assert list(ids(update).values())[-1] == 2, f"frame {k}: the resting object's track"


def test_a_lost_track_gets_its_object_back_after_a_long_miss():
    """The detector misses a moving object for 20 frames, while it slows down: its track's box runs ahead, no longer
    overlapping it, but the object comes back within the filter's grown uncertainty, and gets its id back."""
    tracker = Tracker()
    x = 100.0
    track_ids = set()
    for k in range(60):
        x += 4.0 if k < 20 else 1.0
        missed = 20 <= k < 40
        update = step(tracker, [] if missed else [(box(x, 200, 30, 30), 0.9, 2)], k / FPS)
        track_ids.update(ids(update).values())
    assert track_ids == {1}
    assert update.tracked and update.tracked[0].track_id == 1


def test_the_second_box_of_an_object_seen_as_two_classes_goes_to_no_lost_track():
    """A square's track is lost; a circle's track follows an object that the detector then also reports as a
    square (a box per class): the circle's track keeps the object, whose square box the lost square track would
    have taken."""
    tracker = Tracker()
    for k in range(30):
        circle = box(300 + 2 * k, 200)
        detections = [(circle, 0.8, 0)] + ([(box(340, 220), 0.9, 1)] if k < 5 else [])  # the square goes at frame 5
        if k >= 10:
            detections.append((circle, 0.85, 1))  # the circle also as a square, scored a bit higher
        boxes = np.array([d[0] for d in detections])
        update = tracker.update(boxes, np.array([d[1] for d in detections]), np.array([d[2] for d in detections]),
                                LABELS, k / FPS, one_class_per_object=True)
        if k >= 10:
            assert [t.track_id for t in update.tracked] == [1], f"frame {k}"


def test_dropped_frames_gap_keeps_velocity_in_pixels_per_second():
    tracker = Tracker()
    vx, vy = 90.0, 30.0
    times = [k / FPS for k in range(30)] + [29 / FPS + 0.5 + k / FPS for k in range(30)]  # 0.5 s of frames lost
    velocities, track_ids = [], set()
    for t in times:
        update = step(tracker, [(box(100 + vx * t, 100 + vy * t), 0.9, 2)], t)
        track_ids.update(x.track_id for x in update.tracked)
        if update.tracked:
            velocities.append(update.tracked[0].velocity)
    assert track_ids == {1}
    after_gap, last = velocities[28], velocities[-1]  # frames 0-1 are tentative: index 28 is frame 30
    assert after_gap == pytest.approx((vx, vy), rel=0.1)
    assert last == pytest.approx((vx, vy), rel=0.1)


def test_classes_are_tracked_apart():
    tracker = Tracker()
    circle_ids, square_ids = set(), set()
    for k in range(30):
        same = box(200 + 2 * k, 200)
        update = step(tracker, [(same, 0.9, 0), (same, 0.9, 1)] if k % 2 else [(same, 0.9, 1), (same, 0.9, 0)],
                      k / FPS)
        for index, track_id in ids(update).items():
            (circle_ids if (index == 0) == bool(k % 2) else square_ids).add(track_id)
    assert len(circle_ids) == 1 and len(square_ids) == 1 and circle_ids != square_ids
    assert update.in_view == {"circle": 1, "square": 1}


def test_one_class_per_object_starts_one_track_for_an_object_seen_as_two_classes():
    tracker = Tracker(min_hits=1)
    seen = set()
    for k in range(20):
        same, other = box(200 + 2 * k, 200), box(500, 300)
        # The object at `same` comes as a square and a circle, the better score alternating; `other` is a circle.
        detections = [(same, 0.8 if k % 2 else 0.7, 1), (same, 0.7 if k % 2 else 0.8, 0), (other, 0.9, 0)]
        boxes = np.array([d[0] for d in detections])
        update = tracker.update(boxes, np.array([d[1] for d in detections]), np.array([d[2] for d in detections]),
                                LABELS, k / FPS, one_class_per_object=True)
        published = ids(update)
        assert len(published) == 2 and 2 in published  # one of the object's two boxes, and the other object
        seen.update(published.values())
    assert seen == {1, 2}  # one track each, for good
    assert update.in_view == {"circle": 2}  # the object's track is of its best score's class: 0.8 as a circle


def test_low_score_detections_continue_tracks_but_start_none():
    tracker = Tracker(high=0.5, low=0.1)
    for k in range(30):
        score = 0.3 if 10 <= k < 15 else 0.9
        update = step(tracker, [(box(100 + 2 * k, 100), score, 0), (box(400, 300 + k), 0.3, 0)], k / FPS)
        if k >= 2:
            assert ids(update) == {0: 1}  # the low-score-only object never gets a track
    assert [t.track_id for t in tracker.flush()] == [1]
    for k in range(3):
        update = step(tracker, [(box(400, 300), 0.9, 0)], 2.0 + k / FPS)
    assert [e.track_id for e in update.entered] == [2]  # no id was spent on the low-score-only object


def test_a_tentative_track_missed_once_is_dropped_silently():
    tracker = Tracker(min_hits=3)
    step(tracker, [(box(100, 100), 0.9, 0)], 0.0)
    step(tracker, [(box(102, 100), 0.9, 0)], 1 / FPS)
    update = step(tracker, [], 2 / FPS)
    assert update.left == [] and update.in_view == {}
    for k in range(3, 6):
        update = step(tracker, [(box(100 + 2 * k, 100), 0.9, 0)], k / FPS)
    assert [e.track_id for e in update.entered] == [2]


def test_min_hits_one_confirms_at_birth():
    update = step(Tracker(min_hits=1), [(box(100, 100), 0.9, 0), (box(300, 100), 0.4, 0), (box(500, 100), 0.7, 2)],
                  0.0)
    assert ids(update) == {0: 1, 2: 2}
    assert [(e.track_id, e.label) for e in update.entered] == [(1, "circle"), (2, "triangle")]
    assert update.tracked[0].velocity == (0.0, 0.0) and update.tracked[0].age_s == 0.0


def test_death_after_max_age_frames_is_reported_once():
    tracker = Tracker(min_hits=3, max_age=5)
    scores = [0.6, 0.7, 0.8, 0.95, 0.9, 0.7, 0.6, 0.55, 0.9, 0.8]
    for k, score in enumerate(scores):
        update = step(tracker, [(box(100 + 3 * k, 100), score, 1)], 5.0 + k / FPS)
    left = []
    for k in range(10, 20):
        update = step(tracker, [], 5.0 + k / FPS)
        assert bool(update.left) == (k == 14)  # unmatched at frames 10 to 14: five frames
        assert update.in_view == ({"square": 1} if k - 9 < IN_VIEW_MISSES else {})
        left += update.left
    [info] = left
    assert (info.track_id, info.label, info.class_id) == (1, "square", 1)
    assert info.best_score == 0.95 and info.best_box == tuple(box(109, 100))
    assert info.first_seen == 5.0 and info.last_seen == pytest.approx(5.0 + 9 / FPS)
    assert info.duration_s == pytest.approx(9 / FPS)
    assert tracker.flush() == []


def test_flush_ends_the_live_confirmed_tracks():
    tracker = Tracker(min_hits=2)
    for k in range(3):
        step(tracker, [(box(100, 100 + k), 0.9, 0), (box(300, 300), 0.8, 1)], k / FPS)
    step(tracker, [(box(100, 103), 0.9, 0), (box(500, 100), 0.9, 2)], 3 / FPS)  # and a new tentative one
    left = tracker.flush()
    assert [(i.track_id, i.label, i.last_seen) for i in left] == [(1, "circle", 3 / FPS), (2, "square", 2 / FPS)]
    assert tracker.flush() == []


def test_in_view_counts_confirmed_tracks_per_label():
    tracker = Tracker(min_hits=2)
    scene = [(box(100, 100), 0.9, 0), (box(300, 100), 0.9, 0), (box(500, 300), 0.9, 1)]
    assert step(tracker, scene, 0.0).in_view == {}
    assert step(tracker, scene, 1 / FPS).in_view == {"circle": 2, "square": 1}
    assert step(tracker, scene[1:], 2 / FPS).in_view == {"circle": 2, "square": 1}  # missed once: still counted


def test_a_timestamp_that_does_not_increase_is_a_tiny_step():
    tracker = Tracker(min_hits=1)
    step(tracker, [(box(100, 100), 0.9, 0)], 1.0)
    update = step(tracker, [(box(101, 100), 0.9, 0)], 0.5)
    assert ids(update) == {0: 1}
    assert all(np.isfinite(update.tracked[0].velocity))


def test_mota_on_a_rendered_clip_with_noisy_ground_truth_detections(tmp_path):
    video = write_clip(tmp_path / "c.mp4", seed=20261201, frames=150, shapes=8)
    data = json.loads(video.with_suffix(".json").read_text())
    rng = np.random.default_rng(3)
    tracker = Tracker()
    predicted, truth = {}, {}
    for frame in data["frames"]:
        gt = np.array(frame["boxes"], dtype=np.float64)
        kept = rng.random(len(gt)) >= 0.02  # a few missed detections
        boxes = gt[kept] + rng.normal(0, 1.0, size=(int(kept.sum()), 4))
        scores = rng.uniform(0.6, 0.95, size=len(boxes))
        update = tracker.update(boxes, scores, np.array(frame["class_ids"])[kept], data["labels"],
                                frame["frame_id"] / data["fps"])
        predicted[frame["frame_id"]] = [(t.track_id, boxes[t.detection_index]) for t in update.tracked]
        truth[frame["frame_id"]] = list(zip(frame["ids"], frame["boxes"]))
    result = clear_mot(predicted, truth)
    assert result["gt_tracks"] == len(data["frames"][0]["ids"]) >= 6
    assert result["id_switches"] == 0
    assert result["mota"] > 0.95, result


BOX_A = [10.0, 10.0, 50.0, 50.0]
BOX_B = [100.0, 100.0, 140.0, 160.0]
FAR = [300.0, 300.0, 320.0, 320.0]


def test_clear_mot_counts_an_id_switch_a_miss_and_a_false_positive():
    truth = {0: [(1, BOX_A), (2, BOX_B)], 1: [(1, BOX_A), (2, BOX_B)], 2: [(1, BOX_A), (2, BOX_B)], 3: [(1, BOX_A)]}
    predicted = {0: [(10, BOX_A), (20, BOX_B)],
                 1: [(30, BOX_A), (20, BOX_B)],  # object 1 switches from track 10 to 30
                 2: [(30, BOX_A), (20, FAR)],  # object 2 missed, a false positive far away
                 3: [(30, BOX_A)]}
    result = clear_mot(predicted, truth)
    # IDF1: object 1 is track 30's (3 of its 4 boxes), object 2 track 20's (2 of 3): 2 * 5 / (7 + 7)
    assert result == {"mota": pytest.approx(1 - 3 / 7), "idf1": pytest.approx(5 / 7), "fn": 1, "fp": 1,
                      "id_switches": 1, "gt": 7, "gt_tracks": 2, "matches": 5, "idtp": 5}  # matches: not switches


def test_clear_mot_keeps_the_previous_frames_match_while_it_is_valid():
    shifted = [14.0, 10.0, 54.0, 50.0]  # IoU 0.82 with BOX_A
    truth = {0: [(1, BOX_A)], 1: [(1, BOX_A)], 2: [(1, BOX_A)]}
    predicted = {0: [(10, shifted)], 1: [(10, shifted), (11, BOX_A)], 2: [(11, BOX_A)]}
    # Frame 1: track 10 still overlaps enough, so it keeps object 1 although 11 fits better (11: a false
    # positive); frame 2: only 11 is left, a switch.
    assert clear_mot(predicted, truth) == {"mota": pytest.approx(1 - 2 / 3), "idf1": pytest.approx(4 / 7), "fn": 0,
                                           "fp": 1, "id_switches": 1, "gt": 3, "gt_tracks": 1, "matches": 2,
                                           "idtp": 2}


def test_a_track_on_an_object_too_hidden_to_count_is_no_false_positive():
    truth = {0: [(1, BOX_A)], 1: [(1, BOX_A)]}
    hidden = {0: [BOX_B], 1: [BOX_B]}  # object 2, hidden: no miss when no track covers it
    predicted = {0: [(10, BOX_A), (20, BOX_B)], 1: [(10, BOX_A), (20, FAR)]}  # 20: on object 2, then astray
    result = clear_mot(predicted, truth, hidden)
    assert (result["fp"], result["fn"], result["matches"], result["gt"]) == (1, 0, 2, 2)


def test_a_track_on_an_object_is_not_taken_for_one_on_a_hidden_object_beside_it():
    """Objects and hidden ones are paired with the tracks together: a track that fits a counted object stays that
    object's match although it also overlaps a hidden one well."""
    behind = [12.0, 10.0, 52.0, 50.0]  # IoU 0.90 with BOX_A
    result = clear_mot({0: [(10, BOX_A)]}, {0: [(1, BOX_A)]}, {0: [behind]})
    assert (result["matches"], result["fn"], result["fp"]) == (1, 0, 0)
    result = clear_mot({0: [(10, BOX_A), (11, behind)]}, {0: [(1, BOX_A)]}, {0: [behind]})
    assert (result["matches"], result["fn"], result["fp"]) == (1, 0, 0)  # 11: on the hidden one, left out
