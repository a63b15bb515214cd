#!/usr/bin/env python3
"""What tracking costs a frame: ``Tracker.track`` (edged.tracking; what the pipeline calls: the association and
filter of ``update``, and the tracked detections built) with 10, 50 and 100 objects moving in a 1280x720 view.

Objects of 16 to 96 px move at up to 150 px/s at 30 fps and bounce off the edges; every frame 10 %
of them are missed, and 10 % of the rest come with a low score (0.15 to 0.45: the second
association stage). Detections get 1 px of noise. The frames are generated beforehand, so only
``track`` is timed, frame by frame; the first frames, before the tracks are confirmed, are left
out. The report gives the median and 99th percentile in microseconds, and the other load that ran
beside each run (rounds.py's meter: a busy machine slows the figures, and nothing is rejected here).

    python benchmarks/bench_tracker.py
    python benchmarks/bench_tracker.py --objects 50 --frames 5000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rounds import LoadMeter  # this folder is on sys.path when run as a script
from tqdm import tqdm

from edged.detections import Detection, DetectionResult
from edged.tracking import Tracker

WIDTH, HEIGHT, FPS = 1280, 720, 30.0
LABELS = ["circle", "square", "triangle"]
WARMUP_FRAMES = 10
Frame = tuple[DetectionResult, float]  # the frame's detections, ts


def scene(objects: int, frames: int, seed: int) -> list[Frame]:
    """Every frame's detections, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(16, 96, size=(objects, 2))
    centre = rng.uniform(size / 2, [WIDTH, HEIGHT] - size / 2)
    velocity = rng.uniform(-150, 150, size=(objects, 2))
    classes = rng.integers(len(LABELS), size=objects)
    out = []
    for k in range(frames):
        centre += velocity / FPS
        velocity = np.where(centre < size / 2, np.abs(velocity), velocity)  # bounce off the edges
        velocity = np.where(centre > [WIDTH, HEIGHT] - size / 2, -np.abs(velocity), velocity)
        seen = rng.random(objects) >= 0.1
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)[seen]
        boxes += rng.normal(0, 1.0, size=boxes.shape)
        scores = np.where(rng.random(len(boxes)) < 0.1, rng.uniform(0.15, 0.45, len(boxes)),
                          rng.uniform(0.5, 0.95, len(boxes)))
        detections = [Detection(LABELS[c], int(c), float(score), tuple(box))
                       for box, score, c in zip(boxes.tolist(), scores.tolist(), classes[seen].tolist())]
        out.append((DetectionResult(detections, WIDTH, HEIGHT), k / FPS))
    return out


def run(objects: int, frames: int, seed: int, bar: tqdm) -> dict[str, Any]:
    detections = scene(objects, frames, seed)
    tracker = Tracker()
    times_us, tracked = [], []
    with LoadMeter() as load:
        for result, ts in detections:
            started = time.perf_counter_ns()
            tracked_result = tracker.track(result, ts)
            times_us.append((time.perf_counter_ns() - started) / 1000)
            tracked.append(len(tracked_result.detections))
            bar.update()
    times = np.array(times_us[WARMUP_FRAMES:])
    return {"objects": objects, "frames": frames, "median_us": round(float(np.median(times)), 1),
            "p99_us": round(float(np.percentile(times, 99)), 1),
            "tracked_per_frame": round(float(np.mean(tracked[WARMUP_FRAMES:])), 1),
            "other_load_cores": round(load.other_cores, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="+", type=int, default=[10, 50, 100])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    with tqdm(total=args.frames * len(args.objects), desc="Tracker.track", unit="frame", disable=None) as bar:
        results = [run(n, args.frames, args.seed, bar) for n in args.objects]
    for r in results:
        print(f"{r['objects']:4d} objects, {r['frames']} frames: median {r['median_us']:.1f} us, "
              f"p99 {r['p99_us']:.1f} us a frame ({r['tracked_per_frame']:.1f} tracked detections a frame; "
              f"other load {r['other_load_cores']:.2f} cores)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
