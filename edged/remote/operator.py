"""The operator's side of remote config: ``edged config push`` and ``edged config get``.

A push goes, QoS 1 and not retained, to one device's ``P/config/set`` (P = ``<prefix>/<device_id>``), to the
fleet's ``<prefix>/fleet/config/set`` or to a group's ``<prefix>/group/<group>/config/set``, signed (MQTT 5 user
property ``signature``) when a key is given. Devices answer on ``P/config/result``, matched to the push by its id.
Which devices should answer a fleet or group push is read just before publishing from the retained ``P/status``
(``online``) and, for a group, the retained ``P/config/state`` (its ``config.remote_config.groups``).
``get`` prints a device's retained ``P/config/state``.

Unlike the daemon's, this connection (``edged.mqtt.ShortConnection``) lasts one command: a push needs MQTT 5 user
properties and its subscriptions acknowledged before it is published.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from edged.config import MAX_CONFIG_BYTES, ConfigError, MqttSettings, parse_yaml
from edged.errors import EdgedError
from edged.mqtt import ShortConnection
from edged.remote.push import SIGNATURE_PROPERTY, PushRejected, parse_push, read_key, sign

log = logging.getLogger("edged.remote.operator")

# Retained messages arrive right after the subscription is acknowledged: they are all in once none came for
# RETAINED_QUIET_S, or after RETAINED_WAIT_S at most.
RETAINED_QUIET_S = 0.3
RETAINED_WAIT_S = 1.0

Result = dict[str, Any]  # a device's config/result message


def load_push(path: Path, version: int | None) -> tuple[str, bytes]:
    """The push in ``path`` (YAML or JSON) as its id and the exact bytes to publish.

    A mapping with a ``config`` key is a whole ``{id, version, config}`` envelope; any other document is the
    merge patch. A missing id is a fresh uuid4; a missing version is ``version``, else the time in milliseconds,
    so that successive pushes from anywhere increase. ConfigError, naming the file, for what a device would reject
    for its shape.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    document = parse_yaml(data, str(path))
    if not isinstance(document, dict):
        raise ConfigError([f"{path}: (top level): expected a mapping (a merge patch, or {{id, version, config}}), "
                           f"got {type(document).__name__}"])
    envelope = document if "config" in document else {"config": document}
    if version is not None and envelope.get("version", version) != version:
        raise ConfigError([f"{path}: version: {envelope['version']!r} in the file, but --version {version}"])
    defaults = {"id": uuid.uuid4().hex, "version": int(time.time() * 1000) if version is None else version}
    push = defaults | envelope
    try:
        payload = json.dumps(push, separators=(",", ":"), allow_nan=False).encode()
        parse_push(payload, MAX_CONFIG_BYTES)  # the device's own check of the shape
    except (TypeError, ValueError) as exc:  # a YAML date, NaN
        raise ConfigError([f"{path}: not representable as JSON: {exc}"]) from None
    except PushRejected as exc:
        raise ConfigError([f"{path}: {error}" for error in exc.errors]) from None
    return push["id"], payload


def push_config(settings: MqttSettings, path: Path, *, device: str | None = None, group: str | None = None,
                key_path: Path | None = None, version: int | None = None, timeout_s: float = 10.0,
                out: TextIO = sys.stdout) -> int:
    """Push the config in ``path`` to ``device``, else to the devices in ``group``, else to the fleet; print a
    line per device (and a summary for many) and return the exit status: 0 when at least one device answered,
    none rejected the push, and every device expected to answer applied it."""
    key = None if key_path is None else read_key(key_path)
    if key is not None and settings.protocol != "5":
        raise ConfigError(["--key: the signature travels as an MQTT 5 user property: use --protocol 5"])
    push_id, payload = load_push(path, version)
    user_properties = {} if key is None else {SIGNATURE_PROPERTY: sign(payload, key)}
    prefix = settings.topic_prefix
    with ShortConnection(settings, timeout_s) as connection:
        if device is not None:
            connection.subscribe([f"{prefix}/{device}/config/result"])
            expected, topic = {device}, f"{prefix}/{device}/config/set"
        else:
            connection.subscribe([f"{prefix}/+/{suffix}" for suffix in ("status", "config/state", "config/result")])
            expected = _online_devices(connection, prefix, group)
            topic = f"{prefix}/fleet/config/set" if group is None else f"{prefix}/group/{group}/config/set"
            if not expected:
                log.warning("no device %s is online (retained %s/+/status): waiting %g s for any answer",
                            "in the fleet" if group is None else f"in group {group}", prefix, timeout_s)
        connection.publish(topic, payload, user_properties)
        log.info("pushed %s on %s%s", push_id, topic, " (signed)" if key is not None else "")
        results = _results(connection, prefix, push_id, expected, time.monotonic() + timeout_s)
    for name in sorted(expected | results.keys()):
        print(_describe(name, results.get(name), timeout_s), file=out)
    applied = sum(result.get("status") == "applied" for result in results.values())
    rejected = len(results) - applied
    missing = len(expected - results.keys())
    if device is None:
        print(f"{applied} applied, {rejected} rejected, {missing} no answer", file=out)
    return 0 if results and not rejected and not missing else 1


