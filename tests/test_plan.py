"""Plan.between: which parts of the running daemon a config change touches (no threads, no daemon)."""

from __future__ import annotations

from typing import Any

from edged.config import Config, validate
from edged.plan import Plan

BASE: dict[str, Any] = {"device_id": "d", "streams": [{"name": "a", "source": "a.mp4"},
                                                      {"name": "b", "source": "b.mp4", "max_fps": 10}]}


def config(**changes: Any) -> Config:
    return validate({**BASE, **changes})


def test_an_unchanged_config_touches_nothing() -> None:
    plan = Plan.between(config(), config())
    assert plan.empty and plan.describe() == "nothing changed"


def test_model_and_inference_changes_rebuild_the_session_thresholds_do_not() -> None:
    assert Plan.between(config(), config(model={"input_size": 320})).rebuild_session
    assert Plan.between(config(), config(inference={"threads": 1})).rebuild_session
    assert Plan.between(config(), config(model={"precision": "int8"})).rebuild_session
    thresholds = Plan.between(config(), config(model={"confidence": 0.6, "iou": 0.4, "classes": ["x"]}))
    assert thresholds.thresholds and not thresholds.rebuild_session
    assert thresholds.describe() == "thresholds set"


def test_only_the_streams_that_changed_are_touched() -> None:
    new = config(streams=[{"name": "b", "source": "b.mp4", "max_fps": 10, "loop": True},
                          {"name": "c", "source": "c.mp4"}])
    plan = Plan.between(config(), new)
    assert (plan.streams_added, plan.streams_removed, plan.streams_restarted) == (("c",), ("a",), ("b",))
    assert not plan.rebuild_session and not plan.reconnect_mqtt


def test_a_new_max_fps_alone_is_set_in_place() -> None:
    plan = Plan.between(config(), config(streams=[BASE["streams"][0], {**BASE["streams"][1], "max_fps": 5}]))
    assert plan.streams_retuned == ("b",) and not plan.streams_restarted
    assert plan.describe() == "max_fps set on: b"


def test_mqtt_and_device_id_reconnect_other_sections_apply_in_place() -> None:
    assert Plan.between(config(), config(mqtt={"port": 1884})).reconnect_mqtt
    assert Plan.between(config(), config(device_id="e")).reconnect_mqtt
    plan = Plan.between(config(), config(health={"interval_s": 2}, resources={"interval_s": 2}))
    assert plan.in_place == ("resources", "health") and not plan.reconnect_mqtt and not plan.rebuild_session


def test_tracking_or_live_view_changes_restart_every_stream() -> None:
    for changed in (config(tracking={"min_hits": 2}), config(foxglove={"server": {"enabled": True}})):
        plan = Plan.between(config(), changed)
        assert plan.streams_restarted == ("a", "b") and plan.streams_retuned == ()
    assert Plan.between(config(), config(foxglove={"max_fps": 2})).in_place == ("foxglove",)
