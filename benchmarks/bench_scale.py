"""Benchmark 4: scale — 10,000 jobs in flight at once.

A slow emulator (`--speed 40`: every job takes 40 s end to end, streaming its 6 ndjson progress lines)
keeps every job open long enough that all of them are in flight at the same moment, with room to
spare for the opening burst of 10,000 connects. Each contender runs in its own fresh interpreter,
against its own fresh emulator, and starts all the jobs at once (`asyncio.gather`):

- **raw aiohttp**: one `ClientSession` with `TCPConnector(limit=0)`, one streamed POST to
  `/midjourney/imagine` per job (`accept: application/x-ndjson`), every line read to the end and the
  last one decoded with msgspec: the same connections held, with nothing else;
- **mjasync**: `await client.imagine(prompt)` per job (the default `wait_via="stream"`, one
  connection per job), with `Limits(max_in_flight=N, max_connections=N + 64,
  max_connections_per_host=N + 64)` so that neither the in-flight limiter nor the pool queues any.

Measured in each contender's process:

- **memory per in-flight job**: (RSS while all N jobs are in flight − RSS before starting, after the
  imports and a warm-up request) / N. "All in flight" is checked, not assumed: the emulator's
  `streams` counter must read N while the contender has completed none (the counters are polled every
  100 ms; the figure is the highest RSS seen in that window). Also the peak RSS of the whole run;
- **event-loop lag**: a ticker task sleeps 10 ms in a loop for the whole run and records how late it
  wakes; p99 and max, in ms, and the p99 of the ramp-up alone (until all N are in flight: the busy
  part, which the quiet tail of the run otherwise dilutes). The cyclic GC's pauses are timed too
  (`gc.callbacks`), since at this scale they are most of the longest stalls;
- **jobs completed** (must be N, else the other figures are invalid and say so), wall time and CPU.

Targets: mjasync memory per job ≤ 1.3× raw aiohttp's, and mjasync p99 lag < 100 ms, over the whole run and
over the ramp-up alone.

```sh
.venv/bin/python benchmarks/bench_scale.py            # full size (about 2 minutes), prints the figures
.venv/bin/python benchmarks/bench_scale.py --quick    # 200 jobs at speed 2 (about 10 s)
.venv/bin/python benchmarks/bench_scale.py --contender mjasync --url http://127.0.0.1:PORT --jobs 10000
```

Both the contender and the emulator need a file-descriptor limit above N: `run()` raises its own soft
`RLIMIT_NOFILE` to the hard limit before starting the emulator (which inherits it), and each contender
raises its own.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import TOKEN, Figure, counters, emit, emulator, ratio_figures, spawn

__all__ = ["CONTENDERS", "run"]

BENCH = "4 scale"
CONTENDERS = ("raw_aiohttp", "mjasync")
BASELINE = "raw_aiohttp"
FULL_JOBS, FULL_SPEED = 10_000, 40.0
QUICK_JOBS, QUICK_SPEED = 200, 2.0
#: A contender's run is tried again (fresh emulator, fresh process) when not all its jobs were in flight
#: at once or not all completed (say, a machine whose somaxconn caps the emulator's accept queue low
#: enough that SYN retransmits spread the connects over more than a job's life).
ATTEMPTS = 2
MEMORY_TARGET = 1.3
LAG_TARGET_MS = 100.0
TICK = 0.010
MONITOR_EVERY = 0.100
PAGE = os.sysconf("SC_PAGE_SIZE")
KIB = 1024
MIB = 1024 * 1024


class _Update(msgspec.Struct):
    """What the raw contender reads from the last line."""

    task_id: str
    progress: float
    success: bool = True
    actions: list[str] = []


# -- measuring ---------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now (from /proc/self/statm)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE


def peak_rss_bytes() -> int:
    """The highest RSS this process has had: VmHWM, which belongs to this program's own memory.

    Not `ru_maxrss`: Linux carries that over `execve`, so a contender started by a runner holding a
    big heap would report the runner's peak as its own.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all processes)."""
    try:
        with open("/proc/net/netstat") as netstat:
            lines = netstat.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        fields = dict(zip(names.split(), values.split(), strict=False))
        if "ListenOverflows" in fields:
            return int(fields["ListenOverflows"])
    return 0


