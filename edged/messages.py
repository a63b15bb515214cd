"""The JSON messages edged publishes (contract: DESIGN.md 1.3); each carries schema, device_id, ts."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from typing import Any

from edged.detections import DetectionResult
from edged.inference.detector import Detector
from edged.sources import Frame

DETECTIONS_SCHEMA = "edged.detections/1"


def default_device_id() -> str:
    return socket.gethostname()


def model_descriptor(detector: Detector) -> dict[str, Any]:
    """The ``model`` field: what produced the detections. ``input_size`` is [height, width]."""
    return {"name": detector.name, "precision": detector.precision, "provider": detector.provider,
            "input_size": list(detector.input_size)}


def detections_message(device_id: str, stream: str, seq: int, frame: Frame, result: DetectionResult,
                       model: dict[str, Any]) -> dict[str, Any]:
    """A detections message; ``latency_ms.total`` is capture to publish, queueing included."""
    ts_publish = time.time()
    timings = result.timings_ms
    message: dict[str, Any] = {
        "schema": DETECTIONS_SCHEMA,
        "device_id": device_id,
        "ts": ts_publish,
        "stream": stream,
        "seq": seq,
        "frame_id": frame.frame_id,
        "ts_capture": frame.ts_capture,
        "ts_publish": ts_publish,
        "latency_ms": {
            "preprocess": round(timings["preprocess"], 3),
            "inference": round(timings["inference"], 3),
            "postprocess": round(timings["postprocess"], 3),
            "total": round((ts_publish - frame.ts_capture) * 1000, 3),
        },
        "model": model,
        "image": {"width": result.width, "height": result.height},
        "detections": [d.to_json() for d in result.detections],
    }
    if frame.file is not None:
        message["file"] = frame.file
    return message


EVENT_SCHEMA = "edged.event/1"
HEALTH_SCHEMA = "edged.health/1"
EVENT_KINDS = ("stream_up", "stream_down", "level_changed", "step_down", "step_up", "model_switched",
               "config_applied", "config_rejected", "object_entered", "object_left", "error")


def event_message(device_id: str, kind: str, detail: str, stream: str | None = None, **fields: Any) -> dict[str, Any]:
    """An event: ``kind``, a readable ``detail``, the stream it concerns, and the kind's own fields."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    message: dict[str, Any] = {"schema": EVENT_SCHEMA, "device_id": device_id, "ts": time.time(), "kind": kind,
                               "detail": detail}
    if stream is not None:
        message["stream"] = stream
    message.update(fields)
    return message


def health_message(device_id: str, **fields: Any) -> dict[str, Any]:
    return {"schema": HEALTH_SCHEMA, "device_id": device_id, "ts": time.time(), **fields}


CONFIG_RESULT_SCHEMA = "edged.config_result/1"
CONFIG_STATE_SCHEMA = "edged.config_state/1"


def config_result_message(device_id: str, push_id: str | None, applied: bool, errors: list[str],
                          version: int | None) -> dict[str, Any]:
    """The answer to a config push on ``P/config/result``."""
    return {"schema": CONFIG_RESULT_SCHEMA, "device_id": device_id, "ts": time.time(), "id": push_id,
            "status": "applied" if applied else "rejected", "errors": errors, "version": version}


def config_state_message(device_id: str, version: int | None, config: dict[str, Any]) -> dict[str, Any]:
    """The effective config (secrets redacted) on ``P/config/state``, with the last applied push's version and
    the SHA-256 of the config's canonical JSON (sorted keys, no spaces): equal hashes, equal configs."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return {"schema": CONFIG_STATE_SCHEMA, "device_id": device_id, "ts": time.time(), "version": version,
            "hash": hashlib.sha256(canonical).hexdigest(), "config": config}
