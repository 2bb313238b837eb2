"""Each run-queue script's semantics, on a real redis-server: idempotent enqueue, the gen fences, the
intent's fence and its expiry, the run's held tasks, the heartbeat, claiming, and the epoch check."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio

from mjasync import ImagineResult, InvalidRequestError
from mjasync.redis import CoordinatorUnavailableError, RunDataLostError
from mjasync.redis._queue import GROUP, Entry, QueuedJob, RunOutcome, RunQueue, Taken

ACCOUNT, RUN = "team", "night"
PREFIX = "{mj:team}:run:night:"
#: A hang detector for conditions that wait on Redis's clock (a fence or an idle time to pass).
BOUND = 20.0


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[RunQueue]:
    async with RunQueue(redis_url, account=ACCOUNT, run=RUN, timeout=5.0) as started:
        await started.start()
        yield started


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def jobs(*keys: str) -> list[QueuedJob]:
    return [QueuedJob(key=key, prompt=f"prompt of {key}") for key in keys]


def ok(key: str, task_id: str = "t-1") -> RunOutcome:
    result = ImagineResult(
        task_id=task_id, image_id="img", image_url="http://127.0.0.1/x.png", actions=["upscale1"]
    )
    return RunOutcome(key=key, ok=True, state="ok", task_id=task_id, result=result, submits=1)


async def owned(queue: RunQueue, key: str, worker: str) -> Taken:
    """Deliver the new entries (`key`'s among them) to `worker` and take the job; it must come back owned."""
    await queue.claim(worker, 100, min_idle=3600)
    entry = await entry_of(queue, key)
    taken = await queue.take(key, worker, entry.id)
    assert taken.kind == "own", taken
    return taken


async def entry_of(queue: RunQueue, key: str) -> Entry:
    record = await queue.record(key)
    assert record is not None
    raw_entry = await queue._redis.hget(PREFIX + "job:" + key, "entry")  # type: ignore[misc]
    return Entry(raw_entry.decode(), key)


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll `check` until it returns something truthy (a hang detector bounds it, not a timing claim)."""
    with anyio.fail_after(BOUND):
        while not (value := await check()):  # noqa: ASYNC110 (Redis's clock has no event to wait on)
            await anyio.sleep(0.01)
    return value


# -- start and enqueue ----------------------------------------------------------------------------------


async def test_start_writes_the_epoch_once(redis_url: str, queue: RunQueue) -> None:
    first = await queue.start()
    assert await queue.start() == first
    async with RunQueue(redis_url, account=ACCOUNT, run=RUN) as other:
        assert await other.start() == first
        assert await other.epoch() == first
    async with RunQueue(redis_url, account=ACCOUNT, run="another") as another:
        assert await another.start() != first


async def test_enqueue_is_idempotent_by_key(queue: RunQueue, raw: redis.asyncio.Redis) -> None:
    assert await queue.enqueue(jobs("a", "b")) == 2
    assert await queue.enqueue(jobs("a", "b", "c")) == 1
    assert await queue.enqueue(jobs("d", "d")) == 1  # the same key twice in one call
    assert await queue.enqueue(jobs("a", "b", "c", "d")) == 0
    status = await queue.status()
    assert (status.total, status.queued, status.ended) == (4, 4, 0)
    assert await raw.xlen(PREFIX + "jobs") == 4  # one stream entry per key, ever
    assert [key.decode() for key in await raw.zrange(PREFIX + "keys", 0, -1)] == ["a", "b", "c", "d"]


async def test_enqueue_in_batches_larger_than_one_script_call(queue: RunQueue) -> None:
    keys = [f"k{i}" for i in range(700)]
    assert await queue.enqueue(jobs(*keys)) == 700
    assert await queue.enqueue(jobs(*keys)) == 0
    assert (await queue.status()).total == 700


async def test_a_job_spec_is_checked_before_it_is_enqueued() -> None:
    with pytest.raises(InvalidRequestError):
        QueuedJob(key="", prompt="x")
    with pytest.raises(InvalidRequestError):
        QueuedJob(key="a", prompt="x", upscale=(5,))
    with pytest.raises(InvalidRequestError):
        QueuedJob(key="a", prompt="x", upscale=(1, 1))
    with pytest.raises(InvalidRequestError):
        QueuedJob(key="a", prompt="x", mode="slow")  # type: ignore[arg-type]


# -- the fenced steps -------------------------------------------------------------------------------------


async def test_take_intent_record_finish_are_fenced_by_gen(queue: RunQueue, raw: redis.asyncio.Redis) -> None:
    await queue.enqueue(jobs("a"))
    claimed = await queue.claim("w1", 5, min_idle=60)
    assert [entry.key for entry in claimed.entries] == ["a"]
    assert (claimed.total, claimed.ended) == (1, 0)
    entry = claimed.entries[0]

    first = await queue.take("a", "w1", entry.id)
    assert (first.kind, first.gen, first.state, first.task_id) == ("own", 1, "queued", None)
    assert first.spec == QueuedJob(key="a", prompt="prompt of a")
    second = await queue.take("a", "w2", entry.id)  # a queued job has no fence: a new owner takes it
    assert (second.kind, second.gen) == ("own", 2)

    assert await queue.intent("a", "w1", first.gen, 60, "tok1") is None  # stale gen: refused
    intent = await queue.intent("a", "w2", second.gen, 60, "tok2")
    assert intent is not None and intent.attempts == 1
    assert intent.fence_until - intent.intent_at == pytest.approx(60)
    again = await queue.intent("a", "w2", second.gen, 60, "tok2")  # a retry after a lost reply
    assert again is not None and again.attempts == 1
    assert (await queue.status()).submitting == 1

    fenced = await queue.take("a", "w1", entry.id)  # someone's submit may be going out: hands off
    assert fenced.kind == "fenced" and fenced.owner == "w2" and 0 < fenced.wait <= 60

    assert await queue.record_task("a", first.gen, "t-1") == "fenced"
    assert await queue.record_task("a", second.gen, "t-1") == "ok"
    assert await queue.record_task("a", second.gen, "t-1") == "ok"  # a retry after a lost reply
    assert await queue.held_task_ids() == {"t-1"}
    assert (await queue.status()).accepted == 1

    third = await queue.take("a", "w3", entry.id)  # an accepted job is taken over to be waited on
    assert (third.kind, third.gen, third.state, third.task_id) == ("own", 3, "accepted", "t-1")
    assert await queue.intent("a", "w3", third.gen, 60, "tok3") is None  # and never submitted again

    assert await queue.finish("a", second.gen, ok("a")) is False
    assert await queue.finish("a", third.gen, ok("a")) is True
    assert await queue.finish("a", third.gen, ok("a")) is True  # a retry after a lost reply
    assert await raw.xlen(PREFIX + "done") == 1
    status = await queue.status()
    assert (status.ok, status.accepted, status.ended, status.done) == (1, 0, 1, True)
    pending = await raw.xpending(PREFIX + "jobs", GROUP)
    assert pending["pending"] == 0  # acknowledged when it ended

    ended = await queue.take("a", "w1", entry.id)
    assert (ended.kind, ended.state) == ("ended", "ok")
    record = await queue.record("a")
    assert record is not None and record.outcome == ok("a") and record.gen == 3


async def test_an_intents_fence_expires(queue: RunQueue) -> None:
    await queue.enqueue(jobs("a"))
    entry = await entry_of(queue, "a")
    taken = await owned(queue, "a", "w1")
    assert await queue.intent("a", "w1", taken.gen, 60, "tok") is not None
    assert (await queue.take("a", "w2", entry.id)).kind == "fenced"
    # The owner announces again with a fence of a few ms: once Redis's clock passes it, it is open.
    short = await queue.intent("a", "w1", taken.gen, 0.005, "tok")
    assert short is not None and short.attempts == 1

    async def take_over() -> Taken | None:
        taken = await queue.take("a", "w2", entry.id)
        return taken if taken.kind == "own" else None

    settler = await eventually(take_over, "the fence to pass")
    assert (settler.state, settler.task_id, settler.attempts) == ("intent", None, 1)
    assert settler.intent_at == pytest.approx(short.intent_at)
    # The earlier owner is fenced out of every step now.
    assert await queue.record_task("a", taken.gen, "t-late") == "fenced"
    assert await queue.finish("a", taken.gen, ok("a", "t-late")) is False


async def test_a_task_another_job_holds_is_never_recorded_again(queue: RunQueue) -> None:
    await queue.enqueue(jobs("a", "b"))
    a, b = await owned(queue, "a", "w"), await owned(queue, "b", "w")
    await queue.intent("a", "w", a.gen, 60, "ta")
    await queue.intent("b", "w", b.gen, 60, "tb")
    assert await queue.record_task("a", a.gen, "t-1") == "ok"
    assert await queue.record_task("b", b.gen, "t-1", adopted=True) == "held"
    assert await queue.record_task("b", b.gen, "t-2", adopted=True) == "ok"
    record = await queue.record("b")
    assert record is not None and record.adopted and record.task_id == "t-2"


async def test_release_withdraws_an_intent_that_made_no_task(queue: RunQueue) -> None:
    await queue.enqueue(jobs("a"))
    taken = await owned(queue, "a", "w1")
    await queue.intent("a", "w1", taken.gen, 60, "tok")
    assert await queue.release("a", taken.gen - 1) is False
    assert await queue.release("a", taken.gen) is True
    status = await queue.status()
    assert (status.queued, status.submitting) == (1, 0)
    entry = await entry_of(queue, "a")
    assert (await queue.take("a", "w2", entry.id)).state == "queued"  # no fence to wait out, no lookup


async def test_finish_enqueues_follow_ups_in_the_same_step(queue: RunQueue) -> None:
    await queue.enqueue([QueuedJob(key="a", prompt="p", upscale=(1, 2))])
    taken = await owned(queue, "a", "w")
    follow = [QueuedJob(key=f"a/upscale{n}", prompt="p", action=f"upscale{n}", target="img") for n in (1, 2)]
    assert await queue.finish("a", taken.gen, ok("a"), follow)
    assert await queue.finish("a", taken.gen, ok("a"), follow)  # retried: nothing enqueued twice
    status = await queue.status()
    assert (status.total, status.queued, status.ok) == (3, 2, 1)
    claimed = await queue.claim("w", 10, min_idle=60)
    assert sorted(entry.key for entry in claimed.entries) == ["a/upscale1", "a/upscale2"]
    up = await queue.take("a/upscale1", "w", claimed.entries[0].id)
    assert up.spec is not None and (up.spec.action, up.spec.target) == ("upscale1", "img")


async def test_the_heartbeat_keeps_owned_entries_and_reports_taken_ones(
    queue: RunQueue, raw: redis.asyncio.Redis
) -> None:
    await queue.enqueue(jobs("a", "b"))
    claimed = await queue.claim("w1", 2, min_idle=60)
    by_key = {entry.key: entry for entry in claimed.entries}
    await queue.take("a", "w1", by_key["a"].id)
    await queue.take("b", "w1", by_key["b"].id)
    await queue.take("b", "w2", by_key["b"].id)  # another worker took b over

    async def idle_ms() -> int:
        rows = await raw.xpending_range(PREFIX + "jobs", GROUP, min="-", max="+", count=10, consumername="w1")
        return next(
            int(row["time_since_delivered"]) for row in rows if row["message_id"].decode() == by_key["a"].id
        )

    await eventually(lambda: _more_than(idle_ms, 50), "a's entry to sit idle")
    assert await queue.touch("w1", list(by_key.values())) == ["b"]
    assert await idle_ms() < 50  # claimed again just now: no one else's XAUTOCLAIM takes it
    assert await queue.touch("w1", []) == []  # a heartbeat with nothing held still checks the epoch


async def _more_than(read: Callable[[], Awaitable[int]], limit: int) -> bool:
    return await read() > limit


async def test_claim_hands_out_new_entries_then_idle_ones(queue: RunQueue) -> None:
    await queue.enqueue(jobs("a", "b", "c"))
    first = await queue.claim("w1", 2, min_idle=60)
    assert [entry.key for entry in first.entries] == ["a", "b"]
    second = await queue.claim("w2", 5, min_idle=60)
    assert [entry.key for entry in second.entries] == ["c"]
    assert (await queue.claim("w2", 5, min_idle=60)).entries == []

    async def idle_ones() -> list[str]:
        claimed = await queue.claim("w3", 5, min_idle=0.02)
        return [entry.key for entry in claimed.entries]

    # w1 and w2 never send a heartbeat: their entries go to w3 once idle long enough.
    got: list[str] = []

    async def everything() -> bool:
        got.extend(await idle_ones())
        return sorted(got) == ["a", "b", "c"]

    await eventually(everything, "the idle entries to be claimed")


async def test_read_new_waits_a_bounded_time_for_an_entry(queue: RunQueue) -> None:
    assert await queue.read_new("w", 5, block=0.05) == []
    await queue.enqueue(jobs("a"))
    assert [entry.key for entry in await queue.read_new("w", 5, block=0.05)] == ["a"]


# -- outcomes ------------------------------------------------------------------------------------------------


async def test_outcomes_gives_each_ended_job_once(queue: RunQueue) -> None:
    await queue.enqueue(jobs("a", "b", "c"))
    for key in ("a", "b"):
        taken = await owned(queue, key, "w")
        await queue.finish(key, taken.gen, ok(key, f"t-{key}"))
    assert [o.key async for o in queue.outcomes(follow=False)] == ["a", "b"]

    seen: list[str] = []

    async def follow() -> None:
        async for outcome in queue.outcomes():
            seen.append(outcome.key)

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            await eventually(lambda: _true(len(seen) == 2), "the ended ones")
            taken = await owned(queue, "c", "w")
            await queue.finish("c", taken.gen, ok("c", "t-c"))
    assert seen == ["a", "b", "c"]  # and the iterator ended by itself once every job had


async def _true(value: bool) -> bool:
    return value


# -- the epoch -----------------------------------------------------------------------------------------------


async def test_every_step_answers_the_epoch_error_once_the_epoch_is_gone(
    queue: RunQueue, raw: redis.asyncio.Redis
) -> None:
    await queue.enqueue(jobs("a", "b"))
    taken = await owned(queue, "a", "w")
    await queue.intent("a", "w", taken.gen, 60, "tok")
    entry = await entry_of(queue, "a")
    steps: dict[str, Callable[[], Awaitable[object]]] = {
        "enqueue": lambda: queue.enqueue(jobs("c")),
        "take": lambda: queue.take("a", "w", entry.id),
        "intent": lambda: queue.intent("a", "w", taken.gen, 60, "tok"),
        "record_task": lambda: queue.record_task("a", taken.gen, "t-1"),
        "finish": lambda: queue.finish("a", taken.gen, ok("a")),
        "release": lambda: queue.release("a", taken.gen),
        "touch": lambda: queue.touch("w", [entry]),
        "claim": lambda: queue.claim("w", 5, min_idle=0),
        "status": queue.status,
        "outcomes": lambda: anext(queue.outcomes()),
        "start": queue.start,  # no silent fresh start: that could pay for every job again
    }
    for epoch in (None, "another"):
        if epoch is None:
            await raw.hdel(PREFIX + "meta", "epoch")
        else:
            await raw.hset(PREFIX + "meta", "epoch", epoch)
        for name, step in steps.items():
            with pytest.raises(RunDataLostError) as caught:
                await step()
            assert "EPOCH" in str(caught.value), name
    # Nothing moved: no step ran past its check.
    record = await queue.record("a")
    assert record is not None and (record.state, record.task_id) == ("intent", None)


async def test_a_run_never_started_has_no_epoch(redis_url: str) -> None:
    async with RunQueue(redis_url, account=ACCOUNT, run="never") as queue:
        with pytest.raises(RunDataLostError, match="never started"):
            await queue.enqueue(jobs("a"))


async def test_a_missing_stream_group_reads_as_lost_data(queue: RunQueue, raw: redis.asyncio.Redis) -> None:
    await raw.delete(PREFIX + "jobs")
    with pytest.raises(RunDataLostError):
        await queue.read_new("w", 1, block=0.01)


# -- Redis unreachable -----------------------------------------------------------------------------------------


async def test_an_unreachable_redis_is_a_coordinator_error_without_the_password() -> None:
    password = "s3cret-redis-passw0rd"
    url = f"redis://:{password}@127.0.0.1:{closed_port()}/0"
    async with RunQueue(url, account=ACCOUNT, run=RUN, timeout=2.0) as queue:
        assert password not in repr(queue)
        with pytest.raises(CoordinatorUnavailableError) as caught:
            await queue.start()
    shown = [str(caught.value), repr(caught.value)]
    cause: BaseException | None = caught.value
    while cause is not None:
        shown += [str(cause), repr(cause)]
        cause = cause.__cause__ or cause.__context__
    assert not any(password in text for text in shown), shown


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
