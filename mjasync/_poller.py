"""Client layer: many waiting jobs share one task lookup per round (`retrieve_batch`), not one each.

There is no background task: the first waiter of a round leads it. It lingers for a short window so
that others can join, then fetches every id gathered and hands each waiter its record. A waiter that
arrives while a fetch is in flight starts (or joins) the next round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

__all__ = ["TaskPoller"]

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


class TaskPoller:
    """Coalesces concurrent task lookups into batched fetches."""

    def __init__(self, fetch: FetchRecords, *, window: float, max_batch: int) -> None:
        self._fetch = fetch
        self._window = window
        self._max_batch = max_batch
        self._gathering: _Round | None = None
        #: How many fetches have been made, and for how many ids in all (for tests and benchmarks).
        self.fetches = 0
        self.ids_fetched = 0

    async def poll(self, task_id: str) -> bytes | None:
        """The undecoded record of `task_id`, fetched after this call began; None if the provider has none."""
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

    async def _lead(self, current: _Round, task_id: str) -> bytes | None:
        try:
            try:
                if self._window > 0:
                    await anyio.sleep(self._window)
            finally:
                if self._gathering is current:
                    self._gathering = None
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
