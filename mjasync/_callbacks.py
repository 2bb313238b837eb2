"""Client floor: a job that hears from its provider by callback, with polling only as a fallback.

The job's `Subscription` (`_inbox`) collects its callbacks. If none comes for
`PollPolicy.callback_grace` seconds, the job polls once, then every `max_interval`, until a callback
or the result arrives: a lost callback costs a few lookups, never the job.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from ._engine import Engine
from ._inbox import Subscription
from ._models.results import Result
from ._poller import PollCursor

__all__ = ["CallbackFollower"]

#: A job's final result type, and the updates it reports on the way.
R = TypeVar("R", bound=Result)
U = TypeVar("U", bound=Result)


class CallbackFollower(Generic[R, U]):
    """Follows one task by its callbacks; polls through `cursor` only while they stay away.

    Same face as `PollCursor`: `next()` gives a newer update or the final result, `done` says it is over.
    """

    def __init__(self, engine: Engine, subscription: Subscription[U], cursor: PollCursor[R, U]) -> None:
        self._engine = engine
        self._subscription = subscription
        self._inbox = subscription.inbox
        self._cursor = cursor
        self._quiet = engine.poll.callback_grace
        #: Lookups made because callbacks were late.
        self.polls = 0

    @property
    def done(self) -> bool:
        """True once the final result has been returned."""
        return self._cursor.done

    @property
    def final(self) -> R | None:
        """The final result, once returned."""
        return self._cursor.final

    async def next(self) -> U | R:
        """The next update worth reporting; raises `JobFailedError` or `WaitTimeoutError` like `PollCursor`."""
        if self.done:
            raise RuntimeError("the task already finished")
        try:
            update = await self._next()
        except BaseException:
            self._subscription.close()
            raise
        if self._cursor.done:
            self._subscription.close()
        return update

    async def _next(self) -> U | R:
        deadline_at = self._cursor.deadline_at
        while True:
            wait = self._quiet
            if deadline_at is not None:
                wait = min(wait, deadline_at - self._engine.clock())
                if wait <= 0:
                    raise self._cursor.timed_out()
            update = await self._inbox.next(within=wait)
            if update is not None:
                offered = self._cursor.offer(update)
                if offered is not None:
                    self._quiet = self._engine.poll.callback_grace  # callbacks are flowing again
                    return offered
                continue
            if deadline_at is not None and self._engine.clock() >= deadline_at:
                raise self._cursor.timed_out()
            # Quiet for too long: the callback may be lost. Look once, and keep listening.
            self.polls += 1
            polled = await self._cursor.check()
            self._quiet = self._engine.poll.max_interval
            if polled is not None:
                return polled
