#!/usr/bin/env python3
"""What tracking and snapshots cost the pipeline's throughput, measured finely enough to see 2 %.

This host's speed drifts by up to 25 % from one run of the daemon to the next (bench_snapshots.py), so whole runs
cannot compare within 2 %, and even pipelines started and stopped in turn in one process differ by several per
cent a block (thread start, the inference pool waking). So here one pipeline runs without a break, files'
frame-by-frame path with its three overlapping stages, over the decoded frames of a rendered clip repeated block
after block, and the blocks alternate between two modes (ABBA order, so neither always goes first):

- plain, as with ``tracking.enabled: false``: the detections at ``model.confidence``, no tracker;
- tracked: the detections down to ``tracking.low`` (``detection_floor``), the daemon's tracker, and its objects sink
  (counts, object events, snapshots at the default ``interval_s``, JPEGs encoded in the encoder thread) publishing
  into a real MQTT client's outbox (not connected: nothing leaves the process).

Both modes share one detector (one ONNX Runtime session: two sessions of one model can differ in speed by a few
per cent, which would show up as the cost measured), which reports down to ``tracking.low``; the plain blocks drop
what lies below ``model.confidence``, which gives what the detector at that threshold reports (NMS keeps a box
above it or not whatever the lower ones are). That leaves out of the figure what decoding and NMS of the extra
low-score candidates cost (the accounting below measures it: microseconds a frame). A block's time runs from the
publish of the previous block's last frame to that of its own. The report: tracked over plain throughput over all
blocks (the daemon/bare ratio with tracking on over the same ratio with it off: the bare loop is the same for
both), a bootstrap 95 % interval over the pairs of blocks, the process's CPU time a frame in each mode, and the
tracker's and objects sink's own CPU time a frame.

Then an accounting, on the same frames, one stage after another in this thread (no other thread running): the CPU
time a frame of what tracking adds (decoding and NMS down to ``tracking.low`` instead of ``model.confidence``, the
tracker, the larger detections message, the objects sink) as a share of the plain pipeline's process CPU time a
frame above. With a core to spare beside inference that CPU costs no throughput; with inference on every core the
throughput lost comes out at about twice this share, as the tracker then displaces an inference thread and the
other waits for it (benchmarks/README.md).

    python benchmarks/bench_tracking_cost.py [--pairs 60] [--frames 60] [--threads 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rounds import LoadMeter  # this folder is on sys.path when run as a script
from tqdm import tqdm

from edged.config import Config, MqttSettings, validate
from edged.dashboards import SnapshotEncoder, StreamObjects
from edged.demo import demo_model_path
from edged.detections import DetectionResult
from edged.inference.detector import Detector
from edged.inference.session import SessionConfig
from edged.messages import detections_message, model_descriptor
from edged.mqtt import MqttClient
from edged.pipeline import Pipeline
from edged.sources import Frame, open_source
from edged.synthetic import write_clip
from edged.tracking import Tracker, detection_floor

MODES = ("plain", "tracked")
ACCOUNTING_REPEATS = 5  # passes over the clip's frames in the accounting


class TrackedBlocks:
    """The pipeline's tracker: tracks the frames of tracked blocks (known by their timestamps), gives the others the
    detections from ``confidence`` up as a pipeline without a tracker would have them, and sums the tracker's CPU
    time."""

    def __init__(self, tracker: Tracker, confidence: float):
        self.tracker, self.confidence = tracker, confidence
        self.timestamps: set[float] = set()
        self.cpu_ns = 0

    def track(self, result: DetectionResult, ts: float) -> DetectionResult:
        if ts not in self.timestamps:
            return replace(result, detections=[d for d in result.detections if d.score >= self.confidence])
        started = time.thread_time_ns()
        result = self.tracker.track(result, ts)
        self.cpu_ns += time.thread_time_ns() - started
        return result


class Clock:
    """A sink that notes when each frame was published, and the process's CPU time then; and the CPU time of the
    objects sink it wraps (which does nothing for frames without tracks)."""

    def __init__(self, objects: StreamObjects):
        self.objects = objects
        self.published: dict[int, tuple[float, float]] = {}  # frame_id -> (perf_counter, process_time)
        self.objects_cpu_ns = 0

    def write(self, message: dict[str, Any], frame: Frame, result: DetectionResult) -> None:
        started = time.thread_time_ns()
        self.objects.write(message, frame, result)
        self.objects_cpu_ns += time.thread_time_ns() - started
        self.published[frame.frame_id] = (time.perf_counter(), time.process_time())

    def close(self) -> None:
        self.objects.close()


def schedule(pairs: int) -> list[str]:
    """A warm-up block of each mode, then ABBA: each pair of blocks is one of each mode, in alternating order."""
    blocks = list(MODES)
    for index in range(pairs):
        blocks += MODES if index % 2 == 0 else MODES[::-1]
    return blocks


def accounting(images: list[np.ndarray], detector: Detector, config: Config, outbox: MqttClient,
               encoder: SnapshotEncoder) -> dict[str, float]:
    """Microseconds of this thread's CPU a frame: what tracking adds to each step of publishing a frame."""
    confidence, low = config.model.confidence, config.tracking.low
    inferred = []
    for image in images:
        tensor, transform = detector.preprocess(image)
        inferred.append((detector.infer(tensor), transform))
    model = model_descriptor(detector)
    tracker = Tracker.from_config(config)
    objects = StreamObjects("bench", tracker, config, lambda: outbox, lambda *a, **k: None, encoder)
    spent = {"decode_nms": 0, "tracker": 0, "message": 0, "objects_sink": 0}
    start = time.time()
    for repeat in range(ACCOUNTING_REPEATS):
        for index, (output, transform) in enumerate(inferred):
            frame = Frame(index, images[index], start + (repeat * len(images) + index) / 30)
            timings = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
            steps, results = {}, {}
            thresholds = (confidence, detection_floor(confidence, low))
            for threshold in thresholds if index % 2 else thresholds[::-1]:  # neither always runs on a warm cache
                detector.set_thresholds(threshold, detector.iou, None)
                started = time.thread_time_ns()
                detections = detector.postprocess(output, transform)
                steps[threshold] = time.thread_time_ns() - started
                results[threshold] = DetectionResult(detections, transform.source_width, transform.source_height,
                                                     timings)
            spent["decode_nms"] += steps[thresholds[1]] - steps[thresholds[0]]
            result = results[thresholds[1]]
            plain = replace(result, detections=[d for d in result.detections if d.score >= confidence])
            started = time.thread_time_ns()
            detections_message("bench", "bench", index, frame, plain, model)
            plain_message = time.thread_time_ns() - started
            started = time.thread_time_ns()
            tracked = tracker.track(result, frame.ts_scene)
            spent["tracker"] += time.thread_time_ns() - started
            started = time.thread_time_ns()
            message = detections_message("bench", "bench", index, frame, tracked, model)
            spent["message"] += time.thread_time_ns() - started - plain_message
            started = time.thread_time_ns()
            objects.write(message, frame, tracked)
            spent["objects_sink"] += time.thread_time_ns() - started
    return {name: ns / (ACCOUNTING_REPEATS * len(images)) / 1000 for name, ns in spent.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=60, help="pairs of blocks, one of each mode (default 60)")
    parser.add_argument("--frames", type=int, default=60, help="frames a block (default 60)")
    parser.add_argument("--threads", type=int, default=0,
                        help="inference threads (model.threads; default 0: one a core, as the daemon's default)")
    parser.add_argument("--seed", type=int, default=0, help="of the bootstrap")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    config: Config = validate({"streams": [{"name": "bench", "source": "bench.mp4"}]}, "bench")
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "bench.mp4", seed=99, frames=args.frames)
        with open_source(str(clip)) as source:
            images = [frame.image for frame in source]
    session = SessionConfig(providers=("cpu",), threads=args.threads)
    confidence, low = config.model.confidence, config.tracking.low
    detector = Detector(demo_model_path(), session, confidence=detection_floor(confidence, low))
    outbox = MqttClient(MqttSettings(queue_limit=1000), "bench", announce=False)  # never started: an outbox
    encoder = SnapshotEncoder(lambda: outbox)
    tracker = Tracker.from_config(config)
    tracked_blocks = TrackedBlocks(tracker, confidence)
    clock = Clock(StreamObjects("bench", tracker, config, lambda: outbox, lambda *a, **k: None, encoder))
    pipeline = Pipeline(detector, "bench", [clock], "bench", tracker=tracked_blocks)  # type: ignore[arg-type]
    blocks = schedule(args.pairs)
    frames = len(images)

    def source(bar: tqdm) -> Iterator[Frame]:
        start = time.time()
        for block, mode in enumerate(blocks):
            for index, image in enumerate(images):
                frame_id = block * frames + index
                ts = start + frame_id / 30
                if mode == "tracked":
                    tracked_blocks.timestamps.add(ts)
                yield Frame(frame_id, image, ts)
            bar.update()

    with tqdm(total=len(blocks), desc="blocks", disable=None) as bar, LoadMeter() as load:
        pipeline.run(source(bar))
    extra = accounting(images, detector, config, outbox, encoder)
    encoder.stop()

    ends = [clock.published[(block + 1) * frames - 1] for block in range(len(blocks))]
    measured = {mode: [] for mode in MODES}  # per block after the warm-up: (seconds, cpu seconds)
    for block in range(len(MODES), len(blocks)):
        measured[blocks[block]].append((ends[block][0] - ends[block - 1][0], ends[block][1] - ends[block - 1][1]))
    seconds = {mode: np.array([s for s, _ in measured[mode]]) for mode in MODES}
    cpu = {mode: np.array([c for _, c in measured[mode]]) for mode in MODES}
    ratio = seconds["plain"].sum() / seconds["tracked"].sum()  # tracked fps over plain fps, same frames each
    rng = np.random.default_rng(args.seed)
    picks = rng.integers(args.pairs, size=(2000, args.pairs))
    bootstrap = seconds["plain"][picks].sum(axis=1) / seconds["tracked"][picks].sum(axis=1)
    low_ci, high_ci = np.percentile(bootstrap, [2.5, 97.5])
    tracked_frames = args.pairs * frames
    result = {"pairs": args.pairs, "frames_per_block": frames, "ratio": round(float(ratio), 4),
              "ratio_ci95": [round(float(low_ci), 4), round(float(high_ci), 4)],
              "fps_plain": round(float(args.pairs * frames / seconds["plain"].sum()), 1),
              "fps_tracked": round(float(tracked_frames / seconds["tracked"].sum()), 1),
              "cpu_ms_per_frame": {mode: round(float(cpu[mode].sum() / (args.pairs * frames) * 1000), 2)
                                   for mode in MODES},
              # the warm-up block's frames tracked too: divide by every tracked frame
              "tracker_us_per_frame": round(tracked_blocks.cpu_ns / (tracked_frames + frames) / 1000, 1),
              "objects_sink_us_per_frame": round(clock.objects_cpu_ns / (tracked_frames + frames) / 1000, 1),
              "snapshots_encoded": encoder.encoded, "other_load_cores": round(load.other_cores, 2),
              "accounting_us_per_frame": {name: round(us, 1) for name, us in extra.items()}}
    share = sum(extra.values()) / (result["cpu_ms_per_frame"]["plain"] * 1000)
    result["accounting_share"] = round(share, 4)
    print(f"tracked / plain throughput: {ratio:.4f} (95 % interval {low_ci:.4f} to {high_ci:.4f}) over {args.pairs} "
          f"pairs of {frames}-frame blocks; plain {result['fps_plain']} fps, tracked {result['fps_tracked']} fps")
    print(f"CPU time a frame (process): plain {result['cpu_ms_per_frame']['plain']} ms, tracked "
          f"{result['cpu_ms_per_frame']['tracked']} ms; tracker {result['tracker_us_per_frame']} us, objects sink "
          f"{result['objects_sink_us_per_frame']} us; {encoder.encoded} snapshots encoded; other load "
          f"{result['other_load_cores']} cores")
    print("what tracking adds a frame, one step after another in one thread: "
          + ", ".join(f"{name} {us:.1f} us" for name, us in extra.items())
          + f"; {sum(extra.values()):.0f} us in all, {share:.2%} of the plain pipeline's CPU time a frame")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
