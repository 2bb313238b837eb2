"""Client behaviour against the emulator: validation before sending, errors, lifecycle, options, logging."""

from __future__ import annotations

import gzip
import json
import logging
import tracemalloc
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import mjasync
from mjasync.emulator import Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL, open_connections
from ..helpers import free_port, serving

URL = "https://cdn.example.com/a.png"


async def grid_and_upscale(mj: mjasync.Client) -> tuple[mjasync.ImagineResult, mjasync.ImagineResult]:
    grid = await mj.imagine("a cat")
    return grid, await mj.upscale(grid, 1)


BAD_INPUTS: list[tuple[str, Any]] = [
    ("six image urls", lambda mj, g, u: mj.imagine("x", image_urls=[URL] * 6)),
    ("blend of six", lambda mj, g, u: mj.blend([URL] * 6, "x")),
    ("blend of one", lambda mj, g, u: mj.blend([URL], "x")),
    ("ftp url", lambda mj, g, u: mj.imagine("x", image_urls=["ftp://example.com/a.png"])),
    ("javascript url", lambda mj, g, u: mj.imagine("x", image_urls=["javascript:alert(1)"])),
    ("relative url", lambda mj, g, u: mj.edits("/a.png", "x")),
    ("unknown mode", lambda mj, g, u: mj.imagine("x", mode="ludicrous")),
    ("relax video", lambda mj, g, u: mj.videos(URL, mode="relax")),
    ("bad resolution", lambda mj, g, u: mj.videos(URL, resolution="4k")),
    ("action not listed on a grid", lambda mj, g, u: mj.upscale_2x(g)),
    ("action not listed on an upscale", lambda mj, g, u: mj.upscale(u, 2)),
    ("unknown action on a result", lambda mj, g, u: mj.act(g, "teleport")),
    ("grid index 5", lambda mj, g, u: mj.upscale(g, 5)),
    ("grid index 0", lambda mj, g, u: mj.variation(g, 0)),
    ("zoom 3x", lambda mj, g, u: mj.zoom_out(u, 3)),
    ("pan sideways", lambda mj, g, u: mj.pan(u, "sideways")),
    ("region without mask", lambda mj, g, u: mj.variation_region(u, None)),
    ("mask not an image", lambda mj, g, u: mj.variation_region(u, b"not an image")),
    ("empty prompt", lambda mj, g, u: mj.imagine("   ")),
    ("negative server wait", lambda mj, g, u: mj.imagine("x", server_wait=-1)),
    ("stylize out of range", lambda mj, g, u: mj.imagine("x", params=mjasync.PromptParams(stylize=5000))),
    ("bad version", lambda mj, g, u: mj.imagine("x", version="seven")),
    ("bad quality", lambda mj, g, u: mj.imagine("x", quality="3")),
    ("bad callback url", lambda mj, g, u: mj.imagine("x", callback_url="not a url")),
    ("video index 4", lambda mj, g, u: mj.extend_video("123", index=4)),
    ("empty translate", lambda mj, g, u: mj.translate("")),
    ("describe ftp", lambda mj, g, u: mj.describe("ftp://x/y.png")),
    ("task id and trace id", lambda mj, g, u: mj.retrieve_task("a", trace_id="b")),
    ("task ids as one string", lambda mj, g, u: mj.retrieve_tasks("abc")),
]


@pytest.mark.parametrize(("name", "make"), BAD_INPUTS, ids=[n for n, _ in BAD_INPUTS])
async def test_bad_input_raises_before_anything_is_sent(
    mj: mjasync.Client, mj_emulator: Any, name: str, make: Any
) -> None:
    """Each bad input raises a clear InvalidRequestError and the emulator sees no request for it."""
    grid, upscaled = await grid_and_upscale(mj)
    before = len(mj_emulator.requests)
    with pytest.raises(mjasync.InvalidRequestError) as caught:
        result = make(mj, grid, upscaled)
        if hasattr(result, "__await__"):
            await result
    assert str(caught.value), "the error says what is wrong"
    assert len(mj_emulator.requests) == before, f"{name}: a request was sent"


async def test_unlisted_action_error_names_the_available_ones(mj: mjasync.Client) -> None:
    """ActionNotAvailableError lists what the result does offer."""
    grid = await mj.imagine("a cat")
    with pytest.raises(mjasync.ActionNotAvailableError) as caught:
        mj.pan(grid, "left")
    assert caught.value.action == "pan_left" and "upscale1" in caught.value.available
    assert "upscale1" in str(caught.value)


