"""A web page that paints a Midjourney job live: FastAPI relays `job.stream()` as server-sent events.

    pip install -e '.[examples]' && python examples/web/app.py     # then open http://127.0.0.1:8000

With no `MJASYNC_API_KEY` set it starts the embedded emulator inside the app (nothing leaves this
machine); set `MJASYNC_API_KEY` (and `MJASYNC_BASE_URL`, `MJASYNC_PROVIDER` if not AceData) to use a
real provider, and every prompt you submit is then a paid job.

What it shows, for a web backend of your own:
- one `mjasync.Client` for the whole app, opened and closed by the app's lifespan (`async with`):
  it holds one connection pool, and every request shares it safely;
- a request that streams a job's progress to the browser (`POST /api/imagine`, `POST /api/upscale`),
  and stops following the job the moment the browser goes away: no task is left behind;
- images relayed through the app (`GET /images/{key}`), since the browser may not reach the provider's
  image host (the emulator's is on this machine's loopback only), with every read capped in size;
- errors shown to the user as the `MJError`'s message, which never carries the key.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

import mjasync
from mjasync.emulator import DEFAULT_TOKEN, Emulator
from mjasync.types import GridIndex, ImagineJob, ImagineUpdate, ProviderName

STATIC = Path(__file__).resolve().parent / "static"
#: Longest prompt the page accepts. The library refuses past 6000 characters (`max_prompt_chars`);
#: a form on a public page has no use for that much, and a short cap keeps one request small.
MAX_PROMPT_CHARS = 1000
#: Largest JSON body a route reads; the bodies here are a prompt or a task id and an index.
MAX_BODY_BYTES = 16 * 1024
#: Seconds a client may take to send its (small) body before it is answered 408.
BODY_TIMEOUT = 10.0
#: Largest image relayed to the page; a Midjourney upscale is a few MB.
MAX_IMAGE_BYTES = 32 * 1024 * 1024
#: Images relayed at once: each is held in memory while it passes through, so this bounds the memory
#: a burst of page loads can take (the others wait their turn).
IMAGE_RELAYS = 16
#: How many image URLs and finished grids the app remembers (oldest forgotten first): bounded memory
#: however long it runs. A page asking for a forgotten one is told to start again.
REMEMBERED_IMAGES = 4096
REMEMBERED_GRIDS = 512
#: Seconds between keep-alive comments on an idle event stream, so that proxies between the browser
#: and the app do not close a stream whose job is still queued at the provider.
HEARTBEAT = 15.0
#: Against the emulator, look jobs up often (its jobs take seconds); a real provider keeps the
#: library's default polling curve.
EMULATOR_POLL = mjasync.PollPolicy(initial_interval=0.2, factor=1.2, max_interval=0.5)


@dataclass(frozen=True)
class Settings:
    """How the app runs: its backend (the embedded emulator unless `api_key` is set) and its caps."""

    provider: ProviderName = "acedata"
    #: A real provider's key; None starts the embedded emulator instead.
    api_key: str | None = None
    #: A real provider's origin; None takes the provider's default (or `MJASYNC_BASE_URL`).
    base_url: str | None = None
    #: Seconds an emulated job takes from submit to final image (slow enough to watch it paint).
    emulator_speed: float = 10.0
    #: Event streams open at once; one more is answered 503 rather than queued.
    max_streams: int = 64

    @classmethod
    def from_environment(cls, *, emulator_speed: float, provider: ProviderName | None) -> Settings:
        """Settings from `MJASYNC_API_KEY`, `MJASYNC_BASE_URL` and `MJASYNC_PROVIDER` (or `provider`)."""
        chosen = provider or _provider_name(os.environ.get("MJASYNC_PROVIDER", "acedata"))
        return cls(
            provider=chosen,
            api_key=os.environ.get("MJASYNC_API_KEY") or None,
            base_url=os.environ.get("MJASYNC_BASE_URL") or None,
            emulator_speed=emulator_speed,
        )


#: The providers by name, as `--provider` and `MJASYNC_PROVIDER` spell them.
PROVIDERS: dict[str, ProviderName] = {
    name: name for name in ("acedata", "goapi", "midjourney-proxy", "midjourney-proxy-bearer")
}


def _provider_name(name: str) -> ProviderName:
    if name not in PROVIDERS:
        raise SystemExit(f"unknown provider {name!r}: one of {', '.join(PROVIDERS)}")
    return PROVIDERS[name]


# -- what the routes share ----------------------------------------------------------------------------


class Remembered:
    """Image URLs the provider returned, each behind an opaque key: the page asks for `/images/<key>`
    and the app fetches only URLs it was given, so the relay cannot be pointed at another host."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._urls: OrderedDict[str, str] = OrderedDict()

    def key_for(self, url: str) -> str:
        """The key under which the page loads `url` (the same URL always gets the same key)."""
        key = hashlib.sha256(url.encode()).hexdigest()[:32]
        self._urls[key] = url
        self._urls.move_to_end(key)
        while len(self._urls) > self._capacity:
            self._urls.popitem(last=False)
        return key

    def url(self, key: str) -> str | None:
        """The URL behind `key`; None if it was never given out, or forgotten since."""
        return self._urls.get(key)


