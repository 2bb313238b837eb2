"""Waiting jobs due at different moments still share full lookups: a round with room takes the
sleepers near due (soonest first, up to `max_batch`), early and never late."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import anyio
import msgspec
import pytest

import mjasync
from mjasync import _poller
from mjasync._poller import TaskPoller
from mjasync._providers import get_provider
from mjasync.emulator import DEFAULT_TOKEN, Emulator

WINDOW = 0.005
#: Slack for a loaded test machine: how late a lookup may come past its due time.
SLACK = 0.25


class Recorder:
    """A fake `fetch`: records each lookup's ids and when it was made; answers one body per id."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.fetches: list[list[str]] = []
        self.times: list[float] = []
        self.fail_with: Exception | None = None
        self.hang_first = False

    async def __call__(self, ids: list[str]) -> dict[str, bytes]:
        self.fetches.append(list(ids))
        self.times.append(time.monotonic() - self.started)
        if self.hang_first and len(self.fetches) == 1:
            await anyio.sleep_forever()
        if self.fail_with is not None:
            raise self.fail_with
        return {task_id: f"record of {task_id}".encode() for task_id in ids}


async def wait_all(
    poller: TaskPoller, plan: dict[str, tuple[float, float]]
) -> dict[str, tuple[bytes | None, float]]:
    """Poll every task id with its (delay, early); each one's record and when (since start) it came."""
    started = time.monotonic()
    got: dict[str, tuple[bytes | None, float]] = {}

    async def one(task_id: str, delay: float, early: float) -> None:
        body = await poller.poll(task_id, delay=delay, early=early)
        got[task_id] = (body, time.monotonic() - started)

    async with anyio.create_task_group() as group:
        for task_id, (delay, early) in plan.items():
            group.start_soon(one, task_id, delay, early)
    return got


# --- the poller alone (a fake fetch) --------------------------------------------------------------


async def test_waiters_due_at_different_moments_share_one_lookup() -> None:
    """Ten waiters due 20 ms apart (far more than the window) make one lookup, when the first is due."""
    fetch = Recorder()
    poller = TaskPoller(fetch, window=WINDOW, max_batch=50)
    plan = {f"t{i}": (0.3 + 0.02 * i, 0.5 * (0.3 + 0.02 * i)) for i in range(10)}
    got = await wait_all(poller, plan)

    assert fetch.fetches == [list(plan)], "one lookup, soonest due first"
    assert poller.fetches == 1 and poller.ids_fetched == 10
    for task_id, (delay, early) in plan.items():
        body, at = got[task_id]
        assert body == f"record of {task_id}".encode()
        assert delay - early - 0.01 <= at <= delay + WINDOW + SLACK, (task_id, at)
    assert fetch.times[0] >= 0.3 - 0.01, "the lookup goes out when the first waiter is due, not before"
    assert not poller._sleeping


async def test_a_round_takes_the_soonest_due_and_no_more_than_max_batch() -> None:
    """With room for four, rounds are full and taken in due order: 10 waiters make three lookups."""
    fetch = Recorder()
    poller = TaskPoller(fetch, window=WINDOW, max_batch=4)
    ids = [f"t{i}" for i in range(10)]
    plan = {task_id: (0.3 + 0.04 * i, 0.15) for i, task_id in enumerate(ids)}
    got = await wait_all(poller, plan)

    assert all(body is not None for body, _ in got.values())
    assert all(len(batch) <= 4 for batch in fetch.fetches)
    assert fetch.fetches[0] == ids[:4], "the leader and the three soonest due"
    assert len(fetch.fetches) == 3
    assert sorted(i for batch in fetch.fetches for i in batch) == sorted(ids), (
        "every id looked up exactly once"
    )
    for task_id, (delay, _early) in plan.items():
        assert got[task_id][1] <= delay + WINDOW + SLACK, "never later than due"


async def test_a_sleeper_is_not_taken_before_its_earliest() -> None:
    """A waiter due much later than the round is left to sleep; with early=0 it is never taken early."""
    fetch = Recorder()
    poller = TaskPoller(fetch, window=WINDOW, max_batch=50)
    got = await wait_all(poller, {"soon": (0.05, 0.0), "late": (0.6, 0.2), "exact": (0.3, 0.0)})

    assert fetch.fetches == [["soon"], ["exact"], ["late"]]
    assert got["late"][1] >= 0.4 - 0.01
    assert got["exact"][1] >= 0.3 - 0.01


