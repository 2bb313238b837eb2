"""A tiny run of each benchmark, so they keep working; figures are printed, never asserted as timings."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_decoder  # noqa: E402
import bench_polling  # noqa: E402


def test_decoder_benchmark_decodes_every_line_three_ways() -> None:
    """Each way decodes all the lines of a 1 MiB stream cut at random boundaries (the run checks counts)."""
    data, lines, chunks = bench_decoder.make_stream(bench_decoder.MIB)
    assert b"".join(chunks) == data and len(chunks) > 1
    assert data.count(b"\n") == len(lines)
    figures = bench_decoder.run(bench_decoder.MIB, repeats=1)
    assert [f.name for f in figures] == [
        "mjasync (split + decode)",
        "msgspec, pre-split (limit)",
        "json.loads per line",
    ]
    assert all(f.megabytes_per_second > 0 and f.lines_per_second > 0 for f in figures)


def test_polling_benchmark_runs_mjasync_on_the_proxy() -> None:
    """Benchmark 5's mjasync contender with `--provider midjourney-proxy`: every job ends, its waiting
    jobs share batched `list-by-condition` lookups, and the emulator counts them as polls."""
    jobs = 20
    result = bench_polling.measure(bench_polling.MJASYNC, jobs=jobs, speed=1.0, provider="midjourney-proxy")
    assert result["done"] == jobs and result["failed"] == 0, result
    assert result["fetches"] > 0 and result["polls"] >= result["fetches"], result
    assert result["mean_batch"] > 1, "waiting jobs did not share their lookups"
    assert result["delay_jobs"] == jobs, "the emulator recorded every proxy task's end"
