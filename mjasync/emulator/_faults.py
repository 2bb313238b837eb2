"""Emulator layer: injected faults, a per-token concurrency limit, and the emulator-only counters routes.

Faults come from a `FaultPlan` for the whole emulator (a seeded share of requests) or per request from
the ``x-mjasync-fault`` header, which overrides the plan for that request. The header is a
``;``-separated list of items; names and keywords are case-insensitive, spaces are ignored::

    x-mjasync-fault: 429; retry-after=2          # Retry-After: 2 (seconds, fractions allowed)
    x-mjasync-fault: 429; retry-after-ms=1500    # Retry-After-Ms: 1500 and Retry-After: 2
    x-mjasync-fault: 429; retry-after=date       # Retry-After: <HTTP date about 2 s ahead>
    x-mjasync-fault: 503; retry-after=1          # 503 may carry a Retry-After too
    x-mjasync-fault: 500 | 502 | 504 [; phase=before|after]
    x-mjasync-fault: reset [; phase=before|after]
    x-mjasync-fault: cut-after=2                 # ndjson: 2 lines, then the connection closes
    x-mjasync-fault: malformed-line=3            # ndjson: line 3 is a truncated JSON object
    x-mjasync-fault: slow-first-byte=0.5         # the first byte leaves 0.5 s late (real seconds)
    x-mjasync-fault: slow-first-byte=0.2; cut-after=1   # items of different kinds combine
    x-mjasync-fault: none                        # exempt this request from the plan

At most one status (``429 500 502 503 504``) or ``reset`` per request. An invalid header is answered
400 ``bad_request`` in the provider's shape, so a typo in a test fails loudly.

What each fault does:

- A status answers in the provider's error shape (AceData: ``too_many_requests`` "You have exceeded the
  rate limit." for 429, ``api_error`` 500, ``busy`` 503, ``timeout`` 504), except 502, an nginx-style
  HTML page. 429 always carries Retry-After (1 s unless given).
- ``reset`` aborts the connection with a TCP reset and no HTTP response at all.
- ``phase=before`` (the default) answers before the handler runs: nothing is created, nothing counts as a
  submit. ``phase=after`` lets the handler run, so a submit's task IS created and runs on (callbacks
  fire; ``/midjourney/tasks`` has it), and the client gets the error or reset instead of the answer: the
  ambiguous case a client must reconcile rather than resubmit. AceData submits fail right after the task
  is created, whatever the mode (sync, async, callback or stream: no task id, no line reaches the
  client); other handlers fail once they have answered 2xx. If the handler refuses the request itself
  (e.g. 400), the fault is not injected.
- Stream faults act on AceData ndjson answers, and are ignored on others. ``cut-after=N`` sends N lines
  and closes the connection without ending the chunked body (never the final line: a shorter stream is
  cut before its last line; ``cut-after=0`` cuts right after the 200 headers). ``malformed-line=N``
  replaces line N (the last line if the stream is shorter) with the first half of its JSON; the stream
  goes on.
- ``slow-first-byte=S`` holds back any answer (a stream's headers, a JSON body, an injected error or
  reset) for S real seconds. The handler runs first, so a submit's task already exists while the client
  waits: the case of a client read timeout.

`FaultPlan` draws each request's fate from ``random.Random`` seeded with (seed, path, body, how many
times that path saw that body), so a retried request gets a fresh draw and a run is reproducible even
when requests interleave differently. A drawn stream kind is only chosen for a request that will stream.
The plan gives 429 and 503 phase ``before`` and 500/502/504/reset phase ``after`` on `after_share` of
submits; elsewhere ``before``.

``Emulator(concurrency_limit=N)``: a submit arriving while N submits of the same token are open (streams
and sync waits while they last, async submits until answered) is answered 429 with Retry-After before
anything is created. midjourney-proxy's submits (`PROXY_SUBMIT_PATHS`) are not held open and never get
this 429: the proxy runs N tasks per token and queues the rest itself (codes 22 and 23, see `_proxy`).

Limits that change while the emulator runs (a provider that lowers an account's cap, or has an outage),
set with `Emulator.set_limits` or, from another process, ``POST /_emulator/limits`` (no auth) with a
JSON object of any of:

- ``"concurrency_limit": N`` (or ``null`` for none) replaces the per-token limit from now on; submits
  already open stay open.
- ``"outage": S`` answers every API request (submits and lookups) 429 with Retry-After for the next
  S seconds of the emulator's clock (``0`` ends an outage).

It answers ``{"concurrency_limit", "outage_remaining"}``. The Retry-After of both 429s is the plan's
(1 s without a plan).

Every injected fault adds to ``counters``: ``faults``, ``faulted_requests``, ``fault_before`` /
``fault_after`` (whether the handler ran) and ``fault_<kind>`` for kinds ``429 500 502 503 504 reset cut
malformed slow concurrency outage``. ``GET /_emulator/counters`` (no auth, never faulted) returns
``{"counters", "tasks_per_prompt", "faults" (count by kind), "fault_log" (`FaultRecord` fields: kind,
phase, path, source, task_id)}``, and ``"open_submits": {"now", "seconds"}``: the submits open now (of
every token: those the concurrency limit counts) and their integral over the emulator's clock, so the
mean held over any interval is the difference of two readings over its length. ``POST /_emulator/reset``
clears them with the other records and returns the same shape.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from typing import Any, Literal

import anyio
from aiohttp import web

from ._app import Handler, error_for, provider_for
from ._store import LOOKUP_PATHS, APIError, Store, is_lookup

__all__ = [
    "FAULT_COUNTERS",
    "FAULT_HEADER",
    "FAULT_KINDS",
    "FETCH_PATHS",
    "PROXY_SUBMIT_PATHS",
    "SUBMIT_PATHS",
    "Fault",
    "FaultInjector",
    "FaultPlan",
    "FaultRecord",
    "StreamFaults",
    "parse_fault_header",
    "stream_faults",
    "task_created",
]

Phase = Literal["before", "after"]
RetryForm = Literal["seconds", "ms", "date"]
Scope = Literal["all", "submits", "fetch"]

#: The per-request fault header (names are case-insensitive on the wire).
FAULT_HEADER = "x-mjasync-fault"
#: Kinds a `FaultPlan` can draw.
FAULT_KINDS = ("429", "500", "502", "503", "504", "reset", "cut", "malformed", "slow")
#: Counters always present (at 0 until a fault is injected).
FAULT_COUNTERS = (
    "faults",
    "faulted_requests",
    "fault_before",
    "fault_after",
    *(f"fault_{kind}" for kind in (*FAULT_KINDS, "concurrency", "outage")),
)
#: midjourney-proxy's submits, under every mode prefix. They answer at once, so the concurrency limit
#: does not refuse them with 429: the proxy queues their tasks itself (codes 22 and 23, `_proxy`).
PROXY_SUBMIT_PATHS = frozenset(
    f"{prefix}/mj/submit/{name}"
    for prefix in ("", "/mj-fast", "/mj-relax", "/mj-turbo")
    for name in ("imagine", "action", "modal", "blend", "describe", "shorten", "change", "simple-change")
)
#: Requests that may create a billed task: AceData's long jobs, GoAPI's legacy task endpoints and
#: midjourney-proxy's submits.
SUBMIT_PATHS = frozenset(
    {"/midjourney/imagine", "/midjourney/edits", "/midjourney/videos"}
    | {f"/mj/v2/{name}" for name in ("imagine", "upscale", "variation", "reroll", "blend", "describe")}
    | {f"/mj/v2/{name}" for name in ("seed", "inpaint", "outpaint", "pan")}
    | PROXY_SUBMIT_PATHS
)
#: Task lookups with a fixed path; midjourney-proxy's (``/mj/task/{id}/fetch``...) are matched by
#: `is_lookup`, which scope ``fetch`` uses.
FETCH_PATHS = LOOKUP_PATHS

_FAILURES = frozenset({"429", "500", "502", "503", "504", "reset"})
_ARGS = frozenset(
    {"phase", "retry-after", "retry-after-ms", "cut-after", "malformed-line", "slow-first-byte"}
)
_STREAM_PATHS = frozenset({"/midjourney/imagine", "/midjourney/edits", "/midjourney/videos"})
_STREAM_KINDS = frozenset({"cut", "malformed"})
# The failures a client must treat as "maybe created": the only ones a plan injects with phase=after.
_AMBIGUOUS_KINDS = frozenset({"500", "502", "504", "reset"})
_MAX_SLOW = 60.0
_DATE_AHEAD = 2.0
# Only reached if the server does not cancel handlers on disconnect (the Emulator's runner does).
_ABORT_GRACE = 5.0
_BAD_GATEWAY = (
    "<html><head><title>502 Bad Gateway</title></head>\n<body>\n<center><h1>502 Bad Gateway</h1></center>\n"
    "<hr><center>nginx</center>\n</body>\n</html>\n"
)
_BODIES = {
    429: ("too_many_requests", "You have exceeded the rate limit."),
    500: ("api_error", "Internal server error."),
    503: ("busy", "The service is busy, please try again later."),
    504: ("timeout", "Gateway timeout."),
}


@dataclass(frozen=True)
class Fault:
    """What to do to one request; built from the header or drawn by a `FaultPlan`."""

    status: int | None = None
    reset: bool = False
    phase: Phase = "before"
    #: Seconds for Retry-After (429 and 503 only); None sends no Retry-After.
    retry_after: float | None = None
    retry_after_form: RetryForm = "seconds"
    cut_after: int | None = None
    malformed_line: int | None = None
    slow_first_byte: float | None = None

    @property
    def fails(self) -> bool:
        """Whether the request is answered with an error status or a reset."""
        return self.status is not None or self.reset

    @property
    def kind(self) -> str:
        """The counter kind of the failure (``429`` ... ``reset``)."""
        return "reset" if self.reset else str(self.status)


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """Faults for the whole emulator: a seeded share of the requests on some paths gets one fault each.

    Args:
        rate: Share of in-scope requests that get a fault, 0 to 1.
        kinds: Kinds to draw from (`FAULT_KINDS`), evenly or as ``{kind: weight}``.
        seed: Seed of the per-request ``random.Random``.
        scope: ``all`` API paths, only ``submits`` (`SUBMIT_PATHS`) or only ``fetch`` (`is_lookup`).
        paths: Exact paths instead of *scope*.
        after_share: Share of 500/502/504/reset faults on submits injected after the task is created.
        retry_after: Seconds in the Retry-After of 429 and 503 (and of the concurrency limit's 429).
        retry_after_form: Send Retry-After as ``seconds``, ``ms`` (Retry-After-Ms) or an HTTP ``date``.
        cut_after: Lines a ``cut`` stream sends before the connection closes.
        malformed_line: Line (from 1) a ``malformed`` stream garbles.
        slow_first_byte: Seconds a ``slow`` answer's first byte is held back.
    """

    rate: float
    kinds: Sequence[str] | Mapping[str, float] = FAULT_KINDS
    seed: int = 0
    scope: Scope = "all"
    paths: frozenset[str] | None = None
    after_share: float = 0.5
    retry_after: float = 1.0
    retry_after_form: RetryForm = "seconds"
    cut_after: int = 2
    malformed_line: int = 2
    slow_first_byte: float = 0.2
    #: ``(kind, weight)`` pairs, normalised from *kinds*.
    weights: tuple[tuple[str, float], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        pairs = (
            tuple(self.kinds.items()) if isinstance(self.kinds, Mapping) else ((k, 1.0) for k in self.kinds)
        )
        weights = tuple((str(kind), float(weight)) for kind, weight in pairs)
        unknown = [kind for kind, _ in weights if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")
        if not weights or any(not w >= 0 for _, w in weights) or sum(w for _, w in weights) <= 0:
            raise ValueError("fault kind weights must be >= 0 with a positive sum")
        if not 0 <= self.rate <= 1 or not 0 <= self.after_share <= 1:
            raise ValueError("rate and after_share must be in [0, 1]")
        if self.scope not in ("all", "submits", "fetch"):
            raise ValueError("scope must be all, submits or fetch")
        if self.retry_after_form not in ("seconds", "ms", "date"):
            raise ValueError("retry_after_form must be seconds, ms or date")
        if not (self.retry_after >= 0 and self.cut_after >= 0 and self.malformed_line >= 1):
            raise ValueError("retry_after and cut_after must be >= 0, malformed_line >= 1")
        if not 0 <= self.slow_first_byte <= _MAX_SLOW:
            raise ValueError(f"slow_first_byte must be in [0, {_MAX_SLOW:g}]")
        object.__setattr__(self, "weights", weights)

    def applies_to(self, path: str) -> bool:
        """Whether requests to *path* may draw a fault."""
        if self.paths is not None:
            return path in self.paths
        return {"all": True, "submits": path in SUBMIT_PATHS, "fetch": is_lookup(path)}[self.scope]

    def fault(self, kind: str, phase: Phase) -> Fault:
        """The `Fault` this plan injects for *kind*."""
        if kind in ("429", "503"):
            return Fault(
                status=int(kind), retry_after=self.retry_after, retry_after_form=self.retry_after_form
            )
        if kind == "reset":
            return Fault(reset=True, phase=phase)
        if kind == "cut":
            return Fault(cut_after=self.cut_after)
        if kind == "malformed":
            return Fault(malformed_line=self.malformed_line)
        if kind == "slow":
            return Fault(slow_first_byte=self.slow_first_byte)
        return Fault(status=int(kind), phase=phase)


@dataclass(frozen=True)
class FaultRecord:
    """One injected fault: its kind, whether the handler had run, where, why, and the task it hit."""

    kind: str
    phase: Phase
    path: str
    #: ``header``, ``plan``, ``limit`` (the concurrency limit) or ``outage``.
    source: str
    task_id: str | None = None


# --- the header -----------------------------------------------------------------------------------


def parse_fault_header(value: str) -> Fault | None:
    """Parse an ``x-mjasync-fault`` value; None for ``none``.

    Raises:
        ValueError: the value does not follow the grammar (the message says why).
    """
    items = [item.strip() for item in value.split(";") if item.strip()]
    if not items:
        raise ValueError("empty value")
    failure: str | None = None
    args: dict[str, str] = {}
    for item in items:
        name, has_arg, arg = (part.strip().lower() for part in item.partition("="))
        if name in _FAILURES or name == "none":
            if has_arg:
                raise ValueError(f"`{name}` takes no value")
            if failure is not None:
                raise ValueError(f"`{failure}` and `{name}` both given")
            failure = name
        elif name in _ARGS:
            if not has_arg:
                raise ValueError(f"`{name}` needs a value")
            if name in args:
                raise ValueError(f"`{name}` given twice")
            args[name] = arg
        else:
            raise ValueError(f"unknown item `{item}`")
    if failure == "none":
        if args:
            raise ValueError("`none` cannot be combined")
        return None
    return _fault(failure, args)


def _fault(failure: str | None, args: dict[str, str]) -> Fault:
    """Check the items that go together and build the `Fault`."""
    status = int(failure) if failure is not None and failure.isdigit() else None
    phase = args.get("phase", "before")
    if "phase" in args and failure is None:
        raise ValueError("`phase` needs a status or `reset`")
    if phase not in ("before", "after"):
        raise ValueError("`phase` must be before or after")
    if ("retry-after" in args or "retry-after-ms" in args) and status not in (429, 503):
        raise ValueError("Retry-After goes with 429 or 503")
    if "retry-after" in args and "retry-after-ms" in args:
        raise ValueError("give retry-after or retry-after-ms, not both")
    retry_after: float | None = 1.0 if status == 429 else None
    form: RetryForm = "seconds"
    if args.get("retry-after") == "date":
        retry_after, form = _DATE_AHEAD, "date"
    elif "retry-after" in args:
        retry_after = _number(args, "retry-after")
    elif "retry-after-ms" in args:
        retry_after, form = (_number(args, "retry-after-ms", integer=True) or 0.0) / 1000, "ms"
    slow = _number(args, "slow-first-byte")
    if slow is not None and slow > _MAX_SLOW:
        raise ValueError(f"`slow-first-byte` is limited to {_MAX_SLOW:g} s")
    cut, malformed = _number(args, "cut-after", integer=True), _number(args, "malformed-line", integer=True)
    if malformed == 0:
        raise ValueError("`malformed-line` counts lines from 1")
    return Fault(
        status=status,
        reset=failure == "reset",
        phase="after" if phase == "after" else "before",
        retry_after=retry_after,
        retry_after_form=form,
        cut_after=None if cut is None else int(cut),
        malformed_line=None if malformed is None else int(malformed),
        slow_first_byte=slow,
    )


def _number(args: dict[str, str], name: str, *, integer: bool = False) -> float | None:
    """Item *name* as a finite number >= 0 (a whole one if *integer*), or None when absent."""
    text = args.get(name)
    if text is None:
        return None
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"`{name}` must be a {'whole ' if integer else ''}number >= 0, got `{text}`")
    return value


# --- per request ----------------------------------------------------------------------------------


class _Injected(Exception):
    """Raised by `task_created` to hand the answer back to the middleware."""


@dataclass
class _Pending:
    """A fault chosen for one request, and which of its parts have been injected."""

    injector: FaultInjector
    fault: Fault
    source: str
    path: str
    handler_ran: bool = False
    done: set[str] = field(default_factory=set)
    #: The trace id of the task the request created, so an error after it names that task.
    trace_id: str | None = None

    def record(self, kind: str, task_id: str | None = None) -> None:
        """Count part *kind* as injected (the request counts as faulted on its first part)."""
        first = not self.done
        self.done.add(kind)
        phase: Phase = "after" if self.handler_ran else "before"
        self.injector.record(
            FaultRecord(kind, phase, self.path, self.source, task_id), first_of_request=first
        )


_PENDING_KEY = web.RequestKey("mjasync.emulator.fault", _Pending)


def task_created(request: web.Request, task_id: str, trace_id: str | None = None) -> None:
    """Hook for handlers, right after a submit created its task: inject a ``phase=after`` failure now.

    The error then carries the task's *trace_id*, as the provider's would: the request made it.

    Raises:
        _Injected: the middleware answers with the fault instead of the handler.
    """
    pending = request.get(_PENDING_KEY)
    if pending is not None and pending.fault.fails and pending.fault.phase == "after":
        pending.handler_ran = True
        pending.trace_id = trace_id
        pending.record(pending.fault.kind, task_id)
        raise _Injected


class StreamFaults:
    """Hooks for an ndjson stream of *lines* lines: hold the first byte, garble a line, cut the rest."""

    def __init__(self, request: web.Request, pending: _Pending | None, task_id: str, lines: int) -> None:
        self._request = request
        self._pending = pending
        self._task_id = task_id
        fault = pending.fault if pending else Fault()
        # Never past the final line: a cut stream never ends cleanly, a garbled line always shows.
        self._cut = None if fault.cut_after is None else min(fault.cut_after, lines - 1)
        self._garble = None if fault.malformed_line is None else min(fault.malformed_line, lines) - 1
        self._slow = fault.slow_first_byte

    async def first_byte(self) -> None:
        """Call before the response is prepared."""
        if self._pending is not None and self._slow is not None:
            self._pending.record("slow", self._task_id)
            await anyio.sleep(self._slow)

    def cut(self, sent: int) -> bool:
        """Whether to stop after *sent* lines; if so the connection is already closing."""
        if self._pending is None or sent != self._cut:
            return False
        self._pending.record("cut", self._task_id)
        transport = self._request.transport
        if transport is not None:
            transport.close()  # flushes the lines sent, then FIN without the chunked terminator
        return True

    def line(self, index: int, data: bytes) -> bytes:
        """The bytes to send as line *index* (from 0), garbled if this is the malformed one."""
        if self._pending is None or index != self._garble:
            return data
        self._pending.record("malformed", self._task_id)
        return data[: len(data) // 2]  # half an object: never valid JSON


def stream_faults(request: web.Request, task_id: str, lines: int) -> StreamFaults:
    """The stream faults planned for *request*, which streams task *task_id* in *lines* lines."""
    pending = request.get(_PENDING_KEY)
    if pending is not None:
        pending.handler_ran = True
    return StreamFaults(request, pending, task_id, lines)


# --- the injector -------------------------------------------------------------------------------


class FaultInjector:
    """Chooses and injects faults, enforces the concurrency limit, keeps the fault records."""

    def __init__(self, store: Store, plan: FaultPlan | None, concurrency_limit: int | None) -> None:
        if concurrency_limit is not None and concurrency_limit < 1:
            raise ValueError("concurrency_limit must be >= 1")
        self.store = store
        self.plan = plan
        self.concurrency_limit = concurrency_limit
        self.by_kind: dict[str, int] = {}
        self.log: list[FaultRecord] = []
        self._seen: dict[tuple[str, str], int] = {}
        self._open: dict[str, int] = {}
        #: All tokens' open submits, and their integral over the store's clock up to `_open_at`.
        self._open_total = 0
        self._open_seconds = 0.0
        self._open_at = store.clock()
        #: Every API request is answered 429 until this time of the store's clock.
        self.outage_until = -math.inf
        self.reset()

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._handle(request, handler)

        self.middleware = middleware

    def reset(self) -> None:
        """Forget fault records and plan draws; seed the fault counters at 0."""
        self.by_kind.clear()
        self.by_kind.update(dict.fromkeys((*FAULT_KINDS, "concurrency", "outage"), 0))
        self.log.clear()
        self._seen.clear()
        for name in FAULT_COUNTERS:
            self.store.counters.setdefault(name, 0)

    def record(self, record: FaultRecord, *, first_of_request: bool) -> None:
        """Count one injected fault."""
        self.log.append(record)
        self.by_kind[record.kind] = self.by_kind.get(record.kind, 0) + 1
        for name in ("faults", f"fault_{record.phase}", f"fault_{record.kind}"):
            self.store.count(name)
        if first_of_request:
            self.store.count("faulted_requests")

    def routes(self) -> list[web.RouteDef]:
        """The emulator-only routes: counters and reset (no auth; outside every provider's prefix)."""
        return [
            web.get("/_emulator/counters", self._counters),
            web.post("/_emulator/reset", self._reset),
            web.post("/_emulator/limits", self._limits),
        ]

    def set_limits(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``concurrency_limit`` and/or ``outage`` (see the module docstring); the limits now.

        Raises:
            ValueError: an unknown name or a bad value.
        """
        unknown = set(settings) - {"concurrency_limit", "outage"}
        if unknown:
            raise ValueError(f"unknown limits {sorted(unknown)}; give concurrency_limit and/or outage")
        if "concurrency_limit" in settings:
            limit = settings["concurrency_limit"]
            if limit is not None and (type(limit) is not int or limit < 1):
                raise ValueError("concurrency_limit must be an integer >= 1 or null")
            self.concurrency_limit = limit
        if "outage" in settings:
            seconds = settings["outage"]
            if type(seconds) not in (int, float) or not 0 <= seconds < math.inf:
                raise ValueError("outage must be a number of seconds >= 0")
            self.outage_until = self.store.clock() + seconds if seconds else -math.inf
        return {
            "concurrency_limit": self.concurrency_limit,
            "outage_remaining": max(0.0, self.outage_until - self.store.clock()),
        }

    def snapshot(self) -> dict[str, Any]:
        """The body of ``GET /_emulator/counters``."""
        return {
            "counters": dict(self.store.counters),
            "tasks_per_prompt": dict(self.store.tasks_per_prompt),
            "faults": dict(self.by_kind),
            "fault_log": [asdict(record) for record in self.log],
            "open_submits": self.snapshot_open(),
        }

    def snapshot_open(self) -> dict[str, float]:
        """Submits open now, and their integral over the store's clock."""
        return {"now": self._open_total, "seconds": self._held(0)}

    def _held(self, change: int) -> float:
        """Bring the integral of open submits up to now, then apply `change`; the integral."""
        now = self.store.clock()
        self._open_seconds += self._open_total * (now - self._open_at)
        self._open_at = now
        self._open_total += change
        return self._open_seconds

    async def _counters(self, _request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def _limits(self, request: web.Request) -> web.Response:
        try:
            settings = json.loads(await request.read())
            if not isinstance(settings, dict):
                raise ValueError("send a JSON object")
            return web.json_response(self.set_limits(settings))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def _reset(self, _request: web.Request) -> web.Response:
        self.store.reset_records()
        self.reset()
        return web.json_response(self.snapshot())

    # --- the middleware ---

    async def _handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if provider_for(request) is None:
            return await handler(request)
        if self.store.clock() < self.outage_until:
            self.record(FaultRecord("outage", "before", request.path, "outage"), first_of_request=True)
            return self._error(
                request, 429, self._retry_after(Fault(status=429, retry_after=self._limit_wait))
            )
        fault, source = await self._choose(request)
        pending = _Pending(self, fault, source, request.path) if fault else None
        if pending is not None and pending.fault.fails and pending.fault.phase == "before":
            return await self._fail(request, pending)
        # midjourney-proxy's submits are not held open: its tasks are queued by `_proxy` instead.
        submit = request.path in SUBMIT_PATHS and request.path not in PROXY_SUBMIT_PATHS
        # Keyed by the raw credential (never recorded); AceData sends a Bearer token, GoAPI an X-API-Key.
        token = request.headers.get("Authorization") or request.headers.get("X-API-Key") or ""
        if (
            submit
            and self.concurrency_limit is not None
            and self._open.get(token, 0) >= self.concurrency_limit
        ):
            self.record(FaultRecord("concurrency", "before", request.path, "limit"), first_of_request=True)
            return self._error(
                request, 429, self._retry_after(Fault(status=429, retry_after=self._limit_wait))
            )
        if pending is not None:
            request[_PENDING_KEY] = pending
        if submit:
            self._open[token] = self._open.get(token, 0) + 1
            self._held(1)
        try:
            return await self._respond(request, handler, pending)
        finally:
            if submit:
                self._held(-1)
                self._open[token] -= 1
                if not self._open[token]:
                    del self._open[token]

    @property
    def _limit_wait(self) -> float:
        return self.plan.retry_after if self.plan is not None else 1.0

    async def _respond(
        self, request: web.Request, handler: Handler, pending: _Pending | None
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except _Injected:
            assert pending is not None
            return await self._fail(request, pending)
        if pending is None:
            return response
        pending.handler_ran = True
        fault = pending.fault
        if fault.fails and fault.kind not in pending.done and not response.prepared and response.status < 300:
            # A handler without the `task_created` hook: fail once it has answered.
            pending.record(fault.kind, _task_id_of(response))
            return await self._fail(request, pending)
        if fault.slow_first_byte is not None and not response.prepared:
            pending.record("slow", _task_id_of(response))
            await anyio.sleep(fault.slow_first_byte)
        return response

    async def _fail(self, request: web.Request, pending: _Pending) -> web.StreamResponse:
        """Answer with the pending failure (after the slow first byte, if asked); records it if not yet."""
        fault = pending.fault
        if fault.kind not in pending.done:
            pending.record(fault.kind)
        if fault.slow_first_byte is not None:
            pending.record("slow")
            await anyio.sleep(fault.slow_first_byte)
        if fault.reset:
            return await _abort(request)
        return self._error(request, fault.status or 500, self._retry_after(fault), trace_id=pending.trace_id)

    def _error(
        self, request: web.Request, status: int, headers: dict[str, str], *, trace_id: str | None = None
    ) -> web.Response:
        if status == 502:
            return web.Response(status=502, text=_BAD_GATEWAY, content_type="text/html", headers=headers)
        code, message = _BODIES[status]
        response = error_for(request, status, code, message, trace_id=trace_id)
        response.headers.update(headers)
        return response

    @staticmethod
    def _retry_after(fault: Fault) -> dict[str, str]:
        seconds = fault.retry_after
        if seconds is None or fault.status not in (429, 503):
            return {}
        if fault.retry_after_form == "ms":
            # Both, as OpenAI does: clients that only know Retry-After still wait about as long.
            return {"Retry-After-Ms": str(round(seconds * 1000)), "Retry-After": str(math.ceil(seconds))}
        if fault.retry_after_form == "date":
            # Real time, not the emulator's clock: the client compares it with its own wall clock.
            # Rounded up to the next whole second, so the date is never already past.
            return {"Retry-After": formatdate(math.ceil(time.time() + seconds), usegmt=True)}
        return {"Retry-After": f"{seconds:f}".rstrip("0").rstrip(".")}

    async def _choose(self, request: web.Request) -> tuple[Fault | None, str]:
        """The header's fault if the header is present, else the plan's draw."""
        values = request.headers.getall(FAULT_HEADER, [])
        if values:
            try:
                return parse_fault_header(";".join(values)), "header"
            except ValueError as exc:
                raise APIError(400, "bad_request", f"{FAULT_HEADER}: {exc}.") from None
        plan = self.plan
        if plan is None or plan.rate <= 0 or not plan.applies_to(request.path):
            return None, "plan"
        body = await request.read()  # cached: the request log already read it
        digest = hashlib.sha256(body).hexdigest()
        key = (request.path, digest)
        self._seen[key] = seen = self._seen.get(key, 0) + 1
        rng = random.Random(f"{plan.seed}|{request.path}|{digest}|{seen}")
        if rng.random() >= plan.rate:
            return None, "plan"
        streams = _will_stream(request, body)
        kinds = [(kind, weight) for kind, weight in plan.weights if streams or kind not in _STREAM_KINDS]
        if not kinds or sum(weight for _, weight in kinds) <= 0:
            return None, "plan"
        kind = rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
        after = request.path in SUBMIT_PATHS and kind in _AMBIGUOUS_KINDS and rng.random() < plan.after_share
        return plan.fault(kind, "after" if after else "before"), "plan"


def _will_stream(request: web.Request, body: bytes) -> bool:
    """Whether AceData will answer *request* with an ndjson stream."""
    if request.path not in _STREAM_PATHS or "application/x-ndjson" not in request.headers.get("Accept", ""):
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and not parsed.get("async") and not parsed.get("callback_url")


def _task_id_of(response: web.StreamResponse) -> str | None:
    """The ``task_id`` of a JSON answer, for the fault record."""
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    task_id = parsed.get("task_id") if isinstance(parsed, dict) else None
    return task_id if isinstance(task_id, str) else None


async def _abort(request: web.Request) -> web.StreamResponse:
    """Reset the connection with no HTTP response."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close() sends RST instead of FIN, a real "connection reset by peer".
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    # aiohttp cancels this handler as soon as it sees the connection gone, so nothing is logged as
    # answered; the response below is only for servers that do not, and can no longer be written.
    await anyio.sleep(_ABORT_GRACE)
    return web.Response(status=500)
