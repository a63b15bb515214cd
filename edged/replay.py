"""``edged replay``: a recording's frames (edged.recording) through the detection pipeline again, with a given
model and thresholds, and how the new detections compare with the recorded ones.

A frame is a ``/<stream>/image`` message; its recorded detections are the ``/<stream>/detections`` message of
the same log time (the capture time). Frames are read in log-time order, one stream at a time, without loading
the file: the image and the detections of one frame sit next to each other in that order.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from mcap.exceptions import McapError
from mcap.reader import SeekingReader
from mcap_protobuf.decoder import DecoderFactory

from edged import foxglove_messages
from edged.detections import DetectionResult
from edged.errors import InputError
from edged.evaluation import iou_matrix, mean_average_precision
from edged.sources import Frame

log = logging.getLogger("edged.replay")

IMAGE_SCHEMA = "foxglove.CompressedImage"
MCAP_MAGIC = b"\x89MCAP0\r\n"


@dataclass
class Recording:
    """An MCAP file's image streams, checked whole before any frame is read."""

    path: Path
    streams: list[str]
    file: BinaryIO
    reader: SeekingReader
    image_counts: dict[str, int] = field(default_factory=dict)  # per stream, from the summary's statistics

    @classmethod
    def open(cls, path: Path) -> Recording:
        try:
            file = path.open("rb")
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
        try:
            if file.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
                raise InputError(f"{path}: not an MCAP file (no MCAP magic at its start)")
            file.seek(0)
            reader = SeekingReader(file)
            try:
                summary = reader.get_summary()
            except (McapError, OSError, ValueError, EOFError, IndexError, struct.error) as exc:  # "cut short"
                raise InputError(f"{path}: truncated or corrupt MCAP ({_describe(exc)}); a recording cut by a "
                                 "power loss is readable up to its torn end by MCAP's streaming readers (their "
                                 "complete chunks), and `mcap recover` rewrites it whole") from None
            if summary is None:
                raise InputError(f"{path}: an MCAP without a summary (truncated?): `mcap recover` rewrites it")
            images = {channel.topic.removeprefix("/").removesuffix("/image"): channel.id
                      for channel in summary.channels.values()
                      if channel.topic.endswith("/image")
                      and summary.schemas.get(channel.schema_id) is not None
                      and summary.schemas[channel.schema_id].name == IMAGE_SCHEMA}
            streams = sorted(images)
            counts = summary.statistics.channel_message_counts if summary.statistics else {}
            if not streams:
                topics = ", ".join(sorted(c.topic for c in summary.channels.values())) or "none"
                raise InputError(f"{path}: no image channels (/<stream>/image, {IMAGE_SCHEMA}); found topics: "
                                 f"{topics}")
        except BaseException:
            file.close()
            raise
        return cls(path, streams, file, reader,
                   {stream: counts[channel] for stream, channel in images.items() if channel in counts})

    def frames(self, stream: str) -> Iterator[tuple[Frame, dict[str, Any] | None]]:
        """The stream's recorded frames, each with its recorded detections message (None if none was recorded)."""
        image_topic, detections_topic = foxglove_messages.image_topic(stream), foxglove_messages.detections_topic(
            stream)
        protobuf = DecoderFactory()
        decode_image = None
        pending: tuple[int, Any] | None = None  # an image waiting for its detections (same log time)
        detections: tuple[int, dict[str, Any]] | None = None
        count = 0
        for schema, channel, message in self._messages([image_topic, detections_topic]):
            if channel.topic == detections_topic:
                try:
                    recorded = json.loads(message.data)
                except ValueError:
                    recorded = None
                if not (isinstance(recorded, dict) and isinstance(recorded.get("detections"), list)):
                    log.warning("%s: %s at %d is not a detections message: left out", self.path, detections_topic,
                                message.log_time)
                    continue
                detections = (message.log_time, recorded)
            else:
                if decode_image is None:
                    decode_image = protobuf.decoder_for(channel.message_encoding, schema)
                # The previous image had no detections.
                if pending is not None and (frame := self._frame(stream, *pending, None, count)) is not None:
                    count += 1
                    yield frame, None
                pending = None
                try:
                    pending = (message.log_time, decode_image(message.data))
                except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and the like: this frame only
                    log.warning("%s: %s at %d: not a CompressedImage (%s): skipped", self.path, image_topic,
                                message.log_time, _describe(exc))
            if pending is not None and detections is not None and detections[0] == pending[0]:
                if (frame := self._frame(stream, *pending, detections[1], count)) is not None:
                    count += 1
                    yield frame, detections[1]
                pending = None
        if pending is not None and (frame := self._frame(stream, *pending, None, count)) is not None:
            yield frame, None

    def _messages(self, topics: list[str]) -> Iterator[tuple[Any, Any, Any]]:
        """The reader's messages on these topics in log-time order; a chunk that does not read is an InputError."""
        messages = self.reader.iter_messages(topics=topics)
        while True:
            try:
                item = next(messages)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - McapError, lz4's and zstd's errors, struct.error...
                raise InputError(f"{self.path}: corrupt MCAP, a chunk does not read ({_describe(exc)}); the frames "
                                 "before it were replayed") from None
            yield item

    def _frame(self, stream: str, log_time: int, image: Any, recorded: dict[str, Any] | None,
               count: int) -> Frame | None:
        try:
            pixels = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR) if image.data else None
        except cv2.error:
            pixels = None
        if pixels is None:
            log.warning("%s: /%s/image at %d: not a decodable %s image: skipped", self.path, stream, log_time,
                        image.format or "?")
            return None
        recorded = recorded or {}
        ts_capture = recorded.get("ts_capture", log_time / 1e9)
        frame_id = recorded.get("frame_id", count)
        return Frame(frame_id=frame_id, image=pixels, ts_capture=ts_capture)

    def close(self) -> None:
        self.file.close()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass
