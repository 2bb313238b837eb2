"""`JobLimiter` with an injected clock and sleep: who waits after a 429, and for how long."""

from __future__ import annotations

import anyio
import pytest

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
