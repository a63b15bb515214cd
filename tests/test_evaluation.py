"""mAP@0.5 on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from edged.evaluation import average_precision, evaluate_messages, iou_matrix, mean_average_precision

BOX = [10.0, 10.0, 50.0, 50.0]
OTHER = [100.0, 100.0, 140.0, 160.0]
FAR = [300.0, 300.0, 320.0, 320.0]


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [0, 0, 20, 10]], dtype=np.float64)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [50, 50, 60, 60]], dtype=np.float64)
    np.testing.assert_allclose(iou_matrix(a, b), [[1, 1 / 3, 0], [0.5, 0.5, 0]])


def test_perfect_detections():
    truths = [[(0, BOX), (1, OTHER)], [(0, OTHER)]]
    predictions = [[(0, 0.9, BOX), (1, 0.8, OTHER)], [(0, 0.7, OTHER)]]
    assert mean_average_precision(predictions, truths, num_classes=2) == pytest.approx(1.0)


def test_slightly_shifted_boxes_still_match():
    shifted = [12.0, 12.0, 52.0, 52.0]  # IoU ~0.82
    assert mean_average_precision([[(0, 0.9, shifted)]], [[(0, BOX)]], num_classes=1) == pytest.approx(1.0)


def test_false_positive_ranked_above_the_true_positive():
    # Ranked: FP (0.9), TP (0.8): precision 0 then 1/2 at recall 1 -> AP 0.5.
    predictions = [[(0, 0.9, FAR), (0, 0.8, BOX)]]
    assert mean_average_precision(predictions, [[(0, BOX)]], num_classes=1) == pytest.approx(0.5)


def test_false_positive_between_two_true_positives():
    # TP 0.9, FP 0.8, TP 0.7 over two truths: recall 1/2 at precision 1, recall 1 at precision 2/3.
    predictions = [[(0, 0.9, BOX), (0, 0.8, FAR), (0, 0.7, OTHER)]]
    truths = [[(0, BOX), (0, OTHER)]]
    assert mean_average_precision(predictions, truths, num_classes=1) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_false_positive_below_every_true_positive_costs_nothing():
    predictions = [[(0, 0.9, BOX), (0, 0.1, FAR)]]
    assert mean_average_precision(predictions, [[(0, BOX)]], num_classes=1) == pytest.approx(1.0)


def test_a_missed_truth_lowers_recall():
    predictions = [[(0, 0.9, BOX)], []]
    truths = [[(0, BOX)], [(0, OTHER)]]
    assert mean_average_precision(predictions, truths, num_classes=1) == pytest.approx(0.5)


def test_duplicates_count_as_false_positives():
    # Frame 1: a truth found twice; frame 2: a truth found once, with a lower score than the duplicate.
    # Ranked: TP 0.9, duplicate 0.8 (FP), TP 0.7 -> 0.5 * 1 + 0.5 * 2/3.
    predictions = [[(0, 0.9, BOX), (0, 0.8, BOX)], [(0, 0.7, OTHER)]]
    truths = [[(0, BOX)], [(0, OTHER)]]
    assert mean_average_precision(predictions, truths, num_classes=1) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_a_prediction_on_an_empty_frame_is_a_false_positive():
    predictions = [[(0, 0.9, BOX)], [(0, 0.8, OTHER)]]
    truths = [[], [(0, OTHER)]]
    assert mean_average_precision(predictions, truths, num_classes=1) == pytest.approx(0.5)


def test_class_mismatch():
    # Right place, wrong class: class 0 is never found, class 1 has no truth and is not averaged in.
    assert mean_average_precision([[(1, 0.9, BOX)]], [[(0, BOX)]], num_classes=2) == 0.0
    # One class right, one wrong: the mean of 1 and 0.
    predictions = [[(0, 0.9, BOX), (0, 0.8, OTHER)]]
    truths = [[(0, BOX), (1, OTHER)]]
    assert mean_average_precision(predictions, truths, num_classes=2) == pytest.approx(0.5)


def test_classes_without_truth_are_not_averaged():
    assert mean_average_precision([[(0, 0.9, BOX)]], [[(0, BOX)]], num_classes=5) == pytest.approx(1.0)
    assert mean_average_precision([[]], [[]], num_classes=3) == 0.0


def test_iou_threshold():
    half = [30.0, 10.0, 70.0, 50.0]  # IoU 1/3 with BOX
    assert mean_average_precision([[(0, 0.9, half)]], [[(0, BOX)]], num_classes=1) == 0.0
    assert mean_average_precision([[(0, 0.9, half)]], [[(0, BOX)]], num_classes=1, iou_threshold=0.3) == 1.0


def test_each_truth_matches_one_prediction():
    # Two overlapping truths (IoU 0.6). The first prediction takes the left one; the second's best
    # match is that same left truth, so, as in COCO's matching, it goes to the best one still free.
    left, right = [0.0, 0.0, 40.0, 40.0], [10.0, 0.0, 50.0, 40.0]
    second = [4.0, 0.0, 44.0, 40.0]  # IoU 0.82 with left, 0.74 with right
    truths = [[(0, left), (0, right)]]
    assert mean_average_precision([[(0, 0.9, left), (0, 0.8, second)]], truths, num_classes=1) == pytest.approx(1.0)
    # Only one truth: the second prediction on it is a duplicate, a false positive at recall 1.
    assert mean_average_precision([[(0, 0.9, left), (0, 0.8, second)]], [[(0, left)]], num_classes=1) == 1.0
    assert mean_average_precision([[(0, 0.8, left), (0, 0.9, second)], []], [[(0, left)], [(0, right)]],
                                  num_classes=1) == pytest.approx(0.5)


def test_frame_count_mismatch():
    with pytest.raises(ValueError):
        mean_average_precision([[]], [[], []], num_classes=1)


def test_average_precision_envelope():
    # Precision rises after a dip: the envelope takes the later, higher value.
    recall = np.array([0.25, 0.25, 0.5, 0.75])
    precision = np.array([1.0, 0.5, 2 / 3, 0.75])
    assert average_precision(recall, precision) == pytest.approx(0.25 * 1.0 + 0.25 * 0.75 + 0.25 * 0.75)


def test_evaluate_messages_matches_by_label():
    labels = ["cat", "dog"]
    truths = {1: [(0, BOX)], 2: [(1, OTHER)], 3: [(1, FAR)]}
    messages = [
        {"frame_id": 1, "detections": [{"label": "cat", "score": 0.9, "box": BOX},
                                        {"label": "horse", "score": 0.99, "box": FAR}]},  # unknown label: ignored
        {"frame_id": 2, "detections": [{"label": "dog", "score": 0.8, "box": OTHER}]},
        # frame 3 has no message: its dog is missed
    ]
    assert evaluate_messages(messages, labels, truths) == pytest.approx((1.0 + 0.5) / 2)
