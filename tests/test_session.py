"""The session factory with the real (CPU-only) onnxruntime build."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnxruntime as ort
import pytest

from edged.errors import ModelError
from edged.inference.detector import Detector
from edged.inference.session import (SessionConfig, create_session, provider_chain, provider_entry,
                                     session_options, short_name)
from tests.onnx_builders import constant_output_model

ALL = ("tensorrt", "cuda", "xnnpack", "cpu")
ORT_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
             "xnnpack": "XnnpackExecutionProvider", "cpu": "CPUExecutionProvider"}
# A word of each provider's how-to-get-it hint.
HINTS = {"tensorrt": "onnxruntime-gpu", "cuda": "onnxruntime-gpu", "xnnpack": "--use_xnnpack"}

cpu_only = pytest.mark.skipif(
    any(ORT_NAMES[p] in ort.get_available_providers() for p in ("tensorrt", "cuda", "xnnpack")),
    reason="needs the CPU-only onnxruntime build")


def yolov8_model(path):
    output = np.zeros((1, 6, 16), dtype=np.float32)
    output[0, :, 0] = [160, 160, 40, 60, 0.9, 0.1]  # one "a" box in the middle of a 320x320 input
    return constant_output_model(path, output, metadata={"names": "{0: 'a', 1: 'b'}"})


@cpu_only
def test_chain_on_a_cpu_only_build_is_cpu_and_logs_each_missing_provider(caplog):
    caplog.set_level(logging.INFO, logger="edged.inference")
    chain = provider_chain(SessionConfig(providers=ALL))
    assert chain == [("CPUExecutionProvider", {})]
    lines = [r.getMessage() for r in caplog.records if r.name == "edged.inference"]
    for name in ("tensorrt", "cuda", "xnnpack"):
        about = [line for line in lines if line.startswith(f"provider {name} ")]
        assert len(about) == 1, lines
        assert HINTS[name] in about[0] and "to get it" in about[0]
    assert not any("provider cpu" in line for line in lines)
    assert len(lines) == 3


def test_chain_keeps_preference_order_and_options():
    config = SessionConfig(providers=ALL, precision="fp16", threads=2)
    chain = provider_chain(config, available=list(reversed(ORT_NAMES.values())))
    assert [name for name, _ in chain] == [ORT_NAMES[p] for p in ALL]
    assert chain[0][1]["trt_fp16_enable"] is True
    assert chain[2][1] == {"intra_op_num_threads": 2}


def test_chain_always_ends_with_cpu(caplog):
    caplog.set_level(logging.INFO, logger="edged.inference")
    chain = provider_chain(SessionConfig(providers=("cuda",)), available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert [name for name, _ in chain] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_chain(SessionConfig(providers=("xnnpack",)), available=["CPUExecutionProvider"]) == \
        [("CPUExecutionProvider", {})]
    assert [r.getMessage().split()[1] for r in caplog.records] == ["xnnpack"]


def test_unknown_provider_or_precision_is_refused():
    with pytest.raises(ValueError, match="gpu"):
        SessionConfig(providers=("gpu",))
    with pytest.raises(ValueError, match="bf16"):
        SessionConfig(precision="bf16")


@pytest.mark.parametrize("precision, fp16, int8", [("fp32", False, False), ("fp16", True, False), ("int8", True, True)])
def test_tensorrt_options(tmp_path, precision, fp16, int8):
    config = SessionConfig(precision=precision, tensorrt_cache_dir=tmp_path / "trt", tensorrt_workspace_mb=256,
                           device_id=1)
    name, options = provider_entry("tensorrt", config)
    assert name == "TensorrtExecutionProvider"
    assert options["trt_fp16_enable"] is fp16
    assert options["trt_int8_enable"] is int8
    assert options["trt_max_workspace_size"] == 256 * 1024 * 1024
    assert options["trt_engine_cache_enable"] is True and options["trt_timing_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert options["trt_timing_cache_path"] == str(tmp_path / "trt")
    assert options["device_id"] == 1


def test_cuda_and_cpu_options():
    assert provider_entry("cuda", SessionConfig(device_id=2)) == ("CUDAExecutionProvider", {"device_id": 2})
    assert provider_entry("cpu", SessionConfig()) == ("CPUExecutionProvider", {})


def test_xnnpack_options():
    assert provider_entry("xnnpack", SessionConfig(threads=3)) == ("XnnpackExecutionProvider", {"intra_op_num_threads": 3})
    _, options = provider_entry("xnnpack", SessionConfig(threads=0))
    assert options["intra_op_num_threads"] == (os.cpu_count() or 1)


def test_session_options_with_xnnpack():
    options = session_options(SessionConfig(threads=4), uses_xnnpack=True)
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_session_options_without_xnnpack():
    config = SessionConfig(threads=4, extra_session_entries={"session.intra_op.allow_spinning": "1"})
    options = session_options(config, uses_xnnpack=False)
    assert options.intra_op_num_threads == 4
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_short_name():
    assert [short_name(ORT_NAMES[p]) for p in ALL] == list(ALL)
    assert short_name("AzureExecutionProvider") == "AzureExecutionProvider"


def test_create_session_on_a_missing_file(tmp_path):
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelError) as err:
        create_session(path, SessionConfig(providers=("cpu",)))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("providers", [("cpu",), ALL])
def test_create_session_on_a_file_that_is_not_onnx(tmp_path, providers):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ModelError) as err:
        create_session(path, SessionConfig(providers=providers, tensorrt_cache_dir=tmp_path / "trt"))
    assert str(path) in str(err.value)


def test_create_session_on_a_directory(tmp_path):
    with pytest.raises(ModelError, match=str(tmp_path)):
        create_session(tmp_path, SessionConfig(providers=("cpu",)))


@cpu_only
def test_create_session_runs_on_cpu_and_makes_no_tensorrt_cache_without_tensorrt(tmp_path):
    path = yolov8_model(tmp_path / "m.onnx")
    cache = tmp_path / "trt"
    session = create_session(path, SessionConfig(providers=ALL, tensorrt_cache_dir=cache))
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert not cache.exists()
    out = session.run(None, {"images": np.zeros((1, 3, 320, 320), dtype=np.float32)})[0]
    assert out.shape == (1, 6, 16) and out[0, 4, 0] == pytest.approx(0.9)


@cpu_only
def test_detector_with_the_full_provider_list_runs_on_cpu(tmp_path):
    detector = Detector(yolov8_model(tmp_path / "m.onnx"), providers=list(ALL))
    assert detector.providers == ["cpu"]
    assert detector.provider == "cpu"
    result = detector.detect(np.zeros((360, 640, 3), dtype=np.uint8))
    # 320x320 input, 640x360 source: scale 0.5, pad_y 70. Box (140, 130, 180, 190) -> (280, 120, 360, 240).
    assert [(d.label, d.class_id) for d in result.detections] == [("a", 0)]
    np.testing.assert_allclose(result.detections[0].box, (280, 120, 360, 240), atol=1e-3)
    assert set(result.timings_ms) == {"preprocess", "inference", "postprocess"}
