"""`Worker`s on a real redis-server and the in-package emulator: every job ends once, with one task.

In process: one and several workers; lost submits adopted, sent again, or reported ambiguous; a worker
fenced out drops its job; Redis stopped mid-run (no submit while it is away, waits go on, the run
completes when it is back) and restarted without its data (the run halts). In subprocesses
(`worker_process.py`): a worker SIGKILLed at each kill point, and one SIGSTOPped past its lease, while
another finishes the run. "One task per job" is read from the emulator's own records.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

import mjasync
from mjasync._limiter import JobLimiter
from mjasync.emulator import Emulator
from mjasync.redis import RunDataLostError
from mjasync.redis._queue import QueuedJob, RunOutcome, RunQueue
from mjasync.redis._worker import KILL_AT_ENV, Worker, WorkerEvent, job_for
from mjasync.testing import EMULATOR_TOKEN
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "team"
POLL = mjasync.PollPolicy(initial_interval=0.01, factor=1.5, max_interval=0.05, batch_window=0.005)
#: A hang detector for a whole run, never a timing claim.
BOUND = 60.0


@asynccontextmanager
async def emulator(
    speed: float = 0.05, provider_tokens: tuple[str, ...] = (EMULATOR_TOKEN,)
) -> AsyncIterator[Emulator]:
    async with Emulator(host="127.0.0.1", port=0, speed=speed, tokens=provider_tokens) as emu:
        yield emu


@asynccontextmanager
async def client(
    emu: Emulator, provider: mjasync.types.ProviderName = "acedata"
) -> AsyncIterator[mjasync.Client]:
    async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=emu.url, provider=provider, poll=POLL) as mj:
        yield mj


@asynccontextmanager
async def run_queue(url: str, run: str = "r") -> AsyncIterator[RunQueue]:
    async with RunQueue(url, account=ACCOUNT, run=run, timeout=2.0) as queue:
        yield queue


def specs(count: int, word: str = "prompt") -> list[QueuedJob]:
    return [QueuedJob(key=f"k{i}", prompt=f"{word} {i}") for i in range(count)]


async def outcomes_of(queue: RunQueue) -> dict[str, RunOutcome]:
    """The run's outcomes by key; each key must come exactly once."""
    seen = [outcome async for outcome in queue.outcomes(follow=False)]
    counts = Counter(outcome.key for outcome in seen)
    assert all(n == 1 for n in counts.values()), counts
    return {outcome.key: outcome for outcome in seen}


def assert_one_task_each(emu: Emulator, jobs: list[QueuedJob]) -> None:
    per_prompt = emu.tasks_per_prompt
    assert {job.prompt: per_prompt.get(job.prompt, 0) for job in jobs} == {job.prompt: 1 for job in jobs}


