"""How benchmarks 1 and 2 turn interleaved passes into figures: medians for every contender, never a
best-of, with the spread beside each (pure functions; no benchmark is run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from _harness import Spread  # noqa: E402
from bench_fanout import Pass, summarise  # noqa: E402


def one_pass(raw: float, mjasync: float, **others: float) -> Pass:
    cpu = {"raw_aiohttp": raw, "mjasync": mjasync, **others}
    return {name: {"cpu_us_per_job": us, "jobs_per_second": 1e6 / us} for name, us in cpu.items()}


def test_a_spread_is_the_median_and_range() -> None:
    assert Spread.of([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0, 3)
    assert Spread.of([4.0, 1.0, 2.0, 3.0]).median == 2.5
    assert Spread.of([183.0]).describe("µs") == "1 pass"
    assert Spread.of([183.0, 190.0, 201.4]).describe("µs") == "median of 3 passes, 183–201 µs"
    with pytest.raises(ValueError, match="no measurements"):
        Spread.of([])


def test_one_lucky_pass_does_not_decide_a_figure() -> None:
    """mjasync had one cheap pass and raw aiohttp none: the figure is the median, so is the ratio."""
    passes = [
        one_pass(100, 160),
        one_pass(100, 125),
        one_pass(100, 95),
        one_pass(100, 124),
        one_pass(100, 126),
    ]
    figures, medians = summarise("1 fan-out (JSON)", passes, 1.15)
    assert medians == {"raw_aiohttp": 100, "mjasync": 125}
    cpu = {f.contender: f for f in figures if f.metric == "CPU per job"}
    assert cpu["mjasync"].value == 125 and cpu["mjasync"].ratio == pytest.approx(1.25)
    assert cpu["mjasync"].met is False and cpu["mjasync"].target == "<= 1.15×"
    assert cpu["mjasync"].note.startswith("median of 5 passes, 95–160 µs")
    assert "ratio pass by pass 0.95–1.60×, median 1.25×" in cpu["mjasync"].note
    assert cpu["raw_aiohttp"].note == "median of 5 passes, 100–100 µs"


def test_every_contender_is_held_to_its_median_however_many_passes_it_had() -> None:
    """Slow contenders run fewer passes than the pair the target compares; each gets its own median."""
    passes = [
        one_pass(100, 110, httpx=2000),
        one_pass(120, 130, httpx=3000),
        one_pass(110, 120, httpx=1000),
        one_pass(90, 100),
    ]
    figures, medians = summarise("2 streamed jobs", passes, 1.2)
    assert medians == {"raw_aiohttp": 105, "mjasync": 115, "httpx": 2000}
    throughput = {f.contender: f for f in figures if f.metric == "throughput"}
    assert throughput["httpx"].value == pytest.approx(500)
    assert throughput["httpx"].note.startswith("median of 3 passes")
    assert throughput["mjasync"].ratio == pytest.approx((1e6 / 115) / (1e6 / 105), rel=0.01)


def test_benchmark_6_reports_each_figures_median_over_its_passes() -> None:
    """The target is judged on the median of the passes (not on any one), the range is noted, and
    only mjasync's rows carry a target."""
    from bench_capacity import MJASYNC, SEMAPHORE, _figure, _medians

    passes = [
        [
            _figure(MJASYNC, "refused", share, "%", "<=", 5.0),
            _figure(SEMAPHORE, "refused", 60.0, "%", "<=", 5.0),
        ]
        for share in (4.0, 9.0, 3.0)
    ]
    ours, theirs = _medians(passes)
    assert (ours.value, ours.met, ours.target) == (4.0, True, "<= 5")
    assert ours.note == "median of 3 passes, 3–9 %"
    assert (theirs.value, theirs.met, theirs.target) == (60.0, None, "")
