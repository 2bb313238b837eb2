"""Client floor: a job's send log — when it was first sent, the task id it got, and its deadline.

Both are noted synchronously, with no checkpoint between the event and the note, so whoever gives up
on a job (a cancelled `run_many`) can say which tasks the provider may hold. The job's deadline
(`PollPolicy.deadline`) counts from its first send; `bounded()` turns it into a cancel scope for the
waits that have no timer of their own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from types import TracebackType

import anyio

from ._exceptions import WaitTimeoutError

__all__ = ["SendRecord", "WithinDeadline"]

#: The least overall timeout a request is given (aiohttp reads 0 as "none").
_LEAST_TIMEOUT = 0.001
#: How soon after a job's first send its requests still get the whole deadline as their timeout.
_FRESH = 0.001


class SendRecord:
    """When a job was first sent, and the task id the provider gave it; where its deadline counts from.

    Both are noted synchronously, with no checkpoint between the event and the note: `sent_at` just
    before the first request goes out, `task_id` the moment it is decoded. So a caller that cancels
    the job at any point knows whether the provider may hold a task for it, and which.
    """

    __slots__ = (
        "_clock",
        "_scopes",
        "deadline",
        "deadline_at",
        "on_task_id",
        "orphan_sent_at",
        "sent_at",
        "sent_clock",
        "task_id",
    )

    def __init__(self, deadline: float | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        #: The engine's clock: the deadline is read from it (cancel scopes convert it to the loop's time).
        self._clock = clock
        #: Seconds from the first send that waiting for the job may take (`PollPolicy.deadline`).
        self.deadline = deadline
        #: Unix time of the first send (for `Client.find_task(job, since=...)`).
        self.sent_at: float | None = None
        #: The clock's reading at the first send.
        self.sent_clock: float | None = None
        #: When (by the clock) waiting gives up; None before the first send or with no deadline.
        #: Set once at the first send, not a property: a stream checks it for every update it hands out.
        self.deadline_at: float | None = None
        #: The provider's id for the job, once known.
        self.task_id: str | None = None
        #: Unix time of an earlier send that may have made a task of its own before the job was sent
        #: again (only under `on_ambiguous_submit="resubmit"`): that task is not the job's.
        self.orphan_sent_at: float | None = None
        #: Called once, with the task id, the moment it is known.
        self.on_task_id: Callable[[str], None] | None = None
        # The `bounded()` scopes open now, to be given the deadline at the first send. A tuple, not a
        # list per job: most jobs never open one (their requests carry the deadline themselves).
        self._scopes: tuple[anyio.CancelScope, ...] = ()

    def time_left(self) -> float | None:
        """Seconds to the deadline (at least a sliver: aiohttp reads 0 as "no limit"), for a request's
        own overall timeout; None with no deadline or before the first send.

        Within `_FRESH` of the first send it is the whole deadline (so at most that much late): the
        usual first request then gets the same fixed timeout as every other job's, built once
        (`Transport.client_timeout`), rather than one of its own.
        """
        deadline, deadline_at = self.deadline, self.deadline_at
        if deadline is None or deadline_at is None:
            return None
        left = deadline_at - self._clock()
        if left > deadline - _FRESH:
            return deadline
        return max(left, _LEAST_TIMEOUT)

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        deadline_at = self.deadline_at
        return deadline_at is not None and self._clock() >= deadline_at

    def mark_sent(self) -> None:
        """The first request is about to go out (later sends change nothing)."""
        if self.sent_clock is not None:
            return
        self.sent_at = time.time()
        self.sent_clock = sent_clock = self._clock()
        if self.deadline is not None:
            self.deadline_at = deadline_at = sent_clock + self.deadline
            for scope in self._scopes:
                scope.deadline = self._loop_time(deadline_at)

    def accept(self, task_id: str) -> None:
        """The provider's id for the job is known."""
        if task_id == self.task_id:
            return
        first = self.task_id is None
        self.task_id = task_id
        if first and self.on_task_id is not None:
            self.on_task_id(task_id)

    def _loop_time(self, at: float) -> float:
        """`at` (by the clock) as the event loop's time, which cancel scopes read."""
        if self._clock is time.monotonic:
            return at  # asyncio's loop reads time.monotonic() too: no conversion on the usual path
        return anyio.current_time() + (at - self._clock())

    def bounded(self) -> WithinDeadline:
        """`with record.bounded():` cancels the block at the deadline and raises `WaitTimeoutError`.

        The deadline is set the moment the job is first sent, inside the block or before it.
        """
        return WithinDeadline(self)

    def timed_out(self) -> WaitTimeoutError:
        """The error for a job whose deadline ran out."""
        return WaitTimeoutError(
            f"the job did not finish within {self.deadline} s of its first send (it may still finish)",
            task_id=self.task_id,
        )


class WithinDeadline:
    """A cancel scope that ends at a `SendRecord`'s deadline, turning that into `WaitTimeoutError`.

    A plain context manager (not a generator) so that its scope never spans a `yield`.
    """

    __slots__ = ("_record", "_scope")

    def __init__(self, record: SendRecord) -> None:
        self._record = record
        deadline_at = record.deadline_at
        self._scope = anyio.CancelScope(
            deadline=math.inf if deadline_at is None else record._loop_time(deadline_at)
        )

    def __enter__(self) -> None:
        self._record._scopes += (self._scope,)
        self._scope.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._record._scopes = tuple(scope for scope in self._record._scopes if scope is not self._scope)
        if self._scope.__exit__(exc_type, exc, tb) and self._scope.cancelled_caught:
            raise self._record.timed_out() from None
