"""`SharedLimits`: clients in several processes share one account's limits on a real redis-server.

Separate `SharedLimits` objects stand for separate processes (each has its own connections); one test
runs real subprocesses (`limits_worker.py`). The emulator's per-token cap counts open streams, so a
client that goes over the shared cap would be answered 429 (`faults["concurrency"]`).
"""

from __future__ import annotations

import json
import socket
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio

import mjasync
from mjasync.emulator import Emulator
from mjasync.redis import CoordinatorUnavailableError
from mjasync.redis._limits import SharedLimits
from mjasync.testing import EMULATOR_TOKEN
from tests.redis_server import RedisServer

from ..conftest import FAST_POLL

WORKER = Path(__file__).with_name("limits_worker.py")
#: A hang detector for conditions that take real time (leases, pauses), not a timing expectation.
BOUND = 60.0
ACCOUNT = "team"
TAG = "{mj:team}"


def client(emu: Emulator, limits: SharedLimits) -> mjasync.Client:
    return mjasync.Client(api_key=EMULATOR_TOKEN, base_url=emu.url, poll=FAST_POLL, limiter=limits)


async def run_jobs(
    emu: Emulator, limits: SharedLimits, prefix: str, count: int
) -> list[mjasync.Outcome[Any]]:
    async with client(emu, limits) as mj:
        jobs = [mj.imagine(f"{prefix} {n}") for n in range(count)]
        async with mj.run_many(jobs, via="stream") as outcomes:
            return [outcome async for outcome in outcomes]


async def until(condition: Callable[[], Awaitable[bool]] | Callable[[], bool], what: str) -> None:
    """Look at `condition` until it holds (it takes Redis's or the emulator's time); bounded."""
    with anyio.fail_after(BOUND):
        while True:
            value = condition()
            if not isinstance(value, bool):
                value = await value
            if value:
                return
            await anyio.sleep(0.005)