async def until(condition: Callable[[], bool], what: str, seconds: float = BOUND) -> None:
    """Wait (bounded) until `condition()` holds, for states with no event to wait on."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


# -- in one process ----------------------------------------------------------------------------------------


async def test_one_worker_runs_every_job_once(redis_url: str) -> None:
    jobs = [
        *specs(8),
        QueuedJob(key="grid", prompt="a grid to upscale", upscale=(1, 3)),
        QueuedJob(key="banned", prompt="a gore scene"),  # the emulator refuses it (403 moderation)
        QueuedJob(key="empty", prompt="   "),  # refused by the client, before any intent
    ]
    events: list[WorkerEvent] = []
    async with emulator() as emu, client(emu) as mj, run_queue(redis_url) as queue:
        await queue.start()
        assert await queue.enqueue(jobs) == len(jobs)
        worker = Worker(mj, queue, name="solo", concurrency=4, on_event=events.append)
        with anyio.fail_after(BOUND):
            await worker.run(until_done=True)
        outcomes = await outcomes_of(queue)
        status = await queue.status()

    assert set(outcomes) == {job.key for job in jobs} | {"grid/upscale1", "grid/upscale3"}
    for key in [*(f"k{i}" for i in range(8)), "grid", "grid/upscale1", "grid/upscale3"]:
        outcome = outcomes[key]
        assert outcome.ok and outcome.state == "ok" and outcome.result is not None, outcome
        assert (outcome.submits, outcome.adopted, outcome.worker) == (1, False, "solo")
        assert outcome.task_id == outcome.result.task_id
    banned, empty = outcomes["banned"], outcomes["empty"]
    assert (banned.state, banned.submits) == ("failed", 1) and banned.error is not None
    assert banned.error.type == "ModerationError"
    assert (empty.state, empty.submits) == ("failed", 0) and empty.error is not None
    assert empty.error.type == "InvalidRequestError"
    upscale = outcomes["grid/upscale3"].result
    assert upscale is not None and upscale.image_url
    assert_one_task_each(emu, [job for job in jobs if job.key not in ("banned", "empty")])
    assert emu.counters["tasks"] == 8 + 1 + 2  # the grids, and the two upscales
    assert (status.total, status.ok, status.failed, status.done) == (13, 11, 2, True)
    stats = worker.statistics()
    assert (stats.taken, stats.submitted, stats.ended, stats.ok, stats.failed) == (13, 12, 13, 11, 2)
    assert (stats.adopted, stats.resumed, stats.fenced_out, stats.in_flight, stats.coordinator_down) == (
        0,
        0,
        0,
        0,
        False,
    )
    assert Counter(event.kind for event in events)["ended"] == 13


async def test_several_workers_share_a_run_and_outcomes_follow_it(redis_url: str) -> None:
    jobs = specs(30)
    followed: list[str] = []
    async with emulator() as emu, run_queue(redis_url) as queue:
        await queue.start()
        await queue.enqueue(jobs)
        workers: list[Worker] = []

        async def work(index: int) -> None:
            async with client(emu) as mj, run_queue(redis_url) as own:
                worker = Worker(mj, own, name=f"w{index}", concurrency=4)
                workers.append(worker)
                await worker.run(until_done=True)

        async def follow() -> None:
            async for outcome in queue.outcomes():  # ends by itself once every job has
                followed.append(outcome.key)

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:
                group.start_soon(follow)
                for index in range(3):
                    group.start_soon(work, index)
        outcomes = await outcomes_of(queue)

    assert sorted(followed) == sorted(job.key for job in jobs)  # each one once, as it ended
    assert all(outcome.ok for outcome in outcomes.values())
    assert_one_task_each(emu, jobs)
    assert emu.counters["submits"] == 30
    assert sum(worker.statistics().ended for worker in workers) == 30
    assert sum(worker.statistics().submitted for worker in workers) == 30


async def test_a_cancelled_worker_leaves_its_jobs_to_another(redis_url: str) -> None:
    """`run()` without `until_done` runs until cancelled; cancelled with jobs in flight, it returns at
    once leaving nothing running, and another worker takes its jobs over: one task per job."""
    jobs = specs(6)
    accepted = anyio.Event()

    def on_event(event: WorkerEvent) -> None:
        if event.kind == "accepted":
            accepted.set()

    async with emulator(speed=1.0) as emu, client(emu) as mj, run_queue(redis_url) as queue:
        await queue.start()
        await queue.enqueue(jobs)
        first = Worker(mj, queue, name="first", concurrency=3, lease=1.0, claim_after=0.3, on_event=on_event)
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:
                group.start_soon(first.run)
                await accepted.wait()
                group.cancel_scope.cancel()
            assert first.statistics().in_flight == 0 and first.statistics().ended == 0
            second = Worker(mj, queue, name="second", concurrency=3, lease=1.0, claim_after=0.3)
            await second.run(until_done=True)
        outcomes = await outcomes_of(queue)

    assert len(outcomes) == 6 and all(outcome.ok for outcome in outcomes.values())
    assert {outcome.worker for outcome in outcomes.values()} == {"second"}
    assert_one_task_each(emu, jobs)
    assert emu.counters["submits"] == 6


# -- a submit whose task id was lost ---------------------------------------------------------------------


async def lose_a_submit(queue: RunQueue, job: QueuedJob) -> float:
    """Leave `job` as a worker killed right after its intent leaves it: an intent (fenced for a few ms),
    no task id, its entry pending with the dead worker. Returns the intent's time."""
    await queue.start()
    await queue.enqueue([job])
    entry = (await queue.claim("ghost", 1, min_idle=3600)).entries[0]
    taken = await queue.take(job.key, "ghost", entry.id)
    intent = await queue.intent(job.key, "ghost", taken.gen, 0.005, "ghost-intent")
    assert intent is not None
    return intent.intent_at


