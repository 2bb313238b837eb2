"""WebhookReceiver: jobs awaited by their provider's callback, over real sockets against the emulator.

What is shown: awaited jobs, handles and streams finish with no task lookups at all, and a lost callback
costs only that job a lookup; the receiver refuses a wrong or missing secret (401), a body over its limit
(413) and a body that is no callback (400), and acknowledges callbacks nobody waits for (200 ignored)
without resolving anything; it works the same mounted into the user's own aiohttp app; its addresses
close when their job ends, and expire when nobody ever waits.
"""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web

import mjasync
from mjasync.emulator import FAULT_HEADER, Emulator, ManualClock, RecordedRequest
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL, open_connections
from ..helpers import until

T = TypeVar("T")

PROVIDERS = ("goapi", "acedata")
#: Where each provider's task lookups go: a request to one of these is a poll.
POLL_PATHS = frozenset({"/midjourney/tasks", "/mj/v2/fetch", "/mj/v2/multi_fetch"})
SECRET = "a-webhook-secret-for-tests"
#: Callbacks are never late here: a poll would mean the callback path failed.
HOOK_POLL = msgspec.structs.replace(FAST_POLL, callback_grace=10.0)
#: A lost callback is noticed after 0.3 s of silence.
QUICK_GRACE = msgspec.structs.replace(FAST_POLL, callback_grace=0.3)
#: Clock seconds a job takes under a `ManualClock`: it waits until the test advances the clock.
HELD = 10.0
MAX_BODY = 64 * 1024


# --- scaffolding ----------------------------------------------------------------------------------


@dataclass
class Hooked:
    """An emulator, a served receiver and a client awaiting jobs through it."""

    emu: Emulator
    receiver: mjasync.WebhookReceiver
    mj: mjasync.Client
    url: str
    clock: ManualClock | None


@asynccontextmanager
async def hooked(
    provider: str = "goapi",
    *,
    receiver: mjasync.WebhookReceiver | None = None,
    poll: mjasync.PollPolicy = HOOK_POLL,
    held: bool = False,
    **emulator_options: Any,
) -> AsyncIterator[Hooked]:
    """Run it all on 127.0.0.1; *held* puts the emulator on a `ManualClock` so jobs wait to be advanced."""
    receiver = receiver or mjasync.WebhookReceiver(secret=SECRET, max_body_bytes=MAX_BODY)
    clock = ManualClock() if held else None
    if held:
        emulator_options.update(clock=clock, speed=HELD)
    async with Emulator(port=0, **emulator_options) as emu, receiver.serve() as url:
        async with mjasync.Client(
            provider=provider, api_key=EMULATOR_TOKEN, base_url=emu.url, poll=poll, webhooks=receiver
        ) as mj:
            yield Hooked(emu, receiver, mj, url, clock)
            assert open_connections(mj) == 0, "a test left a connection checked out"


def polls(emu: Emulator) -> list[RecordedRequest]:
    """Every task lookup the emulator saw."""
    return [r for r in emu.requests if r.path in POLL_PATHS]


def polled_ids(emu: Emulator) -> set[str]:
    """Every task id a lookup asked about."""
    ids: set[str] = set()
    for request in polls(emu):
        body = request.json or {}
        for key in ("id", "task_id"):
            if body.get(key):
                ids.add(body[key])
        for key in ("ids", "task_ids"):
            ids.update(body.get(key) or ())
    return ids


def submits(emu: Emulator) -> list[RecordedRequest]:
    """Every request that is not a lookup (here: the job submits)."""
    return [r for r in emu.requests if r.path not in POLL_PATHS]


def route_of(request: RecordedRequest) -> str:
    """The callback address a submit asked for."""
    body = request.json or {}
    return str(body.get("webhook_endpoint") or body["callback_url"])


