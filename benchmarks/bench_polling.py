"""Benchmark 5: polling cost.

While many submitted jobs wait in the provider's queue, how hard does a client hit the tasks endpoint
(`POST /midjourney/tasks`)? Each contender submits the same imagine jobs with `"async": true` to its own
emulator (`--speed` = how long every job takes) and then waits for all of them:

- **per-task polling (official style)**: what AceData's own SDK does (`acedatacloud`'s
  `TaskHandle.wait`): every task is looked up on its own, `{"id": ..., "action": "retrieve"}`, at once
  and then every 3 s until its record holds the final response (progress 100, non-empty `actions`).
  Plain aiohttp, one connection pool.
- **mjasync**: `Client(wait_via="poll")` with the default `PollPolicy`: submit all, then await all
  handles; waiting handles share `retrieve_batch` lookups (up to 50 ids each).

Measured, per contender (the emulator's own counters, so every request is counted whatever sent it):

- **req/s while waiting**: requests to the tasks endpoint between the last submit's answer and the last
  job done, divided by that time (target: mjasync ≤ 1/20 of per-task polling, ratio ≤ 0.05). The
  honest baseline is one request per task every 3 s: 1,000 / 3 ≈ 333 req/s for 1,000 tasks;
- **polls per job**: all tasks-endpoint requests (from the first submit on) / jobs;
- **wall time**: first submit to last job done (s), and that every job finished;
- **detection delay**, p50 and p95: when the client learned that a job had ended (its wait returned)
  minus when the job ended, as the emulator records it (`GET /_emulator/finishes`: the moment its
  lookups began to show the final body). Targets for mjasync: p50 ≤ 1 s and p95 ≤ 3 s (per-task
  polling every 3 s averages 1.5 s). Both processes read the same wall clock (`time.time()`).

    python -c "import sys; sys.path.insert(0, 'benchmarks'); import bench_polling as b; [print(f) for f in b.run()]"

A contender runs in a fresh interpreter (`spawn`): `bench_polling.py --contender {per-task,mjasync}
--url URL --jobs N` prints one JSON line.

`--provider NAME` (default ``acedata``) runs the mjasync contender on another provider's API of the
same emulator, e.g. ``midjourney-proxy`` (its lookups: ``POST /mj/task/list-by-condition`` batches). The
baseline stays AceData's per-task polling, the official SDK's way; the emulator counts either
provider's lookups as tasks-endpoint requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
import urllib.request
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

import aiohttp
from _harness import TOKEN, Figure, counters, emit, emulator, ratio_figures, spawn

T = TypeVar("T")

__all__ = ["BENCH", "CONTENDERS", "DEFAULT_PROVIDER", "OFFICIAL_INTERVAL", "measure", "run"]

BENCH = "5 polling"
#: The official clients' poll interval per task (seconds).
OFFICIAL_INTERVAL = 3.0
PER_TASK = "per-task polling (official style)"
MJASYNC = "mjasync"
#: Contender name -> the `--contender` value of its process.
CONTENDERS = {PER_TASK: "per-task", MJASYNC: "mjasync"}
#: Sockets per contender: the same for both (mjasync's default per-host cap).
CONNECTIONS = 128
#: Detection delay targets for mjasync (seconds): (percentile, at most).
DELAY_TARGETS = ((50, 1.0), (95, 3.0))
#: The API mjasync speaks unless `--provider` says otherwise (the one the baseline speaks).
DEFAULT_PROVIDER = "acedata"


def _prompt(index: int) -> str:
    return f"a lighthouse at dawn, study {index}"


async def _polls(url: str) -> int:
    return (await asyncio.to_thread(counters, url))["polls"]


def _finish_times(url: str) -> dict[str, float]:
    """When each job ended, as the emulator records it (unix seconds by task id)."""
    with urllib.request.urlopen(f"{url}/_emulator/finishes", timeout=30) as response:  # 127.0.0.1 only
        finished: dict[str, float] = json.loads(response.read())["finished"]
    return finished


async def _timed(task_id: str, learned: dict[str, float], wait: Awaitable[T]) -> T:
    """Await `wait`, noting (unix seconds) when the client learned `task_id` had ended."""
    try:
        return await wait
    finally:
        learned[task_id] = time.time()


def _percentile(values: list[float], percent: float) -> float:
    """The nearest-rank percentile of `values` (nan for none)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(math.ceil(percent / 100 * len(ordered)) - 1, 0)]


