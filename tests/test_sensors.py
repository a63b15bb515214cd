"""Sensors from fake /proc and /sys trees (a Jetson Orin, a Raspberry Pi 5, a cgroup-limited container, a host
with nothing) and from this machine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edged.resources import sensors
from edged.resources.readings import Readings
from edged.resources.sensors import GET_THROTTLED, Sensors
from tests.conftest import run_edged

ALL_THROTTLED_OFF = dict.fromkeys(sensors.THROTTLE_FLAGS.values(), False)
PI_0x50005 = {**ALL_THROTTLED_OFF, "under_voltage": True, "throttled": True, "under_voltage_occurred": True,
              "throttled_occurred": True}


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_cpus(root: Path, cur_khz: list[int], max_khz: int, scaling_max_khz: int) -> None:
    for cpu, cur in enumerate(cur_khz):
        folder = f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        write(root, f"{folder}/scaling_cur_freq", f"{cur}\n")
        write(root, f"{folder}/cpuinfo_max_freq", f"{max_khz}\n")
        write(root, f"{folder}/scaling_max_freq", f"{scaling_max_khz}\n")
    write(root, "sys/devices/system/cpu/cpuidle/current_driver", "psci_idle\n")  # not a CPU


def write_zones(root: Path, zones: dict[str, tuple[str, str]]) -> None:
    for zone, (kind, temp) in zones.items():
        write(root, f"sys/class/thermal/{zone}/type", kind + "\n")
        write(root, f"sys/class/thermal/{zone}/temp", temp + "\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """A generic host: /proc figures, thermal zones (two of a type, one without a type, one without a temp)."""
    write(tmp_path, "proc/stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 100 0 100 800 0 0 0 0 0 0\nintr 1 2 3\n")
    write(tmp_path, "proc/meminfo", "MemTotal:        4000000 kB\nMemFree:          200000 kB\n"
                                    "MemAvailable:    1024000 kB\nHugePages_Total:       0\n")
    write(tmp_path, "proc/pressure/memory", "some avg10=1.25 avg60=0.50 avg300=0.10 total=12345\n"
                                            "full avg10=0.75 avg60=0.20 avg300=0.05 total=6789\n")
    write(tmp_path, "proc/self/status", "Name:\tedged\nVmPeak:\t  300000 kB\nVmRSS:\t  204800 kB\n")
    write_zones(tmp_path, {"thermal_zone0": ("cpu-thermal", "48312"), "thermal_zone1": ("gpu-thermal", "51000"),
                           "thermal_zone2": ("cpu-thermal", "47000"), "thermal_zone10": ("", "30500")})
    write(tmp_path, "sys/class/thermal/thermal_zone3/type", "off-sensor\n")  # no temp: left out
    write(tmp_path, GET_THROTTLED, "0x50005\n")
    return tmp_path


def test_readings_from_a_fake_tree(sysfs: Path) -> None:
    sampler = Sensors(sysfs)
    # 1000 more jiffies, of which 600 idle and 200 iowait: 20 % busy
    write(sysfs, "proc/stat", "cpu  200 0 200 1400 200 0 0 0 0 0\n")
    assert sampler.sample() == {
        "cpu_percent": 20.0,
        "cpu_throttled": None,
        "cpu_freq": None,
        "temperatures_c": {"cpu-thermal": 48.3, "gpu-thermal": 51.0, "thermal_zone2": 47.0, "thermal_zone10": 30.5},
        "memory_available_mb": 1000.0,
        "memory_counts": "meminfo",
        "meminfo_available_mb": 1000.0,
        "memory_total_mb": 3906.2,
        "cgroup": None,
        "memory_pressure": 1.25,
        "memory_pressure_full": 0.75,
        "rss_mb": 200.0,
        "throttling": PI_0x50005,
        "gpu": None,
    }
    assert sampler.sample()["cpu_percent"] is None  # no time passed since the last sample
    write(sysfs, "proc/stat", "cpu  300 0 200 2300 200 0 0 0 0 0\n")
    assert sampler.sample()["cpu_percent"] == 10.0


def test_throttling_without_the_0x_prefix_as_the_firmware_writes_it(sysfs: Path) -> None:
    write(sysfs, GET_THROTTLED, "80000\n")
    flags = Sensors(sysfs).sample()["throttling"]
    assert [name for name, on in flags.items() if on] == ["soft_temp_limit_occurred"]


def test_jetson_orin(tmp_path: Path) -> None:
    write_zones(tmp_path, {"thermal_zone0": ("CPU-therm", "52500"), "thermal_zone1": ("GPU-therm", "55031"),
                           "thermal_zone2": ("SOC0-therm", "50000")})
    write(tmp_path, "sys/devices/platform/gpu.0/load", "345\n")
    write(tmp_path, "sys/class/devfreq/17000000.ga10b/cur_freq", "306000000\n")
    write(tmp_path, "sys/class/devfreq/17000000.ga10b/max_freq", "624750000\n")
    write(tmp_path, "sys/class/devfreq/15340000.vic/cur_freq", "115200000\n")  # not the GPU
    write_cpus(tmp_path, [1510400, 729600, 1510400, 1510400, 1510400, 1510400], 1510400, 1510400)
    write(tmp_path, "proc/stat", "cpu  0 0 0 100 0 0 0 0 0 0\n")
    sampler = Sensors(tmp_path)
    write(tmp_path, "proc/stat", "cpu  900 0 0 200 0 0 0 0 0 0\n")  # 90 % busy at full clock: not throttled
    sample = sampler.sample()
    assert sample["temperatures_c"] == {"CPU-therm": 52.5, "GPU-therm": 55.0, "SOC0-therm": 50.0}
    assert sample["gpu"] == {"load_percent": 34.5, "freq_mhz": 306.0, "max_freq_mhz": 624.8}
    assert sample["cpu_freq"] == {"current_min_mhz": 729.6, "current_max_mhz": 1510.4, "max_mhz": 1510.4,
                                  "capped": False}
    assert sample["cpu_throttled"] is False
    assert sample["throttling"] is None
    described = {path: (name, value) for name, path, value in sampler.describe()}
    assert described["sys/devices/platform/gpu.0/load"] == ("gpu load %", 34.5)
    assert described["sys/class/devfreq/17000000.ga10b/cur_freq"] == ("gpu current MHz", 306.0)
    assert described["sys/class/thermal/thermal_zone1/temp"] == ("temperature GPU-therm °C", 55.0)
    assert described["sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq"] == ("cpu1 current MHz", 729.6)
    assert "sys/class/devfreq/15340000.vic/cur_freq" not in described


def test_older_jetson_gpu_load_and_a_busy_slow_cpu(tmp_path: Path) -> None:
    write(tmp_path, "sys/devices/gpu.0/load", "999\n")
    write(tmp_path, "sys/class/devfreq/57000000.gpu/cur_freq", "921600000\n")
    write_cpus(tmp_path, [710400, 710400, 614400, 710400], 1479000, 1479000)  # uncapped, yet below half clock
    write(tmp_path, "proc/stat", "cpu  0 0 0 100 0 0 0 0 0 0\n")
    sampler = Sensors(tmp_path)
    write(tmp_path, "proc/stat", "cpu  950 0 0 150 0 0 0 0 0 0\n")  # 95 % busy
    sample = sampler.sample()
    assert sample["gpu"] == {"load_percent": 99.9, "freq_mhz": 921.6, "max_freq_mhz": None}
    assert {"gpu", "gpu.load_percent", "gpu.freq_mhz"} <= sampler.present(sample)
    assert "gpu.max_freq_mhz" not in sampler.present(sample)
    assert sample["cpu_freq"]["capped"] is False
    assert sample["cpu_throttled"] is True
    write(tmp_path, "proc/stat", "cpu  960 0 0 1040 0 0 0 0 0 0\n")  # idle: a low clock is just the governor
    assert sampler.sample()["cpu_throttled"] is False


def test_raspberry_pi_5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_vcgencmd_under_a_fake_root(*args: object, **kwargs: object) -> None:
        raise AssertionError("vcgencmd run under a fake root")

    monkeypatch.setattr(sensors.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(sensors.subprocess, "run", no_vcgencmd_under_a_fake_root)
    write_zones(tmp_path, {"thermal_zone0": ("cpu-thermal", "81700")})
    write(tmp_path, GET_THROTTLED, "0x50005\n")
    write_cpus(tmp_path, [1500000] * 4, 2400000, 1500000)  # the firmware capped the clock
    sample = Sensors(tmp_path).sample()
    assert sample["temperatures_c"] == {"cpu-thermal": 81.7}
    assert sample["throttling"] == PI_0x50005
    assert sample["cpu_freq"] == {"current_min_mhz": 1500.0, "current_max_mhz": 1500.0, "max_mhz": 2400.0,
                                  "capped": True}
    assert sample["cpu_throttled"] is False  # capped, but not busy: the firmware's flags say it is throttled
    assert sample["gpu"] is None
    assert Sensors.readings(sample) == Readings(temperatures_c={"cpu-thermal": 81.7}, throttling=PI_0x50005,
                                                cpu_throttled=False)
    assert ("throttling", GET_THROTTLED, ["under_voltage", "throttled", "under_voltage_occurred",
                                          "throttled_occurred"]) in Sensors(tmp_path).describe()
    (tmp_path / GET_THROTTLED).unlink()
    assert Sensors(tmp_path).sample()["throttling"] is None  # and vcgencmd not run


def test_vcgencmd_on_the_real_root_when_the_firmware_node_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    if (Path("/") / GET_THROTTLED).exists():
        pytest.skip("this host has the firmware's node")
    calls = []

    def vcgencmd(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append((command, kwargs["timeout"]))
        return subprocess.CompletedProcess(command, 0, stdout="throttled=0x50005\n", stderr="")

    monkeypatch.setattr(sensors.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(sensors.subprocess, "run", vcgencmd)
    assert Sensors("/").sample()["throttling"] == PI_0x50005
    assert calls == [(["vcgencmd", "get_throttled"], sensors.VCGENCMD_TIMEOUT_S)]

    def hangs(command: list[str], **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(sensors.subprocess, "run", hangs)
    assert Sensors("/").sample()["throttling"] is None


def test_present_names_what_the_host_has(sysfs: Path) -> None:
    sampler = Sensors(sysfs)
    sample = sampler.sample()
    assert sample["cpu_percent"] is None  # too soon after the first read to give a share ...
    assert sampler.present(sample) == {  # ... but /proc/stat is there: CPU % is present
        "cpu_percent", "temperatures_c", "temperatures_c.cpu-thermal", "temperatures_c.gpu-thermal",
        "temperatures_c.thermal_zone2", "temperatures_c.thermal_zone10", "memory_available_mb", "memory_counts",
        "meminfo_available_mb", "memory_total_mb", "memory_pressure", "memory_pressure_full", "rss_mb",
        "throttling", *(f"throttling.{flag}" for flag in PI_0x50005)}


def test_cgroup_limited_container(sysfs: Path) -> None:
    write(sysfs, "proc/self/cgroup", "0::/system.slice/edged.service\n")
    write(sysfs, "sys/fs/cgroup/system.slice/edged.service/memory.max", "536870912\n")
    write(sysfs, "sys/fs/cgroup/system.slice/edged.service/memory.current", "400000000\n")
    sample = Sensors(sysfs).sample()
    assert sample["cgroup"] == {"limit_mb": 512.0, "current_mb": 381.5, "headroom_mb": 130.5}
    assert sample["meminfo_available_mb"] == 1000.0
    assert sample["memory_available_mb"] == 130.5
    assert sample["memory_counts"] == "cgroup"
    assert Sensors.readings(sample).memory_available_mb == 130.5
    described = {path for _, path, _ in Sensors(sysfs).describe()}
    assert "sys/fs/cgroup/system.slice/edged.service/memory.max" in described

    write(sysfs, "sys/fs/cgroup/system.slice/edged.service/memory.max", "max\n")  # no limit: the host counts
    sample = Sensors(sysfs).sample()
    assert sample["cgroup"] == {"limit_mb": None, "current_mb": 381.5, "headroom_mb": None}
    assert (sample["memory_available_mb"], sample["memory_counts"]) == (1000.0, "meminfo")

    write(sysfs, "proc/self/cgroup", "0::/\n")  # the root cgroup has neither file
    assert Sensors(sysfs).sample()["cgroup"] is None


def test_cgroup_v1_memory_controller_on_a_hybrid_host(sysfs: Path) -> None:
    """Jetson L4T 35 and other hybrid hosts: the memory controller is on cgroup v1, and systemd applies
    MemoryMax= there as memory.limit_in_bytes; the unified hierarchy has no memory files."""
    unit = "system.slice/edged.service"
    write(sysfs, "proc/self/cgroup", f"12:pids:/{unit}\n4:memory:/{unit}\n1:name=systemd:/{unit}\n0::/{unit}\n")
    write(sysfs, f"sys/fs/cgroup/unified/{unit}/cgroup.procs", "1\n")
    write(sysfs, f"sys/fs/cgroup/memory/{unit}/memory.limit_in_bytes", "734003200\n")
    write(sysfs, f"sys/fs/cgroup/memory/{unit}/memory.usage_in_bytes", "400000000\n")
    sample = Sensors(sysfs).sample()
    assert sample["cgroup"] == {"limit_mb": 700.0, "current_mb": 381.5, "headroom_mb": 318.5}
    assert (sample["memory_available_mb"], sample["memory_counts"]) == (318.5, "cgroup")
    described = {path for _, path, _ in Sensors(sysfs).describe()}
    assert f"sys/fs/cgroup/memory/{unit}/memory.limit_in_bytes" in described

    write(sysfs, f"sys/fs/cgroup/memory/{unit}/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    sample = Sensors(sysfs).sample()
    assert sample["cgroup"] == {"limit_mb": None, "current_mb": 381.5, "headroom_mb": None}
    assert sample["memory_counts"] == "meminfo"

    write(sysfs, "proc/self/cgroup", "4:memory:/\n0::/\n")  # the root cgroup: v1's files count the whole host
    assert Sensors(sysfs).sample()["cgroup"] is None


def test_a_host_without_any_sensor(tmp_path: Path) -> None:
    nothing = {"cpu_percent": None, "cpu_throttled": None, "cpu_freq": None, "temperatures_c": {},
               "memory_available_mb": None, "memory_counts": None, "meminfo_available_mb": None,
               "memory_total_mb": None, "cgroup": None, "memory_pressure": None, "memory_pressure_full": None,
               "rss_mb": None, "throttling": None, "gpu": None}
    sampler = Sensors(tmp_path)
    assert sampler.sample() == nothing
    assert sampler.describe() == []
    assert sampler.present(nothing) == set()
    assert Sensors.readings(nothing) == Readings()


def test_garbled_files_give_none(sysfs: Path) -> None:
    write(sysfs, "proc/self/cgroup", "0::/edged\n")
    write_cpus(sysfs, [1000], 2000, 2000)
    write(sysfs, "sys/devices/platform/gpu.0/load", "1\n")
    garbled = ["proc/stat", "proc/meminfo", "proc/pressure/memory", "proc/self/status", GET_THROTTLED,
               "sys/fs/cgroup/edged/memory.max", "sys/fs/cgroup/edged/memory.current",
               "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq",
               "sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "sys/devices/platform/gpu.0/load",
               *(f"sys/class/thermal/thermal_zone{n}/temp" for n in (0, 1, 2, 10))]
    for relative in garbled:
        write(sysfs, relative, "garbage ~ \x00 zz\n")
    (sysfs / "sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq").write_bytes(b"\xff\xfe")  # not UTF-8
    sample = Sensors(sysfs).sample()
    assert {key for key, value in sample.items() if value not in (None, {})} == set()


def test_this_machine_reads_without_error() -> None:
    sampler = Sensors("/")
    sum(range(200_000))
    sample = sampler.sample()
    assert sample["cpu_percent"] is None or 0 <= sample["cpu_percent"] <= 100
    assert sample["meminfo_available_mb"] is None or 0 < sample["meminfo_available_mb"] <= sample["memory_total_mb"]
    assert sample["memory_available_mb"] is None or sample["memory_available_mb"] <= sample["meminfo_available_mb"]
    assert sample["rss_mb"] is not None and sample["rss_mb"] > 0  # this process
    assert isinstance(Sensors.readings(sample), Readings)
    for name, path, _ in sampler.describe():
        assert name and not path.startswith("/") or path == "vcgencmd get_throttled"


def test_edged_sensors_lists_what_it_finds_and_the_level(tmp_path: Path) -> None:
    """What an operator runs on a new board: every sensor with its path and value, then the level."""
    root = tmp_path / "board"
    write_zones(root, {"thermal_zone0": ("CPU-therm", "52500"), "thermal_zone1": ("GPU-therm", "76250")})
    write(root, "sys/devices/platform/gpu.0/load", "345\n")
    config = tmp_path / "edged.yaml"
    config.write_text(f"resources: {{sysfs_root: {root}, thermal: {{warn_c: 70, critical_c: 85}}}}\n")
    result = run_edged("sensors", "-c", config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("temperature GPU-therm" in line and "76.2" in line
               and line.endswith(str(root / "sys/class/thermal/thermal_zone1/temp")) for line in lines), lines
    assert any("gpu load %" in line and "34.5" in line for line in lines), lines
    assert lines[-1].startswith("level: elevated (thermal: ") and '"zone": "GPU-therm"' in lines[-1]
    report = json.loads(run_edged("sensors", "-c", config, "--json").stdout)
    assert report["level"] == "elevated" and report["cause"] == "thermal"
    assert {"sensor": "gpu load %", "path": "sys/devices/platform/gpu.0/load", "value": 34.5} in report["sensors"]
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"resources: {{sysfs_root: {tmp_path / 'nothing'}}}\n")
    assert run_edged("sensors", "-c", empty).stdout.splitlines()[-2:] == [
        f"no sensor found under {tmp_path / 'nothing'}", "level: normal"]
