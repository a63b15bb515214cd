"""Home Assistant MQTT discovery: the entities announced for a config, and the publisher that keeps them in step."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest

from edged.home_assistant import (
    DiscoveryPublisher,
    Entity,
    discovery_entities,
    discovery_topic,
)
from edged.mqtt import MqttClient
from tests.broker import Broker, Subscriber

DEVICE = "cam1"
P = f"edged/{DEVICE}"
# The readings behind the per-device sensor entities (paths into health's resources), and those entities.
SENSED = {"temperatures_c": "temperature", "cpu_percent": "cpu_percent", "memory_available_mb": "memory_available",
          "throttling": "throttled", "gpu.load_percent": "gpu_load"}


def entities(streams: list[str] | None = None, labels: list[str] | None = None,
             readings: Collection[str] = frozenset(SENSED)) -> list[Entity]:
    return discovery_entities(DEVICE, "edged", ["front"] if streams is None else streams,
                              ["person", "traffic light"] if labels is None else labels, "1.2.3", readings)


def by_id(found: list[Entity]) -> dict[str, Entity]:
    return {entity.object_id: entity for entity in found}


def renderer() -> Callable[[str, Any], str]:
    """Renders a value_template as Home Assistant does (a sandboxed Jinja environment); skips without jinja2."""
    environment = pytest.importorskip("jinja2.sandbox").ImmutableSandboxedEnvironment()
    return lambda template, value_json: environment.from_string(template).render(value_json=value_json)


HEALTH = {"streams": {"front": {"state": "up", "fps_out": 9.5}},
          "resources": {"temperatures_c": {"cpu": 51.0, "gpu": 63.5}, "cpu_percent": 37.2,
                        "memory_available_mb": 812.0,
                        "throttling": {"under_voltage": False, "throttled": True, "under_voltage_occurred": True},
                        "gpu": {"load_percent": 34.5, "freq_mhz": 306.0, "max_freq_mhz": None}},
          "resource_manager": {"level": "elevated"}, "mqtt": {"queue_depth": 4}}


class Recorder:
    """A publish callable that records (topic, payload, retain)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes | str, bool]] = []

    def __call__(self, topic: str, payload: bytes | str, retain: bool) -> None:
        self.calls.append((topic, payload, retain))

    def take(self) -> list[tuple[str, bytes | str, bool]]:
        calls, self.calls = self.calls, []
        return calls


def test_entity_list() -> None:
    light = "traffic_light_" + hashlib.sha256(b"traffic light").hexdigest()[:6]
    assert [(e.component, e.object_id, e.config["name"]) for e in entities()] == [
        ("sensor", "front_count_person", "front person count"),
        ("sensor", f"front_count_{light}", "front traffic light count"),
        ("sensor", "front_fps", "front fps"),
        ("sensor", "front_state", "front state"),
        ("camera", "front_person_snapshot", "front person snapshot"),
        ("camera", f"front_{light}_snapshot", "front traffic light snapshot"),
        ("sensor", "temperature", "Temperature"),
        ("sensor", "resource_level", "Resource level"),
        ("sensor", "cpu_percent", "CPU"),
        ("sensor", "memory_available", "Memory available"),
        ("sensor", "mqtt_queue_depth", "MQTT queue depth"),
        ("binary_sensor", "throttled", "Throttled"),
        ("sensor", "gpu_load", "GPU load"),
    ]
    assert len(entities(["front", "back"])) == 2 * 6 + 7


def test_a_sensor_entity_only_where_the_host_has_its_reading() -> None:
    def device(readings: set[str]) -> set[str]:
        return {e.object_id for e in entities([], [], readings)}

    always = {"resource_level", "mqtt_queue_depth"}
    assert device(set()) == always
    for reading, object_id in SENSED.items():
        assert device({reading}) == always | {object_id}
    assert device({"gpu", "gpu.freq_mhz", "temperatures_c.cpu"}) == always  # a GPU clock, but no load


def test_every_entity_has_identity_device_and_availability() -> None:
    for entity in entities():
        config = entity.config
        assert re.fullmatch(r"[a-z0-9_]+", entity.object_id)
        assert config["name"]
        assert config["unique_id"] == f"edged_{DEVICE}_{entity.object_id}"
        assert config["device"] == {"identifiers": [f"edged_{DEVICE}"], "name": DEVICE, "manufacturer": "edged",
                                    "model": "edged", "sw_version": "1.2.3"}
        assert config["availability"] == [{"topic": f"{P}/status", "payload_available": "online",
                                           "payload_not_available": "offline"}]
        assert config["qos"] == 1
        if entity.component == "camera":
            assert "state_topic" not in config and "value_template" not in config
        else:
            assert config["state_topic"].startswith(f"{P}/") and "{{" in config["value_template"]