class Peaks:
    """Samples, while jobs run, the slots held in Redis and the streams the emulator has open."""

    def __init__(self, url: str, emu: Emulator) -> None:
        self.url = url
        self.emu = emu
        self.redis = 0
        self.emulator = 0.0
        self.samples = 0

    async def watch(self, done: anyio.Event) -> None:
        async with redis.asyncio.Redis.from_url(self.url) as watcher:
            while not done.is_set():
                self.redis = max(self.redis, await watcher.zcard(f"{TAG}:inflight"))
                self.emulator = max(self.emulator, self.emu.open_submits["now"])
                self.samples += 1
                await anyio.sleep(0.002)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, to stop, kill or pause."""
    with RedisServer(tmp_path / "redis") as own:
        yield own


async def test_separate_connections_share_one_cap(redis_url: str) -> None:
    """Three holders (as three processes would be) under one cap of 4: never more than 4 slots held in
    Redis, never more than 4 streams open at the emulator (it would refuse the fifth), every job ends."""
    async with Emulator(speed=0.1, concurrency_limit=4) as emu:
        holders = [SharedLimits(redis_url, account=ACCOUNT, max_in_flight=4) for _ in range(3)]
        peaks = Peaks(redis_url, emu)
        async with holders[0] as a, holders[1] as b, holders[2] as c:
            results: list[mjasync.Outcome[Any]] = []

            async def jobs_of(limits: SharedLimits, prefix: str) -> None:
                results.extend(await run_jobs(emu, limits, prefix, 12))

            done = anyio.Event()
            async with anyio.create_task_group() as watching:
                watching.start_soon(peaks.watch, done)
                async with anyio.create_task_group() as running:
                    for limits, prefix in ((a, "a"), (b, "b"), (c, "c")):
                        running.start_soon(jobs_of, limits, prefix)
                done.set()
            shared = await a.shared_statistics()
            local = [limits.statistics() for limits in (a, b, c)]
        trips = sum(limits.round_trips for limits in (a, b, c))
    assert [o.ok for o in results] == [True] * 36, [o.error for o in results if not o.ok]
    assert emu.faults["concurrency"] == 0  # the emulator never saw a fifth stream
    assert peaks.samples > 10 and peaks.redis == 4 and peaks.emulator <= 4
    assert shared.in_flight == 0 and shared.holders == {} and shared.limit == 4
    assert all(s.in_flight == s.waiting == s.retrying == 0 and s.limit == 4 for s in local)
    # One admission per job; releases and completions batched (the benchmark reports the real figure).
    assert trips / 36 < 4, trips


async def test_processes_share_one_cap(redis_url: str) -> None:
    """Three real processes, each with its own client and `SharedLimits`, share a cap of 4."""
    async with Emulator(speed=0.1, concurrency_limit=4) as emu:
        peaks = Peaks(redis_url, emu)
        reports: list[dict[str, Any]] = []

        async def worker(prefix: str) -> None:
            command = [sys.executable, "-W", "error", str(WORKER), "run", redis_url, ACCOUNT, "4"]
            done = await anyio.run_process([*command, emu.url, prefix, "10"], check=False)
            assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
            reports.append(json.loads(done.stdout.decode().strip().splitlines()[-1]))

        done = anyio.Event()
        with anyio.fail_after(BOUND * 2):
            async with anyio.create_task_group() as watching:
                watching.start_soon(peaks.watch, done)
                async with anyio.create_task_group() as running:
                    for prefix in ("p", "q", "r"):
                        running.start_soon(worker, prefix)
                done.set()
    assert [(r["ok"], r["errors"]) for r in reports] == [(10, [])] * 3
    assert len({r["holder"] for r in reports}) == 3
    assert emu.faults["concurrency"] == 0 and emu.counters["submits"] == 30
    assert peaks.redis <= 4 and peaks.emulator <= 4


async def test_a_killed_process_frees_its_slots_when_its_leases_expire(redis_url: str) -> None:
    """A process holding every slot is SIGKILLed: its leases run out and the slots come back. While it
    lived, it kept them past their first expiry (refreshed)."""
    command = [sys.executable, "-W", "error", str(WORKER), "hold", redis_url, ACCOUNT, "3", "3", "0.6"]
    async with SharedLimits(redis_url, account=ACCOUNT, max_in_flight=3) as limits:
        async with await anyio.open_process(command) as process:
            assert process.stdout is not None
            with anyio.fail_after(BOUND):
                line = await process.stdout.receive()
            holder = json.loads(line)["holder"]
            first = await limits.shared_statistics()
            assert first.holders == {holder: 3} and first.in_flight == 3
            # Its leases last 0.6 s and are refreshed every 0.2 s: after several lease times, still held.
            async with redis.asyncio.Redis.from_url(redis_url) as watcher:
                start = float((await watcher.time())[0])
                await until(lambda: _later(watcher, start + 2), "two seconds of Redis's clock")
            assert (await limits.shared_statistics()).holders == {holder: 3}
            process.kill()
            await process.wait()
        borrowers = [object(), object(), object()]
        with anyio.fail_after(BOUND):
            for borrower in borrowers:
                await limits.acquire(borrower)  # each one waits for a dead lease to expire
        shared = await limits.shared_statistics()
        assert shared.holders == {limits.holder: 3}
        for borrower in borrowers:
            limits.release(borrower)


async def _later(watcher: redis.asyncio.Redis, at: float) -> bool:
    seconds, micros = await watcher.time()
    return seconds + micros / 1e6 > at


async def test_a_cooldown_started_by_one_is_waited_out_by_the_others(redis_url: str) -> None:
    """A's jobs meet an outage (every request 429): a sustained overload, one shared pause in Redis.
    B, told of it, takes no slot and sends nothing until it is over; then every job ends."""
    async with (
        Emulator(speed=0.05) as emu,
        SharedLimits(redis_url, account=ACCOUNT, max_in_flight=8) as a,
        SharedLimits(redis_url, account=ACCOUNT, max_in_flight=8) as b,
        redis.asyncio.Redis.from_url(redis_url) as watcher,
    ):
        # The outage is shorter than the pause it causes (Retry-After: 1 s): B sending during the
        # pause would mostly meet it; after the pause, nothing is refused.
        emu.set_limits(outage=0.8)
        pauses_left: list[int] = []
        admit = b.acquire

        async def acquire(borrower: object) -> None:
            await admit(borrower)
            pauses_left.append(await watcher.pttl(f"{TAG}:cooldown"))

        b.acquire = acquire  # type: ignore[method-assign]
        results: dict[str, list[mjasync.Outcome[Any]]] = {}

        async def jobs_of(limits: SharedLimits, prefix: str, count: int) -> None:
            results[prefix] = await run_jobs(emu, limits, prefix, count)

        async with anyio.create_task_group() as group:
            group.start_soon(jobs_of, a, "a", 4)
            await until(lambda: b.statistics().cooldown_remaining > 0, "B hears of the pause")
            assert await watcher.pttl(f"{TAG}:cooldown") > 0
            group.start_soon(jobs_of, b, "b", 3)
    assert all(o.ok for o in results["a"] + results["b"]), [o.error for o in results["a"] + results["b"]]
    assert a.statistics().cooldowns == 1 and b.statistics().cooldowns == 1
    assert len(pauses_left) == 3 and max(pauses_left) <= 0  # admitted only once the pause was over
    refused = [r for r in emu.requests if r.status == 429 and isinstance(r.json, dict)]
    assert refused and all(str(r.json.get("prompt", "")).startswith("a ") for r in refused)


async def test_the_learnt_cap_is_shared(redis_url: str) -> None:
    """Two holders configured for 12 against a provider that takes 4: the cap learnt from both their
    refusals and completions is one state in Redis, and both use it.

    Each holder reads the others' part of a level from its last reply, so the learning is less exact
    than one process's (`tests/functional/test_capacity.py`: exactly 4); jobs of 0.6 s keep the error
    small (with real jobs of tens of seconds it is smaller still).
    """
    async with Emulator(speed=0.6, concurrency_limit=4) as emu:
        async with (
            SharedLimits(redis_url, account=ACCOUNT, max_in_flight=12) as a,
            SharedLimits(redis_url, account=ACCOUNT, max_in_flight=12) as b,
        ):
            results: list[mjasync.Outcome[Any]] = []

            async def jobs_of(limits: SharedLimits, prefix: str) -> None:
                results.extend(await run_jobs(emu, limits, prefix, 16))

            async with anyio.create_task_group() as group:
                group.start_soon(jobs_of, a, "a")
                group.start_soon(jobs_of, b, "b")
            shared = await a.shared_statistics()
            local = (a.statistics(), b.statistics())
    assert all(o.ok for o in results), [o.error for o in results if not o.ok]
    assert shared.decreases >= 1, shared  # learnt from refusals
    # Learnt near the provider's 4, not exactly (see above): far below the configured 12.
    assert shared.estimate is None or shared.estimate <= 8, shared
    # Both apply the one learnt cap (each reads its estimate from the state as of its last batch).
    assert local[0].limit == local[1].limit == shared.limit
    assert {local[0].estimate, local[1].estimate} & {shared.estimate}
    # After the first burst, the shared cap keeps refusals few.
    assert emu.faults["concurrency"] < 32, emu.faults


async def test_the_probe_after_a_shared_pause_goes_first_across_processes(redis_url: str) -> None:
    """After a pause, the first submit to ask (in A) is the probe; B's submit waits for its answer."""
    async with (
        SharedLimits(redis_url, account=ACCOUNT, max_in_flight=8) as a,
        SharedLimits(redis_url, account=ACCOUNT, max_in_flight=8) as b,
    ):
        await a.acquire("job a")
        await b.acquire("job b")
        # A submit refused twice at once: a sustained overload, with a pause of 0.2 s and then a probe.
        await a.acquire("job a2")
        with pytest.raises(mjasync.RateLimitError):
            with a.sending():
                raise mjasync.RateLimitError("too many", status=429)
        a.refused_for_good(0.2)
        a.refused_for_good(0.2)
        a.release("job a2")
        await until(lambda: b.statistics().cooldowns == 1, "B hears of the pause")
        assert not b.clear_to_submit()
        await a.before_submit()  # waits the pause out, then claims the probe
        asked = b.round_trips
        b_cleared = anyio.Event()

        async def b_submits() -> None:
            await b.before_submit()
            b_cleared.set()

        async with anyio.create_task_group() as group:
            group.start_soon(b_submits)
            await until(lambda: b.round_trips > asked, "B asked and was told to wait")
            assert not b_cleared.is_set()
            with a.sending():  # the probe is taken
                pass
            with anyio.fail_after(BOUND):
                await b_cleared.wait()
        assert (await b.shared_statistics()).probe is False
        a.release("job a")
        b.release("job b")


