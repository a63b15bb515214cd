"""Config loading and validation, and ``edged check-config`` as operators run it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from edged.config import MAX_CONFIG_BYTES, Config, ConfigError, config_path, load_config, parse_yaml, password, validate
from edged.preflight import check_runtime
from tests.conftest import REPO, run_edged
from tests.onnx_builders import constant_output_model, names_metadata


def write(tmp_path: Path, text: str, name: str = "edged.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_fill_every_key() -> None:
    config = validate({})
    assert config.mqtt.port == 1883 and config.mqtt.qos == 1 and config.mqtt.queue_limit == 10000
    assert config.inference.providers == ["tensorrt", "cuda", "xnnpack", "cpu"]
    assert config.model.confidence == 0.4 and config.model.precision == "fp32"
    assert config.streams[0].name == "front" and config.health.interval_s == 5


@pytest.mark.parametrize("name", ["edged.yaml", "demo.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    path = REPO / "config" / name
    check_runtime(load_config(path), str(path))
    result = run_edged("check-config", "-c", path)
    assert result.returncode == 0, result.stderr


def test_every_error_names_file_key_path_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, """
mqtt:
  port: 70000
  bogus: 1
model:
  confidence: 2
streams:
  - name: front
    source: 0
    max_fps: -1
  - source: y.mp4
