"""Latency, throughput and memory of model variants: ``edged bench``, and the measurements behind the ladder.

A variant is one model file on one provider at one precision and input size:

- precision: on TensorRT, the provider's fp16/int8 flags on the fp32 file (engines go to
  ``inference.tensorrt.cache_dir``); elsewhere, a file next to the model, as ``edged model
  optimize`` writes them: fp32 ``NAME.onnx`` (the model itself), fp16 ``NAME.fp16.onnx``,
  int8 ``NAME.int8.onnx``. A missing file is reported as skipped, not an error.
- input size: only a dynamic-shape model takes other sizes than its own; a static one is
  measured at its fixed size only.

A measurement loads the variant with ``Detector`` (the daemon's session code), runs ``warmup``
untimed inferences, then ``runs`` timed ones, one at a time (batch 1), on one letterboxed
frame. Only inference (``session.run``) is timed: pre- and post-processing do not depend on
the variant's precision.

``edged bench --json`` prints (the ladder's steps carry the same result fields)::

    {"schema": "edged.bench/1",
     "model": "/path/NAME.onnx",                 # the fp32 model the variants derive from
     "device": {"hostname": ..., "machine": "x86_64", "cpu": "AMD EPYC ...", "board": null},
     "onnxruntime": "1.32.0",
     "providers_available": ["cpu"],             # in this onnxruntime build
     "warmup": 10, "runs": 100, "threads": 0,
     "results": [{"model": "/path/NAME.int8.onnx",   # the file the session loaded
                  "provider": "cpu", "precision": "int8", "input_size": [416, 416],   # [height, width]
                  "providers": ["cpu"],              # what ONNX Runtime really used, in order
                  "latency_ms": {"p50": 7.1, "p90": 7.6, "p99": 9.0, "mean": 7.2},
                  "throughput_fps": 139.5,
                  "memory_mb": 21.3,
                  "load_s": 0.31}],
     "skipped": [{"provider": "cpu", "precision": "fp16", "input_size": null, "reason": "..."}]}

- ``latency_ms``: milliseconds per ``session.run``; percentiles over the timed runs.
- ``throughput_fps``: timed runs divided by their total wall time, one frame in flight.
- ``memory_mb``: growth of the process's resident set (RSS, ``/proc/self/statm``) from just
  before the session is created to after the timed runs: weights, ONNX Runtime's CPU arena,
  thread stacks. Host memory only: GPU memory (CUDA, TensorRT) is not in it. Approximate,
  within a few MB: freed memory is handed back to the OS (``malloc_trim``) before each baseline;
  the first variant of a run also carries ONNX Runtime's one-time set-up (about 10 MB).
- ``load_s``: session creation and the first inference, a TensorRT engine build or cache load included.
- ``device.board``: ``/proc/device-tree/model`` (Jetson, Raspberry Pi), else null.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from edged.errors import EdgedError
from edged.heap import release_freed_memory
from edged.inference.detector import (Detector, read_model_info, resolve_input_size, static_input_size,
                                     variant_path)
from edged.inference.session import PROVIDERS, SessionConfig
from edged.synthetic import render_scene

Size = tuple[int, int]  # height, width
SCENE_SEED = 3
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass(frozen=True)
class Variant:
    model: Path  # the file the session loads
    provider: str  # edged's provider name: tensorrt, cuda, xnnpack, cpu
    precision: str
    input_size: Size

    @property
    def label(self) -> str:
        """``fp32@416``, or ``fp32@480x640`` for a non-square input (height x width)."""
        return f"{self.precision}@{size_label(self.input_size)}"


@dataclass(frozen=True)
class Measurement:
    variant: Variant
    providers: list[str]  # what ONNX Runtime really used
    latency_ms: dict[str, float]  # p50, p90, p99, mean
    throughput_fps: float
    memory_mb: float
    load_s: float

    @property
    def p50(self) -> float:
        return self.latency_ms["p50"]

    def to_json(self) -> dict[str, Any]:
        v = self.variant
        return {"model": str(v.model), "provider": v.provider, "precision": v.precision,
                "input_size": list(v.input_size), "providers": self.providers, "latency_ms": self.latency_ms,
                "throughput_fps": self.throughput_fps, "memory_mb": self.memory_mb, "load_s": self.load_s}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        size = data["input_size"]
        return cls(Variant(Path(data["model"]), data["provider"], data["precision"], (size[0], size[1])),
                   list(data["providers"]), dict(data["latency_ms"]), data["throughput_fps"], data["memory_mb"],
                   data["load_s"])


@dataclass(frozen=True)
class Skipped:
    """A variant (or a whole provider or precision) that was not measured, and why."""

    provider: str
    precision: str | None
    input_size: Size | None
    reason: str

    @classmethod
    def of(cls, variant: Variant, reason: str) -> Skipped:
        return cls(variant.provider, variant.precision, variant.input_size, reason)

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "precision": self.precision,
                "input_size": list(self.input_size) if self.input_size else None, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Skipped:
        size = data["input_size"]
        return cls(data["provider"], data["precision"], (size[0], size[1]) if size else None, data["reason"])

    def describe(self) -> str:
        what = " ".join(p for p in (self.provider, self.precision) if p)
        return f"{what}{'@' + size_label(self.input_size) if self.input_size else ''}: {self.reason}"


def size_label(size: Size) -> str:
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def variant_file(model: Path, precision: str, provider: str) -> Path:
    """The file a precision runs from: the model itself on TensorRT (the precision is a provider
    flag) and for fp32; ``NAME.<precision>.onnx`` next to it otherwise."""
    return model if provider == "tensorrt" or precision == "fp32" else variant_path(model, precision)


def available_providers() -> list[str]:
    """edged's providers that this onnxruntime build has, in edged's preference order."""
    return [name for name, ort_name in PROVIDERS.items() if ort_name in ort.get_available_providers()]


def device_info() -> dict[str, str | None]:
    """What identifies the hardware a measurement was made on."""
    cpuinfo = _read("/proc/cpuinfo") or ""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    cpu = fields.get("model name") or fields.get("Model") or fields.get("Hardware") or platform.processor()
    board = _read("/proc/device-tree/model")
    return {"hostname": socket.gethostname(), "machine": platform.machine(), "cpu": cpu or None,
            "board": board.strip("\0\n ") if board else None}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def discover(model: Path, providers: Sequence[str], precisions: Sequence[str],
             sizes: Sequence[Size] | None = None) -> tuple[list[Variant], list[Skipped]]:
    """Every variant of ``model`` among these providers, precisions and sizes (default: the model's
    own size) that can be measured here, and those that cannot, with the reason."""
    info = read_model_info(model)
    static = static_input_size(info)
    sizes = list(sizes or [resolve_input_size(info)])
    available = available_providers()
    variants: list[Variant] = []
    skipped: list[Skipped] = []
    for provider in providers:
        if provider not in available:
            skipped.append(Skipped(provider, None, None, f"not in this onnxruntime build ({ort.__version__})"))
            continue
        for precision in precisions:
            path = variant_file(model, precision, provider)
            if not path.is_file():
                skipped.append(Skipped(provider, precision, None, _missing(path)))
                continue
            for size in sizes:
                if static and size != static:
                    skipped.append(Skipped(provider, precision, size, f"the model's input is fixed at "
                                                                      f"{size_label(static)}"))
                else:
                    variants.append(Variant(path, provider, precision, size))
    return variants, skipped


def measure(variant: Variant, base: SessionConfig, *, warmup: int, runs: int, bar: tqdm | None = None) -> Measurement:
    """Load the variant and time ``runs`` inferences after ``warmup`` untimed ones.

    ``base`` gives threads and TensorRT settings; provider and precision come from the variant.
    Raises EdgedError if the variant's provider did not start (ONNX Runtime fell back to another).
    """
    config = replace(base, providers=(variant.provider,), precision=variant.precision)
    gc.collect()
    release_freed_memory()  # so that the RSS baseline is not inflated by the previous variant
    rss_before = _rss_mb()
    started = time.perf_counter()
    detector = Detector(variant.model, config, input_size=variant.input_size)
    load_s = time.perf_counter() - started
    if detector.provider != variant.provider:
        raise EdgedError(f"provider {variant.provider} did not start; ONNX Runtime ran it on {detector.provider}")
    blob, _ = detector.preprocess(render_scene(np.random.default_rng(SCENE_SEED))[0])
    for _ in range(warmup):
        detector.infer(blob)
        if bar is not None:
            bar.update()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        detector.infer(blob)
        times[i] = time.perf_counter() - t0
        if bar is not None:
            bar.update()
    memory_mb = _rss_mb() - rss_before
    ms = times * 1000
    latency = {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)}
    latency["mean"] = round(float(ms.mean()), 3)
    return Measurement(variant, detector.providers, latency, round(runs / float(times.sum()), 2),
                       round(memory_mb, 1), round(load_s, 3))


def measure_or_skip(variant: Variant, base: SessionConfig, *, warmup: int, runs: int,
                    bar: tqdm) -> Measurement | Skipped:
    """``measure``, or why the variant cannot be measured here (no file, fails to load or run);
    the bar advances by the variant's runs either way."""
    goal = bar.n + warmup + runs
    bar.set_description(f"{variant.provider} {variant.label}")
    if not variant.model.is_file():
        result: Measurement | Skipped = Skipped.of(variant, _missing(variant.model))
    else:
        try:
            result = measure(variant, base, warmup=warmup, runs=runs, bar=bar)
        except Exception as exc:  # ONNX Runtime raises its own types: report the variant, go on
            text = str(exc).strip()
            result = Skipped.of(variant, text.splitlines()[0] if text else type(exc).__name__)
    bar.update(goal - bar.n)
    return result


