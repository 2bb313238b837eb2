"""A tiny run of each benchmark, so they keep working; figures are printed, never asserted as timings."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_decoder  # noqa: E402


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