async def gather(*calls: Callable[[], Awaitable[T]]) -> list[T]:
    """Run *calls* at once and return their results in order."""
    results: list[Any] = [None] * len(calls)

    async def run(index: int, call: Callable[[], Awaitable[T]]) -> None:
        results[index] = await call()

    async with anyio.create_task_group() as group:
        for index, call in enumerate(calls):
            group.start_soon(run, index, call)
    return results


async def post(
    url: str, body: bytes | Any, *, secret: str | None = SECRET, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """POST *body* (bytes as is, anything else as JSON) to *url*; return (status, parsed JSON answer)."""
    sent = dict(headers or {})
    if secret is not None:
        sent["x-webhook-secret"] = secret
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent.setdefault("content-type", "application/json")
    async with aiohttp.ClientSession() as session, session.post(url, data=data, headers=sent) as resp:
        return resp.status, await resp.json()


async def finished_body(h: Hooked) -> dict[str, Any]:
    """A real final callback body of this provider (a job run to its end), to forge others from."""
    assert h.clock is not None
    handle = await h.mj.imagine("a template to forge from").submit()
    h.clock.advance(HELD)
    result = await handle
    # The emulator records a callback once it has read the answer: just after the job had it.
    await until(lambda: any(c.body.get("task_id") == result.task_id for c in h.emu.callbacks))
    body = next(c.body for c in h.emu.callbacks if c.body.get("task_id") == result.task_id)
    return copy.deepcopy(body)


def forged(template: dict[str, Any], task_id: str) -> dict[str, Any]:
    """*template* claiming to be *task_id*'s final callback."""
    body = copy.deepcopy(template)
    body["task_id"] = task_id
    return body


class Waiter:
    """Awaits a handle in the background, so a test can look at it while it waits."""

    def __init__(self, handle: mjasync.TaskHandle[Any, Any]) -> None:
        self.handle = handle
        self.result: Any = None
        self.done = anyio.Event()

    async def run(self) -> None:
        self.result = await self.handle
        self.done.set()


async def raw_exchange(url: str, head: dict[str, str], body: Iterable[bytes] = ()) -> tuple[int | None, int]:
    """POST to *url* over a bare socket: send *head*, then *body*'s pieces while reading the answer.

    Returns the answer's status (None if none arrived) and how many body bytes were written before the
    receiver stopped taking them (all of them if it kept reading).
    """
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in head.items())]
    status: int | None = None
    written = 0
    async with await anyio.connect_tcp(parts.hostname, parts.port) as stream:
        await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())

        async def write() -> None:
            nonlocal written
            try:
                for piece in body:
                    await stream.send(piece)
                    written += len(piece)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the receiver closed the connection: it stopped reading

        async def read() -> None:
            nonlocal status
            data = b""
            try:
                while b"\r\n" not in data:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return
            status = int(data.split(b" ", 2)[1])

        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(write)
                group.start_soon(read)
    return status, written


