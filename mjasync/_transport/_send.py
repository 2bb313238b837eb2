"""I/O layer: one HTTP exchange with the provider — bounded reads, no redirects, typed errors, quiet logs.

Every aiohttp failure becomes an mjasync error here and nowhere else, each saying whether the request
may have reached the server (which decides, later, whether a submit may be retried). The client's
secrets are held in `mjasync._redact` for as long as its transport lives, so every error and every
record of the `mjasync` logger is redacted of them (`RedactingFilter`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple, NoReturn

import aiohttp
from multidict import CIMultiDictProxy

from .._config import Timeouts
from .._exceptions import APIConnectionError, APIError, APIStatusError, APITimeoutError, ResponseDecodeError
from .._redact import RedactingFilter, hold, redact_bytes, redact_cause
from .._types import NOT_GIVEN, NotGiven
from ._pool import SessionPool

__all__ = ["ErrorForStatus", "Transport", "WireResponse", "log"]

log = logging.getLogger("mjasync")
log.addFilter(RedactingFilter())

#: Builds the provider's typed error from (status, headers, body, request description).
ErrorForStatus = Callable[..., APIStatusError]

#: An error body is kept only this far: enough for a message and a trace_id.
_ERROR_BODY_LIMIT = 64 * 1024
_CHUNK = 64 * 1024
_DOWNLOAD_CHUNK = 256 * 1024


class WireResponse(NamedTuple):
    """A finished exchange: status, headers and the whole (bounded) body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class Transport:
    """Sends requests to one provider origin with the client's headers, limits and timeouts."""

    def __init__(
        self,
        pool: SessionPool,
        *,
        base_url: str,
        headers: Mapping[str, str],
        secrets: tuple[str, ...],
        timeouts: Timeouts,
        max_response_bytes: int,
        error_for_status: ErrorForStatus,
    ) -> None:
        self.pool = pool
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        # Never mutated: aiohttp copies the headers it is given into the request's own multidict.
        self._json_headers = {**self._headers, "content-type": "application/json"}
        for secret in secrets:
            hold(self, secret)
        self.timeouts = timeouts
        self.max_response_bytes = max_response_bytes
        self._error_for_status = error_for_status
        # A handful of distinct (read, total) pairs serve every request: build each timeout once.
        self._client_timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    def client_timeout(
        self, *, read: float | None = None, total: float | None = None
    ) -> aiohttp.ClientTimeout:
        """An aiohttp timeout: connect and idle-read limits, and an optional overall limit.

        The overall limit is kept exact (aiohttp would round one over 5 s up to a whole second of the
        loop's clock): it is often the time left to a job's deadline.
        """
        made = self._client_timeouts.get((read, total))
        if made is None:
            made = aiohttp.ClientTimeout(
                total=total,
                sock_connect=self.timeouts.connect,
                sock_read=read or self.timeouts.read,
                ceil_threshold=math.inf,
            )
            # Only the few fixed pairs are kept: `Timeouts.total`, and a job's whole deadline (what its
            # first request gets: a configured whole number of seconds, 900 by default). A time left
            # to a deadline is new every time, and never whole but by chance (then kept, harmlessly).
            fixed = total is None or total == self.timeouts.total or total.is_integer()
            if fixed and len(self._client_timeouts) < 64:
                self._client_timeouts[(read, total)] = made
        return made

    def scrub(self, data: bytes) -> bytes:
        """`data` with every held secret replaced, so no error or log ever carries the API key."""
        return redact_bytes(data)

    def error_for_status(
        self, status: int, headers: Mapping[str, str], body: bytes, *, request: str | None = None
    ) -> APIStatusError:
        """The provider's typed error for a response, with the API key kept out of it.

        The error redacts itself (`MJError`): its message, body, code, and a trace id taken from a
        header, including a key the body echoed with JSON escapes that only decoding turns back into it.
        """
        return self._error_for_status(status, headers, body, request=request)

    async def post(
        self,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
        total_timeout: float | NotGiven | None = NOT_GIVEN,
        method: str = "POST",
    ) -> WireResponse:
        """POST JSON (or send `method`: a GET carries no body) and read the whole answer; a non-2xx
        status raises the provider's typed error.

        `total_timeout` defaults to the client's overall limit; None means no overall limit.
        """
        total = self.timeouts.total if isinstance(total_timeout, NotGiven) else total_timeout
        response = await self.open(
            path,
            body,
            headers=headers,
            timeout=self.client_timeout(read=read_timeout, total=total),
            method=method,
        )
        request = f"{method} {path}"
        try:
            if framed_within(response, self.max_response_bytes):
                # The usual answer, read in one go: one coroutine fewer per request than `read_bounded`.
                data = await response.content.read()
            else:
                data = await read_bounded(response, self.max_response_bytes, request=request)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise_connection_error(exc, request, sent=True)
        finally:
            response.release()
        return WireResponse(response.status, response.headers, data)

    async def open(
        self,
        path: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: aiohttp.ClientTimeout,
        method: str = "POST",
    ) -> aiohttp.ClientResponse:
        """POST `body` as JSON (or send `method`: only a POST carries a body) and return the response
        once its status is good; the caller must release it."""
        request = f"{method} {path}"
        if method == "POST":
            base, data = self._json_headers, body
        else:
            # No body is sent, so there is no content type to declare.
            base, data = self._headers, None
        merged = {**base, **headers} if headers else base
        session = self.pool.session()
        # Timed only for the debug log: one check per request rather than a clock and a log call or two.
        debug = log.isEnabledFor(logging.DEBUG)
        started = time.perf_counter() if debug else 0.0
        try:
            response = await session.request(
                method,
                self.base_url + path,
                data=data,
                headers=merged,
                timeout=timeout,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if debug:
                log.debug("%s failed after %.1f ms: %s", request, _ms(started), type(exc).__name__)
            raise_connection_error(exc, request, sent=None)
        if debug:
            log.debug("%s -> %d (%.1f ms to headers)", request, response.status, _ms(started))
        if response.status >= 300:
            await self._raise_for_status(response, request)
        return response

    async def download(self, url: str, *, max_bytes: int, sink: Callable[[bytes], Awaitable[None]]) -> None:
        """GET a result file (an image, a video) and hand it to `sink` chunk by chunk.

        No credentials go with it, so following a CDN's redirects (5 at most) leaks nothing. It is
        bounded like any call: the client's connect, idle-read and overall `Timeouts`, and `max_bytes`
        (declared or counted), past which `ResponseDecodeError` is raised. A dropped or stalled
        transfer raises `APIConnectionError` / `APITimeoutError`.
        """
        request = "GET " + url.split("?", 1)[0]
        session = self.pool.session()
        started = time.perf_counter()
        try:
            # The overall limit too: a host that drips a byte at a time never trips the idle-read one.
            response = await session.get(
                url,
                timeout=self.client_timeout(total=self.timeouts.total),
                allow_redirects=True,
                max_redirects=5,
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise_connection_error(exc, request, sent=None)
        log.debug("%s -> %d (%.1f ms to headers)", request, response.status, _ms(started))
        if response.status >= 300:
            await self._raise_for_status(response, request)
        try:
            declared = response.content_length
            if declared is not None and declared > max_bytes:
                raise ResponseDecodeError(
                    f"{request} is {declared} bytes, over max_bytes={max_bytes}", request=request
                )
            size = 0
            async for chunk in response.content.iter_chunked(_DOWNLOAD_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ResponseDecodeError(f"{request} is over max_bytes={max_bytes}", request=request)
                await sink(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise_connection_error(exc, request, sent=True)
        finally:
            response.release()

    async def _raise_for_status(self, response: aiohttp.ClientResponse, request: str) -> NoReturn:
        try:
            body = await read_bounded(response, _ERROR_BODY_LIMIT, request=request, truncate=True)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            body = b""
        finally:
            response.release()
        error = self.error_for_status(response.status, response.headers, body, request=request)
        if 300 <= response.status < 400:
            error.message = (
                f"unexpected redirect (HTTP {response.status}); not followed, so credentials stay here"
            )
        raise error


def framed_within(response: aiohttp.ClientResponse, limit: int) -> bool:
    """Whether one unbounded read of the body stays within `limit`: its declared length frames it (aiohttp
    stops there) and nothing inflates it. A compressed body is inflated past its declared length, so a
    small gzip answer could otherwise grow to any size in memory."""
    declared = response.content_length
    if declared is None or declared > limit:
        return False
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    return encoding == "identity"


async def read_bounded(
    response: aiohttp.ClientResponse, limit: int, *, request: str, truncate: bool = False
) -> bytes:
    """Read a body of at most `limit` bytes; past it, raise (or with `truncate`, stop there)."""
    declared = response.content_length
    if declared is not None and declared > limit and not truncate:
        raise ResponseDecodeError(
            f"response body of {declared} bytes is over the {limit}-byte limit",
            status=response.status,
            request=request,
        )
    if framed_within(response, limit):
        return await response.content.read()
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await response.content.read(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            if truncate:
                parts.append(chunk[: len(chunk) - (size - limit)])
                break
            raise ResponseDecodeError(
                f"response body is over the {limit}-byte limit", status=response.status, request=request
            )
        parts.append(chunk)
    return b"".join(parts)


def raise_connection_error(exc: BaseException, request: str, *, sent: bool | None) -> NoReturn:
    """Raise the mjasync error for an aiohttp failure.

    `sent` is what the caller knows: True once the body went out and a response was started, None when
    the phase must be read from the exception.
    """
    reached = True if sent else _may_have_reached(exc)
    name = type(exc).__name__
    if isinstance(exc, APIError):
        raise exc
    # aiohttp quotes a bad status line or header it could not parse, and keeps the request's headers.
    cause = redact_cause(exc)
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        what = "connect" if isinstance(exc, aiohttp.ConnectionTimeoutError) else "read"
        raise APITimeoutError(
            f"{what} timed out ({name})", may_have_reached_server=reached, request=request
        ) from cause
    raise APIConnectionError(
        f"connection failed ({name}: {cause})", may_have_reached_server=reached, request=request
    ) from cause


def _may_have_reached(exc: BaseException) -> bool:
    # A failed or timed-out connect never sent a byte; anything later might have been received.
    return not isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
