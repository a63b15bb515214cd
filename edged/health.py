"""Health figures: rolling windows (rates, percentiles) and the machine's readings from /proc and /sys.

Every path is read under ``sysfs_root`` (config ``resources.sysfs_root``, default ``/``), so tests
and containers can point it at a copy. A missing or unreadable file gives None (or no entry),
never an exception.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable

import numpy as np

# Raspberry Pi firmware's get_throttled bits (vcgencmd get_throttled).
THROTTLE_FLAGS = {0: "under_voltage", 1: "freq_capped", 2: "throttled", 3: "soft_temp_limit",
                  16: "under_voltage_occurred", 17: "freq_capped_occurred", 18: "throttled_occurred",
                  19: "soft_temp_limit_occurred"}
GET_THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"


class RollingWindow:
    """Timestamped samples from the last ``seconds`` and/or the last ``maxlen``: rate and
    percentiles. Times are ``time.monotonic()`` unless given. Thread-safe."""

    def __init__(self, seconds: float | None = 5.0, maxlen: int | None = None):
        if seconds is None and maxlen is None:
            raise ValueError("a rolling window needs seconds, maxlen or both")
        self.seconds = seconds
        self._samples: deque[tuple[float, float]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, value: float = 1.0, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._samples.append((now, value))
            self._expire(now)

    @classmethod
    def merged(cls, windows: Iterable[RollingWindow], now: float | None = None) -> RollingWindow:
        """A snapshot holding the current samples of all ``windows`` (say, every stream's inference times)."""
        samples = sorted(sample for window in windows for sample in window._current(now))
        merged = cls(seconds=None, maxlen=max(len(samples), 1))
        merged._samples.extend(samples)
        return merged

    def values(self, now: float | None = None) -> list[float]:
        return [value for _, value in self._current(now)]

    def percentile(self, q: float, now: float | None = None) -> float | None:
        """The ``q``-th percentile (0-100, linear interpolation as numpy's default); None when empty."""
        values = self.values(now)
        return float(np.percentile(values, q)) if values else None

    def rate(self, now: float | None = None) -> float:
        """Samples per second: the intervals between the samples held, over the time from the
        oldest to ``now``; falls towards 0 when samples stop coming."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._expire(now)
            if len(self._samples) < 2:
                return 0.0
            span = now - self._samples[0][0]
            return (len(self._samples) - 1) / span if span > 0 else 0.0

    def _current(self, now: float | None) -> list[tuple[float, float]]:
        with self._lock:
            self._expire(time.monotonic() if now is None else now)
            return list(self._samples)

    def _expire(self, now: float) -> None:
        if self.seconds is not None:
            while self._samples and self._samples[0][0] <= now - self.seconds:
                self._samples.popleft()


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _cpu_times(root: Path) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; guest time is already inside user."""
    text = _read(root / "proc/stat")
    try:
        fields = [int(v) for v in text.splitlines()[0].split()[1:9]] if text and text.startswith("cpu ") else []
    except ValueError:
        return None
    if len(fields) < 4:
        return None
    total = sum(fields)
    return total - sum(fields[3:5]), total  # idle + iowait


def _meminfo_mb(root: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = round(int(parts[0]) / 1024, 1)  # kB
    return values


def _memory_pressure(root: Path) -> float | None:
    """PSI ``some avg10``: the share (%) of the last 10 s in which some task waited for memory."""
    for line in (_read(root / "proc/pressure/memory") or "").splitlines():
        if line.startswith("some "):
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


def _temperatures_c(root: Path) -> dict[str, float]:
    """By zone type (the zone's folder name when the type is missing or taken); unreadable zones left out."""
    temperatures: dict[str, float] = {}
    zones = sorted((root / "sys/class/thermal").glob("thermal_zone*"),
                   key=lambda p: int(p.name[12:]) if p.name[12:].isdigit() else -1)
    for zone in zones:
        try:
            celsius = int((_read(zone / "temp") or "").strip()) / 1000  # millidegrees
        except ValueError:
            continue
        kind = (_read(zone / "type") or "").strip()
        temperatures[kind if kind and kind not in temperatures else zone.name] = round(celsius, 1)
    return temperatures


def _throttling(root: Path) -> dict[str, bool] | None:
    """Raspberry Pi firmware flags, now and since boot ("occurred"); None off a Pi."""
    text = _read(root / GET_THROTTLED)
    try:
        bits = int(text.strip(), 16) if text else None
    except ValueError:
        return None
    return None if bits is None else {name: bool(bits >> bit & 1) for bit, name in THROTTLE_FLAGS.items()}


def read_system(sysfs_root: Path | str = "/") -> dict[str, Any]:
    """Everything but CPU % (which needs two readings: ``SystemSampler``)."""
    root = Path(sysfs_root)
    memory = _meminfo_mb(root)
    return {"memory_available_mb": memory.get("MemAvailable"), "memory_total_mb": memory.get("MemTotal"),
            "memory_pressure": _memory_pressure(root), "temperatures_c": _temperatures_c(root),
            "throttling": _throttling(root)}


class SystemSampler:
    """``sample()``: ``read_system`` plus ``cpu_percent``, the busy share of all CPUs since the
    previous sample (the first: since construction); None when /proc/stat cannot tell."""

    def __init__(self, sysfs_root: Path | str = "/"):
        self.root = Path(sysfs_root)
        self._last = _cpu_times(self.root)

    def sample(self) -> dict[str, Any]:
        times, last = _cpu_times(self.root), self._last
        self._last = times
        cpu = None
        if times and last and times[1] > last[1]:
            cpu = round(100 * (times[0] - last[0]) / (times[1] - last[1]), 1)
        return {"cpu_percent": cpu, **read_system(self.root)}
