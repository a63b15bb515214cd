"""``edged watch``: a small subscriber that prints a live per-stream summary line, and events as they come."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from edged.config import MqttSettings
from edged.mqtt import MqttClient

REFRESH_S = 1.0


@dataclass
class StreamView:
    arrivals: list[float] = field(default_factory=list)  # receive times within the last second
    last: dict[str, Any] | None = None


class Watcher:
    def __init__(self, out: TextIO):
        self.out = out
        self.streams: dict[tuple[str, str], StreamView] = {}
        self.status: dict[str, str] = {}
        self.lock = threading.Lock()

    def on_message(self, topic: str, payload: bytes, retained: bool, properties: dict[str, str]) -> None:
        parts = topic.split("/")
        device = parts[1] if len(parts) > 2 else "?"
        with self.lock:
            if parts[-1] == "status":
                self.status[device] = payload.decode(errors="replace")
                self._print(f"{device}: {self.status[device]}{' (retained)' if retained else ''}")
                return
            try:
                message = json.loads(payload)
            except ValueError:
                return
            if parts[-1] == "events":
                where = f" {message['stream']}" if message.get("stream") else ""
                self._print(f"{device}{where}: {message.get('kind')}: {message.get('detail')}")
            elif parts[-1] == "detections" and len(parts) >= 5:
                view = self.streams.setdefault((device, parts[-2]), StreamView())
                view.arrivals.append(time.monotonic())
                view.last = message

    def summary_lines(self) -> list[str]:
        now = time.monotonic()
        lines = []
        with self.lock:
            for (device, stream), view in sorted(self.streams.items()):
                view.arrivals = [t for t in view.arrivals if now - t <= REFRESH_S]
                if view.last is None:
                    continue
                m = view.last
                found = ", ".join(f"{d['label']} {d['score']:.2f}" for d in m["detections"][:6])
                more = " ..." if len(m["detections"]) > 6 else ""
                lines.append(f"{device}/{stream}  {len(view.arrivals) / REFRESH_S:5.1f} msg/s  seq {m['seq']:>6}  "
                             f"latency {m['latency_ms']['total']:6.1f} ms  {len(m['detections']):>2} detections"
                             f"{': ' + found + more if found else ''}")
        return lines

    def _print(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


def watch(settings: MqttSettings, device: str = "+", duration: float | None = None, out: TextIO = sys.stdout) -> int:
    """Subscribe to every device's (or one device's) detections, status and events on the broker in ``settings``;
    print until interrupted, or for ``duration`` seconds."""
    watcher = Watcher(out)
    client = MqttClient(settings, f"edged-watch-{os.getpid()}", announce=False)
    prefix = settings.topic_prefix
    for suffix in ("status", "events", "streams/+/detections"):
        client.subscribe(f"{prefix}/{device}/{suffix}", watcher.on_message)
    client.start()
    out.write(f"watching {prefix}/{device}/... on {settings.host}:{settings.port} (Ctrl-C to stop)\n")
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(REFRESH_S if deadline is None else max(0.0, min(REFRESH_S, deadline - time.monotonic())))
            for line in watcher.summary_lines():
                watcher._print(line)
    except KeyboardInterrupt:
        pass
    finally:
        client.stop(flush_timeout_s=0.5)
    return 0
