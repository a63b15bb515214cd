"""benchmarks/rounds.py: rotation, ratios of several measured cases, medians and spread, the report."""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from rounds import Round, over, plot, report, run_rounds, summarize  # noqa: E402

CASES = ("base", "on", "off")
COMPARED = over(("on", "off"), ("base",)) + (("on", "off"),)


def fabricated(fps: dict[str, float], accepted: bool = True) -> Round:
    return Round(list(fps), {name: {"fps": value} for name, value in fps.items()},
                 {name: 0.0 if accepted else 0.5 for name in fps}, 10.0, accepted, COMPARED)


def test_several_measured_cases_each_over_each_baseline_and_over_each_other() -> None:
    assert over(("on", "off"), ("a", "b")) == (("on", "a"), ("on", "b"), ("off", "a"), ("off", "b"))
    r = fabricated({"base": 10.0, "on": 9.0, "off": 12.0})
    assert r.ratios == {"on/base": 0.9, "off/base": 1.2, "on/off": 0.75}
    assert r.to_json()["ratios"] == {"on/base": 0.9, "off/base": 1.2, "on/off": 0.75}


def test_medians_and_spread_leave_rejected_rounds_out() -> None:
    on = [9.0, 8.0, 10.0, 7.0, 11.0]  # over base 10: 0.7 to 1.1
    rounds = [fabricated({"base": 10.0, "on": value, "off": 10.0}) for value in on]
    rounds.insert(2, fabricated({"base": 10.0, "on": 1.0, "off": 20.0}, accepted=False))
    summary = summarize(rounds, 0.15)
    assert (summary["accepted"], summary["rejected"]) == (5, 1)
    assert list(summary["median_fps"]) == list(CASES)
    assert summary["median_fps"] == {"base": 10.0, "on": 9.0, "off": 10.0}
    # Of 5 values, the interquartile range runs from the 2nd to the 4th smallest.
    assert summary["ratios"]["on/base"] == {"median": 0.9, "interquartile_range": [0.8, 1.0], "range": [0.7, 1.1]}
    assert summary["ratios"]["on/off"] == summary["ratios"]["on/base"]
    assert summary["ratios"]["off/base"] == {"median": 1.0, "interquartile_range": [1.0, 1.0], "range": [1.0, 1.0]}
    assert [r["accepted"] for r in summary["rounds"]] == [True, True, False, True, True, True]

    lines = report(rounds, summary, lambda r: f"extra {r.results['on']['fps']}")
    assert "REJECTED: other load over 0.15 cores" in lines[4] and lines[5] == "    extra 1.0"
    row = next(line.split() for line in lines if line.strip().startswith("on / off"))
    assert row[3:] == ["0.900", "0.800", "0.050*", "1.000", "0.700", "1.100", "0.900", "0.800", "to", "1.000",
                       "0.700", "to", "1.100"]
    assert lines[-1].startswith("  median fps of 5 accepted rounds (1 rejected for load): base 10.0, on 9.0")


def test_no_accepted_round_reports_each_round_and_no_median() -> None:
    rounds = [fabricated({"base": 10.0, "on": 9.0, "off": 10.0}, accepted=False)]
    summary = summarize(rounds, 0.15)
    assert "ratios" not in summary and "median_fps" not in summary
    lines = report(rounds, summary)
    assert [line.split() for line in lines if line.strip().startswith("on / base")] == [["on", "/", "base", "0.900*"]]
    assert lines[-1].startswith("  NO ROUND ACCEPTED")


def test_rounds_rotate_and_reverse_the_order_and_compare_what_they_are_told(tmp_path: Path) -> None:
    ran: list[str] = []

    def case(name: str, fps: float) -> dict[str, float]:
        ran.append(name)
        return {"fps": fps}

    cases = {"base": lambda: case("base", 4.0), "on": lambda: case("on", 2.0), "off": lambda: case("off", 3.0)}
    with tqdm(disable=True) as bar:
        rounds = run_rounds(cases, 4, float("inf"), bar, "test", compared=COMPARED)
    # Rotated, and every other round backwards: "on" follows "base", then "off", then "base", then "off".
    assert [r.order for r in rounds] == [list(CASES), ["base", "off", "on"], ["off", "base", "on"],
                                         ["off", "on", "base"]]
    assert ran == [name for r in rounds for name in r.order]
    assert all(r.accepted and r.ratios == {"on/base": 0.5, "off/base": 0.75, "on/off": 2 / 3} for r in rounds)

    path = tmp_path / "rounds.png"
    plot({"model": summarize(rounds, float("inf"))}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
