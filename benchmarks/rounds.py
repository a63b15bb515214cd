"""Interleaved benchmark rounds, and the rejection of rounds that ran beside other load.

Machines here are shared: someone else's build during a run slows whichever loop it overlaps,
and that shows up as a ratio, not as visible noise. So a round runs every case once, in an
order that rotates from round to round (no case always goes first or last), and measures the
other load beside each case: the busy CPU time of the whole machine (``/proc/stat``) minus that
of the processes the benchmark runs, averaged over the case's run. A round in which any case
ran beside more other load than a threshold is reported, marked rejected and left out of the
medians: one loaded case skews the round's ratios, however quiet the rest of the round was.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from tqdm import tqdm

CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of the times in /proc/stat and /proc/<pid>/stat
BASELINES = ("bare_inference", "bare_full")
MEASURED = "edged"

Case = Callable[[], dict[str, Any]]  # one run; returns at least {"fps": ...}


def machine_busy_ticks() -> int:
    """Busy time of all CPUs together: user, nice, system, irq, softirq, and steal (time the
    hypervisor gave to another guest, which the benchmark loses just the same). Guest time is
    already counted in user and nice."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return user + nice + system + irq + softirq + steal


def process_ticks(pid: int | str = "self") -> int:
    """CPU time of a process (all its threads) and of the children it has reaped: utime, stime,
    cutime and cstime. 0 once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return sum(int(v) for v in fields[11:15])


class LoadMeter:
    """Over a ``with`` block: its wall time, and the other load, in cores (1.0: one CPU busy
    all along) averaged over it.

    Ours is this process and ``watch``: the pids of its children that live across the block (the
    broker; the daemon during a latency measurement). Children started and reaped within the block
    (the daemon in a throughput run) need no watching: reaping adds their time to this process's
    cutime and cstime. A watched child reaped within the block is right too: it reads 0 at the end
    while its whole time moves to cutime and cstime.
    """

    def __init__(self, watch: Sequence[int] = ()):
        self.watch = list(watch)
        self.seconds = 0.0
        self.other_cores = 0.0

    def _ticks(self) -> tuple[float, int, int]:
        return time.monotonic(), machine_busy_ticks(), process_ticks() + sum(map(process_ticks, self.watch))

    def __enter__(self) -> Self:
        self._start = self._ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        (t0, busy0, ours0), (t1, busy1, ours1) = self._start, self._ticks()
        self.seconds = t1 - t0
        self.other_cores = ((busy1 - busy0) - (ours1 - ours0)) / CLK_TCK / self.seconds


@dataclass
class Round:
    order: list[str]
    results: dict[str, dict[str, Any]]  # case name -> what its run returned
    other_cores: dict[str, float]  # case name -> other load beside its run
    seconds: float
    accepted: bool
    measured: str = MEASURED
    baselines: tuple[str, ...] = BASELINES
    ratios: dict[str, float] = field(init=False)  # the measured case's fps over each baseline's

    def __post_init__(self) -> None:
        self.ratios = {b: self.results[self.measured]["fps"] / self.results[b]["fps"] for b in self.baselines}

    def to_json(self) -> dict[str, Any]:
        results = {name: {**result, "fps": round(result["fps"], 2)} for name, result in self.results.items()}
        return {"order": self.order, "results": results, "seconds": round(self.seconds, 1),
                "other_load_cores": {name: round(cores, 3) for name, cores in self.other_cores.items()},
                "accepted": self.accepted, "ratios": {b: round(r, 3) for b, r in self.ratios.items()}}


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds; each runs the bare loops and edged once, in rotating order (default 3)")
    parser.add_argument("--max-other-load", type=float, default=0.15, metavar="CORES",
                        help="reject a round in which a case ran beside more CPU load than this from other "
                             "processes, in cores averaged over the case's run (default 0.15)")


def run_rounds(cases: dict[str, Case], repeats: int, max_other: float, bar: tqdm, label: str,
               watch: Sequence[int] = (), measured: str = MEASURED,
               baselines: tuple[str, ...] = BASELINES) -> list[Round]:
    """``repeats`` rounds of every case; round i starts i cases further along. Each round's ratios are
    ``measured``'s fps over each of ``baselines``'."""
    names = list(cases)
    rounds = []
    for index in range(repeats):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        results, other, seconds = {}, {}, 0.0
        for name in order:
            bar.set_postfix_str(f"{label} round {index + 1} {name}")
            with LoadMeter(watch) as meter:
                results[name] = cases[name]()
            other[name], seconds = meter.other_cores, seconds + meter.seconds
            bar.update()
        rounds.append(Round(order, results, other, seconds, max(other.values()) <= max_other, measured, baselines))
    return rounds


def summarize(rounds: list[Round], max_other: float) -> dict[str, Any]:
    """Per-round figures, and medians over the accepted rounds (none when no round was)."""
    accepted = [r for r in rounds if r.accepted]
    summary: dict[str, Any] = {"max_other_load": max_other, "rounds": [r.to_json() for r in rounds],
                               "accepted": len(accepted), "rejected": len(rounds) - len(accepted)}
    if accepted:
        first = accepted[0]
        summary["median_fps"] = {name: round(statistics.median(r.results[name]["fps"] for r in accepted), 1)
                                 for name in (*first.baselines, first.measured)}
        summary["median_ratio"] = {b: round(statistics.median(r.ratios[b] for r in accepted), 3)
                                   for b in first.baselines}
    return summary


def report(rounds: list[Round], summary: dict[str, Any], extra: Callable[[Round], str] | None = None) -> list[str]:
    """One line per round (``extra`` adds to it), then ``summary``'s medians, or a line saying there are none."""
    lines, max_other = [], summary["max_other_load"]
    for index, r in enumerate(rounds, 1):
        fps = ", ".join(f"{name.replace('_', ' ')} {r.results[name]['fps']:.1f} fps (other load "
                        f"{r.other_cores[name]:.2f})" for name in r.order)
        verdict = "accepted" if r.accepted else f"REJECTED: other load over {max_other} cores"
        lines.append(f"  round {index}, {r.seconds:.0f} s: {fps}; edged / bare inference "
                     f"{r.ratios['bare_inference']:.3f}, edged / bare full {r.ratios['bare_full']:.3f}; {verdict}"
                     + (f"; {extra(r)}" if extra else ""))
    if not summary["accepted"]:
        lines.append(f"  NO ROUND ACCEPTED: in all {len(rounds)}, a case ran beside more than {max_other} cores of "
                     f"other load; no ratio reported (run again on a quieter machine, or raise --max-other-load)")
        return lines
    f, ratio = summary["median_fps"], summary["median_ratio"]
    lines.append(f"  median of {summary['accepted']} accepted rounds ({summary['rejected']} rejected for load): "
                 f"edged / bare inference {ratio['bare_inference']:.3f}, edged / bare full {ratio['bare_full']:.3f} "
                 f"(bare inference {f['bare_inference']:.1f}, bare full {f['bare_full']:.1f}, "
                 f"edged {f['edged']:.1f} fps)")
    return lines