def chunked(total: int, piece: int = 64 * 1024) -> Iterable[bytes]:
    """*total* bytes of a chunked body, in chunks of *piece* bytes, then the last chunk."""
    chunk = f"{piece:x}\r\n".encode() + b"x" * piece + b"\r\n"
    for _ in range(total // piece):
        yield chunk
    yield b"0\r\n\r\n"


# --- 1. awaited jobs: zero polls, no leaked routes, a lost callback costs one job a poll -----------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_twenty_awaited_jobs_finish_by_callback_without_a_single_poll(provider: str) -> None:
    async with hooked(provider) as h:
        results = await gather(*(lambda i=i: h.mj.imagine(f"a lighthouse, take {i}") for i in range(20)))

        assert all(r.is_final and not r.failed for r in results)
        assert all(r.image_url for r in results)
        assert len({r.task_id for r in results}) == 20
        assert polls(h.emu) == []
        sent = submits(h.emu)
        assert len(sent) == h.emu.counters["submits"] == 20
        routes = [route_of(r) for r in sent]
        assert len(set(routes)) == 20, "each job gets an address of its own"
        assert all(route.startswith(h.url + "/") for route in routes)
        for request in sent:
            body = request.json or {}
            if provider == "goapi":
                assert body["webhook_secret"] == SECRET
                assert "notify_progress" not in body  # only the end is wanted
            else:
                assert body["async"] is True
                assert "webhook_secret" not in body
        stats = h.receiver.statistics()
        assert stats.delivered == stats.received == h.emu.counters["callbacks"] == 20
        assert stats.rejected == stats.ignored == 0
        assert stats.open_routes == 0, "every job closed its address"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_dropped_callback_costs_only_its_own_job_a_poll(provider: str) -> None:
    async with hooked(provider, poll=QUICK_GRACE) as h:
        h.emu.drop_callbacks(1)
        with anyio.fail_after(10):
            results = await gather(*(lambda i=i: h.mj.imagine(f"a harbour, take {i}") for i in range(20)))

        assert all(r.is_final for r in results)
        assert h.emu.counters["callbacks_dropped"] == 1
        await until(lambda: len(h.emu.callbacks) == 19)
        called_back = {c.body["task_id"] for c in h.emu.callbacks}
        dropped = {r.task_id for r in results} - called_back
        assert len(dropped) == 1
        assert polled_ids(h.emu) == dropped, "only the job whose callback was lost looked itself up"
        assert 1 <= len(polls(h.emu)) <= 2
        assert h.emu.counters["submits"] == 20
        assert h.receiver.statistics().open_routes == 0


@pytest.mark.parametrize(("provider", "prompt"), [("goapi", "gore on a canvas"), ("acedata", "a cat -c x")])
async def test_a_failure_arrives_by_callback_too(provider: str, prompt: str) -> None:
    async with hooked(provider) as h:
        with pytest.raises(mjasync.JobFailedError) as caught:
            await h.mj.imagine(prompt)

        assert caught.value.task_id
        assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
        assert polls(h.emu) == []
        assert h.receiver.statistics().delivered == 1
        assert h.receiver.statistics().open_routes == 0


# --- 2. the secret --------------------------------------------------------------------------------


async def test_a_wrong_secret_is_refused_and_resolves_nothing() -> None:
    async with hooked("goapi", held=True) as h:
        assert h.clock is not None
        template = await finished_body(h)
        victim = await h.mj.imagine("a copper robot").submit()
        victim_route = route_of(h.emu.requests[-1])
        other = await h.mj.imagine("a field of tulips").submit()
        other_route = route_of(h.emu.requests[-1])
        baseline = h.receiver.statistics()
        waiters = [Waiter(victim), Waiter(other)]
        async with anyio.create_task_group() as group:
            for waiter in waiters:
                group.start_soon(waiter.run)

            status, answer = await post(victim_route, forged(template, victim.task_id), secret="x" * 26)
            assert (status, answer["status"]) == (401, "rejected")
            status, _ = await post(victim_route, forged(template, victim.task_id), secret=None)
            assert status == 401, "GoAPI addresses want the secret"
            # The same forged body with the right secret is a valid final callback (the control).
            status, answer = await post(other_route, forged(template, other.task_id))
            assert (status, answer["status"]) == (200, "ok")
            with anyio.fail_after(5):
                await waiters[1].done.wait()
            assert waiters[1].result.image_url == template_image(template)

            await anyio.wait_all_tasks_blocked()  # a job resolved would have woken its waiter by now
            assert not waiters[0].done.is_set(), "a refused callback resolved the job"
            stats = h.receiver.statistics()
            assert stats.rejected - baseline.rejected == 2
            assert stats.delivered - baseline.delivered == 1

            h.clock.advance(HELD)  # the real webhook, with the real secret, resolves it
            with anyio.fail_after(5):
                await waiters[0].done.wait()
        assert waiters[0].result.task_id == victim.task_id
        assert waiters[0].result.is_final
        assert waiters[0].result.image_url != template_image(template)
        assert polls(h.emu) == []
        assert h.receiver.statistics().open_routes == 0


def template_image(body: dict[str, Any]) -> str:
    """The image URL of a final callback body, in either provider's shape."""
    return str(body.get("image_url") or body["task_result"]["image_url"])


async def test_a_secret_on_an_acedata_address_must_be_right_too() -> None:
    """AceData sends no secret, so none is asked; one that is sent anyway must still match."""
    async with hooked("acedata", held=True) as h:
        handle = await h.mj.imagine("a mountain cabin").submit()
        route = route_of(h.emu.requests[-1])
        status, _ = await post(route, {"task_id": handle.task_id, "progress": 10}, secret="not-the-secret")
        assert status == 401
        status, answer = await post(route, {"task_id": handle.task_id, "progress": 10}, secret=None)
        assert (status, answer["status"]) == (200, "ok")


async def test_the_secret_never_shows_in_a_repr() -> None:
    async with hooked("goapi") as h:
        job = h.mj.imagine("a paper boat")
        handle = await job.submit()
        shown = [
            repr(h.receiver),
            str(h.receiver),
            repr(h.mj),
            repr(job),
            repr(handle),
            repr(h.receiver.statistics()),
        ]
        assert all(SECRET not in text for text in shown), shown
        assert h.receiver.url == h.url
        # The secret did go to the provider with the job, which sends it back.
        assert (h.emu.requests[-1].json or {})["webhook_secret"] == SECRET
        await handle


async def test_a_receiver_makes_its_own_unguessable_secret() -> None:
    made: list[str] = []
    for _ in range(2):
        receiver = mjasync.WebhookReceiver()
        async with hooked("goapi", receiver=receiver) as h:
            assert (await h.mj.imagine("a quiet harbour")).is_final
            made.append((h.emu.requests[-1].json or {})["webhook_secret"])
            assert made[-1] not in repr(receiver)
    assert len(made[0]) >= 32
    assert made[0] != made[1]
    with pytest.raises(mjasync.InvalidRequestError):
        mjasync.WebhookReceiver(secret="short")


# --- 3. oversized bodies --------------------------------------------------------------------------


async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    async with hooked("goapi", held=True) as h:
        handle = await h.mj.imagine("a lighthouse").submit()
        route = route_of(h.emu.requests[-1])

        status, answer = await post(route, b"x" * (MAX_BODY + 1))
        assert (status, answer["status"]) == (413, "rejected")
        # Over a bare socket: the answer comes before a single body byte is sent.
        answered, _ = await raw_exchange(
            route,
            {
                "content-type": "application/json",
                "content-length": str(64 * MAX_BODY),
                "x-webhook-secret": SECRET,
            },
        )
        assert answered == 413
        stats = h.receiver.statistics()
        assert stats.bytes_read == 0
        assert (stats.rejected, stats.delivered) == (2, 0)

        assert h.clock is not None
        h.clock.advance(HELD)
        with anyio.fail_after(5):
            result = await handle
        assert result.is_final and result.task_id == handle.task_id


async def test_a_chunked_body_is_read_only_up_to_the_limit() -> None:
    total = 64 * 1024 * 1024
    async with hooked("goapi", held=True) as h:
        handle = await h.mj.imagine("a copper robot").submit()
        route = route_of(h.emu.requests[-1])
        produced = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal produced
            for _ in range(total // (64 * 1024)):
                produced += 64 * 1024
                yield b"x" * (64 * 1024)

        async with aiohttp.ClientSession() as session:
            async with session.post(route, data=body(), headers={"x-webhook-secret": SECRET}) as resp:
                assert resp.status == 413
                assert (await resp.json())["status"] == "rejected"
                assert resp.headers.get("connection", "").lower() == "close"
        stats = h.receiver.statistics()
        assert MAX_BODY < stats.bytes_read <= MAX_BODY + 64 * 1024, "it stopped just past the limit"
        assert stats.bytes_read < total // 100
        assert produced < total, "the client was not made to send it all"
        assert (stats.rejected, stats.delivered) == (1, 0)

        assert h.clock is not None
        h.clock.advance(HELD)
        with anyio.fail_after(5):
            assert (await handle).task_id == handle.task_id
        assert polls(h.emu) == []


REFUSALS = [
    pytest.param("live", SECRET, 413, id="413-over-the-limit"),
    pytest.param("live", "not-the-right-secret", 401, id="401-wrong-secret"),
    pytest.param("unknown", None, 200, id="200-unknown-address"),
]


@pytest.mark.parametrize(("where", "secret", "status"), REFUSALS)
async def test_a_refused_chunked_body_is_not_read_to_its_end(
    where: str, secret: str | None, status: int
) -> None:
    """Sent over a bare socket that writes on whatever it gets back: the receiver must stop taking bytes."""
    total = 256 * 1024 * 1024
    async with hooked("goapi", held=True) as h:
        await h.mj.imagine("a field of tulips").submit()
        route = route_of(h.emu.requests[-1]) if where == "live" else f"{h.url}/no-such-token"
        head = {"content-type": "application/json", "transfer-encoding": "chunked"}
        if secret is not None:
            head["x-webhook-secret"] = secret
        answered, written = await raw_exchange(route, head, chunked(total))
        assert answered in (status, None)
        assert written < total // 4, f"{written} of {total} bytes were taken after the answer"


# --- 4. callbacks nobody waits for, and bodies that are no callback -------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_callbacks_for_no_waiting_job_are_acknowledged_and_ignored(provider: str) -> None:
    async with hooked(provider, held=True) as h:
        template = await finished_body(h)
        handle = await h.mj.imagine("a paper crane").submit()
        route = route_of(h.emu.requests[-1])
        before = h.receiver.statistics()

        unknown = await post(f"{h.url}/no-such-token", forged(template, handle.task_id))
        unknown_unsigned = await post(f"{h.url}/no-such-token", forged(template, handle.task_id), secret=None)
        another_task = await post(route, forged(template, "someone-elses-task"))
        for status, answer in (unknown, unknown_unsigned, another_task):
            assert (status, answer) == (200, {"status": "ignored"})
        stats = h.receiver.statistics()
        assert stats.ignored - before.ignored == 3
        assert stats.delivered == before.delivered
        assert stats.open_routes == 1

        assert h.clock is not None
        h.clock.advance(HELD)
        with anyio.fail_after(5):
            result = await handle
        assert result.task_id == handle.task_id
        assert result.image_url != template_image(template)
        # Once the job is over, its address acknowledges and ignores repeats.
        status, answer = await post(route, forged(template, handle.task_id))
        assert (status, answer) == (200, {"status": "ignored"})
        assert h.receiver.statistics().open_routes == 0
        assert polls(h.emu) == []


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("named", [None, ""], ids=["no-task-id", "empty-task-id"])
async def test_a_callback_that_names_no_task_is_acknowledged_and_resolves_nothing(
    provider: str, named: str | None
) -> None:
    """A final body with the sender's own image but no task named is nobody's result."""
    async with hooked(provider, held=True) as h:
        template = await finished_body(h)
        handle = await h.mj.imagine("a brass compass").submit()
        route = route_of(h.emu.requests[-1])
        nameless = copy.deepcopy(template)
        nameless["image_url"] = "http://127.0.0.1:9/chosen-by-the-sender.png"
        if named is None:
            del nameless["task_id"]
        else:
            nameless["task_id"] = named
        before = h.receiver.statistics()
        waiter = Waiter(handle)
        async with anyio.create_task_group() as group:
            group.start_soon(waiter.run)
            status, answer = await post(route, nameless)
            assert (status, answer) == (200, {"status": "ignored"})
            stats = h.receiver.statistics()
            assert (stats.ignored - before.ignored, stats.delivered - before.delivered) == (1, 0)
            await anyio.wait_all_tasks_blocked()  # a job resolved would have woken its waiter by now
            assert not waiter.done.is_set(), "a callback naming no task resolved the job"

            assert h.clock is not None
            h.clock.advance(HELD)  # the provider's own callback, naming the task, does
            with anyio.fail_after(5):
                await waiter.done.wait()
        assert waiter.result.task_id == handle.task_id
        assert waiter.result.image_url != nameless["image_url"]
        assert polls(h.emu) == []


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"[1, 2, 3]",
        b"null",
        b'{"task_id": 5}',
        b"\xff\xfe",
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"task_id": ' + b"9" * 400 + b"}",
        b'{"task_id": "\xff\xfe"}',
        b'{"task_id": "x", "status": "fini',
    ],
    ids=[
        "text",
        "array",
        "null",
        "int-id",
        "bad-utf8",
        "deep-array",
        "deep-object",
        "huge-int",
        "utf8-id",
        "cut",
    ],
)
async def test_a_body_that_is_no_callback_is_refused_400(provider: str, body: bytes) -> None:
    async with hooked(provider, held=True) as h:
        handle = await h.mj.imagine("a quiet harbour").submit()
        route = route_of(h.emu.requests[-1])
        status, answer = await post(route, body)
        assert (status, answer["status"]) == (400, "rejected")
        stats = h.receiver.statistics()
        assert (stats.rejected, stats.delivered) == (1, 0)

        assert h.clock is not None
        h.clock.advance(HELD)
        with anyio.fail_after(5):
            assert (await handle).is_final
        assert polls(h.emu) == []


