"""Benchmark 2: streamed jobs (`accept: application/x-ndjson`, 6 progress lines each) at concurrency 64.

Measures, per contender, in its own process against the emulator (its own process, speed 0): client
CPU µs per streamed job (`time.process_time()`, every line read and decoded) and jobs/s.

Contenders: mjasync (`async with client.imagine(p).stream()`, every update iterated); raw aiohttp
reading the body line by line and decoding each line with a reused msgspec decoder (the floor); an
`httpx.AsyncClient` script (`aiter_lines()` + `json.loads`); the seeds' streaming `requests` sample
(`stream=True`, `iter_lines()`) in a pool of 64 threads. AceData's SDK has no ndjson streaming (its
streams are SSE only; peers.md), so it is not in this one.

Passes and figures as in benchmark 1 (`bench_fanout.compare`): interleaved passes, every contender's
median with its range. Target: mjasync ≤ 1.2× raw aiohttp's CPU per job, on the medians.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import TOKEN, Figure
from bench_fanout import (
    CONCURRENCY,
    PATH,
    Contender,
    _fan_out,
    _prompt,
    _threaded,
    _timed_async,
    compare,
    main_for,
)

BENCH = "2 streamed jobs"
CONTENDERS = ("raw_aiohttp", "mjasync", "httpx", "requests_threads")
#: Progress lines the emulator sends per streamed imagine (5 steps and the final result).
LINES_PER_JOB = 6


async def raw_aiohttp(url: str, jobs: int, warmup: int, repeats: int) -> dict[str, float]:
    """The floor: aiohttp's own line iteration, one reused msgspec decoder per line."""
    import aiohttp
    import msgspec

    class Update(msgspec.Struct):
        task_id: str = ""
        image_id: str = ""
        image_url: str = ""
        progress: float = 0
        actions: list[str] = []

    decode = msgspec.json.Decoder(Update).decode
    encode = msgspec.json.encode
    headers = {
        "authorization": f"Bearer {TOKEN}",
        "accept": "application/x-ndjson",
        "content-type": "application/json",
    }
    async with aiohttp.ClientSession(
        url, headers=headers, connector=aiohttp.TCPConnector(limit=CONCURRENCY)
    ) as session:

        async def one(i: int) -> None:
            lines = 0
            async with session.post(PATH, data=encode({"prompt": _prompt(i)})) as response:
                async for line in response.content:
                    if line.strip():
                        last = decode(line)
                        lines += 1
            assert lines == LINES_PER_JOB and last.actions

        return await _timed_async(lambda n: _fan_out(one, n, CONCURRENCY), jobs, warmup, repeats)


async def mjasync_client(url: str, jobs: int, warmup: int, repeats: int) -> dict[str, float]:
    """mjasync as a user writes it to watch progress: iterate `job.stream()`."""
    import mjasync

    async with mjasync.Client(
        api_key=TOKEN, base_url=url, limits=mjasync.Limits(max_in_flight=CONCURRENCY)
    ) as client:

        async def one(i: int) -> None:
            lines = 0
            async with client.imagine(_prompt(i)).stream() as updates:
                async for _update in updates:
                    lines += 1
            assert lines == LINES_PER_JOB and updates.final is not None

        return await _timed_async(lambda n: _fan_out(one, n, CONCURRENCY), jobs, warmup, repeats)


async def httpx_client(url: str, jobs: int, warmup: int, repeats: int) -> dict[str, float]:
    """The peers' stack: `client.stream(...)`, `aiter_lines()`, `json.loads` per line."""
    import httpx

    headers = {"authorization": f"Bearer {TOKEN}", "accept": "application/x-ndjson"}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=300) as client:

        async def one(i: int) -> None:
            lines = 0
            async with client.stream("POST", PATH, json={"prompt": _prompt(i)}) as response:
                async for line in response.aiter_lines():
                    if line.strip():
                        last = json.loads(line)
                        lines += 1
            assert lines == LINES_PER_JOB and last["actions"]

        return await _timed_async(lambda n: _fan_out(one, n, CONCURRENCY), jobs, warmup, repeats)


def requests_threads(url: str, jobs: int, warmup: int, repeats: int) -> dict[str, float]:
    """The seeds' streaming sample (AceData's imagine guide), as printed but for URL, token, print."""
    import requests

    def sample(i: int) -> None:
        headers = {
            "content-type": "application/json",
            "accept": "application/x-ndjson",
            "authorization": f"Bearer {TOKEN}",
        }
        body = {"prompt": _prompt(i)}
        r = requests.post(f"{url}{PATH}", headers=headers, json=body, stream=True)
        lines = [json.loads(line.decode()) for line in r.iter_lines() if line]  # the sample prints them
        assert len(lines) == LINES_PER_JOB and lines[-1]["actions"]

    return _threaded(sample, jobs, warmup, repeats)


CONTENDER_RUNS: dict[str, Contender] = {
    "raw_aiohttp": raw_aiohttp,
    "mjasync": mjasync_client,
    "httpx": httpx_client,
    "requests_threads": requests_threads,
}


def run(quick: bool = False) -> list[Figure]:
    """Every contender against one emulator at speed 0; figures with ratios to raw aiohttp."""
    sizes = (64, 16, 1, 1, 0) if quick else (2000, 300, 3, 3, 4)
    figures, _cpu = compare(BENCH, Path(__file__).name, CONTENDERS, sizes, 1.2)
    return figures


if __name__ == "__main__":
    main_for(CONTENDER_RUNS, run, __doc__)
