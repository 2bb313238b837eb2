"""Client layer: a long-running job (imagine, edits, videos) and the three ways to get its result."""

from __future__ import annotations

import random
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
import backoff

from ._config import DEFAULT_SERVER_TIMEOUT, PollPolicy
from ._exceptions import InvalidRequestError, JobFailedError, ResponseDecodeError, WaitTimeoutError
from ._models.requests import JobRequest
from ._models.results import Result
from ._models.task import TaskRecord
from ._poller import TaskPoller
from ._providers import Provider
from ._stream import JobStream
from ._transport import Transport
from ._types import NOT_GIVEN, NotGiven, WaitVia

__all__ = ["Core", "Job", "TaskHandle"]

R = TypeVar("R", bound=Result)


@dataclass(frozen=True, eq=False)
class Core:
    """What jobs, streams and handles share with the client that made them."""

    provider: Provider
    transport: Transport
    poller: TaskPoller
    poll: PollPolicy
    max_line_bytes: int
    wait_via: WaitVia


class Job(Generic[R]):
    """A long-running request, built and validated but not sent yet. It is sent exactly once.

    - `await job` (or `await job.result(via=...)`) gives the final result;
    - `async with job.stream() as updates: async for u in updates:` gives every progress update;
    - `await job.submit()` gives a `TaskHandle` at once, to wait on later.

    Using a job a second time raises `RuntimeError` rather than paying for the work twice.
    """

    def __init__(self, core: Core, kind: type[R], request: JobRequest) -> None:
        self._core = core
        self._kind = kind
        self._request = request
        self._sent = False

    @property
    def request(self) -> JobRequest:
        """The request this job sends."""
        return self._request

    def __repr__(self) -> str:
        state = "sent" if self._sent else "not sent"
        return f"<Job {self._kind.kind} action={self._request.action!r} ({state})>"

    def __await__(self) -> Generator[Any, None, R]:
        return self.result().__await__()

    def __aiter__(self) -> JobStream[R]:
        return self.stream()

    async def result(self, *, via: WaitVia | None = None) -> R:
        """Send the job and return its final result, getting it `via` a stream (default), polling or one long wait."""
        via = via or self._core.wait_via
        if via == "stream":
            async with self.stream() as updates:
                async for _ in updates:
                    pass
            assert updates.final is not None  # the stream raises when it ends without one
            return updates.final
        if via == "poll":
            return await (await self.submit()).wait()
        if via == "sync":
            return await self._long_wait()
        raise InvalidRequestError(f"via must be 'stream', 'poll' or 'sync', not {via!r}")

    def stream(self) -> JobStream[R]:
        """Send the job with `accept: application/x-ndjson` and iterate its progress updates."""
        self._claim()
        path, body, headers = self._core.provider.job_request(self._request, via="stream")
        return JobStream(self._core, self._kind, path, body, headers)

    async def submit(self) -> TaskHandle[R]:
        """Send the job asynchronously (`async: true`, and the callback if one was set) and return its handle."""
        self._claim()
        path, body, headers = self._core.provider.job_request(self._request, via="poll")
        response = await self._core.transport.post(path, body, headers=headers)
        task_id = self._core.provider.decode_receipt(response.body, request=f"POST {path}")
        return TaskHandle(self._core, self._kind, task_id, first_poll_delay=self._core.poll.initial_interval)

    async def _long_wait(self) -> R:
        self._claim()
        path, body, headers = self._core.provider.job_request(self._request, via="sync")
        server_timeout = self._request.timeout or DEFAULT_SERVER_TIMEOUT
        # Read longer than the server waits, so its 504 (which keeps the task retrievable) arrives first.
        read = server_timeout + self._core.transport.timeouts.long_wait_margin
        response = await self._core.transport.post(
            path, body, headers=headers, read_timeout=read, total_timeout=None
        )
        result = self._core.provider.decode_result(self._kind, response.body, request=f"POST {path}")
        if result.failed:
            raise self._core.provider.job_failed(result, request=f"POST {path}")
        if not result.is_final:
            raise ResponseDecodeError(
                "synchronous call answered before the job finished",
                body=response.body,
                task_id=result.task_id,
            )
        return result

    def _claim(self) -> None:
        if self._sent:
            raise RuntimeError(
                "this job was already sent; build a new one (sending it again would pay for it twice)"
            )
        self._sent = True


class TaskHandle(Generic[R]):
    """A submitted job, known by its `task_id`: wait on it, or look at its record.

    Waiting polls the tasks endpoint with a growing interval; handles waiting at the same time share
    one batched lookup per round.
    """

    def __init__(self, core: Core, kind: type[R], task_id: str, *, first_poll_delay: float = 0.0) -> None:
        self._core = core
        self._kind = kind
        self._first_poll_delay = first_poll_delay
        #: The provider's id for this job.
        self.task_id = task_id

    def __repr__(self) -> str:
        return f"<TaskHandle {self._kind.kind} task_id={self.task_id!r}>"

    def __await__(self) -> Generator[Any, None, R]:
        return self.wait().__await__()

    async def record(self) -> TaskRecord[R]:
        """The task record as it stands now."""
        path, body = self._core.provider.task_request(self.task_id)
        response = await self._core.transport.post(path, body)
        record: TaskRecord[R] = self._core.provider.decode_task(response.body, self._kind)
        return record

    async def wait(self, *, deadline: float | NotGiven | None = NOT_GIVEN) -> R:
        """Poll until the job finishes and return its result; raise `JobFailedError` if it failed.

        `deadline` (seconds; None for none) defaults to the client's `PollPolicy.deadline`; when it
        runs out, `WaitTimeoutError` is raised and the job may still finish later.
        """
        limit = self._core.poll.deadline if isinstance(deadline, NotGiven) else deadline
        with anyio.move_on_after(limit):
            return await self._poll_until_done()
        raise WaitTimeoutError(
            f"task {self.task_id} did not finish within {limit} s (it may still finish)", task_id=self.task_id
        )

    async def _poll_until_done(self) -> R:
        policy = self._core.poll
        intervals = backoff.expo(
            base=policy.factor, factor=policy.initial_interval, max_value=policy.max_interval
        )
        next(intervals)  # backoff's generators start with a bare `yield`
        if self._first_poll_delay > 0:
            await anyio.sleep(self._first_poll_delay)
            next(intervals)
        while True:
            body = await self._core.poller.poll(self.task_id)
            if body is not None:
                record: TaskRecord[R] = self._core.provider.decode_task(body, self._kind)
                state = self._core.provider.task_state(record)
                if state == "succeeded" and record.response is not None:
                    return record.response
                if state == "failed":
                    raise self._failure(record)
            # A little jitter keeps many handles from polling in lockstep rounds forever.
            await anyio.sleep(next(intervals) * (1.0 - 0.1 * random.random()))

    def _failure(self, record: TaskRecord[Any]) -> JobFailedError:
        response = record.response
        if isinstance(response, Result):
            error = self._core.provider.job_failed(response)
        else:
            error = JobFailedError(f"task {self.task_id} failed (state {record.state!r})")
        error.task_id = error.task_id or self.task_id
        return error
