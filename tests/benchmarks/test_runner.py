"""The benchmark runner's own smoke run: every benchmark, tiny, end to end; no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

RUNNER = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
BENCHES = ("1 fan-out (JSON)", "2 streamed jobs", "3 ndjson decoder", "4 scale", "5 polling")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.timeout(600)
def test_every_benchmark_reports_mjasync_against_its_baseline(quick_run: Path) -> None:
    """Each of the five benchmarks yields figures for mjasync and a baseline, and each target is judged."""
    figures = json.loads((quick_run / "results.json").read_text())["figures"]
    for bench in BENCHES:
        mine = [f for f in figures if f["bench"] == bench]
        assert mine, f"no figures for {bench}"
        assert any(f["ratio"] is None for f in mine), f"{bench} has no baseline"
        assert any(f["contender"] == "mjasync" and f["ratio"] is not None for f in mine)
        judged = [f for f in mine if f["target"]]
        assert judged and all(isinstance(f["met"], bool) for f in judged)
    rates = [f for f in figures if f["unit"] in ("µs", "jobs/s", "MB/s", "lines/s")]
    assert rates and all(f["value"] > 0 for f in rates)


@pytest.mark.timeout(600)
def test_benchmark_6_judges_mjasync_beside_the_other_two(quick_run: Path) -> None:
    """Capacity under refusals (behaviour, no baseline): every contender measured, mjasync's targets judged."""
    figures = json.loads((quick_run / "results.json").read_text())["figures"]
    mine = [f for f in figures if f["bench"] == "6 capacity under refusals"]
    assert {f["contender"] for f in mine} == {"mjasync", "AIMD (before)", "semaphore + retry"}
    judged = [f for f in mine if f["target"]]
    assert judged and all(f["contender"] == "mjasync" and isinstance(f["met"], bool) for f in judged)
    assert "## 6 capacity under refusals" in (quick_run / "RESULTS.md").read_text()


@pytest.mark.timeout(600)
def test_the_run_writes_a_results_table_and_a_plot(quick_run: Path) -> None:
    """RESULTS.md names the command, the machine and versions, has a table per benchmark, and the PNG opens."""
    results = (quick_run / "RESULTS.md").read_text()
    assert "python benchmarks/run.py --quick" in results
    assert "Machine:" in results and "aiohttp" in results and "msgspec" in results
    for bench in BENCHES:
        assert f"## {bench}" in results
    assert "![ratios](ratios.png)" in results
    with Image.open(quick_run / "ratios.png") as plot:
        assert plot.format == "PNG" and plot.width > 400 and plot.height > 200


@pytest.mark.timeout(600)
def test_benchmark_7_reports_each_worker_count_against_the_caps_ideal(quick_run: Path) -> None:
    """Scale-out: figures for 1, 2 and 4 workers, the 4-worker share of the ideal judged."""
    figures = json.loads((quick_run / "results.json").read_text())["figures"]
    mine = [f for f in figures if f["bench"] == "7 scale-out"]
    assert mine, "no figures for benchmark 7"
    judged = [f for f in mine if f["target"]]
    assert judged and all(isinstance(f["met"], bool) for f in judged)
    assert "## 7 scale-out" in (quick_run / "RESULTS.md").read_text()