async def test_any_listed_action_string_is_accepted(mj: mjasync.Client, mj_emulator: Any) -> None:
    """act() takes any action the result lists, and a bare image_id with any action name."""
    grid = await mj.imagine("a cat")
    assert (await mj.act(grid, "reroll")).is_final
    assert grid.image_id is not None
    assert (await mj.act(grid.image_id, "upscale3")).actions


async def test_wrong_token_maps_to_authentication_error_without_the_token(mj_emulator: Any) -> None:
    """A 401 becomes AuthenticationError with status, code and trace_id; the key is in neither str nor repr."""
    secret = "sk-wrong-0123456789"
    async with mjasync.Client(api_key=secret, base_url=mj_emulator.url) as client:
        with pytest.raises(mjasync.AuthenticationError) as caught:
            await client.imagine("a cat")
        assert open_connections(client) == 0
    error = caught.value
    assert error.status == 401 and error.code == "invalid_token" and error.trace_id
    for text in (str(error), repr(error), error.body or "", error.message):
        assert secret not in text
    assert secret not in repr(client)


async def test_moderation_and_unknown_image_map_to_their_classes(mj: mjasync.Client) -> None:
    """A banned word gives ModerationError (403 forbidden); an unknown image_id gives BadRequestError."""
    with pytest.raises(mjasync.ModerationError) as moderation:
        await mj.imagine("something with gore in it")
    assert (
        moderation.value.status == 403 and moderation.value.code == "forbidden" and moderation.value.trace_id
    )
    with pytest.raises(mjasync.BadRequestError) as unknown:
        await mj.act("999999", "upscale1")
    assert unknown.value.status == 400 and unknown.value.trace_id


async def test_errors_in_every_wait_strategy_are_typed(mj: mjasync.Client) -> None:
    """Moderation is raised the same way whether the job streams, polls or waits synchronously."""
    for via in ("stream", "poll", "sync"):
        with pytest.raises(mjasync.ModerationError):
            await mj.imagine("gore").result(via=via)  # type: ignore[arg-type]


async def test_sync_wait_past_the_server_timeout_raises_gateway_timeout() -> None:
    """A synchronous call reads longer than the `server_wait` it sends, so the provider's 504 arrives first.

    The client's idle read limit is set far below the server timeout: had the long wait used it, the
    call would end in APITimeoutError, and the task id the 504 keeps would be lost.
    """
    short_reads = mjasync.Timeouts(read=0.05, long_wait_margin=5.0)
    no_resilience = mjasync.RetryPolicy(max_retries=0)  # show the raw 504, not its resumption
    async with Emulator(tokens=(EMULATOR_TOKEN,), speed=5.0) as emulator:
        async with mjasync.Client(
            api_key=EMULATOR_TOKEN, base_url=emulator.url, timeouts=short_reads, retry=no_resilience
        ) as client:
            with pytest.raises(mjasync.GatewayTimeoutError) as caught:
                await client.imagine("a slow cat", server_wait=0.5).result(via="sync")
            assert [r.json["timeout"] for r in emulator.requests if r.json] == [0.5]
    assert caught.value.status == 504
    assert caught.value.code == "timeout"
    assert isinstance(caught.value, mjasync.ServerError)


async def test_sequential_calls_reuse_one_keep_alive_connection(mj: mjasync.Client) -> None:
    """Five calls in a row go over one pooled connection, not five."""
    for _ in range(5):
        await mj.translate("猫")
    session = mj._pool._session
    assert session is not None
    pooled = session.connector._conns  # type: ignore[union-attr]
    assert sum(len(conns) for conns in pooled.values()) == 1


async def test_wait_deadline_raises_wait_timeout_and_the_task_stays_known() -> None:
    """handle.wait(deadline=...) gives up with WaitTimeoutError carrying the task_id."""
    async with Emulator(tokens=(EMULATOR_TOKEN,), speed=30.0) as emulator:
        async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=emulator.url, poll=FAST_POLL) as client:
            handle = await client.imagine("a slow cat").submit()
            with pytest.raises(mjasync.WaitTimeoutError) as caught:
                await handle.wait(deadline=0.2)
            assert caught.value.task_id == handle.task_id
            record = await handle.record()
            assert record.id == handle.task_id
            assert client.statistics().lookups >= 1


