#!/usr/bin/env python3
"""What the live view and recording cost the daemon (issue 17): ``edged run`` on every frame of a video file with
the Foxglove server on, a client connected and subscribed to every channel, and an MCAP recording on
(``view_on``), over the same daemon with both off (``view_off``), at ``foxglove.max_fps`` (default 5).

Interleaved rounds (default 5), in rotating order, rounds beside other load rejected (rounds.py). Throughput is
counted from the ``SKIP``-th published frame to the last, so that both cases are measured with the client
subscribed (it connects while the model loads). The client runs in this process, on the same
cores, and does not decode what it receives (a Foxglove app would run on another machine). Prints each round's ratio and the median with its spread; the
goal is view_on / view_off >= 0.95. Run from the repo root:

    python benchmarks/bench_live_view.py [--model M] [--frames 400] [--max-fps 5] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edged.demo import demo_model_path  # noqa: E402
from edged.recording import recordings  # noqa: E402
from edged.synthetic import write_clip  # noqa: E402
from tests.broker import Broker, Subscriber  # noqa: E402
from tests.daemon import free_port  # noqa: E402
from tests.test_live_view import FoxgloveClient  # noqa: E402

# This folder is on sys.path when run as a script.
from bench_daemon import DETECTIONS, RunningDaemon  # noqa: E402
from rounds import add_options, report, run_rounds, summarize  # noqa: E402

SKIP = 40  # frames left out at the start of each run: the client subscribes meanwhile
COMPARED = (("view_on", "view_off"),)


def daemon_run(folder: Path, broker: Broker, model: Path, video: Path, frames: int, max_fps: float,
               view: bool) -> dict[str, Any]:
    port = free_port()
    record = folder / f"rec-{time.monotonic_ns()}"
    extra = {"foxglove": {"max_fps": max_fps, "server": {"enabled": view, "port": port},
                          "mcap": {"enabled": view, "dir": str(record)}}}
    topics = ["/s/image", "/s/annotations", "/s/detections", "/health"]
    with Subscriber(broker, DETECTIONS, client_id="bench-view").start() as sub:
        daemon = RunningDaemon(folder, broker, model, {"source": str(video), "realtime": False}, 0, extra)
        client = FoxgloveClient(f"ws://127.0.0.1:{port}", topics, decode=False) if view else None
        try:
            if client is not None:
                for _ in range(600):  # the server starts once the model has loaded
                    client = FoxgloveClient(f"ws://127.0.0.1:{port}", topics, decode=False).__enter__()
                    time.sleep(0.05)
                    if client.error is None:
                        break
                    client.__exit__()
            sub.wait_for(lambda: len(sub.received) >= frames, timeout=600, what="every frame")
        finally:
            daemon.stop()
            if client is not None:
                client.__exit__()
    published = [m.json()["ts_publish"] for m in sub.messages()][SKIP:]
    result: dict[str, Any] = {"fps": (len(published) - 1) / (published[-1] - published[0])}
    if client is not None:
        result["images_received"] = len(client.of("/s/image"))
        result["recorded_mb"] = round(sum(p.stat().st_size for p in recordings(record)) / 1e6, 2)
    return result


def figures(r: Any) -> str:
    on = r.results["view_on"]
    return f"client received {on['images_received']} images, recording {on['recorded_mb']} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=demo_model_path())
    parser.add_argument("--frames", type=int, default=400, help="the clip's length; every case runs all of it")
    parser.add_argument("--max-fps", type=float, default=5.0, help="foxglove.max_fps")
    parser.add_argument("--json", type=Path, default=None)
    add_options(parser, repeats=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = write_clip(folder / "bench.mp4", seed=99, frames=args.frames)
        with Broker(folder / "broker") as broker, tqdm(total=2 * args.repeats, desc="benchmark", unit="run",
                                                       disable=None) as bar:
            assert broker.process is not None
            cases = {name: partial(daemon_run, folder, broker, args.model, video, args.frames, args.max_fps,
                                   name == "view_on") for name in ("view_on", "view_off")}
            rounds = run_rounds(cases, args.repeats, args.max_other_load, bar, args.model.name,
                                watch=[broker.process.pid], compared=COMPARED)
    summary = summarize(rounds, args.max_other_load)
    print(f"\n{args.model.name}, every frame of a {args.frames}-frame file, foxglove.max_fps {args.max_fps:g}; "
          f"view on: a Foxglove client subscribed to every channel and an MCAP recording / view off:")
    print("\n".join(report(rounds, summary, figures)))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["accepted"] else 1


if __name__ == "__main__":
    sys.exit(main())
