"""ONNX Runtime session factory: provider preference chain, per-provider options, fallback."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edged.errors import ModelError

log = logging.getLogger("edged.inference")

# Config names (``inference.providers``) to ONNX Runtime's provider names.
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_SHORT_NAMES = {v: k for k, v in PROVIDERS.items()}

HOW_TO_GET: dict[str, str] = {
    "tensorrt": "install NVIDIA's onnxruntime-gpu build for your JetPack (or the onnxruntime-gpu wheel with TensorRT libraries on x86_64)",
    "cuda": "install onnxruntime-gpu (on Jetson: NVIDIA's build for your JetPack), i.e. pip install 'edged[gpu]'",
    "xnnpack": "build ONNX Runtime with --use_xnnpack; the stock PyPI wheels carry only the CPU provider",
    "cpu": "reinstall onnxruntime",
}

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class SessionConfig:
    """What the session factory needs from the config (``inference.*`` and ``model.precision``)."""

    providers: tuple[str, ...] = tuple(PROVIDERS)  # preference order: all of them
    threads: int = 0
    precision: str = "fp32"
    tensorrt_cache_dir: Path = Path("/var/cache/edged/trt")
    tensorrt_workspace_mb: int = 1024
    device_id: int = 0
    extra_session_entries: dict[str, str] = field(default_factory=dict)
    # When set, ONNX Runtime profiles every run; session.end_profiling() writes <prefix>_<timestamp>.json.
    profile_prefix: Path | None = None

    def __post_init__(self) -> None:
        unknown = [p for p in self.providers if p not in PROVIDERS]
        if unknown:
            raise ValueError(f"unknown provider(s) {unknown}; choose from {list(PROVIDERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {list(PRECISIONS)}")


def short_name(ort_name: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda`` (unknown names pass through)."""
    return _SHORT_NAMES.get(ort_name, ort_name)


def provider_entry(name: str, config: SessionConfig) -> tuple[str, dict[str, Any]]:
    """ONNX Runtime's (provider, options) for one of our provider names."""
    if name == "tensorrt":
        cache = str(config.tensorrt_cache_dir)
        return PROVIDERS[name], {
            "device_id": config.device_id,
            "trt_fp16_enable": config.precision in ("fp16", "int8"),  # int8 engines fall back to fp16 layers
            "trt_int8_enable": config.precision == "int8",
            "trt_max_workspace_size": config.tensorrt_workspace_mb * 1024 * 1024,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
        }
    if name == "cuda":
        return PROVIDERS[name], {"device_id": config.device_id}
    if name == "xnnpack":
        return PROVIDERS[name], {"intra_op_num_threads": config.threads or os.cpu_count() or 1}
    return PROVIDERS[name], {}


def provider_chain(config: SessionConfig, available: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The wanted providers this onnxruntime build has, in preference order, with options.

    Each one missing is logged once with what is missing and how to get it. The CPU
    provider always ends the chain: it is the fallback for every operator.
    """
    available = ort.get_available_providers() if available is None else available
    chain = []
    for name in config.providers:
        if PROVIDERS[name] in available:
            chain.append(provider_entry(name, config))
        else:
            log.info("provider %s skipped: not in this onnxruntime build (%s); to get it, %s",
                     name, ort.__version__, HOW_TO_GET[name])
    if not any(p == PROVIDERS["cpu"] for p, _ in chain):
        chain.append(provider_entry("cpu", config))
    return chain


def session_options(config: SessionConfig, uses_xnnpack: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if uses_xnnpack:
        # XNNPACK has its own thread pool; the docs recommend one non-spinning ORT thread beside it.
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    else:
        options.intra_op_num_threads = config.threads
    for key, value in config.extra_session_entries.items():
        options.add_session_config_entry(key, value)
    if config.profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(config.profile_prefix)
    return options


def create_session(model_path: str | Path, config: SessionConfig) -> ort.InferenceSession:
    """An InferenceSession on the best provider available, falling back down the chain.

    A provider that is in the build but fails to start (no GPU, missing CUDA or TensorRT
    libraries) is dropped with a warning and the next one is tried. Raises ModelError
    for a missing file or one ONNX Runtime cannot load.
    """
    path = Path(model_path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    chain = provider_chain(config)
    if config.tensorrt_cache_dir and any(name == PROVIDERS["tensorrt"] for name, _ in chain):
        _ensure_dir(config.tensorrt_cache_dir)  # only where TensorRT is in this build: no stray dirs or warnings
    while True:
        names = [name for name, _ in chain]
        options = session_options(config, uses_xnnpack=PROVIDERS["xnnpack"] in names)
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=chain)
            break
        except Exception as exc:  # ORT raises several types (Fail, InvalidProtobuf, RuntimeException...)
            if len(chain) == 1 or _is_model_problem(exc):
                raise ModelError(f"{path}: ONNX Runtime cannot load it: {_first_line(exc)}") from exc
            log.warning("provider %s failed to start (%s); falling back to %s",
                        short_name(names[0]), _first_line(exc), short_name(names[1]))
            chain = chain[1:]
    used = session.get_providers()
    for name in names:
        if name not in used:
            log.warning("provider %s could not be used for %s; ONNX Runtime fell back to %s",
                        short_name(name), path.name, ", ".join(short_name(u) for u in used))
    log.info("model %s loaded on providers %s", path.name, ", ".join(short_name(u) for u in used))
    return session


def _ensure_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("TensorRT cache dir %s unusable (%s): engines will be rebuilt at every start", path, exc)


def _is_model_problem(exc: Exception) -> bool:
    text = str(exc)
    return any(s in text for s in ("Protobuf parsing failed", "INVALID_PROTOBUF", "No graph was found",
                                   "INVALID_GRAPH", "Load model from", "NOT_IMPLEMENTED"))


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