resources:
  thermal: {warn_c: 90, critical_c: 85}
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    errors = caught.value.errors
    expected = [("mqtt.port", "less than or equal to 65535"), ("mqtt.bogus", "unknown key"),
                ("model.confidence", "less than or equal to 1"), ("streams[0].max_fps", "greater than 0"),
                ("streams[1].name", "Field required"), ("resources.thermal", "warn_c must be below critical_c")]
    for key, reason in expected:
        assert any(e.startswith(f"{path}: {key}: ") and reason in e for e in errors), (key, errors)
    assert len(errors) == len(expected)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  port: [1,\n")
    with pytest.raises(ConfigError, match=rf"{path}: line \d+, column \d+: not valid YAML"):
        load_config(path)


def test_duplicate_stream_names_and_bad_topic_parts() -> None:
    with pytest.raises(ConfigError, match="repeated: a"):
        validate({"streams": [{"name": "a", "source": 0}, {"name": "a", "source": 1}]})
    with pytest.raises(ConfigError, match="streams\\[0\\].name"):
        validate({"streams": [{"name": "front/left", "source": 0}]})
    with pytest.raises(ConfigError, match="mqtt.topic_prefix"):
        validate({"mqtt": {"topic_prefix": "a/#"}})


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    path = write(tmp_path, """
model: {path: models/m.onnx, labels: labels.txt}
mqtt: {password_file: secret, username: edge}
streams: [{name: a, source: clips/a.mp4}, {name: b, source: "rtsp://cam/1"}, {name: c, source: 0}]
""")
    config = load_config(path)
    assert config.model.path == tmp_path / "models" / "m.onnx"
    assert config.model.labels == tmp_path / "labels.txt"
    assert [s.source for s in config.streams] == [str(tmp_path / "clips" / "a.mp4"), "rtsp://cam/1", 0]
    assert password(config.mqtt) == "s3cret"


def test_config_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGED_CONFIG", str(tmp_path / "env.yaml"))
    assert config_path(tmp_path / "cli.yaml") == tmp_path / "cli.yaml"
    assert config_path(None) == tmp_path / "env.yaml"


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    path = write(tmp_path, "device_id: cam-7\nstreams: [{name: door, source: 0}]\n")
    result = run_edged("check-config", "-c", path)
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["device_id"] == "cam-7" and effective["streams"][0]["name"] == "door"
    assert effective["mqtt"]["queue_limit"] == 10000  # defaults filled in
    assert Config.model_validate(effective).device_id == "cam-7"


def test_check_config_exits_2_with_every_error(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt: {port: 0}\nhealth: {interval_s: -1}\nwhat: 1\n")
    result = run_edged("check-config", "-c", path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("edged: config error:")]
    assert len(errors) == 3
    assert any(f"{path}: mqtt.port:" in e for e in errors) and any(f"{path}: what: unknown key" in e for e in errors)
    assert any(f"{path}: health.interval_s:" in e for e in errors)


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_edged("check-config", "-c", tmp_path / "nope.yaml")
    assert result.returncode == 2 and f"{tmp_path / 'nope.yaml'}: cannot read" in result.stderr


# -- bad configs, through the real CLI -------------------------------------------------------------------------------


def static_model(folder: Path) -> Path:
    """A yolov8-layout model with static shapes: input 320x320, output [1, 7, 2100] (3 classes), labels a, b, c."""
    return constant_output_model(folder / "static.onnx", np.zeros((1, 7, 2100), np.float32), input_hw=(320, 320),
                                 metadata={"names": names_metadata(["a", "b", "c"])})


def text(body: str) -> Callable[[Path], Path]:
    return lambda folder: write(folder, body)


def fifo(folder: Path) -> Path:
    os.mkfifo(folder / "edged.yaml")  # reading it would block until a writer comes: none ever does
    return folder / "edged.yaml"


def non_utf8(folder: Path) -> Path:
    path = folder / "edged.yaml"
    path.write_bytes(b"device_id: caf\xe9\n")
    return path


def with_static_model(body: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        static_model(folder)
        return write(folder, body)
    return make


def with_file(name: str, content: str, body: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        (folder / name).write_text(content)
        return write(folder, body)
    return make


SIXTY_THOUSAND_STREAMS = "streams:\n" + "".join(f"  - {{name: s{i}, source: {i}}}\n" for i in range(60_000))
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]\n" for previous, name in zip("abcdefgh", "bcdefghi"))

# case id, config maker, key (or line) the error names after the file, reason
BAD_CONFIGS = [
    ("not-utf8", non_utf8, "line 1, byte 14", "not valid UTF-8 (byte 0xe9)"),
    ("empty-host", text('mqtt: {host: ""}'), "mqtt.host", "not empty and without spaces"),
    ("host-with-space", text('mqtt: {host: "broker lan"}'), "mqtt.host", "not empty and without spaces"),
    ("input-size-negative", text("model: {input_size: -1}"), "model.input_size", "positive integer up to 4096"),
    ("input-size-zero", text("model: {input_size: [0, 0]}"), "model.input_size", "positive integer up to 4096"),
    ("input-size-huge", text("model: {input_size: 100000}"), "model.input_size", "positive integer up to 4096"),
    ("input-size-not-stride", text("model: {input_size: 100}"), "model.input_size",
     "100 is not a multiple of the model's stride (32)"),
    ("input-size-not-static", with_static_model("model: {path: static.onnx, input_size: 416}"), "model.input_size",
     "fixed at 320x320"),
    ("nested-3000", text("[" * 3000), "line 1, column", "nest"),
    ("nested-40", text("[\n" * 40), "line 33, column 1", "nested deeper than 32 levels"),
    ("alias-bomb", text(ALIAS_BOMB), "line", "aliases expand to more than 10000 nodes"),
    ("fifo", fifo, "", "not a regular file (a FIFO)"),
    ("directory", lambda folder: folder, "", "not a regular file (a directory)"),
    ("over-1mb", text("# " + "x" * MAX_CONFIG_BYTES), "", f"{MAX_CONFIG_BYTES + 2} bytes; a config may be at most"),
    ("60000-streams", text(SIXTY_THOUSAND_STREAMS), "", "a config may be at most 1048576 bytes"),
    ("duplicate-section", text("mqtt: {host: a}\nhealth: {interval_s: 2}\nmqtt: {port: 1884}\n"), "mqtt",
     "duplicate key at line 3, column 1 (first at line 1, column 1)"),
    ("duplicate-nested-key", text("mqtt:\n  host: a\n  port: 1884\n  host: b\n"), "mqtt.host",
     "duplicate key at line 4, column 3 (first at line 2, column 3)"),
    ("threads-1000", text("inference: {threads: 1000}"), "inference.threads", "must be at most"),
    ("missing-model", text("model: {path: models/none.onnx}"), "model.path", "none.onnx: model file not found"),
    ("not-onnx-model", with_file("fake.onnx", "not a model\n", "model: {path: fake.onnx}"), "model.path",
     "fake.onnx: not an ONNX model"),
    ("missing-labels-file", text("model: {labels: labels.txt}"), "model.labels",
     "labels.txt: cannot read: No such file or directory"),
    ("classes-not-in-labels", text("model: {classes: [circle, dog]}"), "model.classes",
     "['dog'] not among the model's labels ['circle', 'square', 'triangle']"),
    ("wrong-label-count", with_static_model("model: {path: static.onnx, labels: [a, b]}"), "model.labels",
     "fits yolov8 with 3 classes, but 2 labels are given"),
    ("wrong-family", with_static_model("model: {path: static.onnx, family: yolov5}"), "model.family",
     "which is not the yolov5 layout"),
    ("missing-ca-file", text("mqtt: {tls: {ca_file: ca.pem}}"), "mqtt.tls.ca_file",
     "ca.pem: cannot read: No such file or directory"),
    ("unusable-ca-file", with_file("ca.pem", "not a certificate\n", "mqtt: {tls: {ca_file: ca.pem}}"), "mqtt.tls",
     "mqtt.tls.ca_file holds no usable CA certificate"),
    ("missing-client-cert", text("mqtt: {tls: {cert_file: c.pem, key_file: k.pem}}"), "mqtt.tls.cert_file",
     "c.pem: cannot read: No such file or directory"),
    ("missing-password-file", text("mqtt: {username: edge, password_file: secret}"), "mqtt.password_file",
     "secret: cannot read: No such file or directory"),
]


@pytest.mark.parametrize("make, key, reason", [pytest.param(*case[1:], id=case[0]) for case in BAD_CONFIGS])
def test_check_config_refuses_bad_configs_cleanly(tmp_path: Path, make: Callable[[Path], Path], key: str,
                                                   reason: str) -> None:
    path = make(tmp_path)
    result = run_edged("check-config", "-c", path, timeout=30)  # a FIFO must not block, a big file not stall
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line.removeprefix("edged: config error: ") for line in result.stderr.splitlines()]
    assert any(e.startswith(f"{path}: {key}") and reason in e for e in errors), result.stderr


def test_check_runtime_reports_every_problem_at_once(tmp_path: Path) -> None:
    (tmp_path / "fake.onnx").write_text("not a model\n")
    config = load_config(write(tmp_path, """
model: {path: fake.onnx, labels: nope.txt}
mqtt: {password_file: nope, tls: {ca_file: nope.pem}}
"""))
    with pytest.raises(ConfigError) as caught:
        check_runtime(config, "edged.yaml")
    keys = [e.split(": ")[1] for e in caught.value.errors]
    assert keys == ["model.path", "model.labels", "mqtt.tls.ca_file", "mqtt.password_file"], caught.value.errors


def test_check_runtime_accepts_what_run_accepts(tmp_path: Path) -> None:
    static_model(tmp_path)
    (tmp_path / "labels.txt").write_text("x\ny\nz\n")
    (tmp_path / "secret").write_text("s3cret\n")
    for body in ("model: {path: static.onnx, classes: [b], input_size: [320, 320]}",
                 "model: {path: static.onnx, labels: labels.txt, classes: [z], family: yolov8}",
                 "model: {input_size: [320, 640], classes: [square]}\nmqtt: {username: edge, password_file: secret}"):
        check_runtime(load_config(write(tmp_path, body)))


def test_duplicate_stream_names_are_found_in_linear_time() -> None:
    streams = [{"name": f"s{i}", "source": i} for i in range(60_000)]
    started = time.monotonic()
    assert len(validate({"streams": streams}).streams) == 60_000
    with pytest.raises(ConfigError, match=r"streams: stream names must be unique; repeated: s0, s1$"):
        validate({"streams": streams + [{"name": "s1", "source": 0}, {"name": "s0", "source": 0}]})
    assert time.monotonic() - started < 5


def test_parse_yaml_keeps_anchors_and_merge_keys_within_bounds() -> None:
    data = parse_yaml(b"base: &b {source: 0, loop: true}\nstreams:\n  - {<<: *b, name: a}\n  - {<<: *b, name: b}\n",
                      "push")
    assert data["streams"] == [{"source": 0, "loop": True, "name": "a"}, {"source": 0, "loop": True, "name": "b"}]
    assert parse_yaml("a: 1", "push") == parse_yaml(b"a: 1", "push") == {"a": 1}
    for bad, reason in (("a: &a [1, *a]", "refers to a node that contains it"),
                        ("a: !!python/object/apply:os.system [echo]", "could not determine a constructor"),
                        ("a: " + "9" * 5000, "not valid YAML"), ("a: 1\nb: \x00", "unacceptable character #x0000")):
        with pytest.raises(ConfigError, match="^push: ") as caught:
            parse_yaml(bad, "push")
        assert reason in caught.value.errors[0]