async def test_only_post_is_routed() -> None:
    async with hooked("goapi") as h, aiohttp.ClientSession() as session:
        async with session.get(f"{h.url}/some-token") as resp:
            assert resp.status == 405
        assert h.receiver.statistics().received == 0


# --- 5. mounted into the user's own app -----------------------------------------------------------


@asynccontextmanager
async def your_app(app: web.Application, sock: socket.socket) -> AsyncIterator[None]:
    """Serve *app* on an already bound socket, as the user's own server would."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_mounted_into_your_own_app_it_works_the_same(provider: str) -> None:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the app's address is known before it serves (the site closes it)
    origin = f"http://127.0.0.1:{sock.getsockname()[1]}"
    public = f"{origin}/hooks/mj"
    receiver = mjasync.WebhookReceiver(secret=SECRET, path="/hooks/mj", public_url=public + "/")
    assert receiver.url == public
    app = web.Application()
    app.router.add_get("/health", health)
    receiver.add_routes(app)
    async with your_app(app, sock), Emulator(port=0) as emu:
        async with mjasync.Client(
            provider=provider, api_key=EMULATOR_TOKEN, base_url=emu.url, poll=HOOK_POLL, webhooks=receiver
        ) as mj:
            results = await gather(*(lambda i=i: mj.imagine(f"a cabin, take {i}") for i in range(5)))
            handle = await mj.imagine("a cabin, submitted").submit()
            results.append(await handle)

            assert all(r.is_final for r in results)
            assert polls(emu) == []
            assert all(route_of(r).startswith(public + "/") for r in submits(emu))
            stats = receiver.statistics()
            assert (stats.delivered, stats.rejected, stats.open_routes) == (6, 0, 0)
            assert open_connections(mj) == 0

            status, answer = await post(f"{public}/no-such-token", {"task_id": "x"})
            assert (status, answer) == (200, {"status": "ignored"})
            if provider == "goapi":
                status, _ = await post(route_of(submits(emu)[0]), {"task_id": "x"}, secret="wrong-secret")
                assert status == 401
            async with aiohttp.ClientSession() as session, session.get(f"{origin}/health") as resp:
                assert (await resp.json()) == {"ok": True}, "the app's own routes still answer"


def address(receiver: mjasync.WebhookReceiver) -> str | None:
    """The receiver's public URL now."""
    return receiver.url