def test_count_sensor_reads_the_objects_topic() -> None:
    found = by_id(entities())
    person = found["front_count_person"].config
    assert person["name"] == "front person count"
    assert person["state_topic"] == f"{P}/streams/front/objects"
    assert person["unit_of_measurement"] == "objects" and person["state_class"] == "measurement"
    assert person["value_template"] == "{{ value_json.counts.get('person', 0) }}"


def test_count_templates_render() -> None:
    render = renderer()
    found = entities(labels=["person", "traffic light", "it's"])
    template = {e.config["name"]: e.config["value_template"] for e in found if e.object_id.startswith("front_count_")}
    message = {"schema": "edged.objects/1", "device_id": DEVICE, "ts": 1.0, "stream": "front",
               "counts": {"person": 3, "traffic light": 2, "it's": 7}}
    assert {name: render(t, message) for name, t in template.items()} == \
        {"front person count": "3", "front traffic light count": "2", "front it's count": "7"}
    assert render(template["front person count"], message | {"counts": {}}) == "0"  # absent from counts: 0


def test_health_sensors_read_the_health_topic() -> None:
    found = by_id(entities())
    for object_id in ("front_fps", "front_state", "temperature", "resource_level", "cpu_percent",
                      "memory_available", "mqtt_queue_depth", "throttled", "gpu_load"):
        assert found[object_id].config["state_topic"] == f"{P}/health"
        assert found[object_id].config["entity_category"] == "diagnostic"
    assert found["front_fps"].config["unit_of_measurement"] == "fps"
    temperature = found["temperature"].config
    assert (temperature["device_class"], temperature["unit_of_measurement"]) == ("temperature", "°C")
    assert found["cpu_percent"].config["unit_of_measurement"] == "%"
    assert found["memory_available"].config["unit_of_measurement"] == "MB"
    assert found["mqtt_queue_depth"].config["unit_of_measurement"] == "messages"
    assert found["throttled"].config["device_class"] == "problem"
    assert found["gpu_load"].config["unit_of_measurement"] == "%"


def test_health_templates_render() -> None:
    render = renderer()
    found = by_id(entities())
    rendered = {object_id: render(found[object_id].config["value_template"], HEALTH)
                for object_id in ("front_fps", "front_state", "temperature", "resource_level", "cpu_percent",
                                  "memory_available", "mqtt_queue_depth", "throttled", "gpu_load")}
    assert rendered == {"front_fps": "9.5", "front_state": "up", "temperature": "63.5", "resource_level": "elevated",
                        "cpu_percent": "37.2", "memory_available": "812.0", "mqtt_queue_depth": "4",
                        "throttled": "ON", "gpu_load": "34.5"}
    calm = HEALTH | {"resources": HEALTH["resources"] | {"throttling": {"throttled": False,
                                                                         "under_voltage_occurred": True}}}
    assert render(found["throttled"].config["value_template"], calm) == "OFF"  # only what holds now counts
    # No temperature zones, no throttling flags, no GPU, the stream gone from health: None (Home Assistant: unknown).
    bare = HEALTH | {"streams": {}, "resources": HEALTH["resources"] | {"temperatures_c": {}, "throttling": None,
                                                                         "gpu": None}}
    for object_id in ("temperature", "front_fps", "front_state", "throttled", "gpu_load"):
        assert render(found[object_id].config["value_template"], bare) == "None"


def test_snapshot_camera_reads_the_image_topic() -> None:
    camera = by_id(entities())["front_person_snapshot"]
    assert camera.component == "camera"
    assert camera.config["name"] == "front person snapshot"
    assert camera.config["topic"] == f"{P}/streams/front/person/snapshot"
    light = next(e for e in entities() if e.config["name"] == "front traffic light snapshot")
    assert light.config["topic"] == f"{P}/streams/front/traffic light/snapshot"


def test_object_ids_are_sanitised_without_collisions() -> None:
    found = entities(["Front-1"], ["person", "Person", "traffic light", "traffic_light", "it's"])
    ids = [entity.object_id for entity in found]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9_]+", object_id) for object_id in ids)
    assert re.fullmatch(r"front_1_[0-9a-f]{6}_count_traffic_light_[0-9a-f]{6}", ids[2])
    assert ids[3].endswith("_count_traffic_light")  # already safe: unchanged
    # Stable: the same names give the same ids (and unique_ids) every time.
    assert ids == [e.object_id for e in entities(["Front-1"], ["person", "Person", "traffic light",
                                                               "traffic_light", "it's"])]


def test_object_ids_that_would_clash_are_refused() -> None:
    with pytest.raises(ValueError, match="a_count_count_x"):
        entities(["a_count", "a"], ["x", "count_x"])


