"""Every wait is bounded: `PollPolicy.deadline` ends every way of waiting for a job, counted from its
first send, and `Timeouts.total` ends a call or a submit with all its retries.

Each test runs the client against a tiny hostile server written here (not the emulator): a stream of
valid progress lines that never ends, lookups that always say "running", a long wait that never
answers, an answer that drips a byte at a time. `anyio.fail_after` is only a generous hang detector.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web

import mjasync

TOKEN = "deadline-test-token-0123456789"
TASK_ID = "task-forever"
#: The deadline the tests give a job: short, so that a bounded wait ends fast.
DEADLINE = 0.5
#: A hang detector, many times every bound under test (a run that hangs fails here, not in CI's limit).
HANG = 20.0
POLL = mjasync.PollPolicy(
    initial_interval=0.01, factor=1.5, max_interval=0.05, batch_window=0.0, deadline=DEADLINE
)
#: Many quick retries: per attempt, a drip would take `retries × total` seconds to give up.
MANY_RETRIES = mjasync.RetryPolicy(
    max_retries=100, initial_delay=0.01, max_delay=0.01, reconcile_delay=0.0, on_ambiguous_submit="resubmit"
)
#: A small overall budget for a call with its retries.
BUDGET = mjasync.Timeouts(total=0.5)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: How `stalling_stream` stalls: "silence" or "drip".
STALL = web.AppKey("stall", str)


@asynccontextmanager
async def serving(routes: Mapping[str, Handler], *, stall: str = "drip") -> AsyncIterator[str]:
    """Serve `routes` (POST path -> handler) on 127.0.0.1; yield the base URL.

    Handlers are cancelled when their client hangs up, so endless answers end with the test.
    """
    app = web.Application()
    app[STALL] = stall
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def progress_line(progress: int) -> dict[str, Any]:
    """A valid AceData progress line (never final: no actions, progress below 100)."""
    return {
        "success": True,
        "task_id": TASK_ID,
        "image_id": f"img-{progress}",
        "image_url": f"https://cdn.example/{progress}.png",
        "progress": progress,
    }


async def endless_stream(request: web.Request) -> web.StreamResponse:
    """Valid ndjson progress lines, 1 % ... 99 %, then 99 % again, forever."""
    await request.read()
    response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
    await response.prepare(request)
    progress = 0
    while True:
        progress = min(progress + 1, 99)
        await response.write(json.dumps(progress_line(progress)).encode() + b"\n")
        await asyncio.sleep(0.01)


async def stalling_stream(request: web.Request) -> web.StreamResponse:
    """One progress line, then either silence or a line that drips forever and never ends."""
    await request.read()
    response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
    await response.prepare(request)
    await response.write(json.dumps(progress_line(1)).encode() + b"\n")
    if request.app[STALL] == "silence":
        await asyncio.Event().wait()
    await response.write(b'{"progress": ')
    while True:
        await response.write(b" ")
        await asyncio.sleep(0.05)


async def cut_stream(request: web.Request) -> web.StreamResponse:
    """Two progress lines, then the stream ends without its final line (the client resumes by polling)."""
    await request.read()
    response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
    await response.prepare(request)
    await response.write(b"".join(json.dumps(progress_line(p)).encode() + b"\n" for p in (10, 20)))
    await response.write_eof()
    return response


async def never_answers(request: web.Request) -> web.StreamResponse:
    """A synchronous long wait that never ends (until the client hangs up)."""
    await request.read()
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def drip(answer: bytes) -> Handler:
    """An answer sent one byte every 50 ms: every read gap is short, the whole is very slow."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(
            headers={"content-type": "application/json", "content-length": str(len(answer))}
        )
        await response.prepare(request)
        for byte in answer:
            await response.write(bytes([byte]))
            await asyncio.sleep(0.05)
        return response

    return handler


async def acedata_imagine(request: web.Request) -> web.StreamResponse:
    """Imagine by its mode: a task id at once (`async`), an endless stream, or a long wait forever."""
    body = json.loads(await request.read())
    if body.get("async"):
        return web.json_response({"task_id": TASK_ID})
    if "ndjson" in request.headers.get("accept", ""):
        return await endless_stream(request)
    return await never_answers(request)


