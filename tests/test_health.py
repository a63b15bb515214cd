"""Health readings from a fake /proc and /sys tree, and rolling windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.health import GET_THROTTLED, RollingWindow, SystemSampler, read_system


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    write(tmp_path, "proc/stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 100 0 100 800 0 0 0 0 0 0\nintr 1 2 3\n")
    write(tmp_path, "proc/meminfo", "MemTotal:        4000000 kB\nMemFree:          200000 kB\n"
                                    "MemAvailable:    1024000 kB\nHugePages_Total:       0\n")
    write(tmp_path, "proc/pressure/memory", "some avg10=1.25 avg60=0.50 avg300=0.10 total=12345\n"
                                            "full avg10=0.75 avg60=0.20 avg300=0.05 total=6789\n")
    zones = {"thermal_zone0": ("cpu-thermal", "48312"), "thermal_zone1": ("gpu-thermal", "51000"),
             "thermal_zone2": ("cpu-thermal", "47000"), "thermal_zone10": ("", "30500")}
    for zone, (kind, temp) in zones.items():
        write(tmp_path, f"sys/class/thermal/{zone}/type", kind + "\n")
        write(tmp_path, f"sys/class/thermal/{zone}/temp", temp + "\n")
    write(tmp_path, "sys/class/thermal/thermal_zone3/type", "off-sensor\n")  # no temp: left out
    write(tmp_path, GET_THROTTLED, "0x50005\n")
    return tmp_path


def test_readings_from_a_fake_tree(sysfs: Path) -> None:
    sampler = SystemSampler(sysfs)
    # 1000 more jiffies, of which 600 idle and 200 iowait: 20 % busy
    write(sysfs, "proc/stat", "cpu  200 0 200 1400 200 0 0 0 0 0\n")
    assert sampler.sample() == {
        "cpu_percent": 20.0,
        "memory_available_mb": 1000.0,
        "memory_total_mb": 3906.2,
        "memory_pressure": 1.25,
        "temperatures_c": {"cpu-thermal": 48.3, "gpu-thermal": 51.0, "thermal_zone2": 47.0, "thermal_zone10": 30.5},
        "throttling": {"under_voltage": True, "freq_capped": False, "throttled": True, "soft_temp_limit": False,
                       "under_voltage_occurred": True, "freq_capped_occurred": False, "throttled_occurred": True,
                       "soft_temp_limit_occurred": False},
    }
    assert sampler.sample()["cpu_percent"] is None  # no time passed since the last sample
    write(sysfs, "proc/stat", "cpu  300 0 200 2300 200 0 0 0 0 0\n")
    assert sampler.sample()["cpu_percent"] == 10.0


def test_throttling_without_the_0x_prefix_as_the_firmware_writes_it(sysfs: Path) -> None:
    write(sysfs, GET_THROTTLED, "80000\n")
    flags = read_system(sysfs)["throttling"]
    assert [name for name, on in flags.items() if on] == ["soft_temp_limit_occurred"]


def test_missing_or_garbled_files_give_none(sysfs: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    empty = tmp_path_factory.mktemp("empty")
    nothing = {"cpu_percent": None, "memory_available_mb": None, "memory_total_mb": None, "memory_pressure": None,
               "temperatures_c": {}, "throttling": None}
    assert SystemSampler(empty).sample() == nothing
    for relative in ("proc/stat", "proc/meminfo", "proc/pressure/memory", GET_THROTTLED,
                     "sys/class/thermal/thermal_zone0/temp", "sys/class/thermal/thermal_zone1/temp",
                     "sys/class/thermal/thermal_zone2/temp", "sys/class/thermal/thermal_zone10/temp"):
        write(sysfs, relative, "garbage ~ \x00 zz\n")
    sampler = SystemSampler(sysfs)
    assert sampler.sample() == nothing


def test_this_machine_reads_without_error() -> None:
    sampler = SystemSampler("/")
    sum(range(200_000))
    sample = sampler.sample()
    assert sample["cpu_percent"] is None or 0 <= sample["cpu_percent"] <= 100
    assert sample["memory_available_mb"] is None or 0 < sample["memory_available_mb"] <= sample["memory_total_mb"]


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
