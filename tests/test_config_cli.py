"""``edged config push`` / ``get`` and ``edged watch`` as real processes against a real Mosquitto.

The devices are fakes that speak the remote-config wire contract: retained ``online`` status and config state
(with their groups), and an answer to every push on their set topics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from edged.remote.push import read_key, verify
from tests.broker import Broker, Received, Subscriber, free_port
from tests.conftest import run_edged

PREFIX = "edged"
TIMEOUT = "3"


class FakeDevice(Subscriber):
    """A device's remote config on the wire, applying nothing: it answers each push ``applied``, or ``rejected``
    when the patch has a key ``bad``. What it received (payloads, user properties) is in ``messages()``."""

    def __init__(self, broker: Broker, device_id: str, groups: tuple[str, ...] = ()):
        topics = [f"{PREFIX}/{device_id}/config/set", f"{PREFIX}/fleet/config/set",
                  *(f"{PREFIX}/group/{group}/config/set" for group in groups)]
        super().__init__(broker, topics, client_id=device_id)
        self.device_id = device_id
        self.state = config_state(device_id, groups)

    def start(self, timeout: float = 10.0) -> FakeDevice:
        super().start(timeout)
        publish_retained(self, self.device_id, "online", self.state)
        return self

    def pushes(self) -> list[Received]:
        return self.messages()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        super()._on_message(client, userdata, message)
        push = json.loads(message.payload)
        errors = ["bad: unknown key"] if "bad" in push["config"] else []
        result = {"schema": "edged.config_result/1", "device_id": self.device_id, "ts": time.time(),
                  "id": push["id"], "status": "rejected" if errors else "applied", "errors": errors,
                  "version": push["version"]}
        client.publish(f"{PREFIX}/{self.device_id}/config/result", json.dumps(result), qos=1)


def config_state(device_id: str, groups: tuple[str, ...]) -> dict[str, Any]:
    return {"schema": "edged.config_state/1", "device_id": device_id, "ts": time.time(), "version": 3,
            "hash": "0123abcd", "config": {"device_id": device_id, "remote_config": {"groups": list(groups)}}}


def publish_retained(client: Subscriber, device_id: str, status: str, state: dict[str, Any]) -> None:
    """A device's retained status and config state, published from ``client``."""
    client.publish(f"{PREFIX}/{device_id}/status", status, retain=True)
    client.publish(f"{PREFIX}/{device_id}/config/state", json.dumps(state), retain=True)


def silent_device(broker: Broker, device_id: str, status: str, groups: tuple[str, ...] = ()) -> None:
    """The retained status and config state of a device that never answers a push."""
    with Subscriber(broker, f"{PREFIX}/{device_id}/config/set", client_id=f"{device_id}-retained") as client:
        publish_retained(client, device_id, status, config_state(device_id, groups))


def broker_options(broker: Broker) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(broker.port), "--timeout", TIMEOUT]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_push_to_one_device_applied_from_a_yaml_envelope(tmp_path: Path, broker: Broker) -> None:
    push = write(tmp_path / "push.yaml", "id: push-1\nversion: 7\nconfig:\n  model:\n    confidence: 0.6\n")
    with FakeDevice(broker, "cam1") as device:
        run = run_edged("config", "push", "cam1", push, *broker_options(broker), timeout=30)
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == ["cam1: applied (version 7)"]
        [received] = device.pushes()
    assert received.topic == f"{PREFIX}/cam1/config/set" and not received.retained and received.qos == 1
    assert received.json() == {"id": "push-1", "version": 7, "config": {"model": {"confidence": 0.6}}}
    assert received.user_properties == {}


def test_rejected_push_prints_the_errors_and_fills_in_id_and_version(tmp_path: Path, broker: Broker) -> None:
    patch = write(tmp_path / "patch.json", '{"bad": 1}')
    with FakeDevice(broker, "cam1") as device:
        before_ms = time.time() * 1000
        run = run_edged("config", "push", "cam1", patch, *broker_options(broker), timeout=30)
        assert run.returncode == 1, run.stderr
        assert run.stdout.splitlines() == ["cam1: rejected: bad: unknown key"]
        [received] = device.pushes()
    push = received.json()
    assert push["config"] == {"bad": 1} and len(push["id"]) == 32
    assert before_ms <= push["version"] <= time.time() * 1000  # milliseconds: later pushes carry higher versions


def test_push_to_an_absent_device_says_no_answer(tmp_path: Path, broker: Broker) -> None:
    patch = write(tmp_path / "patch.yaml", "health: {interval_s: 2}\n")
    run = run_edged("config", "push", "nobody", patch, *broker_options(broker), timeout=30)
    assert run.returncode == 1, run.stderr
    assert run.stdout.splitlines() == [f"nobody: no answer within {TIMEOUT} s"]


def test_signed_push_carries_the_payloads_hmac(tmp_path: Path, broker: Broker) -> None:
    key_file = write(tmp_path / "hmac.key", "s3cret-key\n")
    patch = write(tmp_path / "patch.yaml", "model: {confidence: 0.5}\n")
    with FakeDevice(broker, "cam1") as device:
        run = run_edged("config", "push", "cam1", patch, "--key", key_file, "--version", "42",
                        *broker_options(broker), timeout=30)
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == ["cam1: applied (version 42)"]
        [received] = device.pushes()
    verify(received.payload, received.user_properties.get("signature"), read_key(key_file))  # raises if wrong


