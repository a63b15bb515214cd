"""What the live view shows and a recording holds, as Foxglove messages (DESIGN.md 1.4; README "Live view,
recording and replay").

Channels, each stream's and the daemon's, with the frame's capture time as timestamp and log time:

- ``/<stream>/image``: ``foxglove.CompressedImage`` (protobuf), the frame as JPEG (or PNG: lossless, for exact
  replays), ``frame_id`` the stream's name;
- ``/<stream>/annotations``: ``foxglove.ImageAnnotations`` (protobuf): a box (line loop) per detection and a
  label ``"<label> <score> #<track id>"``, in the image's pixels, the same frames as the images;
- ``/<stream>/detections``: the detections message, as on MQTT (JSON, schema ``edged.detections/1``), every frame;
- ``/health``: the health message (JSON, ``edged.health/1``), its ``ts`` as the time.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import cv2
import numpy as np
from foxglove import Channel, Context, Schema
from foxglove.channels import CompressedImageChannel, ImageAnnotationsChannel
from foxglove.messages import (Color, CompressedImage, ImageAnnotations, Point2, PointsAnnotation, PointsAnnotationType,
                               TextAnnotation, Timestamp)

from edged.errors import EdgedError
from edged.messages import DETECTIONS_SCHEMA, HEALTH_SCHEMA

IMAGE_FORMATS = ("jpeg", "png")
HEALTH_TOPIC = "/health"
# One colour per class id (RGB, 0..1), cycling: the snapshots' palette (edged.sinks, BGR 0..255).
_PALETTE = [(255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49), (72, 249, 10),
            (146, 204, 23), (61, 219, 134), (0, 188, 211), (0, 148, 255), (0, 55, 255), (0, 24, 236)]


def image_topic(stream: str) -> str:
    return f"/{stream}/image"


def annotations_topic(stream: str) -> str:
    return f"/{stream}/annotations"


def detections_topic(stream: str) -> str:
    return f"/{stream}/detections"


def nanoseconds(seconds: float) -> int:
    """Unix seconds as the integer nanoseconds MCAP and Foxglove use (rounded: 1.25 s is 1250000000 ns)."""
    return int(round(seconds * 1e9))


def timestamp(seconds: float) -> Timestamp:
    ns = nanoseconds(seconds)
    return Timestamp(sec=ns // 1_000_000_000, nsec=ns % 1_000_000_000)


def encode_image(image: np.ndarray, image_format: str, quality: int) -> bytes:
    """A BGR frame as JPEG (``quality`` 1-100) or PNG bytes."""
    if image_format == "jpeg":
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, data = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])  # fast: this runs at max_fps
    if not ok:
        raise EdgedError(f"the frame could not be encoded as {image_format}")
    return data.tobytes()


def image_message(stream: str, ts_capture: float, data: bytes, image_format: str) -> CompressedImage:
    return CompressedImage(timestamp=timestamp(ts_capture), frame_id=stream, data=data, format=image_format)


def annotations_message(ts_capture: float, detections: list[dict[str, Any]]) -> ImageAnnotations:
    """Boxes and labels of a detections message's ``detections`` (their JSON form)."""
    stamp = timestamp(ts_capture)
    boxes, labels = [], []
    for detection in detections:
        x1, y1, x2, y2 = detection["box"]
        red, green, blue = _PALETTE[detection["class_id"] % len(_PALETTE)]
        color = Color(r=red / 255, g=green / 255, b=blue / 255, a=1.0)
        boxes.append(PointsAnnotation(timestamp=stamp, type=PointsAnnotationType.LineLoop, outline_color=color,
                                      thickness=2.0, points=[Point2(x=x1, y=y1), Point2(x=x2, y=y1),
                                                             Point2(x=x2, y=y2), Point2(x=x1, y=y2)]))
        text = f"{detection['label']} {detection['score']:.2f}"
        if detection.get("track_id") is not None:
            text += f" #{detection['track_id']}"
        labels.append(TextAnnotation(timestamp=stamp, position=Point2(x=x1, y=max(y1 - 2, 0)), text=text,
                                     font_size=12.0, text_color=Color(r=1.0, g=1.0, b=1.0, a=1.0),
                                     background_color=color))
    return ImageAnnotations(points=boxes, texts=labels)


@cache
def _json_schema(name: str, file: str) -> Schema:
    data = resources.files("edged.schemas").joinpath(file).read_bytes()
    return Schema(name=name, encoding="jsonschema", data=data)


def json_bytes(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


class StreamChannels:
    """One stream's three channels in ``context``."""

    def __init__(self, context: Context, stream: str):
        self.image = CompressedImageChannel(image_topic(stream), context=context)
        self.annotations = ImageAnnotationsChannel(annotations_topic(stream), context=context)
        self.detections = Channel(detections_topic(stream), message_encoding="json", context=context,
                                  schema=_json_schema(DETECTIONS_SCHEMA, "detections.json"))

    def wants_images(self) -> bool:
        """A client subscribed to the image or annotations, or a recording: only then is a frame encoded."""
        return self.image.has_sinks() or self.annotations.has_sinks()

    def close(self) -> None:
        for channel in (self.image, self.annotations, self.detections):
            channel.close()


def health_channel(context: Context) -> Channel:
    return Channel(HEALTH_TOPIC, message_encoding="json", context=context,
                   schema=_json_schema(HEALTH_SCHEMA, "health.json"))
