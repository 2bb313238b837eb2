"""A server that echoes the request's credential everywhere it can: no error, chained cause or log shows it.

The server is written here (not the emulator, which never echoes a key): every answer carries the
request's `Authorization` (AceData) or `X-API-KEY` (GoAPI) in an `x-request-id` header and in its body
— a 200 whose body is garbage, an error body, a stream line that is malformed and arrives in two
chunks cut inside the key. Each failure is checked in `str`, `repr`, the formatted chain, every
attribute of every link, and what `logging.exception` writes.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

import mjasync
from mjasync._redact import redact

from ..conftest import FAST_POLL
from ..helpers import serving

KEY = "sk-echoed-3f9a1c7e5b2d4086a1c3e5f7"
GOAPI_KEY = "goapi-echoed-7d2e9b4a6c1f3085e2a4"
TASK_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def _echo(request: web.Request) -> str:
    return request.headers.get("Authorization") or request.headers.get("X-API-KEY") or ""


async def _answer(request: web.Request) -> web.StreamResponse:
    """Garbage, an error, or a broken stream, each carrying the credential the request came with."""
    echo = _echo(request)
    headers = {"x-request-id": echo}
    path = request.path
    if path in ("/midjourney/translate", "/mj/v2/describe", "/mj/v2/fetch") or (
        path == "/midjourney/imagine" and "ndjson" not in request.headers.get("accept", "")
    ):
        # A 200 that says it is JSON but is not: the echo half-quoted, as a broken template would.
        body = f'{{"content": "{echo}, "task_id": {echo}}}'
        return web.Response(body=body.encode(), content_type="application/json", headers=headers)
    if path == "/midjourney/imagine":
        response = web.StreamResponse(headers={**headers, "content-type": "application/x-ndjson"})
        await response.prepare(request)
        line = f'{{"progress": 5, "image_url": {echo}}}\n'.encode()
        cut = len(b'{"progress": 5, "image_url": ') + len(echo) // 2
        await response.write(b'{"progress": 1}\n' + line[:cut])
        await response.write(line[cut:])
        return response
    if path == "/midjourney/tasks":
        return web.json_response({"items": [], "count": 0}, headers=headers)
    # Everything else (describe on AceData, a GoAPI submit): an error body that quotes the key.
    return web.json_response(
        {"error": {"code": "bad_request", "message": f"rejected credential {echo}"}, "echo": echo},
        status=400,
        headers=headers,
    )


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", _answer)
    async with serving(app) as port:
        yield port


def _chain(error: BaseException) -> list[BaseException]:
    links: list[BaseException] = []
    todo: list[BaseException] = [error]
    while todo:
        exc = todo.pop()
        if any(exc is seen for seen in links):
            continue
        links.append(exc)
        todo += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    return links


def assert_hidden(error: BaseException, secret: str, caplog: pytest.LogCaptureFixture) -> None:
    """The secret (or a 6-character piece of its tail) shows nowhere: not in any link, attribute or log."""
    logging.getLogger("caller").exception("the call failed")
    texts = ["".join(traceback.format_exception(error)), caplog.text]
    for link in _chain(error):
        texts += [str(link), repr(link), repr(link.args)]
        texts += [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else repr(v) for v in vars(link).values()
        ]
    texts += [record.getMessage() for record in caplog.records]
    tail = secret[-12:]
    for text in texts:
        assert secret not in text, text
        assert redact(text) == text, text
        assert not any(tail[i : i + 6] in text for i in range(len(tail) - 5)), text


Call = Callable[[mjasync.Client], Awaitable[object]]
NO_RETRIES = mjasync.RetryPolicy(max_retries=0)
CASES: list[Any] = [
    pytest.param("acedata", {}, lambda mj: mj.translate("bonjour"), id="acedata-translate-200-garbage"),
    pytest.param("acedata", {}, lambda mj: mj.describe("https://x.test/a.png"), id="acedata-describe-400"),
    pytest.param("acedata", {}, lambda mj: mj.imagine("a cat").submit(), id="acedata-submit-200-garbage"),
    pytest.param(
        "acedata",
        {"retry": NO_RETRIES},
        lambda mj: mj.imagine("a cat").result(via="stream"),
        id="acedata-stream",
    ),
    pytest.param(
        "acedata",
        {},
        lambda mj: mj.imagine("a cat").result(via="stream"),
        id="acedata-stream-default-retries",
    ),
    pytest.param("acedata", {}, lambda mj: mj.imagine("a cat").result(via="sync"), id="acedata-sync"),
    pytest.param(
        "goapi", {}, lambda mj: mj.describe("https://x.test/a.png"), id="goapi-describe-200-garbage"
    ),
    pytest.param("goapi", {}, lambda mj: mj.imagine("a cat").submit(), id="goapi-submit-400"),
    pytest.param("goapi", {}, lambda mj: mj.task(TASK_ID).record(), id="goapi-fetch-200-garbage"),
    pytest.param(
        "goapi", {"retry": NO_RETRIES}, lambda mj: mj.imagine("a cat").result(via="stream"), id="goapi-stream"
    ),
]


@pytest.mark.parametrize(("provider", "options", "call"), CASES)
async def test_an_echoed_credential_shows_nowhere(
    provider: str, options: dict[str, Any], call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    """Every call against the echoing server fails with an `MJError` that does not show the key."""
    secret = KEY if provider == "acedata" else GOAPI_KEY
    caplog.set_level(logging.DEBUG, logger="mjasync")
    async with echo_server() as port:
        async with mjasync.Client(
            provider=provider, api_key=secret, base_url=f"http://127.0.0.1:{port}", poll=FAST_POLL, **options
        ) as mj:
            with anyio.fail_after(30):  # a hang detector only
                with pytest.raises(mjasync.MJError) as caught:
                    await call(mj)
            try:
                raise caught.value
            except mjasync.MJError as error:
                assert_hidden(error, secret, caplog)


async def test_the_default_stream_gives_up_ambiguously_without_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With default retries the broken stream ends in `AmbiguousSubmitError`, chained from the bad line."""
    async with echo_server() as port:
        async with mjasync.Client(api_key=KEY, base_url=f"http://127.0.0.1:{port}", poll=FAST_POLL) as mj:
            with anyio.fail_after(30), pytest.raises(mjasync.AmbiguousSubmitError) as caught:
                await mj.imagine("a cat").result(via="stream")
    assert any(isinstance(link, mjasync.MalformedLineError) for link in _chain(caught.value))
    try:
        raise caught.value
    except mjasync.AmbiguousSubmitError as error:
        assert_hidden(error, KEY, caplog)