async def acedata_tasks(request: web.Request) -> web.StreamResponse:
    """Every task is running at 50 %; a listing of recent tasks is empty."""
    body = json.loads(await request.read())
    record = {"id": TASK_ID, "type": "imagine", "response": progress_line(50)}
    if body.get("action") == "retrieve":
        return web.json_response(record)
    ids = body.get("ids")
    items = [{**record, "id": task_id} for task_id in ids] if ids else []
    return web.json_response({"items": items, "count": len(items)})


ACEDATA: dict[str, Handler] = {"/midjourney/imagine": acedata_imagine, "/midjourney/tasks": acedata_tasks}


def client(base_url: str, **options: Any) -> mjasync.Client:
    return mjasync.Client(api_key=TOKEN, base_url=base_url, **{"poll": POLL, **options})


# --- PollPolicy.deadline: every way of waiting for a job ------------------------------------------


async def test_an_endless_stream_ends_await_job_at_the_deadline() -> None:
    """Valid progress lines forever and never a final one: `await job` (a stream) raises
    WaitTimeoutError with the task id, as polling does, instead of running on."""
    async with serving(ACEDATA) as url, client(url) as mj:
        job = mj.imagine("a cat")
        with anyio.fail_after(HANG), pytest.raises(mjasync.WaitTimeoutError) as caught:
            await job
    assert caught.value.task_id == TASK_ID == job.task_id
    assert job.sent_at is not None


async def test_an_endless_stream_ends_its_iteration_at_the_deadline() -> None:
    """Iterating `job.stream()` over an endless stream raises WaitTimeoutError; the lines seen were real."""
    seen: list[float | None] = []
    async with serving(ACEDATA) as url, client(url) as mj:
        with anyio.fail_after(HANG), pytest.raises(mjasync.WaitTimeoutError) as caught:
            async with mj.imagine("a cat").stream() as updates:
                async for update in updates:
                    seen.append(update.progress)
    assert caught.value.task_id == TASK_ID
    assert seen and all(p is not None and p < 100 for p in seen)


@pytest.mark.parametrize("stall", ["silence", "drip"])
async def test_a_stalled_stream_ends_at_the_deadline(stall: str) -> None:
    """A stream that goes quiet (well within its idle limit) or drips a line that never ends: `await job`
    raises WaitTimeoutError naming the task its first line gave."""
    routes = {**ACEDATA, "/midjourney/imagine": stalling_stream}
    async with serving(routes, stall=stall) as url, client(url) as mj:
        job = mj.imagine("a cat")
        with anyio.fail_after(HANG), pytest.raises(mjasync.WaitTimeoutError) as caught:
            await job
    assert caught.value.task_id == TASK_ID == job.task_id


@pytest.mark.parametrize("via", ["poll", "sync", "stream-then-poll"])
async def test_every_way_of_waiting_ends_at_the_deadline(via: str) -> None:
    """Lookups that always say "running", a long wait that never answers, a stream that breaks and
    is followed by polling: each `await job` ends with WaitTimeoutError."""
    routes = dict(ACEDATA)
    if via == "stream-then-poll":
        routes["/midjourney/imagine"] = cut_stream
    async with serving(routes) as url, client(url) as mj:
        job = mj.imagine("a cat")
        with anyio.fail_after(HANG), pytest.raises(mjasync.WaitTimeoutError):
            await job.result(via="stream" if via == "stream-then-poll" else via)  # type: ignore[arg-type]
    assert job.sent_at is not None


async def test_a_handle_from_submit_ends_at_the_deadline() -> None:
    """`TaskHandle.wait()` and `updates()` on lookups that always say "running" end with WaitTimeoutError."""
    async with serving(ACEDATA) as url, client(url) as mj:
        handle = await mj.imagine("a cat").submit()
        with anyio.fail_after(HANG), pytest.raises(mjasync.WaitTimeoutError) as caught:
            async for _ in handle.updates():
                pass
        with anyio.fail_after(HANG), pytest.raises(mjasync.WaitTimeoutError):
            await handle.wait()
    assert caught.value.task_id == TASK_ID


