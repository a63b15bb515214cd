"""The resource manager in the real daemon: a fake sysfs tree the test heats and cools (and whose memory it
drains), a real Mosquitto, the demo detector on a looping realtime clip. Steps down and back up are seen on
MQTT, in the detections and in health; the stream never stops."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from tests.broker import Broker, Subscriber
from tests.conftest import DEMO_MODEL
from tests.daemon import P, SCHEMAS, Daemon, detections, events, write_config

pytestmark = pytest.mark.slow
INTERVAL_S = 0.5
RESOURCES = {"interval_s": INTERVAL_S, "cool_down_s": 2, "step_interval_s": 1, "min_fps": 2,
             "thermal": {"warn_c": 70, "critical_c": 85, "hysteresis_c": 5}, "throttling": False}


def board(root: Path, celsius: float, available_mb: float = 4000) -> None:
    """The fake board's temperature and MemAvailable, written as the kernel writes them."""
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text(f"{round(celsius * 1000)}\n")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/meminfo").write_text(f"MemTotal: 8000000 kB\nMemAvailable: {round(available_mb * 1024)} kB\n")


def kinds(sub: Subscriber) -> list[dict[str, Any]]:
    return [e for e in events(sub) if e["kind"] in ("level_changed", "step_down", "step_up", "model_switched")]


def run(tmp_path: Path, broker: Broker, clip: Path, heat: Any, cool: Any,
        escalate: Any = None) -> tuple[Subscriber, Daemon, float]:
    """Heat (three steps down seen), then ``escalate`` to critical if given (the lowest rung seen), then cool
    until every step is undone; the subscriber, the stopped daemon, and the time to the first step."""
    root = tmp_path / "sysfs"
    board(root, 50)
    streams = [{"name": "cam", "source": str(clip), "loop": True, "realtime": True, "max_fps": 8}]
    config = write_config(tmp_path, broker, streams, resources={**RESOURCES, "sysfs_root": str(root)})
    sub = Subscriber(broker, f"{P}/#").start()
    daemon = Daemon(config)
    try:
        sub.wait_for(lambda: len(detections(sub, "cam")) >= 10, timeout=30, what="detections")
        crossed = time.time()
        heat(root)
        sub.wait_for(lambda: any(e["kind"] == "step_down" for e in events(sub)), timeout=3 * INTERVAL_S + 1,
                     what="the first step down, within 3 intervals")
        first_step = sub.messages(f"{P}/events")[-1].received_at - crossed
        sub.wait_for(lambda: len([e for e in events(sub, "step_down")]) >= 3, timeout=15, what="three steps down")
        sub.wait_for(lambda: detections(sub, "cam")[-1]["model"]["input_size"] != [416, 416], timeout=15,
                     what="detections from a smaller input size")
        if escalate is not None:
            escalate(root)
            sub.wait_for(lambda: detections(sub, "cam")[-1]["model"]["input_size"] == [192, 192], timeout=15,
                         what="detections from the lowest rung")
        cool(root)
        sub.wait_for(lambda: [e for e in events(sub, "level_changed") if e["to"] == "normal"], timeout=15,
                     what="back to normal")
        sub.wait_for(lambda: sub.messages(f"{P}/health")[-1].json()["resource_manager"]["active_steps"] == []
                     and detections(sub, "cam")[-1]["model"]["precision"] == "fp32", timeout=30,
                     what="every step back up, to fp32")
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.kill()
        sub.stop()
    return sub, daemon, first_step


def _moves(event: dict[str, Any]) -> int:
    """How many single steps a step event covers (critical jumps several at once)."""
    if event["step"] == "fps":
        return round(np.log2(event["from"] / event["to"]))
    rungs = ["fp32@416", "int8@416", "int8@320", "int8@192"]  # the demo detector's default ladder
    return rungs.index(event["to"]) - rungs.index(event["from"])


def check_common(sub: Subscriber) -> None:
    for event in kinds(sub):
        jsonschema.validate(event, SCHEMAS["event"])
    messages = detections(sub, "cam")
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(len(seqs))), "a detections message is missing"
    assert not events(sub, "stream_down"), "the stream stopped"
    for health in sub.messages(f"{P}/health"):
        jsonschema.validate(health.json(), SCHEMAS["health"])


