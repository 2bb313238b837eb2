"""Fan-out layer: many jobs at once, each outcome as it completes, memory bounded however many there are.

```python
async with mj.run_many(mj.imagine(p) for p in prompts) as outcomes:
    async for outcome in outcomes:
        if outcome.ok is True:  # narrows the outcome for pyright too, unlike a bare `if outcome.ok:`
            print(outcome.index, outcome.result.image_url)
        else:
            print(outcome.index, outcome.error)
```

The jobs are pulled from the iterable (sync or async) only as slots free up, so a generator of a
million prompts never sits in memory. One job's failure is its outcome and does not stop the others
(unless `fail_fast`). Leaving the block early cancels what is running: no task or connection stays
behind, and nothing paid is forgotten: `outcomes.unfinished` lists the task ids of the jobs whose
outcome you had not received, and `outcomes.unconfirmed` the jobs sent whose task id was not known yet.

The bookkeeping reads each job's own record (`Job.task_id`, `Job.sent_at`), which is written with no
checkpoint between the event and the note, and a job leaves it only once its outcome has been handed
to the consumer: whenever the run is cancelled, every job is either received, listed, or never sent.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Collection, Iterable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeAlias, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._exceptions import MJError
from ._job import Job, TaskHandle
from ._models.requests import JobRequest
from ._models.results import Result
from ._retry import made_no_task
from ._types import WaitVia

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport there
    from exceptiongroup import BaseExceptionGroup

__all__ = ["Failed", "Outcome", "Outcomes", "Succeeded", "UnconfirmedSubmit", "run_many"]

R = TypeVar("R", bound=Result)


@dataclass(frozen=True, slots=True)
class Succeeded(Generic[R]):
    """A job that finished with its result."""

    #: The job's position in the input.
    index: int
    #: The input item: a job, or the handle of a job submitted earlier.
    job: Job[R, Any] | TaskHandle[R, Any]
    result: R
    #: The provider's id for the job.
    task_id: str | None = None
    ok: Literal[True] = field(default=True, init=False)
    #: Always None: kept so that `outcome.error` reads on any outcome.
    error: None = field(default=None, init=False)

    @property
    def retries_taken(self) -> int:
        """Retries the job needed."""
        return self.result.retries_taken


@dataclass(frozen=True, slots=True)
class Failed(Generic[R]):
    """A job stopped by a typed error."""

    #: The job's position in the input.
    index: int
    #: The input item: a job, or the handle of a job submitted earlier.
    job: Job[R, Any] | TaskHandle[R, Any]
    error: MJError
    #: The provider's id for the job, when it got that far.
    task_id: str | None = None
    ok: Literal[False] = field(default=False, init=False)
    #: Always None: kept so that `outcome.result` reads on any outcome.
    result: None = field(default=None, init=False)

    @property
    def retries_taken(self) -> int:
        """Retries the job needed before it failed."""
        return int(getattr(self.error, "retries_taken", 0) or 0)


#: How one job ended: `Succeeded` with its result, or `Failed` with the typed error that stopped it.
#: `ok` tells them apart and narrows the type: mypy narrows on `if outcome.ok:`; pyright (by design)
#: only on a comparison, `if outcome.ok is True:`, or on `if outcome.error is None:` (both work in both).
Outcome: TypeAlias = Succeeded[R] | Failed[R]


@dataclass(frozen=True, slots=True)
class UnconfirmedSubmit:
    """A job of a stopped `run_many` that was sent, but whose task id was not known yet.

    The provider may or may not have made a task for it (and may bill it). Find it with
    `await client.find_task(job, since=sent_at)` (a job rebuilt with the same `request` will do).
    """

    #: The job's position in the input.
    index: int
    #: The job's request, as it was sent.
    request: JobRequest
    #: Unix time of the job's first send.
    sent_at: float


class Outcomes(Generic[R]):
    """The outcomes of a `run_many`, in completion order; iterate them inside its `async with`.

    After the run stopped early (left, cancelled, `fail_fast`), `unfinished` and `unconfirmed` say
    what the provider may still hold: every job that was sent is either an outcome you received or
    in one of the two lists.
    """

    def __init__(self, receive: MemoryObjectReceiveStream[Outcome[R]], tracker: _Tracker) -> None:
        self._receive = receive
        self._tracker = tracker

    def __aiter__(self) -> Outcomes[R]:
        return self

    async def __anext__(self) -> Outcome[R]:
        try:
            outcome = await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        # Only now is it the caller's: an outcome still buffered when the run stops is not.
        self._tracker.running.pop(outcome.index, None)
        return outcome

    @property
    def started(self) -> int:
        """How many jobs have been taken from the input so far."""
        return self._tracker.started

    @property
    def unfinished(self) -> list[str]:
        """Task ids of jobs whose outcome you have not received (those still running, when the run
        stopped): the provider accepted them, and they may still finish. Wait on them with
        `client.task(task_id)`."""
        return sorted(
            task_id for work in self._tracker.running.values() if (task_id := work.task_id) is not None
        )

    @property
    def unconfirmed(self) -> list[UnconfirmedSubmit]:
        """Jobs sent whose task id was never learned and that did not end with a result, by index:
        those still running when the run stopped, and those whose error leaves it open whether the
        provider made a task (`AmbiguousSubmitError`, an answer that could not be read, a deadline
        that ran out first). The provider may hold a task for each; `await client.find_task(job,
        since=entry.sent_at)` looks it up. Under `on_ambiguous_submit="resubmit"` a job sent again
        after an attempt of unknown fate is listed too, with that attempt's time (`Job.orphan_sent_at`),
        whatever its outcome: the attempt may have left a task of its own."""
        running = [
            UnconfirmedSubmit(index, work.request, sent_at)
            for index, work in self._tracker.running.items()
            if isinstance(work, Job)
            and (sent_at := work.sent_at if work.task_id is None else work.orphan_sent_at) is not None
        ]
        return sorted(running + self._tracker.unconfirmed, key=_by_index)


class _Tracker:
    def __init__(self) -> None:
        self.started = 0
        #: Jobs taken from the input whose outcome the consumer has not received, by index.
        self.running: dict[int, Work[Any]] = {}
        #: Jobs that ended with an error, sent but with no task id, that may have made a task.
        self.unconfirmed: list[UnconfirmedSubmit] = []
        self.first_error: MJError | None = None
        #: An exception raised by the caller's own iterable of jobs.
        self.input_error: Exception | None = None


Work = Job[R, Any] | TaskHandle[R, Any]
#: Called with (index, task_id) the moment the provider accepts a job (or a handle's wait starts).
OnAccepted = Callable[[int, str], None]


@asynccontextmanager
async def run_many(
    jobs: Iterable[Work[R]] | AsyncIterable[Work[R]],
    *,
    concurrency: int,
    via: WaitVia = "poll",
    fail_fast: bool = False,
    on_accepted: OnAccepted | None = None,
) -> AsyncIterator[Outcomes[R]]:
    """Run `jobs` with at most `concurrency` at once; yield their outcomes as they complete.

    An item may be a `TaskHandle` of a job submitted earlier (say, by a run that was killed): it is
    waited on, never submitted again.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
    if isinstance(jobs, Collection):
        for job in jobs:  # handed over, all of them: a run that ends early leaves them unsent, quietly
            if isinstance(job, Job):
                job._hand_over()
    # The buffer only smooths hand-over; a consumer that stops reading stops the workers, not memory.
    send, receive = anyio.create_memory_object_stream[Outcome[R]](max_buffer_size=concurrency)
    tracker = _Tracker()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_feed, jobs, send, tracker, concurrency, via, fail_fast, on_accepted, group)
            try:
                async with receive:
                    yield Outcomes(receive, tracker)
            finally:
                # Whether the consumer finished or left early, nothing may outlive the block.
                group.cancel_scope.cancel()
    except BaseExceptionGroup as group_error:
        # The task group wraps whatever the caller's block raised; hand it back as it was.
        if len(group_error.exceptions) == 1:
            raise group_error.exceptions[0] from None
        raise
    if tracker.input_error is not None:
        raise tracker.input_error
    if fail_fast and tracker.first_error is not None:
        raise tracker.first_error