async def test_a_lost_submit_the_provider_has_is_adopted(redis_url: str) -> None:
    job = QueuedJob(key="lost", prompt="a submit whose answer was lost")
    async with emulator() as emu, client(emu) as mj, run_queue(redis_url) as queue:
        await lose_a_submit(queue, job)
        # What the dead worker's submit made: the same request, sent after its intent (by a client of
        # its own: the worker's client must not know the task already).
        async with client(emu) as dead:
            sent = await job_for(dead, job).submit()
        worker = Worker(mj, queue, claim_after=0.05)
        with anyio.fail_after(BOUND):
            await worker.run(until_done=True)
        outcome = (await outcomes_of(queue))["lost"]

    assert outcome.ok and outcome.adopted and outcome.task_id == sent.task_id
    assert outcome.submits == 1
    assert emu.tasks_per_prompt[job.prompt] == 1
    stats = worker.statistics()
    assert (stats.adopted, stats.submitted, stats.ended) == (1, 0, 1)


async def test_a_lost_submit_proven_absent_is_sent_again(redis_url: str) -> None:
    job = QueuedJob(key="lost", prompt="a submit that never reached the provider")
    async with emulator() as emu, client(emu) as mj, run_queue(redis_url) as queue:
        await lose_a_submit(queue, job)
        worker = Worker(mj, queue, claim_after=0.05)
        with anyio.fail_after(BOUND):
            await worker.run(until_done=True)
        outcome = (await outcomes_of(queue))["lost"]

    assert outcome.ok and not outcome.adopted
    assert outcome.submits == 2  # the dead worker's intent, and this one's
    assert emu.tasks_per_prompt[job.prompt] == 1
    stats = worker.statistics()
    assert (stats.adopted, stats.submitted, stats.ended) == (0, 1, 1)


async def test_a_lost_submit_the_provider_cannot_look_up_is_ambiguous(redis_url: str) -> None:
    """GoAPI cannot list recent tasks: the lost submit is reported ambiguous, never sent again."""
    job = QueuedJob(key="lost", prompt="a submit nobody can settle")
    async with emulator() as emu, client(emu, provider="goapi") as mj, run_queue(redis_url) as queue:
        await lose_a_submit(queue, job)
        worker = Worker(mj, queue, claim_after=0.05)
        with anyio.fail_after(BOUND):
            await worker.run(until_done=True)
        outcome = (await outcomes_of(queue))["lost"]
        status = await queue.status()

    assert (outcome.ok, outcome.state, outcome.task_id) == (False, "ambiguous", None)
    assert outcome.error is not None and outcome.error.type == "AmbiguousSubmitError"
    assert emu.counters["submits"] == 0
    assert (status.ambiguous, status.done) == (1, True)
    assert worker.statistics().ambiguous == 1


# -- fenced out ----------------------------------------------------------------------------------------------


async def test_a_worker_fenced_out_drops_the_job_and_it_ends_once(redis_url: str) -> None:
    """Another worker takes the job while this one waits on its task: this one's wait is dropped (its
    heartbeat or its finish sees the newer gen), and the job, taken again, is waited on, not resent."""
    accepted = anyio.Event()

    def on_event(event: WorkerEvent) -> None:
        if event.kind == "accepted":
            accepted.set()

    job = QueuedJob(key="only", prompt="a job taken over while it runs")
    async with (
        emulator(speed=1.0) as emu,
        client(emu) as mj,
        run_queue(redis_url) as queue,
        run_queue(redis_url) as thief,
    ):
        await queue.start()
        await queue.enqueue([job])
        worker = Worker(mj, queue, name="first", claim_after=0.3, on_event=on_event)
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:
                group.start_soon(lambda: worker.run(until_done=True))
                await accepted.wait()
                record = await thief.record("only")
                assert record is not None and record.owner == "first"
                entry = await thief._redis.hget("{mj:team}:run:r:job:only", "entry")  # type: ignore[misc]
                assert (await thief.take("only", "thief", entry.decode())).kind == "own"
        outcome = (await outcomes_of(queue))["only"]

    assert outcome.ok and outcome.worker == "first" and outcome.submits == 1
    assert emu.tasks_per_prompt[job.prompt] == 1
    stats = worker.statistics()
    # Dropped once, then (the thief never acting) taken again after claim_after and waited on.
    assert (stats.fenced_out, stats.submitted, stats.resumed, stats.ended) == (1, 1, 1, 1)


# -- Redis away ------------------------------------------------------------------------------------------------