def get_config(settings: MqttSettings, device: str, timeout_s: float = 5.0, out: TextIO = sys.stdout) -> int:
    """Print the device's retained effective config (``P/config/state``) as indented JSON."""
    topic = f"{settings.topic_prefix}/{device}/config/state"
    with ShortConnection(settings, timeout_s) as connection:
        connection.subscribe([topic])
        message = next(connection.receive(time.monotonic() + timeout_s), None)
    if message is None:
        raise EdgedError(f"no config state on {topic} within {timeout_s:g} s: is {device!r} the device id, and has "
                         f"that device been connected with remote config on?")
    try:
        state = json.loads(message[1])
    except ValueError:
        raise EdgedError(f"{topic}: the retained message is not JSON") from None
    print(json.dumps(state, indent=2), file=out)
    return 0


def _device_and_suffix(topic: str, prefix: str) -> tuple[str, str]:
    """``<prefix>/<device>/<suffix>`` -> (device, suffix); the prefix may hold slashes, a device id none."""
    device, _, suffix = topic.removeprefix(f"{prefix}/").partition("/")
    return device, suffix


def _online_devices(connection: ShortConnection, prefix: str, group: str | None) -> set[str]:
    """The devices whose retained status is ``online`` (and, with ``group``, whose retained config state lists
    that group)."""
    status: dict[str, bytes] = {}
    groups: dict[str, list[Any]] = {}
    for topic, payload in connection.receive(time.monotonic() + RETAINED_WAIT_S, RETAINED_QUIET_S):
        device, suffix = _device_and_suffix(topic, prefix)
        if suffix == "status":
            status[device] = payload
        elif suffix == "config/state":
            groups[device] = _groups(payload)
    online = {device for device, value in status.items() if value == b"online"}
    return online if group is None else {device for device in online if group in groups.get(device, [])}


def _groups(config_state: bytes) -> list[Any]:
    try:
        groups = json.loads(config_state)["config"]["remote_config"]["groups"]
    except (ValueError, KeyError, TypeError):
        return []
    return groups if isinstance(groups, list) else []


def _results(connection: ShortConnection, prefix: str, push_id: str, expected: set[str],
             deadline: float) -> dict[str, Result]:
    """Each device's answer to the push, until every expected device has answered or ``deadline``."""
    results: dict[str, Result] = {}
    for topic, payload in connection.receive(deadline):
        device, suffix = _device_and_suffix(topic, prefix)
        try:
            result = json.loads(payload) if suffix == "config/result" else None
        except ValueError:
            continue
        if isinstance(result, dict) and result.get("id") == push_id:
            results[device] = result
            if expected and expected <= results.keys():
                break
    return results


def _describe(device: str, result: Result | None, timeout_s: float) -> str:
    if result is None:
        return f"{device}: no answer within {timeout_s:g} s"
    if result.get("status") == "applied":
        return f"{device}: applied (version {result.get('version')})"
    errors = "; ".join(map(str, result.get("errors") or [])) or "no reason given"
    return f"{device}: {result.get('status')}: {errors}"
