"""The config file (contract: DESIGN.md 1.2): pydantic models, loading, validation errors with key paths."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edged.errors import EdgedError
from edged.inference.session import PROVIDERS, SessionConfig

DEFAULT_CONFIG_PATH = Path("/etc/edged/edged.yaml")
CONFIG_ENV = "EDGED_CONFIG"


class ConfigError(EdgedError):
    """Every problem found in a config, each as ``FILE: key.path: reason``."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("\n".join(errors))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TlsSettings(Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> "TlsSettings":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttSettings(Section):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password_file: Path | None = None
    tls: TlsSettings = TlsSettings()
    topic_prefix: str = Field("edged", min_length=1)
    qos: Literal[0, 1, 2] = 1
    keepalive_s: int = Field(30, ge=5, le=65535)
    queue_limit: int = Field(10000, ge=1)
    protocol: Literal["5", "3.1.1"] = "5"

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        if any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            raise ValueError("must not contain + or #, nor start or end with /")
        return value


class ModelSettings(Section):
    path: Path | None = None  # None: the bundled demo detector
    url: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    family: Literal["auto", "yolov5", "yolov8", "yolov10"] = "auto"
    labels: list[str] | Path | None = None
    input_size: int | tuple[int, int] | None = None
    confidence: float = Field(0.4, gt=0, le=1)
    iou: float = Field(0.5, gt=0, le=1)
    classes: list[str] | None = None
    precision: Literal["fp32", "fp16", "int8"] = "fp32"

    @model_validator(mode="after")
    def _url_needs_hash(self) -> "ModelSettings":
        if self.url and not self.sha256:
            raise ValueError("url needs sha256 (the download is verified before use)")
        return self


class TensorrtSettings(Section):
    cache_dir: Path = Path("/var/cache/edged/trt")
    workspace_mb: int = Field(1024, ge=16)


class InferenceSettings(Section):
    providers: list[Literal["tensorrt", "cuda", "xnnpack", "cpu"]] = Field(
        default_factory=lambda: list(PROVIDERS), min_length=1)
    threads: int = Field(0, ge=0)
    tensorrt: TensorrtSettings = TensorrtSettings()

    @field_validator("providers")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a provider twice")
        return value


