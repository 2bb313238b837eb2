"""GoAPI's key never travels on a redirect: API calls do not follow one, downloads carry no key to follow.

GoAPI sends its key as ``X-API-KEY``. aiohttp drops only ``Authorization`` when it follows a redirect to
another origin, so a custom credential header is exactly the one that would leak if a call followed a
3xx: these tests pin that submits (``/mj/v2/imagine``) and task lookups (``/mj/v2/fetch``) never follow
one, whatever the status or the trick in ``Location``, and that downloads follow a CDN's redirect with
no key and no ``default_headers`` at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web

import mjasync

from ..conftest import FAST_POLL, open_connections
from ..helpers import serving, target_on

SECRET = "goapi-redirect-secret-42"
CREDENTIAL_HEADERS = ("x-api-key", "authorization")
TASK_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def _redirect_class(status: int) -> type[web.HTTPException]:
    return {
        301: web.HTTPMovedPermanently,
        302: web.HTTPFound,
        303: web.HTTPSeeOther,
        307: web.HTTPTemporaryRedirect,
        308: web.HTTPPermanentRedirect,
    }[status]


def _redirect(status: int, location: str, request: web.Request) -> web.HTTPException:
    """A 3xx to `location` whose body echoes the key the request carried (errors must scrub it)."""
    echo = request.headers.get("X-API-KEY", "")
    return _redirect_class(status)(location=location, text=f'{{"message": "moved; your key was {echo}"}}')


@asynccontextmanager
async def redirector(
    location: str, status: int = 307, *, accept_submits: bool = False
) -> AsyncIterator[tuple[int, list[dict[str, str]]]]:
    """An origin whose paths redirect to `location`; yields its port and the headers it was sent.

    With `accept_submits`, ``/mj/v2/imagine`` is answered as GoAPI would (a task id) and only the
    other paths (the lookups) redirect.
    """
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        if accept_submits and request.path == "/mj/v2/imagine":
            return web.json_response({"task_id": TASK_ID, "status": "success", "message": ""})
        raise _redirect(status, location, request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serving(app) as port:
        yield port, seen


LOCATIONS = {
    "other host": "http://127.0.0.2:{port}{path}",
    "other port": "http://127.0.0.1:{port}{path}",
    "other scheme": "https://127.0.0.1:{port}{path}",
    "protocol-relative": "//127.0.0.2:{port}{path}",
    "userinfo trick": "http://127.0.0.1:1@127.0.0.2:{port}{path}",
}
STATUSES = [301, 302, 307, 308]


def goapi_client(origin: int, **options: Any) -> mjasync.Client:
    return mjasync.Client(
        provider="goapi",
        api_key=SECRET,
        base_url=f"http://127.0.0.1:{origin}",
        default_headers={"x-team": "ops"},
        poll=FAST_POLL,
        **options,
    )


def assert_no_credential(headers: dict[str, str]) -> None:
    """No credential header, no API-only header, and the key's value nowhere in any header."""
    assert all(name not in headers for name in CREDENTIAL_HEADERS), headers
    assert "x-team" not in headers
    assert all(SECRET not in value for value in headers.values()), headers


def assert_redirect_error(error: BaseException, status: int) -> None:
    """The typed error of a refused redirect: its status, and never the key, however it is shown."""
    assert type(error) is mjasync.APIStatusError, repr(error)
    assert error.status == status
    assert "redirect" in error.message
    assert error.retries_taken == 0, "a redirect is not retried"
    for shown in (str(error), repr(error), error.message, error.body or "", error.trace_id or ""):
        assert SECRET not in shown


def host_of(kind: str) -> str:
    return "127.0.0.2" if "127.0.0.2" in LOCATIONS[kind] else "127.0.0.1"


