"""When a waiting job is looked up next: pure functions of what its lookups showed and an injected clock.

Until progress has risen twice the wait grows from `initial_interval`; then the job's end is estimated
from its pace, lookups close in on the estimate and the one meant to find it done comes just after it.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import anyio
import msgspec
import pytest

import mjasync
from mjasync._lookups import TaskPoller
from mjasync._poller import (
    FINISH_MARGIN,
    PROBE_SHARE,
    PollCursor,
    PollSchedule,
    finish_estimate,
    next_delay,
    observe,
    unanswered,
)
from mjasync._providers import get_provider

from ..virtual_time import VirtualTime

POLICY = mjasync.PollPolicy(initial_interval=1.0, factor=1.5, max_interval=10.0)


def test_the_first_lookup_comes_a_second_after_the_submit_by_default() -> None:
    """Interactive use: a job done within a second or two is known about a second after it is sent."""
    assert mjasync.PollPolicy().initial_interval == 1.0
    assert next_delay(PollSchedule.start(POLICY), 0.0, POLICY) == POLICY.initial_interval


def test_without_progress_the_wait_grows_by_factor_up_to_max_interval() -> None:
    """A queued job (no progress) is looked up ever more rarely: 1, 1.5, 2.25, ... up to 10 s."""
    schedule, now, waits = PollSchedule.start(POLICY), 0.0, []
    for _ in range(8):
        now += next_delay(schedule, now, POLICY)
        schedule = observe(schedule, None, now, POLICY)
        waits.append(next_delay(schedule, now, POLICY))
    assert waits == pytest.approx([1.5, 2.25, 3.375, 5.0625, 7.59375, 10.0, 10.0, 10.0])


def test_a_failed_lookup_grows_the_wait_and_dates_nothing() -> None:
    """A lookup that told nothing is no bound on when progress rose: it leaves `looked_at` alone."""
    schedule = observe(PollSchedule.start(POLICY), 5.0, 10.0, POLICY)
    failed = unanswered(schedule, POLICY)
    assert failed.interval == POLICY.initial_interval * POLICY.factor
    assert failed.looked_at == 10.0 and failed.rises == schedule.rises
    risen = observe(failed, 20.0, 30.0, POLICY)
    assert risen.rises[-1] == (20.0, 20.0), "dated half-way from the last answered lookup (10 s)"


def test_a_rise_is_dated_half_way_between_lookups_and_resets_the_wait() -> None:
    schedule = PollSchedule.start(POLICY)
    schedule = observe(schedule, None, 1.0, POLICY)
    schedule = observe(schedule, None, 2.5, POLICY)
    assert schedule.interval == 2.25
    schedule = observe(schedule, 10.0, 4.5, POLICY)
    assert schedule.rises == ((3.5, 10.0),) and schedule.interval == POLICY.initial_interval
    schedule = observe(schedule, 10.0, 6.5, POLICY)
    assert schedule.rises == ((3.5, 10.0),), "the same progress again is no rise"
    schedule = observe(schedule, 5.0, 8.5, POLICY)
    assert schedule.progress == 10.0, "progress that goes back is no rise either"
    schedule = observe(schedule, 30.0, 10.5, POLICY)
    assert schedule.rises == ((3.5, 10.0), (9.5, 30.0))
    schedule = observe(schedule, 40.0, 12.5, POLICY)
    schedule = observe(schedule, 50.0, 14.5, POLICY)
    assert schedule.rises == ((3.5, 10.0), (11.5, 40.0), (13.5, 50.0)), (
        "kept: the first, the one before the latest and the latest"
    )


def test_progress_0_is_no_rise() -> None:
    """A job can sit at 0 % in a queue: its pace is counted from its first move above 0."""
    schedule = observe(PollSchedule.start(POLICY), 0.0, 1.0, POLICY)
    schedule = observe(schedule, 0.0, 2.5, POLICY)
    assert schedule.rises == () and schedule.interval == 2.25
    assert observe(schedule, 5.0, 4.5, POLICY).rises == ((3.5, 5.0),)


def test_the_first_lookup_dates_a_rise_at_its_own_time() -> None:
    assert observe(PollSchedule.start(POLICY), 35.0, 7.0, POLICY).rises == ((7.0, 35.0),)


def test_the_end_is_estimated_from_the_pace() -> None:
    """Progress 20 at 10 s and 40 at 20 s: 2 % a second, so 100 % at 50 s; none before two rises."""
    one = PollSchedule(interval=1.0, progress=20.0, rises=((10.0, 20.0),))
    assert finish_estimate(one) is None
    assert next_delay(one, 12.0, POLICY) == one.interval
    two = PollSchedule(interval=1.0, progress=40.0, rises=((10.0, 20.0), (20.0, 40.0)))
    assert finish_estimate(two) == pytest.approx(50.0)
    done = PollSchedule(interval=1.0, progress=100.0, rises=((10.0, 60.0), (20.0, 100.0)))
    assert finish_estimate(done) == pytest.approx(20.0), "at 100 % but not final: due now"


@pytest.mark.parametrize(
    ("rises", "end"),
    [
        (((0.0, 10.0), (10.0, 20.0), (20.0, 40.0)), 50.0),  # speeding up: the latest step's pace
        (((0.0, 10.0), (10.0, 40.0), (20.0, 50.0)), 45.0),  # slowing down: the whole span's pace
    ],
)
def test_of_the_whole_spans_pace_and_the_latest_steps_the_sooner_end_counts(
    rises: tuple[tuple[float, float], ...], end: float
) -> None:
    """Looking too soon costs a lookup; looking too late is the delay to cut."""
    schedule = PollSchedule(interval=1.0, progress=rises[-1][1], rises=rises)
    assert finish_estimate(schedule) == pytest.approx(end)


def test_lookups_close_in_on_the_estimate_and_the_last_comes_just_after_it() -> None:
    two = PollSchedule(interval=1.0, progress=40.0, rises=((10.0, 20.0), (20.0, 40.0)))  # ends at 50
    assert next_delay(two, 20.0, POLICY) == POLICY.max_interval, "far off: no longer than max_interval"
    assert next_delay(two, 40.0, POLICY) == pytest.approx(10.0 * PROBE_SHARE)
    assert next_delay(two, 49.5, POLICY) == pytest.approx(POLICY.initial_interval), "never shorter"
    near = 50.0 - 1.5 * POLICY.initial_interval
    assert next_delay(two, near, POLICY) == pytest.approx(50.0 + FINISH_MARGIN - near)
    nearly = 50.0 - 2.8 * POLICY.initial_interval
    assert next_delay(two, nearly, POLICY) == pytest.approx((50.0 + FINISH_MARGIN - nearly) / 2), (
        "in equal steps of at least initial_interval, the last landing just after the estimate"
    )


def test_a_job_past_its_estimate_is_looked_up_after_a_share_of_its_overrun() -> None:
    two = PollSchedule(interval=1.0, progress=40.0, rises=((10.0, 20.0), (20.0, 40.0)))  # ends at 50
    assert next_delay(two, 50.5, POLICY) == POLICY.initial_interval
    assert next_delay(two, 58.0, POLICY) == pytest.approx(8.0 * PROBE_SHARE)
    assert next_delay(two, 200.0, POLICY) == POLICY.max_interval


def follow(
    progress_at: Callable[[float], float | None], end: float, policy: mjasync.PollPolicy
) -> list[float]:
    """When a job is looked up, by the schedule alone (clock injected), until a lookup finds it done."""
    schedule, now, lookups = PollSchedule.start(policy), 0.0, []
    while True:
        now += next_delay(schedule, now, policy)
        lookups.append(now)
        if now >= end:
            return lookups
        schedule = observe(schedule, progress_at(now), now, policy)


@pytest.mark.parametrize("end", [12.0, 30.0, 60.0, 95.0, 180.0])
def test_a_steadily_progressing_job_is_found_done_soon_after_it_ends(end: float) -> None:
    """Queued for 15 %, then 10 % every tenth of the rest: found done within one `initial_interval`
    of its end (a curve that only grows would be up to `max_interval` late), in few lookups."""
    queued = 0.15 * end

    def progress_at(now: float) -> float | None:
        return None if now < queued else 10.0 * int((now - queued) / (end - queued) * 10)

    lookups = follow(progress_at, end, POLICY)
    assert lookups[-1] - end <= POLICY.initial_interval + FINISH_MARGIN, lookups
    assert len(lookups) <= 8 + end / 4, "a bounded number of lookups: not polling flat out"


def test_a_job_slower_than_its_pace_says_is_found_within_a_share_of_the_overrun() -> None:
    """Progress runs to 90 % at 1 %/s, then the job sits 40 s before it ends: the lookups past the
    estimate spread out (not every second for 40 s), and the end is found within a share of the overrun."""

    def progress_at(now: float) -> float | None:
        return min(float(int(now)), 90.0)

    end = 130.0
    lookups = follow(progress_at, end, POLICY)
    assert lookups[-1] - end <= PROBE_SHARE * (end - 100.0) + POLICY.initial_interval
    past = [at for at in lookups if at > 100.0 + FINISH_MARGIN]
    assert len(past) <= 12, past


# --- a cursor keeps its schedule from what its lookups show --------------------------------------------


class Script:
    """A fake `fetch`: answers each lookup with the next task record, as the provider would send it."""

    def __init__(self, *records: dict[str, Any]) -> None:
        self.records = list(records)

    async def __call__(self, ids: list[str]) -> dict[str, bytes]:
        return {task_id: msgspec.json.encode(self.records.pop(0)) for task_id in ids}


def running(progress: float) -> dict[str, Any]:
    return {"id": "t", "response": {"success": True, "task_id": "t", "progress": progress}}


async def test_a_cursor_plans_its_next_lookup_from_the_progress_it_saw() -> None:
    """Two rises seen: the next wait is the schedule's (less jitter), not the fixed curve's next step."""
    policy = mjasync.PollPolicy(initial_interval=0.001, max_interval=30.0, batch_window=0.0)
    fake = VirtualTime()
    engine: Any = SimpleNamespace(
        look_up=TaskPoller(
            Script(running(10), running(20)), window=0.0, max_batch=50, clock=fake.clock, sleep=fake.sleep
        ).poll,
        provider=get_provider("acedata"),
        poll=policy,
        clock=fake.clock,
    )
    cursor = PollCursor(engine, mjasync.ImagineResult, mjasync.types.ImagineUpdate, "t", deadline=60)
    with anyio.fail_after(30):
        assert (await fake.drive(cursor.next)).progress == 10
        assert cursor.schedule.progress == 10 and finish_estimate(cursor.schedule) is None
        assert (await fake.drive(cursor.next)).progress == 20
    schedule = cursor.schedule
    assert [progress for _, progress in schedule.rises] == [10, 20]
    assert finish_estimate(schedule) is not None and schedule.looked_at is not None
    planned = next_delay(schedule, schedule.looked_at, policy)
    assert 0.9 * planned <= cursor.next_delay <= planned, "the schedule's wait, less up to 10 % jitter"


async def test_a_jobs_first_lookup_never_rides_early() -> None:
    """The first lookup comes `initial_interval` after the submit, as documented: a round that goes
    out sooner with room to spare does not take it (a job done by then is found at once)."""
    fetched: list[list[str]] = []

    async def fetch(ids: list[str]) -> dict[str, bytes]:
        fetched.append(list(ids))
        return {task_id: msgspec.json.encode(running(10)) for task_id in ids}

    policy = mjasync.PollPolicy(initial_interval=0.3, batch_window=0.0)
    fake = VirtualTime()
    poller = TaskPoller(fetch, window=0.0, max_batch=50, clock=fake.clock, sleep=fake.sleep)
    engine: Any = SimpleNamespace(
        look_up=poller.poll, provider=get_provider("acedata"), poll=policy, clock=fake.clock
    )
    cursor = PollCursor(
        engine, mjasync.ImagineResult, mjasync.types.ImagineUpdate, "t", first_poll_delay=0.3, deadline=60
    )

    async def both() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(cursor.next)
            await poller.poll("other", delay=0.2)  # a round with room, 0.1 s before "t" is due

    with anyio.fail_after(30):
        await fake.drive(both)
    assert fetched == [["other"], ["t"]]
    assert fake.now == 0.3, "the first lookup came when it was due"


async def test_a_callback_update_feeds_the_schedule_too() -> None:
    policy = mjasync.PollPolicy(initial_interval=1.0)
    fake = VirtualTime()
    engine: Any = SimpleNamespace(
        look_up=TaskPoller(Script(), window=0.0, max_batch=50, clock=fake.clock, sleep=fake.sleep).poll,
        provider=get_provider("acedata"),
        poll=policy,
        clock=fake.clock,
    )
    cursor = PollCursor(engine, mjasync.ImagineResult, mjasync.types.ImagineUpdate, "t", deadline=60)
    update = mjasync.types.ImagineUpdate(task_id="t", progress=30)
    assert cursor.offer(update) is update
    assert cursor.schedule.progress == 30
    assert cursor.offer(update) is None, "progress is never repeated"
