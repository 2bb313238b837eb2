"""Emulator layer: the in-memory task, image and video tables, the request log and the injectable clock.

A job's whole life is planned when it is submitted: a list of timed events (progress bodies, then a
final or failure body). What any observer sees - the ndjson stream, the `/tasks` record, a callback,
the synchronous reply - is a pure function of that plan and the clock, so they always agree.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import anyio
from aiohttp import web
from multidict import CIMultiDict

from ._images import Spec

__all__ = [
    "COUNTERS",
    "STORE_KEY",
    "APIError",
    "CallbackRecord",
    "Clock",
    "Closing",
    "ImageRecord",
    "ImageSizes",
    "ManualClock",
    "RecordedRequest",
    "Settings",
    "Store",
    "TaskRecord",
    "VideoRecord",
    "is_lookup",
]

JSON = dict[str, Any]
#: Counters that always exist (at 0 until something happens); handlers may add more.
COUNTERS = (
    "requests",
    "tasks",
    "submits",
    "streams",
    "sync_timeouts",
    "polls",
    "callbacks",
    "callback_errors",
    "callbacks_dropped",
    "image_gets",
    "video_gets",
)
#: Task lookups (a client polling): each request here counts in ``counters["polls"]``.
LOOKUP_PATHS = frozenset({"/midjourney/tasks", "/mj/v2/fetch", "/mj/v2/multi_fetch"})
# midjourney-proxy's lookups carry the task id in the path, under any mode prefix.
_PROXY_LOOKUP = re.compile(
    r"^/(?:mj-(?:fast|relax|turbo)/)?mj/task/(?:[^/]+/fetch|list-by-condition|list-by-ids|list|queue)$"
)


def is_lookup(path: str) -> bool:
    """Whether a request to *path* looks tasks up (`LOOKUP_PATHS`, or a midjourney-proxy task query)."""
    return path in LOOKUP_PATHS or _PROXY_LOOKUP.match(path) is not None


#: Returns the current time in unix seconds; `time.time` unless a test injects its own.
Clock = Callable[[], float]


class ManualClock:
    """A clock that moves only when told to: pass it as ``clock=`` to step jobs through their states."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by *seconds*."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds


class APIError(Exception):
    """Raised by a handler to answer with the provider's error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Closing(Exception):
    """Raised inside waits when the emulator shuts down, so handlers and callbacks end promptly."""


@dataclass(frozen=True, kw_only=True)
class ImageSizes:
    """Pixel sizes of generated images (longest side; the other side follows the aspect ratio)."""

    #: Raw 2x2 grid.
    grid: int = 1024
    #: Raw single image made by `upscaleN` (a quadrant enlarged).
    upscale: int = 1024
    #: `upscale_2x`/`upscale_4x` results are capped at this.
    max_side: int = 4096
    #: Thumbnail (`image_url`) size relative to the raw image.
    thumbnail_scale: float = 0.5
    #: Intermediate progress images relative to the final ones.
    progress_scale: float = 0.5
    #: A video's first-frame image.
    video_cover: int = 640


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything that configures one emulator instance."""

    speed: float = 0.0
    tokens: tuple[str, ...] = ("test-token",)
    banned_words: tuple[str, ...] = ("gore",)
    max_body_size: int = 16 * 1024 * 1024
    image_sizes: ImageSizes = field(default_factory=ImageSizes)
    #: Share of `speed` a job spends queued (no `response` in its record) before progress starts.
    queue_fraction: float = 0.15
    callback_timeout: float = 10.0
    #: With an injected clock, waiters re-read it this often (real seconds).
    poll_interval: float = 0.01
    png_cache_size: int = 32


@dataclass
class RecordedRequest:
    """One API request as the emulator saw it (the authorization header is never kept)."""

    method: str
    path: str
    accept: str | None
    content_type: str | None
    #: Every header except credentials (case-insensitive lookups).
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    json: JSON | None = None
    status: int | None = None


