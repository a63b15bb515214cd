#!/usr/bin/env python3
"""What tracking and snapshots cost the pipeline's throughput, measured finely enough to see 2 %.

This host's speed drifts by up to 25 % from one run of the daemon to the next (bench_snapshots.py), so
whole runs cannot compare within 2 %. Here one process holds both pipelines and runs them in short
alternating blocks (the same decoded frames of a rendered clip, files' frame-by-frame path with its three
overlapping stages): "plain", as with ``tracking.enabled: false``, and "tracked", with the daemon's tracker
and its objects sink (counts, object events, snapshots at the default ``interval_s`` encoded in the encoder
thread) publishing into a real MQTT client's outbox (not connected: nothing leaves the process). Each pair of
neighbouring blocks gives a ratio, tracked over plain; the report is their median and quartiles. Drift
slower than a block cancels out.

    python benchmarks/bench_tracking_cost.py [--blocks 20] [--frames 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edged.config import Config, MqttSettings, validate
from edged.dashboards import SnapshotEncoder, StreamObjects
from edged.demo import demo_model_path
from edged.inference.detector import Detector
from edged.inference.session import SessionConfig
from edged.mqtt import MqttClient
from edged.pipeline import Pipeline
from edged.sources import open_source
from edged.synthetic import write_clip
from edged.tracking import Tracker, detection_floor


class Discard:
    def write(self, message: dict[str, Any], frame: Any, result: Any) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=20, help="blocks of each pipeline, alternating (default 20)")
    parser.add_argument("--frames", type=int, default=60, help="frames a block (default 60)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    config: Config = validate({"streams": [{"name": "bench", "source": "bench.mp4"}]}, "bench")
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "bench.mp4", seed=99, frames=args.frames)
        with open_source(str(clip)) as source:
            frames = list(source)
    session = SessionConfig(providers=("cpu",))
    confidence, low = config.model.confidence, config.tracking.low
    plain_detector = Detector(demo_model_path(), session, confidence=confidence)
    tracked_detector = Detector(demo_model_path(), session, confidence=detection_floor(confidence, low))
    outbox = MqttClient(MqttSettings(queue_limit=1000), "bench", announce=False)  # never started: an outbox
    encoder = SnapshotEncoder(lambda: outbox)
    seq = {"plain": 0, "tracked": 0}
    next_id = 1

    def run(kind: str) -> float:
        nonlocal next_id
        start_ts = time.time()
        block = [type(f)(f.frame_id, f.image, start_ts + i / 30, ts_media=None) for i, f in enumerate(frames)]
        if kind == "plain":
            pipeline = Pipeline(plain_detector, "bench", [Discard()], "bench", seq[kind])
        else:
            tracker = Tracker(min_hits=config.tracking.min_hits, max_age=config.tracking.max_age, high=confidence,
                              low=low, first_id=next_id)
            objects = StreamObjects("bench", tracker, config, lambda: outbox, lambda *a, **k: None, encoder)
            pipeline = Pipeline(tracked_detector, "bench", [Discard(), objects], "bench", seq[kind], tracker)
        stats = pipeline.run(block)
        seq[kind] = pipeline.seq
        if kind == "tracked":
            next_id = pipeline.tracker.next_id  # type: ignore[union-attr]
        return stats.fps

    run("plain"), run("tracked")  # warm-up
    fps: dict[str, list[float]] = {"plain": [], "tracked": []}
    for index in tqdm(range(args.blocks), desc="blocks", disable=None):
        order = ("plain", "tracked") if index % 2 == 0 else ("tracked", "plain")
        for kind in order:
            fps[kind].append(run(kind))
    encoder.stop()
    ratios = np.array(fps["tracked"]) / np.array(fps["plain"])
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    result = {"blocks": args.blocks, "frames_per_block": args.frames, "snapshots_encoded": encoder.encoded,
              "fps_plain_median": round(statistics.median(fps["plain"]), 1),
              "fps_tracked_median": round(statistics.median(fps["tracked"]), 1),
              "ratio_median": round(float(median), 4), "ratio_q1": round(float(q1), 4),
              "ratio_q3": round(float(q3), 4)}
    print(f"tracked / plain throughput: median {median:.3f} (quartiles {q1:.3f} to {q3:.3f}) over {args.blocks} pairs "
          f"of {args.frames}-frame blocks; plain {result['fps_plain_median']} fps, tracked "
          f"{result['fps_tracked_median']} fps; {encoder.encoded} snapshots encoded")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
