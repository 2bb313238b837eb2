"""Client floor: a long-running job (imagine, edits, videos) and the three ways to get its result."""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeAlias, TypeVar

from ._attempts import SendRecord
from ._callbacks import CallbackFollower
from ._config import DEFAULT_SERVER_TIMEOUT
from ._engine import Engine, Resumed, with_retries_taken
from ._exceptions import InvalidRequestError, ResponseDecodeError
from ._inbox import Subscription
from ._models.requests import AnyRequest, JobRequest
from ._models.results import (
    EditsResult,
    EditsUpdate,
    ImagineResult,
    ImagineUpdate,
    Result,
    VideoResult,
    VideoUpdate,
    finalize,
)
from ._models.task import TaskRecord
from ._poller import PollCursor
from ._redact import redact
from ._sending import inline_images, job_wire, submit_for_task
from ._stream import JobStream
from ._types import NOT_GIVEN, NotGiven, WaitVia

__all__ = [
    "EditsJob",
    "ImagineHandle",
    "ImagineJob",
    "Job",
    "TaskHandle",
    "TaskUpdates",
    "VideoJob",
    "short_call",
]

#: A job's final result type, and the updates it reports on the way (`ImagineResult`, `ImagineUpdate`).
R = TypeVar("R", bound=Result)
U = TypeVar("U", bound=Result)


