#!/usr/bin/env python3
"""The daemon against its quality targets (DESIGN.md part 3), one run each, as ratios where possible.

- throughput: ``edged run`` on a video file (every frame) over a bare ``session.run`` loop on the same
  model, threads and frames (bare loops run before and after the daemon; their mean is the reference);
- latency: capture to subscriber (receive time minus ``ts_capture``), p50 and p99, against the median
  inference time, for a camera-like source (the clip looping in real time, 30 fps and capped at 10 fps);
- memory: the daemon's resident set size (VmRSS, and its peak VmHWM) while running;
- start: time from process start to ``READY=1`` on a real notify socket.

A real Mosquitto runs on a free loopback port (the tests' helper). Run from the repo root:

    python benchmarks/bench_daemon.py [--model M] [--frames 300] [--json FILE]
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

from bench_detect import bare_loop, decode_all  # noqa: E402  (this folder is on sys.path when run as a script)

DEVICE = "bench"
YOLOV8N = REPO.parent / "shared" / "models" / "yolov8n-640-random.onnx"


def bare_fps(model: Path, video: Path, threads: int) -> float:
    detector = Detector(model, SessionConfig(providers=("cpu",), threads=threads))
    return bare_loop(detector, [detector.preprocess(image)[0] for image in decode_all(video)[0]])


class RunningDaemon:
    def __init__(self, folder: Path, broker: Broker, model: Path, stream: dict[str, Any], threads: int):
        config = {"device_id": DEVICE, "mqtt": broker.settings().model_dump(mode="json"),
                  "model": {"path": str(model.resolve())}, "inference": {"providers": ["cpu"], "threads": threads},
                  "streams": [{"name": "s", **stream}], "remote_config": {"state_dir": str(folder / "state")}}
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
            except socket.timeout:
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


def detections(sub: Subscriber) -> list[tuple[float, dict[str, Any]]]:
    """(receive time, message) for each detections message; receive time in Unix seconds."""
    return [(m.received_at, m.json()) for m in sub.messages(f"edged/{DEVICE}/streams/s/detections")]


def throughput(folder: Path, broker: Broker, model: Path, video: Path, frames: int, threads: int) -> dict[str, Any]:
    before = bare_fps(model, video, threads)
    with Subscriber(broker, f"edged/{DEVICE}/#", client_id="bench-tp").start() as sub:
        daemon = RunningDaemon(folder, broker, model, {"source": str(video), "realtime": False}, threads)
        ready_s = daemon.ready_after_s()
        sub.wait_for(lambda: len(detections(sub)) >= frames, timeout=600, what="every frame")
        rss, peak = daemon.rss_mb()
        daemon.stop()
    after = bare_fps(model, video, threads)
    published = [m["ts_publish"] for _, m in detections(sub)]
    # From the first publish: start-up (model load, warm-up) is not throughput.
    pipeline = (len(published) - 1) / (published[-1] - published[0])
    reference = (before + after) / 2
    return {"bare_fps": round(reference, 2), "bare_fps_before_after": [round(before, 2), round(after, 2)],
            "daemon_fps": round(pipeline, 2), "ratio": round(pipeline / reference, 3),
            "ready_s": round(ready_s, 2), "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1)}


def latency(folder: Path, broker: Broker, model: Path, video: Path, threads: int, max_fps: float | None,
            seconds: float) -> dict[str, Any]:
    stream = {"source": str(video), "loop": True, "realtime": True, "max_fps": max_fps}
    with Subscriber(broker, f"edged/{DEVICE}/#", client_id="bench-lat").start() as sub:
        daemon = RunningDaemon(folder, broker, model, stream, threads)
        daemon.ready_after_s()
        time.sleep(2)  # past warm-up
        skip = len(detections(sub))
        time.sleep(seconds)
        daemon.stop()
    measured = detections(sub)[skip:]
    latencies = np.array([(received - m["ts_capture"]) * 1000 for received, m in measured])
    inference = statistics.median(m["latency_ms"]["inference"] for _, m in measured)
    p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
    return {"max_fps": max_fps, "messages": len(measured), "inference_ms_p50": round(inference, 2),
            "latency_ms_p50": round(float(p50), 2), "latency_ms_p99": round(float(p99), 2),
            "p50_minus_inference_ms": round(float(p50) - inference, 2), "p99_over_inference": round(float(p99) / inference, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, default=None,
                        help="default: the demo detector, and YOLOv8n from shared/ when present")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10.0, help="latency measurement per case")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    models = args.models or [demo_model_path()] + ([YOLOV8N] if YOLOV8N.exists() else [])
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = write_clip(folder / "bench.mp4", seed=99, frames=args.frames)
        with Broker(folder / "broker") as broker, tqdm(total=3 * len(models), unit="case", disable=None) as bar:
            for model in models:
                entry = results[model.name] = {"throughput": throughput(folder, broker, model, video, args.frames,
                                                                        args.threads)}
                bar.update()
                entry["latency"] = []
                for cap in (None, 10.0):
                    entry["latency"].append(latency(folder, broker, model, video, args.threads, cap, args.seconds))
                    bar.update()
    for name, entry in results.items():
        t = entry["throughput"]
        print(f"\n{name}: daemon {t['daemon_fps']} fps / bare {t['bare_fps']} fps = {t['ratio']}  "
              f"(READY after {t['ready_s']} s, RSS {t['rss_mb']} MB, peak {t['peak_rss_mb']} MB)")
        for lat in entry["latency"]:
            cap = f"max_fps {lat['max_fps']}" if lat["max_fps"] else "30 fps source"
            print(f"  latency capture->subscriber, {cap}: p50 {lat['latency_ms_p50']} ms, p99 "
                  f"{lat['latency_ms_p99']} ms; inference p50 {lat['inference_ms_p50']} ms "
                  f"(p50 - inference {lat['p50_minus_inference_ms']} ms, p99 / inference {lat['p99_over_inference']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
