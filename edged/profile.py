"""``edged profile``: ONNX Runtime's per-operator profile of a detector on a rendered frame."""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edged.errors import EdgedError
from edged.inference.detector import Detector
from edged.inference.session import PROVIDERS, SessionConfig, short_name
from edged.synthetic import render_scene

# A node's compute time; older ONNX Runtime builds also log *_fence_before/_fence_after events, which are not.
KERNEL_SUFFIX = "_kernel_time"
SCENE_SEED = 3  # a frame with shapes on a textured background


@dataclass(frozen=True)
class OpStat:
    """Time spent in one operator type on one provider, over the measured runs."""

    op_type: str
    provider: str  # short name: cpu, cuda, tensorrt, ...
    total_ms: float
    share: float  # % of all operator time
    calls: int
    fell_back: bool  # an accelerator was in use, and this ran on another provider

    @property
    def mean_us(self) -> float:
        return self.total_ms * 1000 / self.calls

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(total_ms=round(self.total_ms, 3), share=round(self.share, 2), mean_us=round(self.mean_us, 1))
        return data


@dataclass(frozen=True)
class NodeStat(OpStat):
    """The same, for one node of the graph (as ONNX Runtime names it after its graph optimizations)."""

    node: str


@dataclass(frozen=True)
class ProfileReport:
    model: Path
    providers: list[str]  # the session's, in preference order
    input_size: tuple[int, int]  # height, width
    threads: int  # 0: automatic
    warmup: int
    run_ms: list[float]  # each measured run, as ONNX Runtime timed it
    operators: list[OpStat]  # by operator type and provider, slowest first
    nodes: list[NodeStat]  # slowest first
    trace: Path  # the Chrome trace, warm-up runs included

    @property
    def runs(self) -> int:
        return len(self.run_ms)

    @property
    def operator_ms_per_run(self) -> float:
        return sum(op.total_ms for op in self.operators) / self.runs

    def to_json(self, top: int = 15) -> dict[str, Any]:
        """Every operator type, the ``top`` slowest nodes."""
        return {
            "model": str(self.model), "providers": self.providers, "input_size": list(self.input_size),
            "threads": self.threads, "warmup": self.warmup, "runs": self.runs,
            "run_ms": {"median": round(statistics.median(self.run_ms), 3),
                       "mean": round(statistics.fmean(self.run_ms), 3)},
            "operator_ms_per_run": round(self.operator_ms_per_run, 3),
            "operators": [op.to_json() for op in self.operators],
            "nodes": [node.to_json() for node in self.nodes[:top]],
            "trace": str(self.trace),
        }

    def format(self, top: int = 15) -> str:
        """The ``top`` operator types and nodes as tables, and where the trace is."""
        height, width = self.input_size
        lines = [
            f"model:  {self.model}  ({width}x{height}, providers {', '.join(self.providers)}, "
            f"threads {self.threads or 'auto'})",
            f"runs:   {self.runs} after {self.warmup} warm-up: {statistics.median(self.run_ms):.2f} ms median per run, "
            f"{self.operator_ms_per_run:.2f} ms of it in operators",
            "",
            _header(),
            *(_row(rank, op) for rank, op in enumerate(self.operators[:top], 1)),
        ]
        rest = self.operators[top:]
        if rest:
            lines.append(f"      ... {len(rest)} more, {sum(op.share for op in rest):.1f}% together")
        fell_back = [op for op in self.operators if op.fell_back]
        if fell_back:
            lines.append(f"not on {self.providers[0]}: " + ", ".join(f"{op.op_type} on {op.provider}" for op in fell_back)
                         + f" ({sum(op.share for op in fell_back):.1f}% of operator time)")
        lines += ["", _header("node"), *(_row(rank, node, node.node) for rank, node in enumerate(self.nodes[:top], 1))]
        lines += ["", f"trace: {self.trace} (open in chrome://tracing or https://ui.perfetto.dev)"]
        return "\n".join(lines)


def _header(last: str = "") -> str:
    return f"{'rank':>4}  {'op type':<20} {'provider':<9} {'total ms':>9} {'%':>6} {'calls':>6} {'mean µs':>9}  {last}".rstrip()


