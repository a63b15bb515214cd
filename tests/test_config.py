"""Config loading and validation, and ``edged check-config`` as operators run it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edged.config import Config, ConfigError, config_path, load_config, password, validate
from tests.conftest import REPO, run_edged


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
    load_config(REPO / "config" / name)


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
