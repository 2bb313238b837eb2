"""Client layer: a job's ndjson progress as an async iterator of decoded Structs."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

from ._exceptions import StreamInterruptedError
from ._models.results import Result
from ._transport import LineReader

if TYPE_CHECKING:
    from ._job import Core

__all__ = ["JobStream"]

R = TypeVar("R", bound=Result)


class JobStream(Generic[R]):
    """Progress updates of one job, one Struct per ndjson line; the last one is the final result.

    Use it as `async with job.stream() as updates: async for update in updates: ...` so the
    connection is released even if you stop early. It is a plain object, not an async generator, so
    nothing is left for the garbage collector to finalise late. The request is sent on the first
    `__anext__`; `task_id` is known from the first line on.
    """

    def __init__(self, core: Core, kind: type[R], path: str, body: bytes, headers: dict[str, str]) -> None:
        self._core = core
        self._kind = kind
        self._path = path
        self._body = body
        self._headers = headers
        self._reader: LineReader | None = None
        self._response_release: Callable[[], None] | None = None
        self._finished = False
        #: The job's task id, once the first line has arrived.
        self.task_id: str | None = None
        #: The most recent update.
        self.last: R | None = None
        #: The final result, once it has arrived.
        self.final: R | None = None

    async def __aenter__(self) -> JobStream[R]:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> JobStream[R]:
        return self

    async def __anext__(self) -> R:
        if self._finished:
            raise StopAsyncIteration
        try:
            reader = self._reader or await self._open()
            while True:
                line = await reader.next_line()
                if line is None:
                    self._end_of_body()
                    raise StopAsyncIteration
                if self.final is not None:
                    continue  # anything after the final line is not ours to interpret
                update = self._core.provider.decode_update(self._kind, line, reader.line_number)
                if update.task_id:
                    self.task_id = update.task_id
                if update.failed:
                    raise self._core.provider.job_failed(update, request=f"POST {self._path}")
                self.last = update
                if update.is_final:
                    self.final = update
                return update
        except StopAsyncIteration:
            raise
        except BaseException:
            # Cancelled or failed mid-read: drop the connection now rather than when collected.
            self._close()
            raise

    async def aclose(self) -> None:
        """Release the connection; idempotent."""
        self._close()

    async def _open(self) -> LineReader:
        timeout = self._core.transport.client_timeout(read=self._core.transport.timeouts.stream_read)
        response = await self._core.transport.open(
            self._path, self._body, headers=self._headers, timeout=timeout
        )
        self._response_release = response.release
        self._reader = LineReader(
            response, max_line_bytes=self._core.max_line_bytes, request=f"POST {self._path}"
        )
        return self._reader

    def _end_of_body(self) -> None:
        self._close()
        if self.final is None:
            raise StreamInterruptedError(
                "the progress stream ended before the final result",
                task_id=self.task_id,
                last_update=self.last,
                request=f"POST {self._path}",
            )

    def _close(self) -> None:
        self._finished = True
        release, self._response_release = self._response_release, None
        if release is not None:
            release()
