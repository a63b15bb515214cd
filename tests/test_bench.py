"""``edged bench`` and its measurements: variant discovery, real timed sessions, the documented JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import convert_float_to_float16

from edged import bench
from edged.bench import Variant, discover, measure, variant_file
from edged.inference.session import PRECISIONS, SessionConfig
from tests.conftest import DEMO_MODEL, run_edged
from tests.onnx_builders import constant_output_model

RESULT_FIELDS = {"model", "provider", "precision", "input_size", "providers", "latency_ms", "throughput_fps",
                 "memory_mb", "load_s"}
REPORT_FIELDS = {"schema", "model", "device", "onnxruntime", "providers_available", "warmup", "runs", "threads",
                 "results", "skipped"}


def demo_variants(folder: Path, precisions: tuple[str, ...] = ("fp16", "int8")) -> Path:
    """The demo model copied into ``folder``, with NAME.fp16.onnx and NAME.int8.onnx beside it
    (made as ``edged model optimize`` would, with ONNX Runtime's own tools)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = Path(shutil.copy(DEMO_MODEL, folder / DEMO_MODEL.name))
    if "fp16" in precisions:
        onnx.save(convert_float_to_float16(onnx.load(str(model)), keep_io_types=True),
                  str(variant_file(model, "fp16", "cpu")))
    if "int8" in precisions:
        quantize_dynamic(str(model), str(variant_file(model, "int8", "cpu")), weight_type=QuantType.QUInt8)
    return model


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_variants(tmp_path_factory.mktemp("variants"))


def test_discovery_reports_missing_files_unavailable_providers_and_fixed_sizes(tmp_path: Path) -> None:
    model = demo_variants(tmp_path / "dynamic", precisions=("int8",))
    found, skipped = discover(model, ["cpu", "tensorrt"], PRECISIONS, [(416, 416), (320, 320)])
    assert [(v.provider, v.precision, v.input_size) for v in found] == [
        ("cpu", "fp32", (416, 416)), ("cpu", "fp32", (320, 320)), ("cpu", "int8", (416, 416)),
        ("cpu", "int8", (320, 320))]
    assert {v.model.name for v in found} == {"shapes-yolov8.onnx", "shapes-yolov8.int8.onnx"}
    reasons = {(s.provider, s.precision): s.reason for s in skipped}
    assert "shapes-yolov8.fp16.onnx not found" in reasons[("cpu", "fp16")]
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        assert "not in this onnxruntime build" in reasons[("tensorrt", None)]
    # TensorRT's precisions are flags on the fp32 file; other providers load NAME.<precision>.onnx.
    assert variant_file(model, "int8", "tensorrt") == model
    assert variant_file(model, "fp16", "cuda") == model.with_name("shapes-yolov8.fp16.onnx")

    static = constant_output_model(tmp_path / "static.onnx", np.zeros((1, 6, 4), np.float32), input_hw=(320, 320),
                                   metadata={"names": "{0: 'a', 1: 'b'}"})
    found, skipped = discover(static, ["cpu"], ["fp32"], [(320, 320), (256, 256)])
    assert [v.input_size for v in found] == [(320, 320)]
    assert [s.reason for s in skipped] == ["the model's input is fixed at 320"]
    found, _ = discover(static, ["cpu"], ["fp32"])  # default: the model's own size
    assert [v.input_size for v in found] == [(320, 320)]


def test_measure_times_a_real_session(variants: Path) -> None:
    variant = Variant(variant_file(variants, "int8", "cpu"), "cpu", "int8", (320, 320))
    result = measure(variant, SessionConfig(), warmup=1, runs=5)
    assert result.variant == variant and result.providers == ["cpu"]
    latency = result.latency_ms
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] and latency["mean"] > 0
    assert result.throughput_fps > 0 and result.load_s > 0
    assert isinstance(result.memory_mb, float)
    assert bench.Measurement.from_json(json.loads(json.dumps(result.to_json()))) == result


def test_bench_json_has_the_documented_fields_and_plots(variants: Path, tmp_path: Path) -> None:
    plot = tmp_path / "bench.png"
    done = run_edged("bench", variants, "--sizes", "320", "256", "--runs", "3", "--warmup", "1", "--json",
                     "--plot", plot)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == REPORT_FIELDS
    for field in REPORT_FIELDS | RESULT_FIELDS | {"hostname", "machine", "cpu", "board", "p50", "p90", "p99",
                                                  "mean", "reason"}:
        assert f'"{field}"' in bench.__doc__, f"{field} is not documented"
    assert report["schema"] == "edged.bench/1" and report["onnxruntime"] == ort.__version__
    assert report["model"] == str(variants) and report["runs"] == 3 and report["warmup"] == 1
    assert set(report["device"]) == {"hostname", "machine", "cpu", "board"}
    assert "cpu" in report["providers_available"]
    results = report["results"]
    assert {(r["provider"], r["precision"], tuple(r["input_size"])) for r in results} >= {
        ("cpu", p, (s, s)) for p in PRECISIONS for s in (320, 256)}
    for result in results:
        assert set(result) == RESULT_FIELDS
        assert set(result["latency_ms"]) == {"p50", "p90", "p99", "mean"}
        assert Path(result["model"]).name == variant_file(variants, result["precision"], "cpu").name
    assert report["skipped"] == []
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_table_lists_each_variant_and_what_was_skipped(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    model = demo_variants(tmp_path, precisions=())
    assert bench.run_bench(model, providers=["cpu"], precisions=["fp32", "int8"], sizes=[256], runs=2, warmup=0,
                           threads=1, as_json=False, plot_path=None) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:4] == ["provider", "precision", "size", "p50"]
    assert lines[2].split()[:3] == ["cpu", "fp32", "256"]
    assert lines[3] == "skipped cpu int8: shapes-yolov8.int8.onnx not found (edged model optimize writes it)"
