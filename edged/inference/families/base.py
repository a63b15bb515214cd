"""The family interface and registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from edged.inference.preprocess import Letterbox, letterbox


@dataclass
class Candidates:
    """Decoded but not yet filtered by NMS: boxes xyxy in model-input pixels."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int64


class Family:
    name: ClassVar[str]
    needs_nms: ClassVar[bool]
    layout: ClassVar[str]  # for error messages, e.g. "[1, 4+nc, N]"

    @classmethod
    def matches(cls, shape: tuple[int, ...], num_classes: int | None) -> bool:
        raise NotImplementedError

    @classmethod
    def num_classes(cls, shape: tuple[int, ...]) -> int | None:
        """Classes implied by the output shape (None when the layout does not tell)."""
        raise NotImplementedError

    def preprocess(self, image: np.ndarray, size: tuple[int, int], dtype: type) -> tuple[np.ndarray, Letterbox]:
        # Ultralytics families: letterbox, pad 114, RGB, 0..1, NCHW.
        return letterbox(image, size, dtype)

    def decode(self, output: np.ndarray, confidence: float) -> Candidates:
        raise NotImplementedError


FAMILIES: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    FAMILIES[cls.name] = cls
    return cls


def is_batch_of_one(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[0] == 1