async def test_a_receiver_without_an_address_refuses_before_anything_is_sent() -> None:
    receiver = mjasync.WebhookReceiver(secret=SECRET)
    async with (
        Emulator(port=0) as emu,
        mjasync.Client(
            provider="goapi", api_key=EMULATOR_TOKEN, base_url=emu.url, poll=HOOK_POLL, webhooks=receiver
        ) as mj,
    ):
        with pytest.raises(mjasync.InvalidRequestError, match="public URL"):
            await mj.imagine("a boat")
        async with receiver.serve() as url:
            assert receiver.url == url
            assert (await mj.imagine("a boat")).is_final
        assert receiver.statistics().open_routes == 0
        assert address(receiver) is None, "serve() forgets the address it made up"
        with pytest.raises(mjasync.InvalidRequestError):
            await mj.imagine("a boat").submit()
        assert emu.counters["submits"] == 1


# --- 6. streams -----------------------------------------------------------------------------------


async def test_goapi_stream_is_fed_by_progress_webhooks() -> None:
    async with hooked("goapi", speed=0.6) as h:
        async with h.mj.imagine("a lighthouse at dusk").stream() as updates:
            got = [u async for u in updates]

        progress = [u.progress for u in got if u.progress is not None]
        assert len(got) >= 4 and got[-1].is_final and not any(u.is_final for u in got[:-1])
        assert len(progress) == len(got), "every update says how far it got"
        assert progress == sorted(set(progress)), "strictly rising"
        assert len([u for u in got if not u.is_final]) >= 3
        assert {u.task_id for u in got} == {updates.task_id}
        assert polls(h.emu) == []
        (submit,) = submits(h.emu)
        assert (submit.json or {})["notify_progress"] is True
        stats = h.receiver.statistics()
        assert stats.delivered == len(got)
        assert stats.open_routes == 0


