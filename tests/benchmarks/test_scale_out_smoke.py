"""A quick run of benchmark 7 (scale-out on Redis), so it keeps working: figures printed, never timed.

It starts its own redis-server, an emulator process and 1, 2 and 4 `mjasync worker` processes, as the
full benchmark does, with a few waves of short jobs. What is asserted is that every figure comes out
and every pass was valid (each job ended ok with exactly one submit): never how fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_scale_out  # noqa: E402


@pytest.mark.timeout(300)
def test_scale_out_benchmark_reports_every_configuration() -> None:
    figures = bench_scale_out.run(quick=True)
    for figure in figures:  # shown with -s (or -rP): the figures of the run, for a look, never judged
        ratio = "" if figure.ratio is None else f" ({figure.ratio:.3g}×)"
        print(f"{figure.contender:12} {figure.metric:42} {figure.value:8.2f} {figure.unit}{ratio}")  # noqa: T201
    assert all(figure.bench == bench_scale_out.BENCH for figure in figures)
    labels = ["1 worker", "2 workers", "4 workers"]
    rates = {f.contender: f for f in figures if f.unit == "jobs/s"}
    trips = {f.contender: f for f in figures if f.metric == "Redis round trips per job"}
    assert sorted(rates) == sorted([bench_scale_out.IDEAL, *labels])
    assert sorted(trips) == sorted(labels)
    # The ideal is the baseline of the rates, one worker's figure that of the round trips.
    assert rates[bench_scale_out.IDEAL].ratio is None and trips["1 worker"].ratio is None
    assert all(rates[label].value > 0 and rates[label].ratio is not None for label in labels)
    assert all(trips[label].value > 0 for label in labels)
    # Every pass valid: an invalid one (a job lost, failed or paid twice) says so and meets no target.
    assert not any("INVALID" in f.note for f in figures), [f.note for f in figures]
    judged = [f for f in figures if f.target]
    assert [f.contender for f in judged] == ["4 workers"] and isinstance(judged[0].met, bool)
