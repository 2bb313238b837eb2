"""Client layer: many waiting jobs share one task lookup per round (`retrieve_batch`), not one each.

There is no background task: the first waiter of a round leads it. It lingers for a short window so
that others can join, then fetches every id gathered and hands each waiter its record. A waiter that
arrives while a fetch is in flight starts (or joins) the next round.

Jobs rarely fall due at the same moment (they were submitted at different times, their intervals
carry jitter, progress shortens them), so a window alone gathers a few ids per lookup. A round with
room left therefore also takes the waiters that are still sleeping but within `EARLY_SHARE` of their
interval from due, soonest due first, up to `max_batch`: their lookup comes a little early, riding in
a request that goes out anyway, and no lookup ever comes later than it would have. A job's first
lookup never rides early: it comes the documented `initial_interval` after the submit, so a job done
by then is found by it (early, it would find the job running, and the next would come a wait later).

When each job's lookups come is its `PollSchedule`'s say, a pure function of what its lookups have
shown and the time (`observe`, `next_delay`): the progress and its pace. Until a job has moved twice
there is no pace to go by, and the wait grows from `PollPolicy.initial_interval` by `factor` up to
`max_interval` (back to `initial_interval` at any new progress). Then the job's end is estimated by
carrying its pace on to progress 100 (`finish_estimate`), and lookups close in on it: each comes a third
of the time left to the estimate (`PROBE_SHARE`; this also re-measures the pace as progress moves),
the last one just after it (`FINISH_MARGIN`). A job still running past its estimate is looked up again
after a third of the time it has overrun (so the delay in noticing its end stays a share of the
error). No wait is shorter than `initial_interval` or longer than `max_interval`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from ._config import PollPolicy
from ._exceptions import (
    BadRequestError,
    JobFailedError,
    MJError,
    NotFoundError,
    ResponseDecodeError,
    TaskNotFoundError,
    WaitTimeoutError,
)
from ._models.results import Result
from ._models.task import TaskRecord
from ._retry import phase_of

if TYPE_CHECKING:
    from ._job import Core

__all__ = [
    "EARLY_SHARE",
    "FINISH_MARGIN",
    "PROBE_SHARE",
    "PollCursor",
    "PollSchedule",
    "TaskPoller",
    "finish_estimate",
    "next_delay",
    "observe",
    "unanswered",
]

R = TypeVar("R", bound=Result)

#: Fetches the records of some task ids: undecoded bodies by task id (missing ids are left out).
FetchRecords = Callable[[list[str]], Awaitable[dict[str, bytes]]]

#: A waiting job's lookup may come this share of its interval early, in a round that has room.
EARLY_SHARE = 0.5
#: Lookups approaching a job's estimated end come this share of the time left to it; one overrunning
#: the estimate, this share of the time overrun.
PROBE_SHARE = 1 / 3
#: The lookup meant to find a job done comes this long (seconds) after its estimated end.
FINISH_MARGIN = 0.1


# --- when to look next: pure functions of what lookups have shown and the time -----------------------


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """What one task's lookups have shown of its pace: all `next_delay` needs. Times are `now`s given
    to `observe` (the cursor's are its client's clock, `time.monotonic()` unless one is injected)."""

    #: The wait while there is no estimate of the end: grows with each lookup without new progress.
    interval: float
    #: When the latest answered lookup was made (None before the first).
    looked_at: float | None = None
    #: The highest progress seen (-1 for none).
    progress: float = -1.0
    #: `(when, progress)` of the first, the one before the latest and the latest rise of progress
    #: above 0 seen (fewer before there were three). A rise happened between two answered lookups;
    #: it is dated half-way between them.
    rises: tuple[tuple[float, float], ...] = ()

    @classmethod
    def start(cls, poll: PollPolicy) -> PollSchedule:
        """A task not looked up yet."""
        return cls(interval=poll.initial_interval)


def observe(schedule: PollSchedule, progress: float | None, now: float, poll: PollPolicy) -> PollSchedule:
    """The schedule after a lookup answered at `now` showed `progress` (None: none yet, e.g. queued).

    A rise of progress is news: the wait without an estimate starts again from `initial_interval`.
    Progress 0 is no rise: a job can sit at 0 in a queue.
    """
    if progress is None or progress <= max(schedule.progress, 0.0):
        return replace(unanswered(schedule, poll), looked_at=now)
    rose_at = now if schedule.looked_at is None else (schedule.looked_at + now) / 2
    return PollSchedule(
        interval=poll.initial_interval,
        looked_at=now,
        progress=progress,
        # The first rise, the latest one before this, and this.
        rises=(*schedule.rises[:1], *schedule.rises[1:][-1:], (rose_at, progress)),
    )


def unanswered(schedule: PollSchedule, poll: PollPolicy) -> PollSchedule:
    """The schedule after a lookup that told nothing (it failed): the wait without an estimate grows."""
    return replace(schedule, interval=min(schedule.interval * poll.factor, poll.max_interval))


def finish_estimate(schedule: PollSchedule) -> float | None:
    """When the task should end: its pace carried on from its latest rise to progress 100. None until
    progress has risen twice.

    Two paces, and the sooner end of the two: the whole span's (from the first rise), where the
    dating of each rise (only to within the lookups around it) weighs least, and the latest step's,
    which follows a job that speeds up. A lookup that comes too soon costs one lookup and refines
    the estimate; one that comes too late is the delay this schedule exists to cut.
    """
    if len(schedule.rises) < 2:
        return None
    *earlier, latest = schedule.rises
    ends = [_carried_on(rise, latest) for rise in earlier]
    return min((end for end in ends if end is not None), default=None)


def _carried_on(earlier: tuple[float, float], latest: tuple[float, float]) -> float | None:
    """When progress reaches 100 at the pace from the `earlier` rise to the `latest` (None: no pace)."""
    (then, low), (when, high) = earlier, latest
    if when <= then:
        return None
    return when + max(100.0 - high, 0.0) * (when - then) / (high - low)


def next_delay(schedule: PollSchedule, now: float, poll: PollPolicy) -> float:
    """How long after `now` to look the task up next (see the module docstring)."""
    end = finish_estimate(schedule)
    if end is None:
        return schedule.interval
    ahead, shortest = end - now, poll.initial_interval
    if ahead <= 0:
        delay = -ahead * PROBE_SHARE
    elif ahead * PROBE_SHARE >= shortest:
        delay = ahead * PROBE_SHARE
    else:
        # Close: equal steps, none shorter than allowed, the last one landing just after the end.
        to_land = ahead + FINISH_MARGIN
        delay = to_land / max(math.floor(to_land / shortest), 1)
    return min(max(delay, shortest), poll.max_interval)


# --- the shared poller ---------------------------------------------------------------------------------


class _Round:
    __slots__ = ("done", "error", "fetched", "ids", "records")

    def __init__(self) -> None:
        self.ids: dict[str, None] = {}
        self.done = anyio.Event()
        self.records: dict[str, bytes] = {}
        self.fetched = False
        self.error: Exception | None = None


class _Sleeper:
    """A waiter whose lookup is not due yet; a round with room may take it early (then `joined` is set,
    and its sleep is cut short by cancelling `woken`)."""

    __slots__ = ("due", "earliest", "joined", "task_id", "woken")

    def __init__(self, task_id: str, earliest: float, due: float, woken: anyio.CancelScope) -> None:
        self.task_id = task_id
        self.earliest = earliest
        self.due = due
        self.joined: _Round | None = None
        self.woken = woken


def _due(sleeper: _Sleeper) -> float:
    return sleeper.due


class TaskPoller:
    """Coalesces concurrent task lookups into batched fetches.

    Every wait reads `clock` and sleeps with `sleep` (the client's; tests inject time they move).
    """

    def __init__(
        self,
        fetch: FetchRecords,
        *,
        window: float,
        max_batch: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._fetch = fetch
        self._window = window
        self._max_batch = max_batch
        self._clock = clock
        self._sleep_for = sleep
        self._gathering: _Round | None = None
        #: Waiters not due yet, which a round with room may take early.
        self._sleeping: dict[_Sleeper, None] = {}
        #: How many fetches have been made, and for how many ids in all (for tests and benchmarks).
        self.fetches = 0
        self.ids_fetched = 0

    async def poll(self, task_id: str, *, delay: float = 0.0, early: float = 0.0) -> bytes | None:
        """The undecoded record of `task_id`, fetched `delay` seconds from now; None if the provider has none.

        A round that goes out with room to spare may take it up to `early` seconds sooner (never
        before this call began); it is never fetched later than `delay` plus the batch window.
        """
        if delay > 0:
            joined = await self._sleep(task_id, delay, min(max(early, 0.0), delay))
            if joined is not None:
                await joined.done.wait()
                if joined.fetched:
                    return joined.records.get(task_id)
                if joined.error is not None:
                    raise joined.error
                # The round's leader was cancelled before it fetched: take part in a new round.
        while True:
            current = self._gathering
            leading = current is None or len(current.ids) >= self._max_batch
            if leading:
                current = self._gathering = _Round()
            assert current is not None
            current.ids[task_id] = None
            if leading:
                return await self._lead(current, task_id)
            await current.done.wait()
            if current.fetched:
                return current.records.get(task_id)
            if current.error is not None:
                raise current.error
            # The leader was cancelled before it fetched: take part in a new round.

    async def _sleep(self, task_id: str, delay: float, early: float) -> _Round | None:
        """Sleep until due, unless a round takes this lookup early: then that round."""
        now = self._clock()
        with anyio.CancelScope() as woken:
            sleeper = _Sleeper(task_id, now + delay - early, now + delay, woken)
            self._sleeping[sleeper] = None
            try:
                await self._sleep_for(delay)
            finally:
                self._sleeping.pop(sleeper, None)
        return sleeper.joined

    def _take_early(self, current: _Round) -> None:
        """Fill `current` with the sleepers within reach of due, soonest due first, up to `max_batch`."""
        if not self._sleeping:
            return
        room = self._max_batch - len(current.ids)
        now = self._clock()
        ready = sorted((sleeper for sleeper in self._sleeping if sleeper.earliest <= now), key=_due)
        # Sleepers whose task is in the round already ride free; the rest need room.
        for sleeper in ready:
            if sleeper.task_id not in current.ids:
                if room <= 0:
                    continue
                room -= 1
                current.ids[sleeper.task_id] = None
            del self._sleeping[sleeper]
            sleeper.joined = current
            sleeper.woken.cancel()

    async def _lead(self, current: _Round, task_id: str) -> bytes | None:
        try:
            try:
                if self._window > 0:
                    await self._sleep_for(self._window)
            finally:
                if self._gathering is current:
                    self._gathering = None
            self._take_early(current)
            ids = list(current.ids)
            self.fetches += 1
            self.ids_fetched += len(ids)
            try:
                current.records = await self._fetch(ids)
            except Exception as exc:
                current.error = exc
                raise
            current.fetched = True
            return current.records.get(task_id)
        finally:
            current.done.set()


class PollCursor(Generic[R]):
    """Follows one task by polling: each `next()` gives a newer progress update, or the final result.

    Lookups go through the client's shared poller (one `retrieve_batch` serves every waiting task),
    when its `PollSchedule` says (by the progress seen and its pace; see the module docstring). Updates
    that repeat what was already seen are skipped.

    The wait ends at `deadline` seconds from `started_at` (a reading of the client's clock; default:
    now), and
    after `PollPolicy.max_missing_lookups` lookups in a row that find no record of the task.
    """

    def __init__(
        self,
        core: Core,
        kind: type[R],
        task_id: str,
        *,
        first_poll_delay: float = 0.0,
        seen_progress: float = -1.0,
        deadline: float | None = None,
        started_at: float | None = None,
    ) -> None:
        self._core = core
        self._deadline = deadline
        start = core.clock() if started_at is None else started_at
        self._deadline_at = None if deadline is None else start + deadline
        #: Lookups in a row that found no record of the task.
        self._misses = 0
        self._kind = kind
        self._task_id = task_id
        self._delay = first_poll_delay
        #: How much sooner a round may take the next lookup: never the first (the documented
        #: `initial_interval` after the submit, which a job done by then is found at).
        self._early = 0.0
        self._seen_progress = seen_progress
        self._schedule = PollSchedule.start(core.poll)
        #: True once the final result has been returned.
        self.done = False

    async def next(self) -> R:
        """The task's next state worth reporting.

        Raises `JobFailedError` if the provider failed the job, `TaskNotFoundError` once
        `max_missing_lookups` lookups in a row found no record of it, and `WaitTimeoutError` once the
        deadline has passed (the job may still finish then).
        """
        if self.done:
            raise RuntimeError("the task already finished")
        remaining = None if self._deadline_at is None else self._deadline_at - self._core.clock()
        # The scope covers one step, inside this call: nothing here spans a `yield`.
        with anyio.move_on_after(remaining):
            return await self._next_state()
        raise self.timed_out()

    async def _next_state(self) -> R:
        while True:
            update = await self._look(self._delay)
            if update is not None:
                return update

    async def check(self) -> R | None:
        """Look the task up once (no wait first): its final result, a newer update, or None for no news.

        Raises `JobFailedError` if the provider failed the job, `TaskNotFoundError` like `next()`.
        """
        return await self._look(0.0)

    async def _look(self, delay: float) -> R | None:
        """Look the task up `delay` seconds from now (or a little sooner, in a round with room)."""
        try:
            body = await self._core.poller.poll(self._task_id, delay=delay, early=self._early)
        except (BadRequestError, NotFoundError, ResponseDecodeError) as error:
            # 400/404: how a provider answers a lookup of one id it does not know (AceData: 400 "not
            # found"). An answer that cannot be read tells no more about the task than a missing one.
            self._missed(error)
            return None
        except MJError as error:
            # A lookup that failed even after its retries is no news about the job; only a
            # refusal (401, 403, ...) ends the wait. The deadline bounds the rest.
            if phase_of(error) == "fatal":
                raise
            self._told_nothing()
            return None
        if body is None:
            self._missed(None)
            return None
        try:
            record: TaskRecord[R] = self._core.provider.decode_task(body, self._kind)
        except ResponseDecodeError as error:
            self._missed(error)
            return None
        self._misses = 0
        state = self._core.provider.task_state(record)
        response = record.response
        self._saw(getattr(response, "progress", None) if state == "running" else None)
        if state == "succeeded" and response is not None:
            self.done = True
            return response
        if state == "failed":
            raise _failure(self._core, record, self._task_id)
        if state == "running" and response is not None:
            return self._newer(response)
        return None

    def _saw(self, progress: float | None) -> None:
        """Plan the next lookup after one (or a callback) that showed `progress` just now."""
        now = self._core.clock()
        self._plan(observe(self._schedule, progress, now, self._core.poll), now)

    def _told_nothing(self) -> None:
        """Plan the next lookup after one that failed or found no readable record."""
        self._plan(unanswered(self._schedule, self._core.poll), self._core.clock())

    def _plan(self, schedule: PollSchedule, now: float) -> None:
        self._schedule = schedule
        # A little jitter (never later) keeps jobs from all falling due at one instant; rounds with
        # room regroup them (a lookup may ride `EARLY_SHARE` of its wait early), so batches stay full.
        self._delay = next_delay(schedule, now, self._core.poll) * (1.0 - 0.1 * random.random())
        self._early = EARLY_SHARE * self._delay

    def _missed(self, error: MJError | None) -> None:
        """A lookup found no readable record of the task: past `max_missing_lookups` in a row, the wait ends.

        One miss is not enough: a task the provider just accepted may not be indexed yet, and one
        garbled answer may be a proxy's hiccup. Unreadable answers end it with their own error.
        """
        self._told_nothing()
        self._misses += 1
        limit = self._core.poll.max_missing_lookups
        if self._misses >= limit and isinstance(error, ResponseDecodeError):
            error.task_id = error.task_id or self._task_id
            raise error
        if self._misses >= limit:
            raise TaskNotFoundError(
                f"the provider has no record of task {self._task_id} ({limit} lookups in a row)"
                + (f": {error}" if error is not None else ""),
                task_id=self._task_id,
                status=getattr(error, "status", None),
                code=getattr(error, "code", None),
                request=getattr(error, "request", None),
            ) from error

    def offer(self, update: R) -> R | None:
        """Judge an update that came another way (a callback): final, newer, or None when stale.

        Raises `JobFailedError` if it reports the job failed.
        """
        if self.done:
            return None
        if update.failed:
            error = self._core.provider.job_failed(update)
            error.task_id = error.task_id or self._task_id
            raise error
        if update.is_final:
            self.done = True
            return update
        newer = self._newer(update)
        if newer is not None:
            self._saw(self._seen_progress)
        return newer

    def _newer(self, update: R) -> R | None:
        progress = getattr(update, "progress", None)
        if progress is None or progress <= self._seen_progress:
            return None
        self._seen_progress = progress
        return update

    @property
    def deadline_at(self) -> float | None:
        """When (by the client's clock) waiting gives up; None for never."""
        return self._deadline_at

    @property
    def next_delay(self) -> float:
        """The wait before the next poll, as the schedule has it now."""
        return self._delay

    @property
    def schedule(self) -> PollSchedule:
        """What the lookups have shown so far of the task's pace."""
        return self._schedule

    def timed_out(self) -> WaitTimeoutError:
        """The error for a wait that ran past the deadline."""
        return WaitTimeoutError(
            f"task {self._task_id} did not finish within {self._deadline} s (it may still finish)",
            task_id=self._task_id,
        )


def _failure(core: Core, record: TaskRecord[Any], task_id: str) -> JobFailedError:
    response = record.response
    if isinstance(response, Result):
        error = core.provider.job_failed(response)
    else:
        error = JobFailedError(f"task {task_id} failed (state {record.state!r})")
    error.task_id = error.task_id or task_id
    return error
