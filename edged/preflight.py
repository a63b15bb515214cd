"""What ``run`` needs beyond a valid config, checked up front so that ``check-config`` and ``run`` fail at once,
with every problem, rather than after the model loads or when the broker is dialled.

Cheap by design: the model is read for its metadata and declared shapes only (no ONNX Runtime session, no
inference), and files are checked to be regular before they are read, so a FIFO never blocks.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from edged.config import (Config, ConfigError, ModelSettings, MqttSettings, RemoteConfigSettings, file_problem,
                          password)
from edged.demo import demo_model_path
from edged.errors import ModelError
from edged.inference.detector import (FamilyMismatch, ModelInfo, choose_family, load_labels, parse_names,
                                      read_model_info, resolve_input_size, static_input_size)
from edged.mqtt import tls_context
from edged.recording import folder_problem
from edged.remote.push import read_key

DEFAULT_STRIDE = 32
_INPUT_TYPES = ("float32", "float16")  # what Detector feeds

Problems = list[tuple[str, str]]  # (config key, reason)


def check_runtime(config: Config, source: str | None = None) -> None:
    """Raise ConfigError listing every problem ``run`` would hit with ``config``, each as
    ``SOURCE: key.path: reason`` (``source``: the config file, if any)."""
    problems: Problems = []
    _check_model(config.model, problems)
    _check_mqtt_files(config.mqtt, problems)
    _check_remote_files(config.remote_config, problems)
    if config.foxglove.mcap.enabled and (problem := folder_problem(config.foxglove.mcap.dir)):
        problems.append(("foxglove.mcap.dir", problem))
    if problems:
        prefix = f"{source}: " if source else ""
        raise ConfigError([f"{prefix}{key}: {reason}" for key, reason in problems])


def _configured_labels(model: ModelSettings) -> list[str] | None:
    """``model.labels`` read as Detector reads it (None: not set); ModelError when it cannot be."""
    if model.labels is None:
        return None
    if isinstance(model.labels, Path) and (problem := file_problem(model.labels)):
        raise ModelError(f"{model.labels}: {problem}")
    try:
        return load_labels(model.labels)
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # bad YAML, not UTF-8, ids that do not sort
        raise ModelError(f"{model.labels}: not a usable labels file ({' '.join(str(exc).split())})") from None


def _check_model(model: ModelSettings, problems: Problems) -> None:
    """The model file, its input, the input size, the family and the labels, as Detector will see them."""
    try:
        info: ModelInfo | None = _model_info(model)
    except ModelError as exc:
        problems.append(("model.path", str(exc)))
        info = None
    else:
        _check_input_size(model, info, problems)
    try:
        configured = _configured_labels(model)
    except ModelError as exc:
        problems.append(("model.labels", str(exc)))
        return
    if info is not None:
        _check_labels(model, info, configured, problems)


def _check_labels(model: ModelSettings, info: ModelInfo, configured: list[str] | None, problems: Problems) -> None:
    """Family, label count and ``model.classes``; an output shape that is dynamic is only known at run."""
    labels, labels_key = (configured, "model.labels") if configured is not None else (
        parse_names(info.metadata.get("names", "")), "model.path")
    shape = tuple(info.outputs[0]["shape"])
    if all(isinstance(d, int) and d > 0 for d in shape):
        try:
            family = choose_family(info.path, info.outputs[0]["name"], shape, model.family, labels,
                                   info.metadata.get("family"))
        except FamilyMismatch as exc:
            problems.append(({"family": "model.family", "labels": labels_key}.get(exc.key, "model.path"), str(exc)))
            return
        if labels is None:
            count = family.num_classes(shape)
            labels = [str(i) for i in range(count)] if count else []
    if model.classes and labels is not None:
        unknown = [c for c in model.classes if c not in labels]
        if unknown:
            problems.append(("model.classes", f"{unknown} not among the model's labels {labels}"))


def _model_info(model: ModelSettings) -> ModelInfo:
    """The model's metadata and declared shapes; ModelError unless Detector can feed it images."""
    info = read_model_info(model.path or demo_model_path())
    if not info.inputs:
        raise ModelError(f"{info.path}: the model has no image input")
    static_input_size(info)  # raises unless the input is [1, 3, H, W]
    image = info.inputs[0]
    if image["type"] not in _INPUT_TYPES:
        raise ModelError(f"{info.path}: input {image['name']} is {image['type']}; edged feeds images as float32 "
                         f"or float16")
    return info


def _check_input_size(model: ModelSettings, info: ModelInfo, problems: Problems) -> None:
    if model.input_size is None:
        return
    try:
        resolve_input_size(info, model.input_size)
    except ModelError as exc:
        problems.append(("model.input_size", str(exc)))
        return
    try:
        stride = int(info.metadata.get("stride", DEFAULT_STRIDE))
    except ValueError:
        stride = DEFAULT_STRIDE
    sides = (model.input_size,) if isinstance(model.input_size, int) else model.input_size
    if stride > 0 and any(side % stride for side in sides):
        problems.append(("model.input_size", f"{model.input_size} is not a multiple of the model's stride ({stride})"))


def _check_mqtt_files(mqtt: MqttSettings, problems: Problems) -> None:
    """The password and TLS files, read and used as MqttClient.start does."""
    missing = False
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(mqtt.tls, key)
        if path is not None and (problem := file_problem(path)):
            problems.append((f"mqtt.tls.{key}", f"{path}: {problem}"))
            missing = True
    if not missing and (mqtt.tls.ca_file is not None or mqtt.tls.cert_file is not None):
        try:
            tls_context(mqtt.tls)
        except ConfigError as exc:
            problems.extend(("mqtt.tls", line) for line in exc.errors)
    if mqtt.password_file is not None:
        if problem := file_problem(mqtt.password_file):
            problems.append(("mqtt.password_file", f"{mqtt.password_file}: {problem}"))
            return
        try:
            password(mqtt)
        except ConfigError as exc:
            problems.extend(("mqtt.password_file", line) for line in exc.errors)


def _check_remote_files(remote: RemoteConfigSettings, problems: Problems) -> None:
    """The signing key of config pushes, read as remote config reads it."""
    if remote.hmac_key_file is not None:
        try:
            read_key(remote.hmac_key_file)
        except ConfigError as exc:
            problems.extend(("remote_config.hmac_key_file", line) for line in exc.errors)
