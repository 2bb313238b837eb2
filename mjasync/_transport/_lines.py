"""I/O layer: decoded updates from a streaming ndjson response, through our own splitter and decoder."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

import aiohttp

from .._ndjson import NdjsonDecoder
from ._send import raise_connection_error

__all__ = ["LineReader"]

T = TypeVar("T")


class LineReader(Generic[T]):
    """Reads an open response chunk by chunk and hands out the decoded values of its lines one at a time.

    aiohttp's own `readline` caps lines at twice its read buffer and its behaviour has moved between
    versions; our splitter has one documented limit and is tested at every byte offset. Each chunk's
    lines are decoded together (see `NdjsonDecoder` for `decode_run` and `decode_line`).
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        *,
        decode_run: Callable[[bytes | memoryview], list[T] | None],
        decode_line: Callable[[bytes, int], T],
        max_line_bytes: int,
        request: str,
    ) -> None:
        self._response = response
        self._decoder = NdjsonDecoder(decode_run, decode_line, max_line_bytes)
        # The values of the last chunk and the next one to hand out: a list the decoder built anyway,
        # not a deque per stream (with 10,000 streams open a deque's block is most of a stream's memory).
        self._ready: list[T] = []
        self._next = 0
        self._eof = False
        self._request = request

    def buffered(self) -> T | None:
        """The next value if its chunk is already decoded, without waiting; None when more must be read."""
        if self._next < len(self._ready):
            value = self._ready[self._next]
            self._next += 1
            return value
        return None

    async def next_update(self) -> T | None:
        """The next decoded line, or None at the end of the body."""
        while self._next >= len(self._ready):
            # A bad line already seen is raised now, not when the next chunk happens to arrive.
            self._decoder.check()
            if self._eof:
                return None
            try:
                chunk = await self._response.content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise_connection_error(exc, self._request, sent=True)
            self._next = 0
            if chunk:
                self._ready = self._decoder.feed(chunk)
            else:
                self._eof = True
                self._ready = []
                # The tail is one line, so finish() either returns its values or raises: no error is
                # left pending for a call that will not come.
                self._ready = self._decoder.finish()
        value = self._ready[self._next]
        self._next += 1
        return value