Call = Callable[[mjasync.Client], Awaitable[object]]
CALLS: dict[str, tuple[str, Call]] = {
    "submit": ("/mj/v2/imagine", lambda mj: mj.imagine("a cat").result(via="poll")),
    "submit (stream)": ("/mj/v2/imagine", lambda mj: mj.imagine("a cat").result(via="stream")),
    "fetch (record)": ("/mj/v2/fetch", lambda mj: mj.task(TASK_ID).record()),
    "fetch (retrieve_task)": ("/mj/v2/fetch", lambda mj: mj.retrieve_task(TASK_ID)),
    "multi_fetch": ("/mj/v2/multi_fetch", lambda mj: mj.retrieve_tasks([TASK_ID, TASK_ID[::-1]])),
}


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("kind", list(LOCATIONS))
@pytest.mark.parametrize("call", list(CALLS))
async def test_api_calls_never_follow_a_redirect(call: str, kind: str, status: int) -> None:
    """A 3xx on a submit or a lookup is raised, not followed: the other origin never sees a request or the key."""
    path, run = CALLS[call]
    async with (
        target_on(host_of(kind)) as (target, port),
        redirector(LOCATIONS[kind].format(port=port, path=path), status) as (origin, origin_seen),
    ):
        async with goapi_client(origin) as mj:
            with anyio.fail_after(10):
                with pytest.raises(mjasync.APIStatusError) as caught:
                    await run(mj)
            assert open_connections(mj) == 0
    assert target.seen == []
    assert_redirect_error(caught.value, status)
    # The key went where it belongs, once (nothing retried), under GoAPI's header only.
    assert len(origin_seen) == 1
    assert origin_seen[0]["x-api-key"] == SECRET
    assert "authorization" not in origin_seen[0]


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("kind", ["other host", "protocol-relative", "userinfo trick"])
async def test_a_wait_whose_lookup_redirects_ends_with_the_redirect_error(kind: str, status: int) -> None:
    """The submit is accepted, then every lookup redirects: the wait ends (a refusal), following nothing."""
    async with (
        target_on(host_of(kind)) as (target, port),
        redirector(LOCATIONS[kind].format(port=port, path="/mj/v2/fetch"), status, accept_submits=True) as (
            origin,
            origin_seen,
        ),
    ):
        async with goapi_client(origin) as mj:
            with anyio.fail_after(10):
                with pytest.raises(mjasync.APIStatusError) as caught:
                    await mj.imagine("a cat").result(via="poll")
            assert open_connections(mj) == 0
    assert target.seen == []
    assert_redirect_error(caught.value, status)
    assert [h["x-api-key"] for h in origin_seen] == [SECRET, SECRET], "one submit, one lookup"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
async def test_downloads_follow_redirects_without_any_credential(host: str, status: int) -> None:
    """A result file behind a CDN redirect is fetched there with no key, no Authorization, no API header."""
    async with target_on(host) as (target, port):
        location = f"http://{host}:{port}/image.png"

        async def moved(request: web.Request) -> web.Response:
            origin_seen.append({k.lower(): v for k, v in request.headers.items()})
            raise _redirect_class(status)(location=location)

        origin_seen: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", moved)
        async with serving(app) as origin:
            async with goapi_client(origin) as mj:
                data = await mj.download(f"http://127.0.0.1:{origin}/cdn/image.png")
                assert open_connections(mj) == 0
    assert data.startswith(b"\x89PNG")
    assert len(target.seen) == 1
    assert_no_credential(target.seen[0])
    # The download never carried the key to begin with, not even to the API's own origin.
    assert len(origin_seen) == 1
    assert_no_credential(origin_seen[0])


@pytest.mark.parametrize("name", ["X-API-KEY", "x-api-key", "X-Api-Key"])
def test_the_key_cannot_be_set_as_a_default_header(name: str) -> None:
    """``default_headers`` may not carry GoAPI's credential header, in any case: the key goes in api_key=."""
    with pytest.raises(mjasync.InvalidRequestError, match="api_key"):
        mjasync.Client(provider="goapi", api_key=SECRET, default_headers={name: SECRET})
    with pytest.raises(mjasync.InvalidRequestError, match="api_key"):
        mjasync.Client(provider="goapi", api_key=SECRET).with_options(default_headers={name: SECRET})


@pytest.mark.parametrize("call", ["submit", "fetch (record)"])
async def test_a_redirect_echoing_the_key_in_a_header_never_shows_it(call: str) -> None:
    """A hostile 3xx that echoes the key in ``x-request-id``: the error still never shows the key."""
    path, run = CALLS[call]

    async def moved(request: web.Request) -> web.Response:
        echo = request.headers.get("X-API-KEY", "")
        raise web.HTTPFound(location=f"http://127.0.0.2:1{path}", headers={"x-request-id": f"req-{echo}"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", moved)
    async with serving(app) as origin:
        async with goapi_client(origin) as mj:
            with pytest.raises(mjasync.APIStatusError) as caught:
                await run(mj)
    assert caught.value.status == 302
    assert SECRET not in (caught.value.trace_id or "")
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value)
