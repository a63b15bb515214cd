"""Letterbox pre-processing, as Ultralytics does it, and the way back to source pixels."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """How a source image was fitted into the model input: scale first, then padding."""

    scale: float
    pad_x: int
    pad_y: int
    source_width: int
    source_height: int

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map xyxy boxes from model-input pixels back to source pixels, clipped to the image."""
        out = (boxes - np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=boxes.dtype)) / self.scale
        np.clip(out[:, 0::2], 0, self.source_width, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.source_height, out=out[:, 1::2])
        return out


def letterbox(image: np.ndarray, size: tuple[int, int], dtype: type = np.float32) -> tuple[np.ndarray, Letterbox]:
    """Fit a BGR uint8 image into ``size`` (height, width) keeping its aspect, pad with grey 114.

    Returns the NCHW RGB blob scaled to 0..1 in ``dtype``, and the transform.
    """
    height, width = size
    src_h, src_w = image.shape[:2]
    scale = min(height / src_h, width / src_w)
    new_w, new_h = int(round(src_w * scale)), int(round(src_h * scale))
    pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
    if (new_w, new_h) != (src_w, src_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if (new_w, new_h) != (width, height):
        image = cv2.copyMakeBorder(image, pad_y, height - new_h - pad_y, pad_x, width - new_w - pad_x,
                                   cv2.BORDER_CONSTANT, value=(PAD_VALUE, PAD_VALUE, PAD_VALUE))
    # One C++ pass: BGR->RGB, HWC->CHW, /255, float32.
    blob = cv2.dnn.blobFromImage(image, scalefactor=1.0 / 255.0, swapRB=True)
    if dtype != np.float32:
        blob = blob.astype(dtype)
    return blob, Letterbox(scale, pad_x, pad_y, src_w, src_h)
