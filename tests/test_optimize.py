"""``edged model optimize``: real fp16 and int8 variants of the demo detector, calibrated on rendered clips."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from edged.errors import ModelError, SourceError
from edged.evaluation import load_ground_truth, mean_average_precision
from edged.inference.detector import Detector
from edged.optimize import CPU, agreement, calibration_frames, convert_fp16, quantize_int8, variant_path
from edged.sources import Frame, open_source
from edged.synthetic import write_clip
from tests.conftest import DEMO_MODEL, Clip, run_edged
from tests.onnx_builders import constant_output_model, names_metadata

CALIB_FRAMES = 40  # 32 to calibrate on, 8 held back: enough for the demo detector's activation ranges
MAX_MAP_DROP = 0.03


@dataclass
class Variants:
    fp16: Path
    int8: Path


@pytest.fixture(scope="module")
def calib_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    video = write_clip(tmp_path_factory.mktemp("calib") / "calib.mp4", seed=11, frames=CALIB_FRAMES)
    return Clip(video, video.with_suffix(".json"))


@pytest.fixture(scope="module")
def variants(calib_clip: Clip, tmp_path_factory: pytest.TempPathFactory) -> Variants:
    out = tmp_path_factory.mktemp("variants")
    return Variants(convert_fp16(DEMO_MODEL, variant_path(DEMO_MODEL, "fp16", out)),
                    quantize_int8(DEMO_MODEL, calib_clip.video, variant_path(DEMO_MODEL, "int8", out),
                                  frames=CALIB_FRAMES, progress=False))


def read_frames(video: Path, count: int) -> list[Frame]:
    with open_source(str(video)) as source:
        return list(itertools.islice(source, count))


def test_variants_are_named_after_the_model(variants: Variants) -> None:
    assert variants.fp16.name == "shapes-yolov8.fp16.onnx"
    assert variants.int8.name == "shapes-yolov8.int8.onnx"


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_variant_loads_and_detects_with_the_models_metadata(variants: Variants, calib_clip: Clip,
                                                            precision: str) -> None:
    path = getattr(variants, precision)
    original = {p.key: p.value for p in onnx.load(str(DEMO_MODEL)).metadata_props}
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props} == original
    detector = Detector(path, CPU)
    assert detector.family.name == "yolov8"
    assert detector.labels == ["circle", "square", "triangle"]
    assert detector.input_size == (416, 416)  # from imgsz: the input stays dynamic
    assert detector.input_dtype == np.float32  # the pipeline feeds float32, as to the fp32 model
    frame = read_frames(calib_clip.video, 1)[0]
    fp32 = Detector(DEMO_MODEL, CPU)
    report = agreement(fp32, detector, [frame])
    assert report["fp32_detections"] >= 5
    assert report["found"] >= 0.8 and report["mean_iou"] >= 0.9
    wide = Detector(path, CPU, input_size=(320, 480))  # another size still runs
    assert wide.detect(frame.image).detections


def test_int8_map_on_a_fresh_clip_is_within_3_points_of_fp32(variants: Variants,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    video = write_clip(tmp_path_factory.mktemp("fresh") / "fresh.mp4", seed=20261126, frames=150)
    clip = Clip(video, video.with_suffix(".json"))
    labels, truths = load_ground_truth(clip.truth)
    scores = {}
    for name, path in (("fp32", DEMO_MODEL), ("int8", variants.int8)):
        detector = Detector(path, CPU)
        preds = [[(d.class_id, d.score, d.box) for d in detector.detect(frame.image).detections]
                 for frame in read_frames(video, 150)]
        scores[name] = mean_average_precision(preds, [truths[i] for i in sorted(truths)], len(labels))
    print(f"mAP@0.5 on a fresh 150-frame clip: fp32 {scores['fp32']:.4f}, int8 {scores['int8']:.4f}")
    assert scores["fp32"] >= 0.9
    assert scores["int8"] >= scores["fp32"] - MAX_MAP_DROP


def test_agreement_of_a_model_with_itself_is_perfect(calib_clip: Clip) -> None:
    fp32 = Detector(DEMO_MODEL, CPU)
    frames = list(calibration_frames(calib_clip.video, CALIB_FRAMES, held_back=True))
    assert [f.frame_id for f in frames] == [4, 9, 14, 19, 24, 29, 34, 39]
    report = agreement(fp32, fp32, frames, load_ground_truth(calib_clip.truth))
    assert report["frames"] == 8 and report["fp32_detections"] > 0
    assert report["found"] == 1.0 and report["mean_iou"] == pytest.approx(1.0)
    assert report["map50"] == report["map50_fp32"] > 0.9


def test_cli_writes_both_variants_from_an_image_folder(calib_clip: Clip, tmp_path: Path) -> None:
    images = tmp_path / "frames"
    images.mkdir()
    for frame in read_frames(calib_clip.video, 10):
        cv2.imwrite(str(images / f"{frame.frame_id:03d}.png"), frame.image)
    out = tmp_path / "out"
    result = run_edged("model", "optimize", DEMO_MODEL, "--fp16", "--int8", "--calib", images,
                       "--calib-frames", "10", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["held_back_frames"] == 2
    assert [row["precision"] for row in report["variants"]] == ["fp32", "fp16", "int8"]
    for row in report["variants"][1:]:
        assert Path(row["path"]).is_file() and Path(row["path"]).parent == out
        assert row["size_mb"] < report["variants"][0]["size_mb"]
        assert row["found"] >= 0.8 and row["mean_iou"] >= 0.9 and row["latency_ms"] > 0


def test_cli_table_reports_map_with_ground_truth(calib_clip: Clip, tmp_path: Path) -> None:
    result = run_edged("model", "optimize", DEMO_MODEL, "--fp16", "--calib", calib_clip.video,
                       "--calib-frames", "20", "--gt", calib_clip.truth, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    header, fp32, fp16 = result.stdout.splitlines()[:3]
    assert "mean IoU" in header and "found" in header and "mAP@0.5" in header and "CPU ms" in header
    assert fp32.split()[:2] == ["fp32", "shapes-yolov8.onnx"]
    assert fp16.split()[:2] == ["fp16", "shapes-yolov8.fp16.onnx"]
    assert "4 frames of" in result.stdout and "against" in result.stdout


def test_missing_calibration_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nowhere.mp4: calibration source not found"):
        quantize_int8(DEMO_MODEL, tmp_path / "nowhere.mp4", tmp_path / "x.int8.onnx", progress=False)
    result = run_edged("model", "optimize", DEMO_MODEL, "--int8", "--calib", tmp_path / "nowhere.mp4", "--out", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("nowhere.mp4: calibration source not found "
                                          "(give a video file or a folder of images)")
    assert not list(tmp_path.iterdir())


def test_empty_image_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(SourceError, match=f"{tmp_path}: no images in this folder"):
        quantize_int8(DEMO_MODEL, tmp_path, tmp_path / "x.int8.onnx", progress=False)
    assert not (tmp_path / "x.int8.onnx").exists()


def test_int8_needs_a_calibration_source() -> None:
    result = run_edged("model", "optimize", DEMO_MODEL, "--int8")
    assert result.returncode == 1
    assert "edged: error: --int8 needs --calib SOURCE" in result.stderr


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_variant_is_not_optimized_again(variants: Variants, calib_clip: Clip, tmp_path: Path,
                                          precision: str) -> None:
    path = getattr(variants, precision)
    what = "already quantized" if precision == "int8" else "already float16"
    with pytest.raises(ModelError, match=f"{path.name}: {what}"):
        quantize_int8(path, calib_clip.video, tmp_path / "x.int8.onnx", progress=False)
    with pytest.raises(ModelError, match=f"{path.name}: {what}"):
        convert_fp16(path, tmp_path / "x.fp16.onnx")


def test_a_model_that_is_not_a_detector_is_refused(calib_clip: Clip, tmp_path: Path) -> None:
    odd = constant_output_model(tmp_path / "odd.onnx", np.zeros((1, 7), np.float32), input_hw=(64, 64),
                                metadata={"names": names_metadata(["a", "b", "c"])})
    result = run_edged("model", "optimize", odd, "--int8", "--calib", calib_clip.video, "--out", tmp_path)
    assert result.returncode == 1
    assert "odd.onnx: cannot decode output output0 of shape [1, 7]" in result.stderr
    assert not (tmp_path / "odd.int8.onnx").exists()
    with pytest.raises(ModelError, match="odd.onnx: cannot decode output"):
        convert_fp16(odd, tmp_path / "odd.fp16.onnx")
