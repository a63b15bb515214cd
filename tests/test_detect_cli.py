"""``edged detect`` and ``edged model info`` as a user runs them: real processes, real models, real clips."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from edged.evaluation import evaluate_messages, load_ground_truth
from tests.conftest import DEMO_MODEL, YOLOV8N, Clip, run_edged
from tests.onnx_builders import constant_output_model

ACCURACY_BAR = 0.90
CONTRACT_FIELDS = {"schema", "device_id", "ts", "stream", "seq", "frame_id", "ts_capture", "ts_publish",
                   "latency_ms", "model", "image", "detections"}


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_demo_detector_meets_the_accuracy_bar(eval_clip: Clip, tmp_path: Path) -> None:
    out = tmp_path / "detections.jsonl"
    result = run_edged("detect", eval_clip.video, "--out", out, "--providers", "cpu", timeout=300)
    assert result.returncode == 0, result.stderr
    messages = read_lines(out)
    assert len(messages) == 600
    labels, truths = load_ground_truth(eval_clip.truth)
    score = evaluate_messages(messages, labels, truths)
    print(f"demo detector mAP@0.5 on the 600-frame eval clip: {score:.4f}")
    assert score >= ACCURACY_BAR


def test_messages_carry_the_contract_fields(short_clip: Clip) -> None:
    result = run_edged("detect", short_clip.video, "--stream", "front", "--device-id", "edge-test")
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(messages) == 20
    assert [m["seq"] for m in messages] == list(range(20))
    assert [m["frame_id"] for m in messages] == list(range(20))
    schema = json.loads((DEMO_MODEL.parent.parent / "edged" / "schemas" / "detections.json").read_text())
    for m in messages:
        jsonschema.validate(m, schema)
        assert CONTRACT_FIELDS <= m.keys()
        assert m["schema"] == "edged.detections/1" and m["device_id"] == "edge-test" and m["stream"] == "front"
        assert m["ts_capture"] <= m["ts_publish"] == m["ts"]
        assert set(m["latency_ms"]) == {"preprocess", "inference", "postprocess", "total"}
        assert m["latency_ms"]["total"] >= m["latency_ms"]["inference"] > 0
        assert m["model"] == {"name": "shapes-yolov8", "precision": "fp32", "provider": "cpu", "input_size": [416, 416]}
        assert m["image"] == {"width": 640, "height": 480}
        for d in m["detections"]:
            assert d["label"] in ("circle", "square", "triangle") and d["score"] >= 0.4
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
    # Timestamps are wall-clock Unix seconds and increase frame by frame.
    captures = [m["ts_capture"] for m in messages]
    assert captures == sorted(captures)


def test_provider_fallback_is_logged(short_clip: Clip) -> None:
    result = run_edged("detect", short_clip.video, "--max-frames", "1")
    assert result.returncode == 0, result.stderr
    for provider in ("tensorrt", "cuda", "xnnpack"):
        assert f"provider {provider} skipped: not in this onnxruntime build" in result.stderr
    assert "loaded on providers cpu" in result.stderr
    assert json.loads(result.stdout)["model"]["provider"] == "cpu"


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_shipped_variants_report_their_own_precision(short_clip: Clip, precision: str) -> None:
    variant = DEMO_MODEL.with_name(f"shapes-yolov8.{precision}.onnx")
    result = run_edged("detect", short_clip.video, "--model", variant, "--max-frames", "1")
    assert result.returncode == 0, result.stderr
    message = json.loads(result.stdout)
    assert message["model"]["precision"] == precision and message["model"]["name"] == f"shapes-yolov8.{precision}"
    assert len(message["detections"]) >= 6


def test_image_folder_and_single_image(short_clip: Clip, tmp_path: Path) -> None:
    capture = cv2.VideoCapture(str(short_clip.video))
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        ok, frame = capture.read()
        assert ok
        cv2.imwrite(str(folder / f"img{i}.png"), frame)
    (folder / "notes.txt").write_text("not an image")
    result = run_edged("detect", folder)
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    assert [m["file"] for m in messages] == ["img0.png", "img1.png", "img2.png"]
    assert all(m["detections"] for m in messages)
    single = run_edged("detect", folder / "img1.png")
    assert single.returncode == 0, single.stderr
    assert json.loads(single.stdout)["detections"] == messages[1]["detections"]


def test_summary_format_and_annotated_video(short_clip: Clip, tmp_path: Path) -> None:
    video = tmp_path / "annotated.mp4"
    result = run_edged("detect", short_clip.video, "--format", "summary", "--save-video", video)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 20 and lines[0].startswith("frame     0") and "detections:" in lines[0]
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 20
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 480)


def test_model_info_of_the_demo_detector() -> None:
    result = run_edged("model", "info", DEMO_MODEL, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["family"] == "yolov8" and info["labels"] == ["circle", "square", "triangle"]
    assert info["opset"] == 17 and info["size_bytes"] == DEMO_MODEL.stat().st_size
    assert info["inputs"][0]["name"] == "images" and info["inputs"][0]["shape"][:2] == [1, 3]


def test_demo_detector_budget() -> None:
    """Small enough for a Raspberry Pi: at most 2 MB and 1.5 GFLOPs at its input size."""
    import onnx
    import onnxruntime as ort

    assert DEMO_MODEL.stat().st_size <= 2_000_000
    # Read every convolution's real output shape by exposing it as a graph output and running once.
    model = onnx.load(str(DEMO_MODEL))
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    kernels = {w.name: list(w.dims) for w in model.graph.initializer}  # (out, in / groups, kh, kw)
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(node.output[0]) for node in convs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run([node.output[0] for node in convs], {"images": np.zeros((1, 3, 416, 416), np.float32)})
    flops = sum(2 * out.size * int(np.prod(kernels[node.input[1]][1:])) for node, out in zip(convs, outputs))
    print(f"demo detector: {DEMO_MODEL.stat().st_size / 1e6:.2f} MB, {flops / 1e9:.3f} GFLOPs (convolutions) at 416")
    assert 0.3e9 < flops <= 1.5e9


@pytest.mark.skipif(not YOLOV8N.exists(), reason="shared/models/yolov8n-640-random.onnx not beside the checkout")
def test_public_yolov8n_layout(short_clip: Clip) -> None:
    info = run_edged("model", "info", YOLOV8N, "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["family"] == "yolov8" and len(data["labels"]) == 80
    assert data["outputs"][0]["shape"] == [1, 84, 8400]
    result = run_edged("detect", short_clip.video, "--model", YOLOV8N, "--max-frames", "2")
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    # Random weights: the heads emit only their bias priors, far below any real threshold.
    assert len(messages) == 2 and messages[0]["detections"] == []
    assert messages[0]["model"]["input_size"] == [640, 640]


# ---------------------------------------------------------------------------------------------- bad input
def assert_clean_failure(result, *fragments: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("edged: error:")]
    assert len(error) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error[0]


def test_missing_source_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    assert_clean_failure(run_edged("detect", missing), str(missing), "not found")


def test_missing_model_file(short_clip: Clip, tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    assert_clean_failure(run_edged("detect", short_clip.video, "--model", missing), str(missing), "not found")
    assert_clean_failure(run_edged("model", "info", missing), str(missing), "not found")


def test_file_that_is_not_onnx(short_clip: Clip, tmp_path: Path) -> None:
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x00\x01garbage, not protobuf" * 50)
    assert_clean_failure(run_edged("detect", short_clip.video, "--model", fake), str(fake), "not an ONNX model")


def test_undecodable_output(short_clip: Clip, tmp_path: Path) -> None:
    model = constant_output_model(tmp_path / "odd.onnx", np.zeros((1, 7), np.float32))
    assert_clean_failure(run_edged("detect", short_clip.video, "--model", model), str(model), "[1, 7]",
                         "cannot decode")


def test_unreadable_video(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    assert_clean_failure(run_edged("detect", broken), str(broken), "not a video")


def test_empty_image_folder(tmp_path: Path) -> None:
    assert_clean_failure(run_edged("detect", tmp_path), str(tmp_path), "no images")
