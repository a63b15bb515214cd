"""The resource manager in the daemon: every ``resources.interval_s`` it reads the sensors, asks the governor,
and acts on its decisions through the daemon (the ``Actuator``): frame caps on the live streams, and a session
for another rung of the ladder, built in the background while the current one keeps serving, then swapped in
between two frames. Every change is a log line and an event (``level_changed``, ``step_down``, ``step_up``,
``model_switched``; ``error`` when a rung's session cannot be built, and the old one keeps serving).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from edged.bench import Variant
from edged.config import ResourceSettings
from edged.inference.detector import Detector
from edged.ladder import Ladder
from edged.resources.governor import LEVELS, Governor, LevelChanged, StepChange
from edged.resources.sensors import Sensors

log = logging.getLogger("edged.resources")

MEMORY_CAUSES = ("memory", "psi")
SHED_DETECTIONS = 100  # detections messages held queued for a broker away, under memory pressure (else queue_limit)


class Actuator(Protocol):
    """What the manager asks of the daemon."""

    def set_fps_halvings(self, halvings: int) -> None:
        """Cap every live stream at its own cap halved ``halvings`` times (never below ``min_fps``)."""

    def build_session(self, variant: Variant) -> Detector:
        """Load ``variant`` as the daemon loads its model (blocking: called in a helper thread)."""

    def swap_session(self, detector: Detector) -> None:
        """Make ``detector`` the one every stream uses from its next frame, and free the one it replaces."""

    def shed_memory(self, shedding: bool) -> None:
        """Under memory pressure (or no longer): shorter frame queues, fewer detections held for a broker away."""

    def event(self, kind: str, detail: str, **fields: Any) -> None:
        """Publish an event on ``P/events``."""


class ResourceManager:
    """``tick(now)`` from the daemon's loop; ``sample`` (health's ``resources``) and ``state()`` (health's
    ``resource_manager``) for health."""

    def __init__(self, settings: ResourceSettings, ladder: Ladder, max_fps_halvings: int, actuator: Actuator):
        self.settings = settings
        self.ladder = ladder
        self.actuator = actuator
        self.sensors = Sensors(settings.sysfs_root)
        self.governor = Governor(settings, ladder.steps, max_fps_halvings)
        self.sample: dict[str, Any] = self.sensors.sample()
        self.serving = 0  # the rung whose session serves now
        self.shedding = False  # memory pressure: queues held short
        self._next_read = 0.0
        self._building: tuple[int, threading.Thread, list[Detector | BaseException]] | None = None
        self._failed: int | None = None  # a rung whose session could not be built: not tried again until left

    def tick(self, now: float) -> None:
        self._collect_build()
        if now >= self._next_read:
            self._next_read = now + self.settings.interval_s
            self.sample = self.sensors.sample()
            for decision in self.governor.update(Sensors.readings(self.sample), now):
                self._announce(decision)
        wanted = self.governor.rung
        if wanted != self._failed:
            self._failed = None
        if wanted != self.serving and self._building is None and self._failed is None:
            self._start_build(wanted)

    def state(self) -> dict[str, Any]:
        return {**self.governor.state(), "serving": self._label(self.serving), "shedding_memory": self.shedding}

    def _label(self, rung: int) -> str | None:
        return self.ladder.steps[rung].variant.label if self.ladder.steps else None

    def _announce(self, decision: LevelChanged | StepChange) -> None:
        if isinstance(decision, LevelChanged):
            shedding = decision.to != "normal" and decision.cause in MEMORY_CAUSES
            if shedding != self.shedding:
                self.shedding = shedding
                log.log(logging.WARNING if shedding else logging.INFO, "memory pressure: %s",
                        "shedding memory (file and stage queues of 1 frame, at most %d detections queued)" % SHED_DETECTIONS
                        if shedding else "no longer shedding memory")
                self.actuator.shed_memory(shedding)
            why = f" ({decision.cause}: {decision.readings})" if decision.cause else ""
            rising = LEVELS.index(decision.to) > LEVELS.index(decision.from_)
            log.log(logging.WARNING if rising else logging.INFO, "level %s -> %s%s", decision.from_, decision.to,
                    why)
            self.actuator.event("level_changed", f"Resource level {decision.from_} -> {decision.to}"
                                f"{f', caused by {decision.cause}' if decision.cause else ''}.",
                                **{"from": decision.from_, "to": decision.to, "cause": decision.cause or "none",
                                   "readings": decision.readings})
            return
        if decision.step == "fps":
            was, now = 1 / 2 ** decision.from_, 1 / 2 ** decision.to
            self.actuator.set_fps_halvings(decision.to)
            what = f"frame caps x{was:g} -> x{now:g}"
        else:
            was, now = self._label(decision.from_), self._label(decision.to)
            what = f"model {was} -> {now}"
        log.log(logging.WARNING if decision.direction == "down" else logging.INFO, "step %s %s: %s",
                decision.direction, decision.step, what)
        self.actuator.event(f"step_{decision.direction}", f"Step {decision.direction} ({decision.step}): {what}.",
                            step=decision.step, **{"from": was, "to": now})

    def _start_build(self, rung: int) -> None:
        variant = self.ladder.steps[rung].variant
        outcome: list[Detector | BaseException] = []

        def build() -> None:
            try:
                outcome.append(self.actuator.build_session(variant))
            except BaseException as exc:  # handed to the daemon's thread
                outcome.append(exc)

        thread = threading.Thread(target=build, name="session-build", daemon=True)
        self._building = (rung, thread, outcome)
        log.info("building the session for %s in the background", variant.label)
        thread.start()

    def _collect_build(self) -> None:
        if self._building is None or self._building[1].is_alive():
            return
        rung, _, outcome = self._building
        self._building = None
        result = outcome.pop()
        was, now = self._label(self.serving), self._label(rung)
        if isinstance(result, BaseException):
            self._failed = rung
            log.error("the session for %s could not be built (%s); %s keeps serving", now, result, was)
            self.actuator.event("error", f"The session for {now} could not be built ({result}); {was} keeps "
                                         f"serving.")
            return
        self.actuator.swap_session(result)
        del result  # the daemon holds it now: nothing here may keep a session alive
        self.serving = rung
        reason = f"resource level {self.governor.level}"
        log.info("model switched: %s -> %s (%s)", was, now, reason)
        self.actuator.event("model_switched", f"Model switched from {was} to {now} ({reason}).",
                            **{"from": was, "to": now, "reason": reason})
