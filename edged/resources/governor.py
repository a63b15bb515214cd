"""The governor: from readings and time, the resource level and the steps down (or up) to take.

The governor decides; the daemon acts (fps caps, session swaps through the ladder). It is a pure
function of readings and time: :func:`level_of` reads no clock and does no I/O, and
:meth:`Governor.update` is given ``now`` (``time.monotonic()`` in the daemon, anything in tests).

Levels, each computed from one :class:`~edged.resources.readings.Readings` sample:

- ``critical``: the hottest counted zone at or above ``thermal.critical_c``, or the memory headroom
  below ``memory.critical_available_mb``;
- ``elevated``: the hottest counted zone at or above ``thermal.warn_c``, the headroom below
  ``memory.warn_available_mb``, PSI memory "some avg10" at or above ``memory.psi_warn``, or (when
  ``resources.throttling``) a firmware throttling flag that holds now (``under_voltage``,
  ``freq_capped``, ``throttled``, ``soft_temp_limit``; the ``*_occurred`` ones are history) or a CPU
  clock held down (``cpu_throttled``);
- ``normal`` otherwise.

Hysteresis: a level, once reached, holds while a reading stays within a band of its threshold; it
is left only when the reading is back past it:

- temperature: below ``threshold - thermal.hysteresis_c``;
- memory headroom: above ``threshold + MEMORY_HYSTERESIS * memory.warn_available_mb`` (10% of the
  warn headroom: 30 MB by default, for both the warn and the critical threshold);
- PSI: below ``memory.psi_warn - PSI_HYSTERESIS`` (5 percentage points);
- throttling flags: booleans, no band (the dwell below still applies).

Dwell: a level is left for a lower one only after ``resources.cool_down_s`` at it. A level rises at
once.

Steps. The position is ``fps_halvings`` (every live stream's frame cap is
``max(min_fps, cap / 2 ** fps_halvings)``: :func:`fps_cap`; the daemon gives the most halvings that
still change a cap, :func:`max_fps_halvings`) and ``rung``, an index into the ladder's steps
(0: the top, the preferred variant). The ladder is one chain, walked down along each dimension in
the order of ``resources.steps``, so each move to the next rung is either a ``precision`` step
(the next rung has the same input size) or an ``input_size`` step (it has another input size).

- ``elevated``: one step down at once, then one more every ``step_interval_s`` while the level stays
  elevated. The dimensions take turns in the order of ``resources.steps`` (fps, precision,
  input_size, fps, ...), one halving or one rung each; a dimension that cannot step (fps at its
  floor; the next rung is of the other dimension, or there is none) is skipped. Round robin, rather
  than one dimension to its end first, so that no single dimension (say, the frame rate halved to
  1 fps) takes all the loss.
- ``critical``: straight to the most fps halvings and the lowest rung, with one decision per
  dimension that changes (fps; then the rung moves, precision and input_size, grouped).
- ``normal``: one step up at a time, in the reverse order of the steps taken (a stack,
  ``active_steps``), the first ``step_interval_s`` after the level came back to normal and each
  further one ``step_interval_s`` after the one before. (Coming back to normal took at least
  ``cool_down_s`` at the level above.)

A dimension not in ``resources.steps`` never steps, not even at ``critical``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from edged.config import ResourceSettings
from edged.resources.readings import Readings

Level = Literal["normal", "elevated", "critical"]
LEVELS: tuple[Level, ...] = ("normal", "elevated", "critical")
MEMORY_HYSTERESIS = 0.10  # of memory.warn_available_mb: the band above a headroom threshold
PSI_HYSTERESIS = 5.0  # percentage points below memory.psi_warn
THROTTLED_NOW = ("under_voltage", "freq_capped", "throttled", "soft_temp_limit")  # not the *_occurred ones
CAUSES = ("thermal", "memory", "psi", "throttling")  # the order in which a cause is named when several agree


def _rank(level: Level) -> int:
    return LEVELS.index(level)


def level_of(readings: Readings, settings: ResourceSettings,
             current: Level = "normal") -> tuple[Level, str | None, dict[str, Any]]:
    """The level ``readings`` call for, given the ``current`` level (for the hysteresis); the cause
    (``thermal``, ``memory``, ``psi`` or ``throttling``: the first of those that calls for the level;
    None at ``normal``); and the readings counted, JSON-able, for the level_changed event."""
    thermal, memory = settings.thermal, settings.memory
    held = _rank(current)
    details: dict[str, Any] = {}
    found: dict[str, int] = {}

    temperatures = {zone: t for zone, t in readings.temperatures_c.items()
                    if t is not None and (thermal.zones is None or zone in thermal.zones)}
    if temperatures:
        zone = max(temperatures, key=temperatures.__getitem__)
        t = temperatures[zone]
        details.update(temperature_c=t, zone=zone)

        def hot(threshold: float, level: int) -> bool:
            return t >= threshold or (held >= level and t >= threshold - thermal.hysteresis_c)

        found["thermal"] = 2 if hot(thermal.critical_c, 2) else 1 if hot(thermal.warn_c, 1) else 0

    if readings.memory_available_mb is not None:
        available = readings.memory_available_mb
        details["memory_available_mb"] = available
        margin = MEMORY_HYSTERESIS * memory.warn_available_mb

        def short(threshold: float, level: int) -> bool:
            return available < threshold or (held >= level and available <= threshold + margin)

        found["memory"] = (2 if short(memory.critical_available_mb, 2)
                           else 1 if short(memory.warn_available_mb, 1) else 0)

    if readings.memory_pressure is not None:
        pressure = readings.memory_pressure
        details["memory_pressure"] = pressure
        found["psi"] = int(pressure >= memory.psi_warn
                           or (held >= 1 and pressure >= memory.psi_warn - PSI_HYSTERESIS))

    if settings.throttling:
        flags = sorted(name for name in THROTTLED_NOW if (readings.throttling or {}).get(name))
        if readings.throttling is not None:
            details["throttling"] = flags
        if readings.cpu_throttled is not None:
            details["cpu_throttled"] = readings.cpu_throttled
        found["throttling"] = int(bool(flags) or bool(readings.cpu_throttled))

    level = max(found.values(), default=0)
    cause = next((c for c in CAUSES if found.get(c) == level), None) if level else None
    return LEVELS[level], cause, details


def max_fps_halvings(caps: Iterable[float | None], min_fps: float) -> int:
    """The most halvings that still lower some stream's cap: enough to bring the highest cap to
    ``min_fps`` (a None cap, an uncapped stream, counts for nothing; the daemon may pass the source's
    frame rate for it instead)."""
    return max((math.ceil(math.log2(cap / min_fps)) for cap in caps if cap is not None and cap > min_fps),
               default=0)


def fps_cap(cap: float, halvings: int, min_fps: float) -> float:
    """A stream's effective frame cap after ``halvings`` fps steps: halved each, never below
    ``min_fps`` (nor above the configured cap)."""
    return cap if halvings <= 0 else max(min_fps, cap / 2 ** halvings) if cap > min_fps else cap


@dataclass(frozen=True)
class LevelChanged:
    from_: Level
    to: Level
    cause: str | None  # None when back to normal
    readings: dict[str, Any]  # what level_of counted


@dataclass(frozen=True)
class StepChange:
    direction: Literal["down", "up"]
    step: Literal["fps", "precision", "input_size"]
    from_: int  # fps: fps_halvings; precision, input_size: the rung, an index into the ladder's steps
    to: int


Decision = LevelChanged | StepChange


def _variant(rung: Any) -> Any:
    """A ladder Step's variant, or the rung itself when given variants (anything with precision and
    input_size)."""
    return getattr(rung, "variant", rung)


@dataclass
class Governor:
    """The level and the position on the way down, updated from each sample.

    ``Governor(config.resources, ladder.steps, max_fps_halvings(caps, config.resources.min_fps))``;
    then, every ``resources.interval_s``, ``governor.update(readings, time.monotonic())`` and act on the
    decisions in order.
    """

    settings: ResourceSettings
    rungs: Sequence[Any]  # the ladder's steps (edged.ladder.Step) or their variants; top first
    max_fps_halvings: int = 0
    level: Level = "normal"
    cause: str | None = None
    since: float | None = None  # when the level was entered (None: not yet updated)
    fps_halvings: int = 0
    rung: int = 0
    active_steps: list[str] = field(default_factory=list)  # the steps down taken, oldest first
    last_down: float | None = None
    last_up: float | None = None
    _next: int = field(default=0, init=False, repr=False)  # the dimension of the order to try first (round robin)

    @property
    def order(self) -> tuple[str, ...]:
        """resources.steps, without repeats."""
        return tuple(dict.fromkeys(self.settings.steps))

    def _rung_dimension(self) -> str | None:
        """The dimension of the move to the next rung down, None at the bottom."""
        if self.rung + 1 >= len(self.rungs):
            return None
        here, below = _variant(self.rungs[self.rung]), _variant(self.rungs[self.rung + 1])
        return "precision" if tuple(here.input_size) == tuple(below.input_size) else "input_size"

    def can_step_down(self, step: str) -> bool:
        if step not in self.order:
            return False
        if step == "fps":
            return self.fps_halvings < self.max_fps_halvings
        return self._rung_dimension() == step

    def _move(self, step: str, delta: int) -> tuple[int, int]:
        before = self.fps_halvings if step == "fps" else self.rung
        if step == "fps":
            self.fps_halvings += delta
        else:
            self.rung += delta
        if delta > 0:
            self.active_steps.append(step)
        return before, before + delta

    def update(self, readings: Readings, now: float) -> list[Decision]:
        """The decisions this sample calls for: a level change first, if any, then the steps."""
        decisions: list[Decision] = []
        if self.since is None:
            self.since = now
        target, cause, details = level_of(readings, self.settings, self.level)
        if _rank(target) > _rank(self.level) or (
                _rank(target) < _rank(self.level) and now - self.since >= self.settings.cool_down_s):
            decisions.append(LevelChanged(self.level, target, cause, details))
            self.level, self.cause, self.since = target, cause, now
        elif target == self.level:
            self.cause = cause

        interval = self.settings.step_interval_s
        if self.level == "critical":
            decisions += self._to_bottom(now)
        elif self.level == "elevated":
            if self.last_down is None or now - self.last_down >= interval:
                decisions += self._step_down(now)
        elif self.active_steps and now - max(self.since, self.last_up or self.since) >= interval:
            decisions.append(self._step_up(now))
        return decisions

    def _step_down(self, now: float) -> list[Decision]:
        order = self.order
        for i in range(len(order)):
            step = order[(self._next + i) % len(order)]
            if self.can_step_down(step):
                before, after = self._move(step, 1)
                self._next, self.last_down = (order.index(step) + 1) % len(order), now
                return [StepChange("down", step, before, after)]  # type: ignore[arg-type]
        return []

    def _to_bottom(self, now: float) -> list[Decision]:
        """Every step down there is, in the order of resources.steps: one decision per dimension run."""
        decisions: list[StepChange] = []
        progress = True
        while progress:
            progress = False
            for step in self.order:
                while self.can_step_down(step):
                    before, after = self._move(step, 1)
                    progress = True
                    if decisions and decisions[-1].step == step:
                        before = decisions.pop().from_
                    decisions.append(StepChange("down", step, before, after))  # type: ignore[arg-type]
        if decisions:
            self.last_down = now
        return list(decisions)

    def _step_up(self, now: float) -> StepChange:
        step = self.active_steps.pop()
        before, after = self._move(step, -1)
        self.last_up = now
        if step in self.order:
            self._next = self.order.index(step)  # down again, the same step first
        return StepChange("up", step, before, after)  # type: ignore[arg-type]

    def state(self) -> dict[str, Any]:
        """For the health message: JSON-able."""
        variant = _variant(self.rungs[self.rung]) if self.rungs else None
        return {"level": self.level, "cause": self.cause, "active_steps": list(self.active_steps),
                "fps_halvings": self.fps_halvings, "max_fps_halvings": self.max_fps_halvings,
                "rung": self.rung, "rungs": len(self.rungs),
                "variant": getattr(variant, "label", None)}