class Ticker:
    """Sleeps `TICK` in a loop and records how late each wake-up is (the event loop's lag)."""

    def __init__(self, origin: float) -> None:
        self.origin = origin
        #: (when the sleep began, in seconds since `origin`; how late it woke, in seconds).
        self.ticks: list[tuple[float, float]] = []
        self.stopped = False

    async def run(self) -> None:
        clock, origin, ticks = time.perf_counter, self.origin, self.ticks
        while not self.stopped:
            start = clock()
            await asyncio.sleep(TICK)
            ticks.append((start - origin, clock() - start - TICK))

    def summary(self, ramp_end: float | None) -> dict[str, Any]:
        """p50/p99/max over the whole run, p99 over the ramp-up (until `ramp_end`), the worst stalls."""
        late = sorted(lag for _, lag in self.ticks) or [0.0]
        ramp = sorted(lag for at, lag in self.ticks if ramp_end is None or at < ramp_end) or [0.0]
        worst = sorted(self.ticks, key=lambda tick: -tick[1])[:5]
        return {
            "lag_p99_ms": _percentile(late, 0.99) * 1000,
            "lag_max_ms": late[-1] * 1000,
            "lag_p50_ms": _percentile(late, 0.50) * 1000,
            "lag_samples": len(self.ticks),
            "lag_p99_ramp_ms": _percentile(ramp, 0.99) * 1000,
            "lag_samples_ramp": len(ramp),
            "stalls_over_100ms": sum(1 for _, lag in self.ticks if lag > 0.1),
            "worst_stalls": [(round(at, 2), round(lag * 1000, 1)) for at, lag in worst],
        }


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def emulator_counters(url: str) -> dict[str, int]:
    """`GET /_emulator/counters` over a bare asyncio socket (no thread, no client library)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(f"GET /_emulator/counters HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return dict(body["counters"])


class GcClock:
    """Time spent in the cyclic garbage collector (`gc.callbacks`): its pauses are event-loop lag too."""

    def __init__(self) -> None:
        self.total = 0.0
        self.longest = 0.0
        self.collections = [0, 0, 0]
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        pause = time.perf_counter() - self._began
        self.total += pause
        self.longest = max(self.longest, pause)
        self.collections[info["generation"]] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "gc_s": self.total,
            "gc_longest_ms": self.longest * 1000,
            "gc_collections": self.collections,
        }


class Progress:
    """What the jobs and the monitor share."""

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.completed = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.finished = False

    def failure(self, exc: BaseException) -> None:
        self.failed += 1
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


class Monitor:
    """Every `MONITOR_EVERY`: the emulator's stream count and our RSS; keeps the all-in-flight window."""

    def __init__(
        self, url: str, progress: Progress, held: Callable[[], dict[str, int]], origin: float
    ) -> None:
        self.url = url
        self.progress = progress
        self.held = held
        self.started = origin
        self.window_rss: list[int] = []
        self.window_start: float | None = None
        self.window_end: float | None = None
        self.at_window_start: dict[str, Any] = {}
        self.max_streams = 0
        self.max_rss = 0
        self.counter_errors = 0

    async def run(self) -> None:
        while not self.progress.finished:
            await asyncio.sleep(MONITOR_EVERY)
            try:
                streams = (await emulator_counters(self.url)).get("streams", 0)
            except (OSError, ValueError, KeyError, IndexError):
                self.counter_errors += 1
                continue
            rss = rss_bytes()
            self.max_rss = max(self.max_rss, rss)
            self.max_streams = max(self.max_streams, streams)
            progress = self.progress
            all_in = streams >= progress.jobs and progress.completed == 0 and progress.failed == 0
            now = time.perf_counter() - self.started
            if all_in:
                if self.window_start is None:
                    self.window_start = now
                    self.at_window_start = {"rss": rss, **self.held()}
                self.window_rss.append(rss)
                self.window_end = now


# -- the contenders ----------------------------------------------------------------------------------


def _prompt(index: int) -> str:
    return f"a lighthouse at dawn, study {index}"


