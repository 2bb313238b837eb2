"""Scaffolding shared by the emulator and functional tests.

Everything here speaks plain aiohttp (never mjasync's client), so the emulator's own tests do not lean on
the code under test: an emulator plus session on 127.0.0.1, local servers and webhook receivers, raw
AceData requests with the bearer token, CDN image fetches, masks, and a bounded wait on records.
"""

from __future__ import annotations

import base64
import io
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from aiohttp import web
from anyio.streams.memory import MemoryObjectReceiveStream
from multidict import CIMultiDictProxy
from PIL import Image

from mjasync.emulator import Emulator
from mjasync.testing import EMULATOR_TOKEN

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NDJSON = "application/x-ndjson"
#: The actions AceData documents on a finished grid, in its order.
ACEDATA_GRID_ACTIONS = [
    "upscale1", "upscale2", "upscale3", "upscale4", "reroll",
    "variation1", "variation2", "variation3", "variation4",
]  # fmt: skip
#: The actions AceData documents on an upscaled image, in its order.
ACEDATA_UPSCALED_ACTIONS = [
    "upscale_2x", "upscale_4x", "variation_subtle", "variation_strong", "zoom_out_2x", "zoom_out_1_5x",
    "pan_left", "pan_right", "pan_up", "pan_down",
]  # fmt: skip

Box = tuple[int, int, int, int]
#: The white rectangle `mask_b64` paints by default, inside a 64x64 mask.
MASK_BOX: Box = (16, 16, 40, 40)


# --- the emulator and local servers ---------------------------------------------------------------


@asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[Emulator, aiohttp.ClientSession]]:
    """Run an emulator on 127.0.0.1 (port 0, *options*) and a plain aiohttp session."""
    async with Emulator(host="127.0.0.1", port=0, **options) as emu, aiohttp.ClientSession() as session:
        yield emu, session


@asynccontextmanager
async def serving(app: web.Application, *, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """Serve *app* on a loopback address (127.0.0.1 unless told) at a free port and yield the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def free_port() -> int:
    """A port on 127.0.0.1 that was just free, so connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Delivery:
    """One request a webhook receiver got, with its JSON body parsed."""

    method: str
    headers: CIMultiDictProxy[str]
    content_type: str
    body: Any


@asynccontextmanager
async def webhook_receiver(
    answers: Sequence[int] = (), *, path: str = "/hook", method: str = "POST"
) -> AsyncIterator[tuple[str, MemoryObjectReceiveStream[Delivery]]]:
    """Serve a webhook on 127.0.0.1 that forwards each request to *path* as a `Delivery`; yield (URL, stream).

    It answers the statuses in *answers*, one a request, then 200. *method* is the one routed ("*" for any).
    """
    send, receive = anyio.create_memory_object_stream[Delivery](100)
    pending = list(answers)

    async def hook(request: web.Request) -> web.Response:
        send.send_nowait(
            Delivery(request.method, request.headers, request.content_type, await request.json())
        )
        return web.Response(status=pending.pop(0) if pending else 200, text="ok")

    app = web.Application()
    app.router.add_route(method, path, hook)
    async with serving(app) as port:
        with send, receive:
            yield f"http://127.0.0.1:{port}{path}", receive


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait (at most *seconds*) until *condition()* holds: for records written with no event to wait on."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


# --- raw AceData requests -------------------------------------------------------------------------


def acedata_headers(
    *, token: str | None = EMULATOR_TOKEN, accept: str | None = "application/json", fault: str | None = None
) -> dict[str, str]:
    """AceData request headers: the bearer *token* and *accept* (each left out if None), ``x-mjasync-fault`` if given."""
    headers: dict[str, str] = {}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if accept is not None:
        headers["accept"] = accept
    if fault is not None:
        headers["x-mjasync-fault"] = fault
    return headers


@asynccontextmanager
async def post_acedata(
    session: aiohttp.ClientSession,
    emu: Emulator,
    path: str,
    body: Any,
    *,
    token: str | None = EMULATOR_TOKEN,
    accept: str | None = "application/json",
    fault: str | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST *body* as JSON to the emulator's *path* with `acedata_headers`; yield the open response."""
    headers = acedata_headers(token=token, accept=accept, fault=fault)
    async with session.post(f"{emu.url}{path}", json=body, headers=headers) as resp:
        yield resp


async def acedata_json(
    session: aiohttp.ClientSession,
    emu: Emulator,
    path: str,
    body: Any,
    *,
    token: str | None = EMULATOR_TOKEN,
    accept: str = "application/json",
    content_type: str | None = "application/json",
) -> tuple[int, Any]:
    """`post_acedata`, returning ``(status, parsed JSON)``; *content_type* None parses whatever was served."""
    async with post_acedata(session, emu, path, body, token=token, accept=accept) as resp:
        return resp.status, await resp.json(content_type=content_type)


# --- images ---------------------------------------------------------------------------------------


async def fetch_png(session: aiohttp.ClientSession, url: str) -> Image.Image:
    """GET a PNG from the emulator's CDN (no auth), check it is served as one, and open it (loaded)."""
    async with session.get(url) as resp:
        assert resp.status == 200, url
        assert resp.content_type == "image/png"
        data = await resp.read()
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def mask_image(size: tuple[int, int] = (64, 64), box: Box | None = MASK_BOX) -> Image.Image:
    """A black grayscale image with a white rectangle *box* (the area to repaint); all black if None."""
    image = Image.new("L", size, 0)
    if box is not None:
        image.paste(255, box)
    return image


def encoded(image: Image.Image, image_format: str = "PNG") -> bytes:
    """*image* saved in *image_format*."""
    out = io.BytesIO()
    image.save(out, image_format)
    return out.getvalue()


def mask_b64(
    box: Box | None = MASK_BOX, *, size: tuple[int, int] = (64, 64), image_format: str = "PNG"
) -> str:
    """Base64 of a `mask_image` (by default a black 64x64 PNG with a white rectangle)."""
    return base64.b64encode(encoded(mask_image(size, box), image_format)).decode()


def jpeg_mask_b64(width: int = 256, height: int = 256) -> str:
    """Base64 of a grayscale JPEG, black with a white centre to repaint (what the guide's cv2 code makes)."""
    centre = (width // 4, height // 4, width * 3 // 4, height * 3 // 4)
    return mask_b64(centre, size=(width, height), image_format="JPEG")


class Target:
    """Another origin on loopback that records the headers of every request it gets (and answers a PNG)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"0" * 64, content_type="image/png")


@asynccontextmanager
async def target_on(host: str) -> AsyncIterator[tuple[Target, int]]:
    """A `Target` served on `host`, and its port."""
    target = Target()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", target.handle)
    async with serving(app, host=host) as port:
        yield target, port
