"""Benchmark 6: capacity under refusals.

Jobs are AceData streams (`imagine`, ndjson) of `--speed` seconds each, sent by 64 workers for a fixed
time against an emulator in its own process; the emulator counts a stream as an open submit while it
lasts, so its concurrency limit is a true per-account cap. Contenders, each in a fresh process with
its own emulator, the three run side by side (this benchmark measures behaviour, not CPU):

- **mjasync**: `Client` with `Limits(max_in_flight=64)`: the limiter that learns the cap;
- **AIMD (before)**: the same client with the earlier limiter (`JobLimiter(policy="aimd")`: every 429
  that starts a cooldown halves the cap and pauses everyone; +1 per 10 clean completions);
- **semaphore + retry**: what users write without us: plain aiohttp, `asyncio.Semaphore(64)`, and on a
  429 that request sleeps its Retry-After and tries again.

Cases (Retry-After 1 s on every 429; the emulator's counters count every request, whoever sent it):

- **cap N** (4, 16, 48): `--concurrency-limit N`. Mean in flight after a 5 s warm-up (the submits the
  emulator holds open, which is what its cap counts: the integral it keeps, `open_submits.seconds`,
  read every 0.25 s) >= 0.9 N; refused submits <= 5 % after the warm-up (also shown for the whole run,
  which includes the 64 submits sent at once at the start).
- **random refusals**: 16 workers, no cap, 15 % of submits refused at random (a seeded `FaultPlan`):
  jobs/s >= 0.6x the same run without faults.
- **outage**: cap 16; every request refused for 10 s (`POST /_emulator/limits {"outage": 10}`): at
  most 2 requests/s during it, and back to >= 0.9 of the full rate within 10 s after.
- **changing cap**: 16 -> 4 -> 16 (`{"concurrency_limit": N}`): converged (a 2 s window at >= 0.9 of the
  new cap's rate, and refusals in it <= 10 % of submits) within 20 s of each change.

Every case is run `PASSES` (3) times, the passes one after another over all the cases; each figure
is the median of its passes, with their range beside it.

    python benchmarks/run.py --only 6        # about 12 minutes; --quick: a few seconds of one case

A contender process: `bench_capacity.py --contender {mjasync,aimd,semaphore} --url URL --seconds T
--workers W [--schedule JSON]` prints one JSON line: completion times and the emulator's counters,
sampled every 0.25 s.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from _harness import TOKEN, Figure, Spread, emit, emulator, spawn

__all__ = ["BENCH", "CONTENDERS", "run"]

BENCH = "6 capacity under refusals"
MJASYNC = "mjasync"
AIMD = "AIMD (before)"
SEMAPHORE = "semaphore + retry"
#: Contender name -> the `--contender` value of its process.
CONTENDERS = {MJASYNC: "mjasync", AIMD: "aimd", SEMAPHORE: "semaphore"}
WORKERS = 64
#: Seconds each job takes at the emulator.
SPEED = 0.5
SAMPLE = 0.25
#: Passes over all the cases (each figure is the median of its passes).
PASSES = 3
REFUSED = ("fault_429", "fault_concurrency", "fault_outage")


# --- the contender process ----------------------------------------------------------------------------


def _post_limits(url: str, limits: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{url}/_emulator/limits", data=json.dumps(limits).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=30):  # only ever 127.0.0.1
        pass


def _counters(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_emulator/counters", timeout=30) as response:  # 127.0.0.1
        body: dict[str, Any] = json.loads(response.read())
    return body


async def _scenario(url: str, schedule: list[tuple[float, dict[str, Any]]], started: float) -> None:
    for at, limits in schedule:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        await asyncio.to_thread(_post_limits, url, limits)


async def _sampler(url: str, samples: list[dict[str, float]], started: float, until: float) -> None:
    with ThreadPoolExecutor(1) as pool:
        loop = asyncio.get_running_loop()
        while time.monotonic() < until:
            body = await loop.run_in_executor(pool, _counters, url)
            got = body["counters"]
            samples.append(
                {
                    "t": time.monotonic() - started,
                    "submits": got.get("submits", 0),
                    "refused": sum(got.get(name, 0) for name in REFUSED),
                    "outage": got.get("fault_outage", 0),
                    # Seconds of open submits (the integral the emulator keeps): what the cap counts.
                    "held": body["open_submits"]["seconds"],
                }
            )
            await asyncio.sleep(SAMPLE)


async def _mjasync_worker(client: Any, done: list[float], started: float, until: float, index: int) -> None:
    count = 0
    while time.monotonic() < until:
        count += 1
        try:
            async with client.imagine(f"worker {index} job {count}").stream() as updates:
                async for _ in updates:
                    pass
        except Exception:  # a job given up on is simply not counted
            continue
        if updates.final is not None:
            done.append(time.monotonic() - started)


async def _semaphore_worker(
    session: aiohttp.ClientSession,
    url: str,
    gate: asyncio.Semaphore,
    done: list[float],
    started: float,
    until: float,
    index: int,
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/x-ndjson"}
    count = 0
    while time.monotonic() < until:
        count += 1
        body = {"prompt": f"worker {index} job {count}"}
        async with gate:
            while time.monotonic() < until:
                async with session.post(f"{url}/midjourney/imagine", json=body, headers=headers) as resp:
                    if resp.status == 429:
                        await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                        continue
                    async for _ in resp.content:
                        pass
                    if resp.status == 200:
                        done.append(time.monotonic() - started)
                    break


async def contend(
    contender: str, url: str, seconds: float, workers: int, schedule: list[tuple[float, dict[str, Any]]]
) -> dict[str, Any]:
    started = time.monotonic()
    until = started + seconds
    done: list[float] = []
    samples: list[dict[str, float]] = []
    side = [_scenario(url, schedule, started), _sampler(url, samples, started, until)]
    if contender == "semaphore":
        gate = asyncio.Semaphore(WORKERS)
        connector = aiohttp.TCPConnector(limit=WORKERS * 2)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(
                *side,
                *(_semaphore_worker(session, url, gate, done, started, until, i) for i in range(workers)),
            )
    else:
        import mjasync
        from mjasync._limiter import JobLimiter

        async with mjasync.Client(
            api_key=TOKEN, base_url=url, limits=mjasync.Limits(max_in_flight=WORKERS)
        ) as client:
            if contender == "aimd":
                # Benchmark only: the earlier control, on the same client.
                client._engine.limiter = JobLimiter(WORKERS, policy="aimd")
            await asyncio.gather(
                *side, *(_mjasync_worker(client, done, started, until, i) for i in range(workers))
            )
    return {"contender": contender, "seconds": seconds, "done": done, "samples": samples}


# --- the cases ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    seconds: float
    workers: int = WORKERS
    cap: int | None = None
    random_share: float = 0.0
    schedule: tuple[tuple[float, dict[str, Any]], ...] = ()

    def emulator_args(self) -> list[str]:
        args = [] if self.cap is None else ["--concurrency-limit", str(self.cap)]
        if self.random_share:
            args += [
                "--fault-rate",
                str(self.random_share),
                "--fault-kinds",
                "429",
                "--fault-scope",
                "submits",
            ]
        return args


def _measure(case: Case) -> dict[str, dict[str, Any]]:
    """Each contender against its own emulator, the three side by side."""
    with ThreadPoolExecutor(len(CONTENDERS)) as pool:

        def one(contender: str) -> dict[str, Any]:
            with emulator(speed=SPEED, extra=case.emulator_args()) as emu:
                return spawn(
                    "bench_capacity.py",
                    "--contender",
                    contender,
                    "--url",
                    emu.url,
                    "--seconds",
                    str(case.seconds),
                    "--workers",
                    str(case.workers),
                    "--schedule",
                    json.dumps(case.schedule),
                )

        futures = {name: pool.submit(one, flag) for name, flag in CONTENDERS.items()}
        return {name: future.result() for name, future in futures.items()}


def _in_flight(samples: Sequence[dict[str, float]], start: float, end: float) -> float:
    """Mean number of submits the provider held open between `start` and `end` (nearest samples)."""
    inside = [s for s in samples if start <= s["t"] <= end]
    if len(inside) < 2:
        return 0.0
    return (inside[-1]["held"] - inside[0]["held"]) / (inside[-1]["t"] - inside[0]["t"])


def _rate(done: Sequence[float], start: float, end: float) -> float:
    return sum(1 for t in done if start <= t < end) / (end - start)


def _sampled(samples: Sequence[dict[str, float]], key: str, start: float, end: float) -> float:
    """How much counter `key` grew between `start` and `end` (nearest samples)."""
    inside = [s for s in samples if start <= s["t"] <= end]
    return inside[-1][key] - inside[0][key] if len(inside) >= 2 else 0.0


def _refused_share(samples: Sequence[dict[str, float]], start: float, end: float) -> float:
    refused = _sampled(samples, "refused", start, end)
    sent = refused + _sampled(samples, "submits", start, end)
    return refused / sent if sent else 0.0


def _converged_after(result: dict[str, Any], change: float, cap: int, limit: float) -> float:
    """Seconds from `change` to the first 2 s window at >= 0.9 of the cap's rate with few refusals."""
    full = cap / SPEED
    t = change
    while t + 2 <= min(change + limit, result["seconds"]):
        if (
            _rate(result["done"], t, t + 2) >= 0.9 * full
            and _refused_share(result["samples"], t, t + 2) <= 0.1
        ):
            return t - change
        t += SAMPLE
    return math.inf


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured number of one pass; `sense` and `bound` the target (mjasync's rows only)."""

    contender: str
    metric: str
    value: float
    unit: str
    sense: str = ""
    bound: float = 0.0


def _figure(contender: str, metric: str, value: float, unit: str, sense: str, bound: float) -> Row:
    return (
        Row(contender, metric, value, unit, sense, bound)
        if contender == MJASYNC
        else Row(contender, metric, value, unit)
    )


def _medians(passes: Sequence[Sequence[Row]]) -> list[Figure]:
    """Each figure's median over the passes, with its range beside it (the same rows in every pass)."""
    figures = []
    for rows in zip(*passes, strict=True):
        first = rows[0]
        spread = Spread.of([row.value for row in rows])
        value = spread.median
        met = None
        if first.sense:
            met = value <= first.bound if first.sense == "<=" else value >= first.bound
        target = f"{first.sense} {first.bound:g}" if first.sense else ""
        note = "" if spread.count == 1 else spread.describe(first.unit)
        figures.append(
            Figure(BENCH, first.contender, first.metric, value, first.unit, None, target, met, note)
        )
    return figures


def run(quick: bool = False) -> list[Figure]:
    """Every case, `PASSES` times over (the cases interleaved): each figure's median and range.

    `quick`: one pass of the cap-16 case, briefly (checks that it all runs).
    """
    return _medians([_one_pass(quick) for _ in range(1 if quick else PASSES)])


def _one_pass(quick: bool) -> list[Row]:
    """One pass over the cases: a row per contender and metric, always in the same order."""
    scale = 0.25 if quick else 1.0
    figures: list[Row] = []
    warm = 5.0 * scale
    for cap in (16,) if quick else (4, 16, 48):
        case = Case(f"cap {cap}", seconds=20 * scale, cap=cap)
        for name, result in _measure(case).items():
            in_flight = _in_flight(result["samples"], warm, case.seconds)
            after = _refused_share(result["samples"], warm, case.seconds)
            overall = _refused_share(result["samples"], 0, case.seconds)
            figures += [
                _figure(name, f"cap {cap}: in flight / cap", in_flight / cap, "×", ">=", 0.9),
                _figure(name, f"cap {cap}: refused submits after warm-up", 100 * after, "%", "<=", 5.0),
                Row(name, f"cap {cap}: refused submits, all (the first 64 at once)", 100 * overall, "%"),
            ]
    if quick:
        return figures
    clean = _measure(Case("clean", seconds=15 * scale, workers=16))
    noisy = _measure(Case("random", seconds=15 * scale, workers=16, random_share=0.15))
    for name in CONTENDERS:
        ratio = len(noisy[name]["done"]) / max(1, len(clean[name]["done"]))
        figures.append(_figure(name, "15 % refused: jobs/s vs fault-free", ratio, "×", ">=", 0.6))
    begin, length = 8 * scale, 10 * scale
    outage = Case(
        "outage", seconds=begin + length + 12 * scale, cap=16, schedule=((begin, {"outage": length}),)
    )
    for name, result in _measure(outage).items():
        sent = _sampled(result["samples"], "outage", begin, begin + length) / length
        back = _converged_after(result, begin + length, 16, 10 * scale + 2)
        figures += [
            _figure(name, "outage: requests/s during it", sent, "req/s", "<=", 2.0),
            _figure(name, "outage: back to full rate after", back, "s", "<=", 10.0 * scale),
        ]
    first, second = 8 * scale, 30 * scale
    change = Case(
        "change",
        seconds=second + 22 * scale,
        schedule=(
            (0.0, {"concurrency_limit": 16}),
            (first, {"concurrency_limit": 4}),
            (second, {"concurrency_limit": 16}),
        ),
    )
    for name, result in _measure(change).items():
        down = _converged_after(result, first, 4, 20 * scale + 2)
        up = _converged_after(result, second, 16, 20 * scale + 2)
        figures += [
            _figure(name, "cap 16 → 4: converged after", down, "s", "<=", 20.0 * scale),
            _figure(name, "cap 4 → 16: converged after", up, "s", "<=", 20.0 * scale),
        ]
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one contender of benchmark 6")
    parser.add_argument("--contender", choices=sorted(set(CONTENDERS.values())), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--schedule", default="[]")
    args = parser.parse_args(argv)
    schedule = [(float(at), dict(limits)) for at, limits in json.loads(args.schedule)]
    emit(asyncio.run(contend(args.contender, args.url, args.seconds, args.workers, schedule)))


if __name__ == "__main__":
    main()