async def test_a_second_waiter_on_the_same_task_rides_free() -> None:
    """Two cursors on one task sleeping near due: the round fetches the id once and answers both."""
    fetch = Recorder()
    poller = TaskPoller(fetch, window=WINDOW, max_batch=2)
    results: list[bytes | None] = []

    async def one(task_id: str, delay: float) -> None:
        results.append(await poller.poll(task_id, delay=delay, early=delay))

    async with anyio.create_task_group() as group:
        group.start_soon(one, "a", 0.1)
        group.start_soon(one, "b", 0.2)
        group.start_soon(one, "b", 0.25)
    assert fetch.fetches == [["a", "b"]]
    assert sorted(results, key=str) == [b"record of a", b"record of b", b"record of b"]


async def test_early_riders_get_the_rounds_error() -> None:
    """A lookup that fails fails for everyone in its round, riders included; nothing stays asleep."""
    fetch = Recorder()
    fetch.fail_with = mjasync.APIConnectionError("boom", may_have_reached_server=True)
    poller = TaskPoller(fetch, window=WINDOW, max_batch=50)
    errors: list[BaseException] = []

    async def one(task_id: str, delay: float) -> None:
        try:
            await poller.poll(task_id, delay=delay, early=delay)
        except mjasync.MJError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(one, "a", 0.05)
        group.start_soon(one, "b", 5.0)
    assert fetch.fetches == [["a", "b"]]
    assert errors == [fetch.fail_with, fetch.fail_with]
    assert not poller._sleeping


async def test_a_cancelled_sleeper_leaves_nothing_behind() -> None:
    """A waiter cancelled while asleep (its deadline) is forgotten: later rounds never fetch its id."""
    fetch = Recorder()
    poller = TaskPoller(fetch, window=WINDOW, max_batch=50)
    with anyio.move_on_after(0.05):
        await poller.poll("gone", delay=10.0, early=10.0)
    assert not poller._sleeping
    assert await poller.poll("here") == b"record of here"
    assert fetch.fetches == [["here"]]


async def test_riders_of_a_cancelled_leader_go_on_to_a_new_round() -> None:
    """The leader is cancelled mid-lookup: the rider it took is not lost, it looks again at once."""
    fetch = Recorder()
    fetch.hang_first = True
    poller = TaskPoller(fetch, window=WINDOW, max_batch=50)
    got: dict[str, bytes | None] = {}

    async def rider() -> None:
        got["rider"] = await poller.poll("rider", delay=5.0, early=5.0)

    async with anyio.create_task_group() as group:
        group.start_soon(rider)
        with anyio.move_on_after(0.2):
            await poller.poll("leader", delay=0.05, early=0.0)
    assert got == {"rider": b"record of rider"}
    assert fetch.fetches == [["leader", "rider"], ["rider"]]


# --- a client against the emulator ----------------------------------------------------------------


async def lookups_for_staggered_jobs(
    jobs: int, *, gap: float, max_batch: int = 50
) -> tuple[int, int, list[int]]:
    """Submit `jobs` one `gap` apart to a 1.5 s emulator, await all; (lookups, ids fetched, batch sizes)."""
    policy = mjasync.PollPolicy(
        initial_interval=0.2,
        factor=1.5,
        max_interval=0.4,
        batch_window=WINDOW,
        max_batch=max_batch,
        deadline=30,
    )
    async with Emulator(speed=1.5) as emu:
        async with mjasync.Client(
            api_key=DEFAULT_TOKEN, base_url=emu.url, wait_via="poll", poll=policy
        ) as mj:
            handles = []
            for i in range(jobs):
                handles.append(await mj.imagine(f"a lighthouse, study {i}").submit())
                await anyio.sleep(gap)
            results: list[Any] = []

            async def wait(handle: mjasync.TaskHandle[mjasync.ImagineResult]) -> None:
                results.append(await handle)

            async with anyio.create_task_group() as group:
                for handle in handles:
                    group.start_soon(wait, handle)
            assert len(results) == jobs and all(r.is_final for r in results)
            bodies = [r.json or {} for r in emu.requests if r.path == "/midjourney/tasks"]
            sizes = [len(b["ids"]) if b["action"] == "retrieve_batch" else 1 for b in bodies]
            assert emu.counters["polls"] == mj.poller.fetches == len(bodies)
            return mj.poller.fetches, mj.poller.ids_fetched, sizes


