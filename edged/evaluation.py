"""mAP@0.5 of detections against ground truth (per-class AP, all-point interpolation), and MOTA of tracks."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

# Per image: predictions as (class_id, score, box) and truths as (class_id, box); boxes xyxy.
Prediction = tuple[int, float, Sequence[float]]
Truth = tuple[int, Sequence[float]]
# Per frame, for tracking: (track id or ground-truth object id, box).
TrackBox = tuple[int, Sequence[float]]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N,4) with every box in b (M,4), xyxy."""
    # Coordinate by coordinate on (N,M) arrays, from contiguous copies of the coordinates, in place where it can:
    # several times faster than broadcasting the (x, y) pairs (the tracker calls this every frame).
    ax1, ay1, ax2, ay2 = a.T.copy()[:, :, None]
    bx1, by1, bx2, by2 = b.T.copy()
    inter = np.minimum(ax2, bx2)
    inter -= np.maximum(ax1, bx1)
    np.maximum(inter, 0, out=inter)
    height = np.minimum(ay2, by2)
    height -= np.maximum(ay1, by1)
    np.maximum(height, 0, out=height)
    inter *= height
    union = np.maximum(ax2 - ax1, 0) * np.maximum(ay2 - ay1, 0) + np.maximum(bx2 - bx1, 0) * np.maximum(by2 - by1, 0)
    union -= inter
    np.maximum(union, 1e-9, out=union)
    inter /= union
    return inter


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


def mota(predicted: Mapping[int, Sequence[TrackBox]], truth: Mapping[int, Sequence[TrackBox]],
         iou: float = 0.5) -> dict[str, Any]:
    """CLEAR-MOT accuracy (Bernardin and Stiefelhagen, 2008): MOTA = 1 - (FN + FP + IDSW) / GT.

    ``predicted`` and ``truth`` map frame ids to (id, box) pairs. Frame by frame, the pairs matched
    in the previous frame are kept while their IoU is still >= ``iou``; the rest are matched by the
    Hungarian method on IoU (>= ``iou``). An identity switch is a ground-truth object matched to
    another track than the one it was last matched to. MOTA is nan when there is no ground truth.
    """
    fn = fp = switches = matches = gt = 0
    last_match: dict[int, int] = {}  # ground-truth id -> the track it was last matched to
    previous: dict[int, int] = {}  # the previous frame's matches
    gt_ids: set[int] = set()
    for frame_id in sorted(set(predicted) | set(truth)):
        objects, tracks = list(truth.get(frame_id, [])), list(predicted.get(frame_id, []))
        gt += len(objects)
        gt_ids.update(o for o, _ in objects)
        overlap = iou_matrix(np.array([b for _, b in objects], dtype=np.float64).reshape(-1, 4),
                             np.array([b for _, b in tracks], dtype=np.float64).reshape(-1, 4))
        valid = overlap >= iou
        track_index = {h: j for j, (h, _) in enumerate(tracks)}
        pairs = []
        for i, (o, _) in enumerate(objects):
            j = track_index.get(previous.get(o))
            if j is not None and valid[i, j]:
                pairs.append((i, j))
                valid[i, :] = False
                valid[:, j] = False
        if valid.any():
            rows, cols = linear_sum_assignment(np.where(valid, 1.0 - overlap, 1e6))
            pairs += [(i, j) for i, j in zip(rows.tolist(), cols.tolist()) if valid[i, j]]
        previous = {}
        for i, j in pairs:
            o, h = objects[i][0], tracks[j][0]
            switches += o in last_match and last_match[o] != h
            last_match[o] = previous[o] = h
        matches += len(pairs)
        fn += len(objects) - len(pairs)
        fp += len(tracks) - len(pairs)
    return {"mota": 1.0 - (fn + fp + switches) / gt if gt else float("nan"), "fn": fn, "fp": fp,
            "id_switches": switches, "gt": gt, "gt_tracks": len(gt_ids), "matches": matches}
