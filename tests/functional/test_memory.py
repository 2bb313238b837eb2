"""Memory: a fan-out of 100,000 prompts from a generator keeps the client's memory flat.

The emulator runs in its own process (`python -m mjasync.emulator`), so its task table is not counted;
the client process traces its allocations with `tracemalloc` and samples the traced total after 10 %,
50 % and 100 % of the outcomes. A test of growth, not of time. `MJASYNC_MEMORY_JOBS` sets how many jobs.
"""

from __future__ import annotations

import gc
import json
import os
import re
import selectors
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

import mjasync
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL, open_connections

JOBS = int(os.environ.get("MJASYNC_MEMORY_JOBS", "100000"))
CHECKPOINTS = (JOBS // 10, JOBS // 2, JOBS)
#: Growth allowed between the first and the last checkpoint: a few MB, whatever the number of jobs.
FLAT = 3 * 1024 * 1024
READY = re.compile(rb"mjasync emulator listening on (http://127\.0\.0\.1:\d+)")
#: Seconds allowed for the emulator process to start.
START_TIMEOUT = 30.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@contextmanager
def emulator_process(log: Path) -> Iterator[str]:
    """Run `python -m mjasync.emulator` on 127.0.0.1 and a free port; yield its URL; kill it at the end."""
    command = [sys.executable, "-m", "mjasync.emulator", "--host", "127.0.0.1", "--port", "0"]
    command += ["--speed", "0", "--token", EMULATOR_TOKEN]
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
        try:
            yield _wait_ready(process, log)
        finally:
            process.kill()  # nothing to check in its shutdown, which takes seconds with 100k tasks
            process.wait(timeout=30)
            assert process.stdout is not None
            process.stdout.close()


def _wait_ready(process: subprocess.Popen[bytes], log: Path) -> str:
    """The URL from the emulator's readiness line, read within START_TIMEOUT seconds."""
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and selector.select(left):
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break  # the process ended
            seen += chunk
            if match := READY.search(seen):
                return match[1].decode()
    raise RuntimeError(
        f"the emulator did not start (exit code {process.poll()}): {seen!r} {log.read_bytes()[-2000:]!r}"
    )


def counters(url: str) -> dict[str, Any]:
    """The emulator's `GET /_emulator/counters` (its own process's tables)."""
    with urllib.request.urlopen(f"{url}/_emulator/counters", timeout=30) as response:
        body: dict[str, Any] = json.load(response)
    return body


def known_task_bytes(client: mjasync.Client) -> int:
    """Bytes held by the client's table of the task ids it holds, to explain a failure (0 if unknown)."""
    known = client._engine.known_tasks
    ids: set[str] = getattr(known, "_ids", set())
    order = getattr(known, "_order", ())
    return sys.getsizeof(ids) + sys.getsizeof(order) + sum(sys.getsizeof(i) for i in ids)


@dataclass
class FanOut:
    """What one run of the fan-out measured, by outcomes received."""

    traced: dict[int, int] = field(default_factory=dict)
    known_ids: dict[int, int] = field(default_factory=dict)
    pulled: dict[int, int] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    emulator: dict[str, Any] = field(default_factory=dict)
    open_connections: int = -1

    def growth(self, values: dict[int, int]) -> int:
        """Growth of `values` from the first checkpoint to the last."""
        return values[CHECKPOINTS[-1]] - values[CHECKPOINTS[0]]


@pytest.fixture(scope="module")
async def fan_out(tmp_path_factory: pytest.TempPathFactory) -> FanOut:
    """Run JOBS imagine jobs from a generator through `run_many` once, sampling memory at the checkpoints."""
    measured = FanOut()
    log = tmp_path_factory.mktemp("memory") / "emulator.log"
    with emulator_process(log) as url:
        started = time.monotonic()
        tracemalloc.start()
        try:
            async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=url, poll=FAST_POLL) as client:
                jobs = (client.imagine(f"flat memory {i}") for i in range(JOBS))
                done = 0
                async with client.run_many(jobs, via="stream") as outcomes:
                    async for outcome in outcomes:
                        done += 1
                        if not outcome.ok and len(measured.failures) < 5:
                            measured.failures.append(repr(outcome.error))
                        if done in CHECKPOINTS:
                            gc.collect()
                            measured.traced[done] = tracemalloc.get_traced_memory()[0]
                            measured.known_ids[done] = known_task_bytes(client)
                            measured.pulled[done] = outcomes.started
                            measured.seconds[done] = time.monotonic() - started
                measured.open_connections = open_connections(client)
        finally:
            tracemalloc.stop()
        measured.emulator = await anyio.to_thread.run_sync(counters, url)
    return measured


async def test_every_job_of_the_fan_out_finished_once(fan_out: FanOut) -> None:
    """All JOBS jobs ended with their result, one task each, pulled lazily, no connection left."""
    assert fan_out.failures == []
    assert sorted(fan_out.traced) == sorted(CHECKPOINTS), "every outcome arrived"
    emulator = fan_out.emulator
    assert emulator["counters"]["submits"] == JOBS
    assert max(emulator["tasks_per_prompt"].values()) == 1
    concurrency = mjasync.Limits().max_in_flight
    assert all(pulled <= done + 2 * concurrency for done, pulled in fan_out.pulled.items()), (
        "the generator was pulled only as slots freed up"
    )
    assert fan_out.open_connections == 0


async def test_fan_out_of_100k_prompts_keeps_memory_flat(fan_out: FanOut) -> None:
    """From 10 % to 100 % of the jobs, the client's traced memory grows by less than 3 MB."""
    growth = fan_out.growth(fan_out.traced)
    assert growth < FLAT, (
        f"grew {growth / 1e6:.1f} MB from {CHECKPOINTS[0]} to {JOBS} jobs, of which the table of known "
        f"task ids {fan_out.growth(fan_out.known_ids) / 1e6:.1f} MB; samples {fan_out.traced}, "
        f"seconds {fan_out.seconds}"
    )
