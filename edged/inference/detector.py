"""A detector: one ONNX model, its family, labels and input size, behind ``detect(image)``."""

from __future__ import annotations

import ast
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import yaml

from edged.detections import Detection, DetectionResult
from edged.errors import ModelError
from edged.inference.families import Family, detect_family, get_family, FAMILIES
from edged.inference.nms import nms
from edged.inference.preprocess import Letterbox
from edged.inference.session import SessionConfig, create_session, short_name

log = logging.getLogger("edged.inference")

DEFAULT_INPUT_SIZE = 640
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                  "MatMulNBits"}
_INTEGER_WEIGHTS = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class ModelInfo:
    """What ``edged model info`` prints: read from the file, no session needed."""

    path: Path
    size_bytes: int
    opset: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    metadata: dict[str, str]
    weights_precision: str  # fp32, fp16 or int8: what the file itself holds
    quantized_ops: list[str]  # QuantizeLinear, QLinearConv, ... found in the graph


def read_model_info(path: str | Path) -> ModelInfo:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(f"{path}: not an ONNX model ({exc})") from exc
    if not model.graph.output:
        raise ModelError(f"{path}: not an ONNX model (no graph outputs)")
    initializers = {i.name for i in model.graph.initializer}

    def describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dims = [d.dim_param or d.dim_value if (d.dim_param or d.HasField("dim_value")) else "?" for d in tensor.shape.dim]
        return {"name": value.name, "shape": dims, "type": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    quantized = sorted({n.op_type for n in model.graph.node
                        if n.op_type in _QUANTIZED_OPS or n.op_type.startswith("QLinear")})
    if quantized or any(i.data_type in _INTEGER_WEIGHTS for i in model.graph.initializer):
        precision = "int8"
    elif (any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
          or any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in model.graph.input)):
        precision = "fp16"
    else:
        precision = "fp32"
    return ModelInfo(path=path, size_bytes=path.stat().st_size, opset=opset,
                     inputs=[describe(i) for i in model.graph.input if i.name not in initializers],
                     outputs=[describe(o) for o in model.graph.output],
                     metadata={p.key: p.value for p in model.metadata_props},
                     weights_precision=precision, quantized_ops=quantized)


def variant_path(model: str | Path, precision: str, out_dir: str | Path | None = None) -> Path:
    """Where a precision variant lives: ``DIR/NAME.fp16.onnx`` for ``DIR/NAME.onnx`` (``out_dir`` replaces DIR)."""
    model = Path(model)
    return Path(out_dir or model.parent) / f"{model.stem}.{precision}.onnx"


def static_input_size(info: ModelInfo) -> tuple[int, int] | None:
    """The model's fixed input (height, width), or None for a dynamic-shape model."""
    shape = info.inputs[0]["shape"]
    if len(shape) != 4:
        raise ModelError(f"{info.path}: input has shape {shape}; expected an image batch [1, 3, H, W]")
    return (shape[2], shape[3]) if all(isinstance(d, int) and d > 0 for d in shape[2:]) else None


def resolve_input_size(info: ModelInfo, wanted: int | Sequence[int] | None = None) -> tuple[int, int]:
    """The input (height, width) to feed: ``wanted`` (dynamic models only), else the model's fixed size,
    else its ``imgsz`` metadata, else 640."""
    static = static_input_size(info)
    if wanted is not None:
        size = (wanted, wanted) if isinstance(wanted, int) else (int(wanted[0]), int(wanted[1]))
        if static and size != static:
            raise ModelError(f"{info.path}: input size {size[1]}x{size[0]} asked for, but the model's input is "
                             f"fixed at {static[1]}x{static[0]}")
        return size
    if static:
        return static
    imgsz = info.metadata.get("imgsz")
    if imgsz:
        try:
            value = ast.literal_eval(imgsz)
            return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
        except (ValueError, SyntaxError, TypeError, IndexError):
            log.warning("model %s: unreadable imgsz metadata %r", info.path.name, imgsz)
    return DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE


