"""Client layer: a long-running job (imagine, edits, videos) and the three ways to get its result."""

from __future__ import annotations

import time
import warnings
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio

from ._attempts import (
    KnownTasks,
    Resumed,
    SendRecord,
    call_with_retries,
    submit_for_task_id,
    submit_with_retries,
    with_retries_taken,
)
from ._callbacks import CallbackFollower, CallbackInbox, CallbackRouter
from ._config import DEFAULT_SERVER_TIMEOUT, PollPolicy, RetryPolicy
from ._exceptions import InvalidRequestError, ResponseDecodeError, StreamInterruptedError
from ._limiter import JobLimiter
from ._models.requests import JobRequest
from ._models.results import Result
from ._models.task import TaskRecord
from ._poller import PollCursor, TaskPoller
from ._providers import CallbackTarget, Provider
from ._redact import redact
from ._stream import JobStream
from ._transport import Transport
from ._types import NOT_GIVEN, NotGiven, WaitVia

__all__ = ["Core", "Job", "TaskHandle", "TaskUpdates"]

R = TypeVar("R", bound=Result)


@dataclass(frozen=True, eq=False)
class Core:
    """What jobs, streams and handles share with the client that made them."""

    provider: Provider
    transport: Transport
    poller: TaskPoller
    poll: PollPolicy
    retry: RetryPolicy
    limiter: JobLimiter
    max_line_bytes: int
    wait_via: WaitVia
    known_tasks: KnownTasks = field(default_factory=KnownTasks)
    #: The time every wait below the client reads (`time.monotonic()`), and how it sleeps: tests
    #: inject a clock they move themselves.
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    #: Where jobs that wait by callback get their address (a `WebhookReceiver`), if anywhere.
    callbacks: CallbackRouter | None = None

    def open_inbox(
        self, kind: type[R], request: JobRequest, *, progress: bool
    ) -> tuple[CallbackInbox[R] | None, CallbackTarget | None, Callable[[], None]]:
        """An inbox, its callback target and its closer, when this job can hear by callback.

        Not when there is no router, or when the request names its own `callback_url` (yours wins).
        """
        if self.callbacks is None or request.callback_url is not None:
            return None, None, _nothing
        inbox = CallbackInbox(self.provider, kind, sleep=self.sleep)
        target, close = self.callbacks.open_route(inbox, progress=progress, ttl=self.poll.deadline)
        return inbox, target, close


def _nothing() -> None:
    pass


