"""The config file (contract: DESIGN.md 1.2): pydantic models, loading, validation errors with key paths."""

from __future__ import annotations

import os
import re
import socket
import stat
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edged.errors import EdgedError
from edged.inference.session import PROVIDERS, SessionConfig
from edged.specs import FILE_KINDS, redact, source_kind

DEFAULT_CONFIG_PATH = Path("/etc/edged/edged.yaml")
CONFIG_ENV = "EDGED_CONFIG"

# Bounds on what parse_yaml accepts, so that a hostile or broken document fails fast and cleanly.
MAX_CONFIG_BYTES = 1 << 20  # 1 MB: a real config is a few KB, and 1 MB of YAML takes seconds to parse
MAX_DEPTH = 32  # nesting levels; a real config uses 4, and PyYAML's composer recurses per level
MAX_ALIAS_NODES = 10_000  # nodes reached through aliases, counted expanded: stops "billion laughs"
MAX_INPUT_SIDE = 4096


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

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError("must be a host name or address, not empty and without spaces")
        return value

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

    @field_validator("input_size")
    @classmethod
    def _input_size(cls, value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        # A nonsense size otherwise surfaces at run as a crash or a 100 GB allocation.
        sides = (value,) if isinstance(value, int) else value or ()
        if not all(0 < side <= MAX_INPUT_SIDE for side in sides):
            raise ValueError(f"each side must be a positive integer up to {MAX_INPUT_SIDE}")
        return value

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

    @field_validator("threads")
    @classmethod
    def _few_threads(cls, value: int) -> int:
        # Each stream and ONNX Runtime pool adds threads; 1000 of them only thrash the cores.
        limit = 4 * (os.cpu_count() or 1)
        if value > limit:
            raise ValueError(f"must be at most {limit} (4 x the {limit // 4} CPUs here)")
        return value


class StreamSettings(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")  # part of MQTT topics
    source: str | int
    max_fps: float | None = Field(None, gt=0)
    realtime: bool | None = None
    loop: bool = False
    stall_s: float = Field(5.0, gt=0, le=3600)  # up, but no frame for this long: stalled, reopened
    reconnect_max_s: float = Field(5.0, ge=1, le=3600)  # the retry backoff doubles from 1 s up to this


class ThermalSettings(Section):
    warn_c: float = 70
    critical_c: float = 85
    hysteresis_c: float = Field(5, ge=0)
    zones: list[str] | None = None  # the thermal zone types that count (None: all of them)

    @model_validator(mode="after")
    def _order(self) -> "ThermalSettings":
        if self.warn_c >= self.critical_c:
            raise ValueError("warn_c must be below critical_c")
        return self


class MemorySettings(Section):
    warn_available_mb: float = Field(300, ge=0)
    critical_available_mb: float = Field(150, ge=0)
    psi_warn: float = Field(20, ge=0, le=100)  # PSI memory "some avg10" (%) from which the level is elevated

    @model_validator(mode="after")
    def _order(self) -> "MemorySettings":
        if self.critical_available_mb >= self.warn_available_mb:
            raise ValueError("critical_available_mb must be below warn_available_mb")
        return self


class ResourceSettings(Section):
    interval_s: float = Field(1.0, gt=0)
    sysfs_root: Path = Path("/")
    cool_down_s: float = Field(30, ge=0)  # the least time at a level before it is left for a lower one
    step_interval_s: float = Field(10, gt=0)  # the least time between two steps in the same direction
    min_fps: float = Field(1, gt=0)  # the fps step never caps a live stream below this
    thermal: ThermalSettings = ThermalSettings()
    memory: MemorySettings = MemorySettings()
    throttling: bool = True  # firmware throttling flags (Raspberry Pi) raise the level to elevated
    steps: list[Literal["fps", "precision", "input_size"]] = Field(
        default_factory=lambda: ["fps", "precision", "input_size"])


class TrackingSettings(Section):
    enabled: bool = True  # track ids, velocities and ages on detections; counts and object events
    min_hits: int = Field(3, ge=1, le=100)  # detections before a track is confirmed (object_entered)
    max_age: int = Field(30, ge=1, le=10000)  # frames a track survives unseen (then object_left)
    low: float = Field(0.1, gt=0, le=1)  # ByteTrack's second stage: detections from this score keep tracks alive
    count_debounce_s: float = Field(1.0, ge=0, le=3600)  # a changed count waits this long to settle


class SnapshotSettings(Section):
    enabled: bool = True  # a retained JPEG per stream and label
    boxes: bool = True  # draw the object's box on it
    quality: int = Field(80, ge=1, le=100)  # JPEG quality
    max_width: int = Field(640, ge=32, le=8192)  # larger frames are scaled down to this width
    interval_s: float = Field(1.0, ge=0, le=3600)  # a label's snapshot is sent at most this often


class HomeAssistantSettings(Section):
    enabled: bool = False  # MQTT discovery configs under the discovery prefix
    discovery_prefix: str = Field("homeassistant", min_length=1)

    @field_validator("discovery_prefix")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        return MqttSettings._no_wildcards(value)


class HealthSettings(Section):
    interval_s: float = Field(5, gt=0)


class RemoteConfigSettings(Section):
    enabled: bool = True
    state_dir: Path = Path("/var/lib/edged")
    hmac_key_file: Path | None = None
    max_payload_kb: int = Field(64, ge=1, le=1024)
    groups: list[str] = Field(default_factory=list)  # answers pushes on <prefix>/group/<group>/config/set too

    @field_validator("groups")
    @classmethod
    def _group_names(cls, groups: list[str]) -> list[str]:
        bad = [g for g in groups if not re.fullmatch(r"[A-Za-z0-9_.-]+", g)]
        if bad:
            raise ValueError(f"group names are letters, digits, '_', '.' and '-' (part of a topic): {bad[0]!r}")
        return groups


class FoxgloveServerSettings(Section):
    enabled: bool = False  # the live view: a Foxglove WebSocket server (ws://host:port)
    host: str = "127.0.0.1"  # loopback: reach it over an SSH tunnel, or set 0.0.0.0 on a trusted network
    port: int = Field(8765, ge=1, le=65535)


class McapSettings(Section):
    enabled: bool = False  # record the live view's channels to MCAP files
    dir: Path = Path("/var/lib/edged/recordings")
    max_file_mb: float = Field(256, gt=0)  # a new file past this size
    max_total_mb: float = Field(4096, gt=0)  # the oldest files are deleted past this total

    @model_validator(mode="after")
    def _total_holds_a_file(self) -> McapSettings:
        if self.max_total_mb < self.max_file_mb:
            raise ValueError(f"max_total_mb ({self.max_total_mb:g}) is smaller than max_file_mb "
                             f"({self.max_file_mb:g})")
        return self


class FoxgloveSettings(Section):
    server: FoxgloveServerSettings = FoxgloveServerSettings()
    mcap: McapSettings = McapSettings()
    max_fps: float = Field(5, gt=0, le=120)  # images and annotations a stream, at most
    image_format: Literal["jpeg", "png"] = "jpeg"  # png: lossless (exact replays), larger and slower
    jpeg_quality: int = Field(80, ge=1, le=100)


class Config(Section):
    device_id: str = Field(default_factory=socket.gethostname, pattern=r"^[^+#/\s]+$")
    mqtt: MqttSettings = MqttSettings()
    model: ModelSettings = ModelSettings()
    inference: InferenceSettings = InferenceSettings()
    streams: list[StreamSettings] = Field(
        default_factory=lambda: [StreamSettings(name="front", source="/dev/video0")], min_length=1)
    resources: ResourceSettings = ResourceSettings()
    tracking: TrackingSettings = TrackingSettings()
    snapshots: SnapshotSettings = SnapshotSettings()
    home_assistant: HomeAssistantSettings = HomeAssistantSettings()
    health: HealthSettings = HealthSettings()
    remote_config: RemoteConfigSettings = RemoteConfigSettings()
    foxglove: FoxgloveSettings = FoxgloveSettings()

    @field_validator("streams")
    @classmethod
    def _unique_names(cls, streams: list[StreamSettings]) -> list[StreamSettings]:
        # Counter, not list.count: linear, so 60,000 streams validate in well under a second.
        duplicates = sorted(name for name, count in Counter(s.name for s in streams).items() if count > 1)
        if duplicates:
            shown = ", ".join(duplicates[:10]) + (f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else "")
            raise ValueError(f"stream names must be unique; repeated: {shown}")
        return streams

    def effective(self) -> dict[str, Any]:
        """The config as plain data, every default filled in, secrets redacted (what check-config prints and
        ``P/config/state`` carries). Passwords and keys live in files; the one secret that may be inline is a
        password in a stream's URL (``rtsp://user:pw@host``), or in the model's URL."""
        data = self.model_dump(mode="json")
        for stream in data["streams"]:
            if isinstance(stream["source"], str):
                stream["source"] = redact(stream["source"])
        if data["model"]["url"]:
            data["model"]["url"] = redact(data["model"]["url"])
        return data

    def plain(self) -> dict[str, Any]:
        """The config as plain data, every default filled in, nothing redacted: what a push patches."""
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
    for stream in config.streams:
        if isinstance(stream.source, str) and source_kind(stream.source) in FILE_KINDS:
            stream.source = str(absolute(Path(stream.source)))


def _where(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


if yaml.__with_libyaml__:
    class _SafeLoader(Composer, yaml.CSafeLoader):
        """libyaml's parser (4x faster than PyYAML's own: 1 MB in 2 s, not 9) under PyYAML's Python
        composer, which _BoundedLoader extends."""

        def __init__(self, text: str):
            yaml.CSafeLoader.__init__(self, text)
            Composer.__init__(self)
else:
    _SafeLoader = yaml.SafeLoader


class _BoundedLoader(_SafeLoader):
    """SafeLoader that refuses duplicate keys, nesting deeper than MAX_DEPTH, recursive aliases and aliases
    expanding to more than MAX_ALIAS_NODES nodes; it raises ConfigError naming the source and line."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source = source
        self._path: list[str | int] = []  # key path of the node being composed
        self._sizes: dict[int, int] = {}  # id(node) -> node count with aliases expanded
        self._alias_nodes = 0

    def _refuse(self, mark: yaml.Mark, reason: str) -> ConfigError:
        return ConfigError([f"{self.source}: {_where(mark)}: {reason}"])

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise self._refuse(event.start_mark, f"alias *{event.anchor} refers to a node that contains it")
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise self._refuse(event.start_mark, f"aliases expand to more than {MAX_ALIAS_NODES} nodes")
            return node
        if parent is None:
            self._path.append("")  # the document
        elif isinstance(index, ScalarNode):
            self._path.append(index.value)
        elif isinstance(index, int):
            self._path.append(index)
        else:  # a mapping key, or the value of a complex key
            self._path.append("(key)")
        if len(self._path) > MAX_DEPTH:
            raise self._refuse(self.peek_event().start_mark, f"nested deeper than {MAX_DEPTH} levels")
        node = super().compose_node(parent, index)
        size = 1
        if isinstance(node, SequenceNode):
            size += sum(self._sizes[id(child)] for child in node.value)
        elif isinstance(node, MappingNode):
            self._check_unique_keys(node)
            size += sum(self._sizes[id(key)] + self._sizes[id(value)] for key, value in node.value)
        self._sizes[id(node)] = size
        self._path.pop()
        return node

    def _check_unique_keys(self, node: MappingNode) -> None:
        # PyYAML keeps the last of repeated keys silently: a second `mqtt:` block would replace the first.
        first_line: dict[tuple[str, str], str] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            if (key.tag, key.value) in first_line:
                path = _key_path((*self._path[1:], key.value))
                raise ConfigError([f"{self.source}: {path}: duplicate key at {_where(key.start_mark)} "
                                   f"(first at {first_line[key.tag, key.value]})"])
            first_line[key.tag, key.value] = _where(key.start_mark)


def parse_yaml(data: bytes | str, source: str) -> Any:
    """Parse one YAML document (a config file, or a config pushed over MQTT) into plain data, safely.

    Bytes must be strict UTF-8; at most MAX_CONFIG_BYTES; safe tags only; no duplicate keys; at most
    MAX_DEPTH levels deep; aliases may reach at most MAX_ALIAS_NODES nodes in all, counted expanded, so a
    small document cannot blow up into a huge one. Every refusal is a ConfigError naming ``source``.
    """
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([_too_big(source, len(raw))])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{source}: line {line}, byte {exc.start}: not valid UTF-8 "
                           f"(byte 0x{raw[exc.start]:02x})"]) from None
    try:
        loader = _BoundedLoader(text, source)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:  # a control character; PyYAML's message spans lines
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError([f"{source}: line {line}: not valid YAML (unacceptable character "
                           f"#x{exc.character:04x}: {exc.reason})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{_where(mark)}: " if mark else ""
        raise ConfigError([f"{source}: {where}not valid YAML ({getattr(exc, 'problem', None) or exc})"]) from None
    except ValueError as exc:  # a scalar the constructor cannot convert: a 5000-digit int, a 13th month
        raise ConfigError([f"{source}: not valid YAML ({exc})"]) from None


def _too_big(source: str, size: int) -> str:
    return f"{source}: {size} bytes; a config may be at most {MAX_CONFIG_BYTES} bytes (1 MB)"


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a regular file (checked before opening it: a FIFO would block), or None."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if not stat.S_ISREG(mode):
        kind = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(mode), "special")
        return f"not a regular file ({kind})"
    return None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; ConfigError lists every problem, naming the file.

    Only a regular file of at most MAX_CONFIG_BYTES is read, checked before it is opened.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise ConfigError([f"{path}: {problem}"])
    try:
        # O_NONBLOCK: should the file have been swapped for a FIFO since the check, the open still returns.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_CONFIG_BYTES:
                raise ConfigError([_too_big(str(path), size)])
            data = file.read(MAX_CONFIG_BYTES + 1)  # bounded, should it grow meanwhile (parse_yaml refuses that)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return validate(parse_yaml(data, str(path)), str(path), path.resolve().parent)


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
