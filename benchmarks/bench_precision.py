#!/usr/bin/env python3
"""What the int8 rung saves: a model's int8 variant's throughput over its fp32's, in interleaved rounds.

Bare ``session.run`` on the same letterboxed frames, same provider and threads, one process. Each
case is a block of runs, after one untimed run: ONNX Runtime's pool threads spin for a while after
a run, and alternating the sessions run by run let one session's spinning threads steal the cores
from the other. Rounds rotate the order and are rejected when other load ran beside them
(rounds.py). The report is per round, then the median int8 / fp32 ratio of the accepted rounds.

The int8 variant is ``NAME.int8.onnx`` beside the model when it is there (the demo ships one), else
it is made now with ``edged model optimize``'s settings, calibrated on a sample clip.

    python benchmarks/bench_precision.py                 # demo detector + YOLOv8n from shared/
    python benchmarks/bench_precision.py --models my.onnx --repeats 9 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edged.demo import demo_model_path
from edged.inference.detector import Detector, variant_path
from edged.inference.session import SessionConfig
from edged.optimize import quantize_int8
from edged.synthetic import write_clip

from bench_detect import YOLOV8N, video_frames  # this folder is on sys.path when run as a script
from rounds import Case, add_options, over, report, run_rounds, summarize

CALIBRATION_FRAMES = 100


def timed_runs(detector: Detector, blobs: list[np.ndarray], passes: int) -> dict[str, Any]:
    """Frames per second of ``session.run`` over ``blobs``, ``passes`` times, after one untimed run."""
    session, input_name, output = detector.session, detector.input_name, detector.output_name
    session.run([output], {input_name: blobs[0]})
    started = time.perf_counter()
    for _ in range(passes):
        for blob in blobs:
            session.run([output], {input_name: blob})
    return {"fps": passes * len(blobs) / (time.perf_counter() - started)}


def int8_variant(model: Path, clip: Path, tmp: Path) -> Path:
    shipped = variant_path(model, "int8")
    if shipped.is_file():
        return shipped
    return quantize_int8(model, clip, tmp / f"{model.stem}.int8.onnx", frames=CALIBRATION_FRAMES)


def bench_model(model: Path, clip: Path, tmp: Path, args: argparse.Namespace, bar: tqdm) -> dict[str, Any]:
    config = SessionConfig(providers=tuple(args.providers), threads=args.threads)
    int8 = int8_variant(model, clip, tmp)
    detectors = {"fp32": Detector(model, config), "int8": Detector(int8, config)}
    images = [image for _, image in zip(range(args.frames), video_frames(clip))]
    blobs = [detectors["fp32"].preprocess(image)[0] for image in images]
    cases: dict[str, Case] = {name: (lambda d=d: timed_runs(d, blobs, args.passes)) for name, d in detectors.items()}
    rounds = run_rounds(cases, args.repeats, args.max_other_load, bar, model.name, compared=over(("int8",), ("fp32",)))
    summary = summarize(rounds, args.max_other_load)
    return {"model": model.name, "int8": str(int8), "provider": detectors["fp32"].provider,
            "input_size": list(detectors["fp32"].input_size), "frames": len(blobs), "passes": args.passes,
            "threads": args.threads, **summary, "report": report(rounds, summary)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, default=None,
                        help="fp32 ONNX models (default: the demo detector, and YOLOv8n from shared/ when present)")
    parser.add_argument("--frames", type=int, default=30, help="frames of the sample clip to run on (default 30)")
    parser.add_argument("--passes", type=int, default=4, help="passes over them per case and round (default 4)")
    add_options(parser)
    parser.add_argument("--providers", nargs="+", default=["cpu"], help="provider preference (default: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: ONNX Runtime's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    models = args.models or [demo_model_path()] + ([YOLOV8N] if YOLOV8N.exists() else [])
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "calibration.mp4", seed=7, frames=CALIBRATION_FRAMES)
        with tqdm(total=2 * args.repeats * len(models), desc="benchmark", unit="case", disable=None) as bar:
            results = [bench_model(m, clip, Path(tmp), args, bar) for m in models]
    for r in results:
        print(f"\n{r['model']} ({r['provider']}, input {'x'.join(map(str, r['input_size']))}, {r['frames']} frames "
              f"x {r['passes']}, threads {r['threads']}):")
        print("\n".join(r.pop("report")))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["accepted"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