def test_heat_steps_down_in_order_and_cooling_steps_back_up(tmp_path: Path, broker: Broker,
                                                            looping_clip: Path) -> None:
    sub, daemon, first_step = run(tmp_path, broker, looping_clip, heat=lambda root: board(root, 75),
                                  escalate=lambda root: board(root, 90), cool=lambda root: board(root, 40))
    check_common(sub)
    found = kinds(sub)
    downs = [e["step"] for e in found if e["kind"] == "step_down"]
    assert downs[:3] == ["fps", "precision", "input_size"], found
    level = next(e for e in found if e["kind"] == "level_changed")
    assert (level["from"], level["to"], level["cause"]) == ("normal", "elevated", "thermal")
    assert level["readings"]["temperature_c"] == 75.0
    switched = [e for e in found if e["kind"] == "model_switched"]
    assert (switched[0]["from"], switched[0]["to"]) == ("fp32@416", "int8@416")
    levels = [(e["from"], e["to"]) for e in found if e["kind"] == "level_changed"]
    assert levels[:2] == [("normal", "elevated"), ("elevated", "critical")] and levels[-1][1] == "normal", levels
    taken = [step for e in found if e["kind"] == "step_down" for step in [e["step"]] * abs(_moves(e))]
    ups = [e["step"] for e in found if e["kind"] == "step_up"]
    assert ups == list(reversed(taken)), (taken, ups)  # the steps taken, undone one at a time in reverse order
    messages = detections(sub, "cam")
    first_int8 = next(i for i, m in enumerate(messages) if m["model"]["precision"] == "int8")
    assert messages[first_int8]["model"]["input_size"] == [416, 416]
    assert (messages[-1]["model"]["precision"], messages[-1]["model"]["input_size"]) == ("fp32", [416, 416])
    stepped, restored = events(sub, "step_down")[0]["ts"], events(sub, "step_up")[-1]["ts"]
    before = [m["ts_capture"] for m in messages if m["ts_capture"] < stepped]
    during = [m["ts_capture"] for m in messages if stepped + 0.3 < m["ts_capture"] < restored]
    gap_before, gap_during = statistics.median(np.diff(before[-10:])), statistics.median(np.diff(during))
    assert gap_during > 1.6 * gap_before, (gap_before, gap_during)  # max_fps 8 halved: 4 frames a second
    healths = [m.json()["resource_manager"] for m in sub.messages(f"{P}/health")]
    assert any(h["level"] == "elevated" and "fps" in h["active_steps"] for h in healths), healths
    received = sub.messages(f"{P}/streams/cam/detections")
    crossed = next(e["ts"] for e in found if e["kind"] == "level_changed")
    int8_after = received[first_int8].received_at - crossed
    print(f"\nthreshold crossed -> first step down: {first_step:.2f} s; level change -> first int8 detection: "
          f"{int8_after:.2f} s (step_interval_s 1)")


def test_critical_goes_straight_to_the_bottom_and_memory_counts_too(tmp_path: Path, broker: Broker,
                                                                     looping_clip: Path) -> None:
    sub, daemon, _ = run(tmp_path, broker, looping_clip, heat=lambda root: board(root, 50, available_mb=100),
                         cool=lambda root: board(root, 50, available_mb=4000))
    check_common(sub)
    level = next(e for e in kinds(sub) if e["kind"] == "level_changed")
    assert (level["to"], level["cause"]) == ("critical", "memory")
    switched = [e for e in kinds(sub) if e["kind"] == "model_switched"]
    assert switched[0]["to"] == "int8@192", switched  # the lowest rung at once
    shedding = [m.json()["resource_manager"]["shedding_memory"] for m in sub.messages(f"{P}/health")]
    assert True in shedding and shedding[-1] is False, shedding  # memory shed while short, not after
    assert "memory pressure: shedding memory" in daemon.log()


def test_a_rung_that_cannot_be_built_leaves_the_session_serving(tmp_path: Path, broker: Broker,
                                                                 looping_clip: Path) -> None:
    """A broken int8 file beside the model: the step down is announced, the build fails with an error event,
    and fp32 goes on serving, the stream never stopping."""
    model = tmp_path / "m.onnx"
    shutil.copy(DEMO_MODEL, model)
    (tmp_path / "m.int8.onnx").write_text("not a model\n")
    root = tmp_path / "sysfs"
    board(root, 50)
    streams = [{"name": "cam", "source": str(looping_clip), "loop": True, "realtime": True, "max_fps": 8}]
    resources = {**RESOURCES, "sysfs_root": str(root), "steps": ["precision"]}
    config = write_config(tmp_path, broker, streams, resources=resources, model={"path": str(model)})
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: len(detections(sub, "cam")) >= 10, timeout=30, what="detections")
            board(root, 75)
            sub.wait_for(lambda: events(sub, "error"), timeout=10, what="the error event")
            count = len(detections(sub, "cam"))
            sub.wait_for(lambda: len(detections(sub, "cam")) > count + 10, timeout=10, what="detections after it")
            assert daemon.stop() == 0, daemon.log()
        finally:
            daemon.kill()
    error = events(sub, "error")[0]
    jsonschema.validate(error, SCHEMAS["event"])
    assert "int8@416" in error["detail"] and "fp32@416 keeps serving" in error["detail"]
    assert not events(sub, "model_switched") and not events(sub, "stream_down")
    assert {m["model"]["precision"] for m in detections(sub, "cam")} == {"fp32"}
    check_common(sub)
