"""Benchmark 7: scale-out on Redis: 1, 2 and 4 worker processes sharing one in-flight cap of 32.

Each pass runs one distributed batch as a user would: a real `redis-server` (on 127.0.0.1, no
persistence), an emulator in its own process whose jobs take `SPEED` seconds each, and N `mjasync
worker` processes (`--max-in-flight 32`, each `--concurrency 32`, so even one worker could fill the
cap and more workers only share it). The workers are started first and the benchmark waits until
each is idle (blocked in XREADGROUP, waiting for jobs); then the clock starts,
the jobs are enqueued (`RunQueue.enqueue`, one script per 256 jobs), and it stops when the last
outcome is read from the run's `done` stream (`RunQueue.outcomes`). The workers are then stopped
(SIGTERM) and each prints its last progress line, with the Redis round trips it made (its queue's and
its `SharedLimits`'s).

Measured, for each number of workers:

- **jobs/s**: jobs / (first enqueue to last outcome), and its share of the cap's ideal, `32 / SPEED`
  jobs/s (32 slots, each busy for exactly one job's time and nothing else). Target at 4 workers:
  >= 0.9 of the ideal. What the slots lose besides the job itself: the lookups that notice a job has
  ended (the poller closes in on its estimate of the end), and the Redis round trips inside the slot
  (the intent and the task's record before the wait, the slot's own admission and release).
- **Redis round trips per job**: every worker's total / jobs, as the workers print it (it includes
  the few made while idle before and after the run: about two a second per worker, under 1 % here).
  Shown as a ratio to one worker's.

Every check of a pass is also made: every job ended ok, and the emulator saw exactly one submit per
job (a pass that fails them meets no target). The configurations are interleaved (1, 2, 4, 1, 2, 4,
...) for `PASSES` passes, each in a fresh account and run; every figure is the median of its passes
with their range beside it, never the best.

    python benchmarks/run.py --only 7          # about 4 minutes on 2 cores; --quick: about 20 s
    python benchmarks/bench_scale_out.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import redis
from _harness import BENCHMARKS, TOKEN, Figure, Spread, counters, emulator, ratio_figures

from mjasync.redis import QueuedJob, RunQueue

# The repository's real redis-server, as the tests start it (the OS's, else the test extra's wheel).
sys.path.insert(0, str(BENCHMARKS.parent))
from tests.redis_server import RedisServer

__all__ = ["BENCH", "CAP", "CONFIGS", "run"]

BENCH = "7 scale-out"
#: The in-flight cap every worker shares, and each worker's own concurrency.
CAP = 32
#: Worker processes per configuration, in the order the passes interleave them.
CONFIGS = (1, 2, 4)
#: Seconds a job takes at the emulator, and jobs per pass (the cap's slots each run `WAVES` jobs).
SPEED = 2.0
WAVES = 10
PASSES = 3
QUICK_SPEED = 0.5
QUICK_WAVES = 3
#: The worker's first lookup of a submitted job, in seconds (`--poll-interval`): the CLI's default of
#: 2 s suits jobs of a minute; these jobs are shorter, so its first look is too.
POLL_INTERVAL = 0.1
#: Hang detectors, never timing claims: a worker becoming idle, a pass, a worker's exit.
IDLE_BOUND = 60.0
EXIT_BOUND = 30.0
IDEAL = "cap's ideal"
RUN = "bench"
#: The worker's progress line: its name, jobs ended and Redis round trips.
_LINE = re.compile(
    r"^\[(?P<name>\S+) run \S+\s+\d+s\] (?P<ended>\d+) ended .*, (?P<trips>\d+) Redis round trips;"
)


@dataclasses.dataclass(frozen=True)
class Pass:
    """One run of `jobs` jobs by `workers` worker processes."""

    workers: int
    jobs: int
    seconds: float
    ok: int
    submits: int
    round_trips: int

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def valid(self) -> bool:
        """Every job ended ok, with exactly one submit each."""
        return self.ok == self.jobs and self.submits == self.jobs


def _label(workers: int) -> str:
    return f"{workers} worker" + ("s" if workers > 1 else "")


def _worker_command(redis_url: str, emulator_url: str, account: str, name: str) -> list[str]:
    return [
        sys.executable, "-m", "mjasync", "worker",
        "--redis", redis_url, "--account", account, "--run", RUN, "--name", name,
        "--base-url", emulator_url, "--api-key", TOKEN,
        "--concurrency", str(CAP), "--max-in-flight", str(CAP),
        "--poll-interval", str(POLL_INTERVAL),
    ]  # fmt: skip


def _wait_idle(redis_url: str, processes: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path]) -> None:
    """Until every worker waits for jobs: as many connections blocked in XREADGROUP as workers.

    Each worker's loop, once its client and shared limits are up, asks for new entries with a blocking
    XREADGROUP (a second at a time), so an idle worker has one such connection almost always. (The
    group's consumer list is no sign: Redis adds a consumer only once it has been given an entry.)
    """
    give_up = time.monotonic() + IDLE_BOUND
    with redis.Redis.from_url(redis_url, socket_timeout=10) as client:
        while time.monotonic() < give_up:
            for process, log in zip(processes, logs, strict=True):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"a worker exited ({process.returncode}) before the run began:\n"
                        + log.read_text(errors="replace")[-3000:]
                    )
            blocked = [
                c for c in client.client_list() if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
            ]
            if len(blocked) >= len(processes):
                return
            time.sleep(0.05)  # polls Redis's own record: the workers announce nothing else
    raise RuntimeError(f"{len(processes)} workers did not become idle within {IDLE_BOUND} s")


async def _enqueue_and_follow(redis_url: str, account: str, jobs: int, bound: float) -> tuple[float, int]:
    """Enqueue the jobs, then read outcomes until every job has one: (seconds taken, jobs ended ok)."""
    async with RunQueue(redis_url, account=account, run=RUN) as queue:
        started = time.perf_counter()
        await queue.enqueue(QueuedJob(key=f"j{i}", prompt=f"{account} job {i}") for i in range(jobs))
        seen = ok = 0
        with anyio.fail_after(bound):
            async for outcome in queue.outcomes():
                seen += 1
                ok += outcome.ok
                if seen == jobs:
                    break
        return time.perf_counter() - started, ok


async def _start_run(redis_url: str, account: str) -> None:
    async with RunQueue(redis_url, account=account, run=RUN) as queue:
        await queue.start()


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every worker (each prints its last line and gives its slots back), then wait for it."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=EXIT_BOUND)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=EXIT_BOUND)


def _round_trips(log: Path) -> int:
    """The Redis round trips in a worker's last progress line (printed as it stops)."""
    found = [m for line in log.read_text(errors="replace").splitlines() if (m := _LINE.match(line))]
    if not found:
        raise RuntimeError(f"no progress line with Redis round trips in {log}:\n{log.read_text()[-2000:]}")
    return int(found[-1]["trips"])


def one_pass(
    redis_url: str, emulator_url: str, workers: int, jobs: int, speed: float, tag: str, logs: Path
) -> Pass:
    """`workers` processes, started and idle first, then `jobs` jobs timed from enqueue to last outcome."""
    account = f"bench7-{tag}"
    anyio.run(_start_run, redis_url, account)
    names = [f"{tag}-w{i}" for i in range(workers)]
    files = [logs / f"{name}.log" for name in names]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name, path in zip(names, files, strict=True):
            with path.open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        _worker_command(redis_url, emulator_url, account, name),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        # No MJASYNC_* setting of the caller's (a kill point, another key) reaches them.
                        env={k: v for k, v in os.environ.items() if not k.startswith("MJASYNC_")},
                    )
                )
        _wait_idle(redis_url, processes, files)
        counters(emulator_url, reset=True)
        # A hang detector: ten times the ideal, and never under a minute.
        bound = max(60.0, 10 * jobs * speed / CAP)
        seconds, ok = anyio.run(_enqueue_and_follow, redis_url, account, jobs, bound)
        submits = counters(emulator_url)["submits"]
    finally:
        _stop(processes)
    trips = sum(_round_trips(path) for path in files)
    return Pass(workers, jobs, seconds, ok, submits, trips)


