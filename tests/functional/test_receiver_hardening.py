"""WebhookReceiver.serve() against slow, many and hostile clients, over real sockets on 127.0.0.1.

What is shown: a thousand connections that send their request head (or their body) slowly hold nothing
a genuine callback needs, which is answered within a second on a new connection; the slow ones are
closed once their time is up, silently; under a low file-descriptor limit the receiver still serves
and asyncio/aiohttp log nothing; any bytes at all posted as a callback get 400 or an acknowledgement,
never a 500 and never a result; and the receiver's secret shows in no repr and no log line.
"""

from __future__ import annotations

import asyncio
import errno
import http.client
import json
import logging
import os
import resource
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import pytest
from aiohttp.web_protocol import RequestHandler
from anyio.abc import SocketStream, TaskStatus
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mjasync
from mjasync import _redact, webhooks
from mjasync._inbox import CallbackInbox
from mjasync._providers import get_provider
from mjasync.emulator import ManualClock
from mjasync.webhooks import ReceiverStatistics, _connection_cap, _Connections

from ..helpers import until

SECRET = "a-webhook-secret-for-hardening"
TASK = "the-awaited-task"
#: Slow clients held at once (the issue's number).
SLOW_CLIENTS = 1000
#: Seconds slow clients get in these tests (the defaults are 10 s for a head, 30 s for a body).
SLOW_TIMEOUT = 6.0


def finished_task(task_id: str = TASK) -> bytes:
    """A GoAPI webhook body: the task object of a finished grid."""
    result = {
        "image_url": "http://127.0.0.1:9/grid.png",
        "image_urls": [f"http://127.0.0.1:9/{i}.png" for i in range(4)],
        "task_progress": 100,
        "actions": ["upscale1"],
    }
    return json.dumps({"task_id": task_id, "status": "finished", "task_result": result}).encode()


def awaiting(receiver: mjasync.WebhookReceiver) -> tuple[CallbackInbox[mjasync.types.ImagineUpdate], str]:
    """An inbox waiting for `TASK` (as a GoAPI job's), and the address its callbacks go to."""
    inbox = CallbackInbox(get_provider("goapi"), mjasync.types.ImagineUpdate)
    inbox.expect(TASK)
    target, _ = receiver.open_route(inbox, progress=False, ttl=None)
    return inbox, target.url


