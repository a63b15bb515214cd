"""The measured ladder: the walk down, ``edged model prepare`` on this CPU, staleness, the daemon reading it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from edged.bench import Measurement, Size, Variant
from edged.config import load_config
from edged.errors import EdgedError
from edged.inference.detector import read_model_info
from edged.ladder import MARGIN, LadderSpec, build_ladder, ladder_sizes, load_ladder
from edged.synthetic import write_clip
from tests.broker import wait_until
from tests.conftest import DEMO_MODEL, YOLOV8N, run_edged
from tests.test_bench import demo_variants
from tests.test_daemon import Daemon, write_config


def fake(precision: str, size: int, p50: float) -> Measurement:
    variant = Variant(Path(f"m.{precision}.onnx"), "cpu", precision, (size, size))
    return Measurement(variant, ["cpu"], {"p50": p50, "p90": p50, "p99": p50, "mean": p50}, 1000 / p50, 10.0, 0.1)


def walk_table(table: dict[tuple[str, int], float], order: tuple[str, ...] = ("precision", "input_size")):
    """build_ladder over measurements we control; also returns the variants it asked to measure, in order."""
    asked: list[str] = []

    def measure(precision: str, size: Size) -> Measurement | None:
        asked.append(f"{precision}@{size[0]}")
        p50 = table.get((precision, size[0]))
        return None if p50 is None else fake(precision, size[0], p50)

    steps, dropped = build_ladder(measure, ["fp32", "fp16", "int8"], [(416, 416), (320, 320), (224, 224)], order)
    return [s.variant.label for s in steps], {d.measurement.variant.label: d.reason for d in dropped}, asked


def test_only_measurably_cheaper_steps_are_kept() -> None:
    # A CPU: fp16 slower than fp32 (ONNX Runtime adds casts); int8 faster; the smallest size barely faster.
    cpu = {("fp32", 416): 10.0, ("fp16", 416): 10.5, ("int8", 416): 6.0, ("int8", 320): 3.5, ("int8", 224): 3.3,
           ("fp32", 320): 5.0}
    steps, dropped, asked = walk_table(cpu)
    assert steps == ["fp32@416", "int8@416", "int8@320"]
    assert dropped == {"fp16@416": "p50 10.50 ms is not 10% below fp32@416's 10.00 ms",
                       "int8@224": "p50 3.30 ms is not 10% below int8@320's 3.50 ms"}
    assert asked == ["fp32@416", "fp16@416", "int8@416", "int8@320", "int8@224"]  # only the walk is measured

    # A GPU: fp16 is a step; int8 only 4% below it is not; a candidate that cannot run (None) is passed over.
    gpu = {("fp32", 416): 10.0, ("fp16", 416): 5.0, ("int8", 416): 4.8, ("fp16", 224): 2.0}
    steps, dropped, _ = walk_table(gpu)
    assert steps == ["fp32@416", "fp16@416", "fp16@224"] and list(dropped) == ["int8@416"]

    # resources.steps [input_size, precision]: sizes first, then precisions at the smallest kept size.
    steps, _, asked = walk_table(cpu, order=("input_size", "precision"))
    assert asked == ["fp32@416", "fp32@320", "fp32@224", "fp16@320", "int8@320"]
    assert steps == ["fp32@416", "fp32@320", "int8@320"]

    with pytest.raises(EdgedError, match="preferred variant fp32@416 cannot run here"):
        walk_table({})


def test_sizes_step_down_only_for_dynamic_models() -> None:
    dynamic = read_model_info(DEMO_MODEL)
    assert ladder_sizes((416, 416), dynamic) == [(416, 416), (320, 320), (192, 192)]
    assert ladder_sizes((640, 640), dynamic) == [(640, 640), (480, 480), (320, 320)]
    assert ladder_sizes((384, 640), dynamic) == [(384, 640), (288, 480), (192, 320)]
    if YOLOV8N.exists():  # the public YOLOv8n export: static 640x640
        assert ladder_sizes((640, 640), read_model_info(YOLOV8N)) == [(640, 640)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real ``edged model prepare`` on this machine: its config and stdout."""
    folder = tmp_path_factory.mktemp("prepare")
    model = demo_variants(folder / "models")
    clip = write_clip(folder / "clip.mp4", seed=11, frames=30, width=320, height=240)
    config = write_config(folder, None, [{"name": "a", "source": str(clip), "loop": True}],
                          model={"path": str(model)}, inference={"threads": 1})
    done = run_edged("model", "prepare", "-c", config, "--runs", "10", "--warmup", "2")
    assert done.returncode == 0, done.stderr
    return config, done.stdout