def measure_all(variants: Sequence[Variant], base: SessionConfig, *, warmup: int,
                runs: int) -> tuple[list[Measurement], list[Skipped]]:
    """Measure each variant in turn under one progress bar."""
    results: list[Measurement] = []
    skipped: list[Skipped] = []
    with progress_bar(len(variants) * (warmup + runs)) as bar:
        for variant in variants:
            result = measure_or_skip(variant, base, warmup=warmup, runs=runs, bar=bar)
            if isinstance(result, Measurement):
                results.append(result)
            else:
                skipped.append(result)
    return results, skipped


def check_counts(warmup: int, runs: int) -> None:
    if runs < 1 or warmup < 0:
        raise EdgedError(f"--runs must be at least 1 (not {runs}) and --warmup at least 0 (not {warmup})")


def progress_bar(total: int) -> tqdm:
    """On stderr, only when it is a terminal."""
    return tqdm(total=total, unit="run", disable=None, leave=False)


def _missing(path: Path) -> str:
    return f"{path.name} not found (edged model optimize writes it)"


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_MB


def report(model: Path, results: Sequence[Measurement], skipped: Sequence[Skipped], *, warmup: int, runs: int,
           threads: int) -> dict[str, Any]:
    """The ``edged bench --json`` document (fields in the module docstring)."""
    return {"schema": "edged.bench/1", "model": str(model), "device": device_info(),
            "onnxruntime": ort.__version__, "providers_available": available_providers(),
            "warmup": warmup, "runs": runs, "threads": threads,
            "results": [r.to_json() for r in results], "skipped": [s.to_json() for s in skipped]}


