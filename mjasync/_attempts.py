"""Client layer: sending with retries — lookups again and again, submits only when it cannot pay twice.

Idempotent calls (task lookups, describe, seed, translate, shorten) are retried whenever the failure
allows it. A submit is retried only when it certainly made no task: it never left, the provider
turned it away (429, 408), or, when its fate is unknown, a lookup at the provider proved there is
no task. A lookup that finds the task resumes it instead; one that cannot tell raises
`AmbiguousSubmitError` (unless the policy opts in to resubmitting).
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from ._exceptions import (
    AmbiguousSubmitError,
    APIError,
    APIStatusError,
    BadRequestError,
    MJError,
    NotFoundError,
    RateLimitError,
)
from ._models.requests import AnyRequest
from ._models.results import Result
from ._retry import phase_of, retry_delay

if TYPE_CHECKING:
    from ._job import Core

__all__ = [
    "KnownTasks",
    "Resumed",
    "call_with_retries",
    "find_submitted",
    "reconcile_submit",
    "submit_for_task_id",
    "submit_with_retries",
    "with_retries_taken",
]

T = TypeVar("T")
R = TypeVar("R", bound=Result)


def with_retries_taken(result: R, retries: int) -> R:
    """`result`, noting how many retries it took (a copy only when there were some)."""
    return msgspec.structs.replace(result, retries_taken=retries) if retries else result


@dataclass(frozen=True)
class Resumed:
    """A submit whose answer was lost, but whose task the provider's records show."""

    task_id: str
    retries_taken: int


class KnownTasks:
    """Task ids this client already holds, so reconciling never adopts another job's task."""

    # Only ids recent enough to show up in a reconciling lookup matter, so a modest bound suffices
    # and a fan-out of millions of jobs keeps flat memory.
    def __init__(self, size: int = 10_000) -> None:
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self._size = size

    def add(self, task_id: str) -> None:
        """Remember `task_id` (the oldest is forgotten past `size`)."""
        if task_id in self._ids:
            return
        self._ids.add(task_id)
        self._order.append(task_id)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids


async def call_with_retries(core: Core, send: Callable[[], Awaitable[T]]) -> T:
    """Run an idempotent call, retrying what the policy allows; the final error says how many retries."""
    attempt = 0
    while True:
        await core.limiter.before_request()
        try:
            return await send()
        except MJError as error:
            await _back_off_or_raise(core, error, attempt)
        attempt += 1


async def submit_with_retries(
    core: Core, send: Callable[[], Awaitable[T]], request: AnyRequest
) -> tuple[T | Resumed, int]:
    """Send a submit; return its answer (or the task found after a lost answer) and the retries taken."""
    attempt = 0
    while True:
        if not core.limiter.clear_to_submit():
            await core.limiter.before_submit()
        sent_at = time.time()
        try:
            return await send(), attempt
        except MJError as error:
            if core.retry.max_retries == 0:
                raise  # the resilience layer is off: the first error is the answer
            if phase_of(error) == "unknown":
                task_id = await reconcile_submit(core, request, error, sent_at, attempt)
                if task_id is not None:
                    return Resumed(task_id, attempt), attempt
                # Proven (or, by policy, assumed) that no task was made: a retry cannot pay twice.
            await _back_off_or_raise(core, error, attempt)
        attempt += 1


async def submit_for_task_id(
    core: Core, path: str, body: bytes, headers: dict[str, str] | None, request: AnyRequest
) -> tuple[str, int]:
    """POST an asynchronous submit and return the provider's task id for it, and the retries taken.

    The id comes from the answer, or from the provider's records when the answer was lost; either
    way this client holds it from now on.
    """
    answer, retries = await submit_with_retries(
        core, lambda: core.transport.post(path, body, headers=headers), request
    )
    if isinstance(answer, Resumed):
        task_id = answer.task_id
    else:
        task_id = core.provider.decode_receipt(answer.body, request=f"POST {path}")
    core.known_tasks.add(task_id)
    return task_id, retries


async def _back_off_or_raise(core: Core, error: MJError, attempt: int) -> None:
    """Wait before retry `attempt + 1`, or raise `error` (noting the retries taken) when the policy gives up."""
    delay = _delay_before_retry(core, error, attempt)
    if delay is None:
        _note_retries(error, attempt)
        raise error
    if delay:
        await core.sleep(delay)


