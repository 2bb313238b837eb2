"""Downloads go through the transport: bounded in size, their failures typed, a file never left half-written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

import mjasync

from ..helpers import serving

KEY = "sk-download-test"
BODY = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # 10 248 bytes


def names_in(folder: Path) -> list[str]:
    """The names in `folder` (a partial `.part` file too), sorted."""
    return sorted(path.name for path in folder.iterdir())


@asynccontextmanager
async def files_server() -> AsyncIterator[str]:
    """An origin serving `/whole` (with a length), `/chunked` (without one), `/cut` (drops mid-body), `/gone` (404)."""

    async def whole(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="image/png")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(BODY), 1000):
            await response.write(BODY[start : start + 1000])
        await response.write_eof()
        return response

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "image/png", "content-length": str(len(BODY))})
        await response.prepare(request)
        await response.write(BODY[:100])
        assert request.transport is not None
        request.transport.close()
        return response

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no such file")

    app = web.Application()
    app.router.add_get("/whole", whole)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/cut", cut)
    app.router.add_get("/gone", gone)
    async with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("path", ["/whole", "/chunked"])
async def test_a_download_reads_the_whole_file_within_its_cap(path: str, tmp_path: Path) -> None:
    async with files_server() as origin, mjasync.Client(api_key=KEY, base_url=origin) as mj:
        assert await mj.download(origin + path, max_bytes=len(BODY)) == BODY
        saved = await mj.download_to(origin + path, tmp_path / "deep" / "file.png", max_bytes=len(BODY))
    assert saved.read_bytes() == BODY
    assert names_in(saved.parent) == ["file.png"]


@pytest.mark.parametrize(("path", "message"), [("/whole", "is 10248 bytes, over"), ("/chunked", "is over")])
async def test_a_file_over_the_cap_is_refused_and_never_saved(
    path: str, message: str, tmp_path: Path
) -> None:
    async with files_server() as origin, mjasync.Client(api_key=KEY, base_url=origin) as mj:
        with pytest.raises(mjasync.ResponseDecodeError, match=message):
            await mj.download(origin + path, max_bytes=len(BODY) - 1)
        with pytest.raises(mjasync.ResponseDecodeError, match=message):
            await mj.download_to(origin + path, tmp_path / "file.png", max_bytes=len(BODY) - 1)
    assert names_in(tmp_path) == []


async def test_a_transfer_cut_short_raises_a_connection_error_and_leaves_no_file(tmp_path: Path) -> None:
    async with files_server() as origin, mjasync.Client(api_key=KEY, base_url=origin) as mj:
        with pytest.raises(mjasync.APIConnectionError) as caught:
            await mj.download(origin + "/cut")
        with pytest.raises(mjasync.APIConnectionError):
            await mj.download_to(origin + "/cut", tmp_path / "file.png")
    assert caught.value.request == "GET " + origin + "/cut"
    assert names_in(tmp_path) == []


async def test_a_missing_file_is_the_providers_typed_error(tmp_path: Path) -> None:
    async with files_server() as origin, mjasync.Client(api_key=KEY, base_url=origin) as mj:
        with pytest.raises(mjasync.NotFoundError):
            await mj.download(origin + "/gone?sig=abc")
    async with files_server() as origin, mjasync.Client(api_key=KEY, base_url=origin) as mj:
        with pytest.raises(mjasync.NotFoundError):
            await mj.download_to(origin + "/gone", tmp_path / "file.png")
    assert names_in(tmp_path) == []


async def test_a_careless_url_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    async with mjasync.Client(api_key=KEY, base_url="http://127.0.0.1:9") as mj:
        for url in ("ftp://127.0.0.1/file.png", "not a url"):
            with pytest.raises(mjasync.InvalidRequestError, match="url"):
                await mj.download(url)
            with pytest.raises(mjasync.InvalidRequestError, match="url"):
                await mj.download_to(url, tmp_path / "file.png")
    assert names_in(tmp_path) == []