async def _raw_aiohttp(url: str, jobs: int, progress: Progress) -> dict[str, Any]:
    import aiohttp

    decoder = msgspec.json.Decoder(_Update)
    encode = msgspec.json.encode
    headers = {
        "authorization": f"Bearer {TOKEN}",
        "content-type": "application/json",
        "accept": "application/x-ndjson",
    }
    endpoint = f"{url}/midjourney/imagine"
    # The same socket limits mjasync's stream uses: 10 s to connect, 900 s idle between lines.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=900.0)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    opened = 0

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm-up: one quick (async) submit on the same session, so its code paths are imported and run.
        async with session.post(
            endpoint, data=encode({"prompt": "warm-up", "async": True}), headers=headers
        ) as response:
            await response.read()

        async def one(index: int) -> None:
            nonlocal opened
            try:
                async with session.post(
                    endpoint, data=encode({"prompt": _prompt(index)}), headers=headers
                ) as r:
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}")
                    opened += 1
                    last = b""
                    async for line in r.content:  # one line at a time, to the end of the body
                        if line.strip():
                            last = line
                    update = decoder.decode(last)
                    if not (update.success and update.progress >= 100 and update.actions):
                        raise RuntimeError("the last line is not a final result")
            except Exception as exc:
                progress.failure(exc)
            else:
                progress.completed += 1

        def held() -> dict[str, int]:
            return {"client_connections": len(connector._acquired), "client_streams_opened": opened}

        options = {"connector": "one ClientSession, TCPConnector(limit=0, limit_per_host=0)"}
        return await _drive(url, jobs, progress, one, held, options=options)


async def _mjasync(url: str, jobs: int, progress: Progress) -> dict[str, Any]:
    import mjasync

    limits = mjasync.Limits(max_in_flight=jobs, max_connections=jobs + 64, max_connections_per_host=jobs + 64)
    async with mjasync.Client(api_key=TOKEN, base_url=url, limits=limits) as client:
        # Warm-up: one quick (async) submit through the client, so its session and code paths exist.
        await client.imagine("warm-up").submit()
        connector: Any = client._pool.session().connector

        async def one(index: int) -> None:
            try:
                result = await client.imagine(_prompt(index))
                if not result.is_final:
                    raise RuntimeError("the result is not final")
            except Exception as exc:
                progress.failure(exc)
            else:
                progress.completed += 1

        def held() -> dict[str, int]:
            stats = client.statistics().limiter
            return {
                "client_connections": len(connector._acquired),
                "limiter_in_flight": stats.in_flight,
                "limiter_waiting": stats.waiting,
            }

        options = {
            "limits": f"Limits(max_in_flight={jobs}, max_connections={jobs + 64}, "
            f"max_connections_per_host={jobs + 64})",
            "wait_via": "wait_via='stream' (the default)",
        }
        return await _drive(url, jobs, progress, one, held, options=options)


async def _drive(
    url: str,
    jobs: int,
    progress: Progress,
    one: Callable[[int], Awaitable[None]],
    held: Callable[[], dict[str, int]],
    *,
    options: dict[str, str],
) -> dict[str, Any]:
    """Start all `jobs` at once with a ticker and a monitor running; measure."""
    await emulator_counters(url)  # warm the monitor's own path too
    counters(url, reset=True)  # from here, `streams` counts this run's streams only
    gc.collect()
    await asyncio.sleep(0.2)
    baseline = rss_bytes()
    overflows = listen_overflows()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    ticker = Ticker(wall0)
    monitor = Monitor(url, progress, held, wall0)
    gc_clock = GcClock()
    gc.callbacks.append(gc_clock)

    async def all_jobs() -> None:
        try:
            await asyncio.gather(*(one(i) for i in range(jobs)))
        finally:
            wall = time.perf_counter() - wall0
            progress.finished = True
            ticker.stopped = True
            result["wall_s"] = wall

    result: dict[str, Any] = {}
    try:
        await asyncio.gather(ticker.run(), monitor.run(), all_jobs())
    finally:
        gc.callbacks.remove(gc_clock)
    cpu = time.process_time() - cpu0
    # Without an all-in-flight window the run is invalid; its highest RSS is still reported, marked so.
    in_flight_rss = max(monitor.window_rss) if monitor.window_rss else monitor.max_rss
    valid = progress.completed == jobs and bool(monitor.window_rss)
    result.update(
        {
            "jobs": jobs,
            "completed": progress.completed,
            "failed": progress.failed,
            "errors": progress.errors,
            "all_in_flight_seen": bool(monitor.window_rss),
            "window_s": [monitor.window_start, monitor.window_end],
            "window_samples": len(monitor.window_rss),
            "at_window_start": monitor.at_window_start,
            "max_streams_seen": monitor.max_streams,
            "counter_errors": monitor.counter_errors,
            "valid": valid,
            "baseline_rss": baseline,
            "in_flight_rss": in_flight_rss,
            "bytes_per_job": (in_flight_rss - baseline) / jobs,
            "peak_rss": max(peak_rss_bytes(), monitor.max_rss),
            "cpu_s": cpu,
            "options": options,
            "listen_overflows": listen_overflows() - overflows,
            **ticker.summary(monitor.window_start),
            **gc_clock.summary(),
        }
    )
    return result


