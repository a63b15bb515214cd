#!/usr/bin/env python3
"""``edged detect`` throughput on a video against a bare ``session.run`` loop.

Same model, same session (providers and threads), same frames, one process. The bare
loop runs inference alone on frames decoded and letterboxed beforehand; the pipeline
decodes the video, preprocesses, infers, postprocesses and writes JSON lines (to
/dev/null). Runs alternate (bare, pipeline, bare, ...) so that drift on a shared
machine hits both; the report is the ratio of the medians, with per-stage times.

    python benchmarks/bench_detect.py                       # demo detector + YOLOv8n
    python benchmarks/bench_detect.py --models my.onnx --frames 300 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from edged.demo import demo_model_path
from edged.inference.detector import Detector
from edged.inference.session import SessionConfig
from edged.pipeline import Pipeline
from edged.sinks import JsonLinesSink
from edged.sources import open_source
from edged.synthetic import write_clip

YOLOV8N = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "yolov8n-640-random.onnx"


def decode_all(video: Path) -> tuple[list, float]:
    """Every frame of the video, and the decode time per frame (ms)."""
    capture = cv2.VideoCapture(str(video))
    frames = []
    started = time.perf_counter()
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    return frames, (time.perf_counter() - started) * 1000 / max(len(frames), 1)


def bare_loop(detector: Detector, blobs: list) -> float:
    """Frames per second of session.run alone."""
    session, feeds_name, out = detector.session, detector.input_name, detector.output_name
    started = time.perf_counter()
    for blob in blobs:
        session.run([out], {feeds_name: blob})
    return len(blobs) / (time.perf_counter() - started)


def pipeline_run(detector: Detector, video: Path) -> tuple[float, list[dict]]:
    """Frames per second of the edged detect path, and its messages."""
    messages: list[dict] = []

    class Collect(JsonLinesSink):
        def write(self, message, frame, result):  # noqa: ANN001
            super().write(message, frame, result)
            messages.append(message)

    with open(os.devnull, "w") as devnull, open_source(str(video)) as source:
        stats = Pipeline(detector, "bench", [Collect(devnull)], "bench").run(source)
    return stats.fps, messages


def bench_model(model: Path, video: Path, providers: list[str], threads: int, repeats: int, bar: tqdm) -> dict:
    detector = Detector(model, SessionConfig(providers=tuple(providers), threads=threads))
    frames, decode_ms = decode_all(video)
    blobs = [detector.preprocess(image)[0] for image in frames]
    bare, piped, stages = [], [], {"preprocess": [], "inference": [], "postprocess": []}
    for _ in range(repeats):
        bare.append(bare_loop(detector, blobs))
        bar.update()
        fps, messages = pipeline_run(detector, video)
        piped.append(fps)
        for key in stages:
            stages[key].extend(m["latency_ms"][key] for m in messages)
        bar.update()
    bare_fps, pipe_fps = statistics.median(bare), statistics.median(piped)
    return {
        "model": model.name, "provider": detector.provider, "frames": len(frames), "threads": threads, "repeats": repeats,
        "input_size": list(detector.input_size),
        "bare_fps": round(bare_fps, 2), "pipeline_fps": round(pipe_fps, 2), "ratio": round(pipe_fps / bare_fps, 3),
        "stage_ms_median": {"decode": round(decode_ms, 2),
                            **{k: round(statistics.median(v), 2) for k, v in stages.items()}},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, default=None,
                        help="ONNX models (default: the demo detector, and YOLOv8n from shared/ when present)")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--providers", nargs="+", default=["cpu"], help="provider preference (default: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: ONNX Runtime's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    models = args.models or [demo_model_path()] + ([YOLOV8N] if YOLOV8N.exists() else [])
    with tempfile.TemporaryDirectory() as tmp:
        video = write_clip(Path(tmp) / "bench.mp4", seed=99, frames=args.frames)
        with tqdm(total=2 * args.repeats * len(models), desc="benchmark", unit="run", disable=None) as bar:
            results = [bench_model(m, video, args.providers, args.threads, args.repeats, bar) for m in models]
    print(f"\n{'model':28} {'provider':>8} {'input':>9} {'bare fps':>9} {'edged fps':>9} {'ratio':>6}   "
          f"{'decode':>6} {'pre':>6} {'infer':>6} {'post':>6}  (ms, median)")
    for r in results:
        s = r["stage_ms_median"]
        print(f"{r['model']:28} {r['provider']:>8} {'x'.join(map(str, r['input_size'])):>9} {r['bare_fps']:9.1f} {r['pipeline_fps']:9.1f} "
              f"{r['ratio']:6.3f}   {s['decode']:6.2f} {s['preprocess']:6.2f} {s['inference']:6.2f} {s['postprocess']:6.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
