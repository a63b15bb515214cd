"""Class-wise NMS against a brute-force greedy reference."""

from __future__ import annotations

import numpy as np
import pytest

from edged.inference.nms import nms


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, threshold: float,
                  max_detections: int = 300) -> list[int]:
    """Greedy: best score first, drop a box whose IoU with a kept box of its class exceeds the threshold."""
    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda k: -scores[k]):
        if all(class_ids[j] != class_ids[i] or iou(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept[:max_detections]


def random_boxes(seed: int, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Clustered so that many boxes overlap; some start at negative coordinates (boxes that hang
    # off the top-left of the model input are ordinary model output).
    centres = rng.uniform(-20, 320, size=(8, 2))
    sizes = rng.uniform(15, 90, size=(8, 2))
    cluster = rng.integers(0, len(centres), n)
    xy = centres[cluster] + rng.normal(0, 6, size=(n, 2))
    wh = sizes[cluster] * rng.uniform(0.8, 1.25, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.permutation(np.linspace(0.05, 0.99, n)).astype(np.float32)  # distinct: no ties
    class_ids = rng.integers(0, num_classes, n).astype(np.int64)
    return boxes, scores, class_ids


@pytest.mark.parametrize("threshold", [0.3, 0.45, 0.5, 0.7])
@pytest.mark.parametrize("seed", range(6))
def test_matches_greedy_reference(seed, threshold):
    boxes, scores, class_ids = random_boxes(seed, n=80, num_classes=3)
    keep = nms(boxes, scores, class_ids, threshold)
    expected = reference_nms(boxes.astype(np.float64), scores, class_ids, threshold)
    assert keep.dtype == np.int64
    assert keep.tolist() == expected
    assert 0 < len(expected) < len(boxes)  # the case is not trivial: some boxes suppressed, some kept


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_with_a_cap(seed):
    boxes, scores, class_ids = random_boxes(100 + seed, n=120, num_classes=4)
    keep = nms(boxes, scores, class_ids, 0.5, max_detections=7)
    assert keep.tolist() == reference_nms(boxes.astype(np.float64), scores, class_ids, 0.5, max_detections=7)


def test_overlapping_boxes_of_different_classes_are_both_kept():
    boxes = np.array([[10, 10, 50, 50], [12, 12, 52, 52]], dtype=np.float32)
    scores = np.array([0.6, 0.9], dtype=np.float32)
    assert nms(boxes, scores, np.array([0, 1]), 0.5).tolist() == [1, 0]
    assert nms(boxes, scores, np.array([1, 1]), 0.5).tolist() == [1]


def test_classes_stay_apart_with_negative_coordinates():
    # Class 1's box sits off the top-left corner; class 0's at the far corner. Offsetting classes by
    # (largest coordinate + 1) without minding negative coordinates lands one on top of the other.
    boxes = np.array([[90, 90, 100, 100], [-11, -11, -1, -1]], dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    assert nms(boxes, scores, np.array([0, 1]), 0.5).tolist() == [0, 1]


def test_identical_boxes_of_one_class_keep_the_higher_score():
    boxes = np.array([[5, 5, 25, 45]] * 3, dtype=np.float32)
    scores = np.array([0.3, 0.8, 0.5], dtype=np.float32)
    assert nms(boxes, scores, np.array([2, 2, 2]), 0.5).tolist() == [1]


def test_results_are_best_score_first():
    boxes = np.array([[0, 0, 10, 10], [100, 0, 110, 10], [0, 100, 10, 110], [100, 100, 110, 110]], dtype=np.float32)
    scores = np.array([0.2, 0.9, 0.4, 0.7], dtype=np.float32)
    assert nms(boxes, scores, np.array([0, 1, 0, 1]), 0.5).tolist() == [1, 3, 2, 0]


def test_max_detections_cap():
    x = np.arange(10, dtype=np.float32) * 20
    boxes = np.stack([x, np.zeros(10), x + 10, np.full(10, 10)], axis=1).astype(np.float32)  # disjoint
    scores = np.array([0.1, 0.5, 0.9, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6, 0.15], dtype=np.float32)
    class_ids = np.zeros(10, dtype=np.int64)
    assert nms(boxes, scores, class_ids, 0.5).tolist() == list(np.argsort(-scores))
    assert nms(boxes, scores, class_ids, 0.5, max_detections=3).tolist() == [2, 4, 6]


def test_threshold_is_exclusive_of_lower_overlap():
    # IoU of these two is 1/3: suppressed at 0.3, kept at 0.5.
    boxes = np.array([[0, 0, 20, 10], [10, 0, 30, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    assert nms(boxes, scores, np.array([0, 0]), 0.3).tolist() == [0]
    assert nms(boxes, scores, np.array([0, 0]), 0.5).tolist() == [0, 1]


def test_empty_input():
    keep = nms(np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64), 0.5)
    assert keep.dtype == np.int64 and keep.shape == (0,)