def test_prepare_writes_a_ladder_of_measurably_cheaper_steps(prepared: tuple[Path, str]) -> None:
    config, stdout = prepared
    ladder_file = config.parent / "state" / "ladder.json"
    data = json.loads(ladder_file.read_text())
    assert data["schema"] == "edged.ladder/1" and data["runs"] == 10 and data["margin"] == MARGIN
    recorded = data["fingerprint"]
    assert recorded["onnxruntime"] == ort.__version__ and recorded["provider"] == "cpu"
    assert set(recorded["device"]) == {"hostname", "machine", "cpu", "board"} and recorded["device"]["machine"]
    assert "cpu" in recorded["providers_available"]
    assert sorted(Path(f).name for f in recorded["files"]) == [
        "shapes-yolov8.fp16.onnx", "shapes-yolov8.int8.onnx", "shapes-yolov8.onnx"]
    steps = [Measurement.from_json(m) for m in data["steps"]]
    dropped = [Measurement.from_json(m) for m in data["dropped"]]
    assert steps[0].variant.label == "fp32@416"  # the preferred variant tops the ladder
    # Each step is measurably cheaper than the one above; fp16 is a step only if it measured so.
    for above, step in zip(steps, steps[1:]):
        assert step.p50 <= above.p50 * (1 - MARGIN)
    # Every candidate of the walk was measured: 3 precisions at 416, then 2 smaller sizes.
    assert len(steps) + len(dropped) == 5 and data["skipped"] == []
    # The file is what the rule gives for its own measurements.
    measured = {(m.variant.precision, m.variant.input_size): m for m in steps + dropped}
    replay, _ = build_ladder(lambda p, s: measured.get((p, s)), ["fp32", "fp16", "int8"],
                             [(416, 416), (320, 320), (192, 192)])
    assert replay == steps
    assert "fp16@416" in {m.variant.label for m in steps + dropped}
    assert stdout.splitlines()[1].split()[:2] == ["provider", "precision"]
    assert all(f"dropped {m.variant.label}: p50" in stdout for m in dropped)

    again = run_edged("model", "prepare", "-c", config, "--runs", "10", "--warmup", "2")
    assert again.returncode == 0 and "fresh: not measured again" in again.stdout
    assert json.loads(ladder_file.read_text()) == data


def test_a_stale_ladder_is_detected_and_measured_again(prepared: tuple[Path, str], tmp_path: Path) -> None:
    config = tmp_path / "edged.yaml"  # the same settings, its own state dir
    config.write_text(prepared[0].read_text().replace(str(prepared[0].parent / "state"), str(tmp_path / "state")))
    (tmp_path / "state").mkdir()
    ladder_file = tmp_path / "state" / "ladder.json"
    data = json.loads((prepared[0].parent / "state" / "ladder.json").read_text())
    data["fingerprint"]["onnxruntime"] = "1.0.0"
    ladder_file.write_text(json.dumps(data))

    spec = LadderSpec.from_config(load_config(config))
    ladder = load_ladder(spec, spec.detector())
    assert not ladder.measured
    assert f"is stale (onnxruntime: 1.0.0 recorded, {ort.__version__} now)" in ladder.note
    assert ladder.steps[0].variant.label == "fp32@416" and ladder.steps[0].measurement is None

    done = run_edged("model", "prepare", "-c", config, "--runs", "5", "--warmup", "1")
    assert done.returncode == 0, done.stderr
    assert "fresh" not in done.stdout and "is stale" in done.stderr
    assert json.loads(ladder_file.read_text())["fingerprint"]["onnxruntime"] == ort.__version__

    fp16 = spec.model.with_name("shapes-yolov8.fp16.onnx")
    fp16.rename(tmp_path / fp16.name)  # a variant file gone: stale again
    try:
        ladder = load_ladder(spec, spec.detector())
    finally:
        (tmp_path / fp16.name).rename(fp16)
    assert not ladder.measured and f"is stale (files changed: {fp16})" in ladder.note


def test_the_daemon_reads_the_ladder_or_says_it_runs_unmeasured(prepared: tuple[Path, str],
                                                                tmp_path: Path) -> None:
    config = tmp_path / "edged.yaml"
    config.write_text(prepared[0].read_text().replace(str(prepared[0].parent / "state"), str(tmp_path / "state")))
    for with_ladder in (False, True):
        if with_ladder:
            (tmp_path / "state").mkdir()
            shutil.copy(prepared[0].parent / "state" / "ladder.json", tmp_path / "state")
        daemon = Daemon(config)
        try:
            wait_until(lambda: "ladder" in daemon.log(), timeout=30, what="the ladder log line")
            assert daemon.stop() == 0, daemon.log()
        finally:
            daemon.kill()
        if with_ladder:
            assert "ladder: " in daemon.log() and " measured steps: fp32@416 " in daemon.log(), daemon.log()
        else:
            assert (f"no measured ladder in {tmp_path / 'state'}: using the default order (unmeasured): fp32@416"
                    in daemon.log()), daemon.log()
            assert "run `edged model prepare`" in daemon.log()
