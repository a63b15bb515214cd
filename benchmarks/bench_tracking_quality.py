#!/usr/bin/env python3
"""Tracking quality: the daemon's tracker on crowd clips, scored with CLEAR MOT and IDF1 (py-motmetrics).

Each seed renders a 640x480 crowd clip (``edged.synthetic.write_crowd_clip``: 30 to 50 shapes of 16 to 96 px
that cross, hide each other, change size, speed and direction, and leave and enter), runs the demo detector on
every frame as the daemon does with tracking on (reporting down to ``tracking.low``; at the model's input size
unless ``--input-size``), tracks with the daemon's default settings (``Tracker.from_config``),
and scores the tracks against the clip's ground-truth identities. Objects less than half visible are left out,
and so are the tracks on them (``edged.evaluation.MIN_VISIBILITY``). Prints MOTA, IDF1, identity switches,
misses and false positives per seed and over all seeds, against issue 15's goals.

    python benchmarks/bench_tracking_quality.py                          # 10 seeds, 600 frames
    python benchmarks/bench_tracking_quality.py --cache runs/crowd       # keep clips and detections
    python benchmarks/bench_tracking_quality.py --seeds 3 --frames 300 --json out.json

With ``--cache DIR`` the clips and the detector's output stay there, and a later run with the same seeds,
frames and input size only tracks and scores again: a change to the tracker is measured in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edged.config import Config  # noqa: E402
from edged.tracking import Tracker  # noqa: E402
from tests.tracking_scenes import (GOALS, SEEDS, default_detector, detect_scene, meets_goals,  # noqa: E402
                                   score_scene, total)

COLUMNS = ("MOTA", "IDF1", "ID sw.", "tracks", "sw./track", "misses", "false pos.", "boxes")


def row(name: str, score: dict[str, Any]) -> str:
    values = (f"{score['mota']:.3f}", f"{score['idf1']:.3f}", str(score["id_switches"]), str(score["gt_tracks"]),
              f"{score['id_switches'] / score['gt_tracks']:.2f}", str(score["fn"]), str(score["fp"]),
              str(score["gt"]))
    return f"| {name} | " + " | ".join(values) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help=f"how many seeds, from {SEEDS[0]} on")
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--input-size", type=int, default=None,
                        help="the detector's input (square; default: the model's own, as the daemon)")
    parser.add_argument("--model", type=Path, default=None, help="another detector than the bundled demo one")
    parser.add_argument("--cache", type=Path, default=None, help="keep clips and detections here, and reuse them")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    seeds = range(SEEDS[0], SEEDS[0] + args.seeds)
    detector = default_detector(args.input_size, args.model)
    scores = []
    with tempfile.TemporaryDirectory() as tmp, \
            tqdm(total=args.seeds * args.frames, unit="frame", desc="detecting", disable=None) as bar:
        folder = args.cache or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for done, seed in enumerate(seeds, 1):
            bar.set_postfix_str(f"seed {seed}")
            scene = detect_scene(folder, seed, args.frames, detector, progress=bar.update)
            bar.update(done * args.frames - bar.n)  # a cached scene's frames
            scores.append(score_scene(scene, Tracker.from_config(Config())))
    overall = total(scores)
    size = "x".join(map(str, detector.input_size))
    print(f"\nCrowd clips, {args.frames} frames each, {detector.path.name} at {size}, the "
          f"daemon's tracker (default settings); objects under half visible left out:\n")
    print("| seed | " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * (len(COLUMNS) + 1))
    for seed, score in zip(seeds, scores):
        print(row(str(seed), score))
    print(row("**all**", overall))
    switches_goal = GOALS["switches_per_track"] * overall["gt_tracks"]
    print(f"\ngoals over all seeds: MOTA >= {GOALS['mota']} ({overall['mota']:.3f}), IDF1 >= {GOALS['idf1']} "
          f"({overall['idf1']:.3f}), ID switches <= {switches_goal:.0f} ({overall['id_switches']}): "
          f"{'met' if meets_goals(overall) else 'NOT MET'}")
    if args.json:
        args.json.write_text(json.dumps({"frames": args.frames, "input_size": list(detector.input_size),
                                         "seeds": dict(zip(map(str, seeds), scores)), "total": overall}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