async def _detection_delays(url: str, learned: dict[str, float]) -> dict[str, Any]:
    """How late the client learned of each end, against the emulator's record: p50, p95, max (s)."""
    finished = await asyncio.to_thread(_finish_times, url)
    delays = [at - finished[task_id] for task_id, at in learned.items() if task_id in finished]
    return {
        "delay_jobs": len(delays),
        **{f"delay_p{percent}": _percentile(delays, percent) for percent in (50, 95)},
        "delay_max": max(delays, default=math.nan),
    }


def _report(
    jobs: int,
    done: int,
    failed: int,
    started: float,
    submitted: float,
    finished: float,
    polls_at_start: int,
    polls_at_submitted: int,
    polls_at_end: int,
    **extra: Any,
) -> dict[str, Any]:
    waiting = finished - submitted
    waiting_polls = polls_at_end - polls_at_submitted
    return {
        "jobs": jobs,
        "done": done,
        "failed": failed,
        "submit_seconds": submitted - started,
        "waiting_seconds": waiting,
        "wall_seconds": finished - started,
        "polls": polls_at_end - polls_at_start,
        "waiting_polls": waiting_polls,
        "requests_per_second": waiting_polls / waiting if waiting > 0 else 0.0,
        **extra,
    }


# --- contender: one lookup per task every 3 s (what the official SDK does) --------------------------


async def per_task(url: str, jobs: int) -> dict[str, Any]:
    """Submit `jobs` imagine jobs with async: true, then poll each task alone every 3 s until final."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=CONNECTIONS, limit_per_host=CONNECTIONS)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as session:

        async def submit(index: int) -> str:
            body = {"prompt": _prompt(index), "async": True}
            async with session.post("/midjourney/imagine", json=body) as response:
                response.raise_for_status()
                answer = await response.json()
            return str(answer["task_id"])

        async def wait(task_id: str) -> bool:
            while True:
                body = {"id": task_id, "action": "retrieve"}
                async with session.post("/midjourney/tasks", json=body) as response:
                    response.raise_for_status()
                    record = await response.json()
                result = record.get("response") or {}
                if result.get("success") is False:
                    return False
                if result.get("actions") and result.get("progress", 100) >= 100:
                    return True
                await asyncio.sleep(OFFICIAL_INTERVAL)

        polls_at_start = await _polls(url)
        started = time.perf_counter()
        task_ids = await asyncio.gather(*(submit(i) for i in range(jobs)))
        submitted = time.perf_counter()
        polls_at_submitted = await _polls(url)
        # Each task's wait begins with its own lookup (the official TaskHandle.wait looks first, then
        # sleeps); they start as one wave here, as in `for h in handles: gather(h.wait())`.
        learned: dict[str, float] = {}
        outcomes = await asyncio.gather(*(_timed(task_id, learned, wait(task_id)) for task_id in task_ids))
        finished = time.perf_counter()
        polls_at_end = await _polls(url)
    return _report(
        jobs, sum(outcomes), outcomes.count(False), started, submitted, finished,
        polls_at_start, polls_at_submitted, polls_at_end, **await _detection_delays(url, learned),
    )  # fmt: skip


# --- contender: mjasync, default PollPolicy -----------------------------------------------------------


async def with_mjasync(url: str, jobs: int, provider: str = DEFAULT_PROVIDER) -> dict[str, Any]:
    """Submit `jobs` imagine jobs (`wait_via="poll"`) on `provider`'s API, then await every handle."""
    import mjasync

    async with mjasync.Client(
        api_key=TOKEN,
        base_url=url,
        provider=provider,  # type: ignore[arg-type]
        wait_via="poll",
        poll=mjasync.PollPolicy(),
    ) as client:
        polls_at_start = await _polls(url)
        started = time.perf_counter()
        handles = await asyncio.gather(*(client.imagine(_prompt(i)).submit() for i in range(jobs)))
        submitted = time.perf_counter()
        polls_at_submitted = await _polls(url)
        learned: dict[str, float] = {}
        outcomes = await asyncio.gather(
            *(_timed(handle.task_id, learned, handle.wait()) for handle in handles), return_exceptions=True
        )
        finished = time.perf_counter()
        polls_at_end = await _polls(url)
        stats = client.statistics()
        done = sum(
            1 for outcome in outcomes if isinstance(outcome, mjasync.ImagineResult) and outcome.is_final
        )
        return _report(
            jobs, done, jobs - done, started, submitted, finished,
            polls_at_start, polls_at_submitted, polls_at_end,
            fetches=stats.lookups,
            mean_batch=stats.ids_looked_up / stats.lookups if stats.lookups else 0.0,
            **await _detection_delays(url, learned),
        )  # fmt: skip


