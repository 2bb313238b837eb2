"""Client floor: a job's ndjson progress as an async iterator of decoded Structs, resumed by polling."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._attempts import SendRecord
from ._callbacks import CallbackFollower
from ._engine import Engine, Resumed, with_retries_taken
from ._exceptions import (
    APIConnectionError,
    LineTooLongError,
    MalformedLineError,
    MJError,
    StreamInterruptedError,
)
from ._inbox import Subscription
from ._models.requests import JobRequest
from ._models.results import Result, finalize
from ._poller import PollCursor
from ._providers import Provider, WireRequest
from ._sending import job_wire, submit_for_task
from ._transport import LineReader

if TYPE_CHECKING:
    from aiohttp import ClientResponse

__all__ = ["JobStream"]

#: A job's final result type, and the updates it reports on the way (`ImagineResult`, `ImagineUpdate`).
R = TypeVar("R", bound=Result)
U = TypeVar("U", bound=Result)

#: Failures that break a stream without the provider saying the job failed.
_BREAKS = (APIConnectionError, StreamInterruptedError, MalformedLineError, LineTooLongError)


@functools.lru_cache(maxsize=64)
def _update_decoders(
    provider: Provider, kind: type[U]
) -> tuple[Callable[[bytes | memoryview], list[U] | None], Callable[[bytes, int], U]]:
    """The provider's decoders for one result type, made once rather than as closures per stream."""
    return functools.partial(provider.decode_updates, kind), functools.partial(provider.decode_update, kind)


