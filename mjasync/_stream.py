"""Client layer: a job's ndjson progress as an async iterator of decoded Structs, resumed by polling."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._attempts import (
    Resumed,
    SendRecord,
    reconcile_submit,
    submit_for_task_id,
    submit_with_retries,
    with_retries_taken,
)
from ._callbacks import CallbackFollower, CallbackInbox
from ._exceptions import (
    APIConnectionError,
    LineTooLongError,
    MalformedLineError,
    MJError,
    StreamInterruptedError,
)
from ._models.requests import JobRequest
from ._models.results import Result
from ._poller import PollCursor
from ._transport import LineReader

if TYPE_CHECKING:
    from aiohttp import ClientResponse

    from ._job import Core
    from ._providers import Provider

__all__ = ["JobStream"]

R = TypeVar("R", bound=Result)

#: Failures that break a stream without the provider saying the job failed.
_BREAKS = (APIConnectionError, StreamInterruptedError, MalformedLineError, LineTooLongError)


@functools.lru_cache(maxsize=64)
def _update_decoders(
    provider: Provider, kind: type[R]
) -> tuple[Callable[[bytes | memoryview], list[R] | None], Callable[[bytes, int], R]]:
    """The provider's decoders for one result type, made once rather than as closures per stream."""
    return functools.partial(provider.decode_updates, kind), functools.partial(provider.decode_update, kind)


