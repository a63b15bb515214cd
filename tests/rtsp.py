"""A real RTSP camera on a free loopback port: gst-rtsp-server serving a live H.264 test pattern.

    def test_reconnects(rtsp_server: RtspServer) -> None:
        ...  # point the code under test at rtsp_server.url
        rtsp_server.pause()    # a hung camera: sockets open, nothing sent or answered
        rtsp_server.resume()
        rtsp_server.kill()     # a crash: connections reset, the port refuses
        rtsp_server.start()    # back, on the same port

The server runs as its own process (tests/rtsp_server.py under Debian's /usr/bin/python3, which has gi);
tests that use the ``rtsp_server`` fixture are skipped, saying what to install, where that stack is missing.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import HOST, free_port
from tests.server_process import ServerProcess

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
MOUNT = "/cam"


@functools.cache
def missing() -> str:
    """What the server needs and is not installed ("" when all is); checked once per test run."""
    if not Path(SYSTEM_PYTHON).is_file():
        return f"{SYSTEM_PYTHON} not found"
    check = subprocess.run([SYSTEM_PYTHON, str(SERVER_SCRIPT), "--check"], check=False, capture_output=True,
                           text=True, timeout=30)
    return "" if check.returncode == 0 else (check.stdout + check.stderr).strip()


def available() -> bool:
    """Whether python3-gi, GstRtspServer and the x264enc / rtph264pay / videotestsrc elements are installed."""
    return not missing()


class RtspServer(ServerProcess):
    """gst-rtsp-server serving ``rtsp://127.0.0.1:PORT/cam``: live, ``fps`` frames per second, a keyframe every
    second, one encoder shared by all clients and running whether or not one watches, as a camera does. Its log
    is ``folder/rtsp-server.log``. The port stays the same across ``restart()`` and ``kill()`` + ``start()``."""

    def __init__(self, folder: Path, *, width: int = 320, height: int = 240, fps: int = 15):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.width, self.height, self.fps = width, height, fps
        self.port = free_port()
        self.log_file = folder / "rtsp-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://{HOST}:{self.port}{MOUNT}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers a DESCRIBE for the mount (the pipeline is built)."""
        assert self.process is None, "already running"
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [SYSTEM_PYTHON, str(SERVER_SCRIPT), str(self.port), f"--width={self.width}",
                 f"--height={self.height}", f"--fps={self.fps}"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._describes():
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise RuntimeError(f"rtsp_server.py exited with {code}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"rtsp_server.py did not serve {self.url} in {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def _describes(self) -> bool:
        """One RTSP DESCRIBE of the mount: True on ``200 OK``, False if refused or not (yet) served."""
        request = f"DESCRIBE {self.url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as connection:
                connection.sendall(request.encode())
                return connection.recv(64).startswith(b"RTSP/1.0 200")
        except OSError:
            return False


@pytest.fixture
def rtsp_server(tmp_path: Path) -> Iterator[RtspServer]:
    """A running RTSP server (320x240 at 15 fps) for one test. Where the stack is missing the test is
    skipped, except in CI (``CI`` set), whose scripts/setup.sh installs it: there it fails."""
    if problem := missing():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"no RTSP test server: {problem}")
    with RtspServer(tmp_path / "rtsp") as running:
        yield running
