"""Interleaved benchmark rounds, and the rejection of rounds that ran beside other load.

Machines here are shared: someone else's build during a run slows whichever loop it overlaps,
and that shows up as a ratio, not as visible noise. So a round runs every case once, in an
order that rotates from round to round and runs backwards every other round (no case always goes
first or last, nor always after the same one), and measures the
other load beside each case: the busy CPU time of the whole machine (``/proc/stat``) minus that
of the processes the benchmark runs, averaged over the case's run. A round in which any case
ran beside more other load than a threshold is reported, marked rejected and left out of the
medians: one loaded case skews the round's ratios, however quiet the rest of the round was.

The ratios are pairs of cases, each case's fps over another's within a round (``over``: several measured cases
over several baselines); the report gives each one's value in every round, and its median with its spread over
the accepted rounds.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
from tqdm import tqdm

CLK_TCK = os.sysconf("SC_CLK_TCK")  # the unit of the times in /proc/stat and /proc/<pid>/stat
BASELINES = ("bare_inference", "bare_full")
MEASURED = "edged"

Case = Callable[[], dict[str, Any]]  # one run; returns at least {"fps": ...}
Ratio = tuple[str, str]  # (case, baseline): the case's fps over the baseline's, within one round


def over(measured: Sequence[str], baselines: Sequence[str]) -> tuple[Ratio, ...]:
    """Each measured case over each baseline."""
    return tuple((case, baseline) for case in measured for baseline in baselines)


EDGED_OVER_BARE = over((MEASURED,), BASELINES)


def ratio_name(ratio: Ratio) -> str:
    """A ratio's key in ``Round.ratios`` and the JSON: ``case/baseline``."""
    return "/".join(ratio)


def display_name(name: str) -> str:
    """A case's or ratio's name as the reports print it: ``edged / bare inference``."""
    return name.replace("_", " ").replace("/", " / ")


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
    compared: Sequence[Ratio] = EDGED_OVER_BARE
    ratios: dict[str, float] = field(init=False)  # ratio_name -> the ratio in this round

    def __post_init__(self) -> None:
        self.ratios = {ratio_name((case, baseline)): self.results[case]["fps"] / self.results[baseline]["fps"]
                       for case, baseline in self.compared}

    def to_json(self) -> dict[str, Any]:
        results = {name: {**result, "fps": round(result["fps"], 2)} for name, result in self.results.items()}
        return {"order": self.order, "results": results, "seconds": round(self.seconds, 1),
                "other_load_cores": {name: round(cores, 3) for name, cores in self.other_cores.items()},
                "accepted": self.accepted, "ratios": {name: round(r, 3) for name, r in self.ratios.items()}}


def add_options(parser: argparse.ArgumentParser, repeats: int = 3) -> None:
    parser.add_argument("--repeats", type=int, default=repeats,
                        help=f"rounds; each runs every case once, in rotating order (default {repeats})")
    parser.add_argument("--max-other-load", type=float, default=0.15, metavar="CORES",
                        help="reject a round in which a case ran beside more CPU load than this from other "
                             "processes, in cores averaged over the case's run (default 0.15)")


def run_rounds(cases: dict[str, Case], repeats: int, max_other: float, bar: tqdm, label: str,
               watch: Sequence[int] = (), compared: Sequence[Ratio] = EDGED_OVER_BARE) -> list[Round]:
    """``repeats`` rounds of every case; round i starts i cases further along, and every other round runs
    backwards, so that no case always follows the same one (a case can leave the machine busy for the next:
    ONNX Runtime's threads winding down, a daemon's exit). Each round's ratios are ``compared``'s (``over``
    makes them)."""
    names = list(cases)
    rounds = []
    for index in range(repeats):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        if index % 2:
            order.reverse()
        results, other, seconds = {}, {}, 0.0
        for name in order:
            bar.set_postfix_str(f"{label} round {index + 1} {name}")
            with LoadMeter(watch) as meter:
                results[name] = cases[name]()
            other[name], seconds = meter.other_cores, seconds + meter.seconds
            bar.update()
        rounds.append(Round(order, results, other, seconds, max(other.values()) <= max_other, compared))
    return rounds


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, interquartile range (25th to 75th percentile, interpolated linearly: of 5 values, the 2nd and the
    4th smallest) and range."""
    low, q1, median, q3, high = (round(float(v), 3) for v in np.percentile(values, [0, 25, 50, 75, 100]))
    return {"median": median, "interquartile_range": [q1, q3], "range": [low, high]}


def summarize(rounds: list[Round], max_other: float) -> dict[str, Any]:
    """Per-round figures, and over the accepted rounds (none when no round was) each case's median fps and each
    ratio's median and spread."""
    accepted = [r for r in rounds if r.accepted]
    summary: dict[str, Any] = {"max_other_load": max_other, "rounds": [r.to_json() for r in rounds],
                               "accepted": len(accepted), "rejected": len(rounds) - len(accepted)}
    if accepted:
        summary["median_fps"] = {name: round(float(np.median([r.results[name]["fps"] for r in accepted])), 1)
                                 for name in rounds[0].order}  # the first round runs the cases in their given order
        summary["ratios"] = {name: spread([r.ratios[name] for r in accepted]) for name in accepted[0].ratios}
    return summary


