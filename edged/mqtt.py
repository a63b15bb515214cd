"""MQTT (contract: DESIGN.md 1.3): paho-mqtt 2.x behind a small, thread-safe API. No other module sees paho.

Every message goes through our own bounded outbox, and one sender thread hands them to paho in order,
at most a small window of them unacknowledged. On every (re)connect, whatever paho still holds
unacknowledged is taken back from it and sent again first, in the original order, after ``online`` and the
retained state. So the outbox is the one source of truth: QoS 1 messages survive broker restarts and network
outages (none lost within ``queue_limit``), and everything goes out in the order it was published.
One client object lives as long as the daemon; paho reconnects it with backoff. Needs paho-mqtt >= 2.2
(``Client.drop_out_messages``).

Two devices with the same device_id (cloned SD cards) take the connection from each other on every reconnect.
A takeover is recognised from the broker's DISCONNECT "Session taken over" (MQTT 5), or else (MQTT 3.1.1, and
brokers such as mosquitto < 2.0.15 that just close the socket) from connections the broker closes soon after
accepting them, several in a row. It is logged once per episode, and reconnects back off far more slowly until a
connection stays up (TAKEOVER_DELAY_S, STABLE_S).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edged.config import ConfigError, MqttSettings, TlsSettings, password
from edged.errors import EdgedError

log = logging.getLogger("edged.mqtt")

WINDOW = 20  # messages handed to paho and not yet acknowledged, at most (or the broker's Receive Maximum)
SESSION_EXPIRY_S = 3600  # MQTT 5: how long the broker keeps our session (subscriptions, messages for us)
RECONNECT_DELAY_S = (1, 30)  # paho's backoff between connection attempts: doubles from 1 s up to 30 s
# Another client with our device_id keeps taking the connection over: reconnect after 10 s, then 20, 40, ... 240 s.
TAKEOVER_DELAY_S = (10, 240)
# No "Session taken over" from the broker: QUICK_DROPS connections in a row that it closed within QUICK_S of
# accepting them are takeovers. QUICK_S is above TAKEOVER_DELAY_S[0] so that the other client, whose connections
# last as long as our first back-off, recognises the clash too.
QUICK_S = 30
QUICK_DROPS = 3
# A connection up this long ends a takeover episode. While two clients fight, each connection lasts as long as
# the other's back-off, so this must be longer than TAKEOVER_DELAY_S[1].
STABLE_S = 300
SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason code

Payload = dict[str, Any] | str | bytes
MessageCallback = Callable[[str, bytes, bool, dict[str, str]], None]  # topic, payload, retained, user properties


@dataclass(slots=True)
class _Message:
    seq: int  # publish order; -1 for what a (re)connect sends first
    topic: str
    payload: bytes
    qos: int
    retain: bool
    droppable: bool


def _encode(payload: Payload) -> bytes:
    if isinstance(payload, dict):
        return json.dumps(payload, separators=(",", ":")).encode()
    return payload.encode() if isinstance(payload, str) else payload


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """The TLS context, or ConfigError naming the file that cannot be read or used."""
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        try:
            if path is not None:
                path.read_bytes()
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read mqtt.tls.{key}: {exc.strerror}"]) from None
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)  # None: the system's CAs
    except ssl.SSLError as exc:
        raise ConfigError([f"{tls.ca_file}: mqtt.tls.ca_file holds no usable CA certificate ({exc.reason})"]) from None
    if tls.cert_file is not None:
        try:
            # An empty passphrase: an encrypted key fails here instead of OpenSSL prompting on a terminal.
            context.load_cert_chain(tls.cert_file, tls.key_file, password=b"")
        except ssl.SSLError as exc:
            raise ConfigError([f"{tls.cert_file}: mqtt.tls.cert_file and key_file ({tls.key_file}) are not a "
                               f"usable certificate and key ({exc.reason or exc}; a key with a passphrase is not "
                               f"supported)"]) from None
    return context


def _set_credentials(client: paho.Client, settings: MqttSettings) -> None:
    """The username, password and TLS of ``settings`` on ``client``; ConfigError naming a file that cannot be used."""
    secret = password(settings)
    if settings.username is not None or secret is not None:
        client.username_pw_set(settings.username, secret)
    if settings.tls.ca_file is not None or settings.tls.cert_file is not None:
        client.tls_set_context(tls_context(settings.tls))


class MqttClient:
    """One device's connection: ``start()``, ``publish()`` from any thread, ``stop()``."""

    def __init__(self, settings: MqttSettings, device_id: str, *, announce: bool = True):
        """``announce``: this client is the device (last will, ``online``/``offline`` on ``P/status``);
        False for a plain observer such as ``edged watch``. Raises ConfigError, naming the file, when the
        password or a TLS file cannot be read or used."""
        self.settings = settings
        self.device_id = device_id
        self.announce = announce
        self._v5 = settings.protocol == "5"
        self._where = f"{settings.host}:{settings.port} (MQTT {settings.protocol})"
        self._status = self.topic("status")
        self._subscribe_qos = max(settings.qos, 1)  # commands must reach us, even when sent while we were away

        self._cond = threading.Condition(threading.Lock())
        # Everything below is guarded by _cond. Queued messages wait in two deques (so that the oldest
        # droppable one can go first when full) and leave in publish order (seq); _inflight holds what paho has
        # been handed and not yet acknowledged, by message id.
        self._kept: deque[_Message] = deque()
        self._droppable: deque[_Message] = deque()
        self._droppable_limit: int | None = None  # under memory pressure, the most detections held queued
        self._inflight: dict[int, _Message] = {}
        self._seq = itertools.count()
        self._handing = 0  # taken from the deques by the sender, not yet in _inflight
        # paho's callbacks only post events (a method and its argument); the sender applies them after registering
        # what it handed to paho, so an acknowledgement can never arrive before its message is known.
        self._events: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._retained: dict[str, bytes] = {}
        self._subscriptions: dict[str, MessageCallback] = {}
        self._up = False
        self._window = WINDOW
        self._ever_up = False
        self._lost_at: float | None = None
        self._dropped = 0
        self._drop_logged = False
        self._reconnects = 0
        self._takeovers = 0
        self._closing = False
        self._sender: threading.Thread | None = None
        # Touched by paho's network thread only: whether connected, and what was logged about failed attempts;
        # for takeovers: when the connection was accepted, quick drops in a row, the back-off (None: no episode).
        self._session = False
        self._failure_logged = False
        self._refused: str | None = None
        self._accepted_at = 0.0
        self._quick_drops = 0
        self._takeover_delay: int | None = None

        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=device_id,
                             protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
                             clean_session=None if self._v5 else False)
        if announce:
            client.will_set(self._status, "offline", qos=1, retain=True)
        client.reconnect_delay_set(*RECONNECT_DELAY_S)
        client.max_inflight_messages_set(0)  # no limit in paho: the sender's window is the limit
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        # Here, not in start(): a connection that cannot even be set up is refused before it replaces another.
        _set_credentials(client, settings)
        self._client = client

    # -- topics -----------------------------------------------------------------------------------------------

    def topic(self, suffix: str) -> str:
        """``<prefix>/<device_id>/<suffix>``"""
        return f"{self.settings.topic_prefix}/{self.device_id}/{suffix}"

    def fleet_topic(self, suffix: str) -> str:
        """``<prefix>/<suffix>``: topics shared by many devices (fleet and group config pushes)."""
        return f"{self.settings.topic_prefix}/{suffix}"

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; a broker that is down is retried, never an error here."""
        s = self.settings
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        # MQTT 5: a clean session when the daemon starts, the same session on every reconnect.
        self._client.connect_async(s.host, s.port, s.keepalive_s, properties=properties)
        self._client.loop_start()
        self._sender = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._sender.start()

    def stop(self, flush_timeout_s: float = 3.0, *, farewell: bool = True) -> None:
        """Send what is queued (for up to ``flush_timeout_s``), then ``offline`` (unless not ``farewell``: the
        connection is being replaced), then disconnect cleanly (no will)."""
        if self._sender is None:
            return
        deadline = time.monotonic() + flush_timeout_s
        with self._cond:
            self._cond.wait_for(lambda: not self._up or not self._depth(), flush_timeout_s)
            unsent = self._depth()
            self._closing, self._up = True, False
            self._cond.notify_all()
        self._sender.join()
        if unsent:
            log.warning("stopping with %d messages not sent", unsent)
        if self.announce and farewell and self._client.is_connected():
            info = self._client.publish(self._status, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.5))
            except RuntimeError:  # the connection went just now: the broker sends the will instead
                pass
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = 0  # a clean stop ends the session
        self._client.disconnect(properties=properties)
        self._client.loop_stop()
        self._sender = None
        log.info("disconnected from %s", self._where)

    # -- publishing -------------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: Payload, *, qos: int | None = None, retain: bool = False,
                droppable: bool = False) -> None:
        """Queue a message (a dict goes out as compact JSON); thread-safe, never blocks on the network.

        While the outbox is full (``queue_limit``), the oldest droppable message (detections) makes room
        first, else the oldest message; every drop is counted.
        """
        qos = self.settings.qos if qos is None else qos
        if not topic or "+" in topic or "#" in topic or qos not in (0, 1, 2):
            raise ValueError(f"cannot publish on topic {topic!r} with QoS {qos}")
        data = _encode(payload)
        with self._cond:
            self._enqueue(topic, data, qos, retain, droppable)

    def set_retained(self, topic: str, payload: Payload) -> None:
        """Publish retained state (health, config state) and send it again on every reconnect.

        While disconnected only the newest value is kept, and sent on reconnect.
        """
        data = _encode(payload)
        with self._cond:
            self._retained[topic] = data
            if self._up:
                self._enqueue(topic, data, self.settings.qos, True, False)

    def clear_retained(self, topic: str) -> None:
        """Remove retained state: an empty retained message (how MQTT deletes it), and no more re-sending."""
        with self._cond:
            self._retained.pop(topic, None)
            self._enqueue(topic, b"", self.settings.qos, True, False)

    def limit_droppable(self, limit: int | None) -> None:
        """Hold at most ``limit`` droppable messages (detections) queued from now on, the oldest dropped first
        and counted in ``dropped``; None: ``queue_limit`` alone bounds them again. The resource manager's
        way to shed memory under memory pressure while the broker is away."""
        with self._cond:
            self._droppable_limit = limit
            self._shed()

    def subscribe(self, topic_filter: str, callback: MessageCallback) -> None:
        """Call ``callback(topic, payload, retained, user_properties)`` for each message matching the filter.

        Subscribed again on every reconnect. Callbacks run on the network thread: keep them short.
        """
        with self._cond:
            self._subscriptions[topic_filter] = callback
        if self._client.is_connected():  # else _on_connect subscribes
            self._client.subscribe(topic_filter, **self._subscribe_options())

    def hand_over(self, successor: "MqttClient", *, farewell: bool = False) -> None:
        """Stop this client (saying ``offline`` only with ``farewell``: the device id changes), and give
        ``successor`` (not started yet) every message not yet acknowledged, in order, and the drop count: a
        changed connection loses nothing that was queued."""
        self.stop(0.0, farewell=farewell)
        with self._cond:
            unacknowledged = sorted([*self._inflight.values(), *self._kept, *self._droppable], key=lambda m: m.seq)
            self._inflight.clear()
            self._kept.clear()
            self._droppable.clear()
            dropped = self._dropped
        same_topics = successor.topic("") == self.topic("")
        with successor._cond:
            for message in unacknowledged:
                successor._enqueue(message.topic, message.payload, message.qos, message.retain, message.droppable)
            successor._dropped += dropped
            if same_topics:  # the retained state (health, config state, counts...) goes on being re-sent
                successor._retained.update(self._retained)
        if unacknowledged:
            log.info("handing %d queued messages over to the new connection", len(unacknowledged))

    def _subscribe_options(self) -> dict[str, Any]:
        """MQTT 5: "retain as published", so that a callback can tell a retained message even when it arrives
        live (brokers clear the flag for live deliveries otherwise): a retained command is ignored."""
        if self._v5:
            return {"options": SubscribeOptions(qos=self._subscribe_qos, retainAsPublished=True)}
        return {"qos": self._subscribe_qos}

    def unsubscribe(self, topic_filter: str) -> None:
        with self._cond:
            self._subscriptions.pop(topic_filter, None)
        if self._client.is_connected():
            self._client.unsubscribe(topic_filter)

    # -- state ------------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._up

    @property
    def queue_depth(self) -> int:
        """Messages not yet acknowledged: queued, or handed to paho and in flight."""
        with self._cond:
            return self._depth()

    @property
    def dropped(self) -> int:
        return self._dropped

    def stats(self) -> dict[str, Any]:
        """For the health message."""
        with self._cond:
            return {"connected": self._up, "queue_depth": self._depth(), "queue_limit": self.settings.queue_limit,
                    "dropped": self._dropped, "reconnects": self._reconnects, "takeovers": self._takeovers}

    # -- the outbox (callers hold _cond) ----------------------------------------------------------------------

    def _depth(self) -> int:
        return len(self._kept) + len(self._droppable) + self._handing + len(self._inflight)

    def _enqueue(self, topic: str, data: bytes, qos: int, retain: bool, droppable: bool) -> None:
        if self._depth() >= self.settings.queue_limit:
            self._dropped += 1
            if not self._drop_logged:
                log.warning("outbox full (%d messages): dropping the oldest %s", self.settings.queue_limit,
                            "detections" if self._droppable else "messages")
                self._drop_logged = True
            victims = self._droppable or self._kept
            if not victims:  # everything held is in flight already: the new message is the one to go
                return
            victims.popleft()
        (self._droppable if droppable else self._kept).append(
            _Message(next(self._seq), topic, data, qos, retain, droppable))
        if droppable:
            self._shed()
        self._cond.notify_all()

    def _shed(self) -> None:
        """Drop the oldest queued droppable messages beyond ``_droppable_limit``, counting them."""
        limit = self._droppable_limit
        while limit is not None and len(self._droppable) > limit:
            self._droppable.popleft()
            self._dropped += 1

    def _next(self) -> _Message:
        kept, droppable = self._kept, self._droppable
        return kept.popleft() if kept and (not droppable or kept[0].seq < droppable[0].seq) else droppable.popleft()

    def _run(self) -> None:
        """The sender thread: applies paho's events, hands queued messages to paho in order."""
        with self._cond:
            while True:
                if self._events:
                    while self._events:
                        apply, value = self._events.popleft()
                        apply(value)
                    self._cond.notify_all()
                if self._closing:
                    return
                room = self._window - len(self._inflight) if self._up else 0
                batch = [self._next() for _ in range(min(room, len(self._kept) + len(self._droppable)))]
                if not batch:
                    self._cond.wait()
                    continue
                self._handing = len(batch)
                self._cond.release()  # never call paho holding _cond: paho's callbacks take it
                try:
                    handed = [(self._client.publish(m.topic, m.payload, m.qos, m.retain).mid, m) for m in batch]
                finally:
                    self._cond.acquire()
                    self._handing = 0
                self._inflight.update(handed)

    def _acked(self, ack: tuple[int, ReasonCode]) -> None:
        mid, reason = ack
        message = self._inflight.pop(mid, None)
        if message is not None and reason.is_failure:
            log.warning("broker refused a message on %s: %s", message.topic, reason)

    def _connected(self, window: int) -> None:
        # paho's unacknowledged messages were dropped in _on_connect: send them again first, in order.
        for message in reversed(self._inflight.values()):
            (self._droppable if message.droppable else self._kept).appendleft(message)
        self._inflight.clear()
        # Status and retained state go first, in their newest version; older queued copies are superseded.
        renewed = {self._status: b"online", **self._retained} if self.announce else dict(self._retained)
        self._kept = deque(m for m in self._kept if not (m.retain and m.topic in renewed))
        self._droppable = deque(m for m in self._droppable if not (m.retain and m.topic in renewed))
        queued = len(self._kept) + len(self._droppable)
        self._kept.extendleft(_Message(-1, t, data, 1 if t == self._status else self.settings.qos, True, False)
                              for t, data in reversed(renewed.items()))
        sending = f"; sending {queued} queued" if queued else ""
        if self._ever_up:
            self._reconnects += 1
            down_s = time.monotonic() - self._lost_at if self._lost_at is not None else 0.0
            log.info("reconnected to %s after %.1f s%s", self._where, down_s, sending)
        else:
            log.info("connected to %s%s", self._where, sending)
        self._up, self._ever_up, self._window, self._drop_logged = True, True, window, False

    def _disconnected(self, reason: str | None) -> None:
        """``reason`` None: another client took the connection over, and that is logged already."""
        self._up, self._lost_at = False, time.monotonic()
        if reason is not None:
            log.warning("connection to %s lost (%s); queueing up to %d messages", self._where, reason,
                        self.settings.queue_limit)

    # -- paho callbacks (network thread) ----------------------------------------------------------------------

    def _post(self, apply: Callable[[Any], None], value: Any) -> None:
        with self._cond:
            self._events.append((apply, value))
            self._cond.notify_all()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:  # bad credentials, not authorised, ...: a configuration problem; paho retries
            if str(reason) != self._refused:
                log.error("broker %s refused the connection: %s", self._where, reason)
            self._refused, self._failure_logged = str(reason), True
            return
        self._session, self._refused, self._failure_logged = True, None, False
        self._accepted_at = time.monotonic()
        client.drop_out_messages()  # the sender re-sends them from _inflight, in order, after status and state
        with self._cond:
            filters = list(self._subscriptions)
        for topic_filter in filters:
            client.subscribe(topic_filter, **self._subscribe_options())
        self._post(self._connected, min(WINDOW, getattr(properties, "ReceiveMaximum", WINDOW)))

    def _attempt_failed(self, reason: object) -> None:
        """Once per outage at warning level (then at debug): a connection attempt failed; paho retries."""
        self._quick_drops = 0  # the broker or the network is down: not a takeover
        if self._failure_logged:
            log.debug("connecting to %s failed (%s)", self._where, reason)
        else:
            log.warning("cannot connect to broker %s (%s); queueing up to %d messages, retrying", self._where,
                        reason, self.settings.queue_limit)
            self._failure_logged = True

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._attempt_failed(sys.exc_info()[1] or "connection failed")  # paho calls this handling the OSError

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: paho.DisconnectFlags, reason: ReasonCode,
                       properties: Properties | None) -> None:
        cause = str(reason)
        if cause == "Unspecified error" and not flags.is_disconnect_packet_from_server:
            cause = "connection closed"  # what paho reports for a dropped socket
        if self._session:  # the reconnect attempts that fail now are part of this outage: not logged again
            self._session, self._failure_logged = False, True
            takeovers = self._takeovers_seen(flags, reason)
            if takeovers:
                self._back_off(takeovers)
            else:
                client.reconnect_delay_set(*RECONNECT_DELAY_S)
            self._post(self._disconnected, None if takeovers else cause)
        else:  # e.g. the broker wanted a TLS client certificate
            self._attempt_failed(f"{cause} before the broker accepted it")

    def _takeovers_seen(self, flags: paho.DisconnectFlags, reason: ReasonCode) -> int:
        """How many takeovers the end of this connection reveals: 0 or 1, or QUICK_DROPS when a run of quick
        drops is first recognised as takeovers."""
        up_s = time.monotonic() - self._accepted_at
        if up_s >= STABLE_S:
            self._takeover_delay = None
        if flags.is_disconnect_packet_from_server:
            self._quick_drops = 0
            return int(reason.value == SESSION_TAKEN_OVER)
        # paho's reason for a socket the broker closed (a timed-out keepalive is "Keep alive timeout")
        closed = str(reason) == "Unspecified error"
        self._quick_drops = self._quick_drops + 1 if closed and up_s < QUICK_S else 0
        if closed and self._takeover_delay is not None:
            return 1
        return self._quick_drops if self._quick_drops >= QUICK_DROPS else 0

    def _back_off(self, takeovers: int) -> None:
        """Reconnect after the takeover back-off; warn once per episode."""
        with self._cond:
            self._takeovers += takeovers
            total = self._takeovers
        if self._takeover_delay is None:
            self._takeover_delay = TAKEOVER_DELAY_S[0]
            log.warning("another client with device_id %s took over the connection; is device_id unique? "
                        "Broker %s; reconnecting in %d s, backing off up to %d s while takeovers go on",
                        self.device_id, self._where, self._takeover_delay, TAKEOVER_DELAY_S[1])
        else:
            self._takeover_delay = min(self._takeover_delay * 2, TAKEOVER_DELAY_S[1])
            log.info("connection to %s taken over again (%d takeovers); reconnecting in %d s", self._where, total,
                     self._takeover_delay)
        # paho waits min_delay first, and resets its own backoff on every accepted connection: set both ends.
        self._client.reconnect_delay_set(self._takeover_delay, self._takeover_delay)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties | None) -> None:
        self._post(self._acked, (mid, reason))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._cond:
            callbacks = [cb for f, cb in self._subscriptions.items() if paho.topic_matches_sub(f, message.topic)]
        user_properties = dict(getattr(message.properties, "UserProperty", []))
        for callback in callbacks:
            try:
                callback(message.topic, message.payload, bool(message.retain), user_properties)
            except Exception:
                log.exception("handling a message on %s failed", message.topic)


