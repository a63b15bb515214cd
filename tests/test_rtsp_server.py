"""The RTSP test server itself: OpenCV reads its stream, and it comes back on the same port after a crash."""

from __future__ import annotations

import socket

import cv2
import numpy as np
import pytest

from tests.rtsp import HOST, RtspServer

TIMEOUTS = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 3000]


def read_frames(url: str, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, TIMEOUTS)
    try:
        assert capture.isOpened(), f"OpenCV cannot open {url}"
        frames = [image for ok, image in (capture.read() for _ in range(count)) if ok]
        assert capture.get(cv2.CAP_PROP_FPS) == 15
    finally:
        capture.release()
    return frames


def test_opencv_reads_the_live_stream(rtsp_server: RtspServer) -> None:
    frames = read_frames(rtsp_server.url, 5)
    assert len(frames) == 5
    assert all(frame.shape == (240, 320, 3) for frame in frames)


def test_serves_again_on_the_same_port_after_a_crash(rtsp_server: RtspServer) -> None:
    url = rtsp_server.url
    rtsp_server.kill()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, rtsp_server.port), timeout=1)
    rtsp_server.start()  # at once: the listener binds with SO_REUSEADDR
    assert rtsp_server.url == url
    assert len(read_frames(url, 1)) == 1