# --- the benchmark ------------------------------------------------------------------------------------


def measure(contender: str, *, jobs: int, speed: float, provider: str = DEFAULT_PROVIDER) -> dict[str, Any]:
    """One contender against its own fresh emulator (so counters and task tables start empty);
    `provider` is the API mjasync speaks (the per-task baseline always speaks AceData's)."""
    args = ["--contender", CONTENDERS[contender], "--jobs", str(jobs)]
    if contender == MJASYNC and provider != DEFAULT_PROVIDER:
        args += ["--provider", provider]
    with emulator(speed=speed) as emu:
        return spawn("bench_polling.py", *args, "--url", emu.url)


def run(quick: bool = False, provider: str = DEFAULT_PROVIDER) -> list[Figure]:
    """Both contenders at 1,000 jobs of 60 s each (quick: 50 jobs of 4 s, only to see it run); mjasync
    on `provider`'s API."""
    jobs, speed = (50, 4.0) if quick else (1000, 60.0)
    results = {name: measure(name, jobs=jobs, speed=speed, provider=provider) for name in CONTENDERS}
    for name, result in results.items():
        if result["done"] != jobs:
            raise RuntimeError(f"{name}: only {result['done']} of {jobs} jobs finished: {result}")
    theoretical = jobs / OFFICIAL_INTERVAL
    on = "" if provider == DEFAULT_PROVIDER else f" on {provider}"
    notes = {
        PER_TASK: f"{jobs} jobs of {speed:g} s; one retrieve per task every {OFFICIAL_INTERVAL:g} s "
        f"(theory {theoretical:.0f} req/s)",
        MJASYNC: f"{jobs} jobs of {speed:g} s{on}; {results[MJASYNC].get('fetches', 0)} lookups, "
        f"{results[MJASYNC].get('mean_batch', 0.0):.1f} ids each on average",
    }
    done = {name: f"{result['done']}/{jobs} jobs finished" for name, result in results.items()}
    return [
        *ratio_figures(
            BENCH,
            "tasks-endpoint requests per second while waiting",
            "req/s",
            {name: result["requests_per_second"] for name, result in results.items()},
            baseline=PER_TASK,
            targets={MJASYNC: ("<=", 0.05)},
            notes=notes,
        ),
        *ratio_figures(
            BENCH,
            "tasks-endpoint requests per job",
            "req/job",
            {name: result["polls"] / jobs for name, result in results.items()},
            baseline=PER_TASK,
            notes=done,
        ),
        *ratio_figures(
            BENCH,
            "wall time, first submit to last job done",
            "s",
            {name: result["wall_seconds"] for name, result in results.items()},
            baseline=PER_TASK,
            notes={
                name: f"submits took {result['submit_seconds']:.2f} s" for name, result in results.items()
            },
        ),
        *(
            _held_to(figure, bound)
            for percent, bound in DELAY_TARGETS
            for figure in ratio_figures(
                BENCH,
                f"detection delay p{percent}, job end to client knowing",
                "s",
                {name: result[f"delay_p{percent}"] for name, result in results.items()},
                baseline=PER_TASK,
                notes={
                    name: f"max {result['delay_max']:.2f} s over {result['delay_jobs']} jobs"
                    for name, result in results.items()
                },
            )
        ),
    ]


def _held_to(figure: Figure, bound: float) -> Figure:
    """mjasync's delay figure held to an absolute bound (seconds), not to a ratio."""
    if figure.contender != MJASYNC:
        return figure
    return replace(figure, target=f"<= {bound:g} s", met=figure.value <= bound)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--contender", choices=sorted(CONTENDERS.values()), help="run one contender and emit JSON"
    )
    parser.add_argument("--url", help="the emulator's URL (with --contender)")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="without --contender: the small run")
    parser.add_argument(
        "--provider", default=DEFAULT_PROVIDER, help="the API mjasync speaks (default: %(default)s)"
    )
    args = parser.parse_args()
    if args.contender is None:
        for figure in run(quick=args.quick, provider=args.provider):
            print(figure)
        return
    if not args.url:
        parser.error("--contender needs --url")
    if args.contender == "per-task":
        if args.provider != DEFAULT_PROVIDER:
            parser.error("the per-task contender speaks AceData only")
        emit(asyncio.run(per_task(args.url, args.jobs)))
    else:
        emit(asyncio.run(with_mjasync(args.url, args.jobs, args.provider)))


if __name__ == "__main__":
    main()
