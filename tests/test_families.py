"""End to end through real ONNX models: each family's output decoded back to source-image pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.errors import ModelError
from edged.inference.detector import Detector
from tests.onnx_builders import constant_output_model, constant_output_model_fp16, names_metadata

LABELS = ["cat", "dog"]
INPUT = 320

# Known boxes in model-input pixels (x1, y1, x2, y2), score, class. With a 320x320 input,
# a 640x360 source is letterboxed to scale 0.5, pad_y 70 and a 300x500 one to scale 0.64, pad_x 64.
A = ((100.0, 100.0, 160.0, 180.0), 0.9, 0)
B = ((180.0, 120.0, 240.0, 200.0), 0.8, 1)
C = ((30.0, 40.0, 120.0, 150.0), 0.7, 0)  # off the image at the top-left: clipped to 0
D = ((230.0, 210.0, 300.0, 260.0), 0.65, 1)  # off the image at the bottom (640x360) / right (300x500)
A_DUPLICATE = ((102.0, 102.0, 162.0, 182.0), 0.6, 0)  # IoU 0.89 with A: NMS removes it
WEAK = ((200.0, 205.0, 250.0, 240.0), 0.2, 1)  # under the default confidence 0.4
BOXES = [A, B, C, D, A_DUPLICATE, WEAK]
AFTER_NMS = [A, B, C, D]

SOURCES = [(640, 360), (300, 500)]  # (width, height): padding on y, then on x


def cxcywh(box: tuple[float, float, float, float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def yolov8_output(boxes: list, num_classes: int = 2, anchors: int = 32) -> np.ndarray:
    """[1, 4+nc, N]: cx, cy, w, h, class scores; unused anchors score 0."""
    out = np.zeros((1, 4 + num_classes, anchors), dtype=np.float32)
    for i, (box, score, cls) in enumerate(boxes):
        out[0, :4, i] = cxcywh(box)
        out[0, 4:, i] = score / 4  # the other classes score lower: argmax must pick ``cls``
        out[0, 4 + cls, i] = score
    return out


def yolov5_output(boxes: list, num_classes: int = 2, rows: int = 32, extra: list | None = None) -> np.ndarray:
    """[1, N, 5+nc]: cx, cy, w, h, objectness, class scores; score = objectness * class score."""
    out = np.zeros((1, rows, 5 + num_classes), dtype=np.float32)
    for i, (box, score, cls) in enumerate(boxes):
        root = np.sqrt(score)
        out[0, i, :4] = cxcywh(box)
        out[0, i, 4] = root
        out[0, i, 5:] = root / 4
        out[0, i, 5 + cls] = root
    for j, (box, objectness, cls_score, cls) in enumerate(extra or [], start=len(boxes)):
        out[0, j, :4] = cxcywh(box)
        out[0, j, 4] = objectness
        out[0, j, 5 + cls] = cls_score
    return out


def yolov10_output(boxes: list, rows: int = 20) -> np.ndarray:
    """[1, K, 6]: x1, y1, x2, y2, score, class; unused rows score 0."""
    out = np.zeros((1, rows, 6), dtype=np.float32)
    for i, (box, score, cls) in enumerate(boxes):
        out[0, i] = [*box, score, cls]
    return out


OUTPUTS = {"yolov8": yolov8_output, "yolov5": yolov5_output, "yolov10": yolov10_output}


def source_box(box: tuple[float, ...], source_wh: tuple[int, int], input_hw: tuple[int, int]) -> np.ndarray:
    """Model-input pixels -> source pixels, computed from the letterbox definition."""
    w, h = source_wh
    in_h, in_w = input_hw
    scale = min(in_h / h, in_w / w)
    pad_x = (in_w - round(w * scale)) // 2
    pad_y = (in_h - round(h * scale)) // 2
    x1, y1, x2, y2 = box
    out = np.array([(x1 - pad_x) / scale, (y1 - pad_y) / scale, (x2 - pad_x) / scale, (y2 - pad_y) / scale])
    out[0::2] = np.clip(out[0::2], 0, w)
    out[1::2] = np.clip(out[1::2], 0, h)
    return out


def image(source_wh: tuple[int, int]) -> np.ndarray:
    w, h = source_wh
    return np.full((h, w, 3), 90, dtype=np.uint8)


def assert_detections(result, expected: list, source_wh: tuple[int, int], input_hw: tuple[int, int],
                      labels: list[str] | None = LABELS, atol: float = 1e-3) -> None:
    assert (result.width, result.height) == source_wh
    got = [(d.label, d.class_id, d.score, d.box) for d in result.detections]
    assert len(got) == len(expected), got
    for (label, class_id, score, box), (want_box, want_score, want_class) in zip(got, expected):
        assert class_id == want_class
        assert label == (labels[want_class] if labels else str(want_class))
        assert score == pytest.approx(want_score, abs=atol)
        np.testing.assert_allclose(box, source_box(want_box, source_wh, input_hw), atol=atol)


def model(tmp_path: Path, output: np.ndarray, name: str = "model.onnx", **kwargs) -> Path:
    return constant_output_model(tmp_path / name, output, **kwargs)


# --- decoding and mapping back to the source image --------------------------------------------


@pytest.mark.parametrize("source_wh", SOURCES)
@pytest.mark.parametrize("family", ["yolov8", "yolov5"])
def test_nms_families_map_boxes_back_to_source(tmp_path, family, source_wh):
    path = model(tmp_path, OUTPUTS[family](BOXES), metadata={"names": names_metadata(LABELS)})
    detector = Detector(path, providers=["cpu"])
    assert detector.family.name == family  # auto-detected from the output shape
    assert detector.input_size == (INPUT, INPUT)
    assert detector.labels == LABELS
    assert_detections(detector.detect(image(source_wh)), AFTER_NMS, source_wh, (INPUT, INPUT))


@pytest.mark.parametrize("source_wh", SOURCES)
def test_yolov10_maps_boxes_back_without_nms(tmp_path, source_wh):
    path = model(tmp_path, yolov10_output(BOXES), metadata={"names": names_metadata(LABELS)})
    detector = Detector(path, providers=["cpu"])
    assert detector.family.name == "yolov10"
    # End-to-end head: every row over the confidence is a detection, the duplicate included.
    assert_detections(detector.detect(image(source_wh)), [A, B, C, D, A_DUPLICATE], source_wh, (INPUT, INPUT))


def test_clipping_of_boxes_outside_the_image(tmp_path):
    path = model(tmp_path, yolov8_output([C, D]), metadata={"names": names_metadata(LABELS)})
    detector = Detector(path, providers=["cpu"])
    wide = detector.detect(image((640, 360))).detections
    tall = detector.detect(image((300, 500))).detections
    # C: (30, 40) lies in the padding above / left of the picture.
    assert wide[0].box[1] == 0.0 and tall[0].box[0] == 0.0
    assert wide[0].box[0] == pytest.approx((30 - 0) / 0.5)
    # D: (300, 260) lies below the 640x360 picture and right of the 300x500 one.
    assert wide[1].box[3] == 360.0 and tall[1].box[2] == 300.0
    for det in wide:
        assert 0 <= det.box[0] <= det.box[2] <= 640 and 0 <= det.box[1] <= det.box[3] <= 360
    for det in tall:
        assert 0 <= det.box[0] <= det.box[2] <= 300 and 0 <= det.box[1] <= det.box[3] <= 500


def test_yolov5_score_is_objectness_times_class_score(tmp_path):
    low_objectness = ((60.0, 200.0, 90.0, 240.0), 0.3, 1.0, 0)  # class score 1.0 but objectness 0.3
    split = ((250.0, 80.0, 300.0, 120.0), 0.9, 0.8, 1)  # 0.9 * 0.8 = 0.72
    path = model(tmp_path, yolov5_output([], extra=[low_objectness, split]),
                 metadata={"names": names_metadata(LABELS)})
    result = Detector(path, providers=["cpu"]).detect(image((640, 360)))
    assert_detections(result, [(split[0], 0.72, 1)], (640, 360), (INPUT, INPUT))


# --- confidence and class filters --------------------------------------------------------------


@pytest.mark.parametrize("family", ["yolov8", "yolov5", "yolov10"])
def test_confidence_threshold(tmp_path, family):
    path = model(tmp_path, OUTPUTS[family](BOXES), metadata={"names": names_metadata(LABELS)})
    high = Detector(path, providers=["cpu"], confidence=0.75).detect(image((640, 360)))
    assert_detections(high, [A, B], (640, 360), (INPUT, INPUT))
    low = Detector(path, providers=["cpu"], confidence=0.1).detect(image((640, 360)))
    expected = [A, B, C, D, WEAK] if family != "yolov10" else [A, B, C, D, A_DUPLICATE, WEAK]
    assert_detections(low, expected, (640, 360), (INPUT, INPUT))


@pytest.mark.parametrize("family", ["yolov8", "yolov5", "yolov10"])
def test_classes_filter(tmp_path, family):
    path = model(tmp_path, OUTPUTS[family](BOXES), metadata={"names": names_metadata(LABELS)})
    dogs = Detector(path, providers=["cpu"], classes=["dog"]).detect(image((300, 500)))
    assert_detections(dogs, [B, D], (300, 500), (INPUT, INPUT))
    cats = Detector(path, providers=["cpu"], classes=["cat"], confidence=0.65).detect(image((300, 500)))
    assert_detections(cats, [A, C], (300, 500), (INPUT, INPUT))


def test_classes_filter_with_an_unknown_label(tmp_path):
    path = model(tmp_path, yolov8_output(BOXES), metadata={"names": names_metadata(LABELS)})
    with pytest.raises(ModelError, match="horse"):
        Detector(path, providers=["cpu"], classes=["horse"])


def test_max_detections(tmp_path):
    path = model(tmp_path, yolov8_output(BOXES), metadata={"names": names_metadata(LABELS)})
    result = Detector(path, providers=["cpu"], max_detections=2).detect(image((640, 360)))
    assert_detections(result, [A, B], (640, 360), (INPUT, INPUT))


# --- family detection and override ------------------------------------------------------------


def test_family_override(tmp_path):
    # yolov5 with one class is [1, N, 6]: the same shape as a yolov10 head, which auto-detection prefers.
    path = model(tmp_path, yolov5_output([A, A_DUPLICATE, C], num_classes=1, rows=10),
                 metadata={"names": "{0: 'cat'}"})
    assert Detector(path, providers=["cpu"]).family.name == "yolov10"
    detector = Detector(path, providers=["cpu"], family="yolov5")
    assert detector.family.name == "yolov5"
    assert_detections(detector.detect(image((640, 360))), [A, C], (640, 360), (INPUT, INPUT), labels=["cat"])


def test_family_metadata_hint(tmp_path):
    path = model(tmp_path, yolov5_output([A, C], num_classes=1, rows=10),
                 metadata={"names": "{0: 'cat'}", "family": "yolov5"})
    detector = Detector(path, providers=["cpu"])
    assert detector.family.name == "yolov5"
    assert_detections(detector.detect(image((300, 500))), [A, C], (300, 500), (INPUT, INPUT), labels=["cat"])


def test_family_override_that_does_not_fit(tmp_path):
    path = model(tmp_path, yolov10_output(BOXES), metadata={"names": names_metadata(LABELS)})
    with pytest.raises(ModelError) as err:
        Detector(path, providers=["cpu"], family="yolov8")
    assert str(path) in str(err.value) and "[1, 20, 6]" in str(err.value)


def test_unknown_family_name(tmp_path):
    path = model(tmp_path, yolov8_output(BOXES))
    with pytest.raises(ModelError, match="yolov99"):
        Detector(path, providers=["cpu"], family="yolov99")


@pytest.mark.parametrize("shape", [(1, 7), (1, 3, 4, 5), (2, 6, 100)])
def test_undecodable_output(tmp_path, shape):
    path = model(tmp_path, np.zeros(shape, dtype=np.float32), name="weird.onnx")
    with pytest.raises(ModelError) as err:
        Detector(path, providers=["cpu"])
    message = str(err.value)
    assert str(path) in message
    assert str(list(shape)) in message


# --- labels ------------------------------------------------------------------------------------


def test_labels_from_a_list_override_metadata(tmp_path):
    path = model(tmp_path, yolov8_output(BOXES), metadata={"names": names_metadata(LABELS)})
    detector = Detector(path, providers=["cpu"], labels=["tabby", "terrier"])
    assert detector.labels == ["tabby", "terrier"]
    assert_detections(detector.detect(image((640, 360))), AFTER_NMS, (640, 360), (INPUT, INPUT),
                      labels=["tabby", "terrier"])


def test_labels_from_a_text_file(tmp_path):
    path = model(tmp_path, yolov5_output(BOXES))
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("  cat\n\ndog  \n")
    detector = Detector(path, providers=["cpu"], labels=labels_file)
    assert detector.labels == LABELS
    assert_detections(detector.detect(image((300, 500))), AFTER_NMS, (300, 500), (INPUT, INPUT))


def test_labels_from_a_yaml_file(tmp_path):
    path = model(tmp_path, yolov8_output(BOXES))
    labels_file = tmp_path / "data.yaml"
    labels_file.write_text("names:\n  1: dog\n  0: cat\n")
    assert Detector(path, providers=["cpu"], labels=str(labels_file)).labels == LABELS


def test_missing_labels_file(tmp_path):
    path = model(tmp_path, yolov8_output(BOXES))
    with pytest.raises(ModelError, match="nope.txt"):
        Detector(path, providers=["cpu"], labels=tmp_path / "nope.txt")


def test_without_labels_class_ids_name_the_classes(tmp_path):
    path = model(tmp_path, yolov8_output(BOXES))
    detector = Detector(path, providers=["cpu"])
    assert detector.labels == ["0", "1"]
    assert [d.label for d in detector.detect(image((640, 360))).detections] == ["0", "1", "0", "1"]
    e2e = Detector(model(tmp_path, yolov10_output(BOXES), name="e2e.onnx"), providers=["cpu"])
    assert_detections(e2e.detect(image((640, 360))), [A, B, C, D, A_DUPLICATE], (640, 360), (INPUT, INPUT),
                      labels=None)


@pytest.mark.parametrize("family", ["yolov8", "yolov5"])
def test_labels_count_mismatch(tmp_path, family):
    path = model(tmp_path, OUTPUTS[family](BOXES))
    with pytest.raises(ModelError) as err:
        Detector(path, providers=["cpu"], labels=["a", "b", "c"])
    assert str(path) in str(err.value) and "3 labels" in str(err.value)


def test_metadata_names_count_mismatch(tmp_path):
    path = model(tmp_path, yolov8_output(BOXES), metadata={"names": names_metadata(["a", "b", "c"])})
    with pytest.raises(ModelError, match="3 labels"):
        Detector(path, providers=["cpu"])


def test_labels_count_mismatch_with_family_override(tmp_path):
    path = model(tmp_path, yolov8_output(BOXES))
    with pytest.raises(ModelError, match="1 labels"):
        Detector(path, providers=["cpu"], family="yolov8", labels=["a"])


# --- input size --------------------------------------------------------------------------------


@pytest.mark.parametrize("input_size, input_hw", [(320, (320, 320)), ((256, 320), (256, 320)), ([416, 288], (416, 288))])
def test_dynamic_input_with_input_size(tmp_path, input_size, input_hw):
    path = model(tmp_path, yolov8_output(BOXES), input_hw=None, metadata={"names": names_metadata(LABELS)})
    detector = Detector(path, providers=["cpu"], input_size=input_size)
    assert detector.input_size == input_hw
    for source in SOURCES:
        assert_detections(detector.detect(image(source)), AFTER_NMS, source, input_hw)


@pytest.mark.parametrize("imgsz, input_hw", [("[320, 320]", (320, 320)), ("256", (256, 256)), ("[256, 384]", (256, 384))])
def test_dynamic_input_with_imgsz_metadata(tmp_path, imgsz, input_hw):
    path = model(tmp_path, yolov5_output(BOXES), input_hw=None,
                 metadata={"names": names_metadata(LABELS), "imgsz": imgsz})
    detector = Detector(path, providers=["cpu"])
    assert detector.input_size == input_hw
    for source in SOURCES:
        assert_detections(detector.detect(image(source)), AFTER_NMS, source, input_hw)


def test_dynamic_input_without_a_size_uses_640(tmp_path):
    path = model(tmp_path, yolov8_output(BOXES), input_hw=None, metadata={"names": names_metadata(LABELS)})
    detector = Detector(path, providers=["cpu"])
    assert detector.input_size == (640, 640)
    assert_detections(detector.detect(image((300, 500))), AFTER_NMS, (300, 500), (640, 640))


def test_static_input_with_a_conflicting_input_size(tmp_path):
    path = model(tmp_path, yolov8_output(BOXES))
    with pytest.raises(ModelError) as err:
        Detector(path, providers=["cpu"], input_size=640)
    assert str(path) in str(err.value) and "320x320" in str(err.value)
    assert Detector(path, providers=["cpu"], input_size=320).input_size == (320, 320)


def test_static_non_square_input(tmp_path):
    path = model(tmp_path, yolov10_output(BOXES), input_hw=(256, 384), metadata={"names": names_metadata(LABELS)})
    detector = Detector(path, providers=["cpu"])
    assert detector.input_size == (256, 384)
    for source in SOURCES:
        assert_detections(detector.detect(image(source)), [A, B, C, D, A_DUPLICATE], source, (256, 384))


# --- float16 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["yolov8", "yolov5", "yolov10"])
def test_float16_model(tmp_path, family):
    path = constant_output_model_fp16(tmp_path / "half.onnx", OUTPUTS[family](BOXES),
                                      metadata={"names": names_metadata(LABELS)})
    detector = Detector(path, providers=["cpu"])
    assert detector.input_dtype == np.float16
    assert detector.family.name == family
    expected = [A, B, C, D, A_DUPLICATE] if family == "yolov10" else AFTER_NMS
    for source in SOURCES:
        assert_detections(detector.detect(image(source)), expected, source, (INPUT, INPUT), atol=2e-3)
