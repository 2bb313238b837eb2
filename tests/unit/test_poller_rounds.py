"""Waiting jobs due at different moments still share full lookups: a round with room takes the
sleepers near due (soonest first, up to `max_batch`), early and never late."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Any

import anyio
import msgspec
import pytest

import mjasync
from mjasync import _poller
from mjasync._lookups import TaskPoller
from mjasync._providers import get_provider
from mjasync.emulator import DEFAULT_TOKEN, Emulator

from ..virtual_time import VirtualTime

WINDOW = 0.005
#: Where the emulator's clock starts (unix seconds) when it runs on a test's `VirtualTime`.
EMULATOR_EPOCH = 1_750_000_000.0


class Recorder:
    """A fake `fetch`: records each lookup's ids and when it was made; answers one body per id."""

    def __init__(self, fake: VirtualTime) -> None:
        self.fake = fake
        self.fetches: list[list[str]] = []
        self.times: list[float] = []
        self.fail_with: Exception | None = None
        self.hang_first = False
        #: Set once the first lookup hangs (with `hang_first`).
        self.hung = anyio.Event()

    async def __call__(self, ids: list[str]) -> dict[str, bytes]:
        self.fetches.append(list(ids))
        self.times.append(self.fake.now)
        if self.hang_first and len(self.fetches) == 1:
            self.hung.set()
            await anyio.sleep_forever()
        if self.fail_with is not None:
            raise self.fail_with
        return {task_id: f"record of {task_id}".encode() for task_id in ids}


def poller_on(fake: VirtualTime, *, max_batch: int) -> tuple[TaskPoller, Recorder]:
    """A poller whose waits are on `time`, and the fake fetch behind it."""
    fetch = Recorder(fake)
    return TaskPoller(fetch, window=WINDOW, max_batch=max_batch, clock=fake.clock, sleep=fake.sleep), fetch


async def wait_all(
    fake: VirtualTime, poller: TaskPoller, plan: dict[str, tuple[float, float]]
) -> dict[str, tuple[bytes | None, float]]:
    """Poll every task id with its (delay, early); each one's record and when it came."""
    got: dict[str, tuple[bytes | None, float]] = {}

    async def one(task_id: str, delay: float, early: float) -> None:
        body = await poller.poll(task_id, delay=delay, early=early)
        got[task_id] = (body, fake.now)

    async def all_of_them() -> None:
        async with anyio.create_task_group() as group:
            for task_id, (delay, early) in plan.items():
                group.start_soon(one, task_id, delay, early)

    await fake.drive(all_of_them)
    return got


# --- the poller alone (a fake fetch, time the test moves) ------------------------------------------


async def test_waiters_due_at_different_moments_share_one_lookup() -> None:
    """Ten waiters due 20 ms apart (far more than the window) make one lookup, when the first is due."""
    fake = VirtualTime()
    poller, fetch = poller_on(fake, max_batch=50)
    plan = {f"t{i}": (0.3 + 0.02 * i, 0.5 * (0.3 + 0.02 * i)) for i in range(10)}
    got = await wait_all(fake, poller, plan)

    assert fetch.fetches == [list(plan)], "one lookup, soonest due first"
    assert poller.fetches == 1 and poller.ids_fetched == 10
    assert fetch.times == [pytest.approx(0.3 + WINDOW)], "when the first waiter is due, not before"
    for task_id, (delay, early) in plan.items():
        body, at = got[task_id]
        assert body == f"record of {task_id}".encode()
        assert delay - early <= at <= delay + WINDOW, (task_id, at)
    assert not poller._sleeping


async def test_a_round_takes_the_soonest_due_and_no_more_than_max_batch() -> None:
    """With room for four, rounds are full and taken in due order: 10 waiters make three lookups."""
    fake = VirtualTime()
    poller, fetch = poller_on(fake, max_batch=4)
    ids = [f"t{i}" for i in range(10)]
    plan = {task_id: (0.3 + 0.04 * i, 0.15) for i, task_id in enumerate(ids)}
    got = await wait_all(fake, poller, plan)

    assert all(body is not None for body, _ in got.values())
    # Each round: the leader, when due, and the three soonest due of those within `early` of due.
    assert fetch.fetches == [ids[:4], ids[4:8], ids[8:]]
    assert fetch.times == pytest.approx([0.3 + WINDOW, 0.46 + WINDOW, 0.62 + WINDOW])
    for task_id, (delay, _early) in plan.items():
        assert got[task_id][1] <= delay + WINDOW, "never later than due"


