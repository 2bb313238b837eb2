"""Client floor, below the engine: many waiting jobs share one task lookup per round, not one each.

There is no background task: the first waiter of a round leads it. It lingers for a short window so
that others can join, then fetches every id gathered and hands each waiter its record. A waiter that
arrives while a fetch is in flight starts (or joins) the next round.

Jobs rarely fall due at the same moment (they were submitted at different times, their intervals
carry jitter, progress shortens them), so a window alone gathers a few ids per lookup. A round with
room left therefore also takes the waiters that are still sleeping but within their `early` allowance
of due, soonest due first, up to `max_batch`: their lookup comes a little early, riding in a request
that goes out anyway, and no lookup ever comes later than it would have. When each job looks is
`_poller`'s say.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["FetchRecords", "TaskPoller"]

#: Fetches the records of some task ids: undecoded bodies by task id (missing ids are left out).
FetchRecords = Callable[[list[str]], Awaitable[dict[str, bytes]]]


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
