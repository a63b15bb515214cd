#!/usr/bin/env python3
"""What tracking and snapshots cost the pipeline: ``edged run`` throughput on a video file (every frame) with
them on, over the same with them off, in interleaved rounds with load rejection (rounds.py). The bare loops of
bench_daemon.py are the same for all cases, so these ratios are also the daemon/bare ratios' ratios.

"none": tracking and snapshots off; "off": tracking on, snapshots off; "default": both on,
``snapshots.interval_s: 1`` (a label's
snapshot at most once a second); "every" the worst case, ``interval_s: 0``: every new best frame of every
label's newest object is scaled, drawn and JPEG-encoded (in the encoder thread, off the inference path) and
published retained. The encoding is off the inference path, but on a machine whose cores inference already
fills it still takes CPU time from it: the ratios say how much. A real Mosquitto runs on a free loopback port.

    python benchmarks/bench_snapshots.py [--frames 300] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

from tqdm import tqdm

from bench_daemon import edged_run  # this folder is on sys.path when run as a script; it puts the repo there
from edged.demo import demo_model_path
from edged.synthetic import write_clip
from rounds import Case, Round, add_options, over, report, run_rounds, summarize
from tests.broker import Broker

CASES = {"none": {"tracking": {"enabled": False}, "snapshots": {"enabled": False}},
         "off": {"snapshots": {"enabled": False}},
         "default": {"snapshots": {"enabled": True, "interval_s": 1.0}},
         "every": {"snapshots": {"enabled": True, "interval_s": 0}}}
OVER_NONE = ("off", "default", "every")  # the cases compared with "none"


def cpu_figures(r: Round) -> str:
    """Each case's CPU time a frame (all the daemon's threads), for the round's report."""
    return "CPU ms a frame: " + ", ".join(f"{name} {r.results[name]['cpu_ms_per_frame']:.1f}" for name in r.order)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    add_options(parser)
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: ONNX Runtime's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Broker(Path(tmp) / "broker") as broker:
        video = write_clip(Path(tmp) / "bench.mp4", seed=99, frames=args.frames)
        cases: dict[str, Case] = {
            name: partial(edged_run, Path(tmp), broker, demo_model_path(), video, args.frames, args.threads, extra)
            for name, extra in CASES.items()}
        with tqdm(total=len(cases) * args.repeats, desc="benchmark", unit="run", disable=None) as bar:
            rounds = run_rounds(cases, args.repeats, args.max_other_load, bar, "snapshots", [broker.process.pid],
                                compared=over(OVER_NONE, ("none",)))
    summary = summarize(rounds, args.max_other_load)
    print("\n".join(report(rounds, summary, cpu_figures)))
    accepted = [r for r in rounds if r.accepted]
    if accepted:
        # CPU time a frame, each case over "none" within a round: steadier than fps on a noisy host.
        summary["cpu_over_none"] = {
            name: round(statistics.median(r.results[name]["cpu_ms_per_frame"] / r.results["none"]["cpu_ms_per_frame"]
                                          for r in accepted), 3) for name in OVER_NONE}
        print("  CPU time a frame over that with tracking and snapshots off (median): " + ", ".join(
            f"{name} {ratio:.3f}" for name, ratio in summary["cpu_over_none"].items()))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["accepted"] else 1


if __name__ == "__main__":
    sys.exit(main())
