#!/usr/bin/env python3
"""The daemon against its quality targets (DESIGN.md part 3), as ratios where possible.

- throughput: ``edged run`` on a video file (every frame), from its first to its last publish, with tracking on
  (the default config) and off (``tracking.enabled: false``), each over two bare loops on the same model, threads
  and frames (see bench_detect.py): ``session.run`` alone, and decode + preprocess + ``session.run`` + postprocess
  in one thread; and tracking on over off. Interleaved rounds (default 5), each running the four in rotating
  order; rounds beside other load are rejected (see rounds.py); each ratio's median and spread over the
  accepted rounds;
- latency: capture to subscriber (receive time minus ``ts_capture``), p50 and p99, against the median
  inference time, for a camera-like source (the clip looping in real time, 30 fps and capped at 10 fps);
- memory: the daemon's resident set size (VmRSS, and its peak VmHWM) after the file, in each round;
- start: time from process start to ``READY=1`` on a real notify socket, in each round.

A real Mosquitto runs on a free loopback port (the tests' helper); the subscriber runs in this
process. Exit status 1 when a model has no accepted round. Run from the repo root:

    python benchmarks/bench_daemon.py [--models M ...] [--frames 200] [--repeats 5] [--no-latency]
                                      [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edged.demo import demo_model_path  # noqa: E402
from edged.inference.detector import Detector  # noqa: E402
from edged.inference.session import SessionConfig  # noqa: E402
from edged.synthetic import write_clip  # noqa: E402
from tests.broker import Broker, Subscriber  # noqa: E402

# This folder is on sys.path when run as a script.
from bench_detect import baseline_cases  # noqa: E402
from rounds import (BASELINES, CLK_TCK, LoadMeter, Round, add_options, display_name, over, plot,  # noqa: E402
                    process_ticks, report, run_rounds, summarize)

DEVICE = "bench"
DETECTIONS = f"edged/{DEVICE}/streams/s/detections"  # the only topic subscribed: len(received) counts them
YOLOV8N = REPO.parent / "shared" / "models" / "yolov8n-640-random.onnx"
DAEMONS = {"tracking_on": None, "tracking_off": {"tracking": {"enabled": False}}}  # case -> config beyond the defaults
COMPARED = over(tuple(DAEMONS), BASELINES) + (("tracking_on", "tracking_off"),)
LATENCY_CAPS = (None, 10.0)  # a 30 fps source, and the same capped at max_fps 10


class RunningDaemon:
    def __init__(self, folder: Path, broker: Broker, model: Path, stream: dict[str, Any], threads: int,
                 extra: dict[str, Any] | None = None):
        """``extra``: more config sections (``snapshots``, ``tracking``, ...)."""
        config = {"device_id": DEVICE, "mqtt": broker.settings().model_dump(mode="json"),
                  "model": {"path": str(model.resolve())}, "inference": {"providers": ["cpu"], "threads": threads},
                  "streams": [{"name": "s", **stream}], "remote_config": {"state_dir": str(folder / "state")},
                  **(extra or {})}
        path = folder / "bench.yaml"
        path.write_text(yaml.safe_dump(config))
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(folder / f"notify-{time.monotonic_ns()}"))
        self.started = time.monotonic()
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.getsockname())
        self.log_path = folder / "daemon.log"
        self.log = self.log_path.open("a")
        self.process = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(path)], cwd=REPO,
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def ready_after_s(self, timeout: float = 60) -> float:
        self.notify.settimeout(0.5)
        while time.monotonic() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.process.returncode}):\n{self.log_path.read_text()}")
            try:
                if b"READY=1" in self.notify.recv(4096):
                    return time.monotonic() - self.started
            except TimeoutError:
                continue
        raise RuntimeError(f"no READY=1 within {timeout} s:\n{self.log_path.read_text()}")

    def rss_mb(self) -> tuple[float, float]:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.notify.close()
        self.log.close()


def edged_run(folder: Path, broker: Broker, model: Path, video: Path, frames: int, threads: int,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The daemon on the whole file: frames per second from its first publish (start-up, model load and
    warm-up, is not throughput), and its READY time and RSS. Each message's JSON is decoded once, at the end."""
    with Subscriber(broker, DETECTIONS, client_id="bench-tp").start() as sub:
        daemon = RunningDaemon(folder, broker, model, {"source": str(video), "realtime": False}, threads, extra)
        try:
            ready_s = daemon.ready_after_s()
            sub.wait_for(lambda: len(sub.received) >= 1, timeout=60, what="the first frame")
            first, ticks_first = len(sub.received), process_ticks(daemon.process.pid)
            sub.wait_for(lambda: len(sub.received) >= frames, timeout=600, what="every frame")
            last, ticks_last = len(sub.received), process_ticks(daemon.process.pid)
            rss, peak = daemon.rss_mb()
        finally:
            daemon.stop()
    published = [m.json()["ts_publish"] for m in sub.messages()]
    # CPU time a frame (all the daemon's threads): what a frame costs, less disturbed than wall time by a host
    # that runs this VM's cores slower or faster from one run to the next.
    cpu_ms = (ticks_last - ticks_first) / CLK_TCK * 1000 / max(last - first, 1)
    return {"fps": (len(published) - 1) / (published[-1] - published[0]), "cpu_ms_per_frame": round(cpu_ms, 2),
            "ready_s": round(ready_s, 2), "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1)}


def latency(folder: Path, broker: Broker, model: Path, video: Path, threads: int, max_fps: float | None,
            seconds: float) -> dict[str, Any]:
    stream = {"source": str(video), "loop": True, "realtime": True, "max_fps": max_fps}
    with Subscriber(broker, DETECTIONS, client_id="bench-lat").start() as sub:
        daemon = RunningDaemon(folder, broker, model, stream, threads)
        try:
            daemon.ready_after_s()
            time.sleep(2)  # past warm-up
            skip = len(sub.messages())
            with LoadMeter([broker.process.pid, daemon.process.pid]) as meter:
                time.sleep(seconds)
        finally:
            daemon.stop()
    measured = [(m.received_at, m.json()) for m in sub.messages()[skip:]]
    latencies = np.array([(received - m["ts_capture"]) * 1000 for received, m in measured])
    inference = statistics.median(m["latency_ms"]["inference"] for _, m in measured)
    p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
    return {"max_fps": max_fps, "messages": len(measured), "inference_ms_p50": round(inference, 2),
            "latency_ms_p50": round(float(p50), 2), "latency_ms_p99": round(float(p99), 2),
            "p50_minus_inference_ms": round(float(p50) - inference, 2),
            "p99_over_inference": round(float(p99) / inference, 2), "other_load_cores": round(meter.other_cores, 3)}


def daemon_figures(r: Round) -> str:
    """The round's secondary figures, for its report."""
    figures = []
    for name in DAEMONS:
        d = r.results[name]
        figures.append(f"{display_name(name)}: {d['cpu_ms_per_frame']} CPU ms a frame, READY {d['ready_s']} s, "
                       f"RSS {d['rss_mb']} MB (peak {d['peak_rss_mb']})")
    return "; ".join(figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, default=None,
                        help="default: the demo detector, and YOLOv8n from shared/ when present")
    parser.add_argument("--frames", type=int, default=200, help="the clip's length; every case runs all of it")
    add_options(parser, repeats=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10.0, help="latency measurement per case")
    parser.add_argument("--no-latency", action="store_true", help="throughput rounds only")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                        help="each model's ratios by round and their medians (needs matplotlib)")
    args = parser.parse_args()
    caps = () if args.no_latency else LATENCY_CAPS
    models = args.models or [demo_model_path()] + ([YOLOV8N] if YOLOV8N.exists() else [])
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = write_clip(folder / "bench.mp4", seed=99, frames=args.frames)
        with Broker(folder / "broker") as broker, \
                tqdm(total=len(models) * ((len(BASELINES) + len(DAEMONS)) * args.repeats + len(caps)),
                     desc="benchmark", unit="run", disable=None) as bar:
            assert broker.process is not None
            for model in models:
                detector = Detector(model, SessionConfig(providers=("cpu",), threads=args.threads))
                cases = baseline_cases(detector, video) | {
                    name: partial(edged_run, folder, broker, model, video, args.frames, args.threads, extra)
                    for name, extra in DAEMONS.items()}
                rounds = run_rounds(cases, args.repeats, args.max_other_load, bar, model.name,
                                    watch=[broker.process.pid], compared=COMPARED)
                summary = summarize(rounds, args.max_other_load)
                entry = results[model.name] = {"frames": args.frames, "throughput": summary, "latency": []}
                entry["report"] = report(rounds, summary, daemon_figures)
                for cap in caps:
                    bar.set_postfix_str(f"{model.name} latency, max_fps {cap}")
                    entry["latency"].append(latency(folder, broker, model, video, args.threads, cap, args.seconds))
                    bar.update()
    for name, entry in results.items():
        print(f"\n{name}, throughput, every frame of a {entry['frames']}-frame file; tracking on / off: the daemon "
              f"(edged run) with tracking, and with it snapshots, on (its default) / off:")
        print("\n".join(entry.pop("report")))
        for lat in entry["latency"]:
            cap = f"max_fps {lat['max_fps']}" if lat["max_fps"] else "30 fps source"
            print(f"  latency capture->subscriber, {cap}: p50 {lat['latency_ms_p50']} ms, p99 "
                  f"{lat['latency_ms_p99']} ms; inference p50 {lat['inference_ms_p50']} ms "
                  f"(p50 - inference {lat['p50_minus_inference_ms']} ms, p99 / inference "
                  f"{lat['p99_over_inference']}); other load {lat['other_load_cores']:.2f} cores")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot({name: entry["throughput"] for name, entry in results.items()}, args.plot)
    return 0 if all(entry["throughput"]["accepted"] for entry in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