async def test_acedata_stream_cut_short_carries_on_from_callbacks() -> None:
    async with hooked("acedata", speed=0.6) as h:
        cut = h.mj.with_options(default_headers={FAULT_HEADER: "cut-after=2"})
        async with cut.imagine("a paper crane").stream() as updates:
            got = [u async for u in updates]

        assert got[-1].is_final and not any(u.is_final for u in got[:-1])
        progress = [u.progress for u in got if u.progress is not None]
        assert progress == sorted(set(progress)), "strictly rising, no repeats"
        assert len(progress) >= 4
        assert {u.task_id for u in got} == {updates.task_id}
        assert h.emu.counters["submits"] == 1, "one submit, never a second"
        assert len(polls(h.emu)) <= 1
        stats = h.receiver.statistics()
        assert stats.delivered >= 3, "the rest came by callback"
        assert stats.open_routes == 0


async def test_acedata_stream_with_a_receiver_yields_what_a_plain_stream_yields() -> None:
    async with hooked("acedata", speed=0.4) as h:
        plain = h.mj.with_options(wait_via="stream")
        async with (
            Emulator(port=0, speed=0.4) as bare,
            mjasync.Client(api_key=EMULATOR_TOKEN, base_url=bare.url, poll=HOOK_POLL) as unhooked,
        ):
            async with unhooked.imagine("a paper crane").stream() as reference:
                expected = [u.progress async for u in reference]
        async with plain.imagine("a paper crane").stream() as updates:
            got = [u async for u in updates]

        assert [u.progress for u in got] == expected
        assert None not in expected
        assert updates.resumed is False, "nothing broke"
        assert polls(h.emu) == []


