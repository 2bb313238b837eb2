"""Image prompts on the midjourney-proxy protocol, end to end against the emulator's `/mj` side.

The proxy takes images as bytes (`data:` URLs in `base64Array`, a describe's `base64`), so the client
fetches each image URL once, before its first send, bounded in size, and every retry reuses that
body. The images come from a local aiohttp server on 127.0.0.1 that counts what it served; a fetch
that fails (a 404, an image over the bound, declared or streamed) raises before anything is sent.
"""

from __future__ import annotations

import base64
import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import mjasync
from mjasync._providers.proxy import MAX_IMAGE_BYTES
from mjasync.emulator import FAULT_HEADER, Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL
from ..helpers import encoded, mask_image, serving

PROVIDER = "midjourney-proxy"
#: Small delays, so a retried submit takes milliseconds.
FAST_RETRY = mjasync.RetryPolicy(initial_delay=0.01, max_delay=0.05, reconcile_delay=0.01)
#: Images the server holds: distinct PNGs and a JPEG (each a real image: the client checks its kind).
IMAGES = {
    "/a.png": encoded(mask_image((32, 32), (0, 0, 8, 8))),
    "/b.png": encoded(mask_image((32, 32), (8, 8, 16, 16))),
    "/c.jpg": encoded(mask_image((32, 32), (16, 16, 24, 24)), "JPEG"),
    "/d.png": encoded(mask_image((32, 32), (0, 16, 8, 24))),
    "/e.png": encoded(mask_image((32, 32), (16, 0, 24, 8))),
}
#: One byte over the bound, sent whole (its length declared up front).
OVERSIZED = IMAGES["/a.png"] + b"\x00" * (MAX_IMAGE_BYTES + 1 - len(IMAGES["/a.png"]))