async def test_breaking_out_of_a_stream_releases_its_connection(mj: mjasync.Client) -> None:
    """Leaving a stream early (the `async with` exits) leaves no connection checked out."""
    async with mj.imagine("a cat").stream() as updates:
        async for update in updates:
            assert update.task_id
            break
    assert open_connections(mj) == 0
    assert (await mj.imagine("another cat")).is_final


async def test_client_reads_key_and_url_from_the_environment(
    mj_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MJASYNC_API_KEY, then ACEDATACLOUD_API_TOKEN; MJASYNC_BASE_URL."""
    monkeypatch.delenv("MJASYNC_API_KEY", raising=False)
    monkeypatch.setenv("ACEDATACLOUD_API_TOKEN", EMULATOR_TOKEN)
    monkeypatch.setenv("MJASYNC_BASE_URL", mj_emulator.url)
    async with mjasync.Client() as client:
        assert client.base_url == mj_emulator.url
        assert (await client.translate("猫")).content
    monkeypatch.setenv("MJASYNC_API_KEY", "other-key")
    async with mjasync.Client() as client:
        with pytest.raises(mjasync.AuthenticationError):
            await client.translate("猫")
    monkeypatch.delenv("MJASYNC_API_KEY")
    monkeypatch.delenv("ACEDATACLOUD_API_TOKEN")
    with pytest.raises(mjasync.InvalidRequestError, match="MJASYNC_API_KEY"):
        mjasync.Client()


def test_constructor_rejects_bad_options() -> None:
    """Options are checked when the client is built."""
    with pytest.raises(mjasync.InvalidRequestError):
        mjasync.Client(api_key="k", base_url="ftp://example.com")
    with pytest.raises(mjasync.InvalidRequestError):
        mjasync.Client(api_key="k", provider="nope")
    with pytest.raises(mjasync.InvalidRequestError):
        mjasync.Client(api_key="k", wait_via="carrier-pigeon")  # type: ignore[arg-type]
    with pytest.raises(mjasync.InvalidRequestError):
        mjasync.Client(api_key="k", default_headers={"Authorization": "Bearer x"})
    with pytest.raises(mjasync.InvalidRequestError):
        mjasync.Timeouts(connect=0)
    with pytest.raises(mjasync.InvalidRequestError):
        mjasync.Limits(max_connections=0)


async def test_with_options_shares_the_pool_and_only_the_owner_closes_it(mj_emulator: Any) -> None:
    """A derived client reuses the parent's session; closing it leaves the parent usable."""
    async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=mj_emulator.url) as parent:
        child = parent.with_options(timeouts=mjasync.Timeouts(read=5.0), wait_via="poll", poll=FAST_POLL)
        assert (await child.imagine("a cat")).is_final
        assert child._pool is parent._pool
        await child.aclose()
        assert (await parent.translate("猫")).content
    assert parent._pool.closed
    with pytest.raises(RuntimeError, match="closed"):
        await parent.translate("猫")


async def test_injected_session_is_used_and_left_open(mj_emulator: Any) -> None:
    """An aiohttp session passed in is used for requests and not closed by the client."""
    async with aiohttp.ClientSession() as session:
        async with mjasync.Client(
            api_key=EMULATOR_TOKEN, base_url=mj_emulator.url, http_session=session
        ) as client:
            assert (await client.imagine("a cat")).is_final
        assert not session.closed
    assert mj_emulator.requests


async def test_default_headers_are_sent(mj_emulator: Any) -> None:
    """default_headers go out with every API request."""
    async with mjasync.Client(
        api_key=EMULATOR_TOKEN, base_url=mj_emulator.url, default_headers={"x-team": "render-farm"}
    ) as client:
        await client.translate("猫")
    assert mj_emulator.requests[-1].headers.get("x-team") == "render-farm"


