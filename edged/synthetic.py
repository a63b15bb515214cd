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
from typing import Any, Callable

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
    def area(self) -> float:
        """Area in px² (of the whole shape, hidden parts included)."""
        if self.class_id == 0:
            return math.pi * self.size * self.size / 4
        return self.size * self.size * (1.0 if self.class_id == 1 else math.sqrt(3.0) / 4)

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


def random_shape(rng: np.random.Generator, width: int, height: int, whole: bool = False,
                 sizes: tuple[float, float] = (MIN_SIZE, MAX_SIZE)) -> Shape:
    """A random shape of ``sizes`` px; unless ``whole``, one in ten may stick out of the frame."""
    size = float(np.exp(rng.uniform(*np.log(sizes))))  # log-uniform: as many small as large
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
                 max_shapes: int = 12, crowded: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training image: (BGR uint8 image, boxes Nx4 float32 xyxy, class ids N int64).

    With probability ``crowded``, a crowded scene instead, of shapes that may touch and hide each other,
    larger behind smaller, with whole (amodal) boxes: half of them ``max_shapes`` to twice as many shapes
    of any size, the other half a frame of a crowd clip (``write_crowd_clip``: CROWD_SHAPES shapes of
    CROWD_SIZES px); shapes less than MIN_TRAIN_VISIBILITY visible are left out of the scene."""
    image = render_background(rng, width, height)
    if crowded and rng.random() < crowded:
        if rng.random() < 0.5:
            count, sizes = int(rng.integers(max_shapes, 2 * max_shapes + 1)), (MIN_SIZE, MAX_SIZE)
        else:
            count, sizes = int(rng.integers(CROWD_SHAPES[0], CROWD_SHAPES[1] + 1)), CROWD_SIZES
        shapes = sorted((random_shape(rng, width, height, sizes=sizes) for _ in range(count)),
                        key=lambda shape: -shape.size)
        shapes = [s for s, v in zip(shapes, visibility(shapes, width, height)) if v >= MIN_TRAIN_VISIBILITY]
    else:
        shapes = place_shapes(rng, int(rng.integers(0, max_shapes + 1)), width, height)
    color_shapes(rng, shapes, image)
    for shape in shapes:
        draw_shape(image, shape)
    image = degrade(rng, image)
    boxes = np.array([s.box(width, height) for s in shapes], dtype=np.float32).reshape(-1, 4)
    classes = np.array([s.class_id for s in shapes], dtype=np.int64)
    keep = (boxes[:, 2] - boxes[:, 0] >= 4) & (boxes[:, 3] - boxes[:, 1] >= 4)  # mostly off-frame: not a target
    return image, boxes[keep], classes[keep]


MIN_TRAIN_VISIBILITY = 0.3  # a crowded training scene leaves out the shapes hidden more than this (no target)


def visibility(shapes: list[Shape], width: int, height: int) -> list[float]:
    """The share of each shape (drawn in this order, so each over the earlier ones) that shows in the frame:
    not hidden behind later shapes, nor outside."""
    ids = np.zeros((height, width), np.uint8)  # which shape each pixel shows (0: background)
    for number, shape in enumerate(shapes, 1):
        draw_shape(ids, Shape(shape.class_id, shape.cx, shape.cy, shape.size, shape.angle, (number,) * 3))
    shown = np.bincount(ids.ravel(), minlength=len(shapes) + 1)[1:]
    return [min(1.0, float(n) / s.area) for n, s in zip(shown, shapes)]


def write_clip(path: str | Path, seed: int, frames: int = 600, fps: float = 30.0,
               width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT, shapes: int = 8,
               progress: Callable[[int, int], None] | None = None) -> Path:
    """Render a clip of moving, rotating shapes and its ground truth (``<path>.json``).

    The ground-truth file holds the labels and, per frame, the boxes in pixels, their
    class ids and the shapes' ids (each shape's index in the scene, the same for the
    whole clip, for tracking):
    ``{"labels": [...], "frames": [{"frame_id", "boxes", "class_ids", "ids"}]}``.
    The shapes never overlap: they bounce off the frame's edges and off each other.
    """
    rng = np.random.default_rng(seed)
    background = render_background(rng, width, height)
    scene = place_shapes(rng, shapes, width, height, whole=True)
    color_shapes(rng, scene, background)
    speed = [(rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-0.05, 0.05)) for _ in scene]

    def render(frame_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        if frame_id:
            _move(scene, speed, width, height)
        image = background.copy()
        for shape in scene:
            draw_shape(image, shape)
        return add_noise(rng, image, 3.0), {"boxes": [[round(v, 2) for v in s.box(width, height)] for s in scene],
                                            "class_ids": [s.class_id for s in scene], "ids": list(range(len(scene)))}

    return _write_video(path, seed, frames, fps, width, height, render, progress)


# Crowd clips: what trips a tracker up. Smaller shapes than the training scenes' (so that 30 to 50 fit), which
# pass in front of each other, and leave and enter the view.
CROWD_SIZES = (16.0, 96.0)
CROWD_SHAPES = (30, 50)
CROWD_MAX_SPEED = 4.0  # px a frame (120 px/s at 30 fps)
CROWD_MAX_GROWTH = 0.008  # relative size change a frame
CROWD_TURN_EVERY = 90  # frames, on average, between a shape's changes of speed and direction
CROWD_STOP_CHANCE = 0.15  # of such a change, the share that stops the shape (it starts again at the next)
CROWD_LEAVE_CHANCE = 0.1  # of such a change, the share after which the shape leaves at the next edge it meets


@dataclass
class _Mover:
    object_id: int
    shape: Shape
    velocity: tuple[float, float]  # px a frame
    spin: float  # radians a frame
    growth: float  # log of the size's change a frame
    leaving: bool = False


def write_crowd_clip(path: str | Path, seed: int, frames: int = 600, fps: float = 30.0,
                     width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT, shapes: int | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Path:
    """Render a crowded clip for tracking and its ground truth (``<path>.json``, as ``write_clip``'s).

    ``shapes`` (default: 30 to 50, drawn from the seed) of 16 to 96 px, of the three classes, that
    pass over each other, larger behind smaller (same-class crossings, and partial occlusion: a
    shape is hidden only by smaller ones); each changes speed and direction now and then (stopping
    too), grows and shrinks, and bounces off the frame's edges, or now and then leaves through one,
    when a new shape (a new id) enters from an edge in its place. Boxes are whole (amodal) but clipped
    to the frame, and each frame's ``visibility`` gives the share of each shape that shows (0 to 1: the
    rest is behind others or outside the frame), so that an evaluation can leave out objects too
    hidden to be seen."""
    rng = np.random.default_rng(seed)
    background = render_background(rng, width, height)
    count = int(rng.integers(CROWD_SHAPES[0], CROWD_SHAPES[1] + 1)) if shapes is None else shapes
    # A new shape takes the place of the one it replaces, in this list and in the ground truth's order.
    movers = [_crowd_mover(rng, object_id, width, height, background) for object_id in range(count)]
    next_id = count

    def render(frame_id: int) -> tuple[np.ndarray, dict[str, Any]]:
        nonlocal next_id
        for i, mover in enumerate(movers):
            if frame_id:
                _crowd_step(rng, mover, width, height)
            if _outside(mover.shape, width, height):
                movers[i] = _crowd_mover(rng, next_id, width, height, background, entering=True)
                next_id += 1
        # Larger shapes behind smaller ones: a shape is only ever partly hidden (by smaller ones).
        order = sorted(range(len(movers)), key=lambda i: -movers[i].shape.size)
        image = background.copy()
        for i in order:
            draw_shape(image, movers[i].shape)
        shown = dict(zip(order, visibility([movers[i].shape for i in order], width, height)))
        return add_noise(rng, image, 3.0), {
            "boxes": [[round(v, 2) for v in m.shape.box(width, height)] for m in movers],
            "class_ids": [m.shape.class_id for m in movers], "ids": [m.object_id for m in movers],
            "visibility": [round(shown[i], 3) for i in range(len(movers))]}

    return _write_video(path, seed, frames, fps, width, height, render, progress)


def _crowd_mover(rng: np.random.Generator, object_id: int, width: int, height: int, background: np.ndarray,
                 entering: bool = False) -> _Mover:
    """A crowd shape anywhere in the frame, or (``entering``) just outside an edge, moving in."""
    shape = random_shape(rng, width, height, whole=True, sizes=CROWD_SIZES)
    r = shape.radius
    vx, vy = _random_velocity(rng)
    if entering:
        edge = int(rng.integers(4))  # left, right, top, bottom
        if edge < 2:
            shape.cx, vx = (-r, abs(vx)) if edge == 0 else (width + r, -abs(vx))
        else:
            shape.cy, vy = (-r, abs(vy)) if edge == 2 else (height + r, -abs(vy))
    color_shapes(rng, [shape], background)
    return _Mover(object_id, shape, (vx, vy), float(rng.uniform(-0.05, 0.05)),
                  float(rng.uniform(-CROWD_MAX_GROWTH, CROWD_MAX_GROWTH)))


def _outside(shape: Shape, width: int, height: int) -> bool:
    r = shape.radius
    return shape.cx < -r - 1 or shape.cx > width + r + 1 or shape.cy < -r - 1 or shape.cy > height + r + 1


def _random_velocity(rng: np.random.Generator) -> tuple[float, float]:
    speed, direction = rng.uniform(0.3, CROWD_MAX_SPEED), rng.uniform(0, 2 * np.pi)
    return speed * math.cos(direction), speed * math.sin(direction)


def _crowd_step(rng: np.random.Generator, mover: _Mover, width: int, height: int) -> None:
    """One frame of a crowd shape's motion: now and then a new velocity (or a stop, or the decision to leave)
    and a new growth rate; the size stays within CROWD_SIZES; a shape that is not leaving bounces off the edges
    it moves out through (one entering moves in)."""
    shape = mover.shape
    if rng.random() < 1 / CROWD_TURN_EVERY:
        stopped = mover.velocity == (0.0, 0.0)
        mover.velocity = (0.0, 0.0) if not stopped and rng.random() < CROWD_STOP_CHANCE else _random_velocity(rng)
        mover.leaving = mover.leaving or rng.random() < CROWD_LEAVE_CHANCE
    if rng.random() < 1 / CROWD_TURN_EVERY:
        mover.growth = float(rng.uniform(-CROWD_MAX_GROWTH, CROWD_MAX_GROWTH))
    size = shape.size * math.exp(mover.growth)
    if not CROWD_SIZES[0] <= size <= CROWD_SIZES[1]:
        mover.growth = -mover.growth
    shape.size = float(np.clip(size, *CROWD_SIZES))
    shape.angle += mover.spin
    vx, vy = mover.velocity
    r = shape.radius
    if not mover.leaving:
        if (shape.cx + vx < r and vx < 0) or (shape.cx + vx > width - r and vx > 0):
            vx = -vx
        if (shape.cy + vy < r and vy < 0) or (shape.cy + vy > height - r and vy > 0):
            vy = -vy
    mover.velocity = (vx, vy)
    shape.cx += vx
    shape.cy += vy


def _write_video(path: str | Path, seed: int, frames: int, fps: float, width: int, height: int,
                 render: Callable[[int], tuple[np.ndarray, dict[str, Any]]],
                 progress: Callable[[int, int], None] | None) -> Path:
    """Write ``frames`` frames of ``render(frame_id) -> (BGR image, that frame's ground truth)`` as an mp4v video
    at ``path``, and the ground truth beside it (``<path>.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write an mp4v video here")
    truth = []
    try:
        for frame_id in range(frames):
            image, frame_truth = render(frame_id)
            writer.write(image)  # the video codec adds the compression artefacts
            truth.append({"frame_id": frame_id, **frame_truth})
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
