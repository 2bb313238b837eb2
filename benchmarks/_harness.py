"""What every benchmark shares: the emulator in its own process, contenders in theirs, and the figures.

The client under test and the emulator never share a process, so `time.process_time()` in a
contender's process is the client's CPU alone. Each contender runs in a fresh interpreter
(`spawn`) so that one library's imports, caches and heap do not colour another's figures.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BENCHMARKS",
    "TOKEN",
    "EmulatorProcess",
    "Figure",
    "Spread",
    "counters",
    "emulator",
    "machine",
    "ratio_figures",
    "spawn",
]

BENCHMARKS = Path(__file__).resolve().parent
#: The emulator's default bearer token (and GoAPI key); accepted by `python -m mjasync.emulator`.
TOKEN = "test-token"


@dataclass(frozen=True)
class Figure:
    """One measured number, with its ratio to the benchmark's baseline and the target it is held to."""

    bench: str
    contender: str
    metric: str
    value: float
    unit: str
    #: value / the baseline contender's value for the same metric (None for the baseline itself).
    ratio: float | None = None
    #: What the ratio must be, e.g. "<= 1.15" (empty when the figure is for comparison only).
    target: str = ""
    #: Whether the target holds (None without a target).
    met: bool | None = None
    note: str = ""


@dataclass(frozen=True)
class Spread:
    """Repeated measurements of one figure: their median (the figure reported) and their range.

    The median, not the best: a best-of keeps the luckiest pass, and one contender's luck is not
    another's, so a ratio of two bests can land anywhere inside the noise.
    """

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The median and range of `values` (at least one)."""
        if not values:
            raise ValueError("no measurements")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def describe(self, unit: str = "") -> str:
        """E.g. "median of 7 passes, 183–201 µs" (the range is what one pass could have reported)."""
        if self.count == 1:
            return "1 pass"
        unit = f" {unit}" if unit else ""
        return f"median of {self.count} passes, {_plain(self.low)}–{_plain(self.high)}{unit}"


def _plain(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


@dataclass
class EmulatorProcess:
    """A running `python -m mjasync.emulator` and its URL."""

    process: subprocess.Popen[str]
    url: str
    args: Sequence[str] = field(default_factory=tuple)


@contextmanager
def emulator(*, speed: float = 0.0, extra: Sequence[str] = ()) -> Iterator[EmulatorProcess]:
    """Start the emulator on 127.0.0.1 (any port) in its own process; stop it on exit."""
    args = [sys.executable, "-m", "mjasync.emulator", "--port", "0", "--speed", str(speed), *extra]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if match is None:
            raise RuntimeError(f"the emulator did not start: {line!r}")
        yield EmulatorProcess(process, match.group(1), args)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def counters(url: str, *, reset: bool = False) -> dict[str, int]:
    """The emulator's request counters (`GET /_emulator/counters`); `reset` clears them and its records."""
    if reset:
        request = urllib.request.Request(f"{url}/_emulator/reset", data=b"", method="POST")
    else:
        request = urllib.request.Request(f"{url}/_emulator/counters")
    with urllib.request.urlopen(request, timeout=30) as response:  # only ever 127.0.0.1
        body: dict[str, Any] = json.loads(response.read())
    return dict(body["counters"])


def spawn(script: str, *args: str, timeout: float = 900.0) -> dict[str, Any]:
    """Run `benchmarks/<script> *args` in a fresh interpreter; it prints one JSON object last."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "")},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{script} {' '.join(args)} printed no JSON:\n{done.stdout[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def emit(result: dict[str, Any]) -> None:
    """A contender's report: one line of JSON on stdout (read by `spawn`)."""
    print(json.dumps(result), flush=True)


def ratio_figures(
    bench: str,
    metric: str,
    unit: str,
    values: dict[str, float],
    *,
    baseline: str,
    targets: dict[str, tuple[str, float]] | None = None,
    notes: dict[str, str] | None = None,
) -> list[Figure]:
    """Figures for one metric, each with its ratio to `baseline`; `targets` maps a contender to
    ("<=" or ">=", bound) for the ratio."""
    targets = targets or {}
    notes = notes or {}
    base = values[baseline]
    figures = []
    for contender, value in values.items():
        ratio = None if contender == baseline else (value / base if base else float("inf"))
        target, met = "", None
        if contender in targets and ratio is not None:
            sense, bound = targets[contender]
            target = f"{sense} {bound:g}×"
            met = ratio <= bound if sense == "<=" else ratio >= bound
        figures.append(
            Figure(bench, contender, metric, value, unit, ratio, target, met, notes.get(contender, ""))
        )
    return figures


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """Where and with what the figures were taken."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("mjasync", "aiohttp", "msgspec", "anyio", "httpx", "requests", "acedatacloud")
        },
    }


def as_dict(figure: Figure) -> dict[str, Any]:
    """A figure as plain JSON."""
    return asdict(figure)