class ImageServer:
    """Serves `IMAGES`, an oversized image (declared and streamed) and a 404; counts each GET."""

    def __init__(self) -> None:
        self.gets: collections.Counter[str] = collections.Counter()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.gets[path] += 1
        if path in IMAGES:
            return web.Response(body=IMAGES[path], content_type="image/png")
        if path == "/declared-big.png":
            return web.Response(body=OVERSIZED, content_type="image/png")
        if path == "/streamed-big.png":
            # Chunked, with no length up front: the client counts and stops past the bound.
            response = web.StreamResponse(headers={"content-type": "image/png"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            chunk = b"\x00" * (1 << 20)
            try:
                for _ in range(MAX_IMAGE_BYTES // len(chunk) + 2):
                    await response.write(chunk)
            except ConnectionError:
                return response  # the client hung up past the bound, as it should
            await response.write_eof()
            return response
        return web.Response(status=404)

    def at(self, path: str) -> str:
        return f"{self.url}{path}"


@asynccontextmanager
async def image_server() -> AsyncIterator[ImageServer]:
    server = ImageServer()
    app = web.Application()
    app.router.add_get("/{name}", server.handle)
    async with serving(app) as port:
        server.url = f"http://127.0.0.1:{port}"
        yield server


class FirstTry:
    """Client-side: the emulator's fault header on the first request to each path of `faults` only,
    so the retry goes out clean."""

    def __init__(self, faults: dict[str, str]) -> None:
        self._faults = dict(faults)

    async def middleware(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        fault = self._faults.pop(request.url.path, None)
        if fault is not None:
            request.headers[FAULT_HEADER] = fault
        return await handler(request)


@asynccontextmanager
async def proxy_client(
    emulator: Emulator, faults: dict[str, str] | None = None, **options: Any
) -> AsyncIterator[mjasync.Client]:
    """A midjourney-proxy client on `emulator`, whose first request to each path of `faults` fails."""
    script = FirstTry(faults or {})
    async with aiohttp.ClientSession(middlewares=(script.middleware,)) as session:
        async with mjasync.Client(
            api_key=EMULATOR_TOKEN,
            base_url=emulator.url,
            provider=PROVIDER,
            poll=FAST_POLL,
            retry=options.pop("retry", FAST_RETRY),
            http_session=session,
            **options,
        ) as client:
            yield client


def submits(emulator: Emulator, endpoint: str) -> list[dict[str, Any]]:
    """The JSON bodies the emulator received on `/mj/submit/<endpoint>`, faulted ones included."""
    return [r.json or {} for r in emulator.requests if r.path == f"/mj/submit/{endpoint}"]


def decoded(data_urls: list[str]) -> list[bytes]:
    """The bytes of each `data:<mime>;base64,...` URL."""
    out = []
    for url in data_urls:
        head, _, payload = url.partition(",")
        assert head.startswith("data:image/") and head.endswith(";base64")
        out.append(base64.b64decode(payload))
    return out


@pytest.mark.parametrize("via", ["poll", "stream"])
async def test_image_prompts_go_as_data_urls_fetched_once_even_when_the_submit_is_retried(via: str) -> None:
    """The first submit fails with a 500 before any task; the retry sends the same body, and no image
    is fetched a second time."""
    async with (
        image_server() as images,
        Emulator(speed=0.05) as emulator,
        proxy_client(
            emulator,
            {"/mj/submit/imagine": "500"},
            # A 500 leaves the fate open; the proxy has no trace id to prove absence with, so resending
            # is the caller's choice here (the emulator made nothing: phase=before).
            retry=mjasync.RetryPolicy(
                initial_delay=0.01, max_delay=0.05, reconcile_delay=0.01, on_ambiguous_submit="resubmit"
            ),
        ) as mj,
    ):
        urls = [images.at("/a.png"), images.at("/c.jpg")]
        job = mj.imagine("a cat in a hat", image_urls=urls)
        if via == "stream":
            async with job.stream() as updates:
                async for _ in updates:
                    pass
            result = updates.final
        else:
            result = await job.result(via="poll")
        assert result.image_url
        sent = submits(emulator, "imagine")
        assert len(sent) == 2 and sent[0] == sent[1]  # the retry reused the body
        assert sent[0]["prompt"] == "a cat in a hat"
        assert decoded(sent[0]["base64Array"]) == [IMAGES["/a.png"], IMAGES["/c.jpg"]]
        assert images.gets == {"/a.png": 1, "/c.jpg": 1}
        assert emulator.tasks_per_prompt == {"a cat in a hat": 1}
        assert emulator.fault_log and emulator.fault_log[0].phase == "before"


@pytest.mark.parametrize("path", ["/declared-big.png", "/streamed-big.png"])
async def test_an_image_over_the_bound_is_refused_before_any_submit(path: str) -> None:
    async with image_server() as images, Emulator() as emulator, proxy_client(emulator) as mj:
        with pytest.raises(mjasync.ResponseDecodeError, match="max_bytes"):
            await mj.imagine("a cat", image_urls=[images.at("/a.png"), images.at(path)])
        assert images.gets[path] == 1
        assert emulator.requests == []  # nothing sent, nothing billed


async def test_a_missing_image_is_refused_before_any_submit() -> None:
    async with image_server() as images, Emulator() as emulator, proxy_client(emulator) as mj:
        with pytest.raises(mjasync.NotFoundError):
            await mj.imagine("a cat", image_urls=[images.at("/missing.png")])
        with pytest.raises(mjasync.NotFoundError):
            async with mj.imagine("a dog", image_urls=[images.at("/missing.png")]).stream() as updates:
                async for _ in updates:
                    pass
        with pytest.raises(mjasync.NotFoundError):
            await mj.describe(images.at("/missing.png"))
        assert images.gets == {"/missing.png": 3}
        assert emulator.requests == []


async def test_describe_by_url_sends_the_image_bytes() -> None:
    async with image_server() as images, Emulator(speed=0.05) as emulator, proxy_client(emulator) as mj:
        described = await mj.describe(images.at("/b.png"))
        assert len(described.descriptions) == 4
        (body,) = submits(emulator, "describe")
        assert "link" not in body and decoded([body["base64"]]) == [IMAGES["/b.png"]]
        assert images.gets == {"/b.png": 1}


@pytest.mark.parametrize("count", [2, 5])
async def test_a_blend_sends_its_images_as_data_urls(count: int) -> None:
    async with image_server() as images, Emulator(speed=0.05) as emulator, proxy_client(emulator) as mj:
        paths = list(IMAGES)[:count]
        blended = await mj.blend([images.at(p) for p in paths], dimension="landscape")
        assert blended.image_url
        (body,) = submits(emulator, "blend")
        assert decoded(body["base64Array"]) == [IMAGES[p] for p in paths]
        assert body["dimensions"] == "LANDSCAPE"
        assert images.gets == dict.fromkeys(paths, 1)