async def test_redis_down_fails_closed_and_nothing_is_sent(server: RedisServer) -> None:
    """Without Redis no submit goes out (CoordinatorUnavailableError); a job already sent goes on to its
    end; once Redis is back, jobs run again."""
    async with (
        Emulator(speed=0.3) as emu,
        SharedLimits(server.url, account=ACCOUNT, max_in_flight=4, timeout=1.0) as limits,
        client(emu, limits) as mj,
    ):
        waiting = mj.imagine("sent before")
        async with anyio.create_task_group() as group:
            finished: list[Any] = []

            async def wait_for_it() -> None:
                finished.append(await waiting)

            group.start_soon(wait_for_it)
            await until(lambda: emu.counters["submits"] == 1, "the first job is submitted")
            server.kill()
            with pytest.raises(CoordinatorUnavailableError, match="Redis could not be reached"):
                await mj.imagine("not sent")
            with pytest.raises(CoordinatorUnavailableError):
                async with mj.imagine("not streamed").stream() as updates:
                    async for _ in updates:
                        pass
        assert finished and finished[0].image_url  # its wait went on without Redis
        assert emu.counters["submits"] == 1
        assert not any("not " in str((r.json or {}).get("prompt", "")) for r in emu.requests if r.json)
        assert limits.statistics().in_flight == 0
        server.start()
        result = await mj.imagine("after")
        assert result.image_url and emu.counters["submits"] == 2


