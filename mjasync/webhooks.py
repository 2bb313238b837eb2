"""Face: a webhook receiver, so that jobs await their provider's callback instead of polling.

```python
receiver = mjasync.WebhookReceiver()
async with receiver.serve(host="127.0.0.1", port=8080):  # or receiver.add_routes(your_app)
    async with mjasync.Client(provider="goapi", webhooks=receiver) as mj:
        grid = await mj.imagine("a lighthouse at dusk")  # resolved by the webhook; polled only if late
```

Each job gets an address of its own (`{public_url}/{token}`, the token random and unguessable) and
the provider POSTs there: AceData's callbacks (the final body, or with a stream every progress line)
and GoAPI's webhooks (the task object, with our secret in `x-webhook-secret`, compared in constant
time). A body is read only up to `max_body_bytes`; a bigger one is answered 413 and the connection
closed without reading the rest. Callbacks for addresses or tasks nobody waits for are acknowledged
and ignored, so the provider stops retrying them; a body that cannot be decoded is answered 400.

`serve()` stays available to genuine callbacks when clients are slow or many: it holds at most
`max_connections` connections (kept below the process's file-descriptor limit, so accepting never
fails for want of descriptors), closing the one idle or slow for longest to make room for a new one;
a connection must send its request head within `header_timeout` seconds, and a body must arrive
whole within `body_timeout` seconds (answered 408 otherwise). Nothing of this is logged per
connection: the counts are in `statistics()`.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import os
import secrets
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import anyio
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from . import _redact
from ._exceptions import InvalidRequestError
from ._inbox import CallbackInbox
from ._models.params import validate_http_url
from ._providers import CALLBACK_SECRET_HEADERS, CallbackTarget

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "ReceiverStatistics",
    "WebhookReceiver",
]

_log = logging.getLogger("mjasync.webhooks")

#: The largest callback body read; a task object with every URL is a few KiB.
DEFAULT_MAX_BODY_BYTES: Final = 256 * 1024
#: How long an address stays open at most, even for a job that waits forever (its poll deadline
#: is used when it has one).
DEFAULT_ROUTE_TTL: Final = 24 * 3600.0
#: Connections `serve()` holds at once (fewer if the file-descriptor limit leaves less room).
DEFAULT_MAX_CONNECTIONS: Final = 1024
#: Seconds a connection has to send a request head (from its opening, or from its previous answer).
DEFAULT_HEADER_TIMEOUT: Final = 10.0
#: Seconds a callback body has to arrive whole, once its head is in.
DEFAULT_BODY_TIMEOUT: Final = 30.0
_CHUNK: Final = 16 * 1024
#: What is read and dropped of a refused body before the connection closes (see `_answer_unread`).
_DRAIN_BYTES: Final = 1024 * 1024
_DRAIN_SECONDS: Final = 1.0
#: File descriptors `serve()` leaves to the rest of the process (its client, files, logs).
_FD_RESERVE: Final = 64
#: accept() errors that mean "no room now" (a descriptor or memory): wait for a connection to close.
_OUT_OF_ROOM: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() errors that mean the listening socket itself is gone.
_BROKEN_LISTENER: Final = frozenset({errno.EBADF, errno.EINVAL, errno.ENOTSOCK})
#: How long accepting pauses at most after running out of room, if no connection closes meanwhile.
_ACCEPT_PAUSE: Final = 1.0
#: Seconds between two warnings that accepting ran out of room (one line, not one per attempt).
_WARN_EVERY: Final = 60.0


@dataclass
class ReceiverStatistics:
    """What a receiver has seen (counts since it was made)."""

    #: Callbacks that arrived.
    received: int = 0
    #: Handed to a waiting job.
    delivered: int = 0
    #: Acknowledged but not for any waiting job (unknown address, another task, no task, after the end).
    ignored: int = 0
    #: Refused: wrong secret (401), too big (413), not a callback body (400), too slow (408).
    rejected: int = 0
    #: Body bytes read in all (bounded per request by `max_body_bytes`).
    bytes_read: int = 0
    #: Addresses open now.
    open_routes: int = 0
    #: Connections `serve()` holds now.
    open_connections: int = 0
    #: Connections `serve()` closed because their request head or body was too slow.
    timed_out: int = 0
    #: Connections `serve()` closed to make room for a new one (the idle or slow one held longest).
    evicted: int = 0


@dataclass
class _Route:
    inbox: CallbackInbox[Any]
    expires_at: float


class WebhookReceiver:
    """Receives AceData callbacks and GoAPI webhooks and resolves the jobs waiting for them.

    Pass it to `Client(webhooks=...)`. Serve it yourself (`serve()`, bound to 127.0.0.1 unless told
    otherwise) or mount it into your aiohttp app with `add_routes(app)`; then say where the provider
    can reach it with `public_url` (e.g. "https://bot.example.com/mjasync/callbacks").

    `secret` is sent with every GoAPI job as `webhook_secret` and must come back in
    `x-webhook-secret` (a random one is made if you pass none). It never appears in a repr, an error
    or a log line.

    `max_connections`, `header_timeout` and `body_timeout` bound what slow or many clients can hold
    of `serve()` (see the module docs); `body_timeout` also bounds each body read when mounted.

    `clock` is the time addresses expire by (`route_ttl`, a job's deadline) and warnings are spaced
    by: `time.monotonic` unless a test moves its own.
    """

    def __init__(
        self,
        *,
        public_url: str | None = None,
        secret: str | None = None,
        path: str = "/mjasync/callbacks",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        route_ttl: float = DEFAULT_ROUTE_TTL,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if public_url is not None:
            public_url = validate_http_url(public_url, "public_url").rstrip("/")
        if secret is not None and (not isinstance(secret, str) or len(secret) < 8):
            raise InvalidRequestError("secret must be a string of at least 8 characters")
        if not isinstance(path, str) or not path.startswith("/") or "{" in path:
            raise InvalidRequestError(f"path must start with '/', got {path!r}")
        _check_int("max_body_bytes", max_body_bytes, 1024)
        _check_int("max_connections", max_connections, 1)
        for name, seconds in (
            ("route_ttl", route_ttl),
            ("header_timeout", header_timeout),
            ("body_timeout", body_timeout),
        ):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                raise InvalidRequestError(f"{name} must be a positive number of seconds, got {seconds!r}")
        if not callable(clock):
            raise InvalidRequestError(f"clock must be a function returning seconds, got {clock!r}")
        self._public_url = public_url
        self._secret = secret or secrets.token_urlsafe(32)
        _redact.hold(self, self._secret)
        self._path = path.rstrip("/")
        self._max_body_bytes = max_body_bytes
        self._route_ttl = route_ttl
        self._max_connections = max_connections
        self._header_timeout = float(header_timeout)
        self._body_timeout = float(body_timeout)
        self._clock = clock
        self._routes: OrderedDict[str, _Route] = OrderedDict()
        self._stats = ReceiverStatistics()
        self._connections: _Connections | None = None

    def __repr__(self) -> str:
        return f"<mjasync.WebhookReceiver url={self._public_url!r} routes={len(self._routes)}>"

    @property
    def url(self) -> str | None:
        """The public base URL callbacks go to (each job's address is below it); None until known."""
        return self._public_url

    @property
    def path(self) -> str:
        """The path the routes are mounted under."""
        return self._path

    def statistics(self) -> ReceiverStatistics:
        """Counts of callbacks received, delivered, ignored and rejected, and of connections."""
        self._stats.open_routes = len(self._routes)
        self._stats.open_connections = len(self._connections or ())
        return ReceiverStatistics(**vars(self._stats))

    # -- mounting ---------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Mount the receiver into your aiohttp app (`POST {path}/{token}`)."""
        app.router.add_post(self._path + "/{token}", self.handle)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> AbstractAsyncContextManager[str]:
        """Serve the receiver on its own (127.0.0.1 by default; port 0 picks a free one); yields its URL.

        `async with receiver.serve() as url: ...`. Without `public_url`, callbacks are addressed to
        `http://{host}:{port}{path}`. Connections are bounded (`max_connections`, `header_timeout`,
        `body_timeout`): a slow or idle client is closed, never a reason to turn a new one away.
        """
        return _Serving(self, host, port)

    # -- routes (used by the client) ----------------------------------------------------------------

    def open_route(
        self, inbox: CallbackInbox[Any], *, progress: bool, ttl: float | None
    ) -> tuple[CallbackTarget, Callable[[], None]]:
        """A fresh address for one job's callbacks, and the function that closes it."""
        if self._public_url is None:
            raise InvalidRequestError(
                "the WebhookReceiver has no public URL yet: serve() it, or pass public_url= when it is "
                "mounted into your app"
            )
        now = self._clock()
        self._purge(now)
        token = secrets.token_urlsafe(18)
        lifetime = self._route_ttl if ttl is None else min(ttl, self._route_ttl)
        self._routes[token] = _Route(inbox, now + lifetime)

        def close() -> None:
            self._routes.pop(token, None)

        target = CallbackTarget(url=f"{self._public_url}/{token}", secret=self._secret, progress=progress)
        return target, close

    def _purge(self, now: float) -> None:
        # Routes are opened in time order; lifetimes differ little, so the oldest expire first.
        while self._routes:
            token, route = next(iter(self._routes.items()))
            if route.expires_at > now:
                return
            del self._routes[token]

    # -- the handler ------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Take one callback POST."""
        stats = self._stats
        stats.received += 1
        route = self._routes.get(request.match_info.get("token", ""))
        secret_header = route.inbox.secret_header if route is not None else None
        given = _given_secret(request, secret_header)
        wants_secret = secret_header is not None
        if (given is not None or wants_secret) and not _same_secret(given or "", self._secret):
            stats.rejected += 1
            return await _answer_unread(request, _refuse(401, "wrong or missing webhook secret"))
        declared = request.content_length
        if declared is not None and declared > self._max_body_bytes:
            stats.rejected += 1
            return await _answer_unread(request, _refuse(413, f"body over {self._max_body_bytes} bytes"))
        if route is None or route.expires_at <= self._clock():
            stats.ignored += 1
            return await _answer_unread(request, _ignored())
        try:
            with anyio.fail_after(self._body_timeout):
                body = await self._read(request)
        except TimeoutError:
            stats.rejected += 1
            too_slow = _refuse(408, f"body not read whole within {self._body_timeout:g} s")
            return await _answer_unread(request, too_slow, drain=False)
        except ConnectionError:
            # The sender went away (or `serve()` closed it to make room): nobody is left to answer.
            return _refuse(400, "connection lost")
        if body is None:
            stats.rejected += 1
            return await _answer_unread(request, _refuse(413, f"body over {self._max_body_bytes} bytes"))
        try:
            taken = route.inbox.deliver(body)
        except Exception:  # whatever a decoder chokes on (nesting, numbers, bytes): 400, never 500
            stats.rejected += 1
            return _refuse(400, "not a callback body")
        if not taken:
            stats.ignored += 1
            return _ignored()
        stats.delivered += 1
        return web.json_response({"status": "ok"})

    async def _read(self, request: web.Request) -> bytes | None:
        """The body, or None as soon as it runs past the limit (the rest is never read)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            self._stats.bytes_read += len(chunk)
            if size > self._max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)


class _Serving:
    """`WebhookReceiver.serve()`: an aiohttp server fed by an accept loop of our own (see `_Connections`)."""

    def __init__(self, receiver: WebhookReceiver, host: str, port: int) -> None:
        self._receiver = receiver
        self._host = host
        self._port = port
        self._stack = AsyncExitStack()
        self._served: str | None = None

    async def __aenter__(self) -> str:
        receiver = self._receiver
        async with AsyncExitStack() as stack:
            app = web.Application(client_max_size=receiver._max_body_bytes, middlewares=[_track_requests])
            receiver.add_routes(app)
            # The head timer is `_Connections`' own (aiohttp's idle timer differs between versions);
            # what aiohttp reads and drops of a body nobody handled is bounded like a body.
            runner = web.AppRunner(
                app, access_log=None, handle_signals=False, lingering_time=min(receiver._body_timeout, 10.0)
            )
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            listener = _listen(self._host, self._port)
            stack.callback(listener.close)
            assert runner.server is not None
            connections = _Connections(
                runner.server,
                limit=_connection_cap(receiver._max_connections, *_fd_room()),
                header_timeout=receiver._header_timeout,
                stats=receiver._stats,
                clock=receiver._clock,
            )
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)
            group.start_soon(connections.accept, listener)
            receiver._connections = connections
            stack.callback(setattr, receiver, "_connections", None)
            bound_port = listener.getsockname()[1]
            self._served = f"http://{_host_for_url(self._host)}:{bound_port}{receiver._path}"
            if receiver._public_url is None:
                receiver._public_url = self._served
            self._stack = stack.pop_all()
        return receiver._public_url

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._receiver._public_url == self._served:
            self._receiver._public_url = None
        await self._stack.__aexit__(kind, error, trace)


class _Connections:
    """The connections `serve()` holds, each guarded by a `_Guarded`, in the order their phase began.

    A phase is waiting for a request head (timed: `header_timeout`) or being answered (its body
    read is timed by the handler). When `limit` are held, the first in that order — idle or slow
    for longest — is closed to make room: a new sender is never turned away for them.
    """

    def __init__(
        self,
        server: Callable[[], RequestHandler],
        *,
        limit: int,
        header_timeout: float,
        stats: ReceiverStatistics,
        clock: Callable[[], float],
    ) -> None:
        self._server = server
        self.limit = limit
        self.header_timeout = header_timeout
        self.stats = stats
        self._clock = clock
        self._held: OrderedDict[_Guarded, None] = OrderedDict()
        self._closed = anyio.Event()

    def __len__(self) -> int:
        return len(self._held)

    async def accept(self, listener: socket.socket) -> None:
        """Accept connections for ever; a lack of descriptors pauses it quietly, never floods a log."""
        loop = asyncio.get_running_loop()
        warned_at: float | None = None
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in _BROKEN_LISTENER:
                    raise
                if exc.errno in _OUT_OF_ROOM:
                    now = self._clock()
                    if warned_at is None or now - warned_at >= _WARN_EVERY:
                        warned_at = now
                        _log.warning("receiver: out of file descriptors; accepting pauses until one frees")
                    self._closed = anyio.Event()
                    with anyio.move_on_after(_ACCEPT_PAUSE):
                        await self._closed.wait()
                continue  # anything else (a reset before accept, say) concerns that connection only
            self.make_room()
            try:
                await loop.connect_accepted_socket(self.protocol, conn)
            except OSError:
                conn.close()

    def make_room(self) -> None:
        """Close the connection idle or slow for longest while `limit` are held."""
        while len(self._held) >= self.limit:
            oldest = next(iter(self._held))
            self.stats.evicted += 1
            oldest.close()

    def protocol(self) -> _Guarded:
        return _Guarded(self, self._server())

    def began(self, guarded: _Guarded) -> None:
        self._held[guarded] = None
        self._held.move_to_end(guarded)

    def ended(self, guarded: _Guarded) -> None:
        if guarded in self._held:
            del self._held[guarded]
            self._closed.set()  # room again, should accepting be waiting for some


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, timed while it waits for a request head."""

    def __init__(self, connections: _Connections, inner: RequestHandler) -> None:
        self._connections = connections
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._inner.connection_made(transport)
        self.waiting()

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> None:
        self._inner.eof_received()  # aiohttp's keeps nothing open half-closed; neither do we

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._connections.ended(self)
        self._transport = None
        self._inner.connection_lost(exc)

    def waiting(self) -> None:
        """A request head is due now (the connection is new, or its last request was answered)."""
        if self._transport is None:
            return
        self._stop_timer()
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._connections.header_timeout, self._head_too_slow)
        self._connections.began(self)

    def answering(self) -> None:
        """A request head is in: the handler has it."""
        if self._transport is None:
            return
        self._stop_timer()
        self._connections.began(self)

    def close(self) -> None:
        """Drop the connection at once (nothing is owed to a client this slow)."""
        self._stop_timer()
        self._connections.ended(self)
        if self._transport is not None:
            self._transport.abort()  # its connection_lost follows on the next loop turn
            self._transport = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._connections.stats.timed_out += 1
        self.close()

    def _stop_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


@web.middleware
async def _track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Tell a connection's guard when its request is being answered, and when the next one is due."""
    transport = request.transport
    guarded = transport.get_protocol() if transport is not None else None
    if not isinstance(guarded, _Guarded):
        return await handler(request)
    guarded.answering()
    try:
        return await handler(request)
    finally:
        guarded.waiting()


def _connection_cap(wanted: int, fd_limit: int | None, fds_open: int) -> int:
    """Connections to hold: `wanted`, but never so many that the process runs out of descriptors."""
    if fd_limit is None:
        return wanted
    return max(1, min(wanted, fd_limit - fds_open - _FD_RESERVE))


def _fd_room() -> tuple[int | None, int]:
    """The soft file-descriptor limit (None: none) and how many descriptors are open now."""
    if sys.platform == "win32":
        return None, 0
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = None if soft == resource.RLIM_INFINITY else soft
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            return limit, len(os.listdir(listing))
        except OSError:
            continue
    return limit, 0


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


def _check_int(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidRequestError(f"{name} must be an int of at least {least}, got {value!r}")


def _given_secret(request: web.Request, secret_header: str | None) -> str | None:
    """The secret a callback carries: in its route's provider's header, else in any provider's.

    Any provider's header is looked at too, so a wrong secret is refused even on an unknown route.
    """
    for name in (secret_header, *CALLBACK_SECRET_HEADERS):
        if name is not None and name in request.headers:
            return request.headers[name]
    return None


def _same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"status": "rejected", "message": message}, status=status)


async def _answer_unread(
    request: web.Request, response: web.Response, *, drain: bool = True
) -> web.StreamResponse:
    """Answer a request whose body we will not read, then close the connection instead of reading it.

    Left alone, aiohttp would read and discard the rest of the body after the handler returns. A
    close with data still unread makes the kernel reset the connection, which can destroy the answer
    before the sender reads it; so a little (`_DRAIN_BYTES`, `_DRAIN_SECONDS`) is read and dropped
    first, enough for a well-behaved sender to see the answer and stop (not `drain`: a sender too
    slow to finish its body gets nothing more).

    A sender already gone (it hung up, or reset the connection, before its answer) is nobody's error:
    the answer is dropped quietly, since raising here would make aiohttp log a 500 for each one.
    """
    response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
        with anyio.move_on_after(_DRAIN_SECONDS):
            drained = 0 if drain else _DRAIN_BYTES
            while drained < _DRAIN_BYTES:
                chunk = await request.content.readany()
                if not chunk:
                    break
                drained += len(chunk)
    except ConnectionError:
        pass  # aiohttp's own answer to a closed connection (it finishes the response) is silent too
    request.protocol.force_close()
    return response


def _ignored() -> web.Response:
    return web.json_response({"status": "ignored"})


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