class Grids:
    """Finished grids by task id, so that an upscale button can name its grid by task id alone."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._grids: OrderedDict[str, mjasync.ImagineResult] = OrderedDict()

    def keep(self, result: mjasync.ImagineResult) -> None:
        self._grids[grid_key(result)] = result
        while len(self._grids) > self._capacity:
            self._grids.popitem(last=False)

    def get(self, task_id: str) -> mjasync.ImagineResult | None:
        """The grid the page knows by `task_id`; None if it was forgotten (or never finished here)."""
        return self._grids.get(task_id)


def grid_key(result: mjasync.ImagineResult) -> str:
    """How the page names a finished grid: its task id (its image's URL in the unlikely case of none)."""
    return result.task_id or result.image_id or result.image_url


class StreamGate:
    """The event streams open now: at most `limit`, and a way to wait until none is open."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Streams relaying a job now.
        self.active = 0
        #: Streams that ended because their browser went away before the job did.
        self.abandoned = 0
        self._idle: anyio.Event | None = None

    def enter(self) -> bool:
        """Take a place; False when all are taken."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        """Give a place back."""
        self.active -= 1
        if self.active == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def wait_idle(self) -> None:
        """Return once no stream is open (at once if none is)."""
        if self.active == 0:
            return
        if self._idle is None:
            self._idle = anyio.Event()
        await self._idle.wait()


class Backend:
    """The app's shared state: the client (while the app runs), remembered images and grids, streams."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.images = Remembered(REMEMBERED_IMAGES)
        self.grids = Grids(REMEMBERED_GRIDS)
        self.streams = StreamGate(settings.max_streams)
        self.image_relays = anyio.CapacityLimiter(IMAGE_RELAYS)
        self._client: mjasync.Client | None = None

    @property
    def mj(self) -> mjasync.Client:
        """The app's one client; only set between the lifespan's start and end."""
        if self._client is None:
            raise RuntimeError("the app is not running: its lifespan opens the client")
        return self._client

    @asynccontextmanager
    async def running(self) -> AsyncGenerator[Backend, None]:
        """Open the client (and the emulator it talks to, if no real provider is configured); close
        both on the way out. The app's lifespan holds this open while the app serves requests."""
        settings = self.settings
        async with AsyncExitStack() as stack:
            if settings.api_key is None:
                emulator = await stack.enter_async_context(Emulator(speed=settings.emulator_speed))
                client = mjasync.Client(
                    api_key=DEFAULT_TOKEN,
                    base_url=emulator.url,
                    provider=settings.provider,
                    poll=EMULATOR_POLL,
                )
                print(
                    f"Embedded emulator on {emulator.url} (nothing leaves this machine), speaking {settings.provider}"
                )
            else:
                client = mjasync.Client(
                    api_key=settings.api_key, base_url=settings.base_url, provider=settings.provider
                )
                print(f"Using {client!r}: every prompt is a paid job")
            self._client = await stack.enter_async_context(client)
            # Held open across this yield: the app's lifespan enters and leaves it in one task.
            try:
                yield self
            finally:
                self._client = None


# -- server-sent events -------------------------------------------------------------------------------

#: Sends one event to the page: its name and its JSON data.
Emit = Callable[[str, msgspec.Struct], Awaitable[None]]


class EventStream(Response):
    """A `text/event-stream` response that runs `relay` for as long as the browser listens.

    The relay runs in this response's task group next to a watcher of the connection: when the browser
    goes away (a closed tab, a reload, a dropped network), the watcher cancels the group, the relay's
    `job.stream()` is left by cancellation and closes its connection to the provider, and nothing of
    the request outlives it. The job was paid for and goes on at the provider; the app only stops
    following it. A place in `gate` is held throughout; when none is free the answer is 503.
    """

    media_type = "text/event-stream"

    def __init__(self, relay: Callable[[Emit], Awaitable[None]], gate: StreamGate, job: ImagineJob) -> None:
        # Not `Response.__init__`: it would declare a Content-Length of 0 for the missing body.
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-store", "x-accel-buffering": "no"})
        self._relay = relay
        self._gate = gate
        self._job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if not self._gate.enter():
                busy = _problem(503, "The server is following as many jobs as it can; try again shortly.")
                await busy(scope, receive, send)
                return
            try:
                await self._serve(receive, send)
            finally:
                self._gate.leave()
        finally:
            # A job never sent (refused at the gate, or a browser gone before it went out) is dropped
            # quietly; closing one already sent changes nothing.
            self._job.close()

    async def _serve(self, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        lock = anyio.Lock()  # the relay and the heartbeat both write; ASGI sends must not interleave
        gone = False

        async def write(chunk: bytes) -> None:
            async with lock:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def emit(event: str, data: msgspec.Struct) -> None:
            await write(b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n")

        async def heartbeat() -> None:
            while True:
                await anyio.sleep(HEARTBEAT)
                await write(b": keep-alive\n\n")

        async def watch(scope: anyio.CancelScope) -> None:
            nonlocal gone
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    scope.cancel()
                    return

        async with anyio.create_task_group() as group:
            group.start_soon(watch, group.cancel_scope)
            group.start_soon(heartbeat)
            await self._relay(emit)
            group.cancel_scope.cancel()
        if gone:
            self._gate.abandoned += 1
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class Progress(msgspec.Struct):
    """One update of a job: `image` is the app's address of the preview, when there is one."""

    task_id: str | None
    progress: float
    image: str | None


class Done(msgspec.Struct):
    """A finished job: its image, and the grid positions that can be upscaled (none on an upscale)."""

    task_id: str
    image: str
    width: int | None
    height: int | None
    upscales: list[int]


class Failure(msgspec.Struct):
    """Why a job ended without an image, as the page shows it: the error's name and message."""

    error: str
    message: str


async def relay(backend: Backend, job: ImagineJob, emit: Emit) -> None:
    """Send each update of `job` to the page as a `progress` event, then `done` or `failure`."""
    try:
        async with job.stream() as updates:
            async for update in updates:
                if not update.is_final:
                    await emit("progress", _progress(backend, update))
        final = updates.final
    except mjasync.MJError as exc:
        # An MJError's message says what went wrong and never holds a credential; anything else is a
        # bug of this app and goes to the server's log, not to the page.
        await emit("failure", Failure(error=type(exc).__name__, message=str(exc)))
        return
    backend.grids.keep(final)
    upscales = [n for n in (1, 2, 3, 4) if f"upscale{n}" in final.actions]
    done = Done(
        task_id=grid_key(final),
        image=_image_path(backend, final.image_url),
        width=final.image_width,
        height=final.image_height,
        upscales=upscales,
    )
    await emit("done", done)


def _progress(backend: Backend, update: ImagineUpdate) -> Progress:
    image = None if update.image_url is None else _image_path(backend, update.image_url)
    return Progress(task_id=update.task_id, progress=update.progress or 0.0, image=image)


def _image_path(backend: Backend, url: str) -> str:
    return f"/images/{backend.images.key_for(url)}"


# -- requests ---------------------------------------------------------------------------------------------


class ImagineBody(msgspec.Struct, forbid_unknown_fields=True):
    """What the page posts to start a job."""

    prompt: str


class UpscaleBody(msgspec.Struct, forbid_unknown_fields=True):
    """What an upscale button posts: its grid's task id and its position (1–4)."""

    task_id: str
    index: GridIndex


class BadBody(Exception):
    """A request body this app will not read: its status and what to tell the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request's body, refused past `limit` bytes (413) or if it takes too long to arrive (408)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadBody(413, f"The request is larger than {limit} bytes.")
    body = bytearray()
    with anyio.move_on_after(BODY_TIMEOUT) as waited:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise BadBody(413, f"The request is larger than {limit} bytes.")
    if waited.cancelled_caught:
        raise BadBody(408, "The request's body did not arrive in time.")
    return bytes(body)


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status, headers={"cache-control": "no-store"})


def _image_type(data: bytes) -> str:
    """The image's media type from its first bytes (a provider's own header may be generic)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    return "application/octet-stream"


#: The page loads only what this app serves: no CDN, no inline script.
PAGE_POLICY = "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'"


def create_app(backend: Backend) -> FastAPI:
    """The app: the page, its two event-stream routes, and the image relay, around `backend`'s client."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncGenerator[None, None]:
        # The lifespan is entered and left by one task, so holding the client (and the emulator's
        # task group) open across this yield is the pattern FastAPI documents, not a leak.
        async with backend.running():
            yield

    app = FastAPI(
        title="mjasync web example", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"content-security-policy": PAGE_POLICY})

    @app.post("/api/imagine", response_model=None)
    async def imagine(request: Request) -> Response:
        try:
            body = msgspec.json.decode(await read_body(request), type=ImagineBody)
        except BadBody as exc:
            return _problem(exc.status, exc.message)
        except msgspec.ValidationError as exc:
            return _problem(400, f'Send JSON {{"prompt": "..."}}: {exc}')
        except msgspec.DecodeError:
            return _problem(400, 'Send JSON {"prompt": "..."}.')
        prompt = body.prompt.strip()
        if not prompt:
            return _problem(400, "Type a prompt first.")
        if len(prompt) > MAX_PROMPT_CHARS:
            return _problem(
                400, f"The prompt is {len(prompt)} characters long; this page takes {MAX_PROMPT_CHARS}."
            )
        try:
            job = backend.mj.imagine(prompt)  # checked here, before anything is sent
        except mjasync.MJError as exc:
            return _problem(400, str(exc))
        return EventStream(lambda emit: relay(backend, job, emit), backend.streams, job)

    @app.post("/api/upscale", response_model=None)
    async def upscale(request: Request) -> Response:
        try:
            body = msgspec.json.decode(await read_body(request), type=UpscaleBody)
        except BadBody as exc:
            return _problem(exc.status, exc.message)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return _problem(400, 'Send JSON {"task_id": "...", "index": 1} (index 1 to 4).')
        grid = backend.grids.get(body.task_id)
        if grid is None:
            return _problem(404, "This grid is no longer held by the server: imagine it again.")
        try:
            job = backend.mj.upscale(grid, body.index)  # an action the grid lacks is refused here
        except mjasync.MJError as exc:
            return _problem(400, str(exc))
        return EventStream(lambda emit: relay(backend, job, emit), backend.streams, job)

    @app.get("/images/{key}", response_model=None)
    async def image(key: str) -> Response:
        url = backend.images.url(key)
        if url is None:
            return _problem(404, "No such image here (the server forgets old ones).")
        try:
            async with backend.image_relays:
                data = await backend.mj.download(url, max_bytes=MAX_IMAGE_BYTES)
        except mjasync.MJError as exc:
            return _problem(502, f"The image could not be fetched: {exc}")
        headers = {"cache-control": "private, max-age=86400, immutable", "x-content-type-options": "nosniff"}
        return Response(content=data, media_type=_image_type(data), headers=headers)

    @app.get("/api/status")
    async def status() -> dict[str, int]:
        """How many event streams are open, and how many ended because their browser left."""
        return {"streams": backend.streams.active, "abandoned": backend.streams.abandoned}

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve the app with uvicorn until Ctrl+C."""
    parser = argparse.ArgumentParser(
        prog="python examples/web/app.py",
        description="Serve a page that paints Midjourney jobs live (the embedded emulator unless "
        "MJASYNC_API_KEY is set).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument(
        "--speed",
        type=float,
        default=10.0,
        help="seconds an emulated job takes, so you can watch it paint (default: 10)",
    )
    parser.add_argument(
        "--provider",
        choices=list(PROVIDERS),
        default=None,
        help="protocol to speak (default: MJASYNC_PROVIDER, else acedata)",
    )
    args = parser.parse_args(argv)
    if args.speed < 0:
        parser.error("--speed must be >= 0")
    provider = None if args.provider is None else _provider_name(str(args.provider))
    settings = Settings.from_environment(emulator_speed=float(args.speed), provider=provider)
    if args.port:  # (with port 0, uvicorn prints the port it was given)
        print(f"Open http://{args.host}:{args.port} in a browser (Ctrl+C stops).")
    uvicorn.run(create_app(Backend(settings)), host=str(args.host), port=int(args.port), log_level="info")


if __name__ == "__main__":
    main()