@dataclass(frozen=True)
class CallbackRecord:
    """One callback POST the emulator made: the body sent and the HTTP status or the error met."""

    url: str
    body: JSON
    status: int | None
    error: str | None = None


@dataclass(frozen=True)
class ImageRecord:
    """An image that an `image_id` names: its recipe, sizes and the actions it allows."""

    image_id: str
    spec: Spec
    raw: tuple[int, int]
    thumb: tuple[int, int]
    actions: tuple[str, ...]
    task_id: str


@dataclass(frozen=True)
class VideoRecord:
    """A generated set of four videos and the image they start from."""

    video_id: str
    cover: ImageRecord
    task_id: str
    count: int = 4


#: The account e-mail a task record shows (§11 has the user's own address there).
EMULATOR_EMAIL = "user@emulator.mjasync.invalid"


@dataclass
class TaskRecord:
    """A job and its planned events; `snapshot(now)` is the provider's task record at that time."""

    id: str
    type: str
    application_id: str
    mode: str
    request: JSON
    trace_id: str
    created_at: float
    #: ``(time, body)`` in time order: progress bodies, then the final (or failure) body.
    events: list[tuple[float, JSON]]
    prompt: str = ""
    object_id: str = field(default_factory=lambda: secrets.token_hex(12))
    #: The Midjourney job behind the task (`job_id` in the record, §11), and the key it ran under.
    job_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    credential_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def started_at(self) -> float:
        """When the job leaves the queue (its first event)."""
        return self.events[0][0]

    @property
    def finished_at(self) -> float:
        """When the final body becomes current."""
        return self.events[-1][0]

    @property
    def final(self) -> JSON:
        """The final body: the full result or the failure body."""
        return self.events[-1][1]

    def response_at(self, now: float) -> JSON | None:
        """Return the body current at *now*, or None while the job is still queued."""
        current = None
        for when, body in self.events:
            if when > now:
                break
            current = body
        return current

    def snapshot(self, now: float) -> JSON:
        """Return the task record as `/midjourney/tasks` shows it at *now*."""
        record: JSON = {
            "_id": self.object_id,
            "id": self.id,
            "type": self.type,
            "application_id": self.application_id,
            "credential_id": self.credential_id,
            "mode": self.mode,
            "email": EMULATOR_EMAIL,
            "request": self.request,
            "trace_id": self.trace_id,
            "created_at": self.created_at,
        }
        if now >= self.started_at:
            record["started_at"] = self.started_at
        response = self.response_at(now)
        if response is not None:
            record["response"] = response
        if now >= self.finished_at:
            record["finished_at"] = self.finished_at
            record["duration"] = self.finished_at - self.created_at
            record["job_id"] = self.job_id
            record["hold"] = False
            if isinstance(self.final.get("image_id"), str):
                record["image_id"] = self.final["image_id"]
        # `response` stays exactly the endpoint's body, as §11 says; its example also shows job_id and
        # hold inside it, which the seeds' recorded bodies never have, so they live at the top only.
        return record


class BilledTask(Protocol):
    """What the store needs of a GoAPI task (`_goapi_tasks.GoapiTask`, which builds on this module)."""

    @property
    def id(self) -> str: ...
    @property
    def billing_prompt(self) -> str: ...
    @property
    def finished_at(self) -> float: ...