async def test_acedata_stream_with_a_receiver_needs_no_retries() -> None:
    async with hooked("acedata", speed=0.3) as h:
        strict = h.mj.with_options(retry=mjasync.RetryPolicy(max_retries=0))
        async with strict.imagine("a paper crane").stream() as updates:
            got = [u async for u in updates]
        assert got[-1].is_final


# --- 7. handles, and when callbacks are not used --------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_submitted_handle_waits_by_callback(provider: str) -> None:
    async with hooked(provider, held=True) as h:
        handles = [await h.mj.imagine(f"a tulip, take {i}").submit() for i in range(3)]
        assert h.receiver.statistics().open_routes == 3
        assert h.clock is not None
        h.clock.advance(HELD)
        with anyio.fail_after(5):
            results = await gather(*(lambda handle=handle: handle.wait() for handle in handles))
        assert [r.task_id for r in results] == [handle.task_id for handle in handles]
        assert all(r.is_final for r in results)
        assert polls(h.emu) == []
        assert h.receiver.statistics().open_routes == 0
        # Waiting again after the end looks the task up: its address is gone.
        again = await handles[0]
        assert again.task_id == handles[0].task_id
        assert polled_ids(h.emu) == {handles[0].task_id}


async def test_waiting_via_poll_never_uses_callbacks() -> None:
    async with hooked("acedata") as h:
        result = await h.mj.imagine("a cabin").result(via="poll")
        assert result.is_final
        (submit,) = submits(h.emu)
        assert "callback_url" not in (submit.json or {})
        assert polled_ids(h.emu) == {result.task_id}
        assert h.emu.counters["callbacks"] == 0
        assert h.receiver.statistics().received == 0


