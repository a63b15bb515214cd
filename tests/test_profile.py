"""``edged profile``: real ONNX Runtime profiles of real models, and the trace parsing on its own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edged.profile import ProfileReport, aggregate, profile, read_trace
from tests.conftest import DEMO_MODEL, YOLOV8N, run_edged


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> ProfileReport:
    return profile(DEMO_MODEL, providers=["cpu"], runs=10, warmup=2, out_dir=tmp_path_factory.mktemp("profile"))


def check_report(report: ProfileReport, runs: int) -> None:
    assert report.providers == ["cpu"] and report.runs == runs
    ops = {op.op_type: op for op in report.operators}
    assert "Conv" in ops and ops["Conv"].share > 20
    assert sum(op.share for op in report.operators) == pytest.approx(100)
    assert all(op.provider == "cpu" and not op.fell_back for op in report.operators)
    assert all(op.calls % runs == 0 for op in report.operators)  # warm-up runs are left out
    assert [op.total_ms for op in report.operators] == sorted((op.total_ms for op in report.operators), reverse=True)
    assert report.nodes[0].total_ms <= report.operators[0].total_ms and report.nodes[0].calls == runs
    trace = json.loads(report.trace.read_text())
    kernels = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    assert kernels and {e["args"]["provider"] for e in kernels} == {"CPUExecutionProvider"}


def test_profile_lists_operators(demo_report: ProfileReport) -> None:
    check_report(demo_report, runs=10)
    assert demo_report.input_size == (416, 416)
    assert re.fullmatch(r"shapes-yolov8-profile-\d{8}-\d{6}\.json", demo_report.trace.name)
    text = demo_report.format(top=5)
    assert "op type" in text and "Conv" in text and "... " in text
    assert f"trace: {demo_report.trace} (open in chrome://tracing" in text
    data = demo_report.to_json(top=3)
    assert len(data["nodes"]) == 3 and len(data["operators"]) == len(demo_report.operators)


@pytest.mark.skipif(not YOLOV8N.is_file(), reason=f"{YOLOV8N} not present")
def test_profile_of_yolov8n(tmp_path: Path) -> None:
    report = profile(YOLOV8N, providers=["cpu"], runs=3, warmup=1, out_dir=tmp_path)
    check_report(report, runs=3)
    assert report.input_size == (640, 640) and report.operators[0].op_type == "Conv"


def test_cli_prints_the_table_and_keeps_the_trace(tmp_path: Path) -> None:
    result = run_edged("profile", DEMO_MODEL, "--providers", "cpu", "--runs", "5", "--warmup", "1", "--top", "8",
                       "--out", tmp_path / "traces")
    assert result.returncode == 0, result.stderr
    assert re.search(r"rank\s+op type\s+provider\s+total ms\s+%\s+calls", result.stdout)
    assert re.search(r"^\s+1\s+Conv\s+cpu\s", result.stdout, re.MULTILINE)
    trace = re.search(r"^trace: (\S+) \(open in chrome://tracing or https://ui.perfetto.dev\)$", result.stdout,
                      re.MULTILINE)
    assert trace, result.stdout
    assert Path(trace[1]).parent == tmp_path / "traces" and json.loads(Path(trace[1]).read_text())


def test_cli_json(tmp_path: Path) -> None:
    result = run_edged("profile", DEMO_MODEL, "--providers", "cpu", "--runs", "3", "--warmup", "0", "--json",
                       "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["runs"] == 3 and data["providers"] == ["cpu"] and len(data["nodes"]) == 15
    assert "Conv" in {op["op_type"] for op in data["operators"]} and Path(data["trace"]).is_file()


def test_cli_missing_model(tmp_path: Path) -> None:
    result = run_edged("profile", tmp_path / "missing.onnx", "--out", tmp_path / "traces")
    assert result.returncode == 1 and result.stdout == ""
    assert re.search(r"^edged: error: \S*missing\.onnx: model file not found$", result.stderr, re.MULTILINE)
    assert not (tmp_path / "traces").exists()


def test_trace_parsing_skips_warm_up_runs_and_fences_and_flags_fallbacks(tmp_path: Path) -> None:
    def run(ts: int) -> dict:
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": 1000}

    def node(name: str, op: str, provider: str, ts: int, dur: int, suffix: str = "_kernel_time") -> dict:
        return {"cat": "Node", "name": name + suffix, "ts": ts, "dur": dur,
                "args": {"op_name": op, "provider": provider}}

    events = [run(0), node("conv1", "Conv", "CUDAExecutionProvider", 10, 5000)]  # warm-up
    for start in (2000, 4000):
        events += [run(start), node("conv1", "Conv", "CUDAExecutionProvider", start + 10, 300),
                   node("conv1", "Conv", "CUDAExecutionProvider", start + 5, 99, "_fence_before"),
                   node("shape1", "Shape", "CPUExecutionProvider", start + 400, 100)]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(events))
    kernels, run_ms = read_trace(path, runs=2)
    assert run_ms == [1.0, 1.0] and len(kernels) == 4
    operators, nodes = aggregate(kernels, "cuda")
    assert [(o.op_type, o.provider, o.total_ms, o.share, o.calls, o.fell_back) for o in operators] == [
        ("Conv", "cuda", 0.6, 75.0, 2, False), ("Shape", "cpu", 0.2, 25.0, 2, True)]
    assert [n.node for n in nodes] == ["conv1", "shape1"] and operators[1].mean_us == 100
    assert not any(o.fell_back for o in aggregate(kernels, "cpu")[0])
    text = ProfileReport(Path("m.onnx"), ["cuda", "cpu"], (640, 640), 0, 1, run_ms, operators, nodes, path).format()
    assert re.search(r"^\s+2\s+Shape\s+cpu\s.*\(fell back to cpu\)$", text, re.MULTILINE)
    assert re.search(r"^\s+2\s+Shape\s+cpu\s.* shape1  \(fell back to cpu\)$", text, re.MULTILINE)
    assert "not on cuda: Shape on cpu (25.0% of operator time)" in text
