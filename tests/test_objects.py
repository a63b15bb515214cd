"""Tracking and what dashboards get from it, end to end: the real daemon and CLI, a real Mosquitto, rendered clips
with ground-truth identities."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import jinja2
import jsonschema
import numpy as np
import pytest
import yaml

from edged.evaluation import clear_mot
from edged.home_assistant import discovery_entities
from edged.resources.governor import THROTTLED_NOW
from edged.resources.sensors import GET_THROTTLED, Sensors
from edged.synthetic import write_clip
from tests.broker import Broker, Subscriber
from tests.conftest import Clip, run_edged
from tests.daemon import DEVICE, P, SCHEMAS, Daemon, detections, events, write_config
from tests.test_sensors import write, write_zones

pytestmark = pytest.mark.slow


def truth_counts(clip: Path) -> dict[str, int]:
    data = json.loads(clip.with_suffix(".json").read_text())
    return dict(Counter(data["labels"][c] for c in data["frames"][0]["class_ids"]))


def objects(sub: Subscriber, stream: str) -> list[dict[str, Any]]:
    return [m.json() for m in sub.messages(f"{P}/streams/{stream}/objects")]


def test_counts_events_and_snapshots(tmp_path: Path, broker: Broker) -> None:
    clip = write_clip(tmp_path / "scene.mp4", seed=21, frames=300, shapes=5)
    expected = truth_counts(clip)
    streams = [{"name": "cam", "source": str(clip), "loop": True, "realtime": True, "max_fps": 10}]
    config = write_config(tmp_path, broker, streams, snapshots={"max_width": 320, "interval_s": 0.5},
                          tracking={"count_debounce_s": 0.5})
    with Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: objects(sub, "cam") and objects(sub, "cam")[-1]["counts"] == expected, timeout=30,
                         what=f"counts {expected}")
            for message in objects(sub, "cam"):
                jsonschema.validate(message, SCHEMAS["objects"])
            assert objects(sub, "cam")[-1]["total"] == sum(expected.values())
            assert all(m.retained is False for m in sub.messages(f"{P}/streams/cam/objects"))  # live deliveries
            for label in expected:
                topic = f"{P}/streams/cam/{label}/snapshot"
                sub.wait_for(lambda: sub.messages(topic), timeout=10, what=f"a {label} snapshot")
                image = cv2.imdecode(np.frombuffer(sub.messages(topic)[-1].payload, np.uint8), cv2.IMREAD_COLOR)
                assert image is not None and image.shape == (240, 320, 3), topic  # 640x480 scaled to 320 wide
            tracked = [d for m in detections(sub, "cam") for d in m["detections"]]
            assert tracked and all({"track_id", "velocity", "age_s"} <= set(d) for d in tracked)
            for message in detections(sub, "cam")[-5:]:
                jsonschema.validate(message, SCHEMAS["detections"])
            first_ids = {e["track_id"] for e in events(sub, "object_entered")}
            assert len(first_ids) == sum(expected.values()), "object_entered once per object on the clip"
            # The stream restarts (a setting of its own changed): its objects leave, and come back with new ids.
            data = yaml.safe_load(config.read_text())
            data["streams"][0]["stall_s"] = 7
            config.write_text(yaml.safe_dump(data))
            daemon.send(signal.SIGHUP)
            sub.wait_for(lambda: {e["track_id"] for e in events(sub, "object_left")} >= first_ids, timeout=20,
                         what="every object left when the stream restarted")
            sub.wait_for(lambda: len(events(sub, "object_entered")) > len(first_ids), timeout=20,
                         what="objects entering again")
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    entered, left = events(sub, "object_entered"), events(sub, "object_left")
    for event in entered + left:
        jsonschema.validate(event, SCHEMAS["event"])
    ids = [e["track_id"] for e in entered]
    assert len(ids) == len(set(ids)) and min(ids[len(first_ids):]) > max(first_ids), "a track id was used twice"
    assert sorted(e["track_id"] for e in left) == sorted(ids), "every object that entered left once, by the stop"
    for event in left:
        assert event["duration_s"] == pytest.approx(event["last_seen"] - event["first_seen"], abs=1e-3)
        assert event["label"] in expected and 0.4 <= event["score"] <= 1


def test_home_assistant_discovery_follows_the_config(tmp_path: Path, broker: Broker, looping_clip: Path) -> None:
    streams = [{"name": name, "source": str(looping_clip), "loop": True, "realtime": True, "max_fps": 5}
               for name in ("a", "b")]
    config = write_config(tmp_path, broker, streams, home_assistant={"enabled": True})
    with Subscriber(broker, "homeassistant/#", client_id="ha").start() as ha, \
            Subscriber(broker, f"{P}/#").start() as sub:
        daemon = Daemon(config)
        try:
            host = Sensors()  # resources.sysfs_root "/": the per-device entities are those of this host's sensors
            per_device = discovery_entities(DEVICE, "edged", [], [], "", host.present(host.sample()))
            every = 2 * (2 + 3 + 3) + len(per_device)  # per stream fps, state, a count and a snapshot per label
            ha.wait_for(lambda: len({m.topic for m in ha.messages()}) == every, timeout=30,
                        what="the discovery configs")
            configs = {m.topic: m.json() for m in ha.messages()}
            for topic, entity in configs.items():
                component = topic.split("/")[1]
                # Home Assistant's required fields: a camera's topic, a sensor's state_topic; and what edged adds
                assert {"camera": {"topic"}, "sensor": {"state_topic", "value_template"},
                        "binary_sensor": {"state_topic", "value_template"}}[component] <= set(entity)
                assert entity["unique_id"] == f"edged_test-dev_{topic.split('/')[3]}"
                assert entity["device"]["identifiers"] == ["edged_test-dev"] and entity["device"]["sw_version"]
                assert entity["availability"] == [{"topic": f"{P}/status", "payload_available": "online",
                                                   "payload_not_available": "offline"}]
            sub.wait_for(lambda: objects(sub, "a") and sub.messages(f"{P}/health"), timeout=30, what="state")
            rendered = render_templates(configs, sub)
            assert rendered["a_count_circle"] == str(objects(sub, "a")[-1]["counts"].get("circle", 0))
            assert rendered["a_state"] == "up" and float(rendered["a_fps"]) >= 0
            assert rendered["resource_level"] == "normal" and int(rendered["mqtt_queue_depth"]) >= 0
            b_topics = {t for t in configs if "/b_" in t}
            assert len(b_topics) == 2 + 3 + 3  # fps, state, a count and a snapshot per label
            data = yaml.safe_load(config.read_text())
            data["streams"] = data["streams"][:1]
            config.write_text(yaml.safe_dump(data))
            daemon.send(signal.SIGHUP)  # b goes: its entities are removed
            ha.wait_for(lambda: all(ha.messages(t)[-1].payload == b"" for t in b_topics), timeout=20,
                        what="b's entities removed")
            sent = len(ha.messages())
            ha.publish("homeassistant/status", "online")  # Home Assistant restarted: announce again
            ha.wait_for(lambda: len(ha.messages()) >= sent + len(configs) - len(b_topics), timeout=10,
                        what="the entities announced again")
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    with Subscriber(broker, "homeassistant/#", client_id="fresh").start() as fresh:
        time.sleep(1.0)
        retained = {m.topic for m in fresh.messages() if m.payload}
    assert retained == set(configs) - b_topics


def test_home_assistant_announces_only_the_sensors_the_host_has(tmp_path: Path, broker: Broker,
                                                                 short_clip: Clip) -> None:
    """A host without sensors gets no entity for them; a config reload onto a board with them announces them (their
    templates render its readings), and one back onto the bare host removes them."""
    bare, board = tmp_path / "bare", tmp_path / "board"
    bare.mkdir()
    write_zones(board, {"thermal_zone0": ("cpu-thermal", "47500")})
    write(board, "proc/stat", "cpu  100 0 100 800 0 0 0 0 0 0\n")
    write(board, "proc/meminfo", "MemTotal: 8000000 kB\nMemAvailable: 4096000 kB\n")
    write(board, GET_THROTTLED, "0x50000\n")  # throttled and under-voltage since boot, not now
    write(board, "sys/devices/platform/gpu.0/load", "345\n")
    sensed = {"temperature", "cpu_percent", "memory_available", "throttled", "gpu_load"}
    streams = [{"name": "a", "source": str(short_clip.video)}]
    config = write_config(tmp_path, broker, streams, home_assistant={"enabled": True},
                          resources={"sysfs_root": str(bare)})

    def per_device() -> dict[str, dict[str, Any]]:
        """The newest config of every per-device entity announced (an empty payload: removed), by topic."""
        newest = {m.topic: m for m in sub.messages() if m.topic.startswith("homeassistant/")}
        return {t: m.json() if m.payload else {} for t, m in newest.items() if not t.split("/")[3].startswith("a_")}

    def announced() -> set[str]:
        return {t.split("/")[3] for t, entity in per_device().items() if entity}

    def reload(root: Path) -> None:
        data = yaml.safe_load(config.read_text())
        data["resources"]["sysfs_root"] = str(root)
        config.write_text(yaml.safe_dump(data))
        applied = len(events(sub, "config_applied"))
        daemon.send(signal.SIGHUP)
        sub.wait_for(lambda: len(events(sub, "config_applied")) > applied, timeout=20, what="the reload applied")
        healths = len(sub.messages(f"{P}/health"))  # the next one comes after the discovery configs
        sub.wait_for(lambda: len(sub.messages(f"{P}/health")) > healths, timeout=5, what="health after the reload")

    with Subscriber(broker, ["homeassistant/#", f"{P}/#"]).start() as sub:
        daemon = Daemon(config)
        try:
            sub.wait_for(lambda: sub.messages(f"{P}/health"), timeout=30, what="health, after the discovery configs")
            assert announced() == {"resource_level", "mqtt_queue_depth"}

            reload(board)
            assert announced() == {"resource_level", "mqtt_queue_depth"} | sensed
            rendered = render_templates(per_device(), sub)
            assert (rendered["temperature"], rendered["throttled"], rendered["gpu_load"]) == ("47.5", "OFF", "34.5")
            assert rendered["memory_available"] == "4000.0"

            reload(bare)
            assert announced() == {"resource_level", "mqtt_queue_depth"}
            assert {t.split("/")[3] for t, entity in per_device().items() if not entity} == sensed  # removed
            assert daemon.stop() == 0
        finally:
            daemon.kill()


def render_templates(configs: dict[str, dict[str, Any]], sub: Subscriber) -> dict[str, str]:
    """Every sensor's value_template rendered with Jinja2 (as Home Assistant does) against the newest payload on
    its state_topic, checked against the value read from that payload directly; by object id."""
    jinja = jinja2.Environment()
    rendered = {}
    for topic, entity in configs.items():
        if "value_template" not in entity:
            continue
        payload = sub.messages(entity["state_topic"])[-1].json()
        value = jinja.from_string(entity["value_template"]).render(value_json=payload)
        object_id = topic.split("/")[3]
        if "_count_" in object_id:
            expected: Any = payload["counts"].get(object_id.rsplit("_count_", 1)[1], 0)
        elif object_id.endswith(("_fps", "_state")):
            stream, field = object_id.rsplit("_", 1)
            expected = payload["streams"][stream]["fps_out" if field == "fps" else "state"]
        else:
            resources = payload["resources"]
            temperatures, throttling = resources["temperatures_c"], resources["throttling"]
            expected = {"temperature": max(temperatures.values()) if temperatures else None,
                        "resource_level": payload["resource_manager"]["level"],
                        "cpu_percent": resources["cpu_percent"],
                        "memory_available": resources["memory_available_mb"],
                        "mqtt_queue_depth": payload["mqtt"]["queue_depth"],
                        "throttled": ("ON" if any(throttling[flag] for flag in THROTTLED_NOW) else "OFF")
                        if throttling else None,
                        "gpu_load": (resources["gpu"] or {}).get("load_percent")}[object_id]
        assert value == str(expected), (object_id, entity["value_template"], value, expected)
        rendered[object_id] = value
    return rendered


def test_detect_track_keeps_identities_on_a_clip_with_ground_truth(tmp_path: Path) -> None:
    """ID switches at most 1 per 20 ground-truth tracks, through the real detector and CLI."""
    clip = write_clip(tmp_path / "ids.mp4", seed=20261127, frames=300, shapes=12)
    out = tmp_path / "tracked.jsonl"
    done = run_edged("detect", clip, "--track", "--out", out, timeout=300)
    assert done.returncode == 0, done.stderr
    truth_data = json.loads(clip.with_suffix(".json").read_text())
    truth = {f["frame_id"]: list(zip(f["ids"], f["boxes"])) for f in truth_data["frames"]}
    predicted = {}
    for line in out.read_text().splitlines():
        message = json.loads(line)
        predicted[message["frame_id"]] = [(d["track_id"], d["box"]) for d in message["detections"]]
    result = clear_mot(predicted, truth)
    print(f"\nMOTA {result['mota']:.4f}, IDF1 {result['idf1']:.4f} over {result['gt_tracks']} ground-truth tracks, "
          f"{result['gt']} boxes: "
          f"{result['id_switches']} id switches, {result['fn']} misses, {result['fp']} false positives")
    assert result["id_switches"] * 20 <= result["gt_tracks"]
    assert result["mota"] > 0.95