class ClassCounts:
    matched: int = 0
    new: int = 0
    lost: int = 0

    @property
    def recorded(self) -> int:
        return self.matched + self.lost


@dataclass
class Comparison:
    """New detections against recorded ones, frame by frame: same label, IoU >= ``match_iou``, one to one."""

    match_iou: float = 0.5
    frames: int = 0
    frames_without_record: int = 0
    classes: dict[str, ClassCounts] = field(default_factory=dict)
    _predictions: list[list[tuple[int, float, list[float]]]] = field(default_factory=list)
    _truths: list[list[tuple[int, list[float]]]] = field(default_factory=list)
    _label_ids: dict[str, int] = field(default_factory=dict)

    def add(self, new: list[dict[str, Any]], recorded: dict[str, Any] | None) -> None:
        self.frames += 1
        if recorded is None:
            self.frames_without_record += 1
            return
        old = recorded["detections"]
        for label in {d["label"] for d in new} | {d["label"] for d in old}:
            counts = self.classes.setdefault(label, ClassCounts())
            mine = [d for d in new if d["label"] == label]
            theirs = [d for d in old if d["label"] == label]
            matched = self._match(mine, theirs)
            counts.matched += matched
            counts.new += len(mine) - matched
            counts.lost += len(theirs) - matched
        ids = self._label_ids
        self._predictions.append([(ids.setdefault(d["label"], len(ids)), d["score"], d["box"]) for d in new])
        self._truths.append([(ids.setdefault(d["label"], len(ids)), d["box"]) for d in old])

    def _match(self, mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> int:
        """Greedy by score: each new box takes the free recorded one it overlaps most, at match_iou or more."""
        if not mine or not theirs:
            return 0
        ious = iou_matrix(np.array([d["box"] for d in mine], dtype=np.float64),
                          np.array([d["box"] for d in theirs], dtype=np.float64))
        taken = np.zeros(len(theirs), dtype=bool)
        matched = 0
        for index in sorted(range(len(mine)), key=lambda i: -mine[i]["score"]):
            candidates = np.where(taken, -1.0, ious[index])
            best = int(candidates.argmax())
            if candidates[best] >= self.match_iou:
                taken[best] = True
                matched += 1
        return matched

    @property
    def total(self) -> ClassCounts:
        return ClassCounts(sum(c.matched for c in self.classes.values()), sum(c.new for c in self.classes.values()),
                           sum(c.lost for c in self.classes.values()))

    def mean_average_precision(self) -> float | None:
        """mAP@0.5 of the new detections with the recorded ones as ground truth (None: nothing recorded)."""
        if not any(self._truths):
            return None
        return mean_average_precision(self._predictions, self._truths, len(self._label_ids))

    def to_json(self) -> dict[str, Any]:
        def counts(c: ClassCounts) -> dict[str, Any]:
            share = c.matched / c.recorded if c.recorded else None
            return {"recorded": c.recorded, "matched": c.matched, "new": c.new, "lost": c.lost,
                    "matched_share": share}
        return {"frames": self.frames, "frames_without_record": self.frames_without_record,
                "match_iou": self.match_iou, "classes": {k: counts(v) for k, v in sorted(self.classes.items())},
                "total": counts(self.total), "map50": self.mean_average_precision()}

    def table(self) -> str:
        rows = [("class", "recorded", "matched", "new", "lost", "matched %")]
        for label, c in [*sorted(self.classes.items()), ("all", self.total)]:
            share = f"{100 * c.matched / c.recorded:.1f}" if c.recorded else "-"
            rows.append((label, str(c.recorded), str(c.matched), str(c.new), str(c.lost), share))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
        ap = self.mean_average_precision()
        lines.append(f"{self.frames} frames ({self.frames_without_record} without recorded detections); matched: "
                     f"same class, IoU >= {self.match_iou:g}; mAP@0.5 of the new against the recorded: "
                     + (f"{ap:.4f}" if ap is not None else "-"))
        return "\n".join(lines)


class CompareSink:
    """A pipeline sink: each new detections message against the recorded one of its frame."""

    def __init__(self, comparison: Comparison, recorded: dict[float, dict[str, Any] | None]):
        self.comparison = comparison
        self.recorded = recorded  # ts_capture -> recorded detections message, filled as frames are read

    def write(self, message: dict[str, Any], frame: Frame, result: DetectionResult) -> None:
        self.comparison.add(message["detections"], self.recorded.pop(frame.ts_capture, None))

    def close(self) -> None:
        pass