async def test_a_sleeper_is_not_taken_before_its_earliest() -> None:
    """A waiter due much later than the round is left to sleep; with early=0 it is never taken early."""
    fake = VirtualTime()
    poller, fetch = poller_on(fake, max_batch=50)
    got = await wait_all(fake, poller, {"soon": (0.05, 0.0), "late": (0.6, 0.2), "exact": (0.3, 0.0)})

    assert fetch.fetches == [["soon"], ["exact"], ["late"]]
    assert fetch.times == pytest.approx([0.05 + WINDOW, 0.3 + WINDOW, 0.6 + WINDOW])
    assert got["exact"][1] == pytest.approx(0.3 + WINDOW)
    assert got["late"][1] == pytest.approx(0.6 + WINDOW)


async def test_a_second_waiter_on_the_same_task_rides_free() -> None:
    """Two cursors on one task sleeping near due: the round fetches the id once and answers both."""
    fake = VirtualTime()
    poller, fetch = poller_on(fake, max_batch=2)
    results: list[bytes | None] = []

    async def one(task_id: str, delay: float) -> None:
        results.append(await poller.poll(task_id, delay=delay, early=delay))

    async def three() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(one, "a", 0.1)
            group.start_soon(one, "b", 0.2)
            group.start_soon(one, "b", 0.25)

    await fake.drive(three)
    assert fetch.fetches == [["a", "b"]]
    assert sorted(results, key=str) == [b"record of a", b"record of b", b"record of b"]


async def test_early_riders_get_the_rounds_error() -> None:
    """A lookup that fails fails for everyone in its round, riders included; nothing stays asleep."""
    fake = VirtualTime()
    poller, fetch = poller_on(fake, max_batch=50)
    fetch.fail_with = mjasync.APIConnectionError("boom", may_have_reached_server=True)
    errors: list[BaseException] = []

    async def one(task_id: str, delay: float) -> None:
        try:
            await poller.poll(task_id, delay=delay, early=delay)
        except mjasync.MJError as exc:
            errors.append(exc)

    async def both() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(one, "a", 0.05)
            group.start_soon(one, "b", 5.0)

    await fake.drive(both)
    assert fetch.fetches == [["a", "b"]]
    assert errors == [fetch.fail_with, fetch.fail_with]
    assert fake.now == pytest.approx(0.05 + WINDOW), "the rider did not sleep on"
    assert not poller._sleeping


async def test_a_cancelled_sleeper_leaves_nothing_behind() -> None:
    """A waiter cancelled while asleep (its deadline) is forgotten: later rounds never fetch its id."""
    fake = VirtualTime()
    poller, fetch = poller_on(fake, max_batch=50)
    async with anyio.create_task_group() as group:
        group.start_soon(partial(poller.poll, "gone", delay=10.0, early=10.0))
        await anyio.wait_all_tasks_blocked()
        assert [sleeper.task_id for sleeper in poller._sleeping] == ["gone"]
        group.cancel_scope.cancel()
    assert not poller._sleeping
    assert await fake.drive(lambda: poller.poll("here")) == b"record of here"
    assert fetch.fetches == [["here"]]


async def test_riders_of_a_cancelled_leader_go_on_to_a_new_round() -> None:
    """The leader is cancelled mid-lookup: the rider it took is not lost, it looks again at once."""
    fake = VirtualTime()
    poller, fetch = poller_on(fake, max_batch=50)
    fetch.hang_first = True
    got: dict[str, bytes | None] = {}

    async def rider() -> None:
        got["rider"] = await poller.poll("rider", delay=5.0, early=5.0)

    async def leader_cancelled_mid_lookup() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(rider)
            with anyio.CancelScope() as leading:

                async def cancel_once_hung() -> None:
                    await fetch.hung.wait()
                    leading.cancel()

                group.start_soon(cancel_once_hung)
                await poller.poll("leader", delay=0.05, early=0.0)

    await fake.drive(leader_cancelled_mid_lookup)
    assert got == {"rider": b"record of rider"}
    assert fetch.fetches == [["leader", "rider"], ["rider"]]
    assert fake.now < 5.0, "the rider looked again at once, not when it was due"


# --- a client against the emulator ----------------------------------------------------------------


