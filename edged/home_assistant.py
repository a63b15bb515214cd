"""Home Assistant MQTT discovery: announce edged's sensors and snapshot cameras so that they appear on their own.

Discovery (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery): a retained JSON config on
``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` creates an entity; an empty retained payload on the
same topic removes it. ``discovery_entities`` is the pure part (what to announce for a config);
``DiscoveryPublisher`` remembers what it announced, so that entities gone from the config (or whose sensor the
host no longer has) are removed, and sends everything again when Home Assistant comes back
(``<discovery_prefix>/status`` = ``online``).

Every entity reads a topic edged publishes anyway (``P/health``, ``P/streams/<stream>/objects``, the snapshots),
picking its value with a ``value_template``: no extra state topics, so enabling Home Assistant adds no traffic
beyond the configs, and everything else subscribed to those topics sees the same data. All entities use
``P/status`` (``online``/``offline``, the last will) for availability.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from edged.resources.governor import THROTTLED_NOW


@dataclass(frozen=True)
class Entity:
    component: str  # "sensor" | "binary_sensor" | "camera"
    object_id: str  # unique within the device: [a-z0-9_]
    config: dict[str, Any]  # the discovery payload


def _hashed(text: str, safe: str) -> str:
    """``safe`` (``text`` made safe), plus a short hash of ``text`` when they differ, so that two texts that differ
    only in unsafe characters ("Person", "person"; "traffic light", "traffic_light") stay apart."""
    return safe if safe == text else f"{safe}_{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def _safe_id(text: str) -> str:
    """``text`` as part of an object_id: lower-case ``[a-z0-9_]``."""
    return _hashed(text, re.sub(r"[^a-z0-9_]", "_", text.lower()))


def _literal(text: str) -> str:
    """``text`` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def discovery_entities(device_id: str, topic_prefix: str, streams: Sequence[str], labels: Sequence[str],
                       sw_version: str, readings: Collection[str]) -> list[Entity]:
    """Every entity edged announces for this config: per stream, a count sensor per label, an fps sensor and a
    stream-state sensor, and one camera per label (snapshots); per device: the resource level and the MQTT queue
    depth, and of those that show a sensor, the ones whose reading the host has (``readings``, paths into health's
    ``resources``: ``Sensors.present``): temperature (the hottest zone; ``temperatures_c``), CPU %
    (``cpu_percent``), memory available in MB (``memory_available_mb``), whether the Raspberry Pi firmware
    throttles now (``throttling``) and Jetson GPU load (``gpu.load_percent``).

    Raises ValueError if two entities would share an object_id (names built so that they run into each other,
    such as stream "a_count" with label "x" and stream "a" with label "count_x").
    """
    base = f"{topic_prefix}/{device_id}"
    health = f"{base}/health"
    common = {
        "device": {"identifiers": [f"edged_{device_id}"], "name": device_id, "manufacturer": "edged",
                   "model": "edged", "sw_version": sw_version},
        "availability": [{"topic": f"{base}/status", "payload_available": "online",
                          "payload_not_available": "offline"}],
        "qos": 1,
    }
    diagnostic = {"entity_category": "diagnostic"}
    measurement = {"state_class": "measurement"}
    entities: list[Entity] = []

    def add(component: str, object_id: str, name: str, **config: Any) -> None:
        entities.append(Entity(component, object_id, {"name": name, "unique_id": f"edged_{device_id}_{object_id}",
                                                      **config, **common}))

    labels = list(dict.fromkeys(labels))
    for stream in dict.fromkeys(streams):
        s, quoted = _safe_id(stream), _literal(stream)
        for label in labels:
            add("sensor", f"{s}_count_{_safe_id(label)}", f"{stream} {label} count",
                state_topic=f"{base}/streams/{stream}/objects",
                value_template=f"{{{{ value_json.counts.get({_literal(label)}, 0) }}}}",
                unit_of_measurement="objects", **measurement)
        add("sensor", f"{s}_fps", f"{stream} fps", state_topic=health,
            value_template=f"{{{{ value_json.streams[{quoted}].fps_out if {quoted} in value_json.streams "
                           f"else none }}}}",
            unit_of_measurement="fps", **measurement, **diagnostic)
        add("sensor", f"{s}_state", f"{stream} state", state_topic=health,
            value_template=f"{{{{ value_json.streams[{quoted}].state if {quoted} in value_json.streams "
                           f"else none }}}}",
            **diagnostic)
        for label in labels:
            add("camera", f"{s}_{_safe_id(label)}_snapshot", f"{stream} {label} snapshot",
                topic=f"{base}/streams/{stream}/{label}/snapshot")
    # An entity for a sensor the host lacks would stay unknown for good: none is announced. A sensor found later
    # (rare) gets its entity at the next config reload, which also removes those of sensors gone; Home
    # Assistant's "online" only gets what was announced again.
    if "temperatures_c" in readings:
        add("sensor", "temperature", "Temperature", state_topic=health,
            value_template="{% set t = value_json.resources.temperatures_c %}{{ t.values() | max if t else none }}",
            device_class="temperature", unit_of_measurement="°C", **measurement, **diagnostic)
    add("sensor", "resource_level", "Resource level", state_topic=health,
        value_template="{{ value_json.resource_manager.level }}", **diagnostic)
    if "cpu_percent" in readings:
        add("sensor", "cpu_percent", "CPU", state_topic=health,
            value_template="{{ value_json.resources.cpu_percent }}", unit_of_measurement="%", **measurement,
            **diagnostic)
    if "memory_available_mb" in readings:
        add("sensor", "memory_available", "Memory available", state_topic=health,
            value_template="{{ value_json.resources.memory_available_mb }}", device_class="data_size",
            unit_of_measurement="MB", **measurement, **diagnostic)
    add("sensor", "mqtt_queue_depth", "MQTT queue depth", state_topic=health,
        value_template="{{ value_json.mqtt.queue_depth }}", unit_of_measurement="messages", **measurement,
        **diagnostic)
    if "throttling" in readings:
        now = " or ".join(f"t.{flag}" for flag in THROTTLED_NOW)
        add("binary_sensor", "throttled", "Throttled", state_topic=health,
            value_template=f"{{% set t = value_json.resources.throttling %}}"
                           f"{{{{ ('ON' if {now} else 'OFF') if t else none }}}}",
            device_class="problem", **diagnostic)
    if "gpu.load_percent" in readings:
        add("sensor", "gpu_load", "GPU load", state_topic=health,
            value_template="{% set g = value_json.resources.gpu %}{{ g.load_percent if g else none }}",
            unit_of_measurement="%", **measurement, **diagnostic)

    seen: set[str] = set()
    for entity in entities:
        if entity.object_id in seen:
            raise ValueError(f"two Home Assistant entities would both be {entity.object_id!r}: rename a stream or "
                             "a label")
        seen.add(entity.object_id)
    return entities