async def test_debug_log_shows_method_path_status_and_never_the_key(
    mj: mjasync.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The mjasync logger says which request went where and how it ended, with no credential."""
    with caplog.at_level(logging.DEBUG, logger="mjasync"):
        await mj.imagine("a cat")
        with pytest.raises(mjasync.ModerationError):
            await mj.imagine("gore")
    lines = [r.getMessage() for r in caplog.records if r.name == "mjasync"]
    assert any("POST /midjourney/imagine -> 200" in line for line in lines)
    assert any("POST /midjourney/imagine -> 403" in line for line in lines)
    assert all(EMULATOR_TOKEN not in line for line in lines)


async def test_connection_refused_is_a_connection_error_that_never_reached_the_server() -> None:
    """A closed port raises APIConnectionError with may_have_reached_server False."""
    port = free_port()
    async with mjasync.Client(api_key="k", base_url=f"http://127.0.0.1:{port}") as client:
        with pytest.raises(mjasync.APIConnectionError) as caught:
            await client.imagine("a cat")
    assert caught.value.may_have_reached_server is False


async def test_redirects_are_not_followed(mj_emulator: Any) -> None:
    """A 3xx is reported, not followed, so the key never travels to the Location."""

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(location=f"{mj_emulator.url}/midjourney/translate")

    app = web.Application()
    app.router.add_post("/midjourney/translate", moved)
    async with serving(app) as port:
        async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=f"http://127.0.0.1:{port}") as client:
            with pytest.raises(mjasync.APIStatusError, match="redirect") as caught:
                await client.translate("猫")
        assert caught.value.status == 307
        assert not [r for r in mj_emulator.requests if r.path == "/midjourney/translate"]


def test_client_is_built_outside_a_loop_and_leaves_no_tasks() -> None:
    """A Client made in plain sync code works inside a later loop and leaves no task behind when closed."""
    import asyncio

    client_holder: dict[str, mjasync.Client] = {}

    async def scenario() -> set[asyncio.Task[Any]]:
        async with Emulator(tokens=(EMULATOR_TOKEN,)) as emulator:
            client = mjasync.Client(api_key=EMULATOR_TOKEN, base_url=emulator.url, poll=FAST_POLL)
            client_holder["c"] = client
            before = asyncio.all_tasks()
            async with client:
                assert (await client.imagine("a cat")).is_final
                assert (await client.imagine("a dog").result(via="poll")).is_final
            await client.aclose()  # idempotent
            await asyncio.sleep(0)
            return asyncio.all_tasks() - before

    leftover = asyncio.run(scenario())
    assert leftover == set()
    assert client_holder["c"]._pool.closed


async def _silent_server(drop: bool) -> tuple[Any, int]:
    """A 127.0.0.1 server that reads a request, then closes the connection (drop) or never answers.

    `server.seen` lists the request lines it received.
    """
    import asyncio

    held: list[asyncio.StreamWriter] = []
    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n", 1)[0].decode())
        if drop:
            writer.close()
        else:
            held.append(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.held = held  # type: ignore[attr-defined]
    server.seen = seen  # type: ignore[attr-defined]
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("drop", "error"),
    [(True, mjasync.APIConnectionError), (False, mjasync.APITimeoutError)],
    ids=["drop", "stall"],
)
async def test_failure_after_sending_may_have_reached_the_server(drop: bool, error: type[Exception]) -> None:
    """A connection dropped, or a read that times out, after the request went out may have created a task.

    With the resilience layer off, the raw error says so; with it on, the submit is not sent again
    (the lookup fails too here), and the caller gets AmbiguousSubmitError.
    """
    server, port = await _silent_server(drop)
    try:
        timeouts = mjasync.Timeouts(read=0.2, stream_read=0.2)
        base_url = f"http://127.0.0.1:{port}"
        raw = mjasync.RetryPolicy(max_retries=0)
        async with mjasync.Client(api_key="k", base_url=base_url, timeouts=timeouts, retry=raw) as client:
            for via in ("poll", "stream"):
                with pytest.raises(error) as caught:
                    await client.imagine("a cat").result(via=via)  # type: ignore[arg-type]
                assert caught.value.may_have_reached_server is True  # type: ignore[attr-defined]
            assert open_connections(client) == 0
        server.seen.clear()
        fast = mjasync.RetryPolicy(reconcile_delay=0.01, initial_delay=0.01)
        async with mjasync.Client(api_key="k", base_url=base_url, timeouts=timeouts, retry=fast) as client:
            with pytest.raises(mjasync.AmbiguousSubmitError) as ambiguous:
                await client.imagine("a cat").result(via="poll")
            assert isinstance(ambiguous.value.__cause__, error)
            assert open_connections(client) == 0
        assert [line for line in server.seen if "imagine" in line] == ["POST /midjourney/imagine HTTP/1.1"]
    finally:
        for writer in server.held:
            writer.close()
        server.close()
        await server.wait_closed()


def _gzip_json(padding: int, **fields: Any) -> bytes:
    """A JSON object with `padding` spaces inside a string, gzip'd: a few KiB on the wire, large inflated."""
    return gzip.compress(json.dumps({**fields, "pad": " " * padding}).encode(), compresslevel=9)


@pytest.mark.parametrize("status", [200, 500])
async def test_a_small_compressed_answer_is_not_inflated_past_the_limit(status: int) -> None:
    """A gzip body declares its compressed length; it is still read only up to the limit once inflated.

    Both answers inflate to 64 MiB from ~64 KiB on the wire. A success over `max_response_bytes` is
    refused; an error body is cut at its own cap. Either way the client never holds the inflated body.
    """
    inflated = 64 << 20
    fields = {"task_id": "t"} if status == 200 else {"error": {"code": "api_error", "message": "m"}}
    body = _gzip_json(inflated, **fields)

    async def translate(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            status=status,
            body=body,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )

    app = web.Application()
    app.router.add_post("/midjourney/translate", translate)
    async with serving(app) as port:
        async with mjasync.Client(
            api_key=EMULATOR_TOKEN,
            base_url=f"http://127.0.0.1:{port}",
            max_response_bytes=1 << 20,
            retry=mjasync.RetryPolicy(max_retries=0),
        ) as client:
            tracemalloc.start()
            try:
                with pytest.raises(mjasync.MJError) as caught:
                    await client.translate("猫")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert len(body) < inflated // 256
    if status == 200:
        assert isinstance(caught.value, mjasync.ResponseDecodeError)
        assert "limit" in str(caught.value)
    else:
        assert isinstance(caught.value, mjasync.ServerError)
        assert caught.value.status == 500
    assert peak < 16 << 20, f"held {peak / 2**20:.1f} MiB for a {len(body)}-byte answer"


def _ndjson_app(lines: list[dict[str, Any]]) -> web.Application:
    """An imagine endpoint that answers with all of `lines` in one write (one chunk for the reader)."""

    async def imagine(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/midjourney/imagine", imagine)
    return app


def _progress(task_id: str, progress: int, **extra: Any) -> dict[str, Any]:
    return {
        "success": True,
        "task_id": task_id,
        "image_id": f"img-{progress}",
        "image_url": f"https://cdn.example/{progress}.png",
        "progress": progress,
        **extra,
    }


async def test_a_failure_among_lines_read_together_raises_and_frees_the_stream() -> None:
    """Lines decoded from one chunk are handed out one by one; a failed line raises there, once."""
    lines = [
        _progress("t1", 20),
        _progress("t1", 40),
        {"success": False, "task_id": "t1", "error": {"code": "bad_request", "message": "banned"}},
        _progress("t1", 60),
    ]
    async with serving(_ndjson_app(lines)) as port:
        async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=f"http://127.0.0.1:{port}") as client:
            seen: list[float | None] = []
            with pytest.raises(mjasync.JobFailedError) as caught:
                async with client.imagine("a cat").stream() as updates:
                    async for update in updates:
                        seen.append(update.progress)
            assert seen == [20, 40]
            assert caught.value.task_id == "t1"
            assert caught.value.code == "bad_request"
            assert open_connections(client) == 0
            assert client.statistics().limiter.in_flight == 0
            with pytest.raises(StopAsyncIteration):
                await updates.__anext__()


async def test_lines_after_the_final_result_in_the_same_chunk_are_not_handed_out() -> None:
    """The final result ends the iteration even when more lines came with it."""
    actions = ["upscale1", "variation1"]
    lines = [
        _progress("t2", 50),
        _progress("t2", 100, actions=actions),
        _progress("t2", 100, actions=[*actions, "reroll"]),
        {"success": False, "task_id": "t2", "error": "late noise"},
    ]
    async with serving(_ndjson_app(lines)) as port:
        async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=f"http://127.0.0.1:{port}") as client:
            async with client.imagine("a cat").stream() as updates:
                seen = [update.progress async for update in updates]
            assert seen == [50, 100]
            assert updates.final is not None and updates.final.actions == actions
            assert open_connections(client) == 0
            assert client.statistics().limiter.in_flight == 0
