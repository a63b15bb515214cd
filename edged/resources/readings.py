"""What the sensors hand the governor: one sample of the board, every field None (or empty) when the host
has no such sensor. Plain data, so that the governor is a pure function of readings and time."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Readings:
    temperatures_c: dict[str, float] = field(default_factory=dict)  # by thermal zone type, every zone found
    memory_available_mb: float | None = None  # the smaller headroom: MemAvailable, or the cgroup's max - current
    memory_pressure: float | None = None  # PSI memory "some avg10", %
    throttling: dict[str, bool] | None = None  # Raspberry Pi firmware flags (edged.resources.sensors.THROTTLE_FLAGS names)
    cpu_throttled: bool | None = None  # a CPU clock held well below its maximum while the CPU is busy