class FamilyMismatch(ModelError):
    """No family decodes the model's output as configured; ``key`` is what to change: ``family`` (the one
    asked for does not fit), ``labels`` (their count does not), or ``layout`` (no family knows it)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def choose_family(path: Path, output_name: str, shape: Sequence[int], wanted: str, labels: Sequence[str] | None,
                  hint: str | None) -> Family:
    """The family that decodes an output of ``shape``: ``wanted``, unless it is ``auto``, else the one the
    shape, the label count and the model's ``family`` metadata (``hint``) point to. FamilyMismatch says why
    none does. The one set of rules for Detector and for check-config's preflight."""
    shape = list(shape)
    if wanted != "auto":
        family = get_family(wanted)
        if not family.matches(tuple(shape), None):
            raise FamilyMismatch("family", f"{path}: output {output_name} has shape {shape}, which is not the "
                                           f"{family.name} layout {family.layout}")
    else:
        count = len(labels) if labels is not None else None
        found = detect_family(tuple(shape), count, hint)
        if found is None and count is not None and (other := detect_family(tuple(shape), None, hint)) is not None:
            raise FamilyMismatch("labels", f"{path}: output shape {shape} fits {other.name} with "
                                           f"{other.num_classes(tuple(shape))} classes, but {count} labels are given")
        if found is None:
            layouts = ", ".join(f"{f.name} {f.layout}" for f in FAMILIES.values())
            raise FamilyMismatch("layout", f"{path}: cannot decode output {output_name} of shape {shape}; "
                                           f"known layouts: {layouts}")
        family = found
    expected = family.num_classes(tuple(shape))
    if expected is not None and labels is not None and len(labels) != expected:
        raise FamilyMismatch("labels", f"{path}: the {family.name} output has {expected} classes but {len(labels)} "
                                       f"labels are given")
    return family


def parse_names(value: str) -> list[str] | None:
    """Ultralytics' ``names`` metadata: a Python dict literal ``{0: 'person', ...}`` (or a list)."""
    try:
        names = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        return [str(names[i]) for i in sorted(names)]
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    return None


def load_labels(labels: Sequence[str] | str | Path) -> list[str]:
    """``model.labels``: a list, or a file (one label per line, or a YAML/JSON list or id->name map)."""
    if not isinstance(labels, (str, Path)):
        return [str(label) for label in labels]
    path = Path(labels)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read labels file ({exc.strerror})") from exc
    if path.suffix in (".yaml", ".yml", ".json"):
        data = yaml.safe_load(text)
        data = data.get("names", data) if isinstance(data, dict) and "names" in data else data
        if isinstance(data, dict):
            return [str(data[k]) for k in sorted(data)]
        if isinstance(data, list):
            return [str(v) for v in data]
        raise ModelError(f"{path}: labels file must hold a list or an id-to-name map")
    return [line.strip() for line in text.splitlines() if line.strip()]


