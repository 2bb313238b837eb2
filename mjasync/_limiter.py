"""I/O layer: how many jobs run at once, and one shared pause when the provider says "too many".

- An in-flight cap (jobs submitted and not yet finished) on an anyio `CapacityLimiter`; it is
  separate from the connector's socket cap, which must leave room for task lookups.
- One cooldown per client: a 429 with Retry-After (or a backoff delay) pushes a single shared
  "not before" time that every job waits for before its next request, so a burst of 429s is one
  pause, not one retry storm per job.
- Additive increase, multiplicative decrease: the first 429 of a cooldown halves the in-flight
  cap; after `increase_after` clean completions it grows back by one, up to the configured cap.
- An optional pace for submits (a minimum interval between them).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import anyio

__all__ = ["JobLimiter", "LimiterStatistics"]


@dataclass(frozen=True)
class LimiterStatistics:
    """A snapshot of the limiter, for tests, benchmarks and dashboards."""

    #: Jobs holding a slot now.
    in_flight: int
    #: Jobs waiting for a slot.
    waiting: int
    #: The current in-flight cap (shrinks on 429s, grows back).
    limit: int
    #: The configured cap.
    max_limit: int
    #: How many separate cooldowns 429s have started.
    cooldowns: int
    #: Seconds left in the current cooldown (0 when none).
    cooldown_remaining: float


class JobLimiter:
    """Caps jobs in flight, shares one rate-limit cooldown, and adapts to 429s."""

    def __init__(
        self,
        max_in_flight: int,
        *,
        submits_per_second: float | None = None,
        increase_after: int = 10,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._max = max_in_flight
        self._slots = anyio.CapacityLimiter(max_in_flight)
        self._interval = 1.0 / submits_per_second if submits_per_second else 0.0
        self._increase_after = increase_after
        self._clock = clock
        self._sleep = sleep
        self._not_before = 0.0
        self._next_submit = 0.0
        self._clean = 0
        self._cooldowns = 0

    def slot(self, borrower: object) -> _Slot:
        """`async with limiter.slot(job):` holds one in-flight slot for `job` (any object)."""
        return _Slot(self._slots, borrower)

    async def acquire(self, borrower: object) -> None:
        """Take one in-flight slot for `borrower`, waiting while the cap is reached."""
        await _acquire(self._slots, borrower)

    def release(self, borrower: object) -> None:
        """Give back `borrower`'s slot."""
        self._slots.release_on_behalf_of(borrower)

    def clear_to_submit(self) -> bool:
        """Whether a submit may go now, with no cooldown to wait out and no pace to keep."""
        return not self._interval and self._not_before <= self._clock()

    async def before_request(self) -> None:
        """Wait out the shared cooldown, if one is running."""
        while (remaining := self._not_before - self._clock()) > 0:
            await self._sleep(remaining)

    async def before_submit(self) -> None:
        """Wait out the cooldown, then keep the configured pace between submits."""
        await self.before_request()
        if self._interval:
            now = self._clock()
            start = max(now, self._next_submit)
            # Reserve the start time before sleeping, so concurrent submits queue behind each other.
            self._next_submit = start + self._interval
            if start > now:
                await self._sleep(start - now)

    def rate_limited(self, delay: float) -> None:
        """The provider answered 429: pause every job for `delay` seconds, and shrink the cap once."""
        now = self._clock()
        if self._not_before <= now:
            # A new cooldown: one multiplicative decrease for the whole burst of 429s inside it.
            self._cooldowns += 1
            self._slots.total_tokens = max(1, int(self._slots.total_tokens * 0.5))
        self._not_before = max(self._not_before, now + delay)
        self._clean = 0

    def succeeded(self) -> None:
        """A job finished cleanly: after enough of these, let one more run at once."""
        self._clean += 1
        if self._clean >= self._increase_after and self._slots.total_tokens < self._max:
            self._slots.total_tokens += 1
            self._clean = 0

    def statistics(self) -> LimiterStatistics:
        """Where the limiter stands now."""
        stats = self._slots.statistics()
        return LimiterStatistics(
            in_flight=stats.borrowed_tokens,
            waiting=stats.tasks_waiting,
            limit=int(stats.total_tokens),
            max_limit=self._max,
            cooldowns=self._cooldowns,
            cooldown_remaining=max(0.0, self._not_before - self._clock()),
        )


class _Slot:
    __slots__ = ("_borrower", "_slots")

    def __init__(self, slots: anyio.CapacityLimiter, borrower: object) -> None:
        self._slots = slots
        self._borrower = borrower

    async def __aenter__(self) -> None:
        await _acquire(self._slots, self._borrower)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._slots.release_on_behalf_of(self._borrower)


async def _acquire(slots: anyio.CapacityLimiter, borrower: object) -> None:
    """A free slot is taken at once; only a job that must wait goes through anyio's checkpoints.

    `acquire_on_behalf_of` yields to the loop twice even when a slot is free; on a fan-out of short
    jobs that was a measurable share of each job's CPU. The job's own request is the checkpoint.
    """
    try:
        slots.acquire_on_behalf_of_nowait(borrower)
    except anyio.WouldBlock:
        await slots.acquire_on_behalf_of(borrower)