async def test_redis_stopped_mid_run_stops_submits_not_waits(tmp_path: Path) -> None:
    """Redis stops while two jobs wait on their tasks and a third is taken: no submit goes out while it
    is away, the two waits end and their outcomes are held, and the run completes once it is back."""
    jobs = specs(4)
    seen: dict[str, int] = {}
    stopped_at: dict[str, int] = {}
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        async with emulator(speed=1.0) as emu, client(emu) as mj, run_queue(server.url) as queue:

            def on_event(event: WorkerEvent) -> None:
                seen[event.kind] = seen.get(event.kind, 0) + 1
                if event.kind == "accepted" and seen["accepted"] == 2:
                    server.stop()  # politely: with appendonly, nothing written is lost
                    stopped_at["submits"] = emu.counters["submits"]
                    stopped_at["errors"] = worker.statistics().coordinator_errors

            await queue.start()
            await queue.enqueue(jobs)
            # Three at once, two slots: k2 is taken, and waits for a slot until a wait ends.
            worker = Worker(mj, queue, concurrency=3, limits=JobLimiter(2), on_event=on_event)
            with anyio.fail_after(BOUND):
                async with anyio.create_task_group() as group:
                    group.start_soon(lambda: worker.run(until_done=True))
                    await until(lambda: "submits" in stopped_at, "Redis to be stopped")

                    def held_and_tried() -> bool:
                        stats = worker.statistics()
                        return stats.finishing == 2 and stats.coordinator_errors >= stopped_at["errors"] + 10

                    await until(held_and_tried, "both waits to end while Redis is away")
                    stats = worker.statistics()
                    assert stats.coordinator_down and stats.outages >= 1
                    # The third job taken got a slot when a wait ended, and no intent: nothing sent.
                    assert emu.counters["submits"] == stopped_at["submits"] == 2
                    assert len(emu.tasks_per_prompt) == 2
                    await anyio.to_thread.run_sync(server.start)
            outcomes = await outcomes_of(queue)

    assert sorted(outcomes) == ["k0", "k1", "k2", "k3"] and all(o.ok for o in outcomes.values())
    assert_one_task_each(emu, jobs)
    assert seen["coordinator-down"] >= 1 and seen["coordinator-up"] >= 1
    assert not worker.statistics().coordinator_down


async def test_redis_restarted_without_its_data_halts_the_run(tmp_path: Path) -> None:
    jobs = specs(4)
    accepted: list[str] = []
    with RedisServer(tmp_path / "redis", appendonly=False) as server:
        async with emulator(speed=1.0) as emu, client(emu) as mj, run_queue(server.url) as queue:

            def on_event(event: WorkerEvent) -> None:
                if event.kind == "accepted":
                    accepted.append(event.key or "")
                    if len(accepted) == 2:
                        server.kill()
                        server.start()  # empty: no persistence

            await queue.start()
            await queue.enqueue(jobs)
            worker = Worker(mj, queue, concurrency=3, limits=JobLimiter(2), on_event=on_event)
            with anyio.fail_after(BOUND), pytest.raises(RunDataLostError, match="EPOCH"):
                await worker.run(until_done=True)

    # The two accepted jobs were paid for once; nothing was sent after the loss, nor is anything held.
    assert emu.counters["submits"] == 2
    assert {job.key: emu.tasks_per_prompt.get(job.prompt, 0) for job in jobs} == {
        job.key: int(job.key in accepted) for job in jobs
    }
    assert worker.statistics().in_flight == 0


async def test_a_worker_refuses_a_client_that_would_resubmit(redis_url: str) -> None:
    async with (
        emulator() as emu,
        mjasync.Client(
            api_key=EMULATOR_TOKEN,
            base_url=emu.url,
            retry=mjasync.RetryPolicy(on_ambiguous_submit="resubmit"),
        ) as mj,
        run_queue(redis_url) as queue,
    ):
        with pytest.raises(mjasync.InvalidRequestError, match="twice"):
            Worker(mj, queue)
        async with client(emu) as fine:
            with pytest.raises(mjasync.InvalidRequestError, match="poll"):
                Worker(fine, queue, via="stream")


# -- in subprocesses --------------------------------------------------------------------------------------------