class Detector:
    """Loads the model on the best provider, decodes its family, and detects.

    ``detect`` is safe to call from one thread at a time per detector; ONNX Runtime
    itself releases the GIL while it runs.
    """

    def __init__(self, model_path: str | Path, session_config: SessionConfig | None = None, *,
                 providers: Sequence[str] | None = None, family: str = "auto",
                 labels: Sequence[str] | str | Path | None = None, input_size: int | Sequence[int] | None = None,
                 confidence: float = 0.4, iou: float = 0.5, classes: Sequence[str] | None = None,
                 max_detections: int = 300):
        self.path = Path(model_path)
        if session_config is None:
            session_config = SessionConfig(providers=tuple(providers)) if providers else SessionConfig()
        self.session_config = session_config
        self.info = read_model_info(self.path)
        self.session = create_session(self.path, session_config)
        self.providers = [short_name(p) for p in self.session.get_providers()]
        self.confidence, self.iou, self.max_detections = confidence, iou, max_detections

        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        if model_input.type not in _INPUT_TYPES:
            raise ModelError(f"{self.path}: input {model_input.name} is {model_input.type}; "
                             f"edged feeds images as float32 or float16")
        self.input_dtype = _INPUT_TYPES[model_input.type]
        self.input_size = resolve_input_size(self.info, input_size)
        self.output_name = self.session.get_outputs()[0].name

        names = parse_names(self.info.metadata.get("names", ""))
        self.labels: list[str] | None = load_labels(labels) if labels is not None else names
        self.family = self._resolve_family(family)
        if self.labels is None:
            count = self.family.num_classes(self._output_shape)
            self.labels = [str(i) for i in range(count)] if count else []
        self.class_filter = self._class_ids(classes) if classes else None
        log.info("model %s: family %s, input %dx%d %s, %d labels, providers %s", self.path.name, self.family.name,
                 self.input_size[1], self.input_size[0], np.dtype(self.input_dtype).name, len(self.labels),
                 ", ".join(self.providers))

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def provider(self) -> str:
        return self.providers[0]

    @property
    def precision(self) -> str:
        """The file's own precision for fp16/int8 files; for fp32 files, the one asked of the provider
        (TensorRT builds fp16/int8 engines from an fp32 file)."""
        held = self.info.weights_precision
        return held if held != "fp32" else self.session_config.precision

    def _resolve_family(self, wanted: str) -> Family:
        """Warm up once (first inference is slow: allocations, kernel selection) and read the output layout."""
        blank = np.full((1, 3, *self.input_size), 114 / 255, dtype=self.input_dtype)
        started = time.perf_counter()
        output = self._run(blank)
        log.info("model %s: warm-up inference %.1f ms", self.path.name, (time.perf_counter() - started) * 1000)
        self._output_shape = tuple(output.shape)
        return choose_family(self.path, self.output_name, self._output_shape, wanted, self.labels,
                             self.info.metadata.get("family"))

    def set_thresholds(self, confidence: float, iou: float, classes: Sequence[str] | None) -> None:
        """Change what is reported without reloading the model; takes effect from the next frame.
        An unknown class raises ModelError and changes nothing."""
        class_filter = self._class_ids(classes) if classes else None
        self.confidence, self.iou, self.class_filter = confidence, iou, class_filter

    def _class_ids(self, classes: Sequence[str]) -> np.ndarray:
        assert self.labels is not None
        unknown = [c for c in classes if c not in self.labels]
        if unknown:
            raise ModelError(f"model.classes: {unknown} not among the model's labels {self.labels}")
        return np.array([self.labels.index(c) for c in classes], dtype=np.int64)

    def _run(self, blob: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: blob})[0]

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return self.family.preprocess(image, self.input_size, self.input_dtype)

    def infer(self, blob: np.ndarray) -> np.ndarray:
        return self._run(blob)

    def postprocess(self, output: np.ndarray, transform: Letterbox) -> list[Detection]:
        candidates = self.family.decode(output.astype(np.float32, copy=False), self.confidence)
        boxes, scores, class_ids = candidates.boxes, candidates.scores, candidates.class_ids
        if self.class_filter is not None:
            keep = np.isin(class_ids, self.class_filter)
            boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
        if self.family.needs_nms:
            keep = nms(boxes, scores, class_ids, self.iou, self.max_detections)
        else:
            keep = np.argsort(-scores, kind="stable")[: self.max_detections]
        boxes = transform.to_source(boxes[keep])
        labels = self.labels or []
        return [Detection(labels[c] if 0 <= c < len(labels) else str(c), int(c), float(s), tuple(float(v) for v in b))
                for b, s, c in zip(boxes, scores[keep], class_ids[keep])]

    def detect(self, image: np.ndarray) -> DetectionResult:
        """Detect in one BGR uint8 image, timing each stage."""
        t0 = time.perf_counter()
        blob, transform = self.preprocess(image)
        t1 = time.perf_counter()
        output = self.infer(blob)
        t2 = time.perf_counter()
        detections = self.postprocess(output, transform)
        t3 = time.perf_counter()
        return DetectionResult(detections, image.shape[1], image.shape[0], {
            "preprocess": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000, "postprocess": (t3 - t2) * 1000})