class Job(Generic[R]):
    """A long-running request, built and validated but not sent yet. It is sent exactly once.

    - `await job` (or `await job.result(via=...)`) gives the final result;
    - `async with job.stream() as updates: async for u in updates:` gives every progress update;
    - `await job.submit()` gives a `TaskHandle` at once, to wait on later.

    Using a job a second time raises `RuntimeError` rather than paying for the work twice. A job
    collected without ever being sent (awaited, streamed, submitted or taken by `run_many`) warns with a
    `RuntimeWarning`, as a coroutine never awaited does; `close()` discards one on purpose.

    Every way of waiting ends within `PollPolicy.deadline` of the job's first send. A caller who gives
    up on a job (cancels it, or a `run_many` around it) finds what the provider may hold in
    `job.task_id` (the task, once its id is known) and `job.sent_at` (when it was first sent; with no
    task id, the task may still exist: `await client.find_task(job, since=job.sent_at)`).
    """

    #: Whether a job collected unsent should warn: not until `__init__` has accepted its request
    #: (a refused one never was a job), and no more once it is sent, handed over or closed.
    _owes_send = False

    def __init__(self, core: Core, kind: type[R], request: JobRequest) -> None:
        core.provider.check(request)
        self._core = core
        self._kind = kind
        self._request = request
        self._sent = False
        self._closed = False
        self._record = SendRecord(core.poll.deadline)
        self._owes_send = True

    def __del__(self) -> None:
        if self._owes_send:
            warnings.warn(
                f"Job {_call_of(self._kind, self._request)} was never awaited or sent",
                RuntimeWarning,
                stacklevel=1,  # a collection has no caller of the job's to point at
                source=self,
            )

    def close(self) -> None:
        """Discard the job without sending it (one built only to look at): no warning when it is
        collected, and sending it later raises `RuntimeError`. Closing a sent job changes nothing."""
        if not self._sent:
            self._closed = True
        self._owes_send = False

    def _hand_over(self) -> None:
        """Someone who reports the job's fate (`run_many`) has taken it: collected unsent, it keeps quiet."""
        self._owes_send = False

    @property
    def task_id(self) -> str | None:
        """The provider's id for this job, from the moment it is known; None before."""
        return self._record.task_id

    @property
    def sent_at(self) -> float | None:
        """Unix time of the job's first send (noted just before it went out); None if never sent."""
        return self._record.sent_at

    @property
    def orphan_sent_at(self) -> float | None:
        """Unix time of an earlier send of this job that may have made a task of its own before the job
        was sent again, which only `RetryPolicy(on_ambiguous_submit="resubmit")` allows; None otherwise.

        That task is not the job's (`task_id`); `await client.find_task(job, since=job.orphan_sent_at)`
        looks for it, once the job's own task is known to the client.
        """
        return self._record.orphan_sent_at

    @property
    def request(self) -> JobRequest:
        """The request this job sends."""
        return self._request

    @property
    def kind(self) -> type[R]:
        """The result type this job gives."""
        return self._kind

    def __repr__(self) -> str:
        state = "sent" if self._sent else "not sent"
        return f"<Job {self._kind.kind} action={self._request.action!r} ({state})>"

    def __await__(self) -> Generator[Any, None, R]:
        return self.result().__await__()

    def __aiter__(self) -> JobStream[R]:
        return self.stream()

    async def result(
        self, *, via: WaitVia | None = None, on_task_id: Callable[[str], None] | None = None
    ) -> R:
        """Send the job and return its final result, getting it `via` a stream, polling, one long wait
        or a callback (the client's default: `wait_via`).

        A provider without progress streams follows a "stream" by polling, and one without long waits
        polls for "sync". `on_task_id` is called once with the provider's task id as soon as it is
        known (to journal it, say). The job holds one of the client's in-flight slots from its submit
        to its result. `WaitTimeoutError` is raised `PollPolicy.deadline` seconds after the first send.
        """
        self._owes_send = False  # awaited: a refusal below is the caller's news, not a silent loss
        core = self._core
        asked = via
        via = via or core.wait_via
        if via not in ("stream", "poll", "sync", "callback"):
            raise InvalidRequestError(f"via must be 'stream', 'poll', 'sync' or 'callback', not {via!r}")
        if via == "callback" and asked is None and self._request.callback_url is not None:
            via = "poll"  # the client's default; this job's callbacks go to your own URL
        if via == "callback":
            if core.callbacks is None:
                raise InvalidRequestError(
                    "via='callback' needs a receiver: Client(webhooks=WebhookReceiver(...))"
                )
            if self._request.callback_url is not None:
                raise InvalidRequestError(
                    "this job sends its callbacks to its own callback_url; wait via 'poll', or drop callback_url"
                )
        if via == "sync" and not core.provider.long_waits:
            via = "poll"
        if not self._sent:  # a second use raises below, and must not take over the first's listener
            self._record.on_task_id = on_task_id
        if via == "stream":
            async with self.stream() as updates:
                async for _ in updates:
                    pass
            if updates.final is None:
                raise StreamInterruptedError(
                    "the updates ended without a final result",
                    task_id=updates.task_id,
                    last_update=updates.last,
                )
            return updates.final
        async with self._core.limiter.slot(self):
            if via in ("poll", "callback"):
                with self._record.bounded():
                    handle = await self._submit(callbacks=via == "callback")
                    result = await handle.wait()
            else:
                # Bounded by the job's deadline without a cancel scope on the usual path (`_long_wait`).
                result = await self._long_wait()
            self._core.limiter.succeeded()  # while the slot is held: its level counts this job
        return result

    def stream(self) -> JobStream[R]:
        """Send the job and iterate its progress updates (AceData: an ndjson stream).

        If the stream breaks after its first line, the same iterator carries on by polling the task:
        no second submit, no duplicate updates. A provider without streams is followed by polling
        from the start. With a `WebhookReceiver` on the client, the job is submitted with a callback
        and its progress callbacks feed the iterator; polling is only the fallback.
        """
        self._claim()
        core = self._core
        inbox, target, close = core.open_inbox(self._kind, self._request, progress=True)
        wire = core.provider.job_request(self._request, via="stream", callback=target)
        return JobStream(
            core,
            self._kind,
            self._request,
            wire.path,
            wire.body,
            wire.headers,
            record=self._record,
            inbox=inbox,
            close_route=close,
        )

    async def submit(self) -> TaskHandle[R]:
        """Send the job asynchronously and return its handle at once.

        With a `WebhookReceiver` on the client (and no `callback_url` of your own) the provider is
        asked to call back, and the handle waits for that, polling only if it is late. The submit
        takes at most `Timeouts.total`; the handle's wait ends `PollPolicy.deadline` after the first
        send.
        """
        return await self._submit(callbacks=True)

    async def _submit(self, *, callbacks: bool) -> TaskHandle[R]:
        self._claim()
        core = self._core
        inbox, target, close = (
            core.open_inbox(self._kind, self._request, progress=False)
            if callbacks
            else (None, None, _nothing)
        )
        via: WaitVia = "callback" if target is not None else "poll"
        wire = core.provider.job_request(self._request, via=via, callback=target)
        try:
            task_id, retries = await submit_for_task_id(
                core, wire.path, wire.body, wire.headers, self._request, record=self._record
            )
        except BaseException:
            close()
            raise
        if inbox is not None:
            inbox.expect(task_id)
        return TaskHandle(
            core,
            self._kind,
            task_id,
            first_poll_delay=core.poll.initial_interval,
            retries_taken=retries,
            inbox=inbox,
            close_route=close,
            record=self._record,
        )

    async def _long_wait(self) -> R:
        self._claim()
        core = self._core
        wire = core.provider.job_request(self._request, via="sync")
        path = wire.path
        server_timeout = self._request.timeout or DEFAULT_SERVER_TIMEOUT
        # Read longer than the server waits, so its 504 (which keeps the task retrievable) arrives first.
        read = server_timeout + core.transport.timeouts.long_wait_margin

        async def send() -> R:
            # The request's own overall timeout ends it at the job's deadline (the first send is noted).
            answer = await core.transport.post(
                path,
                wire.body,
                headers=wire.headers,
                read_timeout=read,
                total_timeout=self._record.time_left(),
            )
            # Read inside the attempt: an answer that cannot be decoded (or that is not final) came
            # from a server that got the submit, so its task is looked up rather than lost.
            result = core.provider.decode_result(self._kind, answer.body, request=f"POST {path}")
            if result.failed:
                raise core.provider.job_failed(result, request=f"POST {path}")
            if not result.is_final:
                raise ResponseDecodeError(
                    "synchronous call answered before the job finished",
                    body=answer.body,
                    task_id=result.task_id,
                )
            return result

        # The wait itself is the answer, so no `Timeouts.total` budget: the job's deadline bounds it,
        # the request itself and every other wait in `submit_with_retries`; a resumed one by polling.
        answer, retries = await submit_with_retries(
            core, send, self._request, record=self._record, budget=None
        )
        if isinstance(answer, Resumed):
            # The long wait was cut short (a 504, a dropped connection) but the task exists: poll it,
            # within the deadline that started with the first send.
            core.known_tasks.add(answer.task_id)
            self._record.accept(answer.task_id)
            handle = TaskHandle(core, self._kind, answer.task_id, retries_taken=retries, record=self._record)
            return await handle.wait()
        result = answer
        if result.task_id:
            core.known_tasks.add(result.task_id)
            self._record.accept(result.task_id)
        return with_retries_taken(result, retries)

    def _claim(self) -> None:
        if self._closed:
            raise RuntimeError("this job was closed; build a new one to send it")
        if self._sent:
            raise RuntimeError(
                "this job was already sent; build a new one (sending it again would pay for it twice)"
            )
        self._sent = True
        self._owes_send = False


