"""The measured ladder: the variants the daemon steps down through, each measurably cheaper than the one above.

``edged model prepare`` runs on the device itself (at install). It loads the model as the
daemon does to learn which provider the session gets, then measures that provider's
variants (``edged.bench.measure``; TensorRT engines are built into the engine cache on the way):

- the top step is the preferred variant: ``model.precision`` at ``model.input_size`` (else the
  model's own size);
- from there it walks down each dimension in the order of ``resources.steps``: the precisions
  below the preferred one (fp32 > fp16 > int8), then, for dynamic-shape models, smaller input
  sizes (3/4 and 1/2 of the top one, rounded to the model's stride);
- a candidate becomes a step only if it is measurably cheaper than the step above: its p50 at
  least ``MARGIN`` (10%) lower. Otherwise it is recorded as dropped, with the reason. On an x86
  CPU, for one, fp16 runs slower than fp32 (ONNX Runtime adds casts), so it is no step there.

The ladder records what its measurements depend on, the fingerprint: the device, the
onnxruntime version, the providers of this build, the provider measured, the settings
(configured providers, precision, top input size, threads, step order) and the variant files
(size and sha256). If any of it differs, the ladder is stale: the daemon says so and uses the
default order, and the next ``edged model prepare`` measures again (a fresh ladder it leaves
alone, unless ``--force``). The default order is unmeasured: the provider's usual precisions
(TensorRT fp32 > fp16 > int8 through its flags, CUDA fp32 > fp16, XNNPACK and CPU fp32 > int8)
among the variant files present, then the smaller sizes.

``<remote_config.state_dir>/ladder.json``::

    {"schema": "edged.ladder/1", "created": 1795622121.0, "margin": 0.1, "warmup": 5, "runs": 50,
     "fingerprint": {"device": {"hostname", "machine", "cpu", "board"}, "onnxruntime": "1.32.0",
                     "providers_available": ["cpu"], "provider": "cpu",
                     "settings": {"providers": [...], "precision": "fp32", "input_size": [416, 416],
                                  "threads": 0, "steps": ["precision", "input_size"]},
                     "files": {"/path/NAME.onnx": {"size_bytes": ..., "sha256": ...}, ...}},
     "steps": [<result>, ...],                  # preferred first; the fields of an edged bench --json result
     "dropped": [<result> + {"reason": "..."}, ...],
     "skipped": [{"provider", "precision", "input_size", "reason"}, ...]}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import onnxruntime as ort

from edged.bench import (Measurement, Size, Skipped, Variant, available_providers, check_counts, device_info,
                         measure_or_skip, progress_bar, size_label, table, variant_file)
from edged.config import Config
from edged.demo import demo_model_path
from edged.errors import EdgedError
from edged.inference.detector import Detector, ModelInfo, static_input_size
from edged.inference.session import PRECISIONS, SessionConfig

log = logging.getLogger("edged.ladder")

SCHEMA = "edged.ladder/1"
LADDER_FILE = "ladder.json"
MARGIN = 0.10  # a step's p50 must be at least this much below the step above
DIMENSIONS = ("precision", "input_size")  # the resources.steps a ladder walks
SIZE_FACTORS = (0.75, 0.5)  # smaller input sizes, relative to the top one (dynamic-shape models)
USUAL_PRECISIONS = {"tensorrt": ("fp32", "fp16", "int8"), "cuda": ("fp32", "fp16"),
                    "xnnpack": ("fp32", "int8"), "cpu": ("fp32", "int8")}


@dataclass(frozen=True)
class LadderSpec:
    """What a ladder is for, from the config."""

    model: Path
    session: SessionConfig
    input_size: int | tuple[int, int] | None
    order: tuple[str, ...]  # the dimensions, in the order resources.steps steps down through them
    state_dir: Path

    @classmethod
    def from_config(cls, config: Config) -> LadderSpec:
        return cls(config.model.path or demo_model_path(), config.session_config(), config.model.input_size,
                   tuple(s for s in config.resources.steps if s in DIMENSIONS), config.remote_config.state_dir)

    @property
    def path(self) -> Path:
        return self.state_dir / LADDER_FILE

    def detector(self) -> Detector:
        """The model loaded as the daemon loads it: which provider it gets, and its top input size."""
        return Detector(self.model, self.session, input_size=self.input_size)


@dataclass(frozen=True)
class Step:
    variant: Variant
    measurement: Measurement | None = None  # None in the default (unmeasured) order

    def describe(self) -> str:
        return self.variant.label + (f" {self.measurement.p50:.1f} ms" if self.measurement else "")


@dataclass(frozen=True)
class Dropped:
    measurement: Measurement
    reason: str


@dataclass
class Ladder:
    steps: list[Step]  # preferred first
    note: str  # where it comes from: "measured ..." or why it is the default order
    fingerprint: dict[str, Any]
    created: float | None = None  # None: the default order, unmeasured
    dropped: list[Dropped] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    margin: float = MARGIN
    warmup: int = 0
    runs: int = 0

    @property
    def measured(self) -> bool:
        return self.created is not None

    def summary(self) -> str:
        """One log line."""
        chain = " > ".join(step.describe() for step in self.steps)
        if self.measured:
            return f"ladder: {len(self.steps)} measured steps: {chain} ({self.note})"
        return f"{self.note}: using the default order (unmeasured): {chain}; run `edged model prepare`"

    def report(self) -> str:
        """What ``edged model prepare`` prints."""
        lines = [f"ladder for {self.fingerprint['settings']['model']} ({self.note})"]
        lines.append(table([s.measurement for s in self.steps if s.measurement]))
        lines += [f"dropped {d.measurement.variant.label}: {d.reason}" for d in self.dropped]
        lines += [f"skipped {s.describe()}" for s in self.skipped]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "created": self.created, "margin": self.margin, "warmup": self.warmup,
                "runs": self.runs, "fingerprint": self.fingerprint,
                "steps": [s.measurement.to_json() for s in self.steps if s.measurement],
                "dropped": [{**d.measurement.to_json(), "reason": d.reason} for d in self.dropped],
                "skipped": [s.to_json() for s in self.skipped]}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> Ladder:
        created = float(data["created"])
        steps = [Measurement.from_json(m) for m in data["steps"]]
        return cls([Step(m.variant, m) for m in steps], _measured_note(steps[0].variant.provider, created, path),
                   data["fingerprint"], created,
                   [Dropped(Measurement.from_json(d), d["reason"]) for d in data["dropped"]],
                   [Skipped.from_json(s) for s in data["skipped"]], data["margin"], data["warmup"], data["runs"])


def walk(precisions: Sequence[str], sizes: Sequence[Size], order: Sequence[str],
         accept: Callable[[str, Size], bool]) -> list[tuple[str, Size]]:
    """The (precision, size) steps down from ``(precisions[0], sizes[0])``.

    Along each dimension in ``order``, every further value (the other dimension held at the last
    step's) is a candidate; those ``accept`` takes become steps.
    """
    path = [(precisions[0], sizes[0])]
    for dimension in order:
        axis = DIMENSIONS.index(dimension)
        values: list[Any] = list(precisions if axis == 0 else sizes)
        for value in values[values.index(path[-1][axis]) + 1:]:
            candidate = (value, path[-1][1]) if axis == 0 else (path[-1][0], value)
            if accept(*candidate):
                path.append(candidate)
    return path


def build_ladder(measure: Callable[[str, Size], Measurement | None], precisions: Sequence[str],
                 sizes: Sequence[Size], order: Sequence[str] = DIMENSIONS,
                 margin: float = MARGIN) -> tuple[list[Measurement], list[Dropped]]:
    """The measured steps, each with a p50 at least ``margin`` below the step above, and the candidates
    dropped on the way. ``measure`` gives None for a variant that cannot run here."""
    top = measure(precisions[0], sizes[0])
    if top is None:
        raise EdgedError(f"the preferred variant {precisions[0]}@{size_label(sizes[0])} cannot run here")
    steps: list[Measurement] = [top]
    dropped: list[Dropped] = []

    def accept(precision: str, size: Size) -> bool:
        candidate, above = measure(precision, size), steps[-1]
        if candidate is None:
            return False
        if candidate.p50 <= above.p50 * (1 - margin):
            steps.append(candidate)
            return True
        dropped.append(Dropped(candidate, f"p50 {candidate.p50:.2f} ms is not {margin:.0%} below "
                                          f"{above.variant.label}'s {above.p50:.2f} ms"))
        return False

    walk(precisions, sizes, order, accept)
    return steps, dropped


def ladder_sizes(top: Size, info: ModelInfo) -> list[Size]:
    """The top size, then (dynamic-shape models only) smaller ones rounded to the model's stride."""
    if static_input_size(info):
        return [top]
    stride_text = info.metadata.get("stride", "")
    stride = int(stride_text) if stride_text.isdigit() else 32
    sizes = [top]
    for factor in SIZE_FACTORS:
        size = (max(stride, round(top[0] * factor / stride) * stride),
                max(stride, round(top[1] * factor / stride) * stride))
        if size not in sizes:
            sizes.append(size)
    return sizes


def fingerprint(spec: LadderSpec, detector: Detector) -> dict[str, Any]:
    """What the measurements depend on (as JSON data): any change makes a ladder stale."""
    files = sorted({variant_file(spec.model, p, detector.provider) for p in PRECISIONS})
    session = spec.session
    return json.loads(json.dumps({
        "device": device_info(),
        "onnxruntime": ort.__version__,
        "providers_available": available_providers(),
        "provider": detector.provider,
        "settings": {"model": str(spec.model), "providers": session.providers, "precision": session.precision,
                     "input_size": detector.input_size, "threads": session.threads, "steps": spec.order},
        "files": {str(f): {"size_bytes": f.stat().st_size, "sha256": _sha256(f)} for f in files if f.is_file()},
    }))


def stale_reasons(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    reasons = []
    for key, now in current.items():
        was = recorded.get(key)
        if was == now:
            continue
        if isinstance(now, dict) and isinstance(was, dict):
            changed = sorted(k for k in now.keys() | was.keys() if now.get(k) != was.get(k))
            reasons.append(f"{key} changed: {', '.join(changed)}")
        else:
            reasons.append(f"{key}: {was} recorded, {now} now")
    return reasons


def load_ladder(spec: LadderSpec, detector: Detector) -> Ladder:
    """The measured ladder in ``spec.state_dir`` if it is there and fresh, else the default order
    (``note`` says why)."""
    current = fingerprint(spec, detector)
    try:
        data = json.loads(spec.path.read_text())
        reasons = [f"schema {data.get('schema')}"] if data.get("schema") != SCHEMA else \
            stale_reasons(data["fingerprint"], current)
        if not reasons:
            return Ladder.from_json(data, spec.path)
        note = f"the ladder {spec.path} is stale ({'; '.join(reasons)})"
    except FileNotFoundError:
        note = f"no measured ladder in {spec.state_dir}"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        note = f"the ladder {spec.path} is unreadable ({type(exc).__name__}: {exc})"
    return default_ladder(spec, detector, note, current)


def default_ladder(spec: LadderSpec, detector: Detector, note: str, current: dict[str, Any]) -> Ladder:
    """The unmeasured order: the provider's usual precisions among the files present, then smaller sizes."""
    provider = detector.provider
    preferred = PRECISIONS.index(spec.session.precision)
    usual = [PRECISIONS[preferred]] + [p for p in PRECISIONS[preferred + 1:] if p in USUAL_PRECISIONS[provider]
                                       and variant_file(spec.model, p, provider).is_file()]
    path = walk(usual, ladder_sizes(detector.input_size, detector.info), spec.order, lambda *_: True)
    return Ladder([Step(Variant(variant_file(spec.model, p, provider), provider, p, s)) for p, s in path], note,
                  current)


def prepare(spec: LadderSpec, *, warmup: int, runs: int, force: bool = False) -> tuple[Ladder, bool]:
    """The ladder for this device, and whether it was measured now: the one in ``spec.state_dir`` if it
    is fresh (and not ``force``), else measured and written there."""
    check_counts(warmup, runs)
    detector = spec.detector()
    existing = load_ladder(spec, detector)
    if existing.measured and not force:
        return existing, False
    log.info("%s: measuring", "--force" if existing.measured else existing.note)
    provider, top, current = detector.provider, detector.input_size, existing.fingerprint
    sizes = ladder_sizes(top, detector.info)
    del detector  # freed before the first variant's memory baseline
    precisions = PRECISIONS[PRECISIONS.index(spec.session.precision):]
    candidates = 1 + sum(len(precisions if d == "precision" else sizes) - 1 for d in spec.order)  # at most
    skipped: list[Skipped] = []
    with progress_bar(candidates * (warmup + runs)) as bar:
        def measure(precision: str, size: Size) -> Measurement | None:
            variant = Variant(variant_file(spec.model, precision, provider), provider, precision, size)
            result = measure_or_skip(variant, spec.session, warmup=warmup, runs=runs, bar=bar)
            if isinstance(result, Skipped):
                log.info("skipped %s", result.describe())
                skipped.append(result)
                return None
            return result

        steps, dropped = build_ladder(measure, precisions, sizes, spec.order)
    created = time.time()
    ladder = Ladder([Step(m.variant, m) for m in steps], _measured_note(provider, created, spec.path), current,
                    created, dropped, skipped, MARGIN, warmup, runs)
    write_ladder(spec.path, ladder)
    return ladder, True


def write_ladder(path: Path, ladder: Ladder) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("w") as f:
            json.dump(ladder.to_json(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise EdgedError(f"cannot write the ladder {path}: {exc.strerror}") from exc


def _measured_note(provider: str, created: float, path: Path) -> str:
    return f"{provider}, measured {time.strftime('%Y-%m-%d %H:%M', time.localtime(created))}, {path}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
