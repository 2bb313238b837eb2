"""Time that tests move: a clock and a sleep to inject wherever the client takes `clock=`/`sleep=`.

While `run()` drives it (a task in the test's task group), the clock jumps, whenever every task is
blocked, to the earliest sleeper's wake-up: waits of seconds take no real time, and what a test
reads off the clock is exactly when things happened, with no slack for a loaded machine.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.lowlevel

T = TypeVar("T")


async def _all_blocked() -> None:
    """Return once every other task waits on something.

    `anyio.wait_all_tasks_blocked()` sleeps 0.1 s each time it finds a task ready to run; next to
    sockets (an emulator, a client) that is most times, and the tenths add up to seconds.
    """
    this = asyncio.current_task()
    while True:
        await anyio.lowlevel.checkpoint()
        if all(task is this or _waiting(task) for task in asyncio.all_tasks()):
            return


def _waiting(task: asyncio.Task[object]) -> bool:
    waiter = task._fut_waiter  # type: ignore[attr-defined]
    return waiter is not None and not waiter.done()


class VirtualTime:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        #: (wake-up time, order of arrival, the sleeper's event); a cancelled sleeper's event is set.
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        woken = anyio.Event()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), woken))
        try:
            await woken.wait()
        finally:
            woken.set()  # cancelled: the clock need not stop at its wake-up

    def advance(self, seconds: float) -> None:
        """Move the clock on by `seconds`, waking every sleeper due by then."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            heapq.heappop(self._sleepers)[2].set()

    async def run(self) -> None:
        """Jump to each next wake-up once every other task is blocked (cancel it to stop)."""
        while True:
            await _all_blocked()
            while self._sleepers and self._sleepers[0][2].is_set():
                heapq.heappop(self._sleepers)
            if self._sleepers:
                self.advance(self._sleepers[0][0] - self.now)
            else:
                # Everyone waits on something other than time (a socket): let it come.
                await anyio.sleep(0.001)

    async def drive(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` with this time driven (`run`), and stop driving once it is done."""
        failed: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(self.run)
            try:
                result = await work()
            except Exception as exc:  # raised as it is, not in a task group's ExceptionGroup
                failed = exc
            group.cancel_scope.cancel()
        if failed is not None:
            raise failed
        return result