class JobStream(Generic[R]):
    """Progress updates of one job, one Struct per ndjson line; the last one is the final result.

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
        core: Core,
        kind: type[R],
        request: JobRequest,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        record: SendRecord | None = None,
        inbox: CallbackInbox[R] | None = None,
        close_route: Callable[[], None] | None = None,
    ) -> None:
        self._core = core
        #: The job's first send and task id (shared with its `Job`); the deadline counts from there.
        self._record = record if record is not None else SendRecord(core.poll.deadline)
        self._inbox = inbox
        self._close_route = close_route
        self._kind = kind
        self._request = request
        self._path = path
        self._body = body
        self._headers = headers
        self._reader: LineReader[R] | None = None
        self._release: Callable[[], None] | None = None
        self._cursor: PollCursor[R] | CallbackFollower[R] | None = None
        self._holds_slot = False
        self._finished = False
        self._retries = 0
        #: When the current stream was sent (wall clock): a lookup after a break searches from here.
        self._sent_at = 0.0
        #: The most recent update.
        self.last: R | None = None
        #: The final result, once it has arrived.
        self.final: R | None = None
        #: Whether the stream broke and the rest came from polling.
        self.resumed = False

    @property
    def task_id(self) -> str | None:
        """The job's task id, from the moment it is known (the first line, or the submit's answer)."""
        return self._record.task_id

    async def __aenter__(self) -> JobStream[R]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()  # what `aclose` does, without a coroutine of its own

    def __aiter__(self) -> JobStream[R]:
        return self

    async def __anext__(self) -> R:
        """The next update; every wait in it ends at the job's deadline.

        Opening the stream and reading its lines, the hot path, are bounded by the connection's own
        overall timeout (set to the time left when the stream was sent: one timer per stream, none per
        line); polling by the cursor's deadline; what follows a failed send by `submit_with_retries`,
        a submit to follow and settling a break by a cancel scope.

        One coroutine, not one per step: a job's waiting frames are most of what it holds while a
        fan-out of thousands of streams ramps up, and each level costs every update a frame.
        """
        if self._finished:
            raise StopAsyncIteration
        try:
            deadline_at = self._record.deadline_at
            if deadline_at is not None and time.monotonic() >= deadline_at:
                # Checked here too: lines already buffered are handed out without a checkpoint to cancel.
                raise self._record.timed_out()
            reader = self._reader
            if reader is not None and (update := reader.buffered()) is not None:
                # Lines of a chunk already read and decoded: handed out here, with no wait.
                admitted = self._admit(update)
                if admitted is not None:
                    return self._note(admitted)
            if not self._holds_slot:
                await self._core.limiter.acquire(self)
                self._holds_slot = True
            while True:
                if self.final is not None and self._reader is None:
                    raise StopAsyncIteration
                if self._cursor is not None:
                    return self._note(await self._next_polled())
                if self._reader is None:
                    await self._open()
                    continue
                try:
                    update = await self._reader.next_update()
                    if update is None:
                        if self.final is None:
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
                    if self.final is not None:
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
        core = self._core
        if not core.provider.streams or self._inbox is not None:
            # With a callback the provider answers with a task id at once and sends the progress
            # there (AceData: every ndjson line; GoAPI: `notify_progress`).
            with self._record.bounded():
                await self._submit_to_follow()
            return
        self._sent_at = time.time()
        # No `Timeouts.total` budget: the stream is the wait itself (its headers may wait on a queue),
        # and the job's deadline bounds it: the connection's own overall timeout, the time left then.
        answer, retries = await submit_with_retries(
            core, self._send, self._request, record=self._record, budget=None
        )
        self._retries += retries
        if isinstance(answer, Resumed):
            self._resume(answer.task_id)
            return
        self._release = answer.release
        decode_run, decode_line = _update_decoders(core.provider, self._kind)
        self._reader = LineReader(
            answer,
            decode_run=decode_run,
            decode_line=decode_line,
            max_line_bytes=core.max_line_bytes,
            request=f"POST {self._path}",
        )

    def _send(self) -> Coroutine[Any, Any, ClientResponse]:
        """One send of the stream's request (a bound method, not a closure made per stream)."""
        transport = self._core.transport
        timeout = transport.client_timeout(
            read=transport.timeouts.stream_read, total=self._record.time_left()
        )
        return transport.open(self._path, self._body, headers=self._headers, timeout=timeout)

    async def _submit_to_follow(self) -> None:
        """Submit, then follow the task by callback or by polling (no progress stream to read)."""
        core = self._core
        task_id, retries = await submit_for_task_id(
            core, self._path, self._body, self._headers, self._request, record=self._record
        )
        self._retries += retries
        self._follow(task_id, first_poll_delay=core.poll.initial_interval)

    def _admit(self, update: R) -> R | None:
        """A line read from the stream, as the update to hand out; None for one past the final result."""
        if self.final is not None:
            return None  # not ours to interpret (a bad line here ends the stream quietly: see __anext__)
        if update.task_id and update.task_id != self._record.task_id:
            self._record.accept(update.task_id)
            self._core.known_tasks.add(update.task_id)
            if self._inbox is not None:
                self._inbox.expect(update.task_id)
        if update.failed:
            raise self._core.provider.job_failed(update, request=f"POST {self._path}")
        return update

    async def _after_break(self, error: MJError) -> None:
        """Carry on after a break: by polling a known task, or after checking the provider's records."""
        if self._record.expired():
            # The connection's own overall timeout (the job's deadline) ended it: that is the answer.
            raise self._record.timed_out() from error
        if self._core.retry.max_retries == 0:
            raise error  # the resilience layer is off
        if self.task_id is not None:
            self._resume(self.task_id)
            return
        # Nothing arrived, so we do not know whether the submit made a task: look it up, from when the
        # stream was sent (a queued job may have kept it silent for many minutes).
        task_id = await reconcile_submit(self._core, self._request, error, self._sent_at, self._retries)
        if task_id is not None:
            self._resume(task_id)
            return
        if self._retries >= self._core.retry.max_retries:
            raise error
        # Proven absent (sending again cannot pay twice), or sent again by the user's choice.
        if self._core.retry.on_ambiguous_submit == "resubmit" and self._record.orphan_sent_at is None:
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
            self._core,
            self._kind,
            task_id,
            first_poll_delay=first_poll_delay,
            seen_progress=-1.0 if seen is None else seen,
            deadline=self._record.deadline,
            started_at=self._record.sent_clock,
        )
        if self._inbox is None:
            self._cursor = cursor
            return
        self._inbox.expect(task_id)
        self._cursor = CallbackFollower(self._core, self._inbox, cursor, self._stop_listening)

    def _stop_listening(self) -> None:
        close, self._close_route = self._close_route, None
        if close is not None:
            close()

    async def _next_polled(self) -> R:
        assert self._cursor is not None
        if self._cursor.done:
            raise StopAsyncIteration
        return await self._cursor.next()

    def _note(self, update: R) -> R:
        self.last = update
        if update.is_final:
            self.final = update
            self._core.limiter.succeeded()
            if self._retries:
                self.final = update = with_retries_taken(update, self._retries)
        return update

    def _drop_connection(self) -> None:
        self._reader = None
        release, self._release = self._release, None
        if release is not None:
            release()

    def _close(self) -> None:
        self._finished = True
        self._drop_connection()
        self._stop_listening()
        if self._holds_slot:
            self._holds_slot = False
            self._core.limiter.release(self)
