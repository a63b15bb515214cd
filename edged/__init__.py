"""edged: object detection on edge devices, published over MQTT."""

import os

__version__ = "0.1.0"

# FFmpeg (inside OpenCV) prints its own parser noise for unreadable files; edged reports
# those itself, naming the source. Must be set before OpenCV opens a capture.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")  # AV_LOG_FATAL
