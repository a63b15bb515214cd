"""What a change of config touches: the running config diffed against a new one, part by part.

A SIGHUP reload, a config push and a resource step all become a new desired config; ``Plan.between``
says which parts of the running daemon must change for it, and the daemon applies exactly those:

- the ONNX Runtime session is rebuilt only when the model or the inference settings change;
- thresholds (``model.confidence``, ``iou``, ``classes``) are set on the running detector;
- a stream is restarted only when its own settings change (a new ``max_fps`` alone is set on the
  running reader), or the tracking settings (each stream's tracker starts again) or the live view's (each stream's
  sink moves to the new one); streams added or removed are started or stopped; the others carry on untouched,
  with their reader, their place in the file, ``seq`` and ``frame_id``;
- the MQTT connection is rebuilt only when ``mqtt`` or ``device_id`` change;
- the live view and recording (``foxglove``) start again with the new settings;
- everything else (health, resources, remote_config) is read where it is used, in place.

A pure function of two configs: tested without threads.
"""

from __future__ import annotations

from dataclasses import dataclass

from edged.config import Config

THRESHOLD_KEYS = ("confidence", "iou", "classes")  # model keys the running detector takes in place
LIVE_STREAM_KEYS = ("max_fps",)  # stream keys the running reader takes in place


@dataclass(frozen=True)
class Plan:
    rebuild_session: bool
    thresholds: bool
    streams_added: tuple[str, ...]
    streams_removed: tuple[str, ...]
    streams_restarted: tuple[str, ...]
    streams_retuned: tuple[str, ...]  # only a LIVE_STREAM_KEYS setting changed
    reconnect_mqtt: bool
    in_place: tuple[str, ...]  # other top-level sections that changed

    @classmethod
    def between(cls, old: Config, new: Config) -> Plan:
        old_model = old.model.model_dump(exclude=set(THRESHOLD_KEYS))
        new_model = new.model.model_dump(exclude=set(THRESHOLD_KEYS))
        old_streams = {s.name: s for s in old.streams}
        new_streams = {s.name: s for s in new.streams}
        # A change of tracking settings starts every stream's tracker again, and a change of the live view
        # (foxglove) gives every stream a sink on the new one: the streams restart.
        restart_all = old.tracking != new.tracking or old.foxglove != new.foxglove
        common = [name for name in new_streams
                  if name in old_streams and (restart_all or new_streams[name] != old_streams[name])]
        retuned = tuple(name for name in common
                        if not restart_all and old_streams[name].model_dump(exclude=set(LIVE_STREAM_KEYS))
                        == new_streams[name].model_dump(exclude=set(LIVE_STREAM_KEYS)))
        handled = {"model", "inference", "streams", "mqtt", "device_id", "tracking"}
        return cls(
            rebuild_session=old_model != new_model or old.inference != new.inference,
            thresholds=any(getattr(old.model, key) != getattr(new.model, key) for key in THRESHOLD_KEYS)
            or (old.tracking.enabled, old.tracking.low) != (new.tracking.enabled, new.tracking.low),
            streams_added=tuple(name for name in new_streams if name not in old_streams),
            streams_removed=tuple(name for name in old_streams if name not in new_streams),
            streams_restarted=tuple(name for name in common if name not in retuned),
            streams_retuned=retuned,
            reconnect_mqtt=old.mqtt != new.mqtt or old.device_id != new.device_id,
            in_place=tuple(key for key in Config.model_fields
                           if key not in handled and getattr(old, key) != getattr(new, key)),
        )

    @property
    def empty(self) -> bool:
        return not self.describe_parts()

    def describe(self) -> str:
        """One line for logs and the ``config_applied`` event."""
        return "; ".join(self.describe_parts()) or "nothing changed"

    def describe_parts(self) -> list[str]:
        parts = []
        if self.rebuild_session:
            parts.append("model session rebuilt")
        if self.thresholds:
            parts.append("thresholds set")
        for label, names in (("streams added", self.streams_added), ("streams removed", self.streams_removed),
                             ("streams restarted", self.streams_restarted),
                             ("max_fps set on", self.streams_retuned)):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        if self.reconnect_mqtt:
            parts.append("MQTT reconnected")
        if self.in_place:
            parts.append(f"applied in place: {', '.join(self.in_place)}")
        return parts