def _figures(passes: dict[int, list[Pass]], speed: float) -> list[Figure]:
    ideal = CAP / speed
    rates = {_label(n): Spread.of([p.rate for p in runs]) for n, runs in passes.items()}
    trips = {_label(n): Spread.of([p.round_trips / p.jobs for p in runs]) for n, runs in passes.items()}
    valid = all(p.valid for runs in passes.values() for p in runs)
    jobs = next(iter(passes.values()))[0].jobs
    notes = {IDEAL: f"{CAP} slots / {speed:g} s jobs, {jobs} jobs a pass"}
    for n, runs in passes.items():
        spread = rates[_label(n)]
        shares = Spread.of([p.rate / ideal for p in runs])
        notes[_label(n)] = (
            f"{spread.describe('jobs/s')}; share of ideal {_plain(shares.low)}–{_plain(shares.high)}"
        )
        if not all(p.valid for p in runs):
            notes[_label(n)] += "; INVALID: " + ", ".join(
                f"{p.ok} ok and {p.submits} submits of {p.jobs}" for p in runs if not p.valid
            )
    figures = ratio_figures(
        BENCH,
        "jobs/s (ratio: share of the cap's ideal)",
        "jobs/s",
        {IDEAL: ideal, **{label: spread.median for label, spread in rates.items()}},
        baseline=IDEAL,
        targets={_label(4): (">=", 0.9)} if 4 in passes else {},
        notes=notes,
    )
    figures += ratio_figures(
        BENCH,
        "Redis round trips per job",
        "trips",
        {label: spread.median for label, spread in trips.items()},
        baseline=_label(min(passes)),
        notes={label: spread.describe() for label, spread in trips.items()},
    )
    if not valid:
        # A pass that lost or repeated a job meets no target.
        figures = [f if f.met is None else dataclasses.replace(f, met=False) for f in figures]
    return figures