def columns(rows: list[list[str]], indent: str = "    ") -> list[str]:
    """Rows as aligned text columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]


def ratio_table(rounds: list[Round], summary: dict[str, Any]) -> list[str]:
    """One row per ratio: its value in each round (``*``: rejected), then its median and spread over the
    accepted rounds (when there are any)."""
    stats = summary.get("ratios")
    header = ["fps ratio", *(f"round {i}" for i in range(1, len(rounds) + 1))]
    title = "  fps ratios by round (*: rejected for load, left out)"
    if stats:
        header += ["median", "interquartile range", "range"]
        title += (f"; over the {summary['accepted']} accepted: median, interquartile range (25th to 75th "
                  f"percentile), range (min to max)")
    rows = [header]
    for name in rounds[0].ratios:
        row = [display_name(name), *(f"{r.ratios[name]:.3f}{' ' if r.accepted else '*'}" for r in rounds)]
        if stats:
            s = stats[name]
            row += [f"{s['median']:.3f}", "{:.3f} to {:.3f}".format(*s["interquartile_range"]),
                    "{:.3f} to {:.3f}".format(*s["range"])]
        rows.append(row)
    return [title + ":", *columns(rows)]


def report(rounds: list[Round], summary: dict[str, Any], extra: Callable[[Round], str] | None = None) -> list[str]:
    """One line per round (``extra`` adds a line below it), the ratios' table, then the median fps, or a line
    saying there are no medians."""
    lines, max_other = [], summary["max_other_load"]
    for index, r in enumerate(rounds, 1):
        fps = ", ".join(f"{display_name(name)} {r.results[name]['fps']:.1f} fps (other load {r.other_cores[name]:.2f})"
                        for name in r.order)
        verdict = "accepted" if r.accepted else f"REJECTED: other load over {max_other} cores"
        lines.append(f"  round {index}, {r.seconds:.0f} s: {fps}; {verdict}")
        if extra:
            lines.append(f"    {extra(r)}")
    lines += ratio_table(rounds, summary)
    if not summary["accepted"]:
        lines.append(f"  NO ROUND ACCEPTED: in all {len(rounds)}, a case ran beside more than {max_other} cores of "
                     f"other load; no ratio reported (run again on a quieter machine, or raise --max-other-load)")
        return lines
    lines.append(f"  median fps of {summary['accepted']} accepted rounds ({summary['rejected']} rejected for load): "
                 + ", ".join(f"{display_name(name)} {fps:.1f}" for name, fps in summary["median_fps"].items()))
    return lines


def plot(summaries: dict[str, dict[str, Any]], path: Path) -> None:
    """A PNG, one panel per summary (its title the key): each ratio by round, rejected rounds hollow, and its
    median over the accepted rounds as a dashed line."""
    import matplotlib  # only with --plot: in the dev extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(summaries), 1, figsize=(8, 3.2 * len(summaries)), dpi=100, squeeze=False)
    for ax, (title, summary) in zip(axes[:, 0], summaries.items()):
        rounds = summary["rounds"]
        x = np.arange(1, len(rounds) + 1)
        kept = np.array([r["accepted"] for r in rounds])
        names = list(rounds[0]["ratios"])
        for i, name in enumerate(names):
            values = np.array([r["ratios"][name] for r in rounds])
            shifted = x + 0.05 * (i - (len(names) - 1) / 2)  # side by side within a round, not on top of each other
            line, = ax.plot(shifted[kept], values[kept], "o", label=display_name(name))
            ax.plot(shifted[~kept], values[~kept], "o", mfc="none", color=line.get_color())
            if "ratios" in summary:
                ax.axhline(summary["ratios"][name]["median"], ls="--", lw=1, color=line.get_color())
        ax.axhline(1.0, lw=0.8, color="grey")
        ax.set_xticks(x)
        ax.set_xlabel("round (hollow: rejected for load; dashed: median of the accepted)")
        ax.set_ylabel("fps ratio")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