async def contend(contender: str, url: str, jobs: int) -> dict[str, Any]:
    """Run one contender in this process and return its measurements."""
    soft, hard = raise_fd_limit()
    if soft < jobs + 256:
        raise SystemExit(f"RLIMIT_NOFILE is {soft} (hard {hard}); {jobs} jobs need more than {jobs + 256}")
    progress = Progress(jobs)
    run_one = {"raw_aiohttp": _raw_aiohttp, "mjasync": _mjasync}[contender]
    result = await run_one(url, jobs, progress)
    return {"contender": contender, "fd_limit": soft, **result}


# -- the benchmark -----------------------------------------------------------------------------------


def run(quick: bool = False) -> list[Figure]:
    """Run each contender in its own process against its own fresh emulator; return the figures."""
    jobs, speed = (QUICK_JOBS, QUICK_SPEED) if quick else (FULL_JOBS, FULL_SPEED)
    raise_fd_limit()  # the emulator (started below) inherits it: it holds one socket per job too
    results: dict[str, dict[str, Any]] = {}
    for contender in CONTENDERS:
        for attempt in range(1, ATTEMPTS + 1):
            with emulator(speed=speed) as emu:
                result = spawn(
                    "bench_scale.py", "--contender", contender, "--url", emu.url, "--jobs", str(jobs)
                )
            result["attempts"] = attempt
            results[contender] = result
            if result["valid"]:
                break
    return figures(results, jobs)