def table(results: Sequence[Measurement]) -> str:
    header = f"{'provider':10}{'precision':11}{'size':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'fps':>9}" \
             f"{'memory MB':>11}{'load s':>8}"
    lines = [header]
    for r in results:
        v, lat = r.variant, r.latency_ms
        lines.append(f"{v.provider:10}{v.precision:11}{size_label(v.input_size):>9}{lat['p50']:9.2f}"
                     f"{lat['p90']:9.2f}{lat['p99']:9.2f}{r.throughput_fps:9.1f}{r.memory_mb:11.1f}{r.load_s:8.2f}")
    return "\n".join(lines)


def plot(results: Sequence[Measurement], path: Path, title: str) -> None:
    """A PNG bar chart: p50/p90/p99 latency per variant, throughput written above each group."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgedError("--plot needs matplotlib: pip install 'edged[plot]'") from None
    labels = [f"{r.variant.provider}\n{r.variant.label}" for r in results]
    x = np.arange(len(results))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(results) + 1.5), 3.6), dpi=100)
    for i, q in enumerate(("p50", "p90", "p99")):
        ax.bar(x + (i - 1) * width, [r.latency_ms[q] for r in results], width, label=q)
    for xi, r in zip(x, results):
        ax.annotate(f"{r.throughput_fps:.0f} fps", (xi, r.latency_ms["p99"]), textcoords="offset points",
                    xytext=(0, 3), ha="center", fontsize=8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_bench(model: Path, *, providers: Sequence[str] | None, precisions: Sequence[str],
              sizes: Sequence[int | Size] | None, runs: int, warmup: int, threads: int, as_json: bool,
              plot_path: Path | None) -> int:
    """``edged bench``: measure, print a table (or JSON), optionally plot; exit 1 if nothing could be measured."""
    check_counts(warmup, runs)
    pairs = [(s, s) if isinstance(s, int) else (s[0], s[1]) for s in sizes] if sizes else None
    variants, skipped = discover(model, providers or available_providers(), precisions, pairs)
    results, failed = measure_all(variants, SessionConfig(threads=threads), warmup=warmup, runs=runs)
    skipped += failed
    device = device_info()
    if plot_path and results:
        plot(results, plot_path, f"{model.name} on {device['board'] or device['cpu']}, onnxruntime {ort.__version__}")
    if as_json:
        print(json.dumps(report(model, results, skipped, warmup=warmup, runs=runs, threads=threads), indent=2))
    else:
        print(f"{model.name} on {device['board'] or device['cpu']} ({device['machine']}), onnxruntime "
              f"{ort.__version__}: {runs} runs after {warmup} warm-up, {threads or 'automatic'} threads")
        print(table(results))
        for skip in skipped:
            print(f"skipped {skip.describe()}")
        if plot_path and results:
            print(f"plot: {plot_path}")
    return 0 if results else 1
