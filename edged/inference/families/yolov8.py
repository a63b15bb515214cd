"""YOLOv8 and YOLO11: ``[1, 4+nc, N]``, rows cx, cy, w, h, then class scores; no objectness."""

from __future__ import annotations

import numpy as np

from edged.inference.families.base import Candidates, Family, is_batch_of_one, register


@register
class YoloV8(Family):
    name = "yolov8"
    needs_nms = True
    layout = "[1, 4+nc, N]"

    @classmethod
    def matches(cls, shape: tuple[int, ...], num_classes: int | None) -> bool:
        if not is_batch_of_one(shape) or not 5 <= shape[1] < shape[2]:
            return False
        return num_classes is None or shape[1] == 4 + num_classes

    @classmethod
    def num_classes(cls, shape: tuple[int, ...]) -> int:
        return shape[1] - 4

    def decode(self, output: np.ndarray, confidence: float) -> Candidates:
        rows = output[0]  # (4+nc, N)
        class_scores = rows[4:]
        class_ids = class_scores.argmax(0)
        scores = class_scores[class_ids, np.arange(class_scores.shape[1])]
        keep = scores >= confidence
        cx, cy, w, h = rows[:4, keep]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        return Candidates(boxes.astype(np.float32), scores[keep].astype(np.float32), class_ids[keep].astype(np.int64))
