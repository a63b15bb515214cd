"""mAP@0.5 of detections against ground truth (per-class AP, all-point interpolation), and tracking metrics
(CLEAR MOT and IDF1, with py-motmetrics)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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


# An object that less than this share of shows (the rest hidden behind others) is left out of tracking metrics:
# neither a miss when no track covers it, nor a false positive for the track that does (MOTChallenge's rule for
# objects that are not to be counted).
MIN_VISIBILITY = 0.5


@dataclass(frozen=True)
class TrackTruth:
    """A clip's ground truth for tracking, by frame id: the objects to find, as (id, box), and the boxes of those
    too hidden to count."""

    objects: dict[int, list[TrackBox]]
    hidden: dict[int, list[Sequence[float]]]


def load_track_truth(path: str | Path, min_visibility: float = MIN_VISIBILITY) -> TrackTruth:
    """The ground truth that ``edged.synthetic`` writes beside a clip, for tracking: objects shown less than
    ``min_visibility`` (``visibility``, where the clip has it) are hidden."""
    objects: dict[int, list[TrackBox]] = {}
    hidden: dict[int, list[Sequence[float]]] = {}
    for frame in json.loads(Path(path).read_text())["frames"]:
        shown = frame.get("visibility") or [1.0] * len(frame["ids"])
        objects[frame["frame_id"]] = [(i, box) for i, box, v in zip(frame["ids"], frame["boxes"], shown)
                                      if v >= min_visibility]
        hidden[frame["frame_id"]] = [box for box, v in zip(frame["boxes"], shown) if v < min_visibility]
    return TrackTruth(objects, hidden)


def _boxes(boxes: Iterable[Sequence[float]]) -> np.ndarray:
    return np.array(list(boxes), dtype=np.float64).reshape(-1, 4)


def _not_on(tracks: Sequence[TrackBox], objects: Sequence[TrackBox], hidden: Sequence[Sequence[float]],
            iou: float) -> list[TrackBox]:
    """``tracks`` less those on a hidden object, as MOTChallenge's evaluation leaves them out: the tracks are paired
    with the objects and the hidden ones together (Hungarian method on IoU, >= ``iou``), and a track paired with a
    hidden one goes."""
    if not hidden or not tracks:
        return list(tracks)
    overlap = iou_matrix(_boxes([b for _, b in objects] + list(hidden)), _boxes(b for _, b in tracks))
    rows, cols = linear_sum_assignment(-overlap)
    excused = {j for i, j in zip(rows.tolist(), cols.tolist()) if i >= len(objects) and overlap[i, j] >= iou}
    return [t for j, t in enumerate(tracks) if j not in excused]


def clear_mot(predicted: Mapping[int, Sequence[TrackBox]], truth: Mapping[int, Sequence[TrackBox]],
              hidden: Mapping[int, Sequence[Sequence[float]]] | None = None, iou: float = 0.5) -> dict[str, Any]:
    """CLEAR MOT (MOTA, identity switches; Bernardin and Stiefelhagen, 2008) and IDF1 (Ristani et al., 2016), as
    py-motmetrics computes them: boxes match at IoU >= ``iou``, and a match kept from the previous frame stays
    while it is valid.

    ``predicted`` and ``truth`` map frame ids to (id, box) pairs; ``hidden``, frame ids to the boxes of objects
    that are not to be counted: a track on one is left out of that frame (``_not_on``). ``matches`` counts the
    matches that are not switches (motmetrics counts those apart). MOTA is -inf (motmetrics') when there is no
    ground truth but a track. The IoU is this module's: motmetrics 1.4.0's own ``iou_matrix`` needs numpy < 2.
    """
    import motmetrics  # a test and benchmark dependency (the ``eval`` extra): the daemon never needs it

    accumulator = motmetrics.MOTAccumulator()
    for frame_id in sorted(set(predicted) | set(truth)):
        objects = list(truth.get(frame_id, []))
        tracks = _not_on(predicted.get(frame_id, []), objects, (hidden or {}).get(frame_id, []), iou)
        overlap = iou_matrix(_boxes(b for _, b in objects), _boxes(b for _, b in tracks))
        accumulator.update([o for o, _ in objects], [t for t, _ in tracks],
                           np.where(overlap >= iou, 1.0 - overlap, np.nan), frameid=frame_id)
    names = {"mota": "mota", "idf1": "idf1", "id_switches": "num_switches", "fn": "num_misses",
             "fp": "num_false_positives", "gt": "num_objects", "gt_tracks": "num_unique_objects",
             "matches": "num_matches", "idtp": "idtp"}
    summary = motmetrics.metrics.create().compute(accumulator, metrics=list(names.values()))
    row = summary.iloc[0]
    return {key: float(row[name]) if key in ("mota", "idf1") else int(round(row[name])) for key, name in names.items()}