async def test_jobs_submitted_at_different_moments_share_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twenty jobs submitted over one poll interval: with early riders, about one lookup per round;
    without (a window alone), several times as many."""
    lookups, ids, sizes = await lookups_for_staggered_jobs(20, gap=0.01)
    assert ids / lookups >= 10, sizes
    monkeypatch.setattr(_poller, "EARLY_SHARE", 0.0)
    alone, _, alone_sizes = await lookups_for_staggered_jobs(20, gap=0.01)
    assert lookups * 2 <= alone, (sizes, alone_sizes)


async def test_many_waiting_jobs_fill_batches_up_to_max_batch() -> None:
    """120 jobs with max_batch 50: no lookup carries more than 50 ids, and most carry all they can."""
    lookups, ids, sizes = await lookups_for_staggered_jobs(120, gap=0.002)
    assert max(sizes) <= 50
    assert ids / lookups >= 25, sizes


# --- a task the provider has no record of ----------------------------------------------------------


class Script:
    """A fake `fetch` that answers each lookup from a script: None for "no such record", an
    exception to raise, or a task record (as the provider would send it)."""

    def __init__(self, *answers: dict[str, Any] | Exception | None) -> None:
        self.answers = list(answers)
        self.lookups = 0

    async def __call__(self, ids: list[str]) -> dict[str, bytes]:
        self.lookups += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return {} if answer is None else {task_id: msgspec.json.encode(answer) for task_id in ids}


def cursor_over(fetch: Script, *, max_missing: int = 3) -> _poller.PollCursor[mjasync.ImagineResult]:
    """A cursor on task "t" whose lookups go to `fetch`, with no wait between them."""
    policy = mjasync.PollPolicy(
        initial_interval=0.001, max_interval=0.001, batch_window=0.0, max_missing_lookups=max_missing
    )
    core: Any = SimpleNamespace(
        poller=TaskPoller(fetch, window=0.0, max_batch=50), provider=get_provider("acedata"), poll=policy
    )
    return _poller.PollCursor(core, mjasync.ImagineResult, "t", deadline=60)


RUNNING = {"id": "t", "response": {"success": True, "task_id": "t", "progress": 40}}
FINAL = {
    "id": "t",
    "response": {
        "success": True,
        "task_id": "t",
        "progress": 100,
        "image_id": "i1",
        "image_url": "http://x/y.png",
        "actions": ["upscale1"],
    },
}


async def test_a_task_with_no_record_ends_after_max_missing_lookups() -> None:
    """Lookups that keep finding no record end the wait with TaskNotFoundError (its task_id set),
    after exactly `max_missing_lookups` of them, not at the deadline."""
    fetch = Script(None, None, None, None)
    with anyio.fail_after(30):
        with pytest.raises(mjasync.TaskNotFoundError) as caught:
            await cursor_over(fetch).next()
    assert caught.value.task_id == "t"
    assert fetch.lookups == 3


async def test_misses_are_counted_in_a_row_and_any_record_resets_them() -> None:
    """A just-accepted task may not be indexed yet: two misses, a record, two more, then the result."""
    fetch = Script(None, None, RUNNING, None, None, FINAL)
    cursor = cursor_over(fetch)
    with anyio.fail_after(30):
        first = await cursor.next()
        final = await cursor.next()
    assert first.progress == 40 and final.is_final
    assert fetch.lookups == 6


async def test_a_not_found_answer_counts_as_a_miss() -> None:
    """A provider that answers a lookup of an unknown id with 400/404 "not found" is a miss, not a
    refusal: the wait ends with TaskNotFoundError after the same bounded number of lookups."""
    not_found = mjasync.BadRequestError("The task `t` is not found.", status=400, code="bad_request")
    fetch = Script(not_found, not_found)
    with anyio.fail_after(30):
        with pytest.raises(mjasync.TaskNotFoundError) as caught:
            await cursor_over(fetch, max_missing=2).next()
    assert caught.value.task_id == "t" and caught.value.status == 400
    assert fetch.lookups == 2