async def genuine_callback(url: str) -> tuple[int, float]:
    """POST a genuine final webhook to *url* on a new connection: its status and seconds to the answer."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=finished_task(), headers={"x-webhook-secret": SECRET}) as resp:
            await resp.read()
    return resp.status, time.monotonic() - started


@contextmanager
def descriptors_for(clients: int) -> Iterator[int]:
    """Room for *clients* loopback connections (two descriptors each, both ends in this process).

    The soft limit is raised toward the hard one; yields how many clients fit (fewer only if the hard
    limit is low).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    spare = 256
    wanted = len(os.listdir("/proc/self/fd")) + 2 * clients + spare
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield min(clients, (max(wanted, soft) - len(os.listdir("/proc/self/fd")) - spare) // 2)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@dataclass
class SlowClient:
    """One connection that sends its request slowly; when it opened, and when the receiver closed it."""

    opened: float = 0.0
    closed: float | None = None
    status: int | None = None
    stream: SocketStream | None = field(default=None, repr=False)


async def hold_open(
    client: SlowClient, port: int, start: bytes, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Connect, send *start* (a part of a request), then wait for the receiver's answer or close."""
    client.opened = time.monotonic()  # before the receiver can have started its clock
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        if start:
            await stream.send(start)
        client.stream = stream  # only now, so `drip` never writes while *start* is being written
        task_status.started()
        answer = b""
        try:
            while True:
                answer += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass
        client.closed = time.monotonic()
        client.stream = None
        if answer.startswith(b"HTTP/1.1 "):
            client.status = int(answer.split(b" ", 2)[1])


async def drip(clients: list[SlowClient]) -> None:
    """Send one more body byte on every open connection twice a second (pacing, not synchronisation)."""
    while True:
        await anyio.sleep(0.5)
        for client in clients:
            if client.stream is not None:
                try:
                    await client.stream.send(b" ")
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass


@asynccontextmanager
async def served(**options: Any) -> AsyncIterator[tuple[mjasync.WebhookReceiver, int]]:
    """A receiver served on 127.0.0.1 with *options*, and its port."""
    receiver = mjasync.WebhookReceiver(secret=SECRET, **options)
    async with receiver.serve() as url:
        port = urlsplit(url).port
        assert port is not None
        yield receiver, port


def head(path: str, *, complete: bool) -> bytes:
    """A POST's head: all of it with a 100-byte body announced, or stopped mid-way."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"x-webhook-secret: {SECRET}"]
    if not complete:
        return ("\r\n".join(lines) + "\r\nx-still-typ").encode()
    lines += ["content-type: application/json", "content-length: 100"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- 1. a thousand slow clients, and a genuine callback on a new connection -------------------------


@pytest.mark.parametrize("slow", ["head", "body"])
async def test_a_thousand_slow_clients_cost_a_genuine_callback_nothing(slow: str) -> None:
    with descriptors_for(SLOW_CLIENTS) as count, counting_logs("asyncio", "aiohttp", "mjasync") as logged:
        # Each slow client is two descriptors here (both ends); with too few, fewer and a cap as small.
        timeouts = {"header_timeout": SLOW_TIMEOUT, "body_timeout": SLOW_TIMEOUT}
        async with served(max_connections=count, **timeouts) as (receiver, port):
            inbox, url = awaiting(receiver)
            path = urlsplit(url).path
            clients = [SlowClient() for _ in range(count)]
            start = head(path if slow == "body" else f"{receiver.path}/slow", complete=slow == "body")
            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    if slow == "body":
                        group.start_soon(drip, clients)
                    for client in clients:
                        await group.start(hold_open, client, port, start)
                    await until(lambda: receiver.statistics().open_connections == count, seconds=30)
                    assert all(client.closed is None for client in clients), "all held at once"

                    status, seconds = await genuine_callback(url)
                    assert status == 200
                    assert seconds < 1.0, f"a genuine callback waited {seconds:.2f} s"  # the bound
                    final = await inbox.next(within=0)
                    assert final is not None and final.is_final and final.task_id == TASK

                    await until(lambda: all(client.closed is not None for client in clients), seconds=30)
                    group.cancel_scope.cancel()

        stats = receiver.statistics()
        # The genuine one took the place of the slow client held longest; the others ran out of time.
        assert stats.evicted == 1
        timed_out = [
            c for c in clients if c.closed is not None and c.closed - c.opened >= SLOW_TIMEOUT - 0.05
        ]
        assert len(timed_out) >= count - 1
        if slow == "body":
            assert stats.rejected == count - 1
            assert sum(c.status == 408 for c in clients) >= count - 2
        else:
            assert stats.timed_out == count - 1
            assert all(c.status is None for c in clients), "a slow head gets no answer, only a close"
        assert stats.delivered == 1
        assert stats.open_connections == 0
    assert len(logged.records) == 0, [record.getMessage() for record in logged.records[:3]]


async def test_an_idle_connection_counts_as_slow_too() -> None:
    """One that connects and sends nothing is closed after `header_timeout`; it gets no answer."""
    async with served(header_timeout=0.3) as (receiver, port):
        client = SlowClient()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                await group.start(hold_open, client, port, b"")
        assert client.closed is not None and client.closed - client.opened >= 0.25
        assert client.status is None
        assert receiver.statistics().timed_out == 1


async def test_a_kept_alive_connection_must_send_its_next_head_in_time() -> None:
    async with served(header_timeout=0.5) as (receiver, port):
        inbox, url = awaiting(receiver)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            path = urlsplit(url).path
            body = finished_task()
            request = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-webhook-secret: {SECRET}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode() + body
            await stream.send(request)
            answer = b""
            with anyio.fail_after(10):
                while b'"ok"' not in answer:
                    answer += await stream.receive()
                answered = time.monotonic()
                await stream.send(b"POST / HTTP/1.1\r\nHost: 1")  # and no more
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                    while True:
                        await stream.receive()
            assert time.monotonic() - answered >= 0.45
        assert receiver.statistics().timed_out == 1
        assert (await inbox.next(within=0)) is not None


# --- 2. a low file-descriptor limit -----------------------------------------------------------------


ATTACKER = """
import resource, socket, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # not the low limit it inherited
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.stdin.readline()  # go
held = []
for _ in range(count):
    conn = socket.socket()
    conn.settimeout(0.5)
    try:
        conn.connect((host, port))
        conn.sendall(b"POST /mjasync/callbacks/slow HTTP/1.1\\r\\nHost: x\\r\\n")
    except OSError:
        pass
    held.append(conn)
print(len(held), flush=True)
sys.stdin.read()
"""


class CountingHandler(logging.Handler):
    """Counts what is logged at WARNING or above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def counting_logs(*names: str) -> Iterator[CountingHandler]:
    handler = CountingHandler()
    for name in names:
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)


@contextmanager
def fd_limit(room: int) -> Iterator[None]:
    """The soft descriptor limit set to *room* more than are open now (the hard limit untouched)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + room, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_under_a_low_descriptor_limit_it_serves_and_logs_nothing() -> None:
    """600 connections from another process, 150 descriptors here: no accept storm, no log flood."""
    with counting_logs("asyncio", "aiohttp", "mjasync") as logged, fd_limit(150):
        async with served(header_timeout=SLOW_TIMEOUT) as (receiver, port):
            inbox, url = awaiting(receiver)
            command = [sys.executable, "-c", ATTACKER, "127.0.0.1", str(port), "600"]
            with anyio.fail_after(60):
                async with await anyio.open_process(command) as attacker:
                    assert attacker.stdout is not None and attacker.stdin is not None
                    await attacker.stdin.send(b"go\n")
                    assert (await attacker.stdout.receive()).strip() == b"600"
                    status, _ = await genuine_callback(url)
                    assert status == 200
                    held = receiver.statistics()
                    await attacker.stdin.aclose()
            final = await inbox.next(within=0)
            assert final is not None and final.task_id == TASK
            assert 0 < held.open_connections < 150 - 64, "the cap left room for the rest of the process"
            assert held.evicted > 0
    assert len(logged.records) == 0, [record.getMessage() for record in logged.records[:3]]


@contextmanager
def every_descriptor_taken() -> Iterator[None]:
    """Open /dev/null until the process has no descriptor left (as a leak elsewhere in it would)."""
    taken: list[int] = []
    try:
        while True:
            try:
                taken.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        yield
    finally:
        for fd in taken:
            os.close(fd)


async def test_out_of_descriptors_accepting_pauses_with_one_warning_and_resumes() -> None:
    with counting_logs("asyncio", "aiohttp", "mjasync") as logged, fd_limit(150):
        async with served(header_timeout=SLOW_TIMEOUT) as (receiver, port):
            inbox, url = awaiting(receiver)
            command = [sys.executable, "-c", ATTACKER, "127.0.0.1", str(port), "50"]
            with anyio.fail_after(60):
                async with await anyio.open_process(command) as attacker:
                    assert attacker.stdout is not None and attacker.stdin is not None
                    with every_descriptor_taken():
                        await attacker.stdin.send(b"go\n")
                        assert (await attacker.stdout.receive()).strip() == b"50"
                        await until(lambda: len(logged.records) > 0, seconds=10)
                    status, _ = await genuine_callback(url)  # served once descriptors are free again
                    assert status == 200
                    await attacker.stdin.aclose()
            final = await inbox.next(within=0)
            assert final is not None and final.task_id == TASK
    assert [(record.name, record.levelname) for record in logged.records] == [("mjasync.webhooks", "WARNING")]


async def test_out_of_descriptors_it_warns_once_a_minute_of_the_receivers_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every accept refused for want of a descriptor, on the receiver's clock: one warning per 60 s."""
    clock = ManualClock(start=0.0)

    def no_protocol() -> RequestHandler:
        raise AssertionError("nothing is accepted here")

    connections = _Connections(
        no_protocol,
        limit=1,
        header_timeout=SLOW_TIMEOUT,
        stats=ReceiverStatistics(),
        clock=clock,
    )
    send_refusal, refusals = anyio.create_memory_object_stream[None]()

    async def refused_accept(listener: socket.socket) -> tuple[socket.socket, Any]:
        await refusals.receive()
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(asyncio.get_running_loop(), "sock_accept", refused_accept)
    monkeypatch.setattr(webhooks, "_ACCEPT_PAUSE", 0.0)  # the pause after each refusal is not the point
    warned: list[float] = []
    with counting_logs("mjasync") as logged, send_refusal, refusals, socket.socket() as listener:
        async with anyio.create_task_group() as group:
            group.start_soon(connections.accept, listener)
            for moment in (0.0, 1.0, 59.0, 60.0, 61.0, 119.0, 120.0):
                clock.advance(moment - clock())
                await send_refusal.send(None)
                await anyio.wait_all_tasks_blocked()  # the refusal is handled; accepting waits again
                warned += [moment] * (len(logged.records) - len(warned))
            group.cancel_scope.cancel()
    assert warned == [0.0, 60.0, 120.0]


def test_the_connection_cap_stays_below_the_descriptor_limit() -> None:
    assert _connection_cap(1024, None, 30) == 1024
    assert _connection_cap(1024, 20000, 30) == 1024
    assert _connection_cap(1024, 256, 30) == 256 - 30 - 64
    assert _connection_cap(1024, 64, 30) == 1, "always room for one"


# --- 3. whatever bytes come, 400 or an acknowledgement -----------------------------------------------


@dataclass
class Fuzzed:
    """A receiver served from a thread of its own, for a synchronous hypothesis test to post to."""

    receiver: mjasync.WebhookReceiver
    inbox: CallbackInbox[mjasync.types.ImagineUpdate]
    url: str


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    with start_blocking_portal() as portal:
        receiver = mjasync.WebhookReceiver(secret=SECRET, max_body_bytes=64 * 1024)
        with portal.wrap_async_context_manager(receiver.serve()):
            inbox, url = awaiting(receiver)
            yield Fuzzed(receiver, inbox, url)


def post_sync(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request(
            "POST", parts.path, body, {"x-webhook-secret": SECRET, "content-type": "application/json"}
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return (opener * depth + "1" + closer * depth).encode()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_task_shaped = st.fixed_dictionaries(
    {},
    optional={
        "task_id": _json,
        "status": st.sampled_from(["finished", "failed", "processing"]) | _json,
        "task_result": st.dictionaries(
            st.sampled_from(["image_url", "task_progress", "image_urls", "actions"]), _json, max_size=4
        ),
    },
).map(lambda body: json.dumps(body).encode())
_bodies = st.one_of(
    st.binary(max_size=2048),
    _task_shaped,
    _task_shaped.flatmap(lambda body: st.integers(0, len(body)).map(lambda cut: body[:cut])),
    st.integers(1000, 6000).flatmap(
        lambda depth: st.sampled_from(["[", '{"a":']).map(lambda o: nested(depth, o))
    ),
    st.integers(20, 400).map(lambda digits: b'{"task_id": "x", "status": ' + b"9" * digits + b"}"),
    _json.map(lambda value: json.dumps(value).encode()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies)
def test_any_bytes_get_400_or_an_acknowledgement_and_never_a_result(fuzzed: Fuzzed, body: bytes) -> None:
    status, answer = post_sync(fuzzed.url, body)
    assert (status, answer["status"]) in ((400, "rejected"), (200, "ignored"))
    assert fuzzed.inbox.received == 0, "nothing was taken for the awaited task"


def test_after_bodies_it_cannot_decode_the_receiver_still_serves(fuzzed: Fuzzed) -> None:
    inbox, url = awaiting(fuzzed.receiver)
    for body in (
        nested(5000, "["),
        nested(5000, '{"a":'),
        b'{"task_id": "\xff"}',
        finished_task()[:-9],
        b"\x00" * 99,
    ):
        assert post_sync(url, body)[0] == 400
    status, answer = post_sync(url, finished_task())
    assert (status, answer) == (200, {"status": "ok"})
    assert inbox.received == 1
    # The awaited task is over: anything more is acknowledged and changes nothing.
    assert post_sync(url, finished_task()) == (200, {"status": "ok"})


@pytest.mark.parametrize("provider", ["goapi", "acedata"])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
async def test_a_callback_nested_5000_deep_is_refused_400(provider: str, opener: str) -> None:
    async with served() as (receiver, _):
        inbox = CallbackInbox(get_provider(provider), mjasync.types.ImagineUpdate)
        inbox.expect(TASK)
        target, _ = receiver.open_route(inbox, progress=False, ttl=None)
        async with aiohttp.ClientSession() as session:
            sent = {"x-webhook-secret": SECRET, "content-type": "application/json"}
            async with session.post(target.url, data=nested(5000, opener), headers=sent) as resp:
                assert resp.status == 400
                assert (await resp.json())["status"] == "rejected"
        assert inbox.received == 0
        assert receiver.statistics().rejected == 1


class ChokingProvider:
    """A provider whose decoder fails in a way no decoder should (the receiver must not care)."""

    name = "choking"
    callback_secret_header = None

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def decode_callback(self, kind: type[Any], body: bytes) -> Any:
        raise self.error


@pytest.mark.parametrize(
    "error", [RecursionError("too deep"), ValueError("bad"), KeyError("x"), OverflowError()]
)
async def test_a_decoder_failing_any_way_is_answered_400(error: BaseException) -> None:
    async with served() as (receiver, _):
        inbox: CallbackInbox[mjasync.types.ImagineUpdate] = CallbackInbox(
            ChokingProvider(error),  # type: ignore[arg-type]
            mjasync.ImagineResult,
        )
        target, _ = receiver.open_route(inbox, progress=False, ttl=None)
        async with aiohttp.ClientSession() as session, session.post(target.url, data=b"{}") as resp:
            assert resp.status == 400
            assert (await resp.json())["status"] == "rejected"
        assert inbox.received == 0


# --- 4. the secret ----------------------------------------------------------------------------------


async def test_the_secret_shows_in_no_repr_error_or_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with served(header_timeout=0.3) as (receiver, port):
        assert _redact.redact(f"echoed back: {SECRET}") == f"echoed back: {_redact.REDACTED}"
        assert SECRET not in repr(receiver) and SECRET not in str(receiver.statistics())
        inbox, url = awaiting(receiver)
        async with aiohttp.ClientSession() as session:
            for secret in ("wrong-secret-wrong", SECRET):
                data = finished_task() if secret == SECRET else b"[" * 5000
                async with session.post(url, data=data, headers={"x-webhook-secret": secret}) as resp:
                    await resp.read()
        idle = SlowClient()
        async with anyio.create_task_group() as group:
            await group.start(hold_open, idle, port, b"POST /x HTTP/1.1\r\n")
        assert inbox.received == 1
    shown = [record.getMessage() for record in caplog.records] + [repr(receiver)]
    assert all(SECRET not in line for line in shown)