class Store:
    """All state of one emulator: tables, request log, counters, clock and background hooks."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or time.time
        self._real_clock = clock is None
        self.base_url = ""
        self.tasks: dict[str, TaskRecord] = {}
        self.tasks_by_trace: dict[str, TaskRecord] = {}
        self.images: dict[str, ImageRecord] = {}
        self.videos: dict[str, VideoRecord] = {}
        #: GoAPI's tasks, apart from AceData's: neither provider can look up the other's ids.
        self.goapi_tasks: dict[str, BilledTask] = {}
        #: midjourney-proxy's tasks (`_proxy_tasks.ProxyTask`), apart from the other two's.
        self.proxy_tasks: dict[str, BilledTask] = {}
        self.requests: list[RecordedRequest] = []
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.tasks_per_prompt: dict[str, int] = {}
        self.callbacks: list[CallbackRecord] = []
        #: Callbacks still to drop (`drop_callbacks`).
        self.callbacks_to_drop = 0
        self.png_cache: OrderedDict[tuple[str, int, int, int], bytes] = OrderedDict()
        self._salts: dict[tuple[str, str], int] = {}
        self._closing: anyio.Event | None = None
        # Set by the Emulator while it runs: its task group's `start_soon` and its callback session.
        self.start_soon: Callable[[Callable[[], Coroutine[Any, Any, None]]], None] | None = None
        self.http: aiohttp.ClientSession | None = None

    # --- lifecycle and time ---

    def open(self) -> None:
        """Prepare for serving (anyio events must be made inside the running event loop)."""
        self._closing = anyio.Event()

    def close(self) -> None:
        """Wake every waiter so that in-flight requests and callbacks end before shutdown."""
        if self._closing is not None:
            self._closing.set()

    async def wait_until(self, when: float) -> None:
        """Sleep until the clock reaches *when*.

        Raises:
            Closing: the emulator is shutting down.
        """
        closing = self._closing
        while (now := self.clock()) < when:
            if closing is None or closing.is_set():
                raise Closing
            # An injected clock can jump at any moment, so re-read it often instead of trusting the delay.
            delay = when - now if self._real_clock else min(when - now, self.settings.poll_interval)
            with anyio.move_on_after(delay):
                await closing.wait()
        if closing is not None and closing.is_set():
            raise Closing

    def plan(self, bodies: Sequence[JSON]) -> tuple[float, list[tuple[float, JSON]]]:
        """Schedule *bodies* from now: a queued phase, then evenly spread, the last at ``now + speed``.

        Returns the creation time and the ``(time, body)`` events.
        """
        now, speed = self.clock(), self.settings.speed
        started = now + speed * self.settings.queue_fraction
        if len(bodies) == 1:
            return now, [(started, bodies[0])]
        step = (now + speed - started) / (len(bodies) - 1)
        return now, [(started + step * k, body) for k, body in enumerate(bodies)]

    # --- ids ---

    @staticmethod
    def new_uuid() -> str:
        """Return a fresh UUID4 string (task ids and trace ids)."""
        return str(uuid.uuid4())

    def new_numeric_id(self, digits: int = 19) -> str:
        """Return a fresh numeric string like the provider's image ids (19 digits) or video ids (16)."""
        while True:
            value = str(10 ** (digits - 1) + secrets.randbelow(9 * 10 ** (digits - 1)))
            if value not in self.images and value not in self.videos:
                return value

    def next_salt(self, source_id: str, action: str) -> int:
        """Count how often *action* was applied to *source_id*, so repeated actions differ, deterministically."""
        key = (source_id, action)
        self._salts[key] = self._salts.get(key, 0) + 1
        return self._salts[key]

    # --- tables ---

    def count(self, name: str, by: int = 1) -> None:
        """Add *by* to counter *name*."""
        self.counters[name] = self.counters.get(name, 0) + by

    def add_task(self, task: TaskRecord, *, submit: bool) -> None:
        """Store *task*; a submit (imagine, edits, videos) also counts towards `submits` and its prompt."""
        self.tasks[task.id] = task
        self.tasks_by_trace[task.trace_id] = task
        self.count("tasks")
        if submit:
            self.count_submit(task.prompt)

    def count_submit(self, prompt: str) -> None:
        """Count one billed submit towards `submits` and towards *prompt* (shared by every provider)."""
        self.count("submits")
        self.tasks_per_prompt[prompt] = self.tasks_per_prompt.get(prompt, 0) + 1

    def add_goapi_task(self, task: BilledTask) -> None:
        """Store a GoAPI task; every GoAPI task comes from a billed submit, counted like AceData's."""
        self.goapi_tasks[task.id] = task
        self.count("tasks")
        self.count_submit(task.billing_prompt)

    def add_proxy_task(self, task: BilledTask) -> None:
        """Store a midjourney-proxy task; each comes from a billed submit, counted like the others'."""
        self.proxy_tasks[task.id] = task
        self.count("tasks")
        self.count_submit(task.billing_prompt)

    def add_image(self, image: ImageRecord) -> ImageRecord:
        """Store and return *image*."""
        self.images[image.image_id] = image
        return image

    def image(self, image_id: str) -> ImageRecord:
        """Return the image *image_id*, or refuse the request like the provider does."""
        try:
            return self.images[image_id]
        except KeyError:
            raise APIError(400, "bad_request", f"The image_id `{image_id}` is not found.") from None

    def find_tasks(self, ids: Sequence[str], *, by_trace: bool = False) -> list[TaskRecord]:
        """Return the tasks among *ids* that exist, in the given order."""
        table = self.tasks_by_trace if by_trace else self.tasks
        return [table[i] for i in ids if i in table]

    def finish_times(self) -> dict[str, float]:
        """When each job that has ended by now ended (clock seconds), of every provider, by task id.

        The time its final (or failure) body became what its lookups show: how late a client learns of
        the end is measured from here.
        """
        now = self.clock()
        ends = {task.id: task.finished_at for task in self.tasks.values()}
        ends.update((task.id, task.finished_at) for task in self.goapi_tasks.values())
        # A proxy task waiting for its modal has no end yet (infinity), so it is never listed.
        ends.update((task.id, task.finished_at) for task in self.proxy_tasks.values())
        return {task_id: at for task_id, at in ends.items() if at <= now}

    def finishes_route(self) -> web.RouteDef:
        """``GET /_emulator/finishes`` (no auth): ``{"finished": {task_id: unix seconds}}``, as `finish_times`."""

        async def finishes(_request: web.Request) -> web.Response:
            return web.json_response({"finished": self.finish_times()})

        return web.get("/_emulator/finishes", finishes)

    def reset_records(self) -> None:
        """Forget recorded requests, callbacks and counters (tasks and images stay)."""
        self.requests.clear()
        self.callbacks.clear()
        self.counters.clear()
        self.counters.update(dict.fromkeys(COUNTERS, 0))
        self.tasks_per_prompt.clear()

    # --- callbacks ---

    def drop_callbacks(self, count: int) -> None:
        """Make the next *count* callbacks due go unsent (every attempt of each), as if lost."""
        self.callbacks_to_drop += count

    def take_drop(self) -> bool:
        """Whether the callback now due is to be dropped (counted in ``callbacks_dropped``)."""
        if self.callbacks_to_drop <= 0:
            return False
        self.callbacks_to_drop -= 1
        self.count("callbacks_dropped")
        return True

    async def deliver(self, url: str, events: Sequence[tuple[float, JSON]]) -> None:
        """POST each event's body to *url* when its time comes (stops quietly on shutdown)."""
        for when, body in events:
            try:
                await self.wait_until(when)
            except Closing:
                return
            if not self.take_drop():
                await self.post_callback(url, body)

    async def post_callback(
        self, url: str, body: JSON, *, headers: Mapping[str, str] | None = None
    ) -> CallbackRecord | None:
        """POST *body* to *url* once and record and return the outcome (None when not running).

        Failures are recorded, never raised.
        """
        if self.http is None:
            return None
        self.count("callbacks")
        try:
            async with self.http.post(url, json=body, headers=headers) as resp:
                await resp.read()
                record = CallbackRecord(url, body, resp.status)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.count("callback_errors")
            record = CallbackRecord(url, body, None, f"{type(exc).__name__}: {exc}")
        self.callbacks.append(record)
        return record


STORE_KEY = web.AppKey("mjasync.emulator.store", Store)
