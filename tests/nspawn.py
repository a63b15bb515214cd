"""A Debian root (scripts/systemd-test-root.sh) booted with systemd as PID 1 under systemd-nspawn, for the tests
that run edged under a real systemd; commands run inside it through nsenter (no machined needed on the host).

The container's systemd gets the cgroup hierarchy that holds this host's memory controller, so that MemoryMax= takes
effect there: the unified one (cgroup v2, nspawn's default) where the host's v2 has it, else the legacy one (cgroup
v1, as on a hybrid host such as Jetson L4T 35). nspawn mounts v1 controllers read-only inside the container; the
memory controller's mount is made writable and systemd re-executed, which is what a host's own systemd has.

The root is booted with ``--volatile=overlay``: every boot starts from the root as built, and what the tests write
(the venv install.sh makes, /etc/edged) lives in memory and goes with the container. The container shares the
host's network, so the daemon inside reaches the tests' broker and RTSP camera on the host's loopback.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

DEFAULT_ROOT = Path(os.environ.get("EDGED_SYSTEMD_ROOT", "/var/tmp/edged-systemd-root"))
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing(root: Path = DEFAULT_ROOT) -> str:
    """What this host lacks to boot the root ("" when nothing)."""
    if os.geteuid() != 0:
        return "not root: systemd-nspawn needs root"
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt install systemd-container util-linux)"
    if not (root / "lib/systemd/systemd").exists() or not (root / ".edged-wheels").exists():
        return f"no test root at {root}: build it with sudo bash scripts/systemd-test-root.sh"
    return ""


def host_memory_hierarchy() -> str | None:
    """Where this host's memory controller is: "v2", "v1" or None (none mounted)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, _ = line.split(":", 2)
        if hierarchy != "0" and "memory" in controllers.split(","):
            return "v1"
    for unified in (Path("/sys/fs/cgroup/cgroup.controllers"), Path("/sys/fs/cgroup/unified/cgroup.controllers")):
        if unified.exists() and "memory" in unified.read_text().split():
            return "v2"
    return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _first_systemd(pid: int) -> int:
    """The first process named systemd below ``pid`` (nspawn's child, or its child's, as nspawn sets up), or 0."""
    level = _children(pid)
    while level:
        for child in level:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return child
            except OSError:
                continue
        level = [grandchild for child in level for grandchild in _children(child)]
    return 0


class Container:
    """``systemd-nspawn --boot`` of ``root``; ``binds`` maps host paths to paths inside (read-write)."""

    def __init__(self, root: Path, log: Path, binds: dict[Path, str] | None = None, name: str = "edged-test"):
        self.root, self.log_path, self.name = root, log, name
        self.binds = [f"--bind={host}:{inside}" for host, inside in (binds or {}).items()]
        self.process: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1 (systemd), as the host sees it
        self.memory_hierarchy = host_memory_hierarchy()

    def start(self, timeout: float = 60.0) -> Container:
        self._log = self.log_path.open("wb")
        environment = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="0" if self.memory_hierarchy == "v1" else "1")
        # --keep-unit and --register=no: no scope or registration through the host's systemd (it may have none).
        self.process = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit", "--volatile=overlay",
             f"--machine={self.name}", "-D", str(self.root), *self.binds],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env=environment)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the container did not start: {self.log()}")
            self.leader = _first_systemd(self.process.pid)
            if not self.leader:
                time.sleep(0.1)
        while True:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                if self.memory_hierarchy == "v1":
                    self._delegate_v1_memory()
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"the container's systemd is {state!r} after {timeout} s: {self.log()}")
            time.sleep(0.2)

    def _delegate_v1_memory(self) -> None:
        # A bind remount changes only the container's view of the mount; systemd decides at start which
        # controllers it can use, hence the re-exec.
        subprocess.run(["nsenter", "-t", str(self.leader), "-m", "mount", "-o", "remount,bind,rw,nosuid,nodev,noexec",
                        "/sys/fs/cgroup/memory"], check=True, capture_output=True)
        self.run("systemctl", "daemon-reexec")

    def run(self, *command: str, check: bool = True, timeout: float = 60.0, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``command`` inside the container (its namespaces, a clean environment plus ``env``)."""
        extra = [f"{key}={value}" for key, value in (env or {}).items()]
        result = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "env", "-i", PATH, "LANG=C.UTF-8", *extra,
                                 *command], check=False, capture_output=True, text=True, timeout=timeout,
                                input=stdin)
        if check and result.returncode:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def write(self, path: str, text: str, mode: str = "0644", owner: str = "root:root") -> None:
        self.run("install", "-D", "-m", mode, "-o", owner.split(":")[0], "-g", owner.split(":")[1], "/dev/stdin",
                 path, stdin=text)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
