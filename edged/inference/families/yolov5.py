"""YOLOv5: ``[1, N, 5+nc]``, columns cx, cy, w, h, objectness, then class scores."""

from __future__ import annotations

import numpy as np

from edged.inference.families.base import Candidates, Family, is_batch_of_one, register


@register
class YoloV5(Family):
    name = "yolov5"
    needs_nms = True
    layout = "[1, N, 5+nc]"

    @classmethod
    def matches(cls, shape: tuple[int, ...], num_classes: int | None) -> bool:
        if not is_batch_of_one(shape) or not 6 <= shape[2] < shape[1]:
            return False
        return num_classes is None or shape[2] == 5 + num_classes

    @classmethod
    def num_classes(cls, shape: tuple[int, ...]) -> int:
        return shape[2] - 5

    def decode(self, output: np.ndarray, confidence: float) -> Candidates:
        rows = output[0]  # (N, 5+nc)
        rows = rows[rows[:, 4] >= confidence]  # objectness bounds the final score: cheap first cut
        class_ids = rows[:, 5:].argmax(1)
        scores = rows[:, 4] * rows[np.arange(len(rows)), 5 + class_ids]
        keep = scores >= confidence
        cx, cy, w, h = rows[keep, :4].T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).reshape(-1, 4)
        return Candidates(boxes.astype(np.float32), scores[keep].astype(np.float32), class_ids[keep].astype(np.int64))
