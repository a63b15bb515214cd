"""edged.mqtt against a real mosquitto: status and last will, outages, the bounded outbox, auth, TLS, MQTT 3.1.1,
two devices with the same device_id."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edged.config import ConfigError, MqttSettings
from edged.mqtt import MqttClient
from tests.broker import HOST, Broker, Subscriber, wait_until

DEVICE = "dev"
STATUS = f"edged/{DEVICE}/status"
TAKEN_OVER = f"another client with device_id {DEVICE} took over the connection; is device_id unique?"
TAKEOVER_IN_BROKER_LOG = f"Client {DEVICE} already connected, closing old connection."


@contextmanager
def running(settings: MqttSettings, device_id: str = DEVICE) -> Iterator[MqttClient]:
    client = MqttClient(settings, device_id)
    client.start()
    try:
        yield client
    finally:
        client.stop(flush_timeout_s=1.0)


@contextmanager
def down_broker_with_session(folder: Path) -> Iterator[tuple[Broker, Subscriber]]:
    """A stopped broker that keeps a subscriber's session: whatever is published once it is started again reaches
    the subscriber, however the two race to reconnect."""
    broker = Broker(folder, persistence=True)
    broker.start()
    subscriber = Subscriber(broker, "edged/#", persistent=True).start()
    broker.stop()
    try:
        yield broker, subscriber
    finally:
        subscriber.stop()
        broker.stop()


def numbers(subscriber: Subscriber) -> list[int]:
    """The ``i`` of every message but status messages and markers, in arrival order."""
    return [m.json()["i"] for m in subscriber.messages() if not m.topic.endswith(("/status", "/marker"))]


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("edged.mqtt") and r.levelno >= logging.ERROR]


def takeover_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith(TAKEN_OVER)]


@contextmanager
def taking_over_broker() -> Iterator[tuple[int, list[float]]]:
    """A fake MQTT 5 broker on a free loopback port that accepts every connection, then at once sends DISCONNECT
    "Session taken over" (0x8E) and closes it, as a broker does when another client connects with the same id.
    Yields the port and a list that gets the time of every connection."""
    connections: list[float] = []
    stop = threading.Event()
    server = socket.create_server((HOST, 0))
    server.settimeout(0.05)

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5.0)
                connections.append(time.monotonic())
                connection.recv(4096)  # CONNECT
                connection.sendall(bytes([0x20, 3, 0, 0, 0]))  # CONNACK: no session, Success, no properties
                time.sleep(0.1)
                connection.sendall(bytes([0xE0, 2, 0x8E, 0]))  # DISCONNECT: Session taken over, no properties

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield server.getsockname()[1], connections
    finally:
        stop.set()
        thread.join()
        server.close()


KILLED_CLIENT = """
import sys, time
from edged.config import MqttSettings
from edged.mqtt import MqttClient
MqttClient(MqttSettings(host="127.0.0.1", port=int(sys.argv[1])), "doomed").start()
time.sleep(60)
"""


def test_online_is_retained_and_the_will_says_offline_when_the_process_dies(tmp_path: Path) -> None:
    status = "edged/doomed/status"
    with Broker(tmp_path) as broker, Subscriber(broker, status) as live:
        process = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(broker.port)])
        try:
            live.wait_for(lambda: live.payloads(status) == [b"online"], 30, "online")
            with Subscriber(broker, status, client_id="late") as late:
                late.wait_for(lambda: late.messages(status), what="the retained status")
                assert [(m.payload, m.retained) for m in late.messages(status)] == [(b"online", True)]
        finally:
            process.kill()
            process.wait()
        live.wait_for(lambda: live.payloads(status) == [b"online", b"offline"], what="the last will")
        with Subscriber(broker, status, client_id="later") as later:
            later.wait_for(lambda: later.messages(status), what="the retained will")
            assert [(m.payload, m.retained) for m in later.messages(status)] == [(b"offline", True)]


def test_clean_stop_sends_queued_then_offline_and_no_will(tmp_path: Path) -> None:
    with Broker(tmp_path) as broker, Subscriber(broker, "edged/#") as sub:
        client = MqttClient(broker.settings(), DEVICE)
        client.start()
        sub.wait_for(lambda: sub.payloads(STATUS) == [b"online"], what="online")
        for i in range(100):
            client.publish(client.topic("events"), {"i": i})
        client.stop()
        assert not client.connected
        # Once the broker has handled the disconnect, a will would already be out: a marker after it proves none.
        wait_until(lambda: f"Client {DEVICE} disconnected." in broker.log(), what="the clean disconnect")
        sub.publish("edged/marker", b"")
        sub.wait_for(lambda: sub.messages("edged/marker"), what="the marker")
        assert numbers(sub) == list(range(100))
        assert sub.payloads(STATUS) == [b"online", b"offline"]


def test_broker_down_at_start_queues_and_delivers_everything_in_order(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edged.mqtt")
    with down_broker_with_session(tmp_path) as (broker, sub), running(broker.settings()) as client:
        for i in range(60):
            client.publish(client.topic("streams/front/detections" if i % 3 else "events"), {"i": i},
                           droppable=bool(i % 3))
        assert client.queue_depth == 60 and not client.connected
        wait_until(lambda: "cannot connect to broker" in caplog.text, what="the unreachable line")
        broker.start()
        sub.wait_for(lambda: len(numbers(sub)) >= 60, what="60 messages")
        assert numbers(sub) == list(range(60))  # in order, across topics
        assert sub.payloads(STATUS) == [b"online"]
        wait_until(lambda: client.queue_depth == 0, what="the acknowledgements")
        assert client.stats() == {"connected": True, "queue_depth": 0, "queue_limit": 10000, "dropped": 0,
                                  "reconnects": 0, "takeovers": 0}
    assert not errors(caplog)


@pytest.mark.slow
def test_no_qos1_message_is_lost_when_the_broker_restarts_mid_stream(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edged.mqtt")
    with down_broker_with_session(tmp_path) as (broker, sub):
        broker.start()
        with running(broker.settings()) as client:
            topic = client.topic("streams/front/detections")
            stop = threading.Event()
            sent = 0

            def publish_at_50_hz() -> None:
                nonlocal sent
                while not stop.is_set():
                    client.publish(topic, {"i": sent}, droppable=True)
                    sent += 1
                    time.sleep(0.02)

            publisher = threading.Thread(target=publish_at_50_hz)
            publisher.start()
            try:
                sub.wait_for(lambda: len(numbers(sub)) >= 25, what="the stream")
                broker.stop()
                wait_until(lambda: not client.connected, what="the client to notice")
                time.sleep(2.0)  # the outage (not an assertion): ~100 messages queue meanwhile
                broker.start()
                wait_until(lambda: client.connected, 15, "the reconnect")
                before = len(numbers(sub))
                sub.wait_for(lambda: len(numbers(sub)) >= before + 25, what="the stream after the restart")
            finally:
                stop.set()
                publisher.join()
            sub.wait_for(lambda: set(numbers(sub)) >= set(range(sent)), 15, f"all {sent} messages")
            assert list(dict.fromkeys(numbers(sub))) == list(range(sent))  # in order; QoS 1 may repeat one
            assert client.dropped == 0 and client.stats()["reconnects"] == 1
    assert any("lost" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert any(r.getMessage().startswith("reconnected") and r.levelno == logging.INFO for r in caplog.records)
    assert not errors(caplog)


def test_messages_in_flight_when_the_connection_dies_are_sent_again(tmp_path: Path) -> None:
    with down_broker_with_session(tmp_path) as (broker, sub):  # the session is saved; the crash keeps it
        broker.start()
        with running(broker.settings()) as client:
            wait_until(lambda: client.connected, what="the connection")
            broker.pause()  # nothing acknowledged from now on
            for i in range(100):
                client.publish(client.topic("events"), {"i": i})
            wait_until(lambda: len(client._inflight) == 20, what="a full window handed to paho")
            broker.kill()
            broker.start()
            sub.wait_for(lambda: set(numbers(sub)) >= set(range(100)), 15, "all 100 messages")
            assert list(dict.fromkeys(numbers(sub))) == list(range(100))
            assert client.dropped == 0


def test_full_outbox_drops_oldest_detections_first_and_counts(tmp_path: Path) -> None:
    with down_broker_with_session(tmp_path) as (broker, sub), running(broker.settings(queue_limit=10)) as client:
        detections, events = client.topic("streams/front/detections"), client.topic("events")
        for i in range(14):  # even: detections (droppable); odd: events
            client.publish(detections if i % 2 == 0 else events, {"i": i}, droppable=i % 2 == 0)
        assert (client.queue_depth, client.dropped) == (10, 4)  # detections 0, 2, 4, 6 went
        for i in range(14, 21):  # events: detections 8, 10, 12 go, then the oldest events 1, 3, 5, 7
            client.publish(events, {"i": i})
        assert (client.queue_depth, client.dropped) == (10, 11)
        assert client.stats()["dropped"] == 11
        broker.start()
        sub.wait_for(lambda: len(numbers(sub)) >= 10, what="the 10 kept messages")
        assert numbers(sub) == [9, 11, 13, *range(14, 21)]


def test_under_memory_pressure_fewer_detections_are_held_and_the_drops_counted(tmp_path: Path) -> None:
    with down_broker_with_session(tmp_path) as (broker, sub), running(broker.settings(queue_limit=100)) as client:
        detections, events = client.topic("streams/front/detections"), client.topic("events")
        for i in range(20):  # even: detections (droppable); odd: events
            client.publish(detections if i % 2 == 0 else events, {"i": i}, droppable=i % 2 == 0)
        client.limit_droppable(3)  # detections 0 to 12 go, the events stay
        assert (client.queue_depth, client.dropped) == (13, 7)
        client.publish(detections, {"i": 20}, droppable=True)  # and 14 goes
        assert (client.queue_depth, client.dropped) == (13, 8)
        client.limit_droppable(None)
        client.publish(detections, {"i": 22}, droppable=True)
        assert (client.queue_depth, client.dropped) == (14, 8)
        broker.start()
        sub.wait_for(lambda: len(numbers(sub)) >= 14, what="the 14 kept messages")
        assert numbers(sub) == [1, 3, 5, 7, 9, 11, 13, 15, 16, 17, 18, 19, 20, 22]


def test_retained_state_and_subscriptions_are_renewed_after_a_broker_restart(tmp_path: Path) -> None:
    received: list[tuple[str, bytes, bool, dict[str, str]]] = []
    with Broker(tmp_path) as broker, running(broker.settings()) as client:  # no persistence: restart forgets all
        health, command = client.topic("health"), client.topic("config/set")
        client.subscribe(command, lambda *message: received.append(message))
        client.set_retained(health, {"v": 1})
        wait_until(lambda: client.connected and client.queue_depth == 0, what="health sent")
        broker.stop()
        wait_until(lambda: not client.connected, what="the client to notice")
        client.set_retained(health, {"v": 2})
        client.set_retained(health, {"v": 3})
        assert client.queue_depth == 0  # only the newest state is kept, and sent on reconnect
        broker.start()
        wait_until(lambda: client.connected and client.queue_depth == 0, 15, "the reconnect")
        with Subscriber(broker, f"edged/{DEVICE}/#") as sub:
            sub.wait_for(lambda: len(sub.messages()) >= 2, what="the retained messages")
            assert {m.topic: (m.payload, m.retained) for m in sub.messages()} == {
                STATUS: (b"online", True), health: (b'{"v":3}', True)}
            sub.publish(command, b'{"id": 1}', user_properties={"signature": "abc"})
            wait_until(lambda: received, what="the command")
    assert received == [(command, b'{"id": 1}', False, {"signature": "abc"})]


def test_username_and_password_from_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edged.mqtt")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("guess\n")
    with Broker(tmp_path / "broker", username="edge", password="s3cret") as broker, \
            Subscriber(broker, "edged/#") as sub:
        with running(broker.settings(password_file=wrong), "intruder") as intruder:
            wait_until(lambda: errors(caplog), what="the refusal")
            assert errors(caplog) == [f"broker 127.0.0.1:{broker.port} (MQTT 5) refused the connection: "
                                      "Not authorized"]  # mosquitto's answer to a wrong password
            assert not intruder.connected
        with running(broker.settings()) as client:
            client.publish(client.topic("events"), {"i": 1})
            sub.wait_for(lambda: numbers(sub) == [1], what="the message")
        assert sub.payloads("edged/intruder/status") == []
    with pytest.raises(ConfigError, match=str(tmp_path / "missing")):
        MqttClient(MqttSettings(username="edge", password_file=tmp_path / "missing"), DEVICE).start()


def test_tls_with_a_client_certificate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edged.mqtt")
    with Broker(tmp_path / "broker", require_certificate=True) as broker, Subscriber(broker, "edged/#") as sub:
        with running(broker.settings()) as client:
            client.publish(client.topic("events"), {"i": 1})
            sub.wait_for(lambda: numbers(sub) == [1], what="the message over TLS")
        without_certificate = broker.settings(tls={"ca_file": broker.ca_file})
        with running(without_certificate, "anonymous") as anonymous:
            wait_until(lambda: "cannot connect to broker" in caplog.text, what="the failure line")
            assert not anonymous.connected
    with pytest.raises(ConfigError, match="key.pem"):
        MqttClient(broker.settings(tls={"ca_file": broker.ca_file, "cert_file": broker.client_cert[0],
                                        "key_file": tmp_path / "key.pem"}), DEVICE).start()


def test_mqtt_3_1_1(tmp_path: Path) -> None:
    with Broker(tmp_path) as broker, Subscriber(broker, "edged/#") as sub:
        with running(broker.settings(protocol="3.1.1")) as client:
            sub.wait_for(lambda: sub.payloads(STATUS) == [b"online"], what="online")
            client.set_retained(client.topic("health"), {"i": 0})
            client.publish(client.topic("events"), {"i": 1}, qos=0)
            client.publish(client.topic("events"), {"i": 2}, qos=2)
            sub.wait_for(lambda: numbers(sub) == [0, 1, 2], what="the messages")
        sub.wait_for(lambda: sub.payloads(STATUS) == [b"online", b"offline"], what="offline")


def test_session_taken_over_is_named_at_once_and_backed_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edged.mqtt")
    with taking_over_broker() as (port, connections), running(MqttSettings(host=HOST, port=port)) as client:
        wait_until(lambda: takeover_warnings(caplog), what="the takeover warning")
        time.sleep(3.0)  # the usual backoff would have reconnected after 1 s; the takeover back-off waits 10 s
        assert len(connections) == 1
        assert client.stats()["takeovers"] == 1 and not client.connected
    assert takeover_warnings(caplog) == [f"{TAKEN_OVER} Broker {HOST}:{port} (MQTT 5); reconnecting in 10 s, "
                                         "backing off up to 240 s while takeovers go on"]
    assert not [r for r in caplog.records if "lost" in r.getMessage()]  # the takeover line says it all


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_clients_with_one_device_id_back_off_and_say_so(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                           protocol: str) -> None:
    """mosquitto 2.0.11 closes the old connection without DISCONNECT 0x8E, for MQTT 5 as for 3.1.1: each client
    recognises quick drops in a row. Without back-off they take the connection from each other every second."""
    caplog.set_level(logging.INFO, "edged.mqtt")
    with Broker(tmp_path) as broker, running(broker.settings(protocol=protocol)) as first, \
            running(broker.settings(protocol=protocol)) as second:
        # The first to see 3 quick drops backs off 10 s; the other sees its third drop when that ends (~15 s).
        wait_until(lambda: len(takeover_warnings(caplog)) >= 2, 30, "both clients' takeover warning")
        takeovers = broker.log().count(TAKEOVER_IN_BROKER_LOG)
        assert takeovers <= 8
        time.sleep(4.0)  # both back off 10 s now: no takeover
        assert broker.log().count(TAKEOVER_IN_BROKER_LOG) == takeovers
        assert first.stats()["takeovers"] >= 1 and second.stats()["takeovers"] >= 1
        assert first.stats()["takeovers"] + second.stats()["takeovers"] == takeovers
    assert len(takeover_warnings(caplog)) == 2  # once per client and episode
    assert not errors(caplog)


def test_payloads_and_topics(tmp_path: Path) -> None:
    client = MqttClient(MqttSettings(topic_prefix="site/a"), "cam-1")
    assert client.topic("health") == "site/a/cam-1/health"
    assert client.fleet_topic("fleet/config/set") == "site/a/fleet/config/set"
    with pytest.raises(ValueError):
        client.publish("site/a/+/x", "")
    with Broker(tmp_path) as broker, Subscriber(broker, "t/#") as sub:
        with running(broker.settings(), "cam-1") as client:
            payloads: list[Any] = [{"a": [1, 2.5], "b": "é"}, "text", b"\x00\xff"]
            for n, payload in enumerate(payloads):
                client.publish(f"t/{n}", payload)
            sub.wait_for(lambda: len(sub.messages()) == 3, what="3 messages")
        assert [m.payload for m in sub.messages()] == [b'{"a":[1,2.5],"b":"\\u00e9"}', b"text", b"\x00\xff"]
