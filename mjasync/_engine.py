"""Client floor, bottom: the engine every job, stream and handle runs on, and its verbs.

One engine per client holds what they share (the provider, the transport, the limiter, the policies,
the task ids this client holds, one clock and one sleep) and does what they all need done:
- `call` / `post`: an idempotent call, retried whenever the failure allows it;
- `submit`: a submit, retried only when it certainly made no task: it never left, the provider turned
  it away (429, 408), or, when its fate is unknown, a lookup at the provider proved there is no task;
- `reconcile` / `find_submitted`: that lookup. One that finds the task resumes it; one that cannot
  tell raises `AmbiguousSubmitError` (unless the policy opts in to resubmitting). A job's `nonce`
  (made once per job, built into its request by the provider) makes it find its own task, never an
  identical sibling's; without one (a job rebuilt after a crash) any task of the same request matches;
- `look_up`: a task's record, in a lookup shared with the other jobs waiting (`_lookups`);
- `subscribe`: an address the provider can call back, when the client has a receiver.

What an attempt took travels with its answer (`Attempted`), never in loose tuples. A call's retries
share one budget (`Timeouts.total`, from its first send), so a drip that stays just under every
per-read limit cannot multiply it. A job's send log (`_attempts.SendRecord`) notes when it was first
sent and the task id it got, synchronously, so whoever gives up on it (a cancelled `run_many`) can
say which tasks the provider may hold.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import anyio
import msgspec

from . import _requests as requests
from ._config import ClientSettings, PollPolicy, RetryPolicy
from ._exceptions import (
    AmbiguousSubmitError,
    APIError,
    APIStatusError,
    APITimeoutError,
    BadRequestError,
    InvalidRequestError,
    MJError,
    NotFoundError,
    RateLimitError,
    WaitTimeoutError,
)
from ._inbox import CallbackInbox, CallbackRouter, Subscription
from ._limiter import JobLimiter, Limiter, LimiterStatistics
from ._lookups import TaskPoller
from ._models.requests import AnyRequest, JobRequest
from ._models.results import Result
from ._providers import Provider, WireRequest, get_provider
from ._retry import phase_of, retry_delay
from ._transport import SessionPool, Transport, WireResponse
from ._types import NOT_GIVEN, NotGiven, WaitVia

__all__ = [
    "LISTING_SKEW",
    "MAX_RECONCILE_SCAN",
    "Attempted",
    "Engine",
    "ClientStatistics",
    "KnownTasks",
    "Resumed",
    "SendLog",
    "build_engine",
    "with_retries_taken",
]

T = TypeVar("T")
R = TypeVar("R", bound=Result)

#: At most this many recent tasks are read when looking a submit up (a busy account makes many).
MAX_RECONCILE_SCAN = 5_000
#: The provider's clock may differ from ours: a listed task counts as made before a send only when it is
#: this much older than the send (the margin AceData's listing filter takes too).
LISTING_SKEW = 120.0


@dataclass(frozen=True, slots=True)
class Attempted(Generic[T]):
    """An attempt's answer and how many retries it took to get it."""

    value: T
    retries_taken: int


@dataclass(frozen=True, slots=True)
class Resumed:
    """A submit whose answer was lost, but whose task the provider's records show."""

    task_id: str


def with_retries_taken(result: R, retries: int) -> R:
    """`result`, noting how many retries it took (a copy only when there were some)."""
    return msgspec.structs.replace(result, retries_taken=retries) if retries else result


class SendLog(Protocol):
    """What a submit notes about a job's sends, and the deadline that bounds its waits.

    `_attempts.SendRecord` is the one in use; the engine only needs this much of it.
    """

    #: Unix time of an earlier send that may have made a task of its own before the job was sent
    #: again (only under `on_ambiguous_submit="resubmit"`).
    orphan_sent_at: float | None

    def mark_sent(self) -> None: ...
    def accept(self, task_id: str) -> None: ...
    def expired(self) -> bool: ...
    def timed_out(self) -> WaitTimeoutError: ...
    def bounded(self) -> AbstractContextManager[None]: ...


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


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """What a client has done so far, for tests, benchmarks and dashboards (`Client.statistics()`)."""

    #: Task lookups sent (each one batched for every job waiting then).
    lookups: int
    #: Task ids looked up in them, in all.
    ids_looked_up: int
    #: The in-flight limiter's state.
    limiter: LimiterStatistics


