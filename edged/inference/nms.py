"""Class-wise non-maximum suppression."""

from __future__ import annotations

import cv2
import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
        max_detections: int = 300) -> np.ndarray:
    """Indices of the boxes kept by greedy class-wise NMS, best score first.

    Boxes are xyxy. OpenCV's batched NMS does the work in C++ (it offsets each class
    so boxes of different classes never suppress each other): no Python loop over boxes.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    # OpenCV offsets class k by k * (max coordinate + 1), which keeps classes apart only when no
    # coordinate is negative (a box hanging off the top-left edge): shift all boxes to start at 0.
    xywh[:, :2] -= min(float(xywh[:, :2].min()), 0.0)
    keep = cv2.dnn.NMSBoxesBatched(xywh, scores.astype(np.float32), class_ids.astype(np.int32),
                                   score_threshold=float("-inf"), nms_threshold=float(iou_threshold))
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return keep[:max_detections]
