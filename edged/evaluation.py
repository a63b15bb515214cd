"""mAP@0.5 of detections against ground truth (per-class AP, all-point interpolation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

# Per image: predictions as (class_id, score, box) and truths as (class_id, box); boxes xyxy.
Prediction = tuple[int, float, Sequence[float]]
Truth = tuple[int, Sequence[float]]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N,4) with every box in b (M,4), xyxy."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (VOC 2010+ all-point interpolation)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(predictions: Sequence[Sequence[Prediction]], truths: Sequence[Sequence[Truth]],
                           num_classes: int, iou_threshold: float = 0.5) -> float:
    """mAP over the classes that have ground truth. Each truth matches at most one prediction."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predicted frames but {len(truths)} ground-truth frames")
    aps = []
    for cls in range(num_classes):
        total_truth = sum(1 for frame in truths for c, _ in frame if c == cls)
        if total_truth == 0:
            continue
        scored: list[tuple[float, bool]] = []
        for frame_preds, frame_truths in zip(predictions, truths):
            preds = sorted((p for p in frame_preds if p[0] == cls), key=lambda p: -p[1])
            gt = np.array([b for c, b in frame_truths if c == cls], dtype=np.float64).reshape(-1, 4)
            if not preds:
                continue
            if len(gt) == 0:
                scored.extend((s, False) for _, s, _ in preds)
                continue
            ious = iou_matrix(np.array([b for _, _, b in preds], dtype=np.float64).reshape(-1, 4), gt)
            taken = np.zeros(len(gt), dtype=bool)
            for i, (_, score, _) in enumerate(preds):
                candidates = np.where(taken, -1.0, ious[i])
                best = int(candidates.argmax())
                hit = candidates[best] >= iou_threshold
                taken[best] |= hit
                scored.append((score, bool(hit)))
        if not scored:
            aps.append(0.0)
            continue
        scored.sort(key=lambda s: -s[0])
        hits = np.array([h for _, h in scored], dtype=np.float64)
        tp = np.cumsum(hits)
        fp = np.cumsum(1.0 - hits)
        aps.append(average_precision(tp / total_truth, tp / np.maximum(tp + fp, 1e-9)))
    return float(np.mean(aps)) if aps else 0.0


def load_ground_truth(path: str | Path) -> tuple[list[str], dict[int, list[Truth]]]:
    """A clip's ground truth as written by ``edged.synthetic.write_clip``: labels, and truths by frame id."""
    data = json.loads(Path(path).read_text())
    return data["labels"], {f["frame_id"]: list(zip(f["class_ids"], f["boxes"])) for f in data["frames"]}


def evaluate_messages(messages: Iterable[dict], labels: list[str], truths: dict[int, list[Truth]]) -> float:
    """mAP@0.5 of detections messages (``edged detect`` JSON lines) against a clip's ground truth.

    Predictions are matched by label name, so a model whose class order differs still scores right;
    a frame with ground truth but no message counts as all missed.
    """
    by_frame = {m["frame_id"]: m for m in messages}
    predictions, frame_truths = [], []
    for frame_id, truth in sorted(truths.items()):
        message = by_frame.get(frame_id, {"detections": []})
        predictions.append([(labels.index(d["label"]), d["score"], d["box"])
                            for d in message["detections"] if d["label"] in labels])
        frame_truths.append(truth)
    return mean_average_precision(predictions, frame_truths, num_classes=len(labels))
