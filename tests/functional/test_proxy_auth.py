"""The key on a midjourney-proxy gateway: `mj-api-secret` by default, `Authorization: Bearer` for the
gateways that want it ("midjourney-proxy-bearer"), a wrong one refused as `AuthenticationError`, and
the key in no error, repr or log."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

import mjasync
from mjasync._providers import api_key_env, get_provider
from mjasync.emulator import Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL

KEY = "sk-proxy-0123456789abcdef"
TASK = {"id": "1700000000000001", "action": "IMAGINE", "status": "SUBMITTED", "progress": "0%"}


@asynccontextmanager
async def header_recorder(seen: list[dict[str, str]]) -> AsyncIterator[str]:
    """A gateway on 127.0.0.1 that notes each request's headers and accepts every submit."""

    async def submit(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"code": 1, "description": "提交成功", "result": TASK["id"]})

    app = web.Application()
    app.router.add_post("/mj/submit/imagine", submit)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("provider", "sent", "absent"),
    [
        ("midjourney-proxy", "mj-api-secret", "authorization"),
        ("midjourney-proxy-bearer", "authorization", "mj-api-secret"),
    ],
)
async def test_the_key_goes_in_the_header_the_variant_names(provider: str, sent: str, absent: str) -> None:
    seen: list[dict[str, str]] = []
    async with header_recorder(seen) as url:
        async with mjasync.Client(api_key=KEY, base_url=url, provider=provider) as mj:  # type: ignore[arg-type]
            handle = await mj.imagine("a lighthouse").submit()
    assert handle.task_id == TASK["id"]
    (headers,) = seen
    lower = {k.lower(): v for k, v in headers.items()}
    expected = f"Bearer {KEY}" if sent == "authorization" else KEY
    assert lower[sent] == expected
    assert absent not in lower


def test_the_bearer_variant_reads_no_proxy_secret_from_the_environment() -> None:
    """A gateway's bearer key (new-api's `sk-...`) is its own, never the proxy's `MJ_API_SECRET`."""
    assert api_key_env(get_provider("midjourney-proxy")) == ("MJASYNC_API_KEY", "MJ_API_SECRET")
    assert api_key_env(get_provider("midjourney-proxy-bearer")) == ("MJASYNC_API_KEY",)


@pytest.mark.parametrize("provider", ["midjourney-proxy", "midjourney-proxy-bearer"])
async def test_a_wrong_secret_is_an_authentication_error_that_never_shows_it(
    provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-secret-6f1d2c9e"
    async with Emulator(speed=0.05, tokens=(EMULATOR_TOKEN,)) as emulator:
        async with mjasync.Client(
            api_key=wrong,
            base_url=emulator.url,
            provider=provider,  # type: ignore[arg-type]
            poll=FAST_POLL,
        ) as mj:
            with pytest.raises(mjasync.AuthenticationError) as caught:
                await mj.imagine("a lighthouse")
            assert wrong not in repr(mj)
        assert caught.value.status == 401
        assert emulator.tasks_per_prompt == {}
    error = caught.value
    texts = [str(error), repr(error), str(error.body), caplog.text]
    cause = error.__cause__
    while cause is not None:
        texts.append(repr(cause))
        cause = cause.__cause__
    assert not any(wrong in text for text in texts)