# --- Timeouts.total: a call or a submit with all its retries ---------------------------------------


async def test_a_drip_cannot_multiply_a_calls_budget() -> None:
    """A translate answer that drips: its retries share one `Timeouts.total`, so it ends with
    APITimeoutError after about that long, not after every attempt's own limit in turn."""
    answer = json.dumps({"content": "a cat"}).encode() * 50
    async with serving({"/midjourney/translate": drip(answer)}) as url:
        async with client(url, timeouts=BUDGET, retry=MANY_RETRIES) as mj:
            with anyio.fail_after(HANG), pytest.raises(mjasync.APITimeoutError) as caught:
                await mj.translate("一只猫")
    assert "Timeouts.total" in str(caught.value)


@pytest.mark.parametrize("provider", ["acedata", "goapi"])
async def test_a_drip_cannot_multiply_a_submits_budget(provider: str) -> None:
    """A submit whose answer drips (and that the policy would resend): sends, retries and lookups share
    one `Timeouts.total`; it ends with AmbiguousSubmitError (a task may exist) and the job says when
    it was sent."""
    receipt = json.dumps({"task_id": TASK_ID, "status": "success"}).encode() * 50
    if provider == "acedata":
        routes: dict[str, Handler] = {
            "/midjourney/imagine": drip(receipt),
            "/midjourney/tasks": acedata_tasks,
        }
    else:
        routes = {"/mj/v2/imagine": drip(receipt)}
    async with serving(routes) as url:
        async with client(url, provider=provider, timeouts=BUDGET, retry=MANY_RETRIES) as mj:
            job = mj.imagine("a cat")
            with anyio.fail_after(HANG), pytest.raises(mjasync.AmbiguousSubmitError) as caught:
                await job.submit()
    assert "Timeouts.total" in str(caught.value)
    assert job.sent_at is not None and job.task_id is None


# --- GoAPI: its "stream" is polling --------------------------------------------------------------


async def goapi_imagine(request: web.Request) -> web.StreamResponse:
    await request.read()
    return web.json_response({"task_id": TASK_ID, "status": "success", "message": ""})


async def goapi_fetch(request: web.Request) -> web.StreamResponse:
    """Every task is processing forever."""
    body = json.loads(await request.read())
    task = {
        "task_id": TASK_ID,
        "status": "processing",
        "task_result": {"image_url": "https://cdn.example/1.png"},
    }
    if "task_ids" in body:
        return web.json_response(
            {"data": {task_id: {**task, "task_id": task_id} for task_id in body["task_ids"]}}
        )
    return web.json_response(task)


@pytest.mark.parametrize("via", ["stream", "poll"])
async def test_goapi_waits_end_at_the_deadline(via: str) -> None:
    """GoAPI, whose progress comes by polling `fetch`: a task processing forever ends the wait."""
    routes: dict[str, Handler] = {
        "/mj/v2/imagine": goapi_imagine,
        "/mj/v2/fetch": goapi_fetch,
        "/mj/v2/multi_fetch": goapi_fetch,
    }
    async with serving(routes) as url, client(url, provider="goapi") as mj:
        job = mj.imagine("a cat")
        with anyio.fail_after(HANG), pytest.raises(mjasync.WaitTimeoutError) as caught:
            await job.result(via=via)  # type: ignore[arg-type]
    assert caught.value.task_id == TASK_ID == job.task_id


async def test_a_resumed_stream_gets_no_fresh_deadline() -> None:
    """A stream that breaks and carries on by polling keeps the deadline of the job's first send."""
    routes = {**ACEDATA, "/midjourney/imagine": cut_stream}
    async with serving(routes) as url, client(url, poll=msgspec.structs.replace(POLL, deadline=60.0)) as mj:
        job = mj.imagine("a cat")
        with anyio.fail_after(HANG):
            async with job.stream() as updates:
                seen = [(await updates.__anext__()).progress for _ in range(3)]
                assert updates.resumed and seen == [10, 20, 50]
                cursor: Any = updates._cursor
                first_send: Any = job._record.sent_clock
                assert cursor.deadline_at == pytest.approx(first_send + 60.0)
