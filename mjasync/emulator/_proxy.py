"""Emulator layer: the midjourney-proxy protocol (``/mj/submit/*``, ``/mj/task/*``), after midjourney-proxy-api.md.

It speaks the plus/trueai surface (buttons, ``/submit/action``, the MODAL two-step, ``/submit/shorten``)
together with NZ's ``/submit/change`` and ``/submit/simple-change``, on ``/mj`` and on trueai's mode
prefixes ``/mj-fast``, ``/mj-relax`` and ``/mj-turbo`` (served alike; the prefix only shows in the
request log). Tasks move ``NOT_START -> SUBMITTED -> IN_PROGRESS -> SUCCESS | FAILURE`` on the
emulator's clock (`_proxy_tasks`).

Choices where the variants differ (§12) or the reference is silent:

- Auth: ``mj-api-secret: <token>``, ``Authorization: Bearer <token>`` (new-api style) or
  ``Authorization: <token>`` (trueai's verbatim token) must name an accepted token; otherwise HTTP 401
  with an empty body (NZ). With no configured tokens every request passes (NZ with a blank secret).
- Replies: every submit answers HTTP 200 with ``{code, description, result, properties}`` in NZ's words
  (§10.1): 1 ``提交成功``; 22 queued; 23 queue full (``result`` null, no task); 24 banned word
  (synchronous, as NZ: no task); 21 ``Waiting for window confirm`` for a MODAL task (trueai); 4 a
  business validation error; 3 an unknown parent (HTTP 404 from ``action``/``modal`` as trueai, HTTP
  200 from ``change`` as NZ). A body that is not JSON, or a field of the wrong JSON type, is HTTP 400
  with code 4 in the same envelope; other HTTP errors (faults, unknown routes) carry code 9 (3 for 404).
- Queueing: ``Emulator(concurrency_limit=N)`` is N running tasks per key (SUBMITTED or IN_PROGRESS); a
  task that finds them all busy waits in NOT_START and its submit answers 22 with ``numberOfQueues`` =
  the tasks waiting ahead of it; with ``proxy_queue_size`` tasks already waiting the submit answers 23
  and nothing is created (counted as a ``concurrency`` fault, like the other providers' 429). Without a
  limit nothing queues. MODAL tasks hold no slot until their modal is submitted.
- Failures: a prompt with a single-dash argument (``-c x``) or a zero ``--ar`` ends FAILURE with NZ's
  ``[Invalid parameter] ...`` text, progress ``""``.
- Buttons: a grid (imagine, variation, reroll, blend, zoom, pan, vary) has U1-U4, re-roll, V1-V4; an
  upscale has two upscale buttons chosen by the prompt's ``--v`` (v5: 2x/4x; v6, v6.1, v7 (default):
  subtle/creative), vary subtle/strong, Vary (Region), zoom out 2x/1.5x, Custom Zoom and four pans; an
  image enlarged 2x/4x has the same minus the upscales. ``/submit/action`` needs a customId the parent
  shows (else code 4 ``未知的 Action 类型``) and a SUCCESS parent. Vary (Region), Custom Zoom and the
  describe/shorten number buttons always go through MODAL; V1-V4, re-roll, vary and pan do when the
  submit says ``enableRemix: true`` (trueai).
- ``/submit/modal`` continues a MODAL task whose modal was not submitted yet (else code 4
  ``关联任务状态错误``): Vary (Region) needs ``maskBase64`` (a mask image, white = repaint), Custom
  Zoom a prompt with ``--zoom`` in [1, 2]; an empty prompt means the parent's. It answers 1 or 22 with
  the same task id.
- ``/submit/change``: ``UPSCALE``/``VARIATION`` with ``index`` 1-4, or ``REROLL``, on a SUCCESS
  IMAGINE, VARIATION, REROLL or BLEND task (NZ's rules); a bad index is code 4 (NZ would fail with 500).
- Reads: ``GET /mj/task/{id}/fetch`` (unknown id: HTTP 200 with an empty body, as NZ's Spring does),
  ``POST /mj/task/list-by-condition`` (and trueai's alias ``list-by-ids``) ``{"ids": [...]}`` (unknown
  ids omitted, newest first, not the request's order), ``GET /mj/task/list`` (every task, newest first,
  as NZ: how a client finds a task by its ``state`` after a lost submit reply; with
  ``Emulator(proxy_list_limit=N)`` only the newest N of all keys, as trueai's 100) and ``GET
  /mj/task/queue`` (queued and running tasks, oldest first).
- notifyHook: the Task object is POSTed at SUBMITTED, at each progress step and at the end, in order,
  never retried (an error answer is only recorded); `Emulator.drop_callbacks` loses some.
- Counters: every submit that creates a task counts in ``submits`` and ``tasks`` (``tasks_per_prompt``
  under the submitted ``prompt``, "" without one); a modal continues its task and counts in
  ``modal_submits`` only; 23 refusals in ``queue_rejections``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from . import _images as images
from ._acedata import shorten_prompt
from ._app import HTTP_URL, Handler, ProviderSpec, json_body
from ._faults import FaultInjector, FaultRecord, task_created
from ._goapi_tasks import describe_prompts
from ._proxy_tasks import (
    ACTIVE_STATUSES,
    INSTANCE_ID,
    NOTIFIED_STATUSES,
    Op,
    Outcome,
    ProxyTask,
    Step,
    launch,
    new_task_id,
    snowflake,
    version_of,
)
from ._store import STORE_KEY, APIError, Store

__all__ = ["MODE_PREFIXES", "PREFIXES", "ProxyAPI", "authorized", "error_response", "provider", "proxy_task"]

JSON = dict[str, Any]
#: Where the API is served: ``/mj`` and trueai's mode prefixes.
MODE_PREFIXES = ("", "/mj-fast", "/mj-relax", "/mj-turbo")
#: The provider's path prefixes (GoAPI's ``/mj/v2/`` is matched before these).
PREFIXES = tuple(f"{mode}/mj/" for mode in MODE_PREFIXES)

_MODAL_DESCRIPTION = "Waiting for window confirm"
_NOT_FOUND = "关联任务不存在或已失效"
_BAD_STATE = "关联任务状态错误"
_BANNED = "可能包含敏感词"
_CHANGEABLE = frozenset({"IMAGINE", "VARIATION", "REROLL", "BLEND"})
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,(.*)$", re.DOTALL)
_ASPECT = re.compile(r"(?<!\S)--(?:ar|aspect)\s+(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)")
_ZOOM = re.compile(r"(?<!\S)--zoom\s+(\S+)")
# A single-dash token is not a Midjourney parameter (the same rule as the AceData side's failure).
_BAD_ARGUMENT = re.compile(r"(?<!\S)(-[A-Za-z]\w*)(?:\s+([^\s-]\S*))?")
_DIMENSIONS = {"PORTRAIT": (2 / 3, " --ar 2:3"), "SQUARE": (1.0, ""), "LANDSCAPE": (3 / 2, " --ar 3:2")}
_MAX_STATE = 255


def provider(injector: FaultInjector, *, queue_size: int = 10, list_limit: int | None = None) -> ProviderSpec:
    """midjourney-proxy: ``mj-api-secret`` (or Authorization), JSON under ``/mj/``, submit-reply errors.

    *injector* supplies the per-key concurrency limit (which may change while running) and records
    queue-full refusals; *queue_size* tasks may wait per key before a submit is refused with 23;
    *list_limit*: ``GET /mj/task/list`` shows only the newest that many tasks (trueai's 100), else all.
    """
    api = ProxyAPI(injector, queue_size, list_limit=list_limit)
    return ProviderSpec(
        name="midjourney-proxy",
        prefix=PREFIXES,
        routes=api.post_routes(),
        authorized=authorized,
        error_response=error_response,
        get_routes=api.get_routes(),
    )


def authorized(request: web.Request, tokens: tuple[str, ...]) -> bool:
    """Whether the request names an accepted token (see the module docstring)."""
    return not tokens or _credential(request, tokens) is not None


def _credential(request: web.Request, tokens: tuple[str, ...]) -> str | None:
    """The accepted token the request carries, or None."""
    secret = request.headers.get("mj-api-secret", "").strip()
    auth = request.headers.get("Authorization", "").strip()
    scheme, _, rest = auth.partition(" ")
    for candidate in (secret, auth, rest.strip() if scheme.lower() == "bearer" else ""):
        if candidate and candidate in tokens:
            return candidate
    return None


def error_response(status: int, _code: str, message: str, *, trace_id: str | None = None) -> web.Response:
    """An HTTP error: 401 with an empty body (NZ), else the submit-reply envelope (code 4, 3 or 9)."""
    del trace_id  # the proxies' errors carry none
    if status == 401:
        return web.Response(status=401)
    code = {400: 4, 404: 3}.get(status, 9)
    return _reply(code, message, status=status)


def _reply(
    code: int,
    description: str,
    result: str | None = None,
    properties: JSON | None = None,
    *,
    status: int = 200,
) -> web.Response:
    """A submit reply ``{code, description, result, properties}`` (§4)."""
    body = {"code": code, "description": description, "result": result, "properties": properties or {}}
    return web.json_response(body, status=status)


@dataclass(frozen=True)
class _Slot:
    """When a task can start, how many of its key's tasks wait ahead of it, and whether it waits."""

    start: float
    waiting: int
    queued: bool


class _Refusal(Exception):
    """A submit refused with a reply code (answered HTTP 200 unless *status* says otherwise)."""

    def __init__(
        self, code: int, description: str, *, properties: JSON | None = None, status: int = 200
    ) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.properties = properties
        self.status = status


def _invalid(description: str) -> _Refusal:
    return _Refusal(4, description)


def _replying(handler: Callable[[web.Request], Awaitable[web.Response]]) -> Handler:
    """Answer a `_Refusal` raised by *handler* with its reply."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except _Refusal as refusal:
            return _reply(refusal.code, refusal.description, None, refusal.properties, status=refusal.status)

    return wrapped


# --- fields ---------------------------------------------------------------------------------------


def _bad_type(key: str, kind: str) -> APIError:
    """A field of the wrong JSON type: a binding error, HTTP 400 (code 4 in the envelope)."""
    return APIError(400, "bad_request", f"`{key}` must be {kind}.")


def _text(body: JSON, key: str) -> str | None:
    """Optional string *key*; None when absent, null or blank."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad_type(key, "a string")
    return value if value.strip() else None


def _flag(body: JSON, key: str) -> bool:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise _bad_type(key, "a boolean")
    return bool(value)


def _common(body: JSON) -> tuple[str | None, str | None, str]:
    """The fields every submit shares: ``state``, ``notifyHook`` and ``botType`` (checked)."""
    state = body.get("state")
    if state is not None and not isinstance(state, str):
        raise _bad_type("state", "a string")
    if state is not None and len(state) > _MAX_STATE:
        raise _invalid(f"state长度不能超过{_MAX_STATE}")
    hook = _text(body, "notifyHook")
    if hook is not None and not HTTP_URL.match(hook):
        raise _invalid("notifyHook格式错误")
    filters = body.get("accountFilter")
    if filters is not None and not isinstance(filters, dict):
        raise _bad_type("accountFilter", "an object")
    bot = (_text(body, "botType") or "").upper()
    return state, hook, "NIJI_JOURNEY" if bot in ("NIJI_JOURNEY", "NIJI") else "MID_JOURNEY"


def _decode(value: Any, *, message: str = "base64格式错误") -> bytes:
    """The bytes of a ``data:<mime>;base64,...`` URL (NZ accepts nothing else)."""
    match = _DATA_URL.match(value) if isinstance(value, str) else None
    if match is None:
        raise _invalid(message)
    try:
        data = base64.b64decode(re.sub(r"\s+", "", match[1]), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(message) from None
    if not data:
        raise _invalid(message)
    return data


def _images_field(body: JSON, key: str) -> list[bytes]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad_type(key, "a list of data URLs")
    return [_decode(item) for item in value]


def _prompt_failure(prompt: str) -> str | None:
    """NZ's failReason for a prompt Midjourney rejects, or None."""
    bad = [part for match in _BAD_ARGUMENT.finditer(prompt) for part in match.groups() if part]
    if bad:
        return "[Invalid parameter] Unrecognized argument(s): " + ", ".join(f"`{p}`" for p in bad)
    aspect = _ASPECT.search(prompt)
    if aspect is not None and (float(aspect[1]) <= 0 or float(aspect[2]) <= 0):
        return "[Invalid parameter] Invalid aspect ratio"
    return None


def _aspect(prompt: str, default: float = 1.0) -> float:
    match = _ASPECT.search(prompt)
    if match is None or float(match[1]) <= 0 or float(match[2]) <= 0:
        return default
    return images.clamp_aspect(float(match[1]) / float(match[2]))


def _short_url(data: bytes) -> str:
    """The ``s.mj.run`` link Discord gives an uploaded image (made up from its bytes)."""
    return f"https://s.mj.run/{images.digest('upload', data) % 36**11:011x}"


# --- the API --------------------------------------------------------------------------------------


class ProxyAPI:
    """The handlers, with the per-key slot tables that queueing needs."""

    def __init__(self, injector: FaultInjector, queue_size: int, *, list_limit: int | None = None) -> None:
        if queue_size < 0:
            raise ValueError("proxy_queue_size must be >= 0")
        if list_limit is not None and list_limit < 1:
            raise ValueError("proxy_list_limit must be >= 1 (or None for every task)")
        self.injector = injector
        self.queue_size = queue_size
        #: How many of the newest tasks ``GET /mj/task/list`` shows (None: all of them, as NZ).
        self.list_limit = list_limit
        #: Per key: tasks holding or waiting for a slot (pruned as they end).
        self._active: dict[str, list[ProxyTask]] = {}

    def post_routes(self) -> list[tuple[str, Handler]]:
        """``(path, handler)`` for every POST route, under every prefix."""
        handlers: dict[str, Handler] = {
            "submit/imagine": _replying(self.imagine),
            "submit/action": _replying(self.action),
            "submit/modal": _replying(self.modal),
            "submit/blend": _replying(self.blend),
            "submit/describe": _replying(self.describe),
            "submit/shorten": _replying(self.shorten),
            "submit/change": _replying(self.change),
            "submit/simple-change": _replying(self.simple_change),
            "task/list-by-condition": self.list_by_condition,
            "task/list-by-ids": self.list_by_condition,
        }
        return [
            (f"{mode}/mj/{path}", handler) for mode in MODE_PREFIXES for path, handler in handlers.items()
        ]

    def get_routes(self) -> list[tuple[str, Handler]]:
        """``(path, handler)`` for every GET route, under every prefix."""
        handlers: dict[str, Handler] = {
            "task/{task_id}/fetch": self.fetch,
            "task/list": self.list_all,
            "task/queue": self.queue,
        }
        return [
            (f"{mode}/mj/{path}", handler) for mode in MODE_PREFIXES for path, handler in handlers.items()
        ]

    # --- creating and starting tasks ---

    def _key(self, request: web.Request) -> str:
        """The credential a request's tasks count against (a single key when auth is off)."""
        store = request.app[STORE_KEY]
        return _credential(request, store.settings.tokens) or ""

    def _slot(self, request: web.Request, key: str) -> _Slot:
        """When a new task of *key* can start and how many wait ahead of it; refuse with 23 if full.

        Slots are taken first come, first served: a task starts no earlier than those queued before it,
        at the first moment fewer than the limit's tasks still hold a slot.
        """
        store = request.app[STORE_KEY]
        now = store.clock()
        tasks = [t for t in self._active.get(key, []) if t.slot_end > now]
        self._active[key] = tasks
        limit = self.injector.concurrency_limit
        if limit is None:
            return _Slot(now, 0, queued=False)
        waiting = sum(1 for t in tasks if t.slot_start > now)
        if waiting >= self.queue_size:
            store.count("queue_rejections")
            self.injector.record(
                FaultRecord("concurrency", "before", request.path, "limit"), first_of_request=True
            )
            raise _Refusal(23, "队列已满，请稍后尝试", properties={"discordInstanceId": INSTANCE_ID})
        base = max([now, *(t.slot_start for t in tasks)])
        ends = sorted(t.slot_end for t in tasks)
        for start in (base, *(end for end in ends if end > base)):
            if sum(1 for end in ends if end > start) < limit:
                return _Slot(start, waiting, queued=start > now)
        raise AssertionError("unreachable: the last end frees a slot")  # pragma: no cover

    def _run(
        self, request: web.Request, task: ProxyTask, outcome: Outcome, *, new: bool, slot: _Slot | None = None
    ) -> web.Response:
        """Queue *task* for a slot (unless *slot* was taken already), plan it, store it (if *new*),
        schedule its callbacks and answer 1 or 22."""
        store = request.app[STORE_KEY]
        slot = slot or self._slot(request, task.key)
        first = launch(store, task, outcome, slot.start)
        task.pending = task.pending_parent = None  # a MODAL task's modal is spent
        self._active.setdefault(task.key, []).append(task)
        if new:
            store.add_proxy_task(task)
        _notify(store, task, first)
        # An injected `phase=after` fault answers here instead: the task runs on, the client never hears.
        task_created(request, task.id)
        if slot.queued:
            properties: JSON = {"numberOfQueues": slot.waiting, "discordInstanceId": INSTANCE_ID}
            return _reply(22, f"排队中，前面还有{slot.waiting}个任务", task.id, properties)
        return _reply(1, "提交成功", task.id, {"discordInstanceId": INSTANCE_ID})

    def _new_task(
        self,
        request: web.Request,
        action: str,
        body: JSON,
        *,
        description: str,
        prompt: str | None,
        prompt_en: str | None = None,
        final_prompt: str | None = None,
        billing_prompt: str = "",
        parent: ProxyTask | None = None,
    ) -> ProxyTask:
        """A task in NOT_START (not stored yet), with the submit's state, hook and bot type."""
        store = request.app[STORE_KEY]
        state, hook, bot = _common(body)
        properties: JSON = {"discordInstanceId": INSTANCE_ID, "botType": bot, "nonce": snowflake()}
        if hook is not None:
            properties["notifyHook"] = hook  # NZ and trueai show it in every Task (§5.6)
        now = store.clock()
        text = prompt if prompt_en is None else prompt_en
        return ProxyTask(
            id=new_task_id(store),
            action=action,
            key=self._key(request),
            created=now,
            description=description,
            prompt=prompt,
            prompt_en=text,
            state=state,
            billing_prompt=billing_prompt,
            properties=properties,
            steps=[Step(now, "NOT_START")],
            final_prompt=final_prompt if final_prompt is not None else text,
            parent_id=None if parent is None else parent.id,
            notify_hook=hook,
            version=version_of(prompt or "") if parent is None else parent.version,
        )

    @staticmethod
    def _moderate(store: Store, prompt: str) -> None:
        """Refuse a prompt with a banned word: code 24 naming it, as NZ does before anything is made."""
        for word in store.settings.banned_words:
            if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, re.IGNORECASE):
                raise _Refusal(24, _BANNED, properties={"promptEn": prompt, "bannedWord": word})

    # --- submits ---

    async def imagine(self, request: web.Request) -> web.Response:
        """POST /mj/submit/imagine: a grid from ``prompt`` and optional ``base64Array`` images (§3.1)."""
        store = request.app[STORE_KEY]
        body = await json_body(request)
        prompt = _text(body, "prompt")
        _common(body)
        if prompt is None:
            raise _invalid("prompt不能为空")
        prompt = prompt.strip()
        uploads = _images_field(body, "base64Array")
        single = body.get("base64")
        if single is not None:
            uploads.append(_decode(single))
        self._moderate(store, prompt)
        links = [_short_url(data) for data in uploads]
        prompt_en = " ".join([*links, prompt])
        final = " ".join([*(f"<{link}>" for link in links), prompt])
        spec = images.generate(prompt_en, _aspect(prompt))
        outcome = Outcome(spec, store.settings.image_sizes.grid, "grid", fail_reason=_prompt_failure(prompt))
        task = self._new_task(
            request, "IMAGINE", body, description=f"/imagine {prompt}", prompt=prompt, prompt_en=prompt_en,
            final_prompt=final, billing_prompt=prompt,
        )  # fmt: skip
        return self._run(request, task, outcome, new=True)

    async def blend(self, request: web.Request) -> web.Response:
        """POST /mj/submit/blend: a grid from 2-5 ``base64Array`` images in ``dimensions`` (§3.5)."""
        store = request.app[STORE_KEY]
        body = await json_body(request)
        _common(body)
        value = body.get("base64Array")
        if not isinstance(value, list) or not 2 <= len(value) <= 5:
            raise _invalid("base64List参数错误")
        uploads = [_decode(item) for item in value]
        dimension = body.get("dimensions", "SQUARE")
        if dimension not in _DIMENSIONS:
            raise _invalid("dimensions参数错误")
        aspect, flag = _DIMENSIONS[dimension]
        links = [_short_url(data) for data in uploads]
        prompt = " ".join(f"<{link}>" for link in links) + flag
        spec = images.generate(prompt, aspect, "blend")
        task = self._new_task(request, "BLEND", body, description="", prompt=prompt)
        task.description = f"/blend {task.id} {len(uploads)}"
        return self._run(request, task, Outcome(spec, store.settings.image_sizes.grid, "grid"), new=True)

    async def describe(self, request: web.Request) -> web.Response:
        """POST /mj/submit/describe: four prompts for a ``base64`` image (or trueai's ``link``) (§3.4)."""
        body = await json_body(request)
        _common(body)
        encoded, link = _text(body, "base64"), _text(body, "link")
        if encoded is not None:
            source = f"upload:{images.digest('describe', _decode(encoded))}"
        elif link is not None:
            if not HTTP_URL.match(link):
                raise _invalid("link格式错误")
            source = link
        else:
            raise _invalid("base64不能为空")
        task = self._new_task(request, "DESCRIBE", body, description="", prompt=None)
        task.description, task.final_prompt, task.source = f"/describe {task.id}.png", None, source
        return self._run(request, task, self._describe_outcome(request, source, 0), new=True)

    def _describe_outcome(self, request: web.Request, source: str, salt: int) -> Outcome:
        store = request.app[STORE_KEY]
        options = describe_prompts(f"{source}#{salt}" if salt else source)
        # The described picture is shown as the task's image, so a client can fetch it.
        return Outcome(
            images.cover(source, 1.0), store.settings.image_sizes.upscale, "describe", tuple(options)
        )

    async def shorten(self, request: web.Request) -> web.Response:
        """POST /mj/submit/shorten: up to five shorter prompts, in ``properties.finalPrompt`` (§3.8)."""
        store = request.app[STORE_KEY]
        body = await json_body(request)
        _common(body)
        prompt = _text(body, "prompt")
        if prompt is None:
            raise _invalid("prompt不能为空")
        prompt = prompt.strip()
        self._moderate(store, prompt)
        options = tuple(shorten_prompt(prompt))
        task = self._new_task(
            request, "SHORTEN", body, description=f"/shorten {prompt}", prompt=prompt, billing_prompt=prompt
        )
        return self._run(request, task, Outcome(buttons="shorten", options=options), new=True)

    async def action(self, request: web.Request) -> web.Response:
        """POST /mj/submit/action: press a ``customId`` of a SUCCESS task (§3.6), maybe through MODAL."""
        store = request.app[STORE_KEY]
        body = await json_body(request)
        _common(body)
        task_id, custom_id = _text(body, "taskId"), _text(body, "customId")
        remix = _flag(body, "enableRemix")
        if task_id is None or custom_id is None:
            raise _invalid("参数错误")
        parent = self._parent(store, task_id.strip(), status=404)
        op = parent.ops().get(custom_id)
        if op is None:
            raise _invalid("未知的 Action 类型")
        if op.modal or (remix and op.remixable):
            return self._open_modal(request, body, parent, op)
        task = self._follow_up(request, body, parent, op)
        if op.kind == "redescribe":
            task.description, task.final_prompt, task.source = f"/describe {task.id}.png", None, parent.source
        return self._run(request, task, self._outcome(request, parent, op, parent.prompt or ""), new=True)

    def _parent(self, store: Store, task_id: str, *, status: int) -> ProxyTask:
        """The SUCCESS task *task_id*; code 3 (with HTTP *status*) if unknown, 4 if not finished well."""
        parent = proxy_task(store, task_id)
        if parent is None:
            raise _Refusal(3, _NOT_FOUND, status=status)
        if parent.status_at(store.clock()) != "SUCCESS":
            raise _invalid(_BAD_STATE)
        return parent

    def _follow_up(self, request: web.Request, body: JSON, parent: ProxyTask, op: Op) -> ProxyTask:
        """A follow-up task of *parent* (NZ's ``/up`` descriptions for U, V and re-roll)."""
        description = {
            "upscale": f"/up {parent.id} U{op.index}",
            "variation": f"/up {parent.id} V{op.index}",
            "reroll": f"/up {parent.id} R",
        }.get(op.kind, "Submit success")
        prompt = parent.prompt if parent.action != "DESCRIBE" else None
        return self._new_task(
            request, op.action, body, description=description, prompt=prompt, prompt_en=parent.prompt_en,
            final_prompt=parent.final_prompt, parent=parent,
        )  # fmt: skip

    def _open_modal(self, request: web.Request, body: JSON, parent: ProxyTask, op: Op) -> web.Response:
        """Create a MODAL task that waits for ``/submit/modal`` and answer code 21 (§8)."""
        store = request.app[STORE_KEY]
        task = self._follow_up(request, body, parent, op)
        if op.kind == "pick":
            # The chosen describe/shorten option is the prompt the modal proposes.
            task.prompt = task.prompt_en = task.final_prompt = parent.options[op.index - 1]
        task.description = _MODAL_DESCRIPTION
        task.steps = [Step(task.created, "MODAL")]
        task.pending, task.pending_parent = op, parent
        store.add_proxy_task(task)
        task_created(request, task.id)
        properties = {"finalPrompt": task.final_prompt or "", "remix": True}
        return _reply(21, _MODAL_DESCRIPTION, task.id, properties)

    async def modal(self, request: web.Request) -> web.Response:
        """POST /mj/submit/modal: the second step of a MODAL task, with ``prompt``/``maskBase64`` (§8)."""
        store = request.app[STORE_KEY]
        body = await json_body(request)
        task_id = _text(body, "taskId")
        if task_id is None:
            raise _invalid("taskId不能为空")
        task = proxy_task(store, task_id.strip())
        if task is None:
            raise _Refusal(3, _NOT_FOUND, status=404)
        op, parent = task.pending, task.pending_parent
        if op is None or parent is None:
            raise _invalid(_BAD_STATE)
        prompt = (_text(body, "prompt") or task.prompt or task.final_prompt or "").strip()
        mask = _text(body, "maskBase64")
        if not prompt:
            raise _invalid("prompt不能为空")
        box: images.Box | None = None
        zoom = 0.0
        if op.kind == "inpaint":
            box = _mask(mask)
        if op.kind == "custom_zoom":
            zoom = _zoom(prompt)
        self._moderate(store, prompt)
        state, _, _ = _common(body)
        outcome = self._outcome(request, parent, op, prompt, box=box, zoom=zoom)
        slot = self._slot(request, task.key)  # a queue-full refusal leaves the task MODAL, untouched
        store.count("modal_submits")
        task.prompt = task.prompt_en = task.final_prompt = prompt
        task.description = "Submit success"
        if state is not None:
            task.state = state
        return self._run(request, task, outcome, new=False, slot=slot)

    async def change(self, request: web.Request) -> web.Response:
        """POST /mj/submit/change: ``UPSCALE``/``VARIATION`` ``index`` or ``REROLL`` of a grid (§3.2)."""
        body = await json_body(request)
        task_id, action, index = _text(body, "taskId"), body.get("action"), body.get("index")
        if task_id is None:
            raise _invalid("taskId不能为空")
        if action not in ("UPSCALE", "VARIATION", "REROLL"):
            raise _invalid("action参数错误")
        if action != "REROLL" and (isinstance(index, bool) or index not in (1, 2, 3, 4)):
            raise _invalid("index参数错误")
        return self._change(
            request, body, task_id.strip(), cast(str, action), 0 if action == "REROLL" else index
        )

    async def simple_change(self, request: web.Request) -> web.Response:
        """POST /mj/submit/simple-change: ``{"content": "<taskId> U1|V1|R"}`` (§3.3)."""
        body = await json_body(request)
        content = _text(body, "content")
        parts = (content or "").split()
        match = re.fullmatch(r"([UuVv])([1-4])\d*|[Rr]", parts[1]) if len(parts) == 2 else None
        if match is None:
            raise _invalid("content参数错误")
        letter = (match[1] or "R").upper()
        action = {"U": "UPSCALE", "V": "VARIATION", "R": "REROLL"}[letter]
        return self._change(request, body, parts[0], action, int(match[2]) if match[2] else 0)

    def _change(
        self, request: web.Request, body: JSON, task_id: str, action: str, index: int
    ) -> web.Response:
        store = request.app[STORE_KEY]
        _common(body)
        parent = self._parent(store, task_id, status=200)  # NZ answers a missing parent with HTTP 200
        if parent.action not in _CHANGEABLE:
            raise _invalid("关联任务不允许执行变化")
        kind = {"UPSCALE": "upscale", "VARIATION": "variation", "REROLL": "reroll"}[action]
        op = next(o for o in parent.ops().values() if o.kind == kind and o.index == index)
        task = self._follow_up(request, body, parent, op)
        return self._run(request, task, self._outcome(request, parent, op, parent.prompt or ""), new=True)

    def _outcome(
        self,
        request: web.Request,
        parent: ProxyTask,
        op: Op,
        prompt: str,
        *,
        box: images.Box | None = None,
        zoom: float = 0.0,
    ) -> Outcome:
        """What *op* makes from *parent*'s picture (or option), with the prompt it runs with."""
        store = request.app[STORE_KEY]
        sizes = store.settings.image_sizes
        # A prompt typed into the modal may be one Midjourney rejects (a button reuses a good one).
        failure = _prompt_failure(prompt)
        if op.kind == "pick":
            return Outcome(images.generate(prompt, _aspect(prompt)), sizes.grid, "grid", fail_reason=failure)
        if op.kind == "redescribe":
            return self._describe_outcome(request, parent.source, store.next_salt(parent.id, "redescribe"))
        image = parent.image
        assert image is not None, "only tasks with a picture have these buttons"
        salt = (store.next_salt(image.image_id, f"{op.kind}{op.index}{op.arg}{op.factor}"), prompt)
        scene = image.spec.panels[0]
        if op.kind == "upscale":
            return Outcome(images.single(image.spec, op.index - 1), sizes.upscale, "upscaled")
        if op.kind == "upscale_hd":
            long_side = min(round(max(image.raw) * op.factor), sizes.max_side)
            return Outcome(image.spec, long_side, "enlarged")
        if op.kind == "variation":
            spec = images.follow_up(image.spec, f"variation{op.index}", salt)
        elif op.kind == "reroll":
            spec = images.follow_up(image.spec, "reroll", salt)
        elif op.kind == "vary":
            spec = images.follow_up(image.spec, f"variation_{op.arg}", salt)
        elif op.kind == "pan":
            spec = images.follow_up(image.spec, f"pan_{op.arg}", salt)
        elif op.kind == "zoom":
            spec = images.zoom_out(scene, op.factor, salt)
        elif op.kind == "custom_zoom":
            spec = images.zoom_out(scene, zoom, salt)
        else:  # inpaint
            spec = images.region(scene, box or (0.0, 0.0, 1.0, 1.0), salt)
        return Outcome(spec, sizes.grid, "grid", fail_reason=failure)

    # --- reads ---

    async def fetch(self, request: web.Request) -> web.Response:
        """GET /mj/task/{id}/fetch: the Task object; an unknown id is HTTP 200 with an empty body (NZ)."""
        store = request.app[STORE_KEY]
        task = proxy_task(store, request.match_info["task_id"])
        if task is None:
            return web.Response(status=200)
        return web.json_response(task.snapshot(store.clock()))

    async def list_by_condition(self, request: web.Request) -> web.Response:
        """POST /mj/task/list-by-condition ``{"ids": [...]}``: the known ones, newest first (§6)."""
        store = request.app[STORE_KEY]
        body = await json_body(request)
        ids = body.get("ids")
        if ids is None:
            ids = []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise _bad_type("ids", "a list of strings")
        found = {task.id: task for i in ids if (task := proxy_task(store, i.strip())) is not None}
        return self._listing(store, found.values())

    async def list_all(self, request: web.Request) -> web.Response:
        """GET /mj/task/list: every task, newest first (NZ); with a list limit, only the newest that
        many, of all keys (trueai's newest 100 of all its users)."""
        store = request.app[STORE_KEY]
        tasks = _proxy_tasks(store)
        if self.list_limit is not None:
            tasks = sorted(tasks, key=_order, reverse=True)[: self.list_limit]
        return self._listing(store, tasks)

    async def queue(self, request: web.Request) -> web.Response:
        """GET /mj/task/queue: the tasks queued or running now, oldest first (NZ)."""
        store = request.app[STORE_KEY]
        now = store.clock()
        active = [t for t in _proxy_tasks(store) if t.status_at(now) in ACTIVE_STATUSES]
        return web.json_response([t.snapshot(now) for t in sorted(active, key=_order)])

    @staticmethod
    def _listing(store: Store, tasks: Iterable[ProxyTask]) -> web.Response:
        now = store.clock()
        return web.json_response([t.snapshot(now) for t in sorted(tasks, key=_order, reverse=True)])


def _order(task: ProxyTask) -> tuple[float, str]:
    return task.created, task.id


def _proxy_tasks(store: Store) -> list[ProxyTask]:
    return [task for task in store.proxy_tasks.values() if isinstance(task, ProxyTask)]


def proxy_task(store: Store, task_id: str) -> ProxyTask | None:
    """The proxy task *task_id*, if there is one (the store keeps them as `BilledTask`s)."""
    task = store.proxy_tasks.get(task_id)
    return task if isinstance(task, ProxyTask) else None


def _mask(value: str | None) -> images.Box:
    """The box of a ``maskBase64``'s white area (a data URL prefix is stripped, as trueai does)."""
    if value is None:
        raise _invalid("maskBase64不能为空")
    encoded = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        box = images.mask_box(base64.b64decode(re.sub(r"\s+", "", encoded), validate=True))
    except (binascii.Error, ValueError):
        raise _invalid("maskBase64格式错误") from None
    if box is None:
        raise _invalid("maskBase64没有选中区域")
    return box


def _zoom(prompt: str) -> float:
    """Custom Zoom's ``--zoom`` value, which must lie in [1, 2] (PL)."""
    match = _ZOOM.search(prompt)
    try:
        zoom = float(match[1]) if match else float("nan")
    except ValueError:
        zoom = float("nan")
    if not 1 <= zoom <= 2:
        raise _invalid("--zoom参数错误，取值1-2")
    return zoom


def _notify(store: Store, task: ProxyTask, first: int) -> None:
    """POST *task*'s steps from *first* on to its notifyHook when they come due, once each (§7)."""
    if task.notify_hook is None or store.start_soon is None:
        return
    events = [
        (step.at, task.render(i))
        for i, step in enumerate(task.steps)
        if i >= first and step.status in NOTIFIED_STATUSES
    ]
    store.start_soon(functools.partial(store.deliver, task.notify_hook, events))