#: How much of a prompt (or other argument) a never-sent job's warning shows.
_CALL_ARGUMENT_CHARS = 40


def _call_of(kind: type[Result], request: JobRequest) -> str:
    """The call that made a job, for a warning about it: `imagine('a cat')`, `upscale2('img-1')`."""
    name = kind.kind if request.action == "generate" else request.action
    subject = request.prompt or getattr(request, "image_id", None) or getattr(request, "video_id", None)
    if not subject:
        return f"{name}()"
    # Held secrets never show; a long prompt is cut (the start says which job it was).
    text = redact(subject)
    if len(text) > _CALL_ARGUMENT_CHARS:
        text = text[: _CALL_ARGUMENT_CHARS - 1] + "…"
    return f"{name}({text!r})"


class TaskHandle(Generic[R]):
    """A submitted job, known by its `task_id`: wait on it, follow its progress, or read its record.

    Waiting polls the tasks endpoint when the job's progress says it is likely done (see
    `PollPolicy`); handles waiting at the same time share one batched lookup per round. By default a
    wait ends `PollPolicy.deadline` seconds after the job's first send (for a handle made from a bare
    task id, after its first wait began), and sooner with
    `TaskNotFoundError` when lookup after lookup the provider has no record of the task.
    """

    def __init__(
        self,
        core: Core,
        kind: type[R],
        task_id: str,
        *,
        first_poll_delay: float = 0.0,
        retries_taken: int = 0,
        inbox: CallbackInbox[R] | None = None,
        close_route: Callable[[], None] = _nothing,
        record: SendRecord | None = None,
    ) -> None:
        self._core = core
        self._kind = kind
        self._first_poll_delay = first_poll_delay
        self._inbox = inbox
        self._close_route = close_route
        #: Where the default deadline counts from: the job's first send, else the first wait.
        self._started_at = record.sent_clock if record is not None else None
        #: The provider's id for this job.
        self.task_id = task_id
        #: Retries its submit took.
        self.retries_taken = retries_taken

    def __repr__(self) -> str:
        return f"<TaskHandle {self._kind.kind} task_id={self.task_id!r}>"

    def __await__(self) -> Generator[Any, None, R]:
        return self.wait().__await__()

    async def record(self) -> TaskRecord[R]:
        """The task record as it stands now."""
        core = self._core
        wire = core.provider.task_request(self.task_id)
        response = await call_with_retries(core, lambda: core.transport.post(wire.path, wire.body))
        record: TaskRecord[R] = core.provider.decode_task(response.body, self._kind)
        return record

    def updates(self, *, deadline: float | NotGiven | None = NOT_GIVEN) -> TaskUpdates[R]:
        """Iterate the task's progress by polling: each newer update, then the final result.

        `deadline` (seconds from now; None for none) defaults to the client's `PollPolicy.deadline`
        counted from the job's first send.
        """
        if isinstance(deadline, NotGiven):
            if self._started_at is None:
                self._started_at = self._core.clock()
            limit, started_at = self._core.poll.deadline, self._started_at
        else:
            limit, started_at = deadline, None
        cursor = PollCursor(
            self._core,
            self._kind,
            self.task_id,
            first_poll_delay=self._first_poll_delay,
            deadline=limit,
            started_at=started_at,
        )
        if self._inbox is None:
            return TaskUpdates(cursor, self.retries_taken)
        return TaskUpdates(
            CallbackFollower(self._core, self._inbox, cursor, self._stop_listening), self.retries_taken
        )

    def _stop_listening(self) -> None:
        # Once over (or given up on), later waits poll: the route is gone.
        self._inbox = None
        self._close_route()

    async def wait(self, *, deadline: float | NotGiven | None = NOT_GIVEN) -> R:
        """Wait until the job finishes (by callback if it was submitted with one, else by polling) and
        return its result; raise `JobFailedError` if it failed.

        `deadline` (seconds from now; None for none) defaults to the client's `PollPolicy.deadline`
        counted from the job's first send; when it runs out, `WaitTimeoutError` is raised and the job
        may still finish later. A task the provider keeps not knowing raises `TaskNotFoundError`.
        """
        result: R | None = None
        async for update in self.updates(deadline=deadline):
            result = update
        assert result is not None
        return result


class TaskUpdates(Generic[R]):
    """An async iterator over a task's polled updates, ending with its final result."""

    def __init__(self, cursor: PollCursor[R] | CallbackFollower[R], retries_taken: int) -> None:
        self._cursor = cursor
        self._retries_taken = retries_taken

    def __aiter__(self) -> TaskUpdates[R]:
        return self

    async def __anext__(self) -> R:
        if self._cursor.done:
            raise StopAsyncIteration
        update = await self._cursor.next()
        return with_retries_taken(update, self._retries_taken) if self._cursor.done else update