class Job(Generic[R, U]):
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

    def __init__(self, engine: Engine, kind: type[R], update_type: type[U], request: JobRequest) -> None:
        # `request` comes from a `_requests` builder, which has checked it with the provider already.
        self._engine = engine
        self._kind = kind
        self._update_type = update_type
        self._request = request
        self._sent = False
        self._closed = False
        self._record = SendRecord(engine.poll.deadline, clock=engine.clock)
        #: This job's own token in its request (`Provider.job_request`): the same in each of its sends,
        #: and in no other job's, so a lost answer's lookup finds this job's task, never a sibling's.
        self._nonce = new_nonce()
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

    def _sent_nonce(self) -> str | None:
        """The nonce this job's sends carried (`Client.find_task` looks for exactly its task); None
        when it was never sent, so a lookup matches any job of its request (a job rebuilt after a crash)."""
        return self._nonce if self._record.sent_at is not None else None

    @property
    def kind(self) -> type[R]:
        """The result type this job gives."""
        return self._kind

    def __repr__(self) -> str:
        state = "sent" if self._sent else "not sent"
        return f"<Job {self._kind.kind} action={self._request.action!r} ({state})>"

    def __await__(self) -> Generator[Any, None, R]:
        return self.result().__await__()

    def __aiter__(self) -> JobStream[R, U]:
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
        engine = self._engine
        asked = via
        via = via or engine.wait_via
        if via not in ("stream", "poll", "sync", "callback"):
            raise InvalidRequestError(f"via must be 'stream', 'poll', 'sync' or 'callback', not {via!r}")
        if via == "callback" and asked is None and self._request.callback_url is not None:
            via = "poll"  # the client's default; this job's callbacks go to your own URL
        if via == "callback":
            if engine.callbacks is None:
                raise InvalidRequestError(
                    "via='callback' needs a receiver: Client(webhooks=WebhookReceiver(...))"
                )
            if self._request.callback_url is not None:
                raise InvalidRequestError(
                    "this job sends its callbacks to its own callback_url; wait via 'poll', or drop callback_url"
                )
        if via == "sync" and not engine.provider.long_waits:
            via = "poll"
        if not self._sent:  # a second use raises below, and must not take over the first's listener
            self._record.on_task_id = on_task_id
        if via == "stream":
            async with self.stream() as updates:
                async for _ in updates:
                    pass
            return updates.final  # raises `StreamInterruptedError` if the updates ended without it
        async with self._engine.limiter.slot(self):
            if via in ("poll", "callback"):
                with self._record.bounded():
                    handle = await self._submit(callbacks=via == "callback")
                    result = await handle.wait()
            else:
                # Bounded by the job's deadline without a cancel scope on the usual path (`_long_wait`).
                result = await self._long_wait()
            self._engine.limiter.succeeded()  # while the slot is held: its level counts this job
        return result

    def stream(self) -> JobStream[R, U]:
        """Send the job and iterate its progress updates (AceData: an ndjson stream).

        If the stream breaks after its first line, the same iterator carries on by polling the task:
        no second submit, no duplicate updates. A provider without streams is followed by polling
        from the start. With a `WebhookReceiver` on the client, the job is submitted with a callback
        and its progress callbacks feed the iterator; polling is only the fallback.
        """
        self._claim()
        engine = self._engine
        subscription = engine.subscribe(self._update_type, self._request, progress=True)
        target = None if subscription is None else subscription.target
        provider = engine.provider
        # With images to fetch first, the stream builds its request itself, on its first step.
        wire = (
            None
            if provider.image_urls(self._request)
            else provider.job_request(self._request, via="stream", callback=target, nonce=self._nonce)
        )
        return JobStream(
            engine,
            self._kind,
            self._update_type,
            self._request,
            wire,
            record=self._record,
            subscription=subscription,
            nonce=self._nonce,
        )

    async def submit(self) -> TaskHandle[R, U]:
        """Send the job asynchronously and return its handle at once.

        With a `WebhookReceiver` on the client (and no `callback_url` of your own) the provider is
        asked to call back, and the handle waits for that, polling only if it is late. The submit
        takes at most `Timeouts.total`; the handle's wait ends `PollPolicy.deadline` after the first
        send.
        """
        return await self._submit(callbacks=True)

    async def _submit(self, *, callbacks: bool) -> TaskHandle[R, U]:
        self._claim()
        engine = self._engine
        subscription = (
            engine.subscribe(self._update_type, self._request, progress=False) if callbacks else None
        )
        provider, request, nonce = engine.provider, self._request, self._nonce
        via: WaitVia = "poll" if subscription is None else "callback"
        target = None if subscription is None else subscription.target
        try:
            if provider.image_urls(request):
                wire = await job_wire(engine, request, via=via, callback=target, nonce=nonce)
            else:
                wire = provider.job_request(request, via=via, callback=target, nonce=nonce)
            attempted = await submit_for_task(engine, wire, request, log=self._record, nonce=nonce)
        except BaseException:
            if subscription is not None:
                subscription.close()
            raise
        if subscription is not None:
            subscription.expect(attempted.value)
        return TaskHandle(
            engine,
            self._kind,
            self._update_type,
            attempted.value,
            first_poll_delay=engine.poll.initial_interval,
            retries_taken=attempted.retries_taken,
            subscription=subscription,
            record=self._record,
        )

    async def _long_wait(self) -> R:
        self._claim()
        engine = self._engine
        transport, provider = engine.transport, engine.provider
        if provider.image_urls(self._request):
            wire = await job_wire(engine, self._request, via="sync", callback=None, nonce=self._nonce)
        else:
            wire = provider.job_request(self._request, via="sync", nonce=self._nonce)
        path = wire.path
        server_timeout = self._request.timeout or DEFAULT_SERVER_TIMEOUT
        # Read longer than the server waits, so its 504 (which keeps the task retrievable) arrives first.
        read = server_timeout + transport.timeouts.long_wait_margin

        async def send() -> R:
            # The request's own overall timeout ends it at the job's deadline (the first send is noted).
            answer = await transport.post(
                path,
                wire.body,
                headers=wire.headers,
                read_timeout=read,
                total_timeout=self._record.time_left(),
            )
            # Read inside the attempt: an answer that cannot be decoded (or that is not final) came
            # from a server that got the submit, so its task is looked up rather than lost.
            update = provider.decode_result(self._update_type, answer.body, request=f"POST {path}")
            if update.failed:
                raise provider.job_failed(update, request=f"POST {path}")
            if not update.is_final:
                raise ResponseDecodeError(
                    "synchronous call answered before the job finished",
                    body=answer.body,
                    task_id=update.task_id,
                )
            return finalize(self._kind, update)

        # The wait itself is the answer, so no `Timeouts.total` budget: the job's deadline bounds it,
        # the request itself and every other wait in `Engine.submit`; a resumed one by polling.
        attempted = await engine.submit(send, self._request, log=self._record, budget=None, nonce=self._nonce)
        answer, retries = attempted.value, attempted.retries_taken
        if isinstance(answer, Resumed):
            # The long wait was cut short (a 504, a dropped connection) but the task exists: poll it,
            # within the deadline that started with the first send.
            engine.known_tasks.add(answer.task_id)
            self._record.accept(answer.task_id)
            handle = TaskHandle(
                engine,
                self._kind,
                self._update_type,
                answer.task_id,
                retries_taken=retries,
                record=self._record,
            )
            return await handle.wait()
        result = answer
        if result.task_id:
            engine.known_tasks.add(result.task_id)
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


def new_nonce() -> str:
    """A fresh random token for one job's (or one task-making call's) requests: 64 bits, so two jobs
    of one account never share one."""
    return secrets.token_hex(8)


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