def discovery_topic(discovery_prefix: str, entity: Entity, device_id: str) -> str:
    """``<discovery_prefix>/<component>/<device_id>/<object_id>/config``; a device_id with characters Home
    Assistant does not take in a node_id (only ``[a-zA-Z0-9_-]``) gets them replaced, plus a short hash."""
    node_id = _hashed(device_id, re.sub(r"[^a-zA-Z0-9_-]", "_", device_id))
    return f"{discovery_prefix}/{entity.component}/{node_id}/{entity.object_id}/config"


class DiscoveryPublisher:
    """Keeps the announced entities in step with the config. Thread-safe (``reannounce`` typically runs on the
    MQTT client's thread, ``announce`` on a config reload)."""

    def __init__(self, publish: Callable[[str, bytes | str, bool], None]):
        """``publish(topic, payload, retain)``"""
        self._publish = publish
        self._lock = threading.Lock()
        self._prefix: str | None = None
        self._announced: dict[str, str] = {}  # discovery topic -> config (compact JSON)

    def announce(self, discovery_prefix: str, entities: list[Entity], device_id: str) -> None:
        """Publish every entity's config retained (JSON); entities announced before and now gone get an empty
        retained payload (how Home Assistant removes them), including all of them when the prefix changed."""
        configs = {discovery_topic(discovery_prefix, entity, device_id): json.dumps(entity.config,
                                                                                    separators=(",", ":"))
                   for entity in entities}
        with self._lock:
            for topic in self._announced.keys() - configs.keys():
                self._publish(topic, "", True)
            for topic, config in configs.items():
                self._publish(topic, config, True)
            self._prefix, self._announced = discovery_prefix, configs

    def withdraw(self) -> None:
        """Remove every announced entity (empty retained payloads): home_assistant.enabled turned off."""
        with self._lock:
            for topic in self._announced:
                self._publish(topic, "", True)
            self._prefix, self._announced = None, {}

    def reannounce(self) -> None:
        """Publish the current configs again (Home Assistant came back: ``<discovery_prefix>/status`` = online)."""
        with self._lock:
            for topic, config in self._announced.items():
                self._publish(topic, config, True)

    def status_topic(self) -> str | None:
        """``<discovery_prefix>/status`` once announced, else None."""
        with self._lock:
            return None if self._prefix is None else f"{self._prefix}/status"