async def test_a_hung_redis_fails_closed_within_the_timeout(server: RedisServer) -> None:
    """A stopped (SIGSTOP) server answers nothing: admission gives up after the timeout, sends nothing."""
    async with (
        Emulator() as emu,
        SharedLimits(server.url, account=ACCOUNT, timeout=0.5) as limits,
        client(emu, limits) as mj,
    ):
        server.pause()
        try:
            with pytest.raises(CoordinatorUnavailableError):
                await mj.imagine("hung")
        finally:
            server.resume()
        assert emu.counters["submits"] == 0


async def test_a_holder_started_while_redis_is_down_admits_nothing(server: RedisServer) -> None:
    server.kill()
    async with SharedLimits(server.url, account=ACCOUNT, timeout=0.5) as limits:
        with pytest.raises(CoordinatorUnavailableError):
            await limits.acquire("job")
        with pytest.raises(CoordinatorUnavailableError):
            await limits.before_submit()
        assert not limits.clear_to_submit() or limits.statistics().in_flight == 0


async def test_the_password_never_shows(server: RedisServer) -> None:
    """Neither the repr nor any error (message, repr, chained causes, traceback) shows a password: not
    for a wrong one, not for a server that cannot be reached, not for the right one once it is down."""
    secret, wrong = "hunter2-very-secret-password", "not-the-password-either"
    async with redis.asyncio.Redis.from_url(server.url) as admin:
        await admin.config_set("requirepass", secret)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        nowhere = f"redis://:{secret}@127.0.0.1:{free.getsockname()[1]}/0"
    right = server.url.replace("redis://", f"redis://default:{secret}@")
    wrong_one = server.url.replace("redis://", f"redis://:{wrong}@")

    async def refused(limits: SharedLimits) -> BaseException:
        assert secret not in repr(limits) and wrong not in repr(limits)
        assert "127.0.0.1" in repr(limits) and ACCOUNT in repr(limits)
        with pytest.raises(CoordinatorUnavailableError) as caught:
            await limits.acquire("job")
        return caught.value

    errors = []
    for url in (nowhere, wrong_one):
        async with SharedLimits(url, account=ACCOUNT, timeout=0.5) as limits:
            errors.append(await refused(limits))
    async with SharedLimits(right, account=ACCOUNT, timeout=0.5) as limits:
        async with limits.slot("works"):
            pass
        server.kill()
        errors.append(await refused(limits))
    for error in errors:
        shown = "".join(traceback.format_exception(error))
        chain: list[BaseException] = []
        link: BaseException | None = error
        while link is not None and len(chain) < 10:
            chain.append(link)
            link = link.__cause__ or link.__context__
        for text in (shown, *map(str, chain), *map(repr, chain)):
            assert secret not in text and wrong not in text, text


async def test_statistics_local_and_shared(redis_url: str) -> None:
    async with (
        SharedLimits(redis_url, account=ACCOUNT, max_in_flight=5) as a,
        SharedLimits(redis_url, account=ACCOUNT, max_in_flight=5) as b,
    ):
        async with a.slot("one"), a.slot("two"), b.slot("three"):
            mine = a.statistics()
            assert (mine.in_flight, mine.limit, mine.max_limit, mine.waiting) == (2, 5, 5, 0)
            shared = await b.shared_statistics()
            assert shared.in_flight == 3 and shared.holders == {a.holder: 2, b.holder: 1}
            assert shared.limit == 5 and shared.cooldown_remaining == 0 and shared.estimate is None
        await until(lambda: _drained(a), "the releases are sent")
        assert (await a.shared_statistics()).in_flight == 0
        assert a.round_trips >= 3  # subscribe, two admissions, a batch (or more), and these reads


async def _drained(limits: SharedLimits) -> bool:
    return (await limits.shared_statistics()).in_flight == 0


async def test_a_cancelled_admission_keeps_no_slot(redis_url: str) -> None:
    async with SharedLimits(redis_url, account=ACCOUNT, max_in_flight=1) as limits:
        await limits.acquire("holder")
        with anyio.move_on_after(0.2):
            await limits.acquire("waiter")  # the cap is reached: it waits, then is cancelled
        assert limits.statistics().in_flight == 1 and limits.statistics().waiting == 0
        limits.release("holder")
        with anyio.fail_after(BOUND):
            await limits.acquire("next")
        limits.release("next")
        with pytest.raises(RuntimeError):
            limits.release("never held")


async def test_an_error_in_the_body_comes_out_as_it_is(redis_url: str) -> None:
    """The background tasks' group does not wrap the caller's own error (so `except MJError` works)."""
    with pytest.raises(mjasync.InvalidRequestError, match="the caller's"):
        async with SharedLimits(redis_url, account="body"):
            raise mjasync.InvalidRequestError("the caller's")