def test_discovery_topic() -> None:
    fps = by_id(entities())["front_fps"]
    assert discovery_topic("homeassistant", fps, DEVICE) == "homeassistant/sensor/cam1/front_fps/config"
    # Home Assistant takes only [a-zA-Z0-9_-] in a node_id.
    assert re.fullmatch(r"ha/sensor/Cam-1_local_[0-9a-f]{6}/front_fps/config", discovery_topic("ha", fps, "Cam-1.local"))


def test_announce_publishes_retained_configs() -> None:
    record = Recorder()
    publisher = DiscoveryPublisher(record)
    assert publisher.status_topic() is None
    found = entities()
    publisher.announce("homeassistant", found, DEVICE)
    calls = record.take()
    assert [topic for topic, _, _ in calls] == [discovery_topic("homeassistant", e, DEVICE) for e in found]
    assert all(retain for _, _, retain in calls)
    for (_, payload, _), entity in zip(calls, found):
        assert payload == json.dumps(entity.config, separators=(",", ":"))  # compact JSON
    assert publisher.status_topic() == "homeassistant/status"


def test_announce_removes_entities_gone_from_the_config() -> None:
    record = Recorder()
    publisher = DiscoveryPublisher(record)
    publisher.announce("homeassistant", entities(["front", "back"]), DEVICE)
    record.take()
    publisher.announce("homeassistant", entities(["front"]), DEVICE)
    calls = record.take()
    removed = {topic for topic, payload, retain in calls if payload == "" and retain}
    assert removed == {discovery_topic("homeassistant", e, DEVICE) for e in entities(["front", "back"])
                       if e.object_id.startswith("back_")}
    assert {topic for topic, payload, _ in calls if payload} == \
        {discovery_topic("homeassistant", e, DEVICE) for e in entities(["front"])}


def test_announce_removes_the_entities_of_sensors_gone() -> None:
    record = Recorder()
    publisher = DiscoveryPublisher(record)
    publisher.announce("homeassistant", entities(), DEVICE)
    record.take()
    publisher.announce("homeassistant", entities(readings=set()), DEVICE)  # e.g. resources.sysfs_root changed
    assert {topic for topic, payload, _ in record.take() if payload == ""} == \
        {discovery_topic("homeassistant", e, DEVICE) for e in entities() if e.object_id in SENSED.values()}


def test_prefix_change_removes_everything_under_the_old_prefix() -> None:
    record = Recorder()
    publisher = DiscoveryPublisher(record)
    publisher.announce("homeassistant", entities(), DEVICE)
    old = {topic for topic, _, _ in record.take()}
    publisher.announce("ha", entities(), DEVICE)
    calls = record.take()
    assert {topic for topic, payload, retain in calls if payload == "" and retain} == old
    assert all(topic.startswith("ha/") for topic, payload, _ in calls if payload)
    assert publisher.status_topic() == "ha/status"


def test_withdraw_and_reannounce() -> None:
    record = Recorder()
    publisher = DiscoveryPublisher(record)
    publisher.announce("homeassistant", entities(), DEVICE)
    announced = record.take()
    publisher.reannounce()
    assert record.take() == announced
    publisher.withdraw()
    assert record.take() == [(topic, "", True) for topic, _, _ in announced]
    assert publisher.status_topic() is None
    publisher.reannounce()  # nothing announced any more
    publisher.withdraw()
    assert record.take() == []


def test_retained_configs_on_a_real_broker(tmp_path: Path) -> None:
    before, after = entities(["front", "back"]), entities(["front"])
    expected = {discovery_topic("homeassistant", e, DEVICE): e.config for e in before}
    kept = {discovery_topic("homeassistant", e, DEVICE) for e in after}
    with Broker(tmp_path / "broker") as broker, Subscriber(broker, "homeassistant/#", client_id="live") as live:
        client = MqttClient(broker.settings(), "test-ha", announce=False)
        client.start()
        try:
            publisher = DiscoveryPublisher(lambda topic, payload, retain: client.publish(topic, payload, retain=retain))
            publisher.announce("homeassistant", before, DEVICE)
            live.wait_for(lambda: {m.topic for m in live.messages()} == expected.keys(), what="every config")
            with Subscriber(broker, "homeassistant/#", client_id="ha-1") as ha:  # Home Assistant starting later
                ha.wait_for(lambda: len(ha.messages()) == len(expected), what="the retained configs")
                assert all(m.retained and m.json() == expected[m.topic] for m in ha.messages())

            publisher.announce("homeassistant", after, DEVICE)
            live.wait_for(lambda: all(b"" in live.payloads(topic) for topic in expected.keys() - kept),
                          what="the removals")
            with Subscriber(broker, "homeassistant/#", client_id="ha-2") as ha:
                ha.wait_for(lambda: {m.topic for m in ha.messages()} == kept, what="the remaining configs")
                time.sleep(0.3)  # nothing else retained comes
                assert sorted(m.topic for m in ha.messages()) == sorted(kept)
        finally:
            client.stop()