def _plain(value: float) -> str:
    return f"{value:.3g}"


def run(quick: bool = False) -> list[Figure]:
    """Every configuration, interleaved over the passes: each figure's median and range.

    `quick`: one pass of each configuration, a few waves of half-second jobs (checks that it all runs).
    """
    speed = QUICK_SPEED if quick else SPEED
    jobs = CAP * (QUICK_WAVES if quick else WAVES)
    passes: dict[int, list[Pass]] = {n: [] for n in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench7-") as folder:
        root = Path(folder)
        logs = root / "logs"
        logs.mkdir()
        server = RedisServer(root / "redis", appendonly=False)
        server.start()
        try:
            with emulator(speed=speed) as emu:
                for index in range(1 if quick else PASSES):
                    for workers in CONFIGS:
                        tag = f"p{index}n{workers}"
                        passes[workers].append(one_pass(server.url, emu.url, workers, jobs, speed, tag, logs))
        finally:
            server.kill()
    return _figures(passes, speed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one pass of each, a few waves of short jobs")
    args = parser.parse_args(argv)
    for figure in run(quick=args.quick):
        ratio = f" ({figure.ratio:.3g}×)" if figure.ratio is not None else ""
        target = f" target {figure.target}: {'met' if figure.met else 'MISSED'}" if figure.target else ""
        note = f" [{figure.note}]" if figure.note else ""
        print(
            f"{figure.contender:12} {figure.metric:42} {figure.value:10.2f} {figure.unit}{ratio}{target}{note}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
