"""Source and URL spellings, as a config or the command line writes them: the kind of source one names, and
a form fit to show. No OpenCV and no pydantic here: the config and the frame sources both use them."""

from __future__ import annotations

import re
from pathlib import Path

FILE_KINDS = ("video", "image", "images")  # source kinds that are paths on this machine
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(spec: str) -> str:
    """A source or URL spelling fit for logs, events, errors and published state: ``rtsp://user:pw@host`` ->
    ``rtsp://***@host``."""
    return _CREDENTIALS.sub("***@", spec)


def source_kind(spec: str) -> str:
    """``camera``, ``url``, ``gstreamer``, ``images`` (a folder), ``image`` or ``video``."""
    if spec.isdigit() or spec.startswith("/dev/video"):
        return "camera"
    if _URL.match(spec):
        return "url"
    if "!" in spec and "appsink" in spec:
        return "gstreamer"
    path = Path(spec)
    if path.is_dir():
        return "images"
    return "image" if path.suffix.lower() in IMAGE_SUFFIXES else "video"
