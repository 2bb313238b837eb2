"""Client floor: following one task by polling — when to look next, and what a lookup shows.

Each lookup goes through the engine (`Engine.look_up`), which shares one batched request per round
among every job waiting (`_lookups`). A round with room also takes waiters within `EARLY_SHARE` of
their interval from due. A job's first lookup never rides early: it comes the documented
`initial_interval` after the submit, so a job done by then is found by it (early, it would find the
job running, and the next would come a wait later).

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
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import anyio

from ._config import PollPolicy
from ._engine import Engine
from ._exceptions import (
    BadRequestError,
    JobFailedError,
    MJError,
    NotFoundError,
    ResponseDecodeError,
    TaskNotFoundError,
    WaitTimeoutError,
)
from ._models.results import Result, finalize
from ._models.task import TaskRecord
from ._retry import phase_of

__all__ = [
    "EARLY_SHARE",
    "FINISH_MARGIN",
    "PROBE_SHARE",
    "PollCursor",
    "PollSchedule",
    "finish_estimate",
    "next_delay",
    "observe",
    "unanswered",
]

#: A job's final result type, and the updates it reports on the way (`ImagineResult`, `ImagineUpdate`).
R = TypeVar("R", bound=Result)
U = TypeVar("U", bound=Result)


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


class PollCursor(Generic[R, U]):
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
        engine: Engine,
        kind: type[R],
        update_type: type[U],
        task_id: str,
        *,
        first_poll_delay: float = 0.0,
        seen_progress: float = -1.0,
        deadline: float | None = None,
        started_at: float | None = None,
    ) -> None:
        self._engine = engine
        self._deadline = deadline
        start = engine.clock() if started_at is None else started_at
        self._deadline_at = None if deadline is None else start + deadline
        #: Lookups in a row that found no record of the task.
        self._misses = 0
        self._kind = kind
        self._update_type = update_type
        self._task_id = task_id
        self._delay = first_poll_delay
        #: How much sooner a round may take the next lookup: never the first (the documented
        #: `initial_interval` after the submit, which a job done by then is found at).
        self._early = 0.0
        self._seen_progress = seen_progress
        self._schedule = PollSchedule.start(engine.poll)
        #: True once the final result has been returned.
        self.done = False
        #: The final result, once returned.
        self.final: R | None = None

    async def next(self) -> U | R:
        """The task's next state worth reporting.

        Raises `JobFailedError` if the provider failed the job, `TaskNotFoundError` once
        `max_missing_lookups` lookups in a row found no record of it, and `WaitTimeoutError` once the
        deadline has passed (the job may still finish then).
        """
        if self.done:
            raise RuntimeError("the task already finished")
        remaining = None if self._deadline_at is None else self._deadline_at - self._engine.clock()
        # The scope covers one step, inside this call: nothing here spans a `yield`.
        with anyio.move_on_after(remaining):
            return await self._next_state()
        raise self.timed_out()

    async def _next_state(self) -> U | R:
        while True:
            update = await self._look(self._delay)
            if update is not None:
                return update

    async def check(self) -> U | R | None:
        """Look the task up once (no wait first): its final result, a newer update, or None for no news.

        Raises `JobFailedError` if the provider failed the job, `TaskNotFoundError` like `next()`.
        """
        return await self._look(0.0)

    async def _look(self, delay: float) -> U | R | None:
        """Look the task up `delay` seconds from now (or a little sooner, in a round with room)."""
        try:
            body = await self._engine.look_up(self._task_id, delay=delay, early=self._early)
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
            record: TaskRecord[U] = self._engine.provider.decode_task(body, self._update_type)
        except ResponseDecodeError as error:
            self._missed(error)
            return None
        self._misses = 0
        state = self._engine.provider.task_state(record)
        response = record.response
        self._saw(getattr(response, "progress", None) if state == "running" else None)
        if state == "succeeded" and response is not None:
            return self._finish(response)
        if state == "failed":
            raise _failure(self._engine, record, self._task_id)
        if state == "running" and response is not None:
            return self._newer(response)
        return None

    def _saw(self, progress: float | None) -> None:
        """Plan the next lookup after one (or a callback) that showed `progress` just now."""
        now = self._engine.clock()
        self._plan(observe(self._schedule, progress, now, self._engine.poll), now)

    def _told_nothing(self) -> None:
        """Plan the next lookup after one that failed or found no readable record."""
        self._plan(unanswered(self._schedule, self._engine.poll), self._engine.clock())

    def _plan(self, schedule: PollSchedule, now: float) -> None:
        self._schedule = schedule
        # A little jitter (never later) keeps jobs from all falling due at one instant; rounds with
        # room regroup them (a lookup may ride `EARLY_SHARE` of its wait early), so batches stay full.
        self._delay = next_delay(schedule, now, self._engine.poll) * (1.0 - 0.1 * random.random())
        self._early = EARLY_SHARE * self._delay

    def _missed(self, error: MJError | None) -> None:
        """A lookup found no readable record of the task: past `max_missing_lookups` in a row, the wait ends.

        One miss is not enough: a task the provider just accepted may not be indexed yet, and one
        garbled answer may be a proxy's hiccup. Unreadable answers end it with their own error.
        """
        self._told_nothing()
        self._misses += 1
        limit = self._engine.poll.max_missing_lookups
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

    def offer(self, update: U) -> U | R | None:
        """Judge an update that came another way (a callback): final, newer, or None when stale.

        Raises `JobFailedError` if it reports the job failed.
        """
        if self.done:
            return None
        if update.failed:
            error = self._engine.provider.job_failed(update)
            error.task_id = error.task_id or self._task_id
            raise error
        if update.is_final:
            return self._finish(update)
        newer = self._newer(update)
        if newer is not None:
            self._saw(self._seen_progress)
        return newer

    def _finish(self, update: U) -> R:
        """The final update as the final type (checked for what it guarantees); the cursor is done."""
        final = finalize(self._kind, update)
        self.done = True
        self.final = final
        return final

    def _newer(self, update: U) -> U | None:
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


def _failure(engine: Engine, record: TaskRecord[Any], task_id: str) -> JobFailedError:
    response = record.response
    if isinstance(response, Result):
        error = engine.provider.job_failed(response)
    else:
        error = JobFailedError(f"task {task_id} failed (state {record.state!r})")
    error.task_id = error.task_id or task_id
    return error