class TaskHandle(Generic[R, U]):
    """A submitted job, known by its `task_id`: wait on it, follow its progress, or read its record.

    Waiting polls the tasks endpoint when the job's progress says it is likely done (see
    `PollPolicy`); handles waiting at the same time share one batched lookup per round. By default a
    wait ends `PollPolicy.deadline` seconds after the job's first send (for a handle made from a bare
    task id, after its first wait began), and sooner with
    `TaskNotFoundError` when lookup after lookup the provider has no record of the task.
    """

    def __init__(
        self,
        engine: Engine,
        kind: type[R],
        update_type: type[U],
        task_id: str,
        *,
        first_poll_delay: float = 0.0,
        retries_taken: int = 0,
        subscription: Subscription[U] | None = None,
        record: SendRecord | None = None,
    ) -> None:
        self._engine = engine
        self._kind = kind
        self._update_type = update_type
        self._first_poll_delay = first_poll_delay
        self._subscription = subscription
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

    async def record(self) -> TaskRecord[U]:
        """The task record as it stands now."""
        provider = self._engine.provider
        response = await self._engine.post(provider.task_request(self.task_id))
        record: TaskRecord[U] = provider.decode_task(response.value.body, self._update_type)
        return record

    def updates(self, *, deadline: float | NotGiven | None = NOT_GIVEN) -> TaskUpdates[R, U]:
        """Iterate the task's progress by polling: each newer update, then the final result.

        `deadline` (seconds from now; None for none) defaults to the client's `PollPolicy.deadline`
        counted from the job's first send.
        """
        if isinstance(deadline, NotGiven):
            if self._started_at is None:
                self._started_at = self._engine.clock()
            limit, started_at = self._engine.poll.deadline, self._started_at
        else:
            limit, started_at = deadline, None
        cursor = PollCursor(
            self._engine,
            self._kind,
            self._update_type,
            self.task_id,
            first_poll_delay=self._first_poll_delay,
            deadline=limit,
            started_at=started_at,
        )
        subscription = self._subscription
        if subscription is None or subscription.closed:
            # Once a wait by callback is over (or given up on), its route is closed: later waits poll.
            return TaskUpdates(cursor, self.retries_taken)
        return TaskUpdates(CallbackFollower(self._engine, subscription, cursor), self.retries_taken)

    async def wait(self, *, deadline: float | NotGiven | None = NOT_GIVEN) -> R:
        """Wait until the job finishes (by callback if it was submitted with one, else by polling) and
        return its result; raise `JobFailedError` if it failed.

        `deadline` (seconds from now; None for none) defaults to the client's `PollPolicy.deadline`
        counted from the job's first send; when it runs out, `WaitTimeoutError` is raised and the job
        may still finish later. A task the provider keeps not knowing raises `TaskNotFoundError`.
        """
        updates = self.updates(deadline=deadline)
        async for _ in updates:
            pass
        return updates.final


class TaskUpdates(Generic[R, U]):
    """An async iterator over a task's polled updates, ending with its final result (also in `final`)."""

    def __init__(self, cursor: PollCursor[R, U] | CallbackFollower[R, U], retries_taken: int) -> None:
        self._cursor = cursor
        self._retries_taken = retries_taken
        self._final: R | None = None

    def __aiter__(self) -> TaskUpdates[R, U]:
        return self

    async def __anext__(self) -> U | R:
        if self._cursor.done:
            raise StopAsyncIteration
        update = await self._cursor.next()
        final = self._cursor.final
        if final is None:
            return update
        self._final = final = with_retries_taken(final, self._retries_taken)
        return final

    @property
    def final(self) -> R:
        """The final result, once it has arrived; raises `RuntimeError` before then."""
        if self._final is None:
            raise RuntimeError("the task has not finished yet: iterate the updates to the end first")
        return self._final


async def short_call(engine: Engine, request: AnyRequest, kind: type[R]) -> R:
    """A short call (describe, shorten, translate, seed): one idempotent POST and its result.

    A provider that runs it as a task (GoAPI's describe and seed) is submitted once and waited on, with
    a deadline counted from the submit as a job's is, holding an in-flight slot like a job.
    """
    provider = engine.provider
    urls = provider.image_urls(request)  # fetched once, before anything is sent
    # Its own, as a job's: a task it makes is told from an identical call's after a lost answer.
    nonce = new_nonce()
    call = provider.call_request(
        request, images=await inline_images(engine, urls) if urls else None, nonce=nonce
    )
    if call.as_task:
        record = SendRecord(engine.poll.deadline, clock=engine.clock)
        async with engine.limiter.slot(request):
            attempted = await submit_for_task(engine, call, request, log=record, nonce=nonce)
            handle = TaskHandle(
                engine,
                kind,
                kind,
                attempted.value,
                first_poll_delay=engine.poll.initial_interval,
                retries_taken=attempted.retries_taken,
                record=record,
            )
            return await handle.wait()
    response = await engine.post(call)
    result = provider.decode_result(kind, response.value.body, request=f"POST {call.path}")
    if result.failed:
        raise provider.job_failed(result, request=f"POST {call.path}")
    return with_retries_taken(result, response.retries_taken)


#: The jobs and handles the client makes, by what they give: aliases to annotate with.
ImagineJob: TypeAlias = Job[ImagineResult, ImagineUpdate]
EditsJob: TypeAlias = Job[EditsResult, EditsUpdate]
VideoJob: TypeAlias = Job[VideoResult, VideoUpdate]
ImagineHandle: TypeAlias = TaskHandle[ImagineResult, ImagineUpdate]
