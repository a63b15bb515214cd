"""Tracking quality on crowd clips (tests/tracking_scenes.py): ten seeds through the demo detector and the daemon's
tracker, scored with py-motmetrics; and what the crowd clips' ground truth holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edged.config import Config
from edged.evaluation import clear_mot
from edged.synthetic import CROWD_SHAPES, write_crowd_clip
from edged.tracking import Tracker
from tests.tracking_scenes import GOALS, SEEDS, Scene, default_detector, detect_scene, score_scene, total, track_scene

pytestmark = pytest.mark.slow

FRAMES = 100  # a sixth of the benchmark's clips: ten seeds in about 20 s on 2 cores
# Issue 15's goals for MOTA and IDF1 (GOALS) hold on these clips (as committed: MOTA 0.942, IDF1 0.951 over the ten
# seeds' 100 frames). Its switch goal (a switch per 20 tracks) does not: 0.20 a track as committed, so the bound
# on switches is a regression bound, with a margin for the detector's last digits on other CPUs
# (benchmarks/README.md, bench_tracking_quality.py, says where the switches come from).
SWITCHES_PER_TRACK = 0.25


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[Scene]:
    folder = tmp_path_factory.mktemp("crowd")
    detector = default_detector()
    return [detect_scene(folder, seed, FRAMES, detector) for seed in SEEDS]


def test_the_daemons_tracker_holds_identities_on_ten_crowd_clips(scenes: list[Scene]) -> None:
    scores = [score_scene(scene, Tracker.from_config(Config())) for scene in scenes]
    for seed, score in zip(SEEDS, scores):
        print(f"\nseed {seed}: MOTA {score['mota']:.3f} IDF1 {score['idf1']:.3f} {score['id_switches']} switches, "
              f"{score['gt_tracks']} tracks")
    overall = total(scores)
    print(f"all: MOTA {overall['mota']:.4f} IDF1 {overall['idf1']:.4f} {overall['id_switches']} switches, "
          f"{overall['gt_tracks']} tracks")
    assert len(scores) >= 10 and overall["gt_tracks"] >= 10 * CROWD_SHAPES[0]
    assert overall["mota"] >= GOALS["mota"], overall
    assert overall["idf1"] >= GOALS["idf1"], overall
    assert overall["id_switches"] <= SWITCHES_PER_TRACK * overall["gt_tracks"], overall


def test_total_is_the_score_of_the_clips_together(scenes: list[Scene]) -> None:
    """``total`` adds the seeds up as one evaluation of all of them would: the same MOTA and IDF1."""
    scores = [score_scene(scene, Tracker.from_config(Config())) for scene in scenes[:2]]
    a, b = scenes[:2]
    offset = max(a.truth.objects) + 1
    ids = 10**6  # the second clip's object and track ids apart from the first's
    predicted = track_scene(a, Tracker.from_config(Config()))
    predicted.update({offset + f: [(ids + t, box) for t, box in tracks]
                      for f, tracks in track_scene(b, Tracker.from_config(Config())).items()})
    truth = dict(a.truth.objects) | {offset + f: [(ids + o, box) for o, box in objects]
                                     for f, objects in b.truth.objects.items()}
    hidden = dict(a.truth.hidden) | {offset + f: boxes for f, boxes in b.truth.hidden.items()}
    together = clear_mot(predicted, truth, hidden)
    summed = total(scores)
    assert summed["mota"] == pytest.approx(together["mota"], abs=1e-9)
    assert summed["idf1"] == pytest.approx(together["idf1"], abs=1e-9)
    assert summed["id_switches"] == together["id_switches"]


def test_crowd_clips_ground_truth(tmp_path: Path) -> None:
    clip = write_crowd_clip(tmp_path / "crowd.mp4", seed=7, frames=300)
    frames = json.loads(clip.with_suffix(".json").read_text())["frames"]
    counts = {len(f["ids"]) for f in frames}
    assert len(counts) == 1 and CROWD_SHAPES[0] <= counts.pop() <= CROWD_SHAPES[1]  # one shape replaces another
    visibility = np.array([v for f in frames for v in f["visibility"]])
    assert ((0 <= visibility) & (visibility <= 1)).all()
    assert 0.01 < (visibility < 0.5).mean() < 0.2, "shapes hide each other, now and then"
    ids = [set(f["ids"]) for f in frames]
    assert len(set().union(*ids)) > len(ids[0]), "shapes leave and others enter, with new ids"
    for f in frames:
        boxes = np.array(f["boxes"])
        assert len(f["ids"]) == len(set(f["ids"])) == len(f["class_ids"]) == len(boxes)
        assert ((boxes[:, :2] >= 0) & (boxes[:, 2:] <= [640, 480])).all()
    # The same seed, the same clip.
    again = write_crowd_clip(tmp_path / "again.mp4", seed=7, frames=300)
    assert again.with_suffix(".json").read_text() == clip.with_suffix(".json").read_text()
