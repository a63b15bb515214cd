"""A real mosquitto on a free loopback port, and a paho subscriber that records what it receives.

    with Broker(tmp_path) as broker, Subscriber(broker, "edged/#") as sub:
        ...  # point the code under test at broker.settings()
        sub.wait_for(lambda: sub.payloads("edged/dev/status") == [b"online"])
"""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edged.config import MqttSettings, TlsSettings
from tests.server_process import ServerProcess

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> None:
    """ca.crt, server.crt/key (for 127.0.0.1 and localhost), client.crt/key, in ``folder`` (EC keys: fast)."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=edged test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)
    for name, usage, san in (("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
                             ("client", "clientAuth", "")):
        (folder / f"{name}.ext").write_text(f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                                            f"extendedKeyUsage={usage}\nauthorityKeyIdentifier=keyid\n{san}")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=folder)


class Broker(ServerProcess):
    """mosquitto with its own config, log and (optional) password file and certificates, all in ``folder``.

    ``persistence=True`` keeps sessions and queued messages across ``restart()`` (mosquitto saves on SIGTERM).
    """

    def __init__(self, folder: Path, *, username: str | None = None, password: str | None = None,
                 tls: bool = False, require_certificate: bool = False, persistence: bool = False):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.username, self.password = username, password
        self.tls = tls or require_certificate
        self.log_file = folder / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None
        lines = [f"listener {self.port} {HOST}", f"allow_anonymous {'false' if username else 'true'}",
                 f"persistence {'true' if persistence else 'false'}", f"persistence_location {folder}/",
                 f"log_dest file {self.log_file}", "log_type all", "log_timestamp_format %H:%M:%S",
                 f"user {getpass.getuser()}"]  # as root, mosquitto would switch to a user that cannot read folder
        if username:
            passwords = folder / "passwords"
            subprocess.run(["mosquitto_passwd", "-c", "-b", passwords, username, password or ""], check=True,
                           capture_output=True)
            passwords.chmod(0o600)
            lines.append(f"password_file {passwords}")
        if self.tls:
            make_certificates(folder / "certs")
            lines += [f"cafile {self.ca_file}", f"certfile {folder / 'certs/server.crt'}",
                      f"keyfile {folder / 'certs/server.key'}",
                      f"require_certificate {'true' if require_certificate else 'false'}"]
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def ca_file(self) -> Path:
        return self.folder / "certs/ca.crt"

    @property
    def client_cert(self) -> tuple[Path, Path]:
        return self.folder / "certs/client.crt", self.folder / "certs/client.key"

    def settings(self, **overrides: Any) -> MqttSettings:
        """MqttSettings for this broker: its port, credentials (a password file) and TLS files."""
        values: dict[str, Any] = {"host": HOST, "port": self.port, "username": self.username}
        if self.password is not None:
            secret = self.folder / "client-password"
            secret.write_text(self.password + "\n")
            values["password_file"] = secret
        if self.tls:
            cert, key = self.client_cert
            values["tls"] = TlsSettings(ca_file=self.ca_file, cert_file=cert, key_file=key)
        return MqttSettings(**(values | overrides))

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until its port accepts connections."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log()}") from None
                time.sleep(0.02)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll ``predicate()`` every 20 ms until it is true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A plain broker (anonymous, no TLS) running for one test."""
    with Broker(tmp_path / "broker") as running:
        yield running


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retained: bool
    qos: int
    user_properties: dict[str, str] = field(default_factory=dict)
    received_at: float = field(default_factory=time.time)  # Unix seconds, for latency measurements

    @property
    def text(self) -> str:
        return self.payload.decode()

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client subscribed to ``topics`` that records every message, thread-safe.

    ``persistent=True``: an MQTT 5 session the broker keeps while the subscriber is away (and, with a
    ``persistence=True`` broker, across broker restarts), so QoS 1 messages published meanwhile still arrive.
    paho reconnects it on its own.
    """

    def __init__(self, broker: Broker, topics: str | list[str] = "#", *, client_id: str = "test-subscriber",
                 persistent: bool = False, qos: int = 1):
        self.broker = broker
        self.topics = [topics] if isinstance(topics, str) else topics
        self.qos = qos
        self.persistent = persistent
        self.received: list[Received] = []
        self._cond = threading.Condition()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self._client.reconnect_delay_set(0.1, 0.5)
        if broker.username:
            self._client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            cert, key = broker.client_cert
            self._client.tls_set(ca_certs=str(broker.ca_file), certfile=str(cert), keyfile=str(key))
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._subscribed = False

    def start(self, timeout: float = 10.0) -> Subscriber:
        """Connect and wait until the subscription is acknowledged."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600 if self.persistent else 0
        self._client.connect(HOST, self.broker.port, keepalive=10, clean_start=not self.persistent,
                             properties=properties)
        self._client.loop_start()
        self.wait_for(lambda: self._subscribed, timeout, "the subscription")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason: Any,
                    properties: Any) -> None:
        if not reason.is_failure and not flags.session_present:  # a kept session keeps its subscriptions
            client.subscribe([(topic, self.qos) for topic in self.topics])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        with self._cond:
            self._subscribed = True
            self._cond.notify_all()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        received = Received(message.topic, message.payload, bool(message.retain), message.qos,
                            dict(getattr(message.properties, "UserProperty", [])))
        with self._cond:
            self.received.append(received)
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
                user_properties: dict[str, str] | None = None, timeout: float = 5.0) -> None:
        """Publish from this client (e.g. a config push, with MQTT 5 user properties) and wait until sent."""
        properties = Properties(PacketTypes.PUBLISH)
        if user_properties:
            properties.UserProperty = list(user_properties.items())
        self._client.publish(topic, payload, qos, retain, properties).wait_for_publish(timeout)

    def messages(self, topic: str | None = None) -> list[Received]:
        """What arrived (on ``topic``, or on any), in arrival order."""
        with self._cond:
            return [m for m in self.received if topic is None or m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.messages(topic)]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition") -> None:
        """Wait until ``predicate()`` is true (checked on every message, and every 50 ms); AssertionError after
        ``timeout``, saying what was received."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                if time.monotonic() > deadline:
                    topics = sorted({m.topic for m in self.received})
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                         f"{len(self.received)} messages received, on {topics}")
                self._cond.wait(0.05)
