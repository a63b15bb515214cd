"""Tracking quality on crowd clips: rendered clips with ground-truth identities (``edged.synthetic.write_crowd_clip``),
the demo detector's detections on them, and the daemon's tracker scored with CLEAR MOT and IDF1 (py-motmetrics).
Shared by tests/test_tracking_quality.py and benchmarks/bench_tracking_quality.py.

A scene's detections are what the daemon's detector reports with tracking on (down to ``tracking.low``), so the
tracker can be run again on them, with other settings, without running the detector again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from edged.config import Config
from edged.daemon import make_detector
from edged.evaluation import MIN_VISIBILITY, TrackBox, TrackTruth, clear_mot, load_track_truth
from edged.detections import Detection, DetectionResult
from edged.inference.detector import Detector
from edged.synthetic import write_crowd_clip
from edged.tracking import Tracker

SEEDS = tuple(range(1501, 1511))  # ten crowd clips, 30 to 50 shapes each
GOALS = {"switches_per_track": 1 / 20, "idf1": 0.90, "mota": 0.90}  # issue 15's targets, over all seeds


@dataclass
class Scene:
    seed: int
    fps: float
    truth: TrackTruth
    frames: list[DetectionResult]  # the detector's, frame by frame

    def save(self, path: Path) -> None:
        """The detections as JSON (the truth stays in the clip's own file)."""
        path.write_text(json.dumps({"seed": self.seed, "fps": self.fps, "frames": [
            [[d.label, d.class_id, d.score, list(d.box)] for d in r.detections] + [[r.width, r.height]]
            for r in self.frames]}))

    @classmethod
    def load(cls, path: Path, truth: TrackTruth) -> Scene:
        data = json.loads(path.read_text())
        frames = [DetectionResult([Detection(label, class_id, score, tuple(box)) for label, class_id, score, box
                                   in frame[:-1]], *frame[-1]) for frame in data["frames"]]
        return cls(data["seed"], data["fps"], truth, frames)


def default_detector(input_size: int | None = None, model: Path | None = None) -> Detector:
    """The detector the daemon makes from its default config with tracking on (reporting down to ``tracking.low``),
    on the CPU: the demo model, or ``model``; at ``input_size`` (square), else the model's own."""
    config = Config.model_validate({"model": {"path": str(model) if model else None, "input_size": input_size},
                                    "inference": {"providers": ["cpu"]}})
    return make_detector(config)


def detect_scene(folder: Path, seed: int, frames: int, detector: Detector,
                 progress: Callable[[], None] | None = None) -> Scene:
    """Render the crowd clip of ``seed`` into ``folder`` (once: a clip and its detections by the same model file at
    the same input size already there are reused) and detect in every frame."""
    clip = folder / f"crowd-{seed}-{frames}.mp4"
    model = hashlib.sha256(detector.path.read_bytes()).hexdigest()[:12]
    detected = clip.with_suffix(f".detections-{model}-{detector.input_size[0]}.json")
    if not clip.exists():
        write_crowd_clip(clip, seed, frames)
    truth = load_track_truth(clip.with_suffix(".json"), MIN_VISIBILITY)
    if detected.exists():
        return Scene.load(detected, truth)
    capture = cv2.VideoCapture(str(clip))
    results = []
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            results.append(detector.detect(image))
            if progress:
                progress()
    finally:
        capture.release()
    fps = json.loads(clip.with_suffix(".json").read_text())["fps"]
    scene = Scene(seed, fps, truth, results)
    scene.save(detected)
    return scene


def track_scene(scene: Scene, tracker: Tracker) -> dict[int, list[TrackBox]]:
    """What the daemon publishes for each frame, as the pipeline tracks (capture time from the frame rate)."""
    predicted = {}
    for frame_id, result in enumerate(scene.frames):
        tracked = tracker.track(result, frame_id / scene.fps)
        predicted[frame_id] = [(d.track_id, d.box) for d in tracked.detections]
    return predicted


def score_scene(scene: Scene, tracker: Tracker) -> dict[str, Any]:
    return clear_mot(track_scene(scene, tracker), scene.truth.objects, scene.truth.hidden)


def total(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """The seeds' scores together, as one evaluation of all the clips would give them: counts summed, and MOTA and
    IDF1 (2 IDTP / (ground truth + predictions)) from the sums."""
    counts = {key: sum(s[key] for s in scores)
              for key in ("id_switches", "fn", "fp", "gt", "gt_tracks", "matches", "idtp")}
    predictions = counts["matches"] + counts["id_switches"] + counts["fp"]  # motmetrics counts a switch apart
    return {"mota": 1 - (counts["fn"] + counts["fp"] + counts["id_switches"]) / counts["gt"],
            "idf1": 2 * counts["idtp"] / (counts["gt"] + predictions), **counts}


def meets_goals(score: dict[str, Any]) -> bool:
    return (score["id_switches"] <= GOALS["switches_per_track"] * score["gt_tracks"]
            and score["idf1"] >= GOALS["idf1"] and score["mota"] >= GOALS["mota"])