class StreamSettings(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")  # part of MQTT topics
    source: str | int
    max_fps: float | None = Field(None, gt=0)
    realtime: bool | None = None
    loop: bool = False


class ThermalSettings(Section):
    warn_c: float = 70
    critical_c: float = 85
    hysteresis_c: float = Field(5, ge=0)

    @model_validator(mode="after")
    def _order(self) -> "ThermalSettings":
        if self.warn_c >= self.critical_c:
            raise ValueError("warn_c must be below critical_c")
        return self


class MemorySettings(Section):
    warn_available_mb: float = Field(300, ge=0)
    critical_available_mb: float = Field(150, ge=0)

    @model_validator(mode="after")
    def _order(self) -> "MemorySettings":
        if self.critical_available_mb >= self.warn_available_mb:
            raise ValueError("critical_available_mb must be below warn_available_mb")
        return self


class ResourceSettings(Section):
    interval_s: float = Field(1.0, gt=0)
    sysfs_root: Path = Path("/")
    thermal: ThermalSettings = ThermalSettings()
    memory: MemorySettings = MemorySettings()
    steps: list[Literal["fps", "precision", "input_size"]] = Field(
        default_factory=lambda: ["fps", "precision", "input_size"])


class HealthSettings(Section):
    interval_s: float = Field(5, gt=0)


class RemoteConfigSettings(Section):
    enabled: bool = True
    state_dir: Path = Path("/var/lib/edged")
    hmac_key_file: Path | None = None
    max_payload_kb: int = Field(64, ge=1)


class Config(Section):
    device_id: str = Field(default_factory=socket.gethostname, pattern=r"^[^+#/\s]+$")
    mqtt: MqttSettings = MqttSettings()
    model: ModelSettings = ModelSettings()
    inference: InferenceSettings = InferenceSettings()
    streams: list[StreamSettings] = Field(
        default_factory=lambda: [StreamSettings(name="front", source="/dev/video0")], min_length=1)
    resources: ResourceSettings = ResourceSettings()
    health: HealthSettings = HealthSettings()
    remote_config: RemoteConfigSettings = RemoteConfigSettings()

    @field_validator("streams")
    @classmethod
    def _unique_names(cls, streams: list[StreamSettings]) -> list[StreamSettings]:
        names = [s.name for s in streams]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stream names must be unique; repeated: {', '.join(duplicates)}")
        return streams

    def effective(self) -> dict[str, Any]:
        """The config as plain data, every default filled in (what check-config prints).

        No secret is ever inline (passwords and keys live in files), so nothing needs redacting.
        """
        return self.model_dump(mode="json")

    def session_config(self) -> SessionConfig:
        """What the session factory needs: ``inference.*`` and ``model.precision``."""
        inference = self.inference
        return SessionConfig(providers=tuple(inference.providers), threads=inference.threads,
                             precision=self.model.precision, tensorrt_cache_dir=inference.tensorrt.cache_dir,
                             tensorrt_workspace_mb=inference.tensorrt.workspace_mb)


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _messages(source: str, exc: ValidationError) -> list[str]:
    errors = []
    for error in exc.errors():
        # Drop pydantic's union-branch names ("str", "int", "function-after[...]") from the path.
        loc = tuple(p for p in error["loc"] if isinstance(p, int) or not _is_type_tag(str(p)))
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown key"
        errors.append(f"{source}: {_key_path(loc)}: {reason}")
    return sorted(set(errors), key=errors.index)


def _is_type_tag(part: str) -> bool:
    return part in ("str", "int", "float", "bool", "list[str]", "tuple[int, int]") or "[" in part


def validate(data: Any, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """A Config from parsed YAML/JSON data; relative paths resolve against ``base_dir``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: (top level): expected a mapping of keys, got {type(data).__name__}"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_messages(source, exc)) from None
    if base_dir is not None:
        resolve_paths(config, base_dir)
    return config


def resolve_paths(config: Config, base_dir: Path) -> None:
    """Make file paths relative to the config file's folder absolute."""

    def absolute(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else (base_dir / path).resolve()

    config.model.path = absolute(config.model.path)
    if isinstance(config.model.labels, Path):
        config.model.labels = absolute(config.model.labels)
    config.mqtt.password_file = absolute(config.mqtt.password_file)
    for key in ("ca_file", "cert_file", "key_file"):
        setattr(config.mqtt.tls, key, absolute(getattr(config.mqtt.tls, key)))
    config.remote_config.hmac_key_file = absolute(config.remote_config.hmac_key_file)
    config.remote_config.state_dir = base_dir / config.remote_config.state_dir  # an absolute one stays as it is
    config.inference.tensorrt.cache_dir = base_dir / config.inference.tensorrt.cache_dir
    from edged.sources import source_kind  # sources imports OpenCV: only when needed

    for stream in config.streams:
        if isinstance(stream.source, str) and source_kind(stream.source) in ("video", "image", "images"):
            stream.source = str(absolute(Path(stream.source)))


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; ConfigError lists every problem, naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{path}: {where}not valid YAML ({getattr(exc, 'problem', None) or exc})"]) from None
    return validate(data, str(path), path.resolve().parent)


def config_path(cli_path: str | Path | None) -> Path | None:
    """``-c``, else $EDGED_CONFIG, else /etc/edged/edged.yaml if it exists, else None (the bundled demo)."""
    if cli_path:
        return Path(cli_path)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def password(settings: MqttSettings) -> str | None:
    """The MQTT password, read from ``password_file`` (first line, surrounding whitespace removed)."""
    if settings.password_file is None:
        return None
    try:
        lines = settings.password_file.read_text().strip().splitlines()
    except OSError as exc:
        raise ConfigError([f"{settings.password_file}: cannot read mqtt.password_file: {exc.strerror}"]) from None
    return lines[0].strip() if lines else ""
