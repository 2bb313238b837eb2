"""Client layer: sending with retries — lookups again and again, submits only when it cannot pay twice.

Idempotent calls (task lookups, describe, seed, translate, shorten) are retried whenever the failure
allows it. A submit is retried only when it certainly made no task: it never left, the provider
turned it away (429, 408), or, when its fate is unknown, a lookup at the provider proved there is
no task. A lookup that finds the task resumes it instead; one that cannot tell raises
`AmbiguousSubmitError` (unless the policy opts in to resubmitting).

A call's retries share one budget (`Timeouts.total`, from its first send), so a drip that stays just
under every per-read limit cannot multiply it. A job's `SendRecord` notes when it was first sent and
the task id it got, synchronously, so whoever gives up on it (a cancelled `run_many`) can say which
tasks the provider may hold; its deadline (`PollPolicy.deadline`) counts from that first send.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

from ._exceptions import (
    AmbiguousSubmitError,
    APIError,
    APIStatusError,
    APITimeoutError,
    BadRequestError,
    MJError,
    NotFoundError,
    RateLimitError,
    WaitTimeoutError,
)
from ._models.requests import AnyRequest
from ._models.results import Result
from ._retry import phase_of, retry_delay
from ._types import NOT_GIVEN, NotGiven

if TYPE_CHECKING:
    from ._job import Core

__all__ = [
    "KnownTasks",
    "Resumed",
    "SendRecord",
    "call_with_retries",
    "find_submitted",
    "reconcile_submit",
    "submit_for_task_id",
    "submit_with_retries",
    "with_retries_taken",
]

T = TypeVar("T")
R = TypeVar("R", bound=Result)

#: The least overall timeout a request is given (aiohttp reads 0 as "none").
_LEAST_TIMEOUT = 0.001
#: How soon after a job's first send its requests still get the whole deadline as their timeout.
_FRESH = 0.001


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


class SendRecord:
    """When a job was first sent, and the task id the provider gave it; where its deadline counts from.

    Both are noted synchronously, with no checkpoint between the event and the note: `sent_at` just
    before the first request goes out, `task_id` the moment it is decoded. So a caller that cancels
    the job at any point knows whether the provider may hold a task for it, and which.
    """

    __slots__ = (
        "_scopes",
        "deadline",
        "deadline_at",
        "on_task_id",
        "orphan_sent_at",
        "sent_at",
        "sent_clock",
        "task_id",
    )

    def __init__(self, deadline: float | None) -> None:
        #: Seconds from the first send that waiting for the job may take (`PollPolicy.deadline`).
        self.deadline = deadline
        #: Unix time of the first send (for `Client.find_task(job, since=...)`).
        self.sent_at: float | None = None
        #: `time.monotonic()` of the first send.
        self.sent_clock: float | None = None
        #: When (`time.monotonic()`) waiting gives up; None before the first send or with no deadline.
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
        left = deadline_at - time.monotonic()
        if left > deadline - _FRESH:
            return deadline
        return max(left, _LEAST_TIMEOUT)

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        deadline_at = self.deadline_at
        return deadline_at is not None and time.monotonic() >= deadline_at

    def mark_sent(self) -> None:
        """The first request is about to go out (later sends change nothing)."""
        if self.sent_clock is not None:
            return
        self.sent_at = time.time()
        self.sent_clock = sent_clock = time.monotonic()
        if self.deadline is not None:
            self.deadline_at = deadline_at = sent_clock + self.deadline
            for scope in self._scopes:
                scope.deadline = deadline_at

    def accept(self, task_id: str) -> None:
        """The provider's id for the job is known."""
        if task_id == self.task_id:
            return
        first = self.task_id is None
        self.task_id = task_id
        if first and self.on_task_id is not None:
            self.on_task_id(task_id)

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
        self._scope = anyio.CancelScope(deadline=math.inf if deadline_at is None else deadline_at)

    def __enter__(self) -> None:
        self._record._scopes += (self._scope,)
        self._scope.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._record._scopes = tuple(scope for scope in self._record._scopes if scope is not self._scope)
        if self._scope.__exit__(exc_type, exc, tb) and self._scope.cancelled_caught:
            raise self._record.timed_out() from None


