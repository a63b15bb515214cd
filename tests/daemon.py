"""The real daemon for end-to-end tests: ``python -m edged run -c CONFIG`` as a subprocess, its config, and
what it published as a subscriber saw it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.broker import Broker, Subscriber
from tests.conftest import REPO

SCHEMAS = {name: json.loads((REPO / "edged" / "schemas" / f"{name}.json").read_text())
           for name in ("detections", "health", "event", "config_result", "config_state", "objects")}
DEVICE = "test-dev"
P = f"edged/{DEVICE}"


class Daemon:
    """``python -m edged run -c CONFIG`` with its log in a file."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()):
        self.log_path = config.with_suffix(".log")
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(config), *args], cwd=REPO,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))

    def log(self) -> str:
        return self.log_path.read_text()

    def send(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM; the exit code (the test fails if it takes longer than ``timeout``)."""
        self.send(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def write_config(folder: Path, broker: Broker | None, streams: list[dict[str, Any]], **extra: Any) -> Path:
    mqtt = broker.settings().model_dump(mode="json") if broker else {"host": "127.0.0.1", "port": free_port()}
    config = {"device_id": DEVICE, "mqtt": mqtt, "streams": streams, "health": {"interval_s": 1},
              "remote_config": {"state_dir": str(folder / "state")}, **extra}
    path = folder / "edged.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detections(subscriber: Subscriber, stream: str) -> list[dict[str, Any]]:
    return [m.json() for m in subscriber.messages(f"{P}/streams/{stream}/detections")]


def events(subscriber: Subscriber, kind: str | None = None) -> list[dict[str, Any]]:
    found = [m.json() for m in subscriber.messages(f"{P}/events")]
    return [e for e in found if kind is None or e["kind"] == kind]


def statuses(subscriber: Subscriber) -> list[str]:
    return [m.text for m in subscriber.messages(f"{P}/status")]
