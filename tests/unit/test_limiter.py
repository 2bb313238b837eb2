"""`JobLimiter` with an injected clock and sleep: who waits after a 429, and for how long."""

from __future__ import annotations

import anyio
import pytest

from mjasync._exceptions import RateLimitError
from mjasync._limiter import JobLimiter


class FakeTime:
    """A clock that moves only when someone sleeps on it (to the sleep's end); every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wakes = self.now + seconds
        await anyio.lowlevel.checkpoint()
        self.now = max(self.now, wakes)


def limiter(max_in_flight: int = 8, **options: object) -> tuple[JobLimiter, FakeTime]:
    fake = FakeTime()
    return JobLimiter(max_in_flight, clock=fake.clock, sleep=fake.sleep, **options), fake  # type: ignore[arg-type]


async def test_an_isolated_refusal_waits_alone() -> None:
    """One refused submit among proven work: it sleeps its Retry-After; no pause, the cap stays."""
    jobs, fake = limiter(4)
    held = [object() for _ in range(4)]
    for job in held:
        await jobs.acquire(job)
    for _ in range(8):
        jobs.succeeded()  # four at once, twice over: that level is proven
    await jobs.refused(2.0)
    stats = jobs.statistics()
    assert fake.sleeps == [2.0]
    assert jobs.clear_to_submit(), "no one else is paused"
    assert (stats.limit, stats.cooldowns, stats.decreases, stats.retrying) == (4, 0, 0, 0)


async def test_sustained_refusals_share_one_pause() -> None:
    """Eight jobs out, all refused: one shared pause that every request then waits for."""
    jobs, fake = limiter(8)
    retried: list[float] = []
    out = anyio.Event()

    async def job() -> None:
        async with jobs.slot(object()):
            await out.wait()
            await jobs.refused(1.0)
            retried.append(fake.now)

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(job)
        await anyio.wait_all_tasks_blocked()
        out.set()
    stats = jobs.statistics()
    assert len(retried) == 8 and min(retried) >= 1.0
    assert stats.cooldowns == 1 and stats.decreases == 1
    assert stats.limit == 4, "one decrease for the burst, by at most half"
    assert stats.estimate is not None
    assert fake.now >= 1.0 and stats.retrying == 0


async def test_a_refused_job_retries_only_into_room_under_the_cap() -> None:
    """After the cap fell below the jobs out, a refused job waits until one of them is done."""
    jobs, fake = limiter(8)
    running = [object() for _ in range(7)]
    for job in running:
        await jobs.acquire(job)
    refused_job = object()
    await jobs.acquire(refused_job)
    retried = anyio.Event()

    async def retry() -> None:
        await jobs.refused(0.5)
        retried.set()

    async with anyio.create_task_group() as group:
        group.start_soon(retry)
        await anyio.wait_all_tasks_blocked()
        # Refused at level 8 with nothing proven: the cap fell to 7, and 7 others are out.
        assert jobs.statistics().limit == 7 and jobs.statistics().retrying == 1
        assert not retried.is_set()
        jobs.release(running.pop())
        with anyio.fail_after(5):
            await retried.wait()
    assert fake.sleeps[0] == 0.5


async def test_the_aimd_policy_halves_on_each_new_cooldown() -> None:
    """`policy="aimd"` (kept for benchmark 6): a 429 halves the cap and pauses everyone."""
    jobs, _ = limiter(8, policy="aimd", increase_after=2)
    await jobs.refused(0.0)
    assert jobs.statistics().limit == 4
    await jobs.refused(0.0)
    assert jobs.statistics().limit == 2, "Retry-After 0: the cooldown is over, so it halves again"
    for _ in range(2):
        jobs.succeeded()
    assert jobs.statistics().limit == 3


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        JobLimiter(4, policy="fast")  # type: ignore[arg-type]


async def _resend(
    jobs: JobLimiter, sent: list[int], index: int, answer: anyio.Event, error: BaseException | None
) -> None:
    """What a retrying submit does after `refused`: wait until it may go, then send (and get `error`)."""
    if not jobs.clear_to_submit():
        await jobs.before_submit()
    sent.append(index)
    try:
        with jobs.sending():
            await answer.wait()
            if error is not None:
                raise error
    except RuntimeError:
        pass


@pytest.mark.parametrize("probe_error", [None, RuntimeError("no verdict: a broken connection")])
async def test_after_a_shared_pause_one_submit_goes_first(probe_error: BaseException | None) -> None:
    """Eight refused: after the pause one probe is sent; the others wait for its answer. Taken, or no
    verdict at all: the others follow (with no verdict, one of them goes first instead)."""
    jobs, fake = limiter(8)
    sent: list[int] = []
    answers = [anyio.Event() for _ in range(8)]
    out = anyio.Event()

    async def job(index: int) -> None:
        async with jobs.slot(object()):
            await out.wait()
            await jobs.refused(1.0)
            await _resend(jobs, sent, index, answers[index], probe_error if len(sent) == 0 else None)

    async with anyio.create_task_group() as group:
        for index in range(8):
            group.start_soon(job, index)
        await anyio.wait_all_tasks_blocked()
        out.set()
        await anyio.wait_all_tasks_blocked()
        assert len(sent) == 1, "only the probe went"
        answers[sent[0]].set()
        await anyio.wait_all_tasks_blocked()
        assert len(sent) >= 2, "its answer let the others go"
        for answer in answers:
            answer.set()
    assert sorted(sent) == list(range(8)) and fake.now >= 1.0


def overloaded(jobs: JobLimiter) -> None:
    """Eight jobs out, every one refused and not retried: a shared pause, with a probe after it."""
    for _ in range(8):
        jobs.refused_for_good(1.0)
    assert jobs.statistics().cooldowns == 1


async def may_submit(jobs: JobLimiter) -> bool:
    """Whether a submit waiting to go gets through before everything blocks."""
    through = anyio.Event()

    async def submit() -> None:
        await jobs.before_submit()
        through.set()

    async with anyio.create_task_group() as group:
        group.start_soon(submit)
        await anyio.wait_all_tasks_blocked()
        group.cancel_scope.cancel()
    return through.is_set()


@pytest.mark.parametrize("ending", ["cancelled", "refused for good", "no verdict"])
async def test_a_probe_that_ends_without_a_retry_frees_the_others(ending: str) -> None:
    """Cancelled while out, refused and not retried (out of time, retries off), or failed with no
    verdict (a 5xx): no one waits for it any longer."""
    jobs, fake = limiter(8)
    for _ in range(8):
        await jobs.acquire(object())
    overloaded(jobs)
    fake.now = 5.0  # the pause is over
    with anyio.CancelScope() as scope:
        try:
            with jobs.sending():  # the probe
                assert not await may_submit(jobs), "the others wait for the probe's answer"
                if ending == "cancelled":
                    scope.cancel()
                    await anyio.sleep_forever()
                raise (
                    RateLimitError("again", retry_after=1.0) if ending == "refused for good" else RuntimeError
                )
        except RateLimitError:
            jobs.refused_for_good(1.0)
        except RuntimeError:
            pass
    assert await may_submit(jobs)


async def test_a_late_refusal_of_the_burst_is_not_taken_for_the_probes() -> None:
    """Retry-After: 0 lets the probe go before every answer of the burst is in; a 429 to a request
    sent before the pause is still that burst, not the probe refused: no second decrease."""
    jobs, _fake = limiter(64)
    for _ in range(8):
        await jobs.acquire(object())
    late = jobs.sending()
    late.__enter__()  # sent before the overload, answered after the probe went
    for _ in range(7):
        jobs.refused_for_good(0.0)
    decreases = jobs.statistics().decreases
    assert decreases == 1
    with jobs.sending():  # the probe, still out
        late.__exit__(RateLimitError, RateLimitError("late"), None)
        jobs.refused_for_good(0.0)
        assert jobs.statistics().decreases == decreases
        assert not await may_submit(jobs), "the probe's own answer is still awaited"
    assert await may_submit(jobs)
