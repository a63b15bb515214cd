"""The governor: levels, hysteresis, dwell and steps, from fabricated readings and times (no threads,
no clocks, no sleeps)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edged.bench import Variant
from edged.config import ResourceSettings
from edged.ladder import Step
from edged.resources.governor import Governor, LevelChanged, StepChange, fps_cap, level_of, max_fps_halvings
from edged.resources.readings import Readings

# The defaults: warn 70, critical 85, hysteresis 5 °C; memory warn 300, critical 150 MB; PSI 20%;
# cool_down 30 s, step_interval 10 s.
SETTINGS = ResourceSettings()
# fp32@416 > fp16@416 > int8@416 > int8@312 > int8@208: a ladder walked precision first, then size.
LADDER = [Step(Variant(Path("m.onnx"), "cpu", precision, (size, size)))
          for precision, size in [("fp32", 416), ("fp16", 416), ("int8", 416), ("int8", 312), ("int8", 208)]]


def settings(**changes: Any) -> ResourceSettings:
    return ResourceSettings.model_validate({**SETTINGS.model_dump(), **changes})


def temp(t: float, zone: str = "cpu-thermal") -> Readings:
    return Readings(temperatures_c={zone: t})


def governor(config: ResourceSettings = SETTINGS, halvings: int = 3, ladder: list[Step] = LADDER) -> Governor:
    return Governor(config, ladder, halvings)


def levels(decisions: list[Any]) -> list[tuple[str, str]]:
    return [(d.from_, d.to) for d in decisions if isinstance(d, LevelChanged)]


def steps(decisions: list[Any]) -> list[tuple[str, str, int, int]]:
    return [(d.direction, d.step, d.from_, d.to) for d in decisions if isinstance(d, StepChange)]


def run(gov: Governor, samples: list[tuple[float, Readings]]) -> list[Any]:
    out: list[Any] = []
    for now, readings in samples:
        out += gov.update(readings, now)
    return out


# level_of ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("t, current, expected", [
    (50, "normal", "normal"), (69.9, "normal", "normal"), (70, "normal", "elevated"),
    (84.9, "normal", "elevated"), (85, "normal", "critical"), (95, "elevated", "critical"),
    # hysteresis: a level holds down to its threshold minus 5 °C
    (65, "elevated", "elevated"), (64.9, "elevated", "normal"), (80, "critical", "critical"),
    (79.9, "critical", "elevated"), (64.9, "critical", "normal"),
])
def test_thermal_levels_with_hysteresis(t: float, current: str, expected: str) -> None:
    level, cause, details = level_of(temp(t), SETTINGS, current)  # type: ignore[arg-type]
    assert level == expected
    assert cause == (None if expected == "normal" else "thermal")
    assert details == {"temperature_c": t, "zone": "cpu-thermal"}


def test_the_hottest_counted_zone_decides_and_zones_filter() -> None:
    readings = Readings(temperatures_c={"cpu-thermal": 60, "gpu-thermal": 90, "board": 72})
    assert level_of(readings, SETTINGS)[:2] == ("critical", "thermal")
    assert level_of(readings, SETTINGS)[2]["zone"] == "gpu-thermal"
    only_cpu = settings(thermal={"zones": ["cpu-thermal"]})
    assert level_of(readings, only_cpu)[0] == "normal"
    cpu_and_board = settings(thermal={"zones": ["cpu-thermal", "board"]})
    assert level_of(readings, cpu_and_board)[:2] == ("elevated", "thermal")
    assert level_of(readings, cpu_and_board)[2] == {"temperature_c": 72, "zone": "board"}
    assert level_of(Readings(), SETTINGS) == ("normal", None, {})  # no sensors at all


@pytest.mark.parametrize("available, current, expected", [
    (1000, "normal", "normal"), (300, "normal", "normal"), (299, "normal", "elevated"),
    (150, "normal", "elevated"), (149, "normal", "critical"),
    # hysteresis: 10% of the warn headroom (30 MB) above each threshold
    (330, "elevated", "elevated"), (331, "elevated", "normal"), (180, "critical", "critical"),
    (181, "critical", "elevated"),
])
def test_memory_headroom_levels_with_hysteresis(available: float, current: str, expected: str) -> None:
    readings = Readings(memory_available_mb=available)
    level, cause, details = level_of(readings, SETTINGS, current)  # type: ignore[arg-type]
    assert (level, cause) == (expected, None if expected == "normal" else "memory")
    assert details == {"memory_available_mb": available}


@pytest.mark.parametrize("pressure, current, expected", [
    (0, "normal", "normal"), (19.9, "normal", "normal"), (20, "normal", "elevated"), (99, "normal", "elevated"),
    (15, "elevated", "elevated"), (14.9, "elevated", "normal"),
])
def test_psi_raises_to_elevated_never_critical(pressure: float, current: str, expected: str) -> None:
    level, cause, _ = level_of(Readings(memory_pressure=pressure), SETTINGS, current)  # type: ignore[arg-type]
    assert (level, cause) == (expected, None if expected == "normal" else "psi")


def test_throttling_flags_now_raise_to_elevated_unless_turned_off() -> None:
    clear = dict.fromkeys(["under_voltage", "freq_capped", "throttled", "soft_temp_limit",
                           "under_voltage_occurred", "freq_capped_occurred", "throttled_occurred",
                           "soft_temp_limit_occurred"], False)
    assert level_of(Readings(throttling=clear), SETTINGS)[0] == "normal"
    history = {**clear, "under_voltage_occurred": True, "throttled_occurred": True}
    assert level_of(Readings(throttling=history), SETTINGS)[0] == "normal"  # the *_occurred flags are history
    for flag in ["under_voltage", "freq_capped", "throttled", "soft_temp_limit"]:
        level, cause, details = level_of(Readings(throttling={**clear, flag: True}), SETTINGS)
        assert (level, cause, details) == ("elevated", "throttling", {"throttling": [flag]})
        assert level_of(Readings(throttling={**clear, flag: True}), settings(throttling=False))[0] == "normal"
    assert level_of(Readings(cpu_throttled=True), SETTINGS)[:2] == ("elevated", "throttling")
    assert level_of(Readings(cpu_throttled=False), SETTINGS)[0] == "normal"
    assert level_of(Readings(cpu_throttled=True), settings(throttling=False)) == ("normal", None, {})


def test_the_cause_is_what_calls_for_the_level() -> None:
    readings = Readings(temperatures_c={"cpu": 72}, memory_available_mb=100, memory_pressure=50,
                        cpu_throttled=True)
    level, cause, details = level_of(readings, SETTINGS)
    assert (level, cause) == ("critical", "memory")  # the memory is critical, the rest only elevated
    assert details == {"temperature_c": 72, "zone": "cpu", "memory_available_mb": 100, "memory_pressure": 50,
                       "cpu_throttled": True}
    assert level_of(Readings(temperatures_c={"cpu": 72}, memory_pressure=50), SETTINGS)[1] == "thermal"
    assert level_of(Readings(temperatures_c={"cpu": 40}, memory_pressure=50), SETTINGS)[1] == "psi"


# Governor: levels over time ---------------------------------------------------------------------

def test_levels_follow_a_temperature_ramp_up_and_down() -> None:
    gov = governor(halvings=0, ladder=LADDER[:1])  # nothing to step: levels only
    ramp = [50, 60, 68, 70, 75, 80, 84, 85, 90, 85, 80, 78, 70, 66, 64, 60, 50]
    seen = []
    for i, t in enumerate(ramp):
        gov.update(temp(t), now=i * 20.0)
        seen.append(gov.level[0])
    # 80 holds critical and 66 elevated (the 5 °C bands); 78 and 64 are below them, and long past the cool-down
    assert "".join(seen) == "nnneeeecccceeennn"


def test_a_level_is_left_only_after_the_cool_down_and_below_the_band() -> None:
    gov = governor(halvings=0, ladder=LADDER[:1])
    for now, t, expected in [(0, 50, "normal"), (10, 70, "elevated"), (20, 84, "elevated"), (30, 85, "critical"),
                             (40, 95, "critical"), (50, 81, "critical")]:
        gov.update(temp(t), now)
        assert gov.level == expected, (now, t)
    assert gov.update(temp(79), 59.9) == [] and gov.level == "critical"  # 29.9 s at critical: it stays
    [changed] = gov.update(temp(79), 60)
    assert changed == LevelChanged("critical", "elevated", "thermal", {"temperature_c": 79, "zone": "cpu-thermal"})
    assert gov.update(temp(64), 70) == [] and gov.level == "elevated"  # a cool-down again, at elevated
    assert gov.update(temp(66), 90) == [] and gov.level == "elevated"  # 30 s, but inside the band
    [changed] = gov.update(temp(64.9), 91)
    assert changed == LevelChanged("elevated", "normal", None, {"temperature_c": 64.9, "zone": "cpu-thermal"})
    assert gov.cause is None


def test_a_spike_goes_critical_and_returns_only_after_cool_down_and_hysteresis() -> None:
    gov = governor(halvings=0, ladder=LADDER[:1])
    assert gov.update(temp(50), 0) == []
    assert levels(gov.update(temp(90), 1)) == [("normal", "critical")]  # one sample: critical at once
    for now in range(2, 31):  # cooled at once, but the cool-down holds critical for 30 s
        assert gov.update(temp(50), now) == [] and gov.level == "critical"
    assert levels(gov.update(temp(50), 31)) == [("critical", "normal")]  # straight to what it calls for


def test_after_the_cool_down_a_reading_inside_the_band_holds_the_level() -> None:
    gov = governor(halvings=0, ladder=LADDER[:1])
    gov.update(temp(72), 0)
    assert gov.level == "elevated"
    assert gov.update(temp(66), 100) == [] and gov.level == "elevated"  # long past the cool-down: the band holds
    assert levels(gov.update(temp(64), 101)) == [("elevated", "normal")]


def test_an_oscillation_inside_the_hysteresis_band_switches_nothing() -> None:
    # Once elevated: between warn - hysteresis + 0.5 (65.5) and warn + 2 (72), for an hour.
    gov = governor(halvings=0, ladder=LADDER[:1])
    gov.update(temp(71), 0)
    out = run(gov, [(1.0 + i, temp(65.5 if i % 2 else 72)) for i in range(3600)])
    assert levels(out) == [] and gov.level == "elevated"
    # From normal: between warn - hysteresis (65) and just under warn: never elevated.
    gov = governor(halvings=0, ladder=LADDER[:1])
    out = run(gov, [(float(i), temp(65 if i % 2 else 69.9)) for i in range(3600)])
    assert levels(out) == [] and gov.level == "normal"


def test_memory_critical_jumps_to_the_lowest_rung_and_fps_floor() -> None:
    gov = governor(halvings=3)
    out = gov.update(Readings(memory_available_mb=120), 0)
    assert out[0] == LevelChanged("normal", "critical", "memory", {"memory_available_mb": 120})
    assert steps(out) == [("down", "fps", 0, 3), ("down", "precision", 0, 2), ("down", "input_size", 2, 4)]
    assert (gov.fps_halvings, gov.rung) == (3, 4)
    assert gov.state() == {"level": "critical", "cause": "memory",
                           "active_steps": ["fps"] * 3 + ["precision"] * 2 + ["input_size"] * 2,
                           "fps_halvings": 3, "max_fps_halvings": 3, "rung": 4, "rungs": 5,
                           "variant": "int8@208"}
    assert gov.update(Readings(memory_available_mb=120), 20) == []  # nothing further to take


def test_critical_after_some_steps_takes_the_rest() -> None:
    gov = governor(halvings=2)
    assert steps(gov.update(temp(75), 0)) == [("down", "fps", 0, 1)]
    assert steps(gov.update(temp(90), 5)) == [("down", "fps", 1, 2), ("down", "precision", 0, 2),
                                              ("down", "input_size", 2, 4)]


# Governor: steps ----------------------------------------------------------------------------------

def hot_then_cool(gov: Governor, hot_until: float, end: float) -> list[tuple[float, list[Any]]]:
    """One sample a second: 75 °C (elevated) until hot_until, then 50 °C; the decisions by time."""
    out = []
    for i in range(int(end) + 1):
        decisions = gov.update(temp(75 if i < hot_until else 50), float(i))
        if decisions:
            out.append((float(i), decisions))
    return out


def test_steps_down_in_the_order_of_resources_steps_every_step_interval_then_back_up_in_reverse() -> None:
    gov = governor(halvings=2)
    timeline = hot_then_cool(gov, hot_until=75, end=200)
    flat = [(now, d) for now, ds in timeline for d in ds]
    assert [(now, d.to) for now, d in flat if isinstance(d, LevelChanged)] == [(0, "elevated"), (75, "normal")]
    assert [(now, *s) for now, d in flat if isinstance(d, StepChange) for s in steps([d])] == [
        # down, one at once and one more each 10 s, the dimensions taking turns; input_size cannot step
        # from fp32@416 (the next rung is fp16), so precision goes on; fps stops at its 2 halvings
        (0, "down", "fps", 0, 1), (10, "down", "precision", 0, 1), (20, "down", "fps", 1, 2),
        (30, "down", "precision", 1, 2), (40, "down", "input_size", 2, 3), (50, "down", "input_size", 3, 4),
        # 60, 70: nothing left to take.  Normal at 75 (cool-down long past, 50 °C is below the band);
        # up, in reverse, the first 10 s after normal, each 10 s after the one before
        (85, "up", "input_size", 4, 3), (95, "up", "input_size", 3, 2), (105, "up", "precision", 2, 1),
        (115, "up", "fps", 2, 1), (125, "up", "precision", 1, 0), (135, "up", "fps", 1, 0),
    ]
    assert gov.state()["active_steps"] == [] and (gov.fps_halvings, gov.rung) == (0, 0)


def test_the_order_of_resources_steps_decides_which_dimension_steps_first() -> None:
    gov = governor(settings(steps=["precision", "fps"]), halvings=1)
    assert [s[1] for _, ds in hot_then_cool(gov, 1000, 60) for s in steps(ds)] == [
        "precision", "fps", "precision"]  # input_size is not in resources.steps: never taken
    gov = governor(settings(steps=["precision", "fps"]), halvings=1)
    gov.update(Readings(memory_available_mb=10), 0)
    assert (gov.fps_halvings, gov.rung) == (1, 2)  # not even at critical


def test_a_step_up_waits_for_the_step_interval_at_normal_and_a_new_rise_steps_down_again() -> None:
    gov = governor(halvings=3)
    gov.update(temp(75), 0)  # elevated, fps 0 -> 1
    gov.update(temp(75), 10)  # precision 0 -> 1
    assert gov.active_steps == ["fps", "precision"]
    assert levels(gov.update(temp(60), 30)) == [("elevated", "normal")]
    assert gov.update(temp(60), 39.9) == []
    assert steps(gov.update(temp(60), 40)) == [("up", "precision", 1, 0)]
    assert gov.update(temp(60), 45) == []
    # hot again: elevated at once, and a step down at once (the last was long ago): precision first again
    out = gov.update(temp(71), 46)
    assert levels(out) == [("normal", "elevated")] and steps(out) == [("down", "precision", 0, 1)]
    assert gov.active_steps == ["fps", "precision"]


def test_level_changes_come_before_the_steps_they_cause() -> None:
    gov = governor()
    out = gov.update(temp(71), 0)
    assert isinstance(out[0], LevelChanged) and isinstance(out[1], StepChange)


def test_without_ladder_or_fps_room_nothing_steps() -> None:
    gov = governor(halvings=0, ladder=LADDER[:1])
    assert steps(run(gov, [(float(i), temp(90 if i < 50 else 75)) for i in range(100)])) == []
    assert gov.state()["variant"] == "fp32@416"


def test_input_size_first_in_a_size_first_ladder() -> None:
    ladder = [Step(Variant(Path("m.onnx"), "cpu", p, s)) for p, s in
              [("fp32", (640, 640)), ("fp32", (480, 480)), ("fp16", (480, 480))]]
    gov = Governor(settings(steps=["input_size", "precision"]), ladder, 0)
    assert [s[1:] for _, ds in hot_then_cool(gov, 1000, 30) for s in steps(ds)] == [
        ("input_size", 0, 1), ("precision", 1, 2)]


def test_fps_helpers() -> None:
    assert max_fps_halvings([30, 15, None], min_fps=1) == 5  # 30 > 15 > 7.5 > 3.75 > 1.875 > 1
    assert max_fps_halvings([None], 1) == 0 and max_fps_halvings([1, 0.5], 1) == 0
    assert max_fps_halvings([4], 1) == 2 and max_fps_halvings([5], 1) == 3
    assert [fps_cap(30, n, 1) for n in range(6)] == [30, 15, 7.5, 3.75, 1.875, 1]
    assert fps_cap(0.5, 3, 1) == 0.5  # a cap already below the floor stays