class Engine:
    """The services a client's jobs share, and the verbs they use them through (see the module docstring)."""

    def __init__(
        self,
        *,
        provider: Provider,
        transport: Transport,
        limiter: Limiter,
        poll: PollPolicy,
        retry: RetryPolicy,
        max_line_bytes: int,
        wait_via: WaitVia,
        callbacks: CallbackRouter | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.provider = provider
        self.transport = transport
        self.limiter = limiter
        self.poll = poll
        self.retry = retry
        self.max_line_bytes = max_line_bytes
        self.wait_via = wait_via
        #: Where jobs that wait by callback get their address (a `WebhookReceiver`), if anywhere.
        self.callbacks = callbacks
        #: The time every wait above reads (`time.monotonic()`), and how it sleeps: tests inject a
        #: clock they move themselves.
        self.clock = clock
        self.sleep = sleep
        self.known_tasks = KnownTasks()
        self._lookups = TaskPoller(
            self.fetch_records, window=poll.batch_window, max_batch=poll.max_batch, clock=clock, sleep=sleep
        )

    def statistics(self) -> ClientStatistics:
        """Lookups so far and the limiter's state."""
        return ClientStatistics(
            lookups=self._lookups.fetches,
            ids_looked_up=self._lookups.ids_fetched,
            limiter=self.limiter.statistics(),
        )

    # -- idempotent calls --------------------------------------------------------------------------------

    async def call(self, send: Callable[[], Awaitable[T]]) -> Attempted[T]:
        """Run an idempotent call, retrying what the policy allows; the final error says how many retries.

        All attempts share `Timeouts.total` from the first send; past it, `APITimeoutError` is raised.
        """
        budget = self.transport.timeouts.total
        attempt = 0
        last: MJError | None = None

        async def attempts() -> Attempted[T]:
            nonlocal attempt, last
            while True:
                if attempt:
                    await self.limiter.before_request()
                try:
                    return Attempted(await send(), attempt)
                except MJError as error:
                    last = error
                    await self._back_off_or_raise(error, attempt)
                attempt += 1

        await self.limiter.before_request()  # a shared 429 cooldown before the first send is not counted
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

    async def post(self, wire: WireRequest) -> Attempted[WireResponse]:
        """Send a request that cannot pay twice (a lookup, a short call) by its method (a POST, or a
        provider's GET), retried as `call` does."""
        transport = self.transport
        return await self.call(
            functools.partial(
                transport.post, wire.path, wire.body, headers=wire.headers or None, method=wire.method
            )
        )

    async def fetch_records(self, task_ids: list[str]) -> dict[str, bytes]:
        """The undecoded records of `task_ids` by task id, in one request (ids the provider lacks are left out)."""
        provider = self.provider
        batch = len(task_ids) > 1
        wire = provider.task_batch_request(task_ids) if batch else provider.task_request(task_ids[0])
        response = await self.post(wire)
        return provider.task_bodies(response.value.body, batch=batch)

    async def look_up(self, task_id: str, *, delay: float = 0.0, early: float = 0.0) -> bytes | None:
        """The undecoded record of `task_id`, `delay` seconds from now, in a lookup shared with other waiters.

        It may come up to `early` seconds sooner (riding in a round that has room); None when the
        provider has no record of the task.
        """
        return await self._lookups.poll(task_id, delay=delay, early=early)

    # -- callbacks ----------------------------------------------------------------------------------------

    def subscribe(self, kind: type[R], request: JobRequest, *, progress: bool) -> Subscription[R] | None:
        """A subscription to the job's callbacks, when it can hear by callback; else None.

        Not when there is no receiver, or when the request names its own `callback_url` (yours wins).
        """
        if self.callbacks is None or request.callback_url is not None:
            return None
        inbox = CallbackInbox(self.provider, kind, sleep=self.sleep)
        target, close = self.callbacks.open_route(inbox, progress=progress, ttl=self.poll.deadline)
        return Subscription(inbox, target, close)

    # -- submits ------------------------------------------------------------------------------------------

    def submit(
        self,
        send: Callable[[], Awaitable[T]],
        request: AnyRequest,
        *,
        log: SendLog | None = None,
        budget: float | NotGiven | None = NOT_GIVEN,
        nonce: str | None = None,
    ) -> Coroutine[Any, Any, Attempted[T | Resumed]]:
        """Send a submit; its answer (or the task found after a lost answer) and the retries taken.

        `log` notes the first send. The sends, retries and reconciling lookups share `budget` seconds
        (default `Timeouts.total`) from the first send; past it, a submit that may have made a task
        raises `AmbiguousSubmitError`, one that certainly made none its last error.

        With `budget=None` the job's deadline bounds the call instead (the submit is the wait itself:
        a long wait, a stream). Then `send` must end by the deadline on its own (its request's overall
        timeout, a timer the request has anyway), and every other wait here, which happens only after
        a failure (a backoff, a reconciling lookup, a cooldown before sending again), runs under
        `log.bounded()`; past the deadline, `WaitTimeoutError`. So the usual call, answered at the
        first try, pays for no cancel scope.

        `nonce`: the one the submit was built with (`Provider.job_request`), which a lookup after a
        lost answer matches, so the job never takes an identical sibling's task for its own.
        """
        limit = self.transport.timeouts.total if isinstance(budget, NotGiven) else budget
        if limit is None:
            # The usual stream or long wait: the attempts' coroutine itself, with no scope around it. A
            # job holds these frames as long as it waits, so with 10,000 jobs in flight each one counts.
            return self._attempt_submits(
                send, request, log, nonce, bounding=log, tries=_Tries(), wait_first=True
            )
        return self._submit_within(send, request, log, nonce, limit)

    async def submit_for_task_id(
        self,
        wire: WireRequest,
        request: AnyRequest,
        *,
        log: SendLog | None = None,
        nonce: str | None = None,
    ) -> Attempted[str]:
        """POST an asynchronous submit; the provider's task id for it, and the retries taken.

        The id comes from the answer, or from the provider's records when the answer was lost (found by
        `nonce`, the one `wire` was built with); either way this client holds it from now on (and `log`
        has it, with no checkpoint in between).
        """
        transport, provider = self.transport, self.provider
        path, body, headers = wire.path, wire.body, wire.headers or None

        async def send() -> str:
            # Decoded inside the attempt: an answer that cannot be read came from a server that got the
            # submit, so it is looked up like any submit of unknown fate, never taken as "no task".
            response = await transport.post(path, body, headers=headers)
            return provider.decode_receipt(response.body, request=f"POST {path}")

        answer = await self.submit(send, request, log=log, nonce=nonce)
        task_id = answer.value.task_id if isinstance(answer.value, Resumed) else answer.value
        self.known_tasks.add(task_id)
        if log is not None:
            log.accept(task_id)
        return Attempted(task_id, answer.retries_taken)

    async def _submit_within(
        self,
        send: Callable[[], Awaitable[T]],
        request: AnyRequest,
        log: SendLog | None,
        nonce: str | None,
        limit: float,
    ) -> Attempted[T | Resumed]:
        """`submit` with a budget of `limit` seconds."""
        if not self.limiter.clear_to_submit():
            # The pace and a cooldown before the first send are not counted (nor is the deadline running yet).
            await self.limiter.before_submit()
        tries = _Tries()
        with anyio.move_on_after(limit):
            return await self._attempt_submits(
                send, request, log, nonce, bounding=None, tries=tries, wait_first=False
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
        self,
        send: Callable[[], Awaitable[T]],
        request: AnyRequest,
        log: SendLog | None,
        nonce: str | None,
        *,
        bounding: SendLog | None,
        tries: _Tries,
        wait_first: bool,
    ) -> Attempted[T | Resumed]:
        """Send, and after a failure settle its fate and send again while the policy allows; `tries` keeps count.

        `bounding` is the job whose deadline bounds the waits here (when no budget does); `wait_first`
        waits out a pause or the pace before the first send too (under that deadline: before a job's
        later send, a stream resumed after a break, it is running).
        """
        limiter, retry = self.limiter, self.retry
        while True:
            if (tries.count or wait_first) and not limiter.clear_to_submit():
                with _within_deadline(bounding):
                    await limiter.before_submit()
            sent_at = time.time()
            if log is not None:
                log.mark_sent()
            tries.unsettled = True
            try:
                with limiter.sending():
                    return Attempted(await send(), tries.count)
            except MJError as error:
                tries.last = error
                expired = bounding is not None and bounding.expired()
                if isinstance(error, RateLimitError) and (expired or retry.max_retries == 0):
                    limiter.refused_for_good(error.retry_after or 0.0)  # evidence all the same
                if bounding is not None and expired:
                    # The request's own overall timeout (the job's deadline) ended it: that is the answer.
                    raise bounding.timed_out() from error
                if retry.max_retries == 0:
                    raise  # the resilience layer is off: the first error is the answer
                with _within_deadline(bounding):
                    if phase_of(error) == "unknown":
                        task_id = await self.reconcile(request, error, sent_at, tries.count, nonce=nonce)
                        if task_id is not None:
                            return Attempted(Resumed(task_id), tries.count)
                        # Proven (or, by policy, assumed) that no task was made: a retry cannot pay twice.
                        if retry.on_ambiguous_submit == "resubmit":
                            tries.maybe_made = True
                            if log is not None and log.orphan_sent_at is None:
                                # Sent again by the user's choice: this attempt may have left a task of its own.
                                log.orphan_sent_at = sent_at
                    tries.unsettled = False
                    # A refusal (429) was turned away before anything was made, and the limiter paces
                    # what follows: it spends no retry, only time (the budget, or the job's deadline).
                    refused = isinstance(error, RateLimitError)
                    spent = None if refused else tries.count - tries.refusals
                    await self._back_off_or_raise(error, tries.count, submit=True, spent=spent)
                    tries.refusals += refused
            tries.count += 1

    async def _back_off_or_raise(
        self,
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
        delay = self._delay_before_retry(error, attempt, counted)
        if delay is None:
            if submit and isinstance(error, RateLimitError):
                self.limiter.refused_for_good(error.retry_after or 0.0)
            _note_retries(error, attempt)
            raise error
        if isinstance(error, RateLimitError):
            # The limiter decides: this request alone waits, or every job shares one pause.
            await self.limiter.refused(delay, submit=submit)
        elif delay:
            await self.sleep(delay)

    def _delay_before_retry(self, error: MJError, attempt: int, counted: int | None) -> float | None:
        """Seconds to wait before the next try, or None to give up.

        Callers retry only what cannot pay twice: an idempotent call, or a submit proven not to have
        made a task; a submit of unknown fate is looked up before it gets here.
        """
        if phase_of(error) == "fatal" or (counted is not None and counted >= self.retry.max_retries):
            return None
        return retry_delay(error, attempt, self.retry)

    # -- settling a submit of unknown fate ----------------------------------------------------------------

    async def reconcile(
        self, request: AnyRequest, error: MJError, sent_at: float, attempt: int, *, nonce: str | None = None
    ) -> str | None:
        """After a submit of unknown fate: the task's id if the provider has it, None if proven absent.

        `nonce`: the one the submit was built with; a listed task must carry it (`Provider.same_request`).

        Absence is proven only by an error answer's trace id that names no task: a listing without the
        task proves nothing, as the server (or the one behind a gateway) may still be making it. Raises
        `AmbiguousSubmitError` when the provider's records cannot settle it and the policy does not
        allow resubmitting.
        """
        trace_id = error.trace_id if isinstance(error, APIStatusError) else None
        if not isinstance(error, APIStatusError) and self.retry.reconcile_delay:
            # No answer at all: the server may still be handling the request; let it settle first.
            await self.sleep(self.retry.reconcile_delay)
        try:
            found = await self._task_by_trace_id(trace_id) if trace_id else None
            if found is None:
                found = await self._task_by_listing(request, sent_at, nonce)
        except MJError as lookup_error:
            found = None
            lookup_failed: MJError | None = lookup_error
        else:
            lookup_failed = None
        if found is not None:
            self.known_tasks.add(found)
            return found
        # The server answered this very request with an error, and its records show no task for it.
        proven_absent = trace_id is not None and lookup_failed is None
        if proven_absent or self.retry.on_ambiguous_submit == "resubmit":
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

    async def find_submitted(
        self, request: AnyRequest, since: float, *, nonce: str | None = None
    ) -> str | None:
        """The id of a task made by an earlier submit of `request` since `since`, not yet held by this client.

        With `nonce` (the job that sent it is at hand), only that job's submit counts; without (a job
        rebuilt after a crash), any of `request`. None when the provider's complete listing shows none;
        `AmbiguousSubmitError` when it cannot tell (no listing, or one that does not reach back to
        `since`, or several tasks match).
        """
        found = await self._task_by_listing(request, since, nonce)
        if found is not None:
            self.known_tasks.add(found)
        return found

    async def _task_by_trace_id(self, trace_id: str) -> str | None:
        try:
            response = await self.post(self.provider.task_request(trace_id=trace_id))
        except (BadRequestError, NotFoundError):
            return None
        record: Any = self.provider.decode_task(response.value.body)
        task_id: str | None = record.id or None
        return task_id

    async def _task_by_listing(self, request: AnyRequest, sent_at: float, nonce: str | None) -> str | None:
        """The task a submit of `request` sent at `sent_at` made, from the provider's listing of recent
        tasks (newest first); None when the whole listing since the send shows none. With `nonce`, only
        a task of that very submit's job matches (`Provider.same_request`).

        The scan ends at the last page (one with fewer tasks than a page holds, or more: a listing that
        is not paged). A listing with no next page is also complete when its oldest task is older than
        the send; if all of a full one's tasks are newer (trueai's newest 100), the submit's task may be
        older than them: it cannot tell, so without a match that is `AmbiguousSubmitError`, never
        "absent".
        """
        # A dict keeps the order and counts a task once: pages are read newest first by offset, so tasks
        # made between two reads shift older ones to a later page, where they are seen again (never skipped).
        provider, known = self.provider, self.known_tasks
        earliest = sent_at - LISTING_SKEW
        matches: dict[str, None] = {}
        query = provider.recent_tasks_request(request, since=sent_at, offset=0)
        if query is None:
            raise AmbiguousSubmitError("this provider cannot list recent tasks to look the submit up")
        unseen = f"more than {MAX_RECONCILE_SCAN} recent tasks; the submit's was not among them"
        offset = 0
        while True:
            response = await self.post(query)
            batch = provider.decode_task_batch(response.value.body)
            items = batch.items
            matches.update(
                (record.id, None)
                for record in items
                if record.id
                and record.id not in known
                # A listing that is not filtered by time (the proxy's) shows old tasks of the same request.
                and (record.created_at is None or record.created_at >= earliest)
                and provider.same_request(record, request, nonce=nonce)
            )
            offset += query.page_size
            following = provider.recent_tasks_request(request, since=sent_at, offset=offset)
            # A total says something only of a listing with further pages: one read's count is its length.
            total = batch.count if following is not None else None
            # The last page; or more than a page, so not paged at all: the whole listing (the proxy's NZ).
            complete = len(items) != query.page_size or (total is not None and offset >= total)
            if not complete and following is None:
                # A listing that is one read (the proxy's: NZ lists all, trueai its newest 100) covers the
                # send when its oldest task is older. A paged one is filtered by time at the provider
                # (AceData's), so it is read to its last page whatever one record claims.
                oldest = min((r.created_at for r in items if r.created_at is not None), default=None)
                complete = oldest is not None and oldest < earliest
            if complete:
                break
            if following is None:
                unseen = (
                    f"the provider lists only its newest {offset} tasks, all made after the submit was "
                    "sent; its task may be older than them"
                )
                break
            if offset >= MAX_RECONCILE_SCAN:
                break
            query = following
        if not complete and not matches:
            raise AmbiguousSubmitError(unseen)
        # Several identical, unclaimed submits in the window: adopting one could steal another job's task
        # (with a nonce, only one job's own sends match: several are its earlier, resubmitted ones).
        if len(matches) > 1:
            raise AmbiguousSubmitError(
                f"{len(matches)} recent tasks match this submit; cannot tell which is ours"
            )
        return next(iter(matches), None)


def build_engine(
    settings: ClientSettings,
    api_key: str | None,
    base_url: str | None,
    environ: Mapping[str, str],
    *,
    pool: SessionPool,
    callbacks: CallbackRouter | None,
    limiter: Limiter | None,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
) -> tuple[Engine, str, str]:
    """A client's engine for `settings`, and the API key and base URL it resolved (from the arguments,
    else `environ`). Refuses settings that cannot work together, before anything is sent."""
    provider = get_provider(settings.provider)
    api_key, base_url = requests.account(provider, api_key, base_url, environ)
    if settings.wait_via == "callback" and callbacks is None:
        raise InvalidRequestError("wait_via='callback' needs webhooks=WebhookReceiver(...)")
    credentials = provider.credential_headers()
    if any(name.lower() in credentials for name in settings.default_headers):
        raise InvalidRequestError("pass the API key as api_key=, not in default_headers")
    transport = Transport(
        pool,
        base_url=base_url,
        headers={**settings.default_headers, **provider.auth_headers(api_key)},
        secrets=(api_key,),
        timeouts=settings.timeouts,
        max_response_bytes=settings.max_response_bytes,
        error_for_status=provider.status_error,
    )
    limits = settings.limits
    engine = Engine(
        provider=provider,
        transport=transport,
        poll=settings.poll,
        retry=settings.retry,
        limiter=limiter
        or JobLimiter(
            limits.max_in_flight, submits_per_second=limits.submits_per_second, clock=clock, sleep=sleep
        ),
        max_line_bytes=settings.max_line_bytes,
        wait_via=settings.wait_via,
        callbacks=callbacks,
        clock=clock,
        sleep=sleep,
    )
    return engine, api_key, base_url


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


def _within_deadline(log: SendLog | None) -> AbstractContextManager[None]:
    """`log.bounded()`, or nothing when no deadline bounds the wait."""
    return nullcontext() if log is None else log.bounded()


def _note_retries(error: MJError, attempt: int) -> None:
    if isinstance(error, APIError):
        error.retries_taken = attempt