@asynccontextmanager
async def bad_status_line_server() -> AsyncIterator[int]:
    """Answers with a status line aiohttp cannot parse, which it quotes in its error: the echoed key in it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        echo = b"".join(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith((b"authorization:", b"x-api-key:"))
        )
        writer.write(b"HTTP/1.1 2x0 " + echo + b"\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("provider", "call"),
    [
        pytest.param("acedata", lambda mj: mj.translate("bonjour"), id="acedata-translate"),
        pytest.param("goapi", lambda mj: mj.task(TASK_ID).record(), id="goapi-fetch"),
    ],
)
async def test_a_status_line_quoting_the_key_is_scrubbed_from_the_chained_cause(
    provider: str, call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's own error quotes the bad line and keeps the request's headers: the chained cause is cleaned."""
    secret = KEY if provider == "acedata" else GOAPI_KEY
    async with bad_status_line_server() as port:
        async with mjasync.Client(
            provider=provider, api_key=secret, base_url=f"http://127.0.0.1:{port}", retry=NO_RETRIES
        ) as mj:
            with anyio.fail_after(30), pytest.raises(mjasync.APIConnectionError) as caught:
                await call(mj)
    assert "Bad status line" in str(caught.value) and caught.value.__cause__ is not None
    try:
        raise caught.value
    except mjasync.APIConnectionError as error:
        assert_hidden(error, secret, caplog)
