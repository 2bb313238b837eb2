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
and ignored, so the provider stops retrying them.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import anyio
from aiohttp import web

from ._callbacks import CallbackInbox
from ._exceptions import InvalidRequestError, MJError
from ._models.params import validate_http_url
from ._providers import CallbackTarget

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ReceiverStatistics", "WebhookReceiver"]

#: The largest callback body read; a task object with every URL is a few KiB.
DEFAULT_MAX_BODY_BYTES: Final = 256 * 1024
#: How long an address stays open at most, even for a job that waits forever (its poll deadline
#: is used when it has one).
DEFAULT_ROUTE_TTL: Final = 24 * 3600.0
_CHUNK: Final = 16 * 1024
#: What is read and dropped of a refused body before the connection closes (see `_answer_unread`).
_DRAIN_BYTES: Final = 1024 * 1024
_DRAIN_SECONDS: Final = 1.0


@dataclass
class ReceiverStatistics:
    """What a receiver has seen (counts since it was made)."""

    #: Callbacks that arrived.
    received: int = 0
    #: Handed to a waiting job.
    delivered: int = 0
    #: Acknowledged but not for any waiting job (unknown address, another task, after the end).
    ignored: int = 0
    #: Refused: wrong secret (401), too big (413), not a callback body (400).
    rejected: int = 0
    #: Body bytes read in all (bounded per request by `max_body_bytes`).
    bytes_read: int = 0
    #: Addresses open now.
    open_routes: int = 0


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
    `x-webhook-secret` (a random one is made if you pass none). It never appears in a repr.
    """

    def __init__(
        self,
        *,
        public_url: str | None = None,
        secret: str | None = None,
        path: str = "/mjasync/callbacks",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        route_ttl: float = DEFAULT_ROUTE_TTL,
    ) -> None:
        if public_url is not None:
            public_url = validate_http_url(public_url, "public_url").rstrip("/")
        if secret is not None and (not isinstance(secret, str) or len(secret) < 8):
            raise InvalidRequestError("secret must be a string of at least 8 characters")
        if not isinstance(path, str) or not path.startswith("/") or "{" in path:
            raise InvalidRequestError(f"path must start with '/', got {path!r}")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1024:
            raise InvalidRequestError(
                f"max_body_bytes must be an int of at least 1024, got {max_body_bytes!r}"
            )
        if not route_ttl > 0:
            raise InvalidRequestError(f"route_ttl must be positive, got {route_ttl!r}")
        self._public_url = public_url
        self._secret = secret or secrets.token_urlsafe(32)
        self._path = path.rstrip("/")
        self._max_body_bytes = max_body_bytes
        self._route_ttl = route_ttl
        self._routes: OrderedDict[str, _Route] = OrderedDict()
        self._stats = ReceiverStatistics()

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
        """Counts of callbacks received, delivered, ignored and rejected."""
        self._stats.open_routes = len(self._routes)
        return ReceiverStatistics(**vars(self._stats))

    # -- mounting ---------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Mount the receiver into your aiohttp app (`POST {path}/{token}`)."""
        app.router.add_post(self._path + "/{token}", self.handle)

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve the receiver on its own (127.0.0.1 by default; port 0 picks a free one) and yield its URL.

        Without `public_url`, callbacks are addressed to `http://{host}:{port}{path}`.
        """
        app = web.Application(client_max_size=self._max_body_bytes)
        self.add_routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound_port = runner.addresses[0][1]
            served = f"http://{_host_for_url(host)}:{bound_port}{self._path}"
            if self._public_url is None:
                self._public_url = served
            try:
                yield self._public_url
            finally:
                if self._public_url == served:
                    self._public_url = None
        finally:
            await runner.cleanup()

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
        now = time.monotonic()
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
        given = request.headers.get("x-webhook-secret")
        wants_secret = route is not None and route.inbox.secret_header is not None
        if (given is not None or wants_secret) and not _same_secret(given or "", self._secret):
            stats.rejected += 1
            return await _answer_unread(request, _refuse(401, "wrong or missing webhook secret"))
        declared = request.content_length
        if declared is not None and declared > self._max_body_bytes:
            stats.rejected += 1
            return await _answer_unread(request, _refuse(413, f"body over {self._max_body_bytes} bytes"))
        if route is None or route.expires_at <= time.monotonic():
            stats.ignored += 1
            return await _answer_unread(request, _ignored())
        body = await self._read(request)
        if body is None:
            stats.rejected += 1
            return await _answer_unread(request, _refuse(413, f"body over {self._max_body_bytes} bytes"))
        try:
            taken = route.inbox.deliver(body)
        except MJError:
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


def _same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"status": "rejected", "message": message}, status=status)


async def _answer_unread(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Answer a request whose body we will not read, then close the connection instead of reading it.

    Left alone, aiohttp would read and discard the rest of the body after the handler returns. A
    close with data still unread makes the kernel reset the connection, which can destroy the answer
    before the sender reads it; so a little (`_DRAIN_BYTES`, `_DRAIN_SECONDS`) is read and dropped
    first, enough for a well-behaved sender to see the answer and stop.
    """
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    with anyio.move_on_after(_DRAIN_SECONDS):
        drained = 0
        while drained < _DRAIN_BYTES:
            chunk = await request.content.readany()
            if not chunk:
                break
            drained += len(chunk)
    request.protocol.force_close()
    return response


def _ignored() -> web.Response:
    return web.json_response({"status": "ignored"})


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