def _row(rank: int, stat: OpStat, last: str = "") -> str:
    flag = f"  (fell back to {stat.provider})" if stat.fell_back else ""
    return (f"{rank:>4}  {stat.op_type:<20} {stat.provider:<9} {stat.total_ms:>9.2f} {stat.share:>5.1f}% {stat.calls:>6} "
            f"{stat.mean_us:>9.1f}  {last}{flag}").rstrip()


def profile(model: str | Path, *, providers: Sequence[str] = tuple(PROVIDERS), threads: int = 0, runs: int = 20,
            warmup: int = 3, input_size: int | tuple[int, int] | None = None,
            out_dir: str | Path = ".") -> ProfileReport:
    """Profile ``runs`` inferences after ``warmup`` ones; keep the trace in ``out_dir`` as
    ``<model>-profile-<timestamp>.json``. Raises ModelError for a model edged cannot run."""
    if runs < 1 or warmup < 0:
        raise EdgedError(f"runs must be at least 1 and warm-up runs at least 0, not {runs} and {warmup}")
    model = Path(model)
    with tempfile.TemporaryDirectory(prefix="edged-profile-") as tmp:
        config = SessionConfig(providers=tuple(providers), threads=threads, profile_prefix=Path(tmp) / model.stem)
        detector = Detector(model, config, input_size=input_size)
        blob, _ = detector.preprocess(render_scene(np.random.default_rng(SCENE_SEED))[0])
        for _ in range(warmup + runs):
            detector.infer(blob)
        raw = Path(detector.session.end_profiling())
        kernels, run_ms = read_trace(raw, runs)
        trace = _keep(raw, Path(out_dir), f"{model.stem}-profile-{time.strftime('%Y%m%d-%H%M%S')}.json")
    operators, nodes = aggregate(kernels, detector.providers[0])
    return ProfileReport(model, detector.providers, detector.input_size, threads, warmup, run_ms, operators, nodes,
                         trace)


def read_trace(path: Path, runs: int) -> tuple[list[dict[str, Any]], list[float]]:
    """The kernel events of the last ``runs`` runs in an ONNX Runtime Chrome trace, and those runs' times (ms).

    Earlier runs (the detector's own warm-up, ours) are left out.
    """
    events = json.loads(path.read_text())
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])[-runs:]
    start = model_runs[0]["ts"] if model_runs else 0
    kernels = [e for e in events
               if e.get("cat") == "Node" and e.get("name", "").endswith(KERNEL_SUFFIX) and e["ts"] >= start]
    return kernels, [e["dur"] / 1000 for e in model_runs]


def aggregate(kernels: list[dict[str, Any]], first_provider: str) -> tuple[list[OpStat], list[NodeStat]]:
    """Totals by (operator type, provider) and by node, slowest first.

    When the first provider is an accelerator, whatever ran elsewhere is flagged as fallen back.
    """
    by_op: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # key -> [µs, calls]
    by_node: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for event in kernels:
        args = event.get("args", {})
        op_type, provider = args.get("op_name", "?"), short_name(args.get("provider", "?"))
        node = event["name"][: -len(KERNEL_SUFFIX)]
        for totals in (by_op[op_type, provider], by_node[node, op_type, provider]):
            totals[0] += event["dur"]
            totals[1] += 1
    total_us = sum(us for us, _ in by_op.values()) or 1

    def fell_back(provider: str) -> bool:
        return first_provider != "cpu" and provider != first_provider

    operators = [OpStat(op_type, provider, us / 1000, 100 * us / total_us, calls, fell_back(provider))
                 for (op_type, provider), (us, calls) in by_op.items()]
    nodes = [NodeStat(op_type, provider, us / 1000, 100 * us / total_us, calls, fell_back(provider), node)
             for (node, op_type, provider), (us, calls) in by_node.items()]
    return (sorted(operators, key=lambda s: s.total_ms, reverse=True),
            sorted(nodes, key=lambda s: s.total_ms, reverse=True))


def _keep(raw: Path, out_dir: Path, name: str) -> Path:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(raw, out_dir / name))
    except OSError as exc:
        raise EdgedError(f"{out_dir}: cannot keep the trace there ({exc.strerror or exc})") from exc
