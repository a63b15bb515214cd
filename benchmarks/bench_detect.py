#!/usr/bin/env python3
"""``edged detect`` throughput on a video against two bare loops, in interleaved rounds.

Same model, same session (providers and threads), same frames, one process:

- bare inference: ``session.run`` alone, on frames decoded and letterboxed beforehand (the
  ceiling: what ONNX Runtime does with the CPUs to itself);
- bare full: one thread doing a frame's whole work in series, without edged's pipeline:
  decode (OpenCV), letterbox, ``session.run``, postprocess (output decoding, NMS, boxes to
  source pixels);
- edged: ``edged detect`` end to end: its pipeline overlaps decoding and preprocessing,
  inference, and postprocessing plus JSON lines (to /dev/null) in three threads.

Each round runs the three in rotating order; rounds beside other load are rejected (see
rounds.py). The report is per round, then the median ratios over the accepted rounds, and
per-stage times. Exit status 1 when a model has no accepted round.

    python benchmarks/bench_detect.py                       # demo detector + YOLOv8n
    python benchmarks/bench_detect.py --models my.onnx --frames 300 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from edged.demo import demo_model_path
from edged.inference.detector import Detector
from edged.inference.session import SessionConfig
from edged.pipeline import Pipeline
from edged.sinks import JsonLinesSink
from edged.sources import open_source
from edged.synthetic import write_clip

from rounds import Case, add_options, report, run_rounds, summarize  # this folder is on sys.path when run as a script

YOLOV8N = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "yolov8n-640-random.onnx"
STAGES = ("decode", "preprocess", "inference", "postprocess")


def video_frames(video: Path) -> Iterator[np.ndarray]:
    """The video's frames, decoded one at a time."""
    capture = cv2.VideoCapture(str(video))
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                return
            yield image
    finally:
        capture.release()


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {stage: round(statistics.median(values), 2) for stage, values in times.items()}


def bare_inference(detector: Detector, blobs: list[np.ndarray]) -> dict[str, Any]:
    """Frames per second of session.run alone."""
    session, input_name, output = detector.session, detector.input_name, detector.output_name
    started = time.perf_counter()
    for blob in blobs:
        session.run([output], {input_name: blob})
    return {"fps": len(blobs) / (time.perf_counter() - started)}


def bare_full(detector: Detector, video: Path) -> dict[str, Any]:
    """Frames per second of decode, preprocess, inference and postprocess in series in one thread,
    and the median time of each: what edged's pipeline has to beat by overlapping them."""
    times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    frames = video_frames(video)
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        image = next(frames, None)
        if image is None:
            break
        times["decode"].append((time.perf_counter() - t0) * 1000)
        for stage, ms in detector.detect(image).timings_ms.items():
            times[stage].append(ms)
    return {"fps": len(times["decode"]) / (time.perf_counter() - started), "stage_ms": medians(times)}


def baseline_cases(detector: Detector, video: Path) -> dict[str, Case]:
    """The two bare loops on ``video`` with ``detector``'s session; the inference-only one gets its
    frames decoded and letterboxed now, outside any round."""
    blobs = [detector.preprocess(image)[0] for image in video_frames(video)]
    return {"bare_inference": lambda: bare_inference(detector, blobs), "bare_full": lambda: bare_full(detector, video)}


def edged_detect(detector: Detector, video: Path) -> dict[str, Any]:
    """Frames per second of the edged detect path, and the median time of its stages."""
    times: dict[str, list[float]] = {stage: [] for stage in STAGES[1:]}

    class Collect(JsonLinesSink):
        def write(self, message, frame, result):  # noqa: ANN001
            super().write(message, frame, result)
            for stage, values in times.items():
                values.append(message["latency_ms"][stage])

    with open(os.devnull, "w") as devnull, open_source(str(video)) as source:
        stats = Pipeline(detector, "bench", [Collect(devnull)], "bench").run(source)
    return {"fps": stats.fps, "stage_ms": medians(times)}


def bench_model(model: Path, video: Path, args: argparse.Namespace, bar: tqdm) -> dict[str, Any]:
    detector = Detector(model, SessionConfig(providers=tuple(args.providers), threads=args.threads))
    cases = baseline_cases(detector, video) | {"edged": lambda: edged_detect(detector, video)}
    rounds = run_rounds(cases, args.repeats, args.max_other_load, bar, model.name)
    summary = summarize(rounds, args.max_other_load)
    accepted = [r for r in rounds if r.accepted]
    if accepted:
        summary["stage_ms_median"] = {
            name: {stage: round(statistics.median(r.results[name]["stage_ms"][stage] for r in accepted), 2)
                   for stage in accepted[0].results[name]["stage_ms"]}
            for name in ("bare_full", "edged")}
    lines = report(rounds, summary)
    if accepted:
        lines.append("  stage medians (ms): " + "; ".join(
            f"{name.replace('_', ' ')}: " + ", ".join(f"{stage} {ms:.2f}" for stage, ms in stages.items())
            for name, stages in summary["stage_ms_median"].items()))
    return {"model": model.name, "provider": detector.provider, "input_size": list(detector.input_size),
            "frames": args.frames, "threads": args.threads, **summary,
            "report": lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, default=None,
                        help="ONNX models (default: the demo detector, and YOLOv8n from shared/ when present)")
    parser.add_argument("--frames", type=int, default=200)
    add_options(parser)
    parser.add_argument("--providers", nargs="+", default=["cpu"], help="provider preference (default: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: ONNX Runtime's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    models = args.models or [demo_model_path()] + ([YOLOV8N] if YOLOV8N.exists() else [])
    with tempfile.TemporaryDirectory() as tmp:
        video = write_clip(Path(tmp) / "bench.mp4", seed=99, frames=args.frames)
        with tqdm(total=3 * args.repeats * len(models), desc="benchmark", unit="run", disable=None) as bar:
            results = [bench_model(m, video, args, bar) for m in models]
    for r in results:
        print(f"\n{r['model']} ({r['provider']}, input {'x'.join(map(str, r['input_size']))}, "
              f"{r['frames']} frames, threads {r['threads']}):")
        print("\n".join(r.pop("report")))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["accepted"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
