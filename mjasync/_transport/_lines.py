"""I/O layer: complete ndjson lines from a streaming response, through our own splitter."""

from __future__ import annotations

import asyncio
from collections import deque

import aiohttp

from .._ndjson import NdjsonSplitter
from ._send import raise_connection_error

__all__ = ["LineReader"]


class LineReader:
    """Reads an open response chunk by chunk and hands out its non-blank lines one at a time.

    aiohttp's own `readline` caps lines at twice its read buffer and its behaviour has moved between
    versions; our splitter has one documented limit and is tested at every byte offset.
    """

    def __init__(self, response: aiohttp.ClientResponse, *, max_line_bytes: int, request: str) -> None:
        self._response = response
        self._splitter = NdjsonSplitter(max_line_bytes)
        self._ready: deque[bytes] = deque()
        self._eof = False
        self._request = request
        #: How many lines have been handed out (for error messages).
        self.line_number = 0

    async def next_line(self) -> bytes | None:
        """The next line, or None at the end of the body."""
        while not self._ready:
            if self._eof:
                return None
            try:
                chunk = await self._response.content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise_connection_error(exc, self._request, sent=True)
            if chunk:
                self._ready.extend(self._splitter.feed(chunk))
            else:
                self._eof = True
                self._ready.extend(self._splitter.finish())
        self.line_number += 1
        return self._ready.popleft()
