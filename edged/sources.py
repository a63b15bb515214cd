"""Frame sources: image files, image folders, video files, cameras, URLs and GStreamer pipelines.

Every source yields ``Frame``s numbered from 0 in the order they were read, stamped with
the wall-clock time (Unix seconds) at which the read returned.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import cv2
import numpy as np

from edged.errors import SourceError
from edged.specs import IMAGE_SUFFIXES, redact, source_kind

log = logging.getLogger("edged.sources")

_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443}


@dataclass
class Frame:
    frame_id: int
    image: np.ndarray  # BGR uint8
    ts_capture: float  # Unix seconds, taken when the read returned
    file: str | None = None  # the image file, for image sources
    # Video files: the frame's time in the video (frame_id / fps), which a file read faster or slower than it
    # plays does not distort; the tracker's clock (velocities in pixels per second of the scene).
    ts_media: float | None = None

    @property
    def ts_scene(self) -> float:
        """When the scene looked like this: the video's time for files, else the capture time."""
        return self.ts_media if self.ts_media is not None else self.ts_capture


def has_gstreamer() -> bool:
    return any(line.strip().startswith("GStreamer:") and "YES" in line
               for line in cv2.getBuildInformation().splitlines())


class FrameSource:
    """Iterate to read frames; ``close()`` releases the device or file."""

    def __init__(self, spec: str):
        self.spec = spec
        self.kind = source_kind(spec)

    @property
    def fps(self) -> float | None:
        return None

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageSource(FrameSource):
    """One image file, or every image in a folder in name order."""

    def __init__(self, spec: str):
        super().__init__(spec)
        path = Path(spec)
        if self.kind == "images":
            self.paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.paths:
                raise SourceError(f"{path}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif not path.is_file():
            raise SourceError(f"{path}: image file not found")
        else:
            self.paths = [path]

    def __iter__(self) -> Iterator[Frame]:
        for frame_id, path in enumerate(self.paths):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            stamp = time.time()
            if image is None:
                if self.kind == "image":
                    raise SourceError(f"{path}: not an image OpenCV can decode")
                log.warning("source %s: skipped %s: not an image OpenCV can decode", self.spec, path.name)
                continue
            yield Frame(frame_id, image, stamp, file=path.name)


class CaptureSource(FrameSource):
    """Anything ``cv2.VideoCapture`` opens: video files, cameras, URLs, GStreamer pipelines.

    ``open_timeout_s`` and ``read_timeout_s`` bound how long opening a URL, and each read from it, may
    block (OpenCV's FFmpeg backend): a frozen camera makes ``read()`` fail instead of hanging for ever.
    """

    def __init__(self, spec: str, *, open_timeout_s: float | None = None, read_timeout_s: float | None = None):
        super().__init__(spec)
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s
        if self.kind == "video" and not Path(spec).is_file():
            raise SourceError(f"{spec}: video file not found")
        if self.kind == "gstreamer" and not has_gstreamer():
            raise SourceError(
                f"{spec}: this OpenCV build has no GStreamer (the PyPI opencv-python wheels lack it); use the "
                "system OpenCV: JetPack's, or Debian's python3-opencv in a venv made with --system-site-packages")
        self.capture = self._open()
        if not self.capture.isOpened():
            what = {"video": "not a video OpenCV can decode", "camera": "cannot open the camera",
                    "url": "cannot open the stream", "gstreamer": "cannot start the pipeline"}[self.kind]
            raise SourceError(f"{redact(spec)}: {what}")

    def _open(self) -> cv2.VideoCapture:
        if self.kind == "camera":
            device = int(self.spec) if self.spec.isdigit() else self.spec
            return cv2.VideoCapture(device, cv2.CAP_V4L2) if isinstance(device, str) else cv2.VideoCapture(device)
        if self.kind == "gstreamer":
            return cv2.VideoCapture(self.spec, cv2.CAP_GSTREAMER)
        if self.kind == "url" and (self.open_timeout_s or self.read_timeout_s):
            params = []
            for prop, seconds in ((cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_s),
                                  (cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_s)):
                if seconds:
                    params += [prop, round(seconds * 1000)]
            return cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, params)
        return cv2.VideoCapture(self.spec)

    @property
    def fps(self) -> float | None:
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        return fps if fps and fps > 0 else None

    def __iter__(self) -> Iterator[Frame]:
        frame_id = 0
        while True:
            ok, image = self.capture.read()
            stamp = time.time()
            if not ok:
                if frame_id == 0:
                    raise SourceError(f"{redact(self.spec)}: no frame could be read")
                return
            fps = self.fps if self.kind == "video" else None
            yield Frame(frame_id, image, stamp, ts_media=frame_id / fps if fps else None)
            frame_id += 1

    def close(self) -> None:
        self.capture.release()


def open_source(spec: str | int, *, open_timeout_s: float | None = None,
                read_timeout_s: float | None = None) -> FrameSource:
    """Open a source from its config or command-line spelling; raises SourceError naming it.
    The timeouts apply to URLs (see ``CaptureSource``)."""
    spec = str(spec)
    if source_kind(spec) in ("image", "images"):
        return ImageSource(spec)
    return CaptureSource(spec, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s)


def source_reachable(spec: str | int, timeout_s: float = 0.25) -> bool | None:
    """A cheap check, far cheaper than opening the source, of whether it could open now: the file or
    device exists, or a URL's host accepts a TCP connection on its port. None: no cheap check exists
    (GStreamer pipelines). A frozen server still accepts connections (the kernel answers), so True
    does not mean frames will flow; False is reliable."""
    spec = str(spec)
    kind = source_kind(spec)
    if kind == "gstreamer":
        return None
    if kind == "camera":
        return Path(spec if spec.startswith("/dev/") else f"/dev/video{spec}").exists()
    if kind != "url":
        return Path(spec).exists()
    parts = urlsplit(spec)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:  # a malformed port: opening will say what is wrong
        return None
    if not parts.hostname or port is None:
        return None
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def source_name(spec: str | int) -> str:
    """A short stream name for a source: the file or folder stem, ``camera0``, or the URL host."""
    spec = str(spec)
    kind = source_kind(spec)
    if kind == "camera":
        return "camera" + re.sub(r"\D", "", spec)
    if kind == "url":
        return re.sub(r"[^A-Za-z0-9_-]+", "_", spec.split("://", 1)[1].split("/", 1)[0]).strip("_") or "stream"
    if kind == "gstreamer":
        return "gstreamer"
    return Path(spec.rstrip("/")).stem or "stream"
