"""Shared fixtures: anyio on asyncio, the in-package emulator on 127.0.0.1, and a client bound to it."""

from __future__ import annotations

import inspect
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

import mjasync
from mjasync.emulator import DEFAULT_TOKEN as EMULATOR_TOKEN

from .redis_server import RedisServer

pytest_plugins = ["mjasync.testing"]
# Asserts in the shared test helpers report their values as the tests' own asserts do.
pytest.register_assert_rewrite("tests.helpers")

#: Fast polling, so submit-and-wait tests take milliseconds against a speed-0 emulator.
FAST_POLL = mjasync.PollPolicy(initial_interval=0.01, factor=1.5, max_interval=0.05, batch_window=0.005)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Run every `async def` test under anyio without a marker on each.

    The mark goes on at collection, before anyio's own hook looks for it, so anyio can add its
    backend fixture before parametrisation; marking items afterwards loses their parameters.
    """
    if name.startswith("test") and inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def open_connections(client: mjasync.Client) -> int:
    """How many pooled connections are checked out (a leak if non-zero between requests)."""
    session = client._pool._session
    if session is None:
        return 0
    return len(session.connector._acquired)  # type: ignore[union-attr]


@pytest.fixture
async def mj(mj_emulator: object) -> AsyncIterator[mjasync.Client]:
    """A client talking to the emulator; after the test, no connection may still be checked out."""
    async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=mj_emulator.url, poll=FAST_POLL) as client:  # type: ignore[attr-defined]
        yield client
        assert open_connections(client) == 0, "a test left a connection checked out"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real `redis-server` for the session (tests keep apart by account name, or flush it)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, its data flushed before the test."""
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=10) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(64).startswith(b"+OK")
    return redis_server.url