def test_fleet_push_expects_the_online_devices(tmp_path: Path, broker: Broker) -> None:
    patch = write(tmp_path / "patch.yaml", "health: {interval_s: 2}\n")
    silent_device(broker, "cam0", "offline")
    with FakeDevice(broker, "cam1") as one, FakeDevice(broker, "cam2") as two:
        run = run_edged("config", "push", "--fleet", patch, "--version", "5", *broker_options(broker), timeout=30)
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == ["cam1: applied (version 5)", "cam2: applied (version 5)",
                                           "2 applied, 0 rejected, 0 no answer"]
        assert [m.topic for m in one.pushes() + two.pushes()] == [f"{PREFIX}/fleet/config/set"] * 2


def test_fleet_push_fails_when_an_online_device_does_not_answer(tmp_path: Path, broker: Broker) -> None:
    patch = write(tmp_path / "patch.yaml", "health: {interval_s: 2}\n")
    silent_device(broker, "cam2", "online")
    with FakeDevice(broker, "cam1"):
        run = run_edged("config", "push", "--fleet", patch, "--version", "5", *broker_options(broker), timeout=30)
    assert run.returncode == 1, run.stderr
    assert run.stdout.splitlines() == ["cam1: applied (version 5)", f"cam2: no answer within {TIMEOUT} s",
                                       "1 applied, 0 rejected, 1 no answer"]


def test_group_push_expects_only_the_groups_devices(tmp_path: Path, broker: Broker) -> None:
    patch = write(tmp_path / "patch.yaml", "id: lobby-1\nversion: 9\nconfig: {health: {interval_s: 2}}\n")
    silent_device(broker, "cam3", "offline", ("lobby",))
    with FakeDevice(broker, "cam1", ("lobby",)) as member, FakeDevice(broker, "cam2", ("yard",)) as other:
        started = time.monotonic()
        run = run_edged("config", "push", "--group", "lobby", patch, *broker_options(broker), timeout=30)
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == ["cam1: applied (version 9)", "1 applied, 0 rejected, 0 no answer"]
        assert time.monotonic() - started < float(TIMEOUT) + 2  # done when the member answered, not at the timeout
        assert [m.topic for m in member.pushes()] == [f"{PREFIX}/group/lobby/config/set"]
        assert other.pushes() == []


def test_get_prints_the_retained_config_state(broker: Broker) -> None:
    with FakeDevice(broker, "cam1", ("lobby",)) as device:
        run = run_edged("config", "get", "cam1", *broker_options(broker), timeout=30)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == json.loads(json.dumps(device.state))
    assert run.stdout.startswith('{\n  "schema"')  # indented


def test_get_without_a_config_state_fails_cleanly(broker: Broker) -> None:
    run = run_edged("config", "get", "nobody", "--host", "127.0.0.1", "--port", broker.port, "--timeout", "1",
                    timeout=30)
    assert run.returncode == 1 and run.stdout == ""
    assert f"edged: error: no config state on {PREFIX}/nobody/config/state within 1 s" in run.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    (["config", "push", "patch.yaml"], 2, "DEVICE is missing"),
    (["config", "push", "cam1", "patch.yaml", "--fleet"], 2, "DEVICE goes without --fleet and --group"),
    (["config", "push", "cam1", "patch.yaml", "--key", "missing.key"], 2,
     "edged: config error: missing.key: remote_config.hmac_key_file: cannot read"),
    (["config", "push", "cam1", "missing.yaml"], 2, "edged: config error: missing.yaml: cannot read"),
    (["config", "get", "cam1", "--ca-file", "missing.crt"], 2,
     "edged: config error: missing.crt: cannot read mqtt.tls.ca_file"),
    (["config", "get", "cam1", "--cert-file", "client.crt"], 2, "cert_file and key_file go together"),
    (["config", "get", "cam1"], 1, "edged: error: cannot connect to 127.0.0.1:"),
])
def test_usage_and_config_errors(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    write(tmp_path / "patch.yaml", "health: {interval_s: 2}\n")
    paths = [str(tmp_path / arg) if arg.endswith((".yaml", ".key", ".crt")) else arg for arg in args]
    run = run_edged(*paths, "--host", "127.0.0.1", "--port", free_port(), timeout=30)
    assert run.returncode == code
    assert message.replace("missing.", f"{tmp_path}/missing.") in run.stderr


def test_watch_takes_the_shared_broker_options(broker: Broker) -> None:
    with FakeDevice(broker, "cam1"):
        run = run_edged("watch", "--host", "127.0.0.1", "--port", broker.port, "--prefix", PREFIX, "--device",
                        "cam1", "--duration", "1", timeout=30)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert f"watching {PREFIX}/cam1/... on 127.0.0.1:{broker.port} (Ctrl-C to stop)" in lines
    assert "cam1: online (retained)" in lines
