"""Precision variants of a detector, made with ONNX Runtime's own tools, and how closely they agree with fp32.

``edged model optimize`` writes next to the model (or into ``--out``), with every metadata entry
(labels, family, imgsz, ...) carried over:

- ``NAME.fp16.onnx``: float16 weights and compute (``onnxruntime.transformers.float16``); the
  input and output stay float32, as edged feeds and reads them, and so does the decode (below).
- ``NAME.int8.onnx``: static quantization in QDQ format (``quant_pre_process``, then
  ``quantize_static``), calibrated on frames of a video or an image folder letterboxed exactly as
  the pipeline does. Every fifth frame is held back from calibration to measure agreement.

The int8 settings were measured on this project's 2-core AMD EPYC VMs (AVX2, no VNNI; onnxruntime
1.32 CPU provider) with the demo detector and YOLOv8n; models/README.md has the numbers:

- activations uint8, weights int8 per channel (symmetric): with int8 activations it ran 2x slower
  than fp32 here;
- ``reduce_range`` (7-bit weights): AVX2 without VNNI multiplies uint8 by int8 in pairs summed into
  int16 (vpmaddubsw), which can saturate with 8-bit weights; it cost no accuracy or speed here;
- MinMax calibration: Percentile, Entropy and Distribution agreed no better with fp32 but keep every
  activation of every frame in memory (2.6 GB more than MinMax for 40 frames) and took 6x as long;
- every operator ONNX Runtime can quantize except the decode: the head's last convolutions and all
  that follows them (box arithmetic, sigmoid, concat). Quantizing the decode cost 1.4 to 1.9 points of
  mAP@0.5 on the demo detector, and the head's last convolutions box precision (mean IoU with fp32
  0.973 instead of 0.980); quantizing only the convolutions left float SiLUs between quantize and
  dequantize pairs, slower than fp32.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quant_pre_process, quantize_static)
from onnxruntime.transformers.float16 import convert_float_to_float16
from tqdm import tqdm

from edged.errors import EdgedError, ModelError, SourceError
from edged.evaluation import Truth, evaluate_messages, iou_matrix, load_ground_truth
from edged.detections import Detection
from edged.inference.detector import Detector, read_model_info, variant_path
from edged.inference.session import SessionConfig
from edged.sources import Frame, open_source
from edged.specs import FILE_KINDS, source_kind

CPU = SessionConfig(providers=("cpu",))
HOLD_BACK_EVERY = 5  # every fifth frame read is kept out of calibration, for the agreement check
DEFAULT_FRAMES = 200  # frames read from the calibration source, held-back ones included
MATCH_IOU = 0.5  # a variant's detection matches an fp32 one of the same class at this IoU or more


def load_fp32_detector(model: str | Path) -> tuple[onnx.ModelProto, Detector]:
    """The model, checked to be a float32 detector edged can decode (ModelError naming the file if not),
    every node named, and its detector on the CPU provider."""
    path = Path(model)
    info = read_model_info(path)  # missing file, not ONNX
    if info.weights_precision == "int8":
        found = ", ".join(info.quantized_ops) or "integer weights"
        raise ModelError(f"{path}: already quantized ({found}); optimize the float32 model it came from")
    if info.weights_precision == "fp16":
        raise ModelError(f"{path}: already float16; optimize the float32 model it came from")
    proto = onnx.load(str(path))
    detector = Detector(path, CPU)  # ModelError when its output is no detector layout edged can decode
    for i, node in enumerate(proto.graph.node):  # the decode is excluded from conversion by node name
        node.name = node.name or f"{node.op_type}_{i}"
    return proto, detector


def decode_nodes(model: onnx.ModelProto) -> list[str]:
    """The detection head's last convolutions and everything after them, up to the outputs.

    Walks back from the outputs and stops at each Conv with a bias (a learned prediction layer);
    bias-free ones (YOLOv8's DFL, a fixed integral over bins) are part of the decode.
    """
    producers = {output: node for node in model.graph.node for output in node.output}
    pending, names = [o.name for o in model.graph.output], []
    while pending:
        node = producers.get(pending.pop())
        if node is None or node.name in names:
            continue
        names.append(node.name)
        if node.op_type != "Conv" or len(node.input) < 3:
            pending.extend(node.input)
    return names


def convert_fp16(model: str | Path, out: str | Path) -> Path:
    """Write the float16 variant of ``model`` to ``out``: float32 input and output, decode in float32."""
    proto, _ = load_fp32_detector(model)
    fp16 = convert_float_to_float16(proto, keep_io_types=True, node_block_list=decode_nodes(proto))
    return _save(fp16, Path(model), Path(out))


def calibration_frames(source: str | Path, count: int, *, held_back: bool = False) -> Iterator[Frame]:
    """The calibration frames among the first ``count`` of ``source`` or, with ``held_back``, the others."""
    spec = str(source)
    if source_kind(spec) in FILE_KINDS and not Path(spec).exists():
        raise SourceError(f"{spec}: calibration source not found (give a video file or a folder of images)")
    with open_source(spec) as frames:
        for frame in itertools.islice(frames, count):
            if (frame.frame_id % HOLD_BACK_EVERY == HOLD_BACK_EVERY - 1) == held_back:
                yield frame


class _LetterboxedFrames(CalibrationDataReader):
    """Feeds the calibrator frames pre-processed as the pipeline does (letterbox at the model's input size)."""

    def __init__(self, detector: Detector, frames: Iterable[Frame], bar: tqdm):
        self.detector, self.frames, self.bar = detector, iter(frames), bar

    def get_next(self) -> dict[str, np.ndarray] | None:
        frame = next(self.frames, None)
        if frame is None:
            self.bar.total = self.bar.n  # the source may hold fewer frames than asked for
            self.bar.refresh()
            return None
        self.bar.update()
        return {self.detector.input_name: self.detector.preprocess(frame.image)[0]}


def quantize_int8(model: str | Path, calib_source: str | Path, out: str | Path, *, frames: int = DEFAULT_FRAMES,
                  progress: bool = True) -> Path:
    """Write the int8 variant of ``model`` to ``out``, calibrated on frames of ``calib_source``.

    ``frames`` frames are read from the source; every fifth is held back (``calibration_frames``).
    """
    model, out = Path(model), Path(out)
    proto, detector = load_fp32_detector(model)
    calibration = calibration_frames(calib_source, frames)
    first = next(calibration, None)
    if first is None:
        raise SourceError(f"{calib_source}: no frames to calibrate on")
    with tempfile.TemporaryDirectory(prefix="edged-int8-") as tmp:
        named, prepared, quantized = (Path(tmp) / name for name in ("named.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(proto, str(named))
        # Symbolic shape inference is for transformers, and gives up on dynamic-shape detectors (the demo's).
        quant_pre_process(str(named), str(prepared), skip_symbolic_shape=True)
        total = frames - frames // HOLD_BACK_EVERY
        with tqdm(total=total, desc=f"calibrating on {Path(calib_source).name}", unit="frame",
                  disable=None if progress else True) as bar:
            quantize_static(str(prepared), str(quantized),
                            _LetterboxedFrames(detector, itertools.chain([first], calibration), bar),
                            quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.MinMax,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=True, reduce_range=True, nodes_to_exclude=decode_nodes(proto))
        return _save(onnx.load(str(quantized)), model, out)


def _save(variant: onnx.ModelProto, model: Path, out: Path) -> Path:
    """Save with the fp32 model's metadata, and only the opset imports the nodes use."""
    original = onnx.load(str(model), load_external_data=False)
    del variant.metadata_props[:]
    variant.metadata_props.extend(original.metadata_props)
    used = {node.domain or "" for node in variant.graph.node} | {""}
    kept = [o for o in variant.opset_import if (o.domain or "") in used]
    del variant.opset_import[:]
    variant.opset_import.extend(kept)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(variant, str(out))
    return out


def agreement(fp32: Detector, variant: Detector, frames: Sequence[Frame],
              ground_truth: tuple[list[str], Mapping[int, list[Truth]]] | None = None) -> dict[str, Any]:
    """How closely ``variant`` reproduces ``fp32`` on ``frames``.

    Per frame, each fp32 detection (highest score first) takes the unmatched variant detection of
    its class with the highest IoU, if that is at least 0.5. ``found`` is the share of fp32
    detections matched, ``mean_iou`` the mean IoU of the matched pairs (None without any). With
    ``ground_truth`` (labels, truths by frame id: ``load_ground_truth``), also the mAP@0.5 of each.
    """
    messages: dict[str, list[dict[str, Any]]] = {"fp32": [], "variant": []}
    ious: list[float] = []
    total = 0
    for frame in frames:
        ours, theirs = fp32.detect(frame.image).detections, variant.detect(frame.image).detections
        for key, detections in (("fp32", ours), ("variant", theirs)):
            messages[key].append({"frame_id": frame.frame_id, "detections": [d.to_json() for d in detections]})
        total += len(ours)
        ious.extend(_matched_ious(ours, theirs))
    result: dict[str, Any] = {"frames": len(frames), "fp32_detections": total,
                              "mean_iou": float(np.mean(ious)) if ious else None,
                              "found": len(ious) / total if total else None}
    if ground_truth is not None:
        labels, truths = ground_truth
        missing = [f.frame_id for f in frames if f.frame_id not in truths]
        if missing:
            raise SourceError(f"the ground truth has no frame {missing[0]}: is it the calibration clip's?")
        held_back = {f.frame_id: truths[f.frame_id] for f in frames}
        result["map50_fp32"] = evaluate_messages(messages["fp32"], labels, held_back)
        result["map50"] = evaluate_messages(messages["variant"], labels, held_back)
    return result


def _matched_ious(ours: Sequence[Detection], theirs: Sequence[Detection]) -> list[float]:
    if not ours or not theirs:
        return []
    iou = iou_matrix(np.array([d.box for d in ours]), np.array([d.box for d in theirs]))
    iou[np.array([d.class_id for d in ours])[:, None] != np.array([d.class_id for d in theirs])[None, :]] = 0.0
    taken = np.zeros(len(theirs), dtype=bool)
    matched = []
    for i in np.argsort([-d.score for d in ours], kind="stable"):
        candidates = np.where(taken, -1.0, iou[i])
        best = int(candidates.argmax())
        if candidates[best] >= MATCH_IOU:
            taken[best] = True
            matched.append(float(candidates[best]))
    return matched


def median_latency_ms(detectors: Sequence[Detector], image: np.ndarray, runs: int = 50,
                      block: int = 10) -> list[float]:
    """Median inference time of each detector on ``image``.

    The detectors take turns in blocks of ``block`` runs, so load on the machine hits all alike. Not
    run by run: ONNX Runtime's pool threads spin for a while after each run, and taking turns run by
    run let one session's spinning threads steal the cores from the next (with two cores, the demo's
    fp32 measured 26 ms instead of 12, and int8 looked 1.9x faster when it was 1.1x).
    """
    blobs = [detector.preprocess(image)[0] for detector in detectors]
    times: list[list[float]] = [[] for _ in detectors]
    for start in range(0, runs, block):
        for detector, blob, series in zip(detectors, blobs, times):
            detector.infer(blob)  # untimed: warms up, and lets the previous session's threads go idle
            for _ in range(min(block, runs - start)):
                began = time.perf_counter()
                detector.infer(blob)
                series.append((time.perf_counter() - began) * 1000)
    return [statistics.median(series) for series in times]


def optimize(model: str | Path, *, fp16: bool, int8: bool, calib: str | None = None, frames: int | None = None,
             ground_truth: str | Path | None = None, out_dir: str | Path | None = None,
             progress: bool = True) -> dict[str, Any]:
    """``edged model optimize``: write the variants asked for, then compare each with the fp32 model.

    The comparison runs on the frames of ``calib`` held back from calibration: agreement (and
    mAP@0.5 against ``ground_truth``, the clip's JSON), and median CPU latency on one of them.
    """
    model, frames = Path(model), DEFAULT_FRAMES if frames is None else frames
    if frames < 1:
        raise EdgedError(f"--calib-frames {frames}: give at least 1")
    if not (fp16 or int8):
        raise EdgedError("nothing to do: give --fp16, --int8 or both")
    if int8 and calib is None:
        raise EdgedError("--int8 needs --calib SOURCE: a video or a folder of images to calibrate on")
    if ground_truth is not None and calib is None:
        raise EdgedError("--gt needs --calib: the ground truth is the calibration clip's")
    truth = _ground_truth(Path(ground_truth)) if ground_truth is not None else None
    held_back = list(calibration_frames(calib, frames, held_back=True)) if calib is not None else []
    written = {}
    if fp16:
        written["fp16"] = convert_fp16(model, variant_path(model, "fp16", out_dir))
    if int8:
        assert calib is not None
        written["int8"] = quantize_int8(model, calib, variant_path(model, "int8", out_dir), frames=frames,
                                        progress=progress)
    fp32 = Detector(model, CPU)
    variants = [Detector(path, CPU) for path in written.values()]
    image = held_back[0].image if held_back else np.full((480, 640, 3), 114, np.uint8)
    latencies = median_latency_ms([fp32, *variants], image)
    rows: list[dict[str, Any]] = [{"precision": "fp32", "path": str(model), "size_mb": model.stat().st_size / 1e6,
                                   "latency_ms": latencies[0], "speedup": 1.0}]
    for (precision, path), detector, latency in zip(written.items(), variants, latencies[1:]):
        row = {"precision": precision, "path": str(path), "size_mb": path.stat().st_size / 1e6,
               "latency_ms": latency, "speedup": latencies[0] / latency}
        if held_back:
            row.update(agreement(fp32, detector, held_back, truth))
            if truth is not None:
                rows[0]["map50"] = row.pop("map50_fp32")
        rows.append(row)
    return {"model": str(model), "calib": calib, "held_back_frames": len(held_back),
            "ground_truth": str(ground_truth) if ground_truth is not None else None, "variants": rows}


def _ground_truth(path: Path) -> tuple[list[str], dict[int, list[Truth]]]:
    try:
        return load_ground_truth(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read the ground truth ({exc.strerror})") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"{path}: not a clip's ground truth as edged.synthetic writes it ({exc!r})") from exc


def format_report(report: dict[str, Any]) -> str:
    """The report of ``optimize`` as a table, one row per precision."""
    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows = report["variants"]
    width = max(len(Path(row["path"]).name) for row in rows)
    lines = [f"{'':5}  {'file':{width}}  {'MB':>5}  {'mean IoU':>8}  {'found':>6}  {'mAP@0.5':>7}  {'CPU ms':>6}  "
             f"{'speed':>5}"]
    for row in rows:
        lines.append(f"{row['precision']:5}  {Path(row['path']).name:{width}}  {row['size_mb']:5.2f}  "
                     f"{number(row.get('mean_iou'), '.3f'):>8}  {number(row.get('found'), '.1%'):>6}  "
                     f"{number(row.get('map50'), '.4f'):>7}  {row['latency_ms']:6.1f}  {row['speedup']:4.2f}x")
    lines.append(f"written to {Path(rows[-1]['path']).parent}")
    if report["held_back_frames"]:
        detections = next((row["fp32_detections"] for row in rows if "fp32_detections" in row), 0)
        lines.append(f"agreement with fp32 on {report['held_back_frames']} frames of {report['calib']} held back "
                     f"from calibration ({detections} fp32 detections; found: share matched at IoU >= {MATCH_IOU})")
    else:
        lines.append("agreement: give --calib SOURCE for frames to compare on")
    if report["ground_truth"]:
        lines.append(f"mAP@0.5 on those frames against {report['ground_truth']}")
    lines.append("CPU ms: median inference time on the CPU provider, runs interleaved")
    return "\n".join(lines)
