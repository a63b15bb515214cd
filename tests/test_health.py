"""Rolling windows: percentiles and rates."""

from __future__ import annotations

import numpy as np
import pytest

from edged.health import RollingWindow


def test_percentiles_match_numpy_over_the_last_samples() -> None:
    values = np.random.default_rng(3).lognormal(2.0, 0.7, 500)
    by_count = RollingWindow(seconds=None, maxlen=100)
    for value in values:
        by_count.add(float(value))
    for q in (50, 95):
        assert by_count.percentile(q) == pytest.approx(np.percentile(values[-100:], q))
    by_time = RollingWindow(seconds=5.0)
    for i, value in enumerate(values):
        by_time.add(float(value), now=i * 0.1)  # the last 5 s at t=49.95: samples 450..499
    for q in (50, 95):
        assert by_time.percentile(q, now=49.95) == pytest.approx(np.percentile(values[450:], q))
    merged = RollingWindow.merged([by_count, by_time], now=49.95)
    assert merged.percentile(95) == pytest.approx(np.percentile(np.concatenate([values[-100:], values[450:]]), 95))
    assert by_time.percentile(50, now=100.0) is None
    assert RollingWindow().percentile(50) is None


def test_rate_counts_per_second_and_falls_when_samples_stop() -> None:
    window = RollingWindow(seconds=5.0)
    assert window.rate(now=0.0) == 0.0
    for i in range(101):
        window.add(now=i * 0.1)  # 10 per second for 10 s
    assert window.rate(now=10.0) == pytest.approx(10.0, rel=0.03)
    assert window.rate(now=12.05) == pytest.approx(29 / 4.95)  # 7.1 .. 10.0 left: 29 intervals over 4.95 s
    assert window.rate(now=15.0) == 0.0
    with pytest.raises(ValueError):
        RollingWindow(seconds=None)