async def lookups_for_staggered_jobs(
    jobs: int, *, gap: float, max_batch: int = 50
) -> tuple[int, int, list[int]]:
    """Submit `jobs` one `gap` apart to a 1.5 s emulator, await all; (lookups, ids fetched, batch sizes).

    The client and the emulator share one `VirtualTime`: the gaps, the jobs' progress and the polls'
    waits are all on it, so the lookups counted are the same however loaded the machine is.
    """
    policy = mjasync.PollPolicy(
        initial_interval=0.2,
        factor=1.5,
        max_interval=0.4,
        batch_window=WINDOW,
        max_batch=max_batch,
        deadline=30,
    )
    virtual = VirtualTime()
    async with Emulator(speed=1.5, clock=lambda: EMULATOR_EPOCH + virtual.now) as emu:
        async with mjasync.Client(
            api_key=DEFAULT_TOKEN,
            base_url=emu.url,
            wait_via="poll",
            poll=policy,
            clock=virtual.clock,
            sleep=virtual.sleep,
        ) as mj:

            async def submit_staggered_and_await_all() -> list[Any]:
                handles = []
                for i in range(jobs):
                    handles.append(await mj.imagine(f"a lighthouse, study {i}").submit())
                    await virtual.sleep(gap)
                results: list[Any] = []

                async def wait(handle: mjasync.types.ImagineHandle) -> None:
                    results.append(await handle)

                async with anyio.create_task_group() as group:
                    for handle in handles:
                        group.start_soon(wait, handle)
                return results

            results = await virtual.drive(submit_staggered_and_await_all)
            assert len(results) == jobs and all(r.is_final for r in results)
            bodies = [r.json or {} for r in emu.requests if r.path == "/midjourney/tasks"]
            sizes = [len(b["ids"]) if b["action"] == "retrieve_batch" else 1 for b in bodies]
            assert emu.counters["polls"] == mj.statistics().lookups == len(bodies)
            return mj.statistics().lookups, mj.statistics().ids_looked_up, sizes


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


def cursor_over(
    fetch: Script, *, max_missing: int = 3
) -> tuple[_poller.PollCursor[mjasync.ImagineResult, mjasync.types.ImagineUpdate], VirtualTime]:
    """A cursor on task "t" whose lookups go to `fetch`, 1 ms apart, and the time it waits on."""
    policy = mjasync.PollPolicy(
        initial_interval=0.001, max_interval=0.001, batch_window=0.0, max_missing_lookups=max_missing
    )
    fake = VirtualTime()
    engine: Any = SimpleNamespace(
        look_up=TaskPoller(fetch, window=0.0, max_batch=50, clock=fake.clock, sleep=fake.sleep).poll,
        provider=get_provider("acedata"),
        poll=policy,
        clock=fake.clock,
    )
    return _poller.PollCursor(
        engine, mjasync.ImagineResult, mjasync.types.ImagineUpdate, "t", deadline=60
    ), fake


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
    cursor, fake = cursor_over(fetch)
    with anyio.fail_after(30):
        with pytest.raises(mjasync.TaskNotFoundError) as caught:
            await fake.drive(cursor.next)
    assert caught.value.task_id == "t"
    assert fetch.lookups == 3


async def test_misses_are_counted_in_a_row_and_any_record_resets_them() -> None:
    """A just-accepted task may not be indexed yet: two misses, a record, two more, then the result."""
    fetch = Script(None, None, RUNNING, None, None, FINAL)
    cursor, fake = cursor_over(fetch)
    with anyio.fail_after(30):
        first = await fake.drive(cursor.next)
        final = await fake.drive(cursor.next)
    assert first.progress == 40 and final.is_final
    assert fetch.lookups == 6


async def test_a_not_found_answer_counts_as_a_miss() -> None:
    """A provider that answers a lookup of an unknown id with 400/404 "not found" is a miss, not a
    refusal: the wait ends with TaskNotFoundError after the same bounded number of lookups."""
    not_found = mjasync.BadRequestError("The task `t` is not found.", status=400, code="bad_request")
    fetch = Script(not_found, not_found)
    cursor, fake = cursor_over(fetch, max_missing=2)
    with anyio.fail_after(30):
        with pytest.raises(mjasync.TaskNotFoundError) as caught:
            await fake.drive(cursor.next)
    assert caught.value.task_id == "t" and caught.value.status == 400
    assert fetch.lookups == 2
