"""The device side of remote config: pushes received over MQTT, checked, applied live, answered, persisted.

The config in force is the config file with the persisted pushes' patches applied in order (``effective``):
at start, on SIGHUP (the file read again, the patches applied again), and after each push. A push goes
through, in order, and stops at the first refusal, which is answered on ``P/config/result`` with each error
naming its key path:

1. on the network thread: a retained push is ignored; the push is queued for the main loop (at most
   MAX_PENDING; an oversized payload is queued without its bytes);
2. on the main loop: the size, the JSON or YAML shape (parsed safely and bounded, so that even a refused
   push is answered with its id), the signature (when ``hmac_key_file`` is set), the version (greater than the last applied) and the id (not applied before); no inline secret; no key that
   only the file may set (FILE_ONLY);
3. the patch is merged (RFC 7396) with the persisted ones onto the file config, and the whole validated with
   the config file's own models; pushed paths must resolve inside the allowed folders; a ``model.url`` is
   downloaded (verified by its hash) while the streams go on; the result is checked as ``edged run`` would;
4. the new state is written to a temp file in ``state_dir`` (an unwritable dir refuses the push here), the
   daemon applies the config (``Daemon.apply``: rolled back whole on failure), and the state file is renamed
   into place. ``P/config/state`` (retained) then carries the effective config.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from edged.config import Config, ConfigError, validate
from edged.demo import demo_model_path
from edged.messages import config_result_message, config_state_message
from edged.mqtt import MqttClient
from edged.preflight import check_runtime
from edged.remote.checks import inline_secrets, paths_outside
from edged.remote.download import DownloadError, fetch_model
from edged.remote.patch import changed_paths, merge_patch
from edged.remote.push import SIGNATURE_PROPERTY, PushRejected, parse_push, read_key, verify
from edged.remote.store import RemoteState, StateError, StateStore

log = logging.getLogger("edged.remote")

MAX_PENDING = 8  # pushes waiting for the main loop; more are refused at once
# Keys a push may not change: where pushes are kept and what authenticates them belong to the device's file,
# and a push turning remote config off would leave the device unreachable until someone edits that file.
FILE_ONLY = ("remote_config.enabled", "remote_config.state_dir", "remote_config.hmac_key_file")
T = TypeVar("T")


class Host(Protocol):
    """What remote config asks of the daemon."""

    config: Config  # in force
    mqtt: MqttClient | None

    def apply(self, new: Config, cause: str) -> list[str]:
        """Change the running daemon into ``new``; the errors if it was refused (and nothing changed)."""

    def event(self, kind: str, detail: str, **fields: Any) -> None: ...

    def while_serving(self, work: Callable[[], T], what: str) -> T | None:
        """Run ``work`` beside the running streams; None if a stop was requested meanwhile."""


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes  # empty when the payload was too big to keep
    size: int
    signature: str | None


class RemoteConfig:
    def __init__(self, host: Host, config_file: Path | None):
        self.host = host
        self.config_file = config_file
        self.base_dir = config_file.resolve().parent if config_file is not None else Path.cwd()
        self.file_config: Config | None = None
        self.store: StateStore | None = None
        self.mqtt: MqttClient | None = None  # the connection subscribed to the push topics
        self._filters: set[str] = set()
        self._key: bytes | None = None
        self._queue: deque[Received] = deque()
        self._lock = threading.Lock()
        self._applying: RemoteState | None = None  # a push's state while the daemon applies it, not yet persisted

    # ---------------------------------------------------------------- the config in force
    def effective(self, file_config: Config, *, starting: bool) -> Config:
        """``file_config`` with the persisted patches applied. Patches that no longer make a valid config
        (the file changed under them, a model file went) are set aside with an event, never fatal."""
        self.file_config = file_config
        state_dir = file_config.remote_config.state_dir
        if self.store is None or self.store.path.parent != state_dir:
            self.store = StateStore(state_dir)
            if problem := self.store.load():
                self._set_aside(problem)
        config = self._resolve(file_config, starting=starting)  # ConfigError: the file itself is at fault
        if self.store.state.patches:
            try:
                config = self._resolve(self._merged(self.store.state), starting=starting)
                log.info("remote config: persisted pushes applied over %s (version %s)",
                         self.config_file or "the demo config", self.store.state.version)
            except (ConfigError, DownloadError) as exc:
                errors = exc.errors if isinstance(exc, ConfigError) else [str(exc)]
                self._set_aside(self.store.set_aside(f"no longer make a valid config ({'; '.join(errors)})"))
        return config

    def _merged(self, state: RemoteState) -> Config:
        """Validated, not yet resolved: the file config with ``state``'s patches applied in order."""
        assert self.file_config is not None
        data = self.file_config.plain()
        for patch in state.patches:
            data = merge_patch(data, patch)
        try:
            return validate(data, "config", self.base_dir)
        except ConfigError as exc:  # "config: model.iou: reason" -> "config.model.iou: reason"
            raise ConfigError([e.replace("config: ", "config.", 1) for e in exc.errors]) from None

    def _resolve(self, config: Config, *, starting: bool) -> Config:
        """``config`` with its ``model.url`` fetched (``model.path`` then names the verified file), checked as
        ``edged run`` checks its config (ConfigError) before it is used."""
        model = config.model
        if model.url is not None:
            assert model.sha256 is not None
            state_dir = config.remote_config.state_dir

            def fetch() -> Path:
                return fetch_model(model.url, model.sha256, state_dir)  # type: ignore[arg-type]

            path = fetch() if starting else self.host.while_serving(fetch, "downloading the model")
            if path is None:
                raise DownloadError("stopping: the model download was abandoned")
            config = config.model_copy(deep=True)
            config.model.path = path
        check_runtime(config, "config")
        return config

    def _set_aside(self, why: str) -> None:
        log.warning("remote config: %s", why)
        self.host.event("config_rejected", why.rstrip(".") + ".", errors=[why])

    # ---------------------------------------------------------------- MQTT
    def attach(self) -> None:
        """Subscribe the daemon's connection to the push topics the config in force names (none when remote
        config is off), read the signing key (ConfigError if it cannot be), and publish the config state.
        The daemon calls it again after every change of config or connection."""
        mqtt, config = self.host.mqtt, self.host.config
        assert mqtt is not None
        settings = config.remote_config
        filters: set[str] = set()
        if settings.enabled:
            filters = {mqtt.topic("config/set"), mqtt.fleet_topic("fleet/config/set"),
                       *(mqtt.fleet_topic(f"group/{group}/config/set") for group in settings.groups)}
        if mqtt is self.mqtt:
            for stale in self._filters - filters:
                mqtt.unsubscribe(stale)
        for topic_filter in filters - (self._filters if mqtt is self.mqtt else set()):
            mqtt.subscribe(topic_filter, self._on_message)
        self.mqtt, self._filters = mqtt, filters
        self._key = read_key(settings.hmac_key_file) if settings.hmac_key_file is not None else None
        if self._key is not None and config.mqtt.protocol != "5":
            log.warning("remote config: hmac_key_file is set but MQTT 3.1.1 carries no signature: every push "
                        "will be refused (use mqtt.protocol 5)")
        self.publish_state()

    def publish_state(self) -> None:
        if self.mqtt is None or self.store is None:
            return
        config = self.host.config
        state = self._applying or self.store.state  # while a push is applied, its config is the one in force
        message = config_state_message(config.device_id, state.version, config.effective())
        self.mqtt.set_retained(self.mqtt.topic("config/state"), message)

    def _on_message(self, topic: str, payload: bytes, retained: bool, properties: dict[str, str]) -> None:
        """On the network thread: keep it short."""
        if retained:
            log.info("remote config: retained push on %s ignored (a retained command would replay on every "
                     "reconnect)", topic)
            return
        keep = payload if len(payload) <= self.host.config.remote_config.max_payload_kb * 1024 else b""
        with self._lock:
            busy = len(self._queue) >= MAX_PENDING
            if not busy:
                self._queue.append(Received(topic, keep, len(payload), properties.get(SIGNATURE_PROPERTY)))
        if busy:
            self._answer(None, None, [f"busy: {MAX_PENDING} pushes are waiting; send it again later"], topic)

    # ---------------------------------------------------------------- pushes (main loop)
    def handle_pending(self) -> None:
        """Apply the pushes received so far, one at a time, in the order they came. One that fails in a way
        nothing here foresaw is refused and logged with its traceback: it never stops the daemon."""
        while True:
            with self._lock:
                if not self._queue:
                    return
                received = self._queue.popleft()
            try:
                self._handle(received)
            except Exception as exc:
                log.exception("remote config: a push on %s failed", received.topic)
                self._refuse(None, None, [f"internal error: {type(exc).__name__}: {exc}"], received.topic)

    def _handle(self, received: Received) -> None:
        assert self.store is not None
        current = self.host.config
        push_id: str | None = None
        version: int | None = None
        try:
            max_bytes = current.remote_config.max_payload_kb * 1024
            if received.size > max_bytes:  # before anything else: nothing of it is parsed
                raise PushRejected([f"payload of {received.size} bytes; remote_config.max_payload_kb allows "
                                    f"{max_bytes}"])
            push = parse_push(received.payload, max_bytes)  # bounded and safe: first, so the answer names the push
            push_id, version = push.id, push.version
            if self._key is not None:
                verify(received.payload, received.signature, self._key)
            self._check_fresh(push.id, push.version)
            refused = inline_secrets(push.patch) + [f"{path}: set in the config file on the device only"
                                                    for path in changed_paths(push.patch) if path in FILE_ONLY]
            if refused:
                raise PushRejected(refused)
            state = self.store.state.with_push(push.id, push.version, push.patch)
            merged = self._merged(state)
            outside = paths_outside(push.patch, merged, current, self._roots())
            if outside:
                raise PushRejected(outside)
            new = self._resolve(merged, starting=False)
            pending = self.store.prepare(state)
        except PushRejected as exc:
            self._refuse(push_id if push_id is not None else exc.push_id,
                         version if version is not None else exc.version, exc.errors, received.topic)
            return
        except (ConfigError, DownloadError, StateError) as exc:
            self._refuse(push_id, version, exc.errors if isinstance(exc, ConfigError) else [str(exc)], received.topic)
            return
        cause = f"Config push {push_id} (version {version}, {received.topic})"
        self._applying = state
        try:  # the daemon says config_applied or config_rejected itself, and publishes the state once applied
            errors = self.host.apply(new, cause)
        finally:
            self._applying = None
        if not errors:
            try:
                pending.commit()
            except StateError as exc:
                errors = [str(exc)]
                self.host.apply(current, f"{cause}: rolled back, as it could not be persisted")
        else:
            pending.discard()
        log.info("remote config: push %s (version %s) %s", push_id, version,
                 "applied" if not errors else "rejected: " + "; ".join(errors))
        self._answer(push_id, version, errors, received.topic)

    def _check_fresh(self, push_id: str, version: int) -> None:
        assert self.store is not None
        last = self.store.state.version
        if last is not None and version <= last:
            raise PushRejected([f"version: {version} is stale: not greater than the last applied version {last}"],
                               push_id, version)
        if push_id in self.store.state.ids:
            raise PushRejected([f"id: {push_id} was applied already"], push_id, version)

    def _roots(self) -> list[Path]:
        """Where pushed paths may point: the config file's folder, the bundled models' folder, state_dir."""
        assert self.file_config is not None
        return [self.base_dir, demo_model_path().parent, self.file_config.remote_config.state_dir]

    def _refuse(self, push_id: str | None, version: int | None, errors: list[str], topic: str) -> None:
        for line in errors:
            log.warning("remote config: push %s refused: %s", push_id, line)
        self.host.event("config_rejected", f"Config push {push_id} ({topic}) refused; the running config stays.",
                        errors=errors)
        self._answer(push_id, version, errors, topic)

    def _answer(self, push_id: str | None, version: int | None, errors: list[str], topic: str) -> None:
        mqtt = self.host.mqtt
        if mqtt is not None:
            mqtt.publish(mqtt.topic("config/result"),
                         config_result_message(self.host.config.device_id, push_id, not errors, errors, version))
