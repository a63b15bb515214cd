"""Synthetic shapes scenes: the demo detector's training data and the sample clips.

Filled circles, squares and triangles at any rotation, 16 to 160 px, on flat,
gradient, noise-textured or cluttered backgrounds, with sensor noise and
compression artefacts. Everything is drawn from a seeded ``numpy`` generator, so
a seed names a scene (or a clip) exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

LABELS: tuple[str, ...] = ("circle", "square", "triangle")
FRAME_WIDTH, FRAME_HEIGHT = 640, 480
MIN_SIZE, MAX_SIZE = 16, 160
# A shape's colour must differ from the background under it by at least this much
# (Euclidean distance in BGR): "any colour that contrasts with the background".
MIN_CONTRAST = 80.0
_SUBPIXEL_SHIFT = 4  # cv2 drawing with 1/16 px precision


@dataclass
class Shape:
    """One shape: class index, centre, size (circle diameter, polygon side), angle, colour."""

    class_id: int
    cx: float
    cy: float
    size: float
    angle: float
    color: tuple[int, int, int]

    def polygon(self) -> np.ndarray:
        """Outline points (float, Nx2); circles are drawn from their centre and radius instead."""
        if self.class_id == 1:
            radius = self.size / math.sqrt(2.0)
            angles = self.angle + np.deg2rad([45, 135, 225, 315])
        elif self.class_id == 2:
            radius = self.size / math.sqrt(3.0)
            angles = self.angle + np.deg2rad([90, 210, 330])
        else:
            radius = self.size / 2.0
            angles = self.angle + np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([self.cx + radius * np.cos(angles), self.cy + radius * np.sin(angles)], axis=1)

    def box(self, width: int, height: int) -> list[float]:
        """Tight axis-aligned box [x1, y1, x2, y2], clipped to the frame."""
        pts = self.polygon()
        x1, y1 = pts.min(axis=0)
        x2, y2 = pts.max(axis=0)
        return [float(np.clip(x1, 0, width)), float(np.clip(y1, 0, height)),
                float(np.clip(x2, 0, width)), float(np.clip(y2, 0, height))]

    @property
    def radius(self) -> float:
        """Radius of the circumscribed circle, for spacing shapes apart."""
        return self.size / 2.0 if self.class_id == 0 else self.size / (math.sqrt(2.0) if self.class_id == 1 else math.sqrt(3.0))


def draw_shape(image: np.ndarray, shape: Shape) -> None:
    scale = 1 << _SUBPIXEL_SHIFT
    if shape.class_id == 0:
        center = (int(round(shape.cx * scale)), int(round(shape.cy * scale)))
        cv2.circle(image, center, int(round(shape.size / 2 * scale)), shape.color, -1, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    else:
        pts = np.round(shape.polygon() * scale).astype(np.int32)
        cv2.fillPoly(image, [pts], shape.color, cv2.LINE_AA, _SUBPIXEL_SHIFT)


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Flat, gradient, noise-textured or cluttered background (BGR uint8)."""
    kind = rng.integers(4)
    base = rng.integers(0, 256, size=3).astype(np.float32)
    if kind == 0:
        image = np.broadcast_to(base, (height, width, 3)).copy()
    elif kind == 1:
        other = rng.integers(0, 256, size=3).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        xs, ys = np.meshgrid(np.linspace(-1, 1, width, dtype=np.float32), np.linspace(-1, 1, height, dtype=np.float32))
        t = (np.cos(angle) * xs + np.sin(angle) * ys + 1.5) / 3.0
        image = base * (1 - t[..., None]) + other * t[..., None]
    else:
        # Smooth noise texture: coarse random field upsampled, around a base colour.
        cells = int(rng.integers(4, 40))
        coarse = rng.normal(0, rng.uniform(10, 45), size=(cells * height // width + 1, cells, 3)).astype(np.float32)
        image = base + cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        if kind == 3:
            image = np.clip(image, 0, 255).astype(np.uint8)
            _draw_clutter(rng, image)
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Distractor lines and dots, too thin or small to be one of the shapes."""
    height, width = image.shape[:2]
    for _ in range(rng.integers(5, 30)):
        p1 = (int(rng.integers(width)), int(rng.integers(height)))
        p2 = (int(rng.integers(width)), int(rng.integers(height)))
        cv2.line(image, p1, p2, _random_color(rng), int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(rng.integers(10, 80)):
        center = (int(rng.integers(width)), int(rng.integers(height)))
        cv2.circle(image, center, int(rng.integers(1, 5)), _random_color(rng), -1, cv2.LINE_AA)


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))


def contrasting_color(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A colour far enough from the mean of ``background`` (the pixels under the shape)."""
    mean = background.reshape(-1, 3).mean(axis=0)
    for _ in range(100):
        color = rng.integers(0, 256, size=3)
        if np.linalg.norm(color - mean) >= MIN_CONTRAST:
            return tuple(int(v) for v in color)
    return tuple(int(v) for v in np.where(mean > 127, 0, 255))


def random_shape(rng: np.random.Generator, width: int, height: int, whole: bool = False) -> Shape:
    """A random shape; unless ``whole``, one in ten may stick out of the frame."""
    size = float(np.exp(rng.uniform(np.log(MIN_SIZE), np.log(MAX_SIZE))))  # log-uniform: as many small as large
    shape = Shape(int(rng.integers(len(LABELS))), 0.0, 0.0, size, float(rng.uniform(0, 2 * np.pi)), (0, 0, 0))
    margin = -size * 0.3 if not whole and rng.random() < 0.1 else shape.radius
    shape.cx = float(rng.uniform(margin, width - margin))
    shape.cy = float(rng.uniform(margin, height - margin))
    return shape


def _overlaps(shape: Shape, others: list[Shape], gap: float = 2.0) -> bool:
    return any(math.hypot(shape.cx - o.cx, shape.cy - o.cy) < shape.radius + o.radius + gap for o in others)


def place_shapes(rng: np.random.Generator, count: int, width: int, height: int, whole: bool = False) -> list[Shape]:
    """Up to ``count`` shapes that do not overlap (an occluded shape has no well-defined box)."""
    shapes: list[Shape] = []
    for _ in range(count * 20):
        if len(shapes) == count:
            break
        shape = random_shape(rng, width, height, whole)
        if not _overlaps(shape, shapes):
            shapes.append(shape)
    return shapes


def color_shapes(rng: np.random.Generator, shapes: list[Shape], background: np.ndarray) -> None:
    height, width = background.shape[:2]
    for shape in shapes:
        x1, y1, x2, y2 = (int(v) for v in shape.box(width, height))
        patch = background[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
        shape.color = contrasting_color(rng, patch if patch.size else background)


def add_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian sensor noise; cv2's generator (several times faster than numpy's), seeded from ``rng``."""
    cv2.setRNGSeed(int(rng.integers(2**31)))
    noise = np.empty(image.shape, np.int16)
    cv2.randn(noise, 0, sigma)
    return cv2.add(image, noise, dtype=cv2.CV_8U)


def degrade(rng: np.random.Generator, image: np.ndarray, jpeg: bool = True) -> np.ndarray:
    """Sensor noise, an occasional blur, and (optionally) JPEG compression artefacts."""
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2))
    sigma = rng.uniform(0, 12)
    if sigma > 0.5:
        image = add_noise(rng, image, sigma)
    if jpeg:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 95))])
        image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return image


def render_scene(rng: np.random.Generator, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT,
                 max_shapes: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training image: (BGR uint8 image, boxes Nx4 float32 xyxy, class ids N int64)."""
    image = render_background(rng, width, height)
    shapes = place_shapes(rng, int(rng.integers(0, max_shapes + 1)), width, height)
    color_shapes(rng, shapes, image)
    for shape in shapes:
        draw_shape(image, shape)
    image = degrade(rng, image)
    boxes = np.array([s.box(width, height) for s in shapes], dtype=np.float32).reshape(-1, 4)
    classes = np.array([s.class_id for s in shapes], dtype=np.int64)
    keep = (boxes[:, 2] - boxes[:, 0] >= 4) & (boxes[:, 3] - boxes[:, 1] >= 4)  # mostly off-frame: not a target
    return image, boxes[keep], classes[keep]


def write_clip(path: str | Path, seed: int, frames: int = 600, fps: float = 30.0,
               width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT, shapes: int = 8,
               progress: Callable[[int, int], None] | None = None) -> Path:
    """Render a clip of moving, rotating shapes and its ground truth (``<path>.json``).

    The ground-truth file holds the labels and, per frame, the boxes in pixels, their
    class ids and the shapes' ids (each shape's index in the scene, the same for the
    whole clip, for tracking):
    ``{"labels": [...], "frames": [{"frame_id", "boxes", "class_ids", "ids"}]}``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    background = render_background(rng, width, height)
    scene = place_shapes(rng, shapes, width, height, whole=True)
    color_shapes(rng, scene, background)
    speed = [(rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-0.05, 0.05)) for _ in scene]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write an mp4v video here")
    truth = []
    try:
        for frame_id in range(frames):
            image = background.copy()
            for shape in scene:
                draw_shape(image, shape)
            writer.write(add_noise(rng, image, 3.0))  # the video codec adds the compression artefacts
            truth.append({"frame_id": frame_id,
                          "boxes": [[round(v, 2) for v in s.box(width, height)] for s in scene],
                          "class_ids": [s.class_id for s in scene],
                          "ids": list(range(len(scene)))})
            _move(scene, speed, width, height)
            if progress:
                progress(frame_id + 1, frames)
    finally:
        writer.release()
    path.with_suffix(".json").write_text(json.dumps({"labels": list(LABELS), "width": width, "height": height,
                                                     "fps": fps, "seed": seed, "frames": truth}))
    return path


def _move(scene: list[Shape], speed: list[tuple[float, float, float]], width: int, height: int) -> None:
    """Advance every shape one frame; bounce off the frame edges and off each other."""
    for i, shape in enumerate(scene):
        vx, vy, va = speed[i]
        nx, ny = shape.cx + vx, shape.cy + vy
        if not shape.radius <= nx <= width - shape.radius:
            vx = -vx
        if not shape.radius <= ny <= height - shape.radius:
            vy = -vy
        moved = Shape(shape.class_id, shape.cx + vx, shape.cy + vy, shape.size, shape.angle, shape.color)
        if _overlaps(moved, scene[:i] + scene[i + 1:]):
            vx, vy = -vx, -vy
        else:
            shape.cx, shape.cy = moved.cx, moved.cy
        shape.angle += va
        speed[i] = (vx, vy, va)