def figures(results: dict[str, dict[str, Any]], jobs: int) -> list[Figure]:
    """The figures for the contenders' results (invalid runs are marked, and miss every target)."""
    notes: dict[str, str] = {}
    for contender, result in results.items():
        problems = []
        if result["completed"] != jobs:
            problems.append(f"only {result['completed']} of {jobs} jobs completed ({result['errors']})")
        if not result["all_in_flight_seen"]:
            problems.append(f"all {jobs} were never in flight at once (max {result['max_streams_seen']})")
        notes[contender] = ("INVALID: " + "; ".join(problems)) if problems else ""
    valid = not any(notes.values())
    for contender, result in results.items():
        if result.get("attempts", 1) > 1:
            retried = f"attempt {result['attempts']}: an earlier run was invalid"
            notes[contender] = "; ".join(n for n in (notes[contender], retried) if n)

    def with_notes(extra: dict[str, str]) -> dict[str, str]:
        return {c: "; ".join(n for n in (notes[c], extra.get(c, "")) if n) for c in results}

    per_job = {c: r["bytes_per_job"] / KIB for c, r in results.items()}
    window = {
        c: (
            f"RSS {r['baseline_rss'] / MIB:.1f} → {r['in_flight_rss'] / MIB:.1f} MiB; all {jobs} in flight "
            f"for {r['window_samples']} samples from t={r['window_s'][0] or 0:.1f} s; "
            f"{r['listen_overflows']} listen-queue overflows at the emulator"
        )
        for c, r in results.items()
    }
    out = ratio_figures(
        BENCH,
        "memory per in-flight job",
        "KiB",
        per_job,
        baseline=BASELINE,
        targets={"mjasync": ("<=", MEMORY_TARGET)},
        notes=with_notes(window),
    )
    out += ratio_figures(
        BENCH,
        "peak RSS",
        "MiB",
        {c: r["peak_rss"] / MIB for c, r in results.items()},
        baseline=BASELINE,
        notes=with_notes({}),
    )

    def lag_figures(metric: str, key: str, extra: dict[str, str]) -> list[Figure]:
        """One lag percentile per contender, its ratio to raw aiohttp's, and mjasync's held to the target."""
        base = results[BASELINE][key]
        figures = []
        for contender, result in results.items():
            value = result[key]
            ours = contender != BASELINE
            figures.append(
                Figure(
                    BENCH,
                    contender,
                    metric,
                    value,
                    "ms",
                    (value / base if base else float("inf")) if ours else None,
                    f"< {LAG_TARGET_MS:g} ms" if ours else "",
                    (value < LAG_TARGET_MS and valid) if ours else None,
                    with_notes(extra)[contender],
                )
            )
        return figures

    out += lag_figures(
        "event-loop lag p99",
        "lag_p99_ms",
        {
            c: f"p50 {r['lag_p50_ms']:.2f} ms over {r['lag_samples']} ticks; "
            f"GC {r['gc_s']:.1f} s in all, longest pause {r['gc_longest_ms']:.0f} ms"
            for c, r in results.items()
        },
    )
    # Issue 13's target: the ramp alone, which the quiet streaming part of the run otherwise dilutes.
    out += lag_figures(
        "event-loop lag p99, ramp-up",
        "lag_p99_ramp_ms",
        {c: f"{r['lag_samples_ramp']} ticks until all {jobs} were in flight" for c, r in results.items()},
    )
    out += ratio_figures(
        BENCH,
        "event-loop lag max",
        "ms",
        {c: r["lag_max_ms"] for c, r in results.items()},
        baseline=BASELINE,
        notes=with_notes({}),
    )
    base_completed = results[BASELINE]["completed"]
    for contender, result in results.items():
        out.append(
            Figure(
                BENCH,
                contender,
                "jobs completed",
                result["completed"],
                "jobs",
                None if contender == BASELINE else result["completed"] / max(1, base_completed),
                f"== {jobs}",
                result["completed"] == jobs,
                with_notes({})[contender],
            )
        )
    out += ratio_figures(
        BENCH, "wall time", "s", {c: r["wall_s"] for c, r in results.items()}, baseline=BASELINE
    )
    out += ratio_figures(
        BENCH,
        "CPU time",
        "s",
        {c: r["cpu_s"] for c, r in results.items()},
        baseline=BASELINE,
        notes={c: "; ".join(r["options"].values()) for c, r in results.items()},
    )
    if not valid:
        # An invalid run meets no target (but a count of completed jobs is what it is).
        out = [
            f if f.met is None or f.metric == "jobs completed" else Figure(**{**f.__dict__, "met": False})
            for f in out
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--contender", choices=CONTENDERS, help="run one contender (needs --url)")
    parser.add_argument("--url", help="the emulator's URL (contender mode)")
    parser.add_argument("--jobs", type=int, default=FULL_JOBS, help="jobs in flight at once")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_JOBS} jobs at speed {QUICK_SPEED:g}")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON lines")
    args = parser.parse_args(argv)
    if args.contender:
        if not args.url:
            parser.error("--contender needs --url")
        emit(asyncio.run(contend(args.contender, args.url, args.jobs)))
        return 0
    for figure in run(quick=args.quick):
        if args.json:
            print(json.dumps(figure.__dict__), flush=True)
        else:
            ratio = f" ({figure.ratio:.2f}×)" if figure.ratio is not None else ""
            target = f" target {figure.target}: {'met' if figure.met else 'MISSED'}" if figure.target else ""
            note = f" [{figure.note}]" if figure.note else ""
            print(
                f"{figure.contender:12} {figure.metric:26} {figure.value:10.2f} {figure.unit}{ratio}{target}{note}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
