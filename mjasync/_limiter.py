"""I/O layer: how many jobs run at once, learnt from where the provider says "too many".

- An in-flight cap (jobs submitted and not yet finished) on an anyio `CapacityLimiter`; it is
  separate from the connector's socket cap, which must leave room for task lookups.
- The cap follows `_capacity` (pure; see its docstring): it starts at the configured cap, falls to
  the level where the provider refuses, and grows back one window of completions at a time.
- A refused submit waits in `refused()`: its own Retry-After when the refusal is isolated (no one
  else pauses), or the one shared pause of a sustained overload, which every job also waits for
  before its next request. Then it re-sends only when fewer jobs are out than the cap allows, so
  the jobs that hold slots while waiting to retry never exceed what the provider takes.
- After a shared pause one submit goes first (the probe): `sending()` marks it out, and every other
  submit waits in `before_submit()` for its answer. Taken: all go. Refused: another, longer pause.
  Cancelled, or failed with no verdict (a 5xx, a dropped connection): another goes first. A 429 that
  will not be retried still reaches the state (`refused_for_good`), so no one waits on it.
- `policy="aimd"` keeps the earlier control, for comparison in benchmark 6 only: every 429 that
  starts a cooldown halves the cap and pauses everyone; `increase_after` clean completions add one.
- An optional pace for submits (a minimum interval between them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

import anyio

from . import _capacity
from ._exceptions import RateLimitError

__all__ = ["JobLimiter", "Limiter", "LimiterStatistics"]


@dataclass(frozen=True)
class LimiterStatistics:
    """A snapshot of the limiter, for tests, benchmarks and dashboards."""

    #: Jobs holding a slot now.
    in_flight: int
    #: Jobs waiting for a slot.
    waiting: int
    #: The current in-flight cap (falls where the provider refuses, grows back).
    limit: int
    #: The configured cap.
    max_limit: int
    #: How many shared pauses (sustained overloads) 429s have started.
    cooldowns: int
    #: Seconds left in the current shared pause (0 when none).
    cooldown_remaining: float
    #: The provider's limit as learnt: one less than where it last refused (None before any refusal).
    estimate: float | None = None
    #: How many times the cap was lowered (once per burst of refusals).
    decreases: int = 0
    #: Jobs that hold a slot while they wait to retry a refused submit.
    retrying: int = 0


class Limiter(Protocol):
    """What the engine asks of an in-flight limiter: `JobLimiter` in one process, or one whose state is
    shared by many (`mjasync.redis.SharedLimits`). The calls come in this order for a job: a slot
    (`slot`, or `acquire` ... `release`), `before_submit` unless `clear_to_submit()`, the send inside
    `sending()`, then `refused` / `refused_for_good` after a 429, and `succeeded` while the slot is
    still held. The synchronous ones must not block: a shared limiter notes them and sends them on.
    """

    def slot(self, borrower: object) -> AbstractAsyncContextManager[None]: ...
    async def acquire(self, borrower: object) -> None: ...
    def release(self, borrower: object) -> None: ...
    def sending(self) -> AbstractContextManager[None]: ...
    def clear_to_submit(self) -> bool: ...
    async def before_request(self) -> None: ...
    async def before_submit(self) -> None: ...
    async def refused(self, retry_after: float, *, submit: bool = True) -> None: ...
    def refused_for_good(self, retry_after: float) -> None: ...
    def succeeded(self) -> None: ...
    def statistics(self) -> LimiterStatistics: ...


class JobLimiter:
    """Caps jobs in flight, learns the provider's limit from its 429s, shares one pause on overload."""

    def __init__(
        self,
        max_in_flight: int,
        *,
        submits_per_second: float | None = None,
        policy: Literal["learn", "aimd"] = "learn",
        increase_after: int = 10,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if policy not in ("learn", "aimd"):
            raise ValueError("policy must be 'learn' or 'aimd'")
        self._max = max_in_flight
        self._slots = anyio.CapacityLimiter(max_in_flight)
        self._interval = 1.0 / submits_per_second if submits_per_second else 0.0
        self._policy = policy
        self._increase_after = increase_after
        self._clock = clock
        self._sleep = sleep
        self._state = _capacity.start(max_in_flight)
        self._not_before = 0.0
        self._next_submit = 0.0
        self._clean = 0
        self._cooldowns = 0
        #: Jobs holding a slot while they wait to retry a refused submit, and submits awaiting an answer:
        #: neither is held by the provider, so neither counts in the level a refusal or completion is at.
        self._retrying = 0
        self._sending = 0
        #: Slots held, and the slots' total as last set: kept here, as reading them back from anyio's
        #: limiter costs more than the rest of a completion's bookkeeping.
        self._out = 0
        self._applied = max_in_flight
        self._sending_scope = _Sending(self)
        #: The 429 about to be noted is the probe's (set as the probe's send ends, taken at once).
        self._probe_refused = False
        #: Set (and replaced) whenever a slot is given back or the cap changes, for jobs waiting to retry.
        self._changed = anyio.Event()

    def slot(self, borrower: object) -> _Slot:
        """`async with limiter.slot(job):` holds one in-flight slot for `job` (any object)."""
        return _Slot(self, borrower)

    async def acquire(self, borrower: object) -> None:
        """Take one in-flight slot for `borrower`, waiting while the cap is reached."""
        await _acquire(self._slots, borrower)
        self._out += 1

    def release(self, borrower: object) -> None:
        """Give back `borrower`'s slot."""
        self._slots.release_on_behalf_of(borrower)
        self._out -= 1
        if self._retrying:
            self._notify()

    def sending(self) -> _Sending:
        """`with limiter.sending():` around a submit's request, until its answer (or error) is in."""
        # Usually it holds no state of its own and one serves every submit; after a shared pause each
        # send gets its own, so the probe's answer is told from the answers of others.
        return _Sending(self) if self._state.probe else self._sending_scope

    def clear_to_submit(self) -> bool:
        """Whether a submit may go now, with no pause to wait out, no pace to keep and no probe to await."""
        return not self._interval and not self._state.probe and self._not_before <= self._clock()

    async def before_request(self) -> None:
        """Wait out the shared pause, if one is running."""
        while (remaining := self._not_before - self._clock()) > 0:
            await self._sleep(remaining)

    async def before_submit(self) -> None:
        """Wait out the pause (and after it, the probe's answer), then keep the configured pace."""
        await self.before_request()
        await self._after_probe()
        if self._interval:
            now = self._clock()
            start = max(now, self._next_submit)
            # Reserve the start time before sleeping, so concurrent submits queue behind each other.
            self._next_submit = start + self._interval
            if start > now:
                await self._sleep(start - now)

    async def refused(self, retry_after: float, *, submit: bool = True) -> None:
        """The provider answered 429 (`retry_after`: the seconds it asked for); wait until a retry may go.

        A refused submit is evidence for the cap. It waits its own Retry-After when the refusal is
        isolated, else the shared pause; then until fewer jobs are out than the cap allows. A
        refused lookup is not about the number of jobs: it waits its Retry-After (and any pause).
        """
        if self._policy == "aimd":
            self._halve(retry_after)
            await self.before_request()
            return
        if not submit:
            await self._sleep(retry_after)
            await self.before_request()
            return
        now = self._clock()
        verdict = self._note_refusal(now, retry_after)
        self._retrying += 1
        self._notify()  # one job fewer out: room for another that waits to retry
        try:
            if verdict in ("isolated", "cap") or now + retry_after > self._not_before:
                await self._sleep(retry_after)  # this request's own wait
            await self.before_request()  # and the shared pause, if one is running
            # Re-send only into room under the cap: the jobs out now exclude those waiting here.
            # No checkpoint between the last check and leaving: the next waiter sees this job out.
            while self._out - self._retrying >= math.floor(self._state.limit) or self._state.probe_out:
                await self._changed.wait()
        finally:
            self._retrying -= 1

    def refused_for_good(self, retry_after: float) -> None:
        """A submit answered 429 that will not be retried: evidence all the same, and no one waits."""
        if self._policy == "learn":
            self._note_refusal(self._clock(), retry_after)
            self._notify()

    def _note_refusal(self, now: float, retry_after: float) -> _capacity.Verdict:
        in_flight = max(1, self._out)
        level = max(1, self._level())  # the provider's jobs, and this one (its slot is held) it refused
        pauses = self._state.pause_until
        probe, self._probe_refused = self._probe_refused, False
        self._state, verdict = _capacity.refused(
            self._state, now, level=level, in_flight=in_flight, retry_after=retry_after, probe=probe
        )
        if self._state.pause_until != pauses and self._state.pause_until > now:
            self._cooldowns += 1
            self._not_before = max(self._not_before, self._state.pause_until)
        self._apply()
        return verdict

    async def _after_probe(self) -> None:
        """After a shared pause one submit goes first: wait for its answer (the send marks it out)."""
        while self._state.probe_out:
            await self._changed.wait()

    def _sent(self) -> bool:
        """A submit is going out after a shared pause; whether it is the probe (the first)."""
        if self._state.probe_out:
            return False
        self._state = _capacity.probing(self._state, self._clock())
        return True

    def _answered(self, error: BaseException | None, *, probe: bool) -> None:
        """A submit's answer is in after a shared pause (`error`: why it failed, if it did).

        Any submit taken ends the overload. A 429 to the probe is the verdict that it goes on: the
        `refused` (or `refused_for_good`) its sender calls next, with no checkpoint between, takes it.
        Anything else to the probe (a 5xx, a broken connection, a cancellation) is no verdict: another
        submit goes first instead.
        """
        if error is None:
            self._state = _capacity.accepted(self._state, self._clock())
            self._notify()
        elif probe and self._state.probe_out:
            if isinstance(error, RateLimitError):
                self._probe_refused = True
            else:
                self._state = _capacity.unanswered(self._state)
                self._notify()

    def succeeded(self) -> None:
        """A job finished cleanly (call it while the job still holds its slot)."""
        if self._policy == "aimd":
            self._clean += 1
            if self._clean >= self._increase_after and self._slots.total_tokens < self._max:
                self._slots.total_tokens += 1
                self._clean = 0
            return
        # Every job comes here: no helper calls on the way (see `_level` and `_apply`).
        out = self._out
        level = out - self._retrying - self._sending
        self._state = state = _capacity.completed(
            self._state, self._clock(), level=level if level > 1 else 1, in_flight=out if out > 1 else 1
        )
        if int(state.limit) != self._applied:
            self._apply()

    def statistics(self) -> LimiterStatistics:
        """Where the limiter stands now."""
        stats = self._slots.statistics()
        ceiling = self._state.ceiling
        return LimiterStatistics(
            in_flight=stats.borrowed_tokens,
            waiting=stats.tasks_waiting,
            limit=int(stats.total_tokens),
            max_limit=self._max,
            cooldowns=self._cooldowns,
            cooldown_remaining=max(0.0, self._not_before - self._clock()),
            estimate=ceiling - 1 if self._policy == "learn" and math.isfinite(ceiling) else None,
            decreases=self._state.decreases if self._policy == "learn" else self._cooldowns,
            retrying=self._retrying,
        )

    def _level(self) -> int:
        """Jobs the provider holds now, as far as this client knows: slots held, less those waiting
        to retry and those whose submit is still unanswered."""
        return max(0, self._out - self._retrying - self._sending)

    def _halve(self, delay: float) -> None:
        now = self._clock()
        if self._not_before <= now:
            # A new cooldown: one multiplicative decrease for the whole burst of 429s inside it.
            self._cooldowns += 1
            self._slots.total_tokens = max(1, int(self._slots.total_tokens * 0.5))
        self._not_before = max(self._not_before, now + delay)
        self._clean = 0

    def _apply(self) -> None:
        """Carry the learnt limit over to the slots."""
        limit = max(1, math.floor(self._state.limit))
        if limit != self._applied:
            self._slots.total_tokens = self._applied = limit
            if self._retrying:
                self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class _Sending:
    __slots__ = ("_limiter", "_probe")

    def __init__(self, limiter: JobLimiter) -> None:
        self._limiter = limiter
        #: Whether this send is the probe after a shared pause (only on a per-send instance).
        self._probe = False

    def __enter__(self) -> None:
        limiter = self._limiter
        limiter._sending += 1
        if limiter._state.probe and self is not limiter._sending_scope:
            self._probe = limiter._sent()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        limiter = self._limiter
        limiter._sending -= 1
        if limiter._state.probe:
            limiter._answered(exc, probe=self._probe)


class _Slot:
    __slots__ = ("_borrower", "_limiter")

    def __init__(self, limiter: JobLimiter, borrower: object) -> None:
        self._limiter = limiter
        self._borrower = borrower

    async def __aenter__(self) -> None:
        await self._limiter.acquire(self._borrower)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._limiter.release(self._borrower)


async def _acquire(slots: anyio.CapacityLimiter, borrower: object) -> None:
    """A free slot is taken at once; only a job that must wait goes through anyio's checkpoints.

    `acquire_on_behalf_of` yields to the loop twice even when a slot is free; on a fan-out of short
    jobs that was a measurable share of each job's CPU. The job's own request is the checkpoint.
    """
    try:
        slots.acquire_on_behalf_of_nowait(borrower)
    except anyio.WouldBlock:
        await slots.acquire_on_behalf_of(borrower)
