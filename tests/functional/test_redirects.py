"""Credentials never travel on a redirect: API calls do not follow one, downloads carry none to follow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

import mjasync

from ..helpers import serving, target_on

SECRET = "sk-redirect-secret-42"
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


@asynccontextmanager
async def redirector(location: str, status: int = 307) -> AsyncIterator[int]:
    """An origin whose every path redirects to `location`."""

    async def moved(request: web.Request) -> web.Response:
        raise _redirect(status, location)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", moved)
    async with serving(app) as port:
        yield port


def _redirect(status: int, location: str) -> web.HTTPException:
    classes = {
        301: web.HTTPMovedPermanently,
        302: web.HTTPFound,
        307: web.HTTPTemporaryRedirect,
        308: web.HTTPPermanentRedirect,
    }
    return classes[status](location=location)


LOCATIONS = {
    "other host": "http://127.0.0.2:{port}/midjourney/translate",
    "other port": "http://127.0.0.1:{port}/midjourney/translate",
    "other scheme": "https://127.0.0.1:{port}/midjourney/translate",
    "protocol-relative": "//127.0.0.2:{port}/midjourney/translate",
    "userinfo trick": "http://127.0.0.1:1@127.0.0.2:{port}/midjourney/translate",
}


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("kind", list(LOCATIONS))
async def test_api_calls_never_follow_a_redirect(kind: str, status: int) -> None:
    """A 3xx on an API call is raised, not followed: the other origin never sees a request or the key."""
    host = "127.0.0.2" if "127.0.0.2" in LOCATIONS[kind] else "127.0.0.1"
    async with (
        target_on(host) as (target, port),
        redirector(LOCATIONS[kind].format(port=port), status) as origin,
    ):
        async with mjasync.Client(
            api_key=SECRET, base_url=f"http://127.0.0.1:{origin}", default_headers={"x-team": "ops"}
        ) as mj:
            with pytest.raises(mjasync.APIStatusError, match="redirect") as caught:
                await mj.translate("猫")
            with pytest.raises(mjasync.APIStatusError):
                await mj.imagine("a cat").result(via="poll")
    assert caught.value.status == status
    assert target.seen == []
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
async def test_downloads_follow_redirects_without_any_credential(host: str) -> None:
    """Result files may sit behind a CDN redirect; the download follows it and sends no key or API header."""
    async with (
        target_on(host) as (target, port),
        redirector(f"http://{host}:{port}/image.png", 302) as origin,
    ):
        async with mjasync.Client(
            api_key=SECRET, base_url=f"http://127.0.0.1:{origin}", default_headers={"x-team": "ops"}
        ) as mj:
            data = await mj.download(f"http://127.0.0.1:{origin}/cdn/image.png")
    assert data.startswith(b"\x89PNG")
    assert len(target.seen) == 1
    headers = target.seen[0]
    assert all(name not in headers for name in CREDENTIAL_HEADERS)
    assert "x-team" not in headers
    assert SECRET not in " ".join(headers.values())