def probe(settings: MqttSettings, client_id: str, timeout_s: float) -> str | None:
    """Try a connection with ``settings`` (credentials and TLS included) as ``client_id``, then close it: None
    if the broker accepted it within ``timeout_s``, else why not. What a config change runs before it gives up
    a working connection."""
    try:
        with ShortConnection(settings, timeout_s, client_id):
            return None
    except (ConfigError, EdgedError) as exc:
        return str(exc)


class ShortConnection:
    """A short-lived connection for a command (``edged config push``): subscribe and publish (with MQTT 5 user
    properties), each acknowledged, and the messages received. Not the device's: no outbox, no reconnects."""

    def __init__(self, settings: MqttSettings, timeout_s: float, client_id: str | None = None):
        self.settings = settings
        self.timeout_s = timeout_s
        self.where = f"{settings.host}:{settings.port} (MQTT {settings.protocol})"
        self._messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._connack: ReasonCode | None = None
        self._connected = threading.Event()
        self._suback: list[ReasonCode] = []
        self._subscribed = threading.Event()
        self._refused_publishes: dict[int, ReasonCode] = {}
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id or f"edged-config-{os.getpid()}",
                             protocol=paho.MQTTv5 if settings.protocol == "5" else paho.MQTTv311)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = lambda _client, _userdata, message: self._messages.put((message.topic, message.payload))
        self._client = client

    def __enter__(self) -> "ShortConnection":
        """Connect and wait for the broker's answer; ConfigError for unusable credentials or TLS files,
        EdgedError when the broker cannot be reached or refuses."""
        s = self.settings
        _set_credentials(self._client, s)
        try:
            self._client.connect(s.host, s.port, s.keepalive_s)
        except OSError as exc:
            raise EdgedError(f"cannot connect to {self.where}: {exc.strerror or exc}") from None
        self._client.loop_start()
        if not self._connected.wait(self.timeout_s):
            self.__exit__()
            raise EdgedError(f"no answer from {self.where} within {self.timeout_s:g} s")
        if self._connack is not None and self._connack.is_failure:
            self.__exit__()
            raise EdgedError(f"{self.where} refused the connection: {self._connack}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(self, topic_filters: list[str]) -> None:
        """Subscribe (QoS 1) and wait until the broker has granted every filter."""
        self._client.subscribe([(topic_filter, 1) for topic_filter in topic_filters])
        if not self._subscribed.wait(self.timeout_s):
            raise EdgedError(f"{self.where} did not acknowledge the subscription within {self.timeout_s:g} s")
        refused = [f"{f} ({code})" for f, code in zip(topic_filters, self._suback) if code.is_failure]
        if refused:
            raise EdgedError(f"{self.where} refused the subscription to {', '.join(refused)}")

    def publish(self, topic: str, payload: bytes, user_properties: dict[str, str]) -> None:
        """Publish (QoS 1, not retained) and wait until the broker has acknowledged it."""
        properties = None
        if user_properties:
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = list(user_properties.items())
        info = self._client.publish(topic, payload, qos=1, retain=False, properties=properties)
        try:
            info.wait_for_publish(self.timeout_s)
        except RuntimeError as exc:  # the connection went
            raise EdgedError(f"cannot publish on {topic}: {exc}") from None
        if not info.is_published():
            raise EdgedError(f"{self.where} did not acknowledge the message on {topic} within {self.timeout_s:g} s")
        refusal = self._refused_publishes.get(info.mid)
        if refusal is not None:
            raise EdgedError(f"{self.where} refused the message on {topic}: {refusal}")

    def receive(self, deadline: float, quiet_s: float | None = None) -> Iterator[tuple[str, bytes]]:
        """(topic, payload) of each message received, until ``deadline`` (time.monotonic()), or until none has
        come for ``quiet_s``."""
        while (wait := deadline - time.monotonic()) > 0:
            try:
                yield self._messages.get(timeout=wait if quiet_s is None else min(wait, quiet_s))
            except queue.Empty:
                if quiet_s is not None:
                    return

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        self._connack = reason
        self._connected.set()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Any) -> None:
        self._suback = reasons
        self._subscribed.set()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        if reason.is_failure:
            self._refused_publishes[mid] = reason
