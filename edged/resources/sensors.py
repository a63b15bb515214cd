"""The board's sensors: temperatures, CPU load and clocks, memory (host and cgroup), Raspberry Pi throttling
flags, Jetson GPU load and clock.

Every path is read under ``sysfs_root`` (config ``resources.sysfs_root``, default ``/``), so tests and
containers can point it at a copy. A sensor the host lacks is absent (None, or no entry), never an error:
the same daemon runs on a Jetson, a Pi and a plain Linux box.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from edged.resources.readings import Readings

# Raspberry Pi firmware's get_throttled bits (vcgencmd get_throttled).
THROTTLE_FLAGS = {0: "under_voltage", 1: "freq_capped", 2: "throttled", 3: "soft_temp_limit",
                  16: "under_voltage_occurred", 17: "freq_capped_occurred", 18: "throttled_occurred",
                  19: "soft_temp_limit_occurred"}
GET_THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"
VCGENCMD_TIMEOUT_S = 2.0
# GPU load in 0.1 % units: Orin / Xavier first, then older Jetsons.
GPU_LOAD = ("sys/devices/platform/gpu.0/load", "sys/devices/gpu.0/load")
# devfreq names of Jetson GPUs besides those with "gpu" in them (17000000.gpu, 57000000.gpu): Orin, Xavier, TX2, Nano.
GPU_DEVFREQ = ("gpu", "ga10b", "gv11b", "gp10b", "gm20b")
BUSY_PERCENT = 80.0  # a CPU this busy ...
SLOW_SHARE = 0.8  # ... whose fastest core runs below this share of its maximum is throttled

Found = tuple[str, str, Any]  # (sensor, path relative to the root, value)


class _Tree:
    """Reads files under the root and notes every sensor found, so that ``describe`` lists exactly what
    ``sample`` read."""

    def __init__(self, root: Path):
        self.root = root
        self.found: list[Found] = []

    def text(self, relative: str) -> str | None:
        try:
            return (self.root / relative).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def number(self, relative: str, scale: float = 1.0, name: str | None = None) -> float | None:
        """An integer file divided by ``scale`` (to the unit reported), noted under ``name``."""
        try:
            value = round(int((self.text(relative) or "").strip()) / scale, 1)
        except ValueError:
            return None
        if name:
            self.note(name, relative, value)
        return value

    def dirs(self, relative: str, pattern: str) -> list[str]:
        """Relative paths of the folders matching ``pattern``, in numeric order (cpu2 before cpu10)."""
        found = [p for p in (self.root / relative).glob(pattern) if p.is_dir()]
        found.sort(key=lambda p: (len(p.name), p.name))
        return [f"{relative}/{p.name}" for p in found]

    def note(self, name: str, relative: str, value: Any) -> None:
        self.found.append((name, relative, value))


class Sensors:
    """``sample()``: the health message's ``resources`` section; ``readings()``: what the governor needs of it;
    ``describe()``: every sensor found, with its path and value. CPU % is the busy share of all CPUs since the
    previous read (the first: since construction), so keep one instance."""

    def __init__(self, sysfs_root: Path | str = "/"):
        self.root = Path(sysfs_root)
        self._last = _cpu_times(_Tree(self.root))

    def sample(self) -> dict[str, Any]:
        return self.read()[0]

    def describe(self) -> list[Found]:
        """(sensor, path relative to the root, value) of every sensor read now, for ``edged sensors``: what this
        host has, and where."""
        return self.read()[1]

    def present(self, sample: dict[str, Any]) -> set[str]:
        """The readings this host has, as paths into ``sample`` (one of this instance's): ``"temperatures_c"``,
        ``"gpu.load_percent"``, every value neither None nor empty; and ``cpu_percent`` wherever /proc/stat can be
        read, though a read too soon after the previous one (the first, say) has no share to give."""
        found = {"cpu_percent"} if self._last is not None else set()
        for key, value in sample.items():
            if value is not None and value != {}:
                found.add(key)
                if isinstance(value, dict):
                    found |= {f"{key}.{part}" for part, inner in value.items() if inner is not None}
        return found

    @staticmethod
    def readings(sample: dict[str, Any]) -> Readings:
        """The governor's part of a ``sample()``: plain data, so that the governor stays a pure function."""
        return Readings(temperatures_c=sample["temperatures_c"], memory_available_mb=sample["memory_available_mb"],
                        memory_pressure=sample["memory_pressure"], throttling=sample["throttling"],
                        cpu_throttled=sample["cpu_throttled"])

    def read(self) -> tuple[dict[str, Any], list[Found]]:
        """``sample()`` and ``describe()`` from one reading."""
        tree = _Tree(self.root)
        times, last = _cpu_times(tree), self._last
        self._last = times
        cpu = None
        if times and last and times[1] > last[1]:
            cpu = round(100 * (times[0] - last[0]) / (times[1] - last[1]), 1)
            tree.note("cpu busy %", "proc/stat", cpu)
        cpu_freq, cpu_throttled = _cpu_freq(tree, cpu)
        sample = {"cpu_percent": cpu, "cpu_throttled": cpu_throttled, "cpu_freq": cpu_freq,
                  "temperatures_c": _temperatures_c(tree), **_memory(tree),
                  "rss_mb": _rss_mb(tree),
                  "throttling": _throttling(tree), "gpu": _gpu(tree)}
        return sample, tree.found


def _cpu_times(tree: _Tree) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; guest time is already inside user."""
    text = tree.text("proc/stat")
    try:
        fields = [int(v) for v in text.splitlines()[0].split()[1:9]] if text and text.startswith("cpu ") else []
    except ValueError:
        return None
    if len(fields) < 4:
        return None
    total = sum(fields)
    return total - sum(fields[3:5]), total  # idle + iowait


def _cpu_freq(tree: _Tree, cpu_percent: float | None) -> tuple[dict[str, Any] | None, bool | None]:
    """Current clocks (slowest and fastest core), the hardware maximum, whether any core is capped below its
    maximum (scaling_max_freq < cpuinfo_max_freq: a Pi's firmware, a Jetson power mode, a user), MHz; and
    ``cpu_throttled``: busy while even the fastest core runs well below its hardware maximum. A cap alone is
    not throttling (it may be chosen); a cap that holds a busy CPU well down counts, whoever set it, and
    ``resources.throttling: false`` is the way out on a board run in a low power mode on purpose.
    None, None without cpufreq."""
    current, maximum, capped, shares = [], [], [], []
    for cpu in tree.dirs("sys/devices/system/cpu", "cpu[0-9]*"):
        name = cpu.rsplit("/", 1)[1]
        cur = tree.number(f"{cpu}/cpufreq/scaling_cur_freq", 1000, f"{name} current MHz")  # kHz
        hw = tree.number(f"{cpu}/cpufreq/cpuinfo_max_freq", 1000, f"{name} max MHz")
        limit = tree.number(f"{cpu}/cpufreq/scaling_max_freq", 1000, f"{name} scaling max MHz")
        current += [cur] if cur is not None else []
        maximum += [hw] if hw is not None else []
        if hw:
            capped += [limit < hw] if limit is not None else []
            shares += [cur / hw] if cur is not None else []
    if not (current or maximum):
        return None, None
    slow_while_busy = (cpu_percent is not None and cpu_percent > BUSY_PERCENT and bool(shares)
                       and max(shares) < SLOW_SHARE)
    summary = {"current_min_mhz": min(current, default=None), "current_max_mhz": max(current, default=None),
               "max_mhz": max(maximum, default=None), "capped": any(capped) if capped else None}
    return summary, slow_while_busy


def _temperatures_c(tree: _Tree) -> dict[str, float]:
    """By zone type (the zone's folder name when the type is missing or taken); unreadable zones left out."""
    temperatures: dict[str, float] = {}
    for zone in tree.dirs("sys/class/thermal", "thermal_zone*"):
        celsius = tree.number(f"{zone}/temp", 1000)  # millidegrees
        if celsius is None:
            continue
        kind = (tree.text(f"{zone}/type") or "").strip()
        key = kind if kind and kind not in temperatures else zone.rsplit("/", 1)[1]
        temperatures[key] = celsius
        tree.note(f"temperature {key} °C", f"{zone}/temp", celsius)
    return temperatures


def _memory(tree: _Tree) -> dict[str, Any]:
    """Host and cgroup memory. ``memory_available_mb`` is the smaller of MemAvailable and the cgroup's headroom
    (a container or a systemd MemoryMax= is killed at its limit however much the host has free);
    ``memory_counts`` says which."""
    meminfo: dict[str, float] = {}
    for line in (tree.text("proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key in ("MemAvailable", "MemTotal") and parts and parts[0].isdigit():
            meminfo[key] = round(int(parts[0]) / 1024, 1)  # kB
            tree.note(f"{key} MB", "proc/meminfo", meminfo[key])
    available, cgroup = meminfo.get("MemAvailable"), _cgroup(tree)
    headroom = cgroup["headroom_mb"] if cgroup else None
    counts = None
    if headroom is not None and (available is None or headroom < available):
        counts, available = "cgroup", headroom
    elif available is not None:
        counts = "meminfo"
    return {"memory_available_mb": available, "memory_counts": counts,
            "meminfo_available_mb": meminfo.get("MemAvailable"), "memory_total_mb": meminfo.get("MemTotal"),
            "cgroup": cgroup, "memory_pressure": _pressure(tree, "some"),
            "memory_pressure_full": _pressure(tree, "full")}


# cgroup v1 writes "no limit" as the largest page-aligned long (9223372036854771712 with 4 KiB pages).
V1_UNLIMITED_BYTES = 2 ** 60


def _cgroup(tree: _Tree) -> dict[str, float | None] | None:
    """This process's cgroup memory limit (None: none), use and headroom, MB: cgroup v2's memory.max and
    memory.current, else, where the memory controller is on cgroup v1 (hybrid hosts such as Jetson L4T 35, where
    systemd applies MemoryMax= as memory.limit_in_bytes), v1's limit_in_bytes and usage_in_bytes. None where
    neither is found, and in the root cgroup (v2 has neither file there; v1's count the whole host)."""
    v2_path = v1_path = None
    for line in (tree.text("proc/self/cgroup") or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2_path = path.strip().strip("/")
        elif "memory" in controllers.split(","):
            v1_path = path.strip().strip("/")
    if v2_path is not None:
        folder = f"sys/fs/cgroup/{v2_path}".rstrip("/")
        current = tree.number(f"{folder}/memory.current", 1024 * 1024, "cgroup memory.current MB")
        unlimited = (tree.text(f"{folder}/memory.max") or "").strip() == "max"
        if unlimited:
            tree.note("cgroup memory.max", f"{folder}/memory.max", "max")
        limit = None if unlimited else tree.number(f"{folder}/memory.max", 1024 * 1024, "cgroup memory.max MB")
        if unlimited or limit is not None or current is not None:
            return _headroom(limit, current)
    if v1_path:  # "" is the root cgroup
        folder = f"sys/fs/cgroup/memory/{v1_path}"
        current = tree.number(f"{folder}/memory.usage_in_bytes", 1024 * 1024, "cgroup v1 memory.usage_in_bytes MB")
        limit = tree.number(f"{folder}/memory.limit_in_bytes", 1024 * 1024)
        if limit is not None and limit >= V1_UNLIMITED_BYTES / (1024 * 1024):
            tree.note("cgroup v1 memory.limit_in_bytes", f"{folder}/memory.limit_in_bytes", "max")
            limit = None
        elif limit is not None:
            tree.note("cgroup v1 memory.limit_in_bytes MB", f"{folder}/memory.limit_in_bytes", limit)
        if limit is not None or current is not None:
            return _headroom(limit, current)
    return None


def _headroom(limit: float | None, current: float | None) -> dict[str, float | None]:
    headroom = round(max(limit - current, 0.0), 1) if limit is not None and current is not None else None
    return {"limit_mb": limit, "current_mb": current, "headroom_mb": headroom}


def _pressure(tree: _Tree, kind: str) -> float | None:
    """PSI ``some``/``full avg10``: the share (%) of the last 10 s in which some / all tasks waited for memory."""
    for line in (tree.text("proc/pressure/memory") or "").splitlines():
        if line.startswith(kind + " "):
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    try:
                        pressure = float(value)
                    except ValueError:
                        return None
                    tree.note(f"memory pressure {kind} avg10 %", "proc/pressure/memory", pressure)
                    return pressure
    return None


def _rss_mb(tree: _Tree) -> float | None:
    """The daemon's own resident memory (VmRSS), MB."""
    for line in (tree.text("proc/self/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) > 1 and parts[1].isdigit():
                rss = round(int(parts[1]) / 1024, 1)  # kB
                tree.note("VmRSS MB", "proc/self/status", rss)
                return rss
    return None


def _throttling(tree: _Tree) -> dict[str, bool] | None:
    """Raspberry Pi firmware flags, now and since boot ("occurred"); None off a Pi. The firmware's sysfs node,
    else ``vcgencmd get_throttled`` on the real root (kernels without the node)."""
    source, text = GET_THROTTLED, tree.text(GET_THROTTLED)
    if text is None and tree.root == Path("/") and shutil.which("vcgencmd"):
        source = "vcgencmd get_throttled"
        try:
            result = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True,
                                    timeout=VCGENCMD_TIMEOUT_S, check=True)
            text = result.stdout.partition("=")[2]  # "throttled=0x50005"
        except (OSError, subprocess.SubprocessError):
            return None
    try:
        bits = int(text.strip(), 16) if text else None
    except ValueError:
        return None
    if bits is None:
        return None
    flags = {name: bool(bits >> bit & 1) for bit, name in THROTTLE_FLAGS.items()}
    tree.note("throttling", source, [name for name, on in flags.items() if on])
    return flags


def _gpu(tree: _Tree) -> dict[str, float | None] | None:
    """Jetson GPU load (%) and clock (MHz, from its devfreq node); None when neither is found."""
    load = next((value for relative in GPU_LOAD
                 if (value := tree.number(relative, 10, "gpu load %")) is not None), None)  # 0.1 % units
    freq = max_freq = None
    for node in tree.dirs("sys/class/devfreq", "*"):
        if any(part in node.rsplit("/", 1)[1] for part in GPU_DEVFREQ):
            freq = tree.number(f"{node}/cur_freq", 1e6, "gpu current MHz")  # Hz
            max_freq = tree.number(f"{node}/max_freq", 1e6, "gpu max MHz")
            if freq is not None or max_freq is not None:
                break
    if load is None and freq is None and max_freq is None:
        return None
    return {"load_percent": load, "freq_mhz": freq, "max_freq_mhz": max_freq}