async def test_via_callback_needs_a_receiver(mj: mjasync.Client) -> None:
    with pytest.raises(mjasync.InvalidRequestError, match="receiver"):
        await mj.imagine("a boat").result(via="callback")
    with pytest.raises(mjasync.InvalidRequestError):
        mjasync.Client(api_key=EMULATOR_TOKEN, base_url=mj.base_url, wait_via="callback")


async def test_a_job_with_its_own_callback_url_cannot_wait_via_callback() -> None:
    async with hooked("goapi") as h:
        job = h.mj.imagine("a boat", callback_url="http://127.0.0.1:9/mine")
        with pytest.raises(mjasync.InvalidRequestError, match="callback_url"):
            await job.result(via="callback")
        assert h.emu.counters["submits"] == 0
        assert h.receiver.statistics().open_routes == 0


async def test_a_submitted_job_with_its_own_callback_url_leaves_the_receiver_alone() -> None:
    async with hooked("goapi") as h:
        handle = await h.mj.imagine("a boat", callback_url="http://127.0.0.1:9/mine").submit()
        assert (h.emu.requests[-1].json or {})["webhook_endpoint"] == "http://127.0.0.1:9/mine"
        assert "webhook_secret" not in (h.emu.requests[-1].json or {})
        assert h.receiver.statistics().open_routes == 0
        assert (await handle).is_final
        assert polled_ids(h.emu) == {handle.task_id}


async def test_awaiting_a_job_with_its_own_callback_url_polls() -> None:
    async with hooked("goapi") as h:
        result = await h.mj.imagine("a boat", callback_url="http://127.0.0.1:9/mine")
        assert result.is_final
        assert h.receiver.statistics().open_routes == 0


# --- 8. addresses nobody waits on expire -----------------------------------------------------------


async def test_the_address_of_a_never_awaited_handle_expires() -> None:
    receiver_clock = ManualClock(start=0.0)
    receiver = mjasync.WebhookReceiver(secret=SECRET, route_ttl=30.0, clock=receiver_clock)
    async with hooked("goapi", receiver=receiver, held=True) as h:
        forgotten = await h.mj.imagine("a forgotten boat").submit()
        route = route_of(h.emu.requests[-1])
        assert receiver.statistics().open_routes == 1
        receiver_clock.advance(30.0)

        status, answer = await post(route, {"task_id": forgotten.task_id, "status": "processing"})
        assert (status, answer) == (200, {"status": "ignored"}), "an expired address resolves nothing"

        kept = await h.mj.imagine("a kept boat").submit()
        assert receiver.statistics().open_routes == 1, "opening a route swept the expired one"
        assert h.clock is not None
        h.clock.advance(HELD)
        with anyio.fail_after(5):
            assert (await kept).is_final
        assert receiver.statistics().open_routes == 0
        assert polls(h.emu) == []