async def call_with_retries(core: Core, send: Callable[[], Awaitable[T]]) -> T:
    """Run an idempotent call, retrying what the policy allows; the final error says how many retries.

    All attempts share `Timeouts.total` from the first send; past it, `APITimeoutError` is raised.
    """
    budget = core.transport.timeouts.total
    attempt = 0
    last: MJError | None = None

    async def attempts() -> T:
        nonlocal attempt, last
        while True:
            if attempt:
                await core.limiter.before_request()
            try:
                return await send()
            except MJError as error:
                last = error
                await _back_off_or_raise(core, error, attempt)
            attempt += 1

    await core.limiter.before_request()  # a shared 429 cooldown before the first send is not counted
    if budget is None:
        return await attempts()
    with anyio.move_on_after(budget):
        return await attempts()
    out_of_time = APITimeoutError(
        f"no answer within Timeouts.total={budget} s, retries included"
        + (f" (the last attempt: {last})" if last is not None else ""),
        may_have_reached_server=True,
        request=getattr(last, "request", None),
    )
    out_of_time.retries_taken = attempt
    raise out_of_time from last


def submit_with_retries(
    core: Core,
    send: Callable[[], Awaitable[T]],
    request: AnyRequest,
    *,
    record: SendRecord | None = None,
    budget: float | NotGiven | None = NOT_GIVEN,
) -> Coroutine[Any, Any, tuple[T | Resumed, int]]:
    """Send a submit; return its answer (or the task found after a lost answer) and the retries taken.

    `record` notes the first send. The sends, retries and reconciling lookups share `budget` seconds
    (default `Timeouts.total`) from the first send; past it, a submit that may have made a task raises
    `AmbiguousSubmitError`, one that certainly made none its last error.

    With `budget=None` the job's deadline bounds the call instead (the submit is the wait itself: a
    long wait, a stream). Then `send` must end by `record.time_left()` on its own (its request's
    overall timeout, a timer the request has anyway), and every other wait here, which happens only
    after a failure (a backoff, a reconciling lookup, a cooldown before sending again), runs under
    `record.bounded()`; past the deadline, `WaitTimeoutError`. So the usual call, answered at the
    first try, pays for no cancel scope.
    """
    limit = core.transport.timeouts.total if isinstance(budget, NotGiven) else budget
    if limit is None:
        # The usual stream or long wait: the attempts' coroutine itself, with no scope around it. A job
        # holds these frames as long as it waits, so with 10,000 jobs in flight each one counts.
        return _attempt_submits(core, send, request, record, bounding=record, tries=_Tries(), wait_first=True)
    return _submit_within(core, send, request, record, limit)


class _Tries:
    """How far a submit's attempts got: read when its budget runs out, to say what its fate is."""

    __slots__ = ("count", "last", "maybe_made", "refusals", "unsettled")

    def __init__(self) -> None:
        self.count = 0
        #: How many of the attempts were refused (429): they do not count against `max_retries`.
        self.refusals = 0
        self.last: MJError | None = None
        #: Whether the current attempt's fate is open, or an earlier one may have made a task that no
        #: lookup found or ruled out.
        self.unsettled = False
        self.maybe_made = False


async def _submit_within(
    core: Core, send: Callable[[], Awaitable[T]], request: AnyRequest, record: SendRecord | None, limit: float
) -> tuple[T | Resumed, int]:
    """`submit_with_retries` with a budget of `limit` seconds."""
    if not core.limiter.clear_to_submit():
        # The pace and a cooldown before the first send are not counted (nor is the deadline running yet).
        await core.limiter.before_submit()
    tries = _Tries()
    with anyio.move_on_after(limit):
        return await _attempt_submits(
            core, send, request, record, bounding=None, tries=tries, wait_first=False
        )
    last = tries.last
    if not (tries.unsettled or tries.maybe_made) and last is not None:
        _note_retries(last, tries.count)
        raise last
    ambiguous = AmbiguousSubmitError(
        f"the submit was not settled within Timeouts.total={limit} s (retries and lookups included); "
        "it may have made a task, so it is not sent again"
        + (f" (the last attempt: {last})" if last is not None else ""),
        request=getattr(last, "request", None),
    )
    ambiguous.retries_taken = tries.count
    raise ambiguous from last


