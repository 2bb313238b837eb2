"""A local emulator that speaks AceData, GoAPI and midjourney-proxy, for tests over real sockets offline.

    async with Emulator() as emu:          # binds 127.0.0.1 on a free port
        ...                                # point a client at emu.url with token "test-token"
                                           # (AceData: /midjourney/*, Bearer; GoAPI: /mj/v2/*, X-API-KEY;
                                           # midjourney-proxy: /mj/* and /mj-fast|relax|turbo/mj/*,
                                           # mj-api-secret or Authorization)
        assert emu.counters["submits"] == 1

Faults for robustness tests: ``Emulator(faults=FaultPlan(rate=0.2, seed=1))`` for a seeded share of all
requests, or per request the header ``x-mjasync-fault: 500; phase=after`` (grammar in `_faults`);
``Emulator(concurrency_limit=N)`` answers 429 past N open submits per token (midjourney-proxy instead runs N
tasks per token and queues the rest: codes 22, then 23 past ``proxy_queue_size``). Counters, tasks per prompt
and faults are also served, without auth, at ``GET /_emulator/counters`` (``POST /_emulator/reset``);
when each job ended (`Emulator.finish_times`) at ``GET /_emulator/finishes``.

It shares no wire code with the mjasync client: its bodies are built from the provider's recorded
examples, so a field-name mistake in the client cannot be hidden by the same mistake here.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

import aiohttp
import anyio
from aiohttp import web
from anyio.abc import TaskGroup

from . import _acedata, _goapi, _proxy
from ._app import make_app
from ._faults import FAULT_HEADER, FAULT_KINDS, FaultInjector, FaultPlan, FaultRecord
from ._store import (
    CallbackRecord,
    Clock,
    ImageSizes,
    ManualClock,
    RecordedRequest,
    Settings,
    Store,
)

__all__ = [
    "DEFAULT_BANNED_WORDS",
    "DEFAULT_TOKEN",
    "FAULT_HEADER",
    "FAULT_KINDS",
    "CallbackRecord",
    "Clock",
    "Emulator",
    "FaultPlan",
    "FaultRecord",
    "ImageSizes",
    "ManualClock",
    "RecordedRequest",
]

#: The token an emulator accepts unless told otherwise (`Emulator(tokens=...)`, `mjasync emulator --token`).
DEFAULT_TOKEN = "test-token"
#: Prompts containing one of these words get the provider's 403 moderation error.
DEFAULT_BANNED_WORDS = ("gore",)


class Emulator:
    """Serve the AceData, GoAPI and midjourney-proxy APIs locally for as long as the ``async with`` block runs.

    Args:
        host: Interface to bind; keep the default loopback address.
        port: Port to bind; 0 picks a free one (read it back from `port` or `url`).
        speed: Seconds a job takes end to end (queued first, then progress); 0 finishes at once.
        tokens: Tokens accepted (default: `DEFAULT_TOKEN`, "test-token"); an empty tuple accepts any
            token.
        banned_words: Words that make a prompt fail moderation (403).
        clock: Returns unix seconds; inject one (e.g. `ManualClock`) to step jobs by hand.
        max_body_size: Larger request bodies are refused with 413.
        image_sizes: Pixel sizes of the generated PNGs.
        callback_timeout: Total seconds allowed for each callback POST.
        queue_fraction: Share of `speed` a job spends queued before it starts.
        faults: Faults injected into a seeded share of requests (the header works regardless).
        concurrency_limit: Open submits allowed per token; one more is answered 429 with Retry-After.
            midjourney-proxy: tasks running at once per token; later ones wait (code 22).
        proxy_queue_size: midjourney-proxy tasks that may wait per token under the concurrency limit;
            past them a submit is refused with code 23.
        proxy_list_limit: midjourney-proxy's ``GET /mj/task/list`` shows only the newest this many
            tasks of all tokens (trueai lists its newest 100); None lists every task (NZ).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 0.0,
        tokens: tuple[str, ...] = (DEFAULT_TOKEN,),
        banned_words: tuple[str, ...] = DEFAULT_BANNED_WORDS,
        clock: Clock | None = None,
        max_body_size: int = 16 * 1024 * 1024,
        image_sizes: ImageSizes | None = None,
        callback_timeout: float = 10.0,
        queue_fraction: float = 0.15,
        faults: FaultPlan | None = None,
        concurrency_limit: int | None = None,
        proxy_queue_size: int = 10,
        proxy_list_limit: int | None = None,
    ) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        if not 0 <= queue_fraction < 1:
            raise ValueError("queue_fraction must be in [0, 1)")
        if proxy_queue_size < 0:
            raise ValueError("proxy_queue_size must be >= 0")
        if proxy_list_limit is not None and proxy_list_limit < 1:
            raise ValueError("proxy_list_limit must be >= 1 (or None for every task)")
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        settings = Settings(
            speed=speed,
            tokens=tuple(tokens),
            banned_words=tuple(banned_words),
            max_body_size=max_body_size,
            image_sizes=image_sizes or ImageSizes(),
            queue_fraction=queue_fraction,
            callback_timeout=callback_timeout,
        )
        self._store = Store(settings, clock)
        self._faults = FaultInjector(self._store, faults, concurrency_limit)
        self._proxy_queue_size = proxy_queue_size
        self._proxy_list_limit = proxy_list_limit
        self._stack: contextlib.AsyncExitStack | None = None

    # --- what tests look at ---

    @property
    def port(self) -> int:
        """The bound port (raises RuntimeError before the emulator has started)."""
        if self._port is None:
            raise RuntimeError("the emulator is not running; use `async with Emulator() as emu:`")
        return self._port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def clock(self) -> Clock:
        """The clock jobs are timed by."""
        return self._store.clock

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every API request received (image downloads excluded), oldest first; never the auth header."""
        return self._store.requests

    @property
    def counters(self) -> dict[str, int]:
        """Event counts: ``requests``, ``tasks``, ``submits``, ``streams``, ``callbacks``, ``image_gets``, ..."""
        return self._store.counters

    @property
    def tasks_per_prompt(self) -> dict[str, int]:
        """How many tasks each submitted ``prompt`` created ("" for submits without one)."""
        return self._store.tasks_per_prompt

    @property
    def faults(self) -> dict[str, int]:
        """Injected faults by kind (`FAULT_KINDS` and ``concurrency``), also counted as ``fault_<kind>``."""
        return self._faults.by_kind

    @property
    def fault_log(self) -> list[FaultRecord]:
        """Every injected fault, oldest first: kind, phase, path, source and the task it hit."""
        return self._faults.log

    @property
    def fault_plan(self) -> FaultPlan | None:
        """The plan given as ``faults=``."""
        return self._faults.plan

    @property
    def callbacks(self) -> list[CallbackRecord]:
        """Every callback POST made, with the status received or the error met."""
        return self._store.callbacks

    def drop_callbacks(self, count: int = 1) -> None:
        """Lose the next *count* callbacks or webhooks that fall due: none of their attempts is sent.

        Counted in ``counters["callbacks_dropped"]``; for testing that a client survives a lost callback.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")
        self._store.drop_callbacks(count)

    def reset_records(self) -> None:
        """Forget recorded requests, callbacks, counters and faults; tasks and images stay available."""
        self._store.reset_records()
        self._faults.reset()

    @property
    def finish_times(self) -> dict[str, float]:
        """When each job that has ended by now ended, by task id (clock seconds; also served, without
        auth, at ``GET /_emulator/finishes``): the moment its lookups began to show the final body."""
        return self._store.finish_times()

    @property
    def open_submits(self) -> dict[str, float]:
        """``{"now", "seconds"}``: submits open now (those a concurrency limit counts, every token), and
        their integral over the clock (also in ``GET /_emulator/counters``): the mean held over an
        interval is the difference of two readings over its length."""
        return dict(self._faults.snapshot_open())

    def set_limits(self, **limits: Any) -> dict[str, Any]:
        """Change limits while running (also ``POST /_emulator/limits``; details in `_faults`).

        ``concurrency_limit=N`` (None for none) replaces the per-token limit; ``outage=S`` answers every
        API request 429 for the next S seconds. Returns ``{"concurrency_limit", "outage_remaining"}``.
        """
        return self._faults.set_limits(limits)

    def task_record(self, task_id: str) -> dict[str, Any] | None:
        """Return the task record `/midjourney/tasks` would show now, or None for an unknown id."""
        task = self._store.tasks.get(task_id)
        return None if task is None else task.snapshot(self._store.clock())

    # --- lifecycle ---

    async def __aenter__(self) -> Emulator:
        if self._stack is not None:
            raise RuntimeError("this emulator is already running")
        store = self._store
        # Bind before anything else, so a busy port fails plainly and port 0 resolves to a real port.
        sock = _bind(self.host, self._requested_port)
        try:
            async with contextlib.AsyncExitStack() as stack:
                store.open()
                # Exit order is the reverse of this: wake waiters, stop serving, cancel background
                # work, then close the callback session.
                timeout = aiohttp.ClientTimeout(total=store.settings.callback_timeout)
                store.http = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
                stack.callback(setattr, store, "http", None)
                group = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(group.cancel_scope.cancel)
                store.start_soon = _starter(group)
                stack.callback(setattr, store, "start_soon", None)
                # The fault middleware runs inside the request log; /_emulator/* is outside any provider.
                app = make_app(
                    store,
                    # GoAPI before midjourney-proxy: its /mj/v2/ lies inside the proxy's /mj/.
                    [
                        _acedata.provider(),
                        _goapi.provider(),
                        _proxy.provider(
                            self._faults, queue_size=self._proxy_queue_size, list_limit=self._proxy_list_limit
                        ),
                    ],
                    middlewares=[self._faults.middleware],
                    extra_routes=[*self._faults.routes(), store.finishes_route()],
                )
                runner = web.AppRunner(
                    app,
                    handle_signals=False,
                    handler_cancellation=True,
                    shutdown_timeout=2.0,
                    access_log=None,
                )
                await runner.setup()
                stack.push_async_callback(runner.cleanup)
                # A fan-out opens thousands of connections at once: a short accept queue (aiohttp's
                # default is 128) drops SYNs, and the retransmits would skew every timing by seconds.
                site = web.SockSite(runner, sock, backlog=_BACKLOG)
                await site.start()  # the server now owns (and will close) sock
                self._port = sock.getsockname()[1]
                store.base_url = self.url
                stack.callback(store.close)
                self._stack = stack.pop_all()
        except BaseException:
            sock.close()  # harmless if the server already closed it
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            try:
                # The body's own exception propagates by itself; handing it to the task group would
                # only wrap it in an ExceptionGroup.
                await stack.aclose()
            finally:
                self._port = None


def _starter(group: TaskGroup) -> Callable[[Callable[[], Coroutine[Any, Any, None]]], None]:
    def start_soon(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        group.start_soon(fn)

    return start_soon


#: Pending connections the listening socket queues (the kernel caps it at net.core.somaxconn).
_BACKLOG = 4096


def _bind(host: str, port: int) -> socket.socket:
    """Bind a listening socket first, so port 0 resolves to a real port before serving starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sys.platform != "win32":  # on Windows this option would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