@asynccontextmanager
async def worker_process(
    folder: Path, name: str, redis_url: str, base_url: str, *, kill_at: str | None = None, **options: Any
) -> AsyncIterator[Process]:
    """`worker_process.py` in the background (output to files); killed if still running at the end."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop(KILL_AT_ENV, None)
    env.update(MJASYNC_API_KEY=EMULATOR_TOKEN, NO_PROXY="127.0.0.1")
    if kill_at is not None:
        env[KILL_AT_ENV] = kill_at
    command = [sys.executable, "-W", "error", "-m", "tests.redis.worker_process"]
    command += [
        "--redis",
        redis_url,
        "--account",
        ACCOUNT,
        "--run",
        "r",
        "--base-url",
        base_url,
        "--name",
        name,
    ]
    for option, value in options.items():
        command += [f"--{option.replace('_', '-')}", str(value)]
    with (folder / f"{name}.out").open("wb") as out, (folder / f"{name}.err").open("wb") as err:
        process = await anyio.open_process(command, stdout=out, stderr=err, env=env, cwd=ROOT)
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True), anyio.fail_after(30):
                await process.wait()


def statistics_of(folder: Path, name: str) -> dict[str, Any]:
    """The statistics line a worker process printed as it ended."""
    lines = (folder / f"{name}.out").read_text().splitlines()
    assert lines, (folder / f"{name}.err").read_text()
    return dict(json.loads(lines[-1]))


def describe_exit(folder: Path, name: str, code: int | None) -> str:
    return f"{name} exited with {code}: {(folder / f'{name}.err').read_text()[-3000:]}"


@pytest.mark.parametrize("point", ["after-intent", "after-post", "before-record"])
async def test_a_worker_killed_at_each_point_leaves_one_task_per_job(
    redis_url: str, tmp_path: Path, point: str
) -> None:
    jobs = specs(4, word=point)
    options: dict[str, Any] = {"concurrency": 1, "lease": 1.5, "claim_after": 0.3}
    async with emulator() as emu, run_queue(redis_url) as queue:
        await queue.start()
        await queue.enqueue(jobs)
        with anyio.fail_after(BOUND):
            async with worker_process(
                tmp_path, "doomed", redis_url, emu.url, kill_at=f"{point}:2", **options
            ) as doomed:
                code = await doomed.wait()
            assert code == -signal.SIGKILL, describe_exit(tmp_path, "doomed", code)
            async with worker_process(tmp_path, "heir", redis_url, emu.url, **options) as heir:
                code = await heir.wait()
            assert code == 0, describe_exit(tmp_path, "heir", code)
        outcomes = await outcomes_of(queue)

    assert sorted(outcomes) == ["k0", "k1", "k2", "k3"] and all(o.ok for o in outcomes.values())
    assert_one_task_each(emu, jobs)
    assert emu.counters["submits"] == 4
    heir_stats = statistics_of(tmp_path, "heir")
    killed = outcomes["k1"]  # the second job the doomed worker reached
    if point == "after-intent":
        # Nothing was sent: the heir's lookup proves it, and sends it (a second intent, one task).
        assert (killed.adopted, killed.submits, heir_stats["adopted"]) == (False, 2, 0)
    else:
        # Sent, its task id lost with the process: the heir finds the task and adopts it.
        assert (killed.adopted, killed.submits, heir_stats["adopted"]) == (True, 1, 1)
    assert killed.worker == "heir" and outcomes["k0"].worker == "doomed"


async def test_a_worker_stopped_past_its_lease_then_continued_pays_nothing_twice(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGSTOP a worker with jobs in flight, let another take them over and finish the run, then
    SIGCONT it: it finds itself fenced out, sends nothing, and exits; one task per job."""
    jobs = specs(8, word="stopped")
    options: dict[str, Any] = {"concurrency": 2, "lease": 1.0, "claim_after": 0.3}
    async with emulator(speed=1.0) as emu, client(emu) as mj, run_queue(redis_url) as queue:
        await queue.start()
        await queue.enqueue(jobs)
        with anyio.fail_after(BOUND):
            async with worker_process(tmp_path, "sleeper", redis_url, emu.url, **options) as sleeper:
                while (await queue.status()).accepted < 2:  # noqa: ASYNC110 (a state in Redis: no event)
                    await anyio.sleep(0.01)
                sleeper.send_signal(signal.SIGSTOP)
                try:
                    heir = Worker(mj, queue, name="heir", concurrency=4, lease=1.0, claim_after=0.3)
                    await heir.run(until_done=True)
                    submits = emu.counters["submits"]
                finally:
                    sleeper.send_signal(signal.SIGCONT)
                code = await sleeper.wait()
            assert code == 0, describe_exit(tmp_path, "sleeper", code)
        outcomes = await outcomes_of(queue)

    assert len(outcomes) == 8 and all(o.ok for o in outcomes.values())
    assert_one_task_each(emu, jobs)
    assert emu.counters["submits"] == submits == 8  # nothing went out after the sleeper woke
    sleeper_stats = statistics_of(tmp_path, "sleeper")
    heir_stats = heir.statistics()
    assert sleeper_stats["fenced_out"] >= 2  # its two waits, taken over while it slept
    assert heir_stats.resumed >= 2
    assert sleeper_stats["ended"] + heir_stats.ended == 8