async def _attempt_submits(
    core: Core,
    send: Callable[[], Awaitable[T]],
    request: AnyRequest,
    record: SendRecord | None,
    *,
    bounding: SendRecord | None,
    tries: _Tries,
    wait_first: bool,
) -> tuple[T | Resumed, int]:
    """Send, and after a failure settle its fate and send again while the policy allows; `tries` keeps count.

    `bounding` is the job whose deadline bounds the waits here (when no budget does); `wait_first`
    waits out a pause or the pace before the first send too (under that deadline: before a job's
    later send, a stream resumed after a break, it is running).
    """
    while True:
        if (tries.count or wait_first) and not core.limiter.clear_to_submit():
            with _within_deadline(bounding):
                await core.limiter.before_submit()
        sent_at = time.time()
        if record is not None:
            record.mark_sent()
        tries.unsettled = True
        try:
            with core.limiter.sending():
                return await send(), tries.count
        except MJError as error:
            tries.last = error
            expired = bounding is not None and bounding.expired()
            if isinstance(error, RateLimitError) and (expired or core.retry.max_retries == 0):
                core.limiter.refused_for_good(error.retry_after or 0.0)  # evidence all the same
            if bounding is not None and expired:
                # The request's own overall timeout (the job's deadline) ended it: that is the answer.
                raise bounding.timed_out() from error
            if core.retry.max_retries == 0:
                raise  # the resilience layer is off: the first error is the answer
            with _within_deadline(bounding):
                if phase_of(error) == "unknown":
                    task_id = await reconcile_submit(core, request, error, sent_at, tries.count)
                    if task_id is not None:
                        return Resumed(task_id, tries.count), tries.count
                    # Proven (or, by policy, assumed) that no task was made: a retry cannot pay twice.
                    if core.retry.on_ambiguous_submit == "resubmit":
                        tries.maybe_made = True
                        if record is not None and record.orphan_sent_at is None:
                            # Sent again by the user's choice: this attempt may have left a task of its own.
                            record.orphan_sent_at = sent_at
                tries.unsettled = False
                # A refusal (429) was turned away before anything was made, and the limiter paces
                # what follows: it spends no retry, only time (the budget, or the job's deadline).
                refused = isinstance(error, RateLimitError)
                spent = None if refused else tries.count - tries.refusals
                await _back_off_or_raise(core, error, tries.count, submit=True, spent=spent)
                tries.refusals += refused
        tries.count += 1


def _within_deadline(record: SendRecord | None) -> AbstractContextManager[None]:
    """`record.bounded()`, or nothing when no record bounds the wait."""
    return nullcontext() if record is None else record.bounded()


async def submit_for_task_id(
    core: Core,
    path: str,
    body: bytes,
    headers: Mapping[str, str] | None,
    request: AnyRequest,
    *,
    record: SendRecord | None = None,
) -> tuple[str, int]:
    """POST an asynchronous submit and return the provider's task id for it, and the retries taken.

    The id comes from the answer, or from the provider's records when the answer was lost; either
    way this client holds it from now on (and `record` has it, with no checkpoint in between).
    """

    async def send() -> str:
        # Decoded inside the attempt: an answer that cannot be read came from a server that got the
        # submit, so it is looked up like any submit of unknown fate, never taken as "no task".
        response = await core.transport.post(path, body, headers=headers)
        return core.provider.decode_receipt(response.body, request=f"POST {path}")

    answer, retries = await submit_with_retries(core, send, request, record=record)
    task_id = answer.task_id if isinstance(answer, Resumed) else answer
    core.known_tasks.add(task_id)
    if record is not None:
        record.accept(task_id)
    return task_id, retries


async def _back_off_or_raise(
    core: Core,
    error: MJError,
    attempt: int,
    *,
    submit: bool = False,
    spent: int | NotGiven | None = NOT_GIVEN,
) -> None:
    """Wait before retry `attempt + 1`, or raise `error` (noting the retries taken) when the policy gives up.

    `spent`: the retries so far that count against `max_retries` (default: all `attempt` of them);
    None when this one does not count.
    """
    counted = attempt if isinstance(spent, NotGiven) else spent
    delay = _delay_before_retry(core, error, attempt, counted)
    if delay is None:
        if submit and isinstance(error, RateLimitError):
            core.limiter.refused_for_good(error.retry_after or 0.0)
        _note_retries(error, attempt)
        raise error
    if isinstance(error, RateLimitError):
        # The limiter decides: this request alone waits, or every job shares one pause.
        await core.limiter.refused(delay, submit=submit)
    elif delay:
        await core.sleep(delay)


def _delay_before_retry(core: Core, error: MJError, attempt: int, counted: int | None) -> float | None:
    """Seconds to wait before the next try, or None to give up.

    Callers retry only what cannot pay twice: an idempotent call, or a submit proven not to have
    made a task; a submit of unknown fate is looked up before it gets here.
    """
    if phase_of(error) == "fatal" or (counted is not None and counted >= core.retry.max_retries):
        return None
    delay = retry_delay(error, attempt, core.retry)
    if delay is None:
        return None
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
    wire = core.provider.task_request(trace_id=trace_id)
    try:
        response = await call_with_retries(core, lambda: core.transport.post(wire.path, wire.body))
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
        response = await call_with_retries(
            core, functools.partial(core.transport.post, query.path, query.body)
        )
        batch = core.provider.decode_task_batch(response.body)
        matches.update(
            (record.id, None)
            for record in batch.items
            if record.id and record.id not in core.known_tasks and core.provider.same_request(record, request)
        )
        offset += query.page_size
        if len(batch.items) < query.page_size or (batch.count is not None and offset >= batch.count):
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