class JobStream(Generic[R, U]):
    """Progress updates of one job, one Struct per ndjson line; the last one is the final result.

    Updates are the provider's snapshots (`ImagineUpdate`: every field may be missing); the last one is
    the final result's type (`ImagineResult`, whose `image_url` is always there), also in `final`.

    Use it as `async with job.stream() as updates: async for update in updates: ...` so the
    connection is released even if you stop early. It is a plain object, not an async generator, so
    nothing is left for the garbage collector to finalise late. The request is sent on the first
    `__anext__`; `task_id` is known from the first line on.

    If the stream breaks after its first line (a dropped connection, a cut, a bad line), iteration
    carries on by polling the task: the remaining updates and the final result arrive without a
    second submit and without repeats (`resumed` turns True). If it breaks before any line, the
    provider's records are checked first, exactly as for any submit of unknown fate.

    Iteration ends with `WaitTimeoutError` `PollPolicy.deadline` seconds after the job's first send,
    however the updates arrive (a stream that never sends its final line, a drip, polling after a
    break): the connection is dropped and `task_id` (if known) names the task, which may still finish.
    """

    def __init__(
        self,
        engine: Engine,
        kind: type[R],
        update_type: type[U],
        request: JobRequest,
        wire: WireRequest | None,
        *,
        record: SendRecord | None = None,
        subscription: Subscription[U] | None = None,
        nonce: str | None = None,
    ) -> None:
        self._engine = engine
        #: The job's nonce, built into `wire` (`Provider.job_request`): a lookup after a break matches it.
        self._nonce = nonce
        #: The job's first send and task id (shared with its `Job`); the deadline counts from there.
        self._record = record if record is not None else SendRecord(engine.poll.deadline, clock=engine.clock)
        self._subscription = subscription
        self._kind = kind
        self._update_type = update_type
        self._request = request
        #: What the stream sends; None until built by `_build_wire` (a job with images to fetch first).
        self._wire = wire
        self._path = "" if wire is None else wire.path
        self._reader: LineReader[U] | None = None
        self._release: Callable[[], None] | None = None
        self._cursor: PollCursor[R, U] | CallbackFollower[R, U] | None = None
        self._holds_slot = False
        self._finished = False
        self._retries = 0
        #: When the current stream was sent (wall clock): a lookup after a break searches from here.
        self._sent_at = 0.0
        #: The most recent update.
        self.last: U | R | None = None
        self._final: R | None = None
        #: Whether the stream broke and the rest came from polling.
        self.resumed = False

    @property
    def final(self) -> R:
        """The final result, once it has arrived (the iteration ended without an error).

        Raises `StreamInterruptedError` before then: the stream was left early, or is not over.
        """
        final = self._final
        if final is None:
            raise StreamInterruptedError(
                "the updates ended without a final result"
                if self._finished
                else "the final result has not arrived yet",
                task_id=self.task_id,
                last_update=self.last,
            )
        return final

    @property
    def finished(self) -> bool:
        """Whether the final result has arrived."""
        return self._final is not None

    @property
    def task_id(self) -> str | None:
        """The job's task id, from the moment it is known (the first line, or the submit's answer)."""
        return self._record.task_id

    async def __aenter__(self) -> JobStream[R, U]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()  # what `aclose` does, without a coroutine of its own

    def __aiter__(self) -> JobStream[R, U]:
        return self

    async def __anext__(self) -> U | R:
        """The next update; every wait in it ends at the job's deadline.

        Opening the stream and reading its lines, the hot path, are bounded by the connection's own
        overall timeout (set to the time left when the stream was sent: one timer per stream, none per
        line); polling by the cursor's deadline; what follows a failed send by `Engine.submit`,
        a submit to follow and settling a break by a cancel scope.

        One coroutine, not one per step: a job's waiting frames are most of what it holds while a
        fan-out of thousands of streams ramps up, and each level costs every update a frame.
        """
        if self._finished:
            raise StopAsyncIteration
        try:
            deadline_at = self._record.deadline_at
            if deadline_at is not None and self._engine.clock() >= deadline_at:
                # Checked here too: lines already buffered are handed out without a checkpoint to cancel.
                raise self._record.timed_out()
            reader = self._reader
            if reader is not None and (update := reader.buffered()) is not None:
                # Lines of a chunk already read and decoded: handed out here, with no wait.
                admitted = self._admit(update)
                if admitted is not None:
                    return self._note(admitted)
            if not self._holds_slot:
                await self._engine.limiter.acquire(self)
                self._holds_slot = True
            while True:
                if self._final is not None and self._reader is None:
                    raise StopAsyncIteration
                if self._cursor is not None:
                    return self._note(await self._next_polled())
                if self._reader is None:
                    await self._open()
                    continue
                try:
                    update = await self._reader.next_update()
                    if update is None:
                        if self._final is None:
                            raise StreamInterruptedError(
                                "the progress stream ended before the final result",
                                task_id=self.task_id,
                                last_update=self.last,
                            )
                        self._drop_connection()
                        raise StopAsyncIteration
                    admitted = self._admit(update)
                except _BREAKS as exc:
                    self._drop_connection()
                    if self._final is not None:
                        raise StopAsyncIteration from None  # broke while draining: we have it all
                    with self._record.bounded():
                        await self._after_break(exc)
                    continue
                if admitted is not None:
                    return self._note(admitted)
        except BaseException:
            # Ended, cancelled or failed: drop the connection and the slot now, not when collected.
            self._close()
            raise

    async def aclose(self) -> None:
        """Release the connection and the in-flight slot; idempotent."""
        self._close()

    async def _open(self) -> None:
        engine = self._engine
        if self._wire is None:
            await self._build_wire()
        if not engine.provider.streams or self._subscription is not None:
            # With a callback the provider answers with a task id at once and sends the progress
            # there (AceData: every ndjson line; GoAPI: `notify_progress`).
            with self._record.bounded():
                await self._submit_to_follow()
            return
        self._sent_at = time.time()
        # No `Timeouts.total` budget: the stream is the wait itself (its headers may wait on a queue),
        # and the job's deadline bounds it: the connection's own overall timeout, the time left then.
        attempted = await engine.submit(
            self._send, self._request, log=self._record, budget=None, nonce=self._nonce
        )
        self._retries += attempted.retries_taken
        answer = attempted.value
        if isinstance(answer, Resumed):
            self._resume(answer.task_id)
            return
        self._release = answer.release
        decode_run, decode_line = _update_decoders(engine.provider, self._update_type)
        self._reader = LineReader(
            answer,
            decode_run=decode_run,
            decode_line=decode_line,
            max_line_bytes=engine.max_line_bytes,
            request=f"POST {self._path}",
        )

    def _send(self) -> Coroutine[Any, Any, ClientResponse]:
        """One send of the stream's request (a bound method, not a closure made per stream)."""
        transport, wire = self._engine.transport, self._wire
        assert wire is not None  # built before the first send (`_open`)
        timeout = transport.client_timeout(
            read=transport.timeouts.stream_read, total=self._record.time_left()
        )
        return transport.open(wire.path, wire.body, headers=wire.headers, timeout=timeout)

    async def _build_wire(self) -> None:
        """Build the request, its images fetched first (once: every retry and resume reuses it)."""
        target = None if self._subscription is None else self._subscription.target
        self._wire = wire = await job_wire(
            self._engine, self._request, via="stream", callback=target, nonce=self._nonce
        )
        self._path = wire.path

    async def _submit_to_follow(self) -> None:
        """Submit, then follow the task by callback or by polling (no progress stream to read)."""
        engine = self._engine
        assert self._wire is not None  # built in `_open`
        attempted = await submit_for_task(
            engine, self._wire, self._request, log=self._record, nonce=self._nonce
        )
        self._retries += attempted.retries_taken
        self._follow(attempted.value, first_poll_delay=engine.poll.initial_interval)

    def _admit(self, update: U) -> U | None:
        """A line read from the stream, as the update to hand out; None for one past the final result."""
        if self._final is not None:
            return None  # not ours to interpret (a bad line here ends the stream quietly: see __anext__)
        if update.task_id and update.task_id != self._record.task_id:
            self._record.accept(update.task_id)
            self._engine.known_tasks.add(update.task_id)
            if self._subscription is not None:
                self._subscription.expect(update.task_id)
        if update.failed:
            raise self._engine.provider.job_failed(update, request=f"POST {self._path}")
        return update

    async def _after_break(self, error: MJError) -> None:
        """Carry on after a break: by polling a known task, or after checking the provider's records."""
        if self._record.expired():
            # The connection's own overall timeout (the job's deadline) ended it: that is the answer.
            raise self._record.timed_out() from error
        if self._engine.retry.max_retries == 0:
            raise error  # the resilience layer is off
        if self.task_id is not None:
            self._resume(self.task_id)
            return
        # Nothing arrived, so we do not know whether the submit made a task: look it up, from when the
        # stream was sent (a queued job may have kept it silent for many minutes).
        task_id = await self._engine.reconcile(
            self._request, error, self._sent_at, self._retries, nonce=self._nonce
        )
        if task_id is not None:
            self._resume(task_id)
            return
        if self._retries >= self._engine.retry.max_retries:
            raise error
        # Proven absent (sending again cannot pay twice), or sent again by the user's choice.
        if self._engine.retry.on_ambiguous_submit == "resubmit" and self._record.orphan_sent_at is None:
            self._record.orphan_sent_at = self._sent_at
        self._retries += 1

    def _resume(self, task_id: str) -> None:
        self.resumed = True
        self._follow(task_id)

    def _follow(self, task_id: str, *, first_poll_delay: float = 0.0) -> None:
        """Carry on from the task's record: by callback when the job has an inbox, else by polling.

        The deadline still counts from the job's first send: a resumed stream gets no fresh one.
        """
        self._record.accept(task_id)
        seen = self.last.progress if self.last is not None and hasattr(self.last, "progress") else None
        cursor = PollCursor(
            self._engine,
            self._kind,
            self._update_type,
            task_id,
            first_poll_delay=first_poll_delay,
            seen_progress=-1.0 if seen is None else seen,
            deadline=self._record.deadline,
            started_at=self._record.sent_clock,
        )
        subscription = self._subscription
        if subscription is None:
            self._cursor = cursor
            return
        subscription.expect(task_id)
        self._cursor = CallbackFollower(self._engine, subscription, cursor)

    async def _next_polled(self) -> U | R:
        assert self._cursor is not None
        if self._cursor.done:
            raise StopAsyncIteration
        return await self._cursor.next()

    def _note(self, update: U | R) -> U | R:
        self.last = update
        if update.is_final:
            final = finalize(self._kind, update)
            if self._retries:
                final = with_retries_taken(final, self._retries)
            self.last = self._final = final
            self._engine.limiter.succeeded()
            return final
        return update

    def _drop_connection(self) -> None:
        self._reader = None
        release, self._release = self._release, None
        if release is not None:
            release()

    def _close(self) -> None:
        self._finished = True
        self._drop_connection()
        if self._subscription is not None:
            self._subscription.close()
        if self._holds_slot:
            self._holds_slot = False
            self._engine.limiter.release(self)
