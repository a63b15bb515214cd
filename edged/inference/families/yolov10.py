"""YOLOv10 and YOLO26 end-to-end heads: ``[1, K, 6]``, rows x1, y1, x2, y2, score, class; NMS-free."""

from __future__ import annotations

import numpy as np

from edged.inference.families.base import Candidates, Family, is_batch_of_one, register

MAX_END_TO_END_ROWS = 1000  # Ultralytics exports 300; grid-based heads have thousands of rows


@register
class YoloV10(Family):
    name = "yolov10"
    needs_nms = False
    layout = "[1, K, 6]"

    @classmethod
    def matches(cls, shape: tuple[int, ...], num_classes: int | None) -> bool:
        return is_batch_of_one(shape) and shape[2] == 6 and shape[1] <= MAX_END_TO_END_ROWS

    @classmethod
    def num_classes(cls, shape: tuple[int, ...]) -> None:
        return None

    def decode(self, output: np.ndarray, confidence: float) -> Candidates:
        rows = output[0]
        rows = rows[rows[:, 4] >= confidence]
        return Candidates(rows[:, :4].astype(np.float32), rows[:, 4].astype(np.float32), rows[:, 5].astype(np.int64))
