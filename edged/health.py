"""Health figures: rolling windows of timestamped samples (rates, percentiles). The machine's readings are
``edged.resources.sensors``."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Iterable

import numpy as np


def rounded(value: float | None) -> float | None:
    """A figure as health messages carry it: two decimals; None (an empty window's) stays None."""
    return None if value is None else round(value, 2)


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
