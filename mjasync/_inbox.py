"""Client floor, below the engine: where one job's callbacks land, and its subscription to them.

A job that waits by callback gets an inbox and asks the client's router (a `WebhookReceiver`) for an
address of its own; the provider POSTs there and the receiver hands each body to the inbox, which the
job's provider decodes. The inbox keeps little: the final body, and a short queue of progress updates
(older ones are dropped: each update is a snapshot, so the newest says it all). A `Subscription` is
the inbox, its address and the route's closer in one object, passed from the job to whoever waits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import anyio

from ._models.results import Result
from ._providers import CallbackTarget, Provider

__all__ = ["CallbackInbox", "CallbackRouter", "Subscription"]

R = TypeVar("R", bound=Result)

#: Progress updates an inbox holds before dropping the oldest.
_MAX_QUEUED = 32


class CallbackInbox(Generic[R]):
    """Where one job's callbacks land, decoded by its provider, until the job has read them."""

    def __init__(
        self, provider: Provider, kind: type[R], *, sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    ) -> None:
        self._provider = provider
        self._kind = kind
        self._sleep = sleep
        self._queued: deque[R] = deque(maxlen=_MAX_QUEUED)
        self._final: R | None = None
        self._final_read = False
        #: The wait in `next`, which a callback arriving cuts short.
        self._waiting: anyio.CancelScope | None = None
        #: The job's task id, once its submit has answered; callbacks for another task are ignored.
        self.task_id: str | None = None
        #: Callbacks taken (not counting ignored ones).
        self.received = 0

    @property
    def secret_header(self) -> str | None:
        """The header the provider sends our secret back in (None: it sends none)."""
        return self._provider.callback_secret_header

    def deliver(self, body: bytes) -> bool:
        """Take one callback body; False (ignored) unless it names the task this job waits for.

        Every callback of either provider names its task: one that names none, or another task than
        the job's (once known), is nobody's result and resolves nothing. Before the submit has
        answered, a named task's callbacks are kept until `expect` sorts them out.
        Raises `ResponseDecodeError` if the body is not the provider's callback.
        """
        update = self._provider.decode_callback(self._kind, body)
        if not update.task_id or (self.task_id is not None and update.task_id != self.task_id):
            return False
        self.received += 1
        if self._final is not None:
            return True  # a repeat (the provider retries until acknowledged)
        if update.failed or update.is_final:
            self._final = update
        else:
            self._queued.append(update)
        if self._waiting is not None:
            self._waiting.cancel()
        return True

    def expect(self, task_id: str) -> None:
        """The job's task id is known now: drop anything that arrived for another task."""
        self.task_id = task_id
        self._queued = deque((u for u in self._queued if u.task_id in (None, task_id)), maxlen=_MAX_QUEUED)
        if self._final is not None and self._final.task_id not in (None, task_id):
            self._final = None

    async def next(self, within: float | None) -> R | None:
        """The next update that came by callback (progress first, then the final); None after `within` s."""
        update = self._take()
        if update is not None:
            return update
        with anyio.CancelScope() as self._waiting:
            try:
                await (anyio.sleep_forever() if within is None else self._sleep(within))
            finally:
                self._waiting = None
        return self._take()

    def _take(self) -> R | None:
        if self._queued:
            return self._queued.popleft()
        if self._final is not None and not self._final_read:
            self._final_read = True
            return self._final
        return None


class CallbackRouter(Protocol):
    """Gives each job an address its provider can call back (implemented by `mjasync.WebhookReceiver`)."""

    def open_route(
        self, inbox: CallbackInbox[Any], *, progress: bool, ttl: float | None
    ) -> tuple[CallbackTarget, Callable[[], None]]:
        """A callback target for `inbox`, and the function that closes it (idempotent).

        An open route expires by itself after `ttl` seconds (None: never), so a job nobody waits on
        leaves nothing behind.
        """
        ...


class Subscription(Generic[R]):
    """One job's callbacks: its inbox, the address the provider is given, and the route's closer.

    `close()` is idempotent; a route also expires by itself (`CallbackRouter.open_route`'s `ttl`).
    """

    __slots__ = ("_close", "inbox", "target")

    def __init__(self, inbox: CallbackInbox[R], target: CallbackTarget, close: Callable[[], None]) -> None:
        self.inbox = inbox
        #: Where the provider is asked to call back.
        self.target = target
        self._close: Callable[[], None] | None = close

    def expect(self, task_id: str) -> None:
        """The job's task id is known: callbacks for any other task are ignored from now on."""
        self.inbox.expect(task_id)

    @property
    def closed(self) -> bool:
        """Whether the route is closed."""
        return self._close is None

    def close(self) -> None:
        """Close the route (no more callbacks reach the inbox); idempotent."""
        close, self._close = self._close, None
        if close is not None:
            close()
