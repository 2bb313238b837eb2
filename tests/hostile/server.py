"""A hostile stand-in for the providers, written from their documents and not from `mjasync.emulator`.

It speaks AceData Cloud (`/midjourney/*`: imagine, edits and videos in their synchronous, `async`
and ndjson modes, tasks `retrieve` and `retrieve_batch`, describe, translate, shorten, seed),
GoAPI v2 (`/mj/v2/*` submits, `fetch`, `multi_fetch`, webhooks with `x-webhook-secret`) and, in
`proxy.py`, the midjourney-proxy protocol (`/mj/submit/*`, `/mj/task/*`, notifyHook), and misbehaves
on a script: each request takes the next `Move` of its kind, an honest one once the script runs out.
Every answer echoes the API key and the webhook secret where it can: in `x-request-id`, in bodies,
error codes, messages, trace ids and stream lines, JSON-escaped or split across two writes.

Every task it creates is recorded with the body that created it, so tests can check that the client
reports each one and never pays twice. The facts below (paths, fields, statuses) come from
`acedata-api.md`, `acedata-midjourney-openapi.json`, `goapi-api.md`, the seed guides and (for the
proxy) `midjourney-proxy-api.md`; nothing here reads them at run time.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp
import anyio
from aiohttp import web

__all__ = [
    "API_KEY",
    "SECRETS",
    "WEBHOOK_SECRET",
    "Garbage",
    "HostileServer",
    "Script",
    "Task",
    "garbage_bytes",
    "job_key",
    "secret_forms",
    "serve",
]

#: The API key the clients send; hostile answers echo it back. The dashes let it be JSON-escaped.
API_KEY: Final = "sk-HOSTILE-3b9f0c27d1e84a6f"
#: The webhook receiver's secret (GoAPI sends it back in `x-webhook-secret`).
WEBHOOK_SECRET: Final = "whsec-HOSTILE-5e81d07a2c94"
SECRETS: Final = (API_KEY, WEBHOOK_SECRET)

#: Seconds between two bytes of a drip, and between two lines of an endless stream.
DRIP_INTERVAL: Final = 0.1
ENDLESS_INTERVAL: Final = 0.02
#: A server-side cap on anything that would otherwise run forever (the client must end it first).
SERVER_PATIENCE: Final = 60.0

ACEDATA_JOB_PATHS: Final = {
    "/midjourney/imagine": "imagine",
    "/midjourney/edits": "edits",
    "/midjourney/videos": "videos",
}
ACEDATA_SHORT_PATHS: Final = (
    "/midjourney/describe",
    "/midjourney/translate",
    "/midjourney/shorten",
    "/midjourney/seed",
)
GOAPI_SUBMIT_PATHS: Final = {
    f"/mj/v2/{name}": name
    for name in (
        "imagine",
        "upscale",
        "variation",
        "reroll",
        "blend",
        "inpaint",
        "outpaint",
        "pan",
        "describe",
        "seed",
    )
}
GRID_ACTIONS: Final = [
    "upscale1",
    "upscale2",
    "upscale3",
    "upscale4",
    "reroll",
    "variation1",
    "variation2",
    "variation3",
    "variation4",
]
UPSCALED_ACTIONS: Final = [
    "upscale_2x",
    "upscale_4x",
    "variation_subtle",
    "variation_strong",
    "zoom_out_2x",
    "zoom_out_1_5x",
    "pan_left",
    "pan_right",
    "pan_up",
    "pan_down",
]
GOAPI_UPSCALED_ACTIONS: Final = [
    "high_variation",
    "low_variation",
    "outpaint_1.5x",
    "outpaint_2x",
    "pan_left",
    "pan_right",
    "pan_up",
    "pan_down",
]

SubmitMove = Literal[
    "ok",  # create the task and answer truthfully
    "ghost",  # answer with a task id the server never records
    "refuse-400",
    "refuse-401",
    "refuse-403",
    "throttle-429",  # turned away, with an odd Retry-After
    "fail-5xx-before",  # no task, a 5xx
    "fail-5xx-after",  # task created, then a 5xx
    "reset-after",  # task created, the connection reset mid-answer
    "garbage-after",  # task created, a 200 of hostile bytes
    "drip-after",  # task created, the answer one byte per DRIP_INTERVAL
    "hang-after",  # task created, no answer at all
]
LookupMove = Literal[
    "honest",  # tasks advance and finish
    "running",  # every task is still running
    "unknown",  # no task is known
    "failed",  # every named task has failed
    "garbage",
    "throttle-429",
    "fail-5xx",
    "reset",
    "drip",
    "hang",
]
WaitMove = Literal[
    "honest",  # stream every line to the final one (sync: answer the final result)
    "endless",  # progress lines at most 99 %, forever
    "garbage-line",  # a few lines, then a line of hostile bytes
    "cut",  # a few lines, then a reset
    "drip",  # the lines one byte per DRIP_INTERVAL
    "failed",  # a final line (or sync answer) saying the job failed
    "hang",
]
CallbackMove = Literal[
    "garbage",  # hostile bytes
    "wrong-secret",  # the right task, a wrong `x-webhook-secret` carrying the key
    "other-task",  # a failure of a task nobody waits for
    "huge",  # a body past any sane limit, full of the key
    "failed",  # this task has failed, said with the secrets in it
]
ShortMove = Literal["honest", "garbage", "throttle-429", "fail-5xx", "reset", "drip", "refuse-400"]
#: midjourney-proxy only: how an "ok" submit is answered (its reply `code`, and whether a task is made).
CodeMove = Literal[
    "1",  # accepted
    "22",  # accepted, queued
    "21-modal",  # a task made in MODAL status (it waits for /submit/modal)
    "21-existing",  # "already exists": an id this server never issued, no task made
    "23",  # queue full: refused, no task
    "9-queue",  # trueai's queue full: refused, no task
    "24",  # banned prompt: refused, no task
    "4",  # validation error: refused, no task
    "3-404",  # parent missing, with HTTP 404: refused, no task
    "wrong-types",  # task made; the envelope's fields of the wrong JSON types
    "result-number",  # task made; `result` a JSON number
    "result-list",  # task made; `result` a list holding the id
]
#: midjourney-proxy only: how a lookup that shows tasks shows them (one move per lookup request).
ViewMove = Literal[
    "honest",
    "backwards",  # an earlier status than the task's (NOT_START; SUBMITTED while it is IN_PROGRESS)
    "failure-100",  # FAILURE with progress "100%", an imageUrl and buttons: the task has failed
    "modal",  # MODAL, whatever the task's real state
    "omit",  # list-by-condition leaves the (first, third, ...) ids out; fetch answers an empty 200
    "foreign",  # tasks this server never issued come along
    "twin",  # each task twice, the second time FAILURE; the listing shows a stranger with its marker
    "wrong-types",
    "deep",  # `properties` nested 5,000 deep
    "no-image",  # SUCCESS without an imageUrl or buttons
    "empty-status",  # status "" (new-api before its first poll)
    "odd-progress",  # progress text that is no percentage
    "cancel",  # CANCEL: the task has ended
]
#: midjourney-proxy only: notifyHook callbacks POSTed before the honest ones (unsigned, as the proxy's).
HookMove = Literal[
    "garbage",
    "other-task",  # a FAILURE of an id this server never issued
    "huge",
    "failed",  # this task has failed
    "failure-100",  # this task has failed, progress "100%"
    "duplicate",  # the same IN_PROGRESS callback twice
    "stale",  # IN_PROGRESS 90%, then SUBMITTED 0%
]
EchoForm = Literal["plain", "escaped", "split"]
GarbageKind = Literal["bytes", "deep", "wrong-types", "huge-number", "nan", "invalid-utf8", "truncated"]


@dataclass(frozen=True)
class Garbage:
    """A hostile body: which kind, and the bytes hypothesis chose for it."""

    kind: GarbageKind
    data: bytes = b""


def garbage_bytes(garbage: Garbage, valid: bytes) -> bytes:
    """The hostile bytes for `garbage`, around a `valid` body where it needs one; each but a cut one
    carries the key whole."""
    key = API_KEY.encode()
    if garbage.kind == "bytes":
        return garbage.data + key
    if garbage.kind == "deep":
        return b'{"a":' * 5000 + b'"' + key + b'"' + b"}" * 5000
    if garbage.kind == "wrong-types":
        return (
            b'{"task_id": ["' + key + b'"], "success": "yes", "progress": {"k": 1}, "actions": "upscale1",'
            b' "items": "' + key + b'", "count": [], "status": 7, "task_result": [], "data": "x"}'
        )
    if garbage.kind == "huge-number":
        return b'{"task_id": 1' + b"0" * 5000 + b', "progress": 1e999999, "trace_id": "' + key + b'"}'
    if garbage.kind == "nan":
        return b'{"task_id": NaN, "progress": Infinity, "image_width": -Infinity, "trace_id": "' + key + b'"}'
    if garbage.kind == "invalid-utf8":
        return b'{"task_id": "\xff\xfe\xc3\x28", "trace_id": "' + key + b'\xed\xa0\x80"}'
    # A body cut short ends there, as a dropped upstream would leave it (a secret may be cut at the edge).
    cut = len(valid) * (garbage.data[0] if garbage.data else 128) // 256
    return valid[: max(cut, 1)]


@dataclass
class Script:
    """Per kind of request, the moves to make, in order; then honest ones."""

    submits: list[SubmitMove] = field(default_factory=list)
    lookups: list[LookupMove] = field(default_factory=list)
    waits: list[WaitMove] = field(default_factory=list)
    shorts: list[ShortMove] = field(default_factory=list)
    #: Callbacks (AceData) or webhooks (GoAPI) POSTed before the honest final one.
    callbacks: list[CallbackMove] = field(default_factory=list)
    garbage: Garbage = Garbage("bytes", b"\x00")
    #: Retry-After values for 429s and 503s, used in turn.
    retry_after: tuple[str, ...] = ("1",)
    #: How the secrets are echoed.
    echo: EchoForm = "plain"
    #: Good lines before a stream misbehaves.
    good_lines: int = 1
    #: Honest lookups a task stays running for before it finishes.
    steps: int = 1
    #: midjourney-proxy only: reply codes for "ok" submits, lookup views, notifyHook moves.
    codes: list[CodeMove] = field(default_factory=list)
    views: list[ViewMove] = field(default_factory=list)
    hooks: list[HookMove] = field(default_factory=list)
    #: Error bodies (and the proxy's reply envelopes) carry an emoji outside the BMP, which `json.dumps`
    #: writes as a surrogate-pair escape ("\ud83d\udd04"), as ASCII-only JSON encoders do.
    astral: bool = False

    def take(self, queue: list[Any], default: Any) -> Any:
        return queue.pop(0) if queue else default


@dataclass
class Task:
    """A task this server created (a ghost id is never one)."""

    task_id: str
    provider: str
    path: str
    body: dict[str, Any]
    key: str
    task_type: str
    created_at: float
    trace_id: str
    lookups: int = 0
    state: Literal["running", "finished", "failed"] = "running"
    image_id: str = ""
    #: midjourney-proxy: waiting for /submit/modal; the proxy's `action`; the `state` the submit carried.
    modal: bool = False
    action: str = ""
    marker: Any = None


def job_key(path: str, body: dict[str, Any]) -> str:
    """What identifies a job by the body of its submit: its prompt, else what it acts on."""
    for name in ("prompt", "image_url", "content"):
        value = body.get(name)
        if isinstance(value, str) and value:
            return f"{name}:{value}"
    parts = [path] + [
        f"{name}={body[name]}"
        for name in ("action", "image_id", "origin_task_id", "index", "video_id", "task_id")
        if name in body
    ]
    return " ".join(parts)


def secret_forms(secret: str) -> list[str]:
    """The ways a secret can show up in text: as it is, JSON-escaped and percent-escaped."""
    return [secret, secret.replace("-", "\\u002d"), secret.replace("-", "%2D"), secret.replace("-", "%2d")]


def _escape(text: str, form: EchoForm) -> str:
    return text.replace("-", "\\u002d") if form == "escaped" else text


class HostileServer:
    """The server; use `serve()` to run it on 127.0.0.1."""

    def __init__(self, provider: Literal["acedata", "goapi", "midjourney-proxy"], script: Script) -> None:
        self.provider = provider
        self.script = script
        self.tasks: dict[str, Task] = {}
        #: Every task created, in order.
        self.created: list[Task] = []
        self.requests = 0
        self.paths: list[str] = []
        #: Exceptions of the server's own making (never hostility): a test must see none.
        self.faults: list[Exception] = []
        self.url = ""
        self._waiters: list[tuple[int, anyio.Event]] = []
        self._ids = 0
        self._retry_after_turn = 0
        self._deliveries: anyio.abc.TaskGroup | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- what tests ask ----------------------------------------------------------------------------

    def tasks_for(self, key: str) -> list[Task]:
        return [task for task in self.created if task.key == key]

    async def wait_requests(self, count: int) -> None:
        """Return once this server has received `count` requests."""
        if self.requests >= count:
            return
        event = anyio.Event()
        self._waiters.append((count, event))
        await event.wait()

    def reset(self, script: Script) -> None:
        """Start a new scenario on the same socket (a stateful test's next step)."""
        self.script = script

    # -- helpers -----------------------------------------------------------------------------------

    def _new_id(self) -> str:
        self._ids += 1
        return str(uuid.UUID(int=(self._ids << 64) | 0xC0FFEE))

    def _image_id(self) -> str:
        self._ids += 1
        return str(1234197197067915365 + self._ids)

    def _retry_after(self) -> str:
        values = self.script.retry_after or ("1",)
        value = values[self._retry_after_turn % len(values)]
        self._retry_after_turn += 1
        return value

    def _headers(self, request: web.Request) -> dict[str, str]:
        echoed = (
            request.headers.get("Authorization")
            or request.headers.get("X-API-KEY")
            or request.headers.get("mj-api-secret")
            or API_KEY
        )
        return {
            "x-request-id": API_KEY,
            "mj-api-secret": echoed,
            "x-trace-id": f"{WEBHOOK_SECRET}/{echoed}",
            "x-echo-credential": echoed,
        }

    def _create(self, path: str, body: dict[str, Any], task_type: str, *, ghost: bool = False) -> Task:
        task = Task(
            task_id=self._new_id(),
            provider=self.provider,
            path=path,
            body=body,
            key=job_key(path, body),
            task_type=task_type,
            created_at=time.time(),
            trace_id=self._new_id(),
        )
        if not ghost:
            self.tasks[task.task_id] = task
            self.created.append(task)
        return task

    # -- the bodies the documents describe ---------------------------------------------------------

    def _echo_fields(self) -> dict[str, Any]:
        return {"echo": f"Bearer {API_KEY}", "x_webhook_secret": WEBHOOK_SECRET}

    def _acedata_result(self, task: Task, progress: float) -> dict[str, Any]:
        final = progress >= 100
        image_id = self._image_id()
        if final:
            task.image_id = image_id
        url = f"{self.url}/img/{image_id}.png"
        result: dict[str, Any] = {
            "success": True,
            "task_id": task.task_id,
            "progress": progress,
            "image_url": url,
            "image_width": 1024,
            "image_height": 1024,
            **self._echo_fields(),
        }
        if task.task_type == "imagine":
            action = str(task.body.get("action") or "generate")
            upscaled = action.startswith("upscale") and action[-1:].isdigit()
            result.update(
                image_id=image_id,
                raw_image_url=url,
                raw_image_width=2048,
                raw_image_height=2048,
                actions=(UPSCALED_ACTIONS if upscaled else GRID_ACTIONS) if final else [],
            )
        elif task.task_type == "edits":
            result.update(image_id=image_id, sub_image_urls=[f"{url}?part={i}" for i in range(4)])
        else:  # videos
            result.update(
                video_id=image_id,
                video_urls=[f"{self.url}/vid/{image_id}_{i}.mp4" for i in range(4)] if final else [],
            )
        return result

    def _acedata_failure(self, task: Task) -> dict[str, Any]:
        return {
            "success": False,
            "task_id": task.task_id,
            "trace_id": _escape(API_KEY, self.script.echo),
            "error": {"code": API_KEY, "message": f"job failed for Bearer {API_KEY} / {WEBHOOK_SECRET}"},
        }

    def _acedata_record(self, task: Task, *, running: bool = False) -> dict[str, Any]:
        record: dict[str, Any] = {
            "_id": task.task_id.replace("-", "")[:24],
            "id": task.task_id,
            "type": task.task_type,
            "request": task.body,
            "created_at": task.created_at,
            "trace_id": task.trace_id,
            "email": f"{API_KEY}@example.invalid",
            **self._echo_fields(),
        }
        if task.state == "failed":
            record["response"] = self._acedata_failure(task)
            record["finished_at"] = time.time()
        elif task.state == "finished" and not running:
            record["response"] = self._acedata_result(task, 100)
            record["finished_at"] = time.time()
        elif task.lookups > 1 or running:
            record["response"] = self._acedata_result(task, 50)
        return record

    def _goapi_task(self, task: Task, *, running: bool = False) -> dict[str, Any]:
        status = "processing" if running or task.state == "running" else task.state
        result: dict[str, Any] = {
            "image_url": "",
            "image_urls": [],
            "task_progress": 50 if status == "processing" else 100,
            "quota_used": 3,
            "message": f"echo {API_KEY}",
            "error_messages": [],
            "actions": [],
            **self._echo_fields(),
        }
        if status == "finished":
            kind = task.task_type
            result["image_url"] = f"{self.url}/img/{task.task_id}.png"
            result["image_urls"] = [f"{self.url}/img/{task.task_id}_{i}.png" for i in range(4)]
            if kind == "upscale":
                result["actions"] = GOAPI_UPSCALED_ACTIONS
            elif kind not in ("describe", "seed"):
                result["actions"] = GRID_ACTIONS
            if kind == "describe":
                result["description"] = "\n\n".join(f"1️⃣ a described prompt {i}" for i in range(4))
            if kind == "seed":
                result["seed"] = "1515630083539206144"
        elif status == "failed":
            result["error_messages"] = [f"banned prompt, key {API_KEY}", WEBHOOK_SECRET]
            result["message"] = _escape(API_KEY, self.script.echo)
        return {
            "task_id": task.task_id,
            "status": status,
            "process_time": 3,
            "meta": {
                "created_at": int(task.created_at),
                "process_mode": task.body.get("process_mode", "fast"),
                "task_request": task.body,
                "task_type": task.task_type,
            },
            "task_result": result,
        }

    def _error_body(self, status: int) -> dict[str, Any]:
        message = f"error {status} for Bearer {API_KEY} (secret {WEBHOOK_SECRET})"
        astral = {"hint": "retry 🔄"} if self.script.astral else {}
        if self.provider == "goapi":
            return {"code": status, "status": "failed", "message": message, "error": API_KEY, **astral}
        return {
            "success": False,
            "error": {"code": API_KEY, "message": message},
            "trace_id": _escape(API_KEY, self.script.echo),
            **astral,
        }

    # -- writing answers ---------------------------------------------------------------------------

    def _encode(self, payload: Any) -> bytes:
        text = json.dumps(payload)
        if self.script.echo == "escaped":
            for secret in SECRETS:
                text = text.replace(secret, secret.replace("-", "\\u002d"))
        return text.encode()

    async def _write_split(self, response: web.StreamResponse, data: bytes) -> None:
        """Write `data`, in two writes cut inside the first secret it holds when the echo says so."""
        if self.script.echo == "split":
            cut = data.find(API_KEY.encode())
            if cut >= 0:
                middle = cut + len(API_KEY) // 2
                await response.write(data[:middle])
                await anyio.sleep(0.01)
                data = data[middle:]
        await response.write(data)

    async def _send(
        self,
        request: web.Request,
        status: int,
        data: bytes,
        *,
        extra_headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=status, headers={**self._headers(request), **(extra_headers or {})}
        )
        response.content_type = content_type
        response.content_length = len(data)
        await response.prepare(request)
        await self._write_split(response, data)
        await response.write_eof()
        return response

    async def _json(
        self, request: web.Request, status: int, payload: Any, extra_headers: dict[str, str] | None = None
    ) -> web.StreamResponse:
        return await self._send(request, status, self._encode(payload), extra_headers=extra_headers)

    async def _error(self, request: web.Request, status: int) -> web.StreamResponse:
        headers = {"Retry-After": self._retry_after()} if status in (429, 503) else None
        return await self._json(request, status, self._error_body(status), headers)

    async def _reset(self, request: web.Request, partial: bytes) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=self._headers(request))
        response.content_type = "application/json"
        response.content_length = len(partial) + 4096
        await response.prepare(request)
        if partial:
            await response.write(partial)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def _drip(
        self, request: web.Request, data: bytes, content_type: str = "application/json"
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=self._headers(request))
        response.content_type = content_type
        response.content_length = len(data)
        await response.prepare(request)
        with anyio.move_on_after(SERVER_PATIENCE):
            for index in range(len(data)):
                await response.write(data[index : index + 1])
                await anyio.sleep(DRIP_INTERVAL)
        return response

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        await anyio.sleep(SERVER_PATIENCE)
        return await self._error(request, 504)

    # -- routing -----------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.paths.append(request.path)
        for count, event in list(self._waiters):
            if self.requests >= count:
                event.set()
                self._waiters.remove((count, event))
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        path = request.path
        try:
            if self.provider == "acedata" and path in ACEDATA_JOB_PATHS:
                return await self._acedata_job(request, path, body)
            if self.provider == "acedata" and path == "/midjourney/tasks":
                return await self._acedata_tasks(request, body)
            if self.provider == "acedata" and path in ACEDATA_SHORT_PATHS:
                return await self._acedata_short(request, path, body)
            if self.provider == "goapi" and path in GOAPI_SUBMIT_PATHS:
                return await self._goapi_submit(request, path, body)
            if self.provider == "goapi" and path in ("/mj/v2/fetch", "/mj/v2/multi_fetch"):
                return await self._goapi_fetch(request, path, body)
            if self.provider == "midjourney-proxy":
                answer = await self._proxy_route(request, path, body)
                if answer is not None:
                    return answer
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            return web.Response(status=499)
        except (
            Exception
        ) as fault:  # the server's own bug: tests check `faults`, so it cannot pass for hostility
            self.faults.append(fault)
            raise
        return await self._json(
            request, 404, {"error": {"code": "no_api", "message": f"no {path} for {API_KEY}"}}
        )

    async def _proxy_route(
        self, request: web.Request, path: str, body: dict[str, Any]
    ) -> web.StreamResponse | None:
        """The midjourney-proxy routes (`proxy.ProxyHostileServer`); None: not one of them."""
        raise NotImplementedError

    async def _submit_prelude(
        self,
        request: web.Request,
        path: str,
        body: dict[str, Any],
        task_type: str,
        receipt: Callable[[Task], Any],
        *,
        move: SubmitMove | None = None,
        make: Callable[[bool], Task] | None = None,
    ) -> tuple[Task | None, web.StreamResponse | None]:
        """Play the next submit move (or `move`); return the task (if any) and the answer (if the move
        made one). `make(ghost)` makes the task, by default a new one for `body`."""
        if move is None:
            move = self.script.take(self.script.submits, "ok")
        if move in ("refuse-400", "refuse-401", "refuse-403"):
            return None, await self._error(request, int(move[-3:]))
        if move == "throttle-429":
            return None, await self._error(request, 429)
        if move == "fail-5xx-before":
            return None, await self._error(request, 503)
        if make is None:
            task = self._create(path, body, task_type, ghost=move == "ghost")
        else:
            task = make(move == "ghost")
        if task.task_type in ("describe", "seed") and self.provider == "acedata":
            task.state = "finished"
        if move == "fail-5xx-after":
            return task, await self._json(request, 500, {**self._error_body(500), "trace_id": task.trace_id})
        if move == "reset-after":
            return task, await self._reset(request, self._encode(receipt(task))[:7])
        if move == "garbage-after":
            valid = self._encode(receipt(task))
            return task, await self._send(request, 200, garbage_bytes(self.script.garbage, valid))
        if move == "drip-after":
            return task, await self._drip(request, self._encode(receipt(task)))
        if move == "hang-after":
            return task, await self._hang(request)
        return task, None

    async def _acedata_job(self, request: web.Request, path: str, body: dict[str, Any]) -> web.StreamResponse:
        task_type = ACEDATA_JOB_PATHS[path]
        asynchronous = bool(body.get("async")) or bool(body.get("callback_url"))
        streamed = "application/x-ndjson" in request.headers.get("Accept", "")
        task, answer = await self._submit_prelude(
            request, path, body, task_type, lambda t: {"task_id": t.task_id, **self._echo_fields()}
        )
        if answer is not None or task is None:
            assert answer is not None
            return answer
        if body.get("callback_url"):
            self._deliver_later(str(body["callback_url"]), task)
        if asynchronous and not streamed:
            return await self._json(request, 200, {"task_id": task.task_id, **self._echo_fields()})
        move: WaitMove = self.script.take(self.script.waits, "honest")
        if streamed:
            return await self._stream(request, task, move)
        return await self._long_wait(request, task, move)

    async def _long_wait(self, request: web.Request, task: Task, move: WaitMove) -> web.StreamResponse:
        if move in ("hang", "endless"):
            return await self._hang(request)
        if move == "failed":
            task.state = "failed"
            return await self._json(request, 200, self._acedata_failure(task))
        task.state = "finished"
        final = self._encode(self._acedata_result(task, 100))
        if move == "garbage-line":
            return await self._send(request, 200, garbage_bytes(self.script.garbage, final))
        if move == "cut":
            return await self._reset(request, final[: len(final) // 2])
        if move == "drip":
            return await self._drip(request, final)
        return await self._send(request, 200, final)

    async def _stream(self, request: web.Request, task: Task, move: WaitMove) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=self._headers(request))
        response.content_type = "application/x-ndjson"
        await response.prepare(request)
        with anyio.move_on_after(SERVER_PATIENCE):
            if move == "endless":
                for line in itertools.count():  # until the client gives up (or SERVER_PATIENCE)
                    progress = 1 + line % 99
                    await self._write_split(
                        response, self._encode(self._acedata_result(task, progress)) + b"\n"
                    )
                    await anyio.sleep(ENDLESS_INTERVAL)
            for line in range(self.script.good_lines):
                await self._write_split(
                    response, self._encode(self._acedata_result(task, 10 + 20 * line % 90)) + b"\n"
                )
            if move == "garbage-line":
                await response.write(garbage_bytes(self.script.garbage, b'{"progress": 40}') + b"\n")
            elif move == "cut":
                assert request.transport is not None
                request.transport.abort()
                return response
            elif move == "hang":
                await anyio.sleep(SERVER_PATIENCE)
            elif move == "failed":
                task.state = "failed"
                await self._write_split(response, self._encode(self._acedata_failure(task)) + b"\n")
            else:
                task.state = "finished"
                final = self._encode(self._acedata_result(task, 100)) + b"\n"
                if move == "drip":
                    for index in range(len(final)):
                        await response.write(final[index : index + 1])
                        await anyio.sleep(DRIP_INTERVAL)
                else:
                    await self._write_split(response, final)
        await response.write_eof()
        return response

    async def _lookup_prelude(self, request: web.Request) -> tuple[LookupMove, web.StreamResponse | None]:
        move: LookupMove = self.script.take(self.script.lookups, "honest")
        if move == "throttle-429":
            return move, await self._error(request, 429)
        if move == "fail-5xx":
            return move, await self._error(request, 503)
        if move == "garbage":
            return move, await self._send(request, 200, garbage_bytes(self.script.garbage, b'{"items": []}'))
        if move == "reset":
            return move, await self._reset(request, b'{"items": [{"id": "')
        if move == "drip":
            return move, await self._drip(request, self._encode({"items": [], "count": 0, "echo": API_KEY}))
        if move == "hang":
            return move, await self._hang(request)
        return move, None

    def _look(self, task_id: Any, move: LookupMove) -> Task | None:
        """The task as this lookup move shows it (None: unknown), advancing it on an honest look."""
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None or move == "unknown":
            return None
        task.lookups += 1
        if move == "failed":
            task.state = "failed"
        elif move == "honest" and task.state == "running" and task.lookups > self.script.steps:
            task.state = "finished"
        return task

    async def _acedata_tasks(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        move, answer = await self._lookup_prelude(request)
        if answer is not None:
            return answer
        running = move == "running"
        if body.get("action") == "retrieve_batch":
            ids = body.get("ids") or []
            traces = body.get("trace_ids") or []
            if ids or traces:
                by_trace = {t.trace_id: t.task_id for t in self.tasks.values()}
                wanted = list(ids) + [by_trace.get(trace) for trace in traces]
                shown = [task for task in (self._look(i, move) for i in wanted) if task is not None]
            else:
                since = body.get("created_at_min")
                shown = [
                    task
                    for task in reversed(self.created)
                    if move != "unknown"
                    and (not body.get("type") or task.task_type == body.get("type"))
                    and (not isinstance(since, (int, float)) or task.created_at >= since)
                ]
                offset, limit = int(body.get("offset") or 0), int(body.get("limit") or 12)
                total = len(shown)
                shown = shown[offset : offset + limit]
                items = [self._acedata_record(task, running=running) for task in shown]
                return await self._json(request, 200, {"items": items, "count": total, **self._echo_fields()})
            items = [self._acedata_record(task, running=running) for task in shown]
            return await self._json(
                request, 200, {"items": items, "count": len(items), **self._echo_fields()}
            )
        task_id = body.get("id")
        if task_id is None and body.get("trace_id") is not None:
            task_id = next((t.task_id for t in self.tasks.values() if t.trace_id == body["trace_id"]), None)
        task = self._look(task_id, move)
        if task is None:
            return await self._json(
                request, 404, {"error": {"code": "not_found", "message": f"no task {task_id} for {API_KEY}"}}
            )
        return await self._json(request, 200, self._acedata_record(task, running=running))

    async def _acedata_short(
        self, request: web.Request, path: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        move: ShortMove = self.script.take(self.script.shorts, "honest")
        name = path.rsplit("/", 1)[1]
        answers: dict[str, dict[str, Any]] = {
            "describe": {"descriptions": [f"a described prompt {i} --ar 1:1" for i in range(4)]},
            "translate": {"content": "Exquisite, flawless, pure white angel."},
            "shorten": {"prompts": ["a cat", "a cat on a table"]},
            "seed": {"seed": "1515630083539206144"},
        }
        answer = {**answers[name], **self._echo_fields()}
        if move == "honest":
            return await self._json(request, 200, answer)
        if move == "garbage":
            return await self._send(request, 200, garbage_bytes(self.script.garbage, self._encode(answer)))
        if move == "throttle-429":
            return await self._error(request, 429)
        if move == "fail-5xx":
            return await self._error(request, 503)
        if move == "refuse-400":
            return await self._error(request, 400)
        if move == "reset":
            return await self._reset(request, self._encode(answer)[:9])
        return await self._drip(request, self._encode(answer))

    async def _goapi_submit(
        self, request: web.Request, path: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        task_type = GOAPI_SUBMIT_PATHS[path]

        def receipt(task: Task) -> dict[str, Any]:
            return {"task_id": task.task_id, "status": "success", "message": "", **self._echo_fields()}

        task, answer = await self._submit_prelude(request, path, body, task_type, receipt)
        if answer is not None:
            return answer
        assert task is not None
        endpoint = body.get("webhook_endpoint")
        if isinstance(endpoint, str) and endpoint:
            self._deliver_later(endpoint, task)
        return await self._json(request, 200, receipt(task))

    async def _goapi_fetch(self, request: web.Request, path: str, body: dict[str, Any]) -> web.StreamResponse:
        move, answer = await self._lookup_prelude(request)
        if answer is not None:
            return answer
        running = move == "running"
        if path.endswith("multi_fetch"):
            ids = body.get("task_ids") or []
            data: dict[str, Any] = {}
            for task_id in ids if isinstance(ids, list) else []:
                task = self._look(task_id, move)
                data[str(task_id)] = None if task is None else self._goapi_task(task, running=running)
            return await self._json(request, 200, {"data": data, **self._echo_fields()})
        task = self._look(body.get("task_id"), move)
        if task is None:
            return await self._json(request, 404, self._error_body(404))
        return await self._json(request, 200, self._goapi_task(task, running=running))

    # -- callbacks ---------------------------------------------------------------------------------

    def _deliver_later(self, url: str, task: Task) -> None:
        assert self._deliveries is not None
        self._deliveries.start_soon(self._deliver, url, task)

    async def _deliver(self, url: str, task: Task) -> None:
        """POST the script's hostile callbacks, then the honest final one (GoAPI: with the secret)."""
        secret_header = {"x-webhook-secret": WEBHOOK_SECRET} if self.provider == "goapi" else {}
        for move in self.script.callbacks:
            if move == "garbage":
                await self._post(url, garbage_bytes(self.script.garbage, b'{"task_id": "'), secret_header)
            elif move == "wrong-secret":
                body = self._goapi_task(task) if self.provider == "goapi" else self._acedata_failure(task)
                await self._post(url, self._encode(body), {"x-webhook-secret": f"{API_KEY}-{WEBHOOK_SECRET}"})
            elif move == "other-task":
                other = Task(self._new_id(), self.provider, task.path, {}, "other", "imagine", 0.0, API_KEY)
                other.state = "failed"
                body = self._goapi_task(other) if self.provider == "goapi" else self._acedata_failure(other)
                await self._post(url, self._encode(body), secret_header)
            elif move == "huge":
                await self._post(url, (API_KEY.encode() + b" ") * 20_000, secret_header)
            elif move == "failed":
                task.state = "failed"
                body = self._goapi_task(task) if self.provider == "goapi" else self._acedata_failure(task)
                await self._post(url, self._encode(body), secret_header)
        task.state = "finished" if task.state == "running" else task.state
        final = self._goapi_task(task) if self.provider == "goapi" else self._acedata_result(task, 100)
        await self._post(url, self._encode(final), secret_header)

    async def _post(self, url: str, data: bytes, headers: dict[str, str]) -> None:
        assert self._session is not None
        try:
            async with self._session.post(
                url, data=data, headers={"Content-Type": "application/json", **headers}
            ) as response:
                await response.read()
        except (aiohttp.ClientError, OSError):
            pass  # a provider shrugs off a receiver that is gone


@asynccontextmanager
async def serve(
    provider: Literal["acedata", "goapi", "midjourney-proxy"], script: Script | None = None
) -> AsyncIterator[HostileServer]:
    """Run a `HostileServer` on 127.0.0.1 for the duration of the block (the proxy's: `proxy.py`)."""
    if provider == "midjourney-proxy":
        from .proxy import ProxyHostileServer  # here: proxy.py builds on this module

        server: HostileServer = ProxyHostileServer(provider, script or Script())
    else:
        server = HostileServer(provider, script or Script())
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=0.1, handler_cancellation=True
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        server.url = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as session, anyio.create_task_group() as deliveries:
            server._session = session
            server._deliveries = deliveries
            try:
                yield server
            finally:
                deliveries.cancel_scope.cancel()
    finally:
        await runner.cleanup()
