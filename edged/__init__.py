"""edged: object detection on edge devices, published over MQTT."""

import os

__version__ = "0.1.0"

# FFmpeg (inside OpenCV) prints its own parser noise for unreadable files; edged reports
# those itself, naming the source. Must be set before OpenCV opens a capture.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")  # AV_LOG_FATAL
# OpenCV's own "[ WARN ]" lines (one per timed-out read or failed open of a camera) would repeat what the
# stream reader logs once per outage, and flood the journal while a camera is down.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