def _delay_before_retry(core: Core, error: MJError, attempt: int) -> float | None:
    """Seconds to wait before the next try, or None to give up.

    Callers retry only what cannot pay twice: an idempotent call, or a submit proven not to have
    made a task; a submit of unknown fate is looked up before it gets here.
    """
    if phase_of(error) == "fatal" or attempt >= core.retry.max_retries:
        return None
    delay = retry_delay(error, attempt, core.retry)
    if delay is None:
        return None
    if isinstance(error, RateLimitError):
        # One shared pause for every job of this client: the wait happens in `before_request`.
        core.limiter.rate_limited(delay)
        return 0.0
    return delay


async def reconcile_submit(
    core: Core, request: AnyRequest, error: MJError, sent_at: float, attempt: int
) -> str | None:
    """After a submit of unknown fate: the task's id if the provider has it, None if proven absent.

    Raises `AmbiguousSubmitError` when the provider's records cannot settle it and the policy does
    not allow resubmitting.
    """
    trace_id = error.trace_id if isinstance(error, APIStatusError) else None
    if not isinstance(error, APIStatusError) and core.retry.reconcile_delay:
        # No answer at all: the server may still be handling the request; let it settle first.
        await core.sleep(core.retry.reconcile_delay)
    try:
        found = await _task_by_trace_id(core, trace_id) if trace_id else None
        if found is None:
            found = await _task_by_listing(core, request, sent_at)
    except MJError as lookup_error:
        found = None
        lookup_failed: MJError | None = lookup_error
    else:
        lookup_failed = None
    if found is not None:
        core.known_tasks.add(found)
        return found
    # The server answered this very request with an error, and its records show no task for it.
    proven_absent = trace_id is not None and lookup_failed is None
    if proven_absent or core.retry.on_ambiguous_submit == "resubmit":
        return None
    ambiguous = AmbiguousSubmitError(
        "the submit may have reached the provider, whose records do not show its task; not sending it "
        "again, which could pay twice (RetryPolicy(on_ambiguous_submit='resubmit') to allow it)"
        + (f"; the lookup failed too: {lookup_failed}" if lookup_failed else ""),
        status=getattr(error, "status", None),
        code=getattr(error, "code", None),
        trace_id=trace_id,
        request=getattr(error, "request", None),
    )
    ambiguous.retries_taken = attempt
    raise ambiguous from error


async def _task_by_trace_id(core: Core, trace_id: str) -> str | None:
    path, body = core.provider.task_request(trace_id=trace_id)
    try:
        response = await call_with_retries(core, lambda: core.transport.post(path, body))
    except (BadRequestError, NotFoundError):
        return None
    record: Any = core.provider.decode_task(response.body)
    task_id: str | None = record.id or None
    return task_id


async def find_submitted(core: Core, request: AnyRequest, since: float) -> str | None:
    """The id of a task made by an earlier submit of `request` since `since`, not yet held by this client."""
    found = await _task_by_listing(core, request, since)
    if found is not None:
        core.known_tasks.add(found)
    return found


#: At most this many recent tasks are read when looking a submit up (a busy account makes many).
MAX_RECONCILE_SCAN = 5_000


async def _task_by_listing(core: Core, request: AnyRequest, sent_at: float) -> str | None:
    # A dict keeps the order and counts a task once: pages are read newest first by offset, so tasks
    # made between two reads shift older ones to a later page, where they are seen again (never skipped).
    matches: dict[str, None] = {}
    offset = 0
    while offset < MAX_RECONCILE_SCAN:
        query = core.provider.recent_tasks_request(request, since=sent_at, offset=offset)
        if query is None:
            raise AmbiguousSubmitError("this provider cannot list recent tasks to look the submit up")
        path, body, page = query
        response = await call_with_retries(core, functools.partial(core.transport.post, path, body))
        batch = core.provider.decode_task_batch(response.body)
        matches.update(
            (record.id, None)
            for record in batch.items
            if record.id and record.id not in core.known_tasks and core.provider.same_request(record, request)
        )
        offset += page
        if len(batch.items) < page or (batch.count is not None and offset >= batch.count):
            break
    else:
        if not matches:
            raise AmbiguousSubmitError(
                f"more than {MAX_RECONCILE_SCAN} recent tasks; the submit's was not among them"
            )
    # Several identical, unclaimed submits in the window: adopting one could steal another job's task.
    if len(matches) > 1:
        raise AmbiguousSubmitError(
            f"{len(matches)} recent tasks match this submit; cannot tell which is ours"
        )
    return next(iter(matches), None)


def _note_retries(error: MJError, attempt: int) -> None:
    if isinstance(error, APIError):
        error.retries_taken = attempt