async def _feed(
    jobs: Iterable[Work[R]] | AsyncIterable[Work[R]],
    send: MemoryObjectSendStream[Outcome[R]],
    tracker: _Tracker,
    concurrency: int,
    via: WaitVia,
    fail_fast: bool,
    on_accepted: OnAccepted | None,
    outer: TaskGroup,
) -> None:
    slots = anyio.Semaphore(concurrency)
    async with send, anyio.create_task_group() as workers, aclosing(_aiter(jobs)) as pending:
        index = 0
        while True:
            # Taking the next job only once a slot is free is what keeps memory flat.
            await slots.acquire()
            try:
                job = await pending.__anext__()
            except StopAsyncIteration:
                slots.release()
                break
            except Exception as exc:  # the caller's iterable failed: stop taking jobs, say so after
                slots.release()
                tracker.input_error = exc
                break
            if isinstance(job, Job):
                job._hand_over()  # its fate is reported here now, sent or not
            tracker.running[index] = job
            workers.start_soon(
                _run_one, index, job, send.clone(), slots, tracker, via, fail_fast, on_accepted, outer
            )
            tracker.started += 1
            index += 1


async def _run_one(
    index: int,
    job: Work[R],
    send: MemoryObjectSendStream[Outcome[R]],
    slots: anyio.Semaphore,
    tracker: _Tracker,
    via: WaitVia,
    fail_fast: bool,
    on_accepted: OnAccepted | None,
    outer: TaskGroup,
) -> None:
    def accepted(task_id: str) -> None:
        if on_accepted is not None:
            on_accepted(index, task_id)

    try:
        async with send:
            try:
                result = await _complete(job, via, accepted)
            except MJError as error:
                task_id = job.task_id or getattr(error, "task_id", None)
                outcome: Outcome[R] = Failed(index, job, error, task_id)
                if (
                    isinstance(job, Job)
                    and task_id is None
                    and job.sent_at is not None
                    and not made_no_task(error)
                ):
                    tracker.unconfirmed.append(UnconfirmedSubmit(index, job.request, job.sent_at))
                elif isinstance(job, Job) and job.orphan_sent_at is not None:
                    tracker.unconfirmed.append(UnconfirmedSubmit(index, job.request, job.orphan_sent_at))
                if fail_fast and tracker.first_error is None:
                    tracker.first_error = error
                    outer.cancel_scope.cancel()
            else:
                outcome = Succeeded(index, job, result, result.task_id or job.task_id)
                if isinstance(job, Job) and job.orphan_sent_at is not None:
                    tracker.unconfirmed.append(UnconfirmedSubmit(index, job.request, job.orphan_sent_at))
            try:
                await send.send(outcome)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the consumer has left the block; everything is being cancelled
    finally:
        slots.release()


async def _complete(job: Work[R], via: WaitVia, accepted: Callable[[str], None]) -> R:
    """Run one job to its result, reporting its task id as soon as the provider accepts it."""
    if isinstance(job, TaskHandle):
        accepted(job.task_id)
        return await job.wait()
    return await job.result(via=via, on_task_id=accepted)


def _by_index(entry: UnconfirmedSubmit) -> int:
    return entry.index


async def _aiter(jobs: Iterable[Work[R]] | AsyncIterable[Work[R]]) -> AsyncGenerator[Work[R], None]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job
