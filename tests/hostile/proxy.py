"""The hostile server's midjourney-proxy side: `/mj/submit/*`, `/mj/task/*` and notifyHook callbacks.

Written from `midjourney-proxy-api.md` (the protocol's reference notes) alone, never from
`mjasync.emulator` or `mjasync._providers.proxy`, so that it can disagree with them. What it does
honestly, as the notes describe the novicezk, "plus" and trueai proxies:

- the key is `mj-api-secret` (or trueai's verbatim `Authorization`); anything else is a 401 with an
  empty body;
- `/mj/submit/imagine|action|change|simple-change|blend|describe|shorten|modal` (also under the
  `/mj-fast`, `/mj-relax`, `/mj-turbo` prefixes) answer `{code, description, result, properties}`:
  1 accepted, 22 queued, 21 a MODAL task (Vary Region and Custom Zoom always need one), refusals
  23/9 (queue full), 24 (banned, with `bannedWord`), 4 (validation), 3 with HTTP 404 (no such parent);
- tasks are 16-digit ids, `state` is echoed, and a task moves NOT_START → SUBMITTED "0%" →
  IN_PROGRESS "NN%" (with a preview `imageUrl`) → SUCCESS "100%" with `buttons` (grid: U1–U4, 🔄,
  V1–V4; an upscale: the HD upscales, vary, region, zooms, pans), one step per honest lookup;
- `POST /mj/task/list-by-condition {"ids": [...]}` answers a bare array (unknown ids left out, order
  not the request's), `GET /mj/task/list` every task newest first, `GET /mj/task/{id}/fetch` the task
  or an empty 200 (novicezk's unknown id);
- a submit's `notifyHook` gets unsigned POSTs of the whole Task (SUBMITTED, IN_PROGRESS, the end).

Hostile, on the script: the shared submit and lookup moves (garbage and cut bodies, resets, drips,
hangs, 429s and 5xx, ghost ids), the reply `codes` (23 or 9 forever, MODAL forever, 21 naming a task
never issued, an envelope of wrong types, `result` a number or a list), the lookup `views` (status
going backwards, FAILURE with progress "100%", MODAL forever, listings that omit ids, tasks never
issued, a stranger carrying a job's marker, wrong types, 5,000-deep `properties`, SUCCESS without an
image, odd progress text, CANCEL), `hooks` (garbage, another task's failure, a huge body, this
task's failure, duplicates, stale updates), and `shorts` for the images the client fetches to send
(garbage, 429, 5xx, 400, a reset, a drip). The key is echoed everywhere it fits: descriptions,
`failReason`, `bannedWord`, preview `imageUrl`s, `properties`, headers.
"""

from __future__ import annotations

import hashlib
import re
import struct
import time
import uuid
import zlib
from typing import Any, Final

from aiohttp import web

from .server import (
    API_KEY,
    WEBHOOK_SECRET,
    CodeMove,
    HostileServer,
    LookupMove,
    ShortMove,
    SubmitMove,
    Task,
    ViewMove,
    garbage_bytes,
)

__all__ = ["PROXY_SUBMITS", "ProxyHostileServer", "png", "proxy_job_key"]

#: The submit endpoints and the `action` of the task each makes (None: read from the body).
PROXY_SUBMITS: Final[dict[str, str | None]] = {
    "imagine": "IMAGINE",
    "blend": "BLEND",
    "describe": "DESCRIBE",
    "shorten": "SHORTEN",
    "action": None,
    "change": None,
    "simple-change": None,
    "modal": None,
}
MODE_PREFIXES: Final = ("/mj-fast", "/mj-relax", "/mj-turbo")
#: Codes that refuse the submit: no task is made.
REFUSALS: Final[dict[str, tuple[int, int, str]]] = {
    "23": (200, 23, "队列已满，请稍后尝试"),
    "9-queue": (200, 9, "提交失败，队列已满，请稍后重试"),
    "24": (200, 24, "可能包含敏感词"),
    "4": (200, 4, "prompt不能为空"),
    "3-404": (404, 3, "关联任务不存在或已失效"),
}
#: customIds whose action always waits for /submit/modal (Vary Region, Custom Zoom, describe's prompts).
MODAL_MARKS: Final = ("::Inpaint::", "::CustomZoom::", "::PicReader::", "::PromptAnalyzer::")
ODD_PROGRESS: Final = ("Waiting to start", "150%", "-3%", "NaN%", "1e999%", "%", "99.5%", "paused")
#: Spliced into an encoded body where a `properties` nested too deep for `json.dumps` belongs.
DEEP_TOKEN: Final = "@@HOSTILE-DEEP@@"
DISCORD_INSTANCE: Final = "1118138338562560102"


def png(text: str) -> bytes:
    """A valid 1×1 PNG that carries `text` (so two images of two paths never look like one job)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"tEXt", b"path\x00" + text.encode())
        + chunk(b"IDAT", zlib.compress(b"\x00\xff"))
        + chunk(b"IEND", b"")
    )


def _digest(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def proxy_job_key(kind: str, body: dict[str, Any]) -> str:
    """What identifies a proxy job by its submit (never its `state`, which marks one attempt of it)."""
    if kind == "imagine":
        return f"prompt:{body.get('prompt')}"
    if kind == "shorten":
        return f"shorten:{body.get('prompt')}"
    if kind == "describe":
        return f"describe:{body.get('link') or _digest(body.get('base64'))}"
    if kind == "blend":
        return f"blend:{_digest(body.get('base64Array'))} {body.get('dimensions')}"
    if kind == "action":
        return f"action {body.get('taskId')} {body.get('customId')}"
    if kind == "change":
        return f"change {body.get('taskId')} {body.get('action')} {body.get('index')}"
    return f"{kind} {_digest(sorted((k, repr(v)) for k, v in body.items() if k != 'state'))}"


def _action_of(kind: str, body: dict[str, Any]) -> str:
    named = PROXY_SUBMITS.get(kind)
    if named is not None:
        return named
    if kind == "change":
        return str(body.get("action") or "UPSCALE")
    if kind == "simple-change":
        content = str(body.get("content") or "")
        letter = content.split()[-1][:1].upper() if content.split() else "U"
        return {"U": "UPSCALE", "V": "VARIATION", "R": "REROLL"}.get(letter, "UPSCALE")
    custom = str(body.get("customId") or "")
    for mark, action in (
        ("::upsample::", "UPSCALE"),
        ("::upsample_", "UPSCALE_HD"),
        ("::Inpaint::", "VARIATION"),
        ("variation::", "VARIATION"),
        ("::reroll::", "REROLL"),
        ("::Outpaint::", "ZOOM"),
        ("::CustomZoom::", "ZOOM"),
        ("::pan_", "PAN"),
        ("::PicReader::", "IMAGINE"),
        ("::PromptAnalyzer::", "IMAGINE"),
    ):
        if mark in custom:
            return action
    return "ACTION"


def _buttons(action: str, job_hash: str) -> list[dict[str, Any]]:
    """The buttons a finished task of `action` carries (the Discord layout the notes record)."""

    def button(custom: str, label: str = "", emoji: str = "") -> dict[str, Any]:
        return {"customId": custom, "emoji": emoji, "label": label, "type": 2, "style": 2}

    h = job_hash
    if action in ("UPSCALE", "UPSCALE_HD"):
        return [
            button(f"MJ::JOB::upsample_v6r1_2x_subtle::1::{h}::SOLO", "Upscale (Subtle)"),
            button(f"MJ::JOB::upsample_v6r1_2x_creative::1::{h}::SOLO", "Upscale (Creative)"),
            button(f"MJ::JOB::low_variation::1::{h}::SOLO", "Vary (Subtle)", "🪄"),
            button(f"MJ::JOB::high_variation::1::{h}::SOLO", "Vary (Strong)", "🪄"),
            button(f"MJ::Inpaint::1::{h}::SOLO", "Vary (Region)", "🖌️"),
            button(f"MJ::Outpaint::50::1::{h}::SOLO", "Zoom Out 2x", "🔍"),
            button(f"MJ::Outpaint::75::1::{h}::SOLO", "Zoom Out 1.5x", "🔍"),
            button(f"MJ::CustomZoom::{h}", "Custom Zoom", "🔍"),
            *(
                button(f"MJ::JOB::pan_{side}::1::{h}::SOLO", "", emoji)
                for side, emoji in (("left", "⬅️"), ("right", "➡️"), ("up", "⬆️"), ("down", "⬇️"))
            ),
        ]
    if action == "DESCRIBE":
        return [button(f"MJ::Job::PicReader::{i}", "", f"{i}️⃣") for i in range(1, 5)]
    if action == "SHORTEN":
        return [button(f"MJ::Job::PromptAnalyzer::{i}", "", f"{i}️⃣") for i in range(1, 6)]
    return [
        *(button(f"MJ::JOB::upsample::{i}::{h}", f"U{i}") for i in range(1, 5)),
        button(f"MJ::JOB::reroll::0::{h}::SOLO", "", "🔄"),
        *(button(f"MJ::JOB::variation::{i}::{h}", f"V{i}") for i in range(1, 5)),
    ]


class ProxyHostileServer(HostileServer):
    """`HostileServer` speaking midjourney-proxy; `serve("midjourney-proxy")` runs one."""

    # -- ids, keys and task objects ----------------------------------------------------------------

    def _new_id(self) -> str:
        """16 digits: epoch milliseconds and a counter, as the proxies make them."""
        self._ids += 1
        return f"{int(time.time() * 1000)}{self._ids % 1000:03d}"

    def _stranger_id(self) -> str:
        """An id of the proxy's shape that this server never issues (its counter digits end in 9s)."""
        self._ids += 1
        return f"{int(time.time() * 1000) - 86_400_000}999"

    def _authorized(self, request: web.Request) -> bool:
        return API_KEY in (request.headers.get("mj-api-secret"), request.headers.get("Authorization")) or (
            request.headers.get("Authorization") == f"Bearer {API_KEY}"
        )

    def _proxy_create(self, path: str, kind: str, body: dict[str, Any], *, ghost: bool = False) -> Task:
        task_id = self._new_id()
        task = Task(
            task_id=task_id,
            provider=self.provider,
            path=path,
            body=body,
            key=proxy_job_key(kind, body),
            task_type=kind,
            created_at=time.time(),
            trace_id=task_id,
            image_id=str(uuid.UUID(int=int(task_id))),
            action=_action_of(kind, body),
            marker=body.get("state"),
        )
        if not ghost:
            self.tasks[task.task_id] = task
            self.created.append(task)
        return task

    def _stranger(self, like: Task | None = None, *, marker: Any = None) -> Task:
        """A task this server never issued (not in `tasks` or `created`)."""
        task_id = self._stranger_id()
        task = Task(
            task_id, self.provider, "/mj/submit/imagine", {"prompt": f"stranger {API_KEY}"}, "stranger",
            "imagine", time.time(), task_id, image_id=str(uuid.UUID(int=int(task_id))), action="IMAGINE",
            marker=marker if marker is not None else f"stranger-{task_id}",
        )  # fmt: skip
        task.state = "finished" if like is None else like.state
        return task

    def _status(self, task: Task, running: bool) -> tuple[str, str | None]:
        if task.modal:
            return "MODAL", None
        if task.state == "failed":
            return "FAILURE", ""
        if running:
            return "IN_PROGRESS", "50%"
        if task.state == "finished":
            return "SUCCESS", "100%"
        if task.lookups == 0:
            return "NOT_START", None
        if task.lookups == 1:
            return "SUBMITTED", "0%"
        return "IN_PROGRESS", f"{min(93, 15 * task.lookups)}%"

    def _object(self, task: Task, view: ViewMove = "honest", *, running: bool = False) -> dict[str, Any]:
        """The Task object of `task` as `view` shows it (a view that ends the task ends it here)."""
        if view in ("failure-100", "cancel"):
            task.state = "failed"
        elif view == "no-image" and task.state == "running" and not task.modal:
            task.state = "finished"
        status, progress = self._status(task, running)
        body = task.body
        prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
        ms = int(task.created_at * 1000)
        started = status not in ("NOT_START", "MODAL")
        image_url: str | None = None
        if status == "IN_PROGRESS":
            image_url = f"{self.url}/img/{task.task_id}_preview.webp?echo={API_KEY}"
        elif status == "SUCCESS":
            image_url = f"{self.url}/img/{task.task_id}.png"
        properties: dict[str, Any] = {
            "discordInstanceId": DISCORD_INSTANCE,
            "finalPrompt": prompt,
            "echo": f"mj-api-secret: {API_KEY}",
        }
        if isinstance(body.get("notifyHook"), str):
            properties["notifyHook"] = body["notifyHook"]  # the proxies show it in every Task
        if status == "SUCCESS":
            properties["messageHash"] = task.image_id
        if status == "SUCCESS" and task.action == "DESCRIBE":
            prompt = "\n\n".join(f"{i}️⃣ a described prompt {i} --ar 1:1" for i in range(1, 5))
            properties["finalPrompt"] = prompt
        elif status == "SUCCESS" and task.action == "SHORTEN":
            properties["finalPrompt"] = "\n\n".join(f"{i}️⃣ a short prompt {i}" for i in range(1, 6))
        obj: dict[str, Any] = {
            "id": task.task_id,
            "action": task.action,
            "status": status,
            "prompt": prompt,
            "promptEn": prompt,
            "description": f"/{task.task_type} {prompt} [{API_KEY}]",
            "state": task.marker,
            "submitTime": ms,
            "startTime": ms + 500 if started else None,
            "finishTime": ms + 2000 if status in ("SUCCESS", "FAILURE") else None,
            "imageUrl": image_url,
            "progress": progress,
            "failReason": f"[Invalid parameter] refused for {API_KEY} / {WEBHOOK_SECRET}"
            if status == "FAILURE"
            else None,
            "properties": properties,
            "buttons": _buttons(task.action, task.image_id) if status == "SUCCESS" else [],
        }
        if view == "backwards":
            obj.update(status="SUBMITTED" if status == "IN_PROGRESS" else "NOT_START", progress=None)
            obj.update(imageUrl=None, buttons=[], finishTime=None)
        elif view == "failure-100":
            obj.update(progress="100%", imageUrl=f"{self.url}/img/{task.task_id}.png?echo={API_KEY}")
            obj.update(buttons=_buttons(task.action, task.image_id))
        elif view == "modal":
            obj.update(status="MODAL", progress=None, imageUrl=None, buttons=[])
        elif view == "wrong-types":
            obj.update(
                status=3,
                progress=45,
                buttons=f"U1 {API_KEY}",
                properties=[API_KEY],
                imageUrl=7,
                failReason={"k": API_KEY},
                submitTime="yesterday",
                state=[task.marker],
                action=None,
            )
        elif view == "deep":
            obj["properties"] = DEEP_TOKEN
        elif view == "no-image" and status == "SUCCESS":
            obj.update(imageUrl=None, buttons=[])
        elif view == "empty-status" and status not in ("SUCCESS", "FAILURE"):
            obj.update(status="", progress="0%")
        elif view == "odd-progress" and status not in ("SUCCESS", "FAILURE"):
            obj.update(status="IN_PROGRESS", progress=ODD_PROGRESS[task.lookups % len(ODD_PROGRESS)])
        elif view == "cancel":
            obj.update(status="CANCEL", progress="", failReason=f"取消任务 {API_KEY}")
        return obj

    def _encode(self, payload: Any) -> bytes:
        data = super()._encode(payload)
        token = f'"{DEEP_TOKEN}"'.encode()
        if token in data:
            deep = b'{"a":' * 5000 + b'"' + API_KEY.encode() + b'"' + b"}" * 5000
            data = data.replace(token, deep)
        return data

    def _envelope(self, code: int, description: str, result: Any, **properties: Any) -> dict[str, Any]:
        return {
            "code": code,
            "description": f"{description} ({API_KEY})",
            "result": result,
            "properties": {"discordInstanceId": DISCORD_INSTANCE, "echo": API_KEY, **properties},
            **({"hint": "retry 🔄"} if self.script.astral else {}),
        }

    def _receipt(self, task: Task) -> dict[str, Any]:
        return self._envelope(1, "提交成功", task.task_id)

    # -- routing -----------------------------------------------------------------------------------

    async def _proxy_route(
        self, request: web.Request, path: str, body: dict[str, Any]
    ) -> web.StreamResponse | None:
        if path.startswith("/img/"):
            return await self._image(request, path)
        for prefix in MODE_PREFIXES:
            if path.startswith(f"{prefix}/mj/"):
                path = path[len(prefix) :]
                break
        if not path.startswith("/mj/"):
            return None
        if not self._authorized(request):
            return await self._send(request, 401, b"")
        name = path[len("/mj/") :]
        if request.method == "POST" and name.startswith("submit/") and name[7:] in PROXY_SUBMITS:
            return await self._proxy_submit(request, path, name[7:], body)
        if request.method == "POST" and name in ("task/list-by-condition", "task/list-by-ids"):
            return await self._proxy_batch(request, body)
        if request.method == "GET" and name == "task/list":
            return await self._proxy_listing(request)
        fetched = re.fullmatch(r"task/([^/]+)/fetch", name)
        if request.method == "GET" and fetched:
            return await self._proxy_fetch(request, fetched.group(1))
        return None

    async def _image(self, request: web.Request, path: str) -> web.StreamResponse:
        """An image the client fetches to send as base64 (describe, blend, image prompts): the script's
        `shorts` moves misbehave here, as the proxy has no other short calls."""
        move: ShortMove = self.script.take(self.script.shorts, "honest")
        image = png(path)
        if move == "garbage":
            return await self._send(
                request, 200, garbage_bytes(self.script.garbage, image), content_type="image/png"
            )
        if move in ("throttle-429", "fail-5xx", "refuse-400"):
            return await self._error(request, {"throttle-429": 429, "fail-5xx": 503, "refuse-400": 400}[move])
        if move == "reset":
            return await self._reset(request, image[:9])
        if move == "drip":  # ~70 s at DRIP_INTERVAL: only the client's overall timeout ends it in time
            return await self._drip(request, png(path + "." * 700), content_type="image/png")
        return await self._send(request, 200, image, content_type="image/png")

    # -- submits -----------------------------------------------------------------------------------

    async def _proxy_submit(
        self, request: web.Request, path: str, kind: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        move: SubmitMove = self.script.take(self.script.submits, "ok")
        if kind == "modal":
            return await self._proxy_modal(request, path, body, move)
        modal = any(mark in str(body.get("customId") or "") for mark in MODAL_MARKS)
        if move != "ok":
            task, answer = await self._submit_prelude(
                request,
                path,
                body,
                kind,
                self._receipt,
                move=move,
                make=lambda ghost: self._proxy_create(path, kind, body, ghost=ghost),
            )
            if answer is not None:
                return answer
            assert task is not None  # a ghost: answered as if made
            return await self._json(request, 200, self._receipt(task))
        code: CodeMove = self.script.take(self.script.codes, "1")
        if code in REFUSALS:
            status, number, description = REFUSALS[code]
            extra = {"promptEn": body.get("prompt"), "bannedWord": API_KEY} if code == "24" else {}
            return await self._json(request, status, self._envelope(number, description, None, **extra))
        if code == "21-existing":
            return await self._json(
                request,
                200,
                self._envelope(
                    21,
                    "任务已存在",
                    self._stranger_id(),
                    status="SUCCESS",
                    imageUrl=f"{self.url}/img/existing.png?echo={API_KEY}",
                ),
            )
        task = self._proxy_create(path, kind, body)
        task.modal = modal or code == "21-modal"
        if not task.modal:
            self._hook(task)
        return await self._json(request, 200, self._accepted(code, task))

    def _accepted(self, code: CodeMove, task: Task) -> Any:
        if task.modal:
            prompt = task.body.get("prompt")
            return self._envelope(
                21, "Waiting for window confirm", task.task_id, finalPrompt=prompt, remix=True
            )
        if code == "22":
            return self._envelope(22, "排队中，前面还有2个任务", task.task_id, numberOfQueues=2)
        if code == "wrong-types":
            return {
                "code": "1",
                "description": [API_KEY],
                "result": {"id": task.task_id},
                "properties": API_KEY,
            }
        if code == "result-number":
            return self._envelope(1, "提交成功", int(task.task_id))
        if code == "result-list":
            return self._envelope(1, "提交成功", [task.task_id])
        return self._receipt(task)

    async def _proxy_modal(
        self, request: web.Request, path: str, body: dict[str, Any], move: SubmitMove
    ) -> web.StreamResponse:
        """`/submit/modal`: the MODAL task named goes on (no new task); its reply names it again."""
        task_id = body.get("taskId")
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None:
            return await self._json(request, 404, self._envelope(3, "关联任务不存在或已失效", None))

        def accept(ghost: bool) -> Task:
            if ghost:
                return self._stranger(task)
            if task.modal:
                task.modal = False
                self._hook(task)
            return task

        if move != "ok":
            made, answer = await self._submit_prelude(
                request, path, body, "modal", self._receipt, move=move, make=accept
            )
            if answer is not None:
                return answer
            assert made is not None
            return await self._json(request, 200, self._receipt(made))
        code: CodeMove = self.script.take(self.script.codes, "1")
        if code in REFUSALS:
            status, number, description = REFUSALS[code]
            return await self._json(request, status, self._envelope(number, description, None))
        accept(False)
        return await self._json(request, 200, self._accepted("1" if code == "21-modal" else code, task))

    # -- lookups -----------------------------------------------------------------------------------

    def _proxy_look(self, task_id: Any, move: LookupMove) -> Task | None:
        """The task a lookup names, advanced one step by an honest look (None: not known)."""
        task = self.tasks.get(task_id) if isinstance(task_id, str) else None
        if task is None or move == "unknown":
            return None
        if move == "failed":
            task.state = "failed"
        elif move == "honest" and not task.modal:
            task.lookups += 1
            if task.state == "running" and task.lookups > self.script.steps:
                task.state = "finished"
        return task

    async def _proxy_batch(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        move, answer = await self._lookup_prelude(request)
        if answer is not None:
            return answer
        view: ViewMove = self.script.take(self.script.views, "honest")
        ids = body.get("ids")
        asked = [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []
        if view == "omit":
            asked = asked[1::2]
        shown = [task for task in (self._proxy_look(i, move) for i in asked) if task is not None]
        running = move == "running"
        objects = [self._object(task, view, running=running) for task in reversed(shown)]
        if view == "twin":
            for task in shown:
                twin = self._object(task, running=running)
                objects.append({**twin, "status": "FAILURE", "progress": "", "failReason": f"twin {API_KEY}"})
        if view == "foreign":
            objects += [self._object(self._stranger(), running=running) for _ in range(2)]
        return await self._json(request, 200, objects)

    async def _proxy_listing(self, request: web.Request) -> web.StreamResponse:
        """`GET /mj/task/list`: every task, newest first; how lost submits are found by their marker."""
        move, answer = await self._lookup_prelude(request)
        if answer is not None:
            return answer
        view: ViewMove = self.script.take(self.script.views, "honest")
        tasks = [] if move == "unknown" else list(reversed(self.created))
        if view == "omit":
            tasks = tasks[1::2]
        objects = [self._object(task, view, running=move == "running") for task in tasks]
        if view == "twin":  # a stranger with each task's marker: which of the two is the job's?
            objects += [self._object(self._stranger(task, marker=task.marker)) for task in tasks]
        if view == "foreign":  # markers that only start like a job's
            objects += [self._object(self._stranger(task, marker=f"{task.marker}0")) for task in tasks]
        return await self._json(request, 200, objects)

    async def _proxy_fetch(self, request: web.Request, task_id: str) -> web.StreamResponse:
        move, answer = await self._lookup_prelude(request)
        if answer is not None:
            return answer
        view: ViewMove = self.script.take(self.script.views, "honest")
        task = self._proxy_look(task_id, move)
        if task is None or view == "omit":
            return await self._send(request, 200, b"")  # novicezk's answer for an unknown id
        if view == "foreign":
            task = self._stranger(task)
        return await self._json(request, 200, self._object(task, view, running=move == "running"))

    # -- callbacks ---------------------------------------------------------------------------------

    def _hook(self, task: Task) -> None:
        url = task.body.get("notifyHook")
        if isinstance(url, str) and url:
            self._deliver_later(url, task)

    async def _deliver(self, url: str, task: Task) -> None:
        """POST the script's hostile callbacks, then SUBMITTED, IN_PROGRESS and the end: no signature."""

        async def post(view: ViewMove = "honest", **changes: Any) -> None:
            await self._post(url, self._encode({**self._object(task, view), **changes}), {})

        for move in self.script.hooks:
            if move == "garbage":
                await self._post(url, garbage_bytes(self.script.garbage, b'{"id": "'), {})
            elif move == "other-task":
                stranger = self._stranger()
                stranger.state = "failed"
                await self._post(url, self._encode(self._object(stranger)), {})
            elif move == "huge":
                await self._post(url, (API_KEY.encode() + b" ") * 20_000, {})
            elif move == "failed":
                task.state = "failed"
                await post()
            elif move == "failure-100":
                await post("failure-100")
            elif move == "duplicate":
                for _ in range(2):
                    await post(status="IN_PROGRESS", progress="50%")
            elif move == "stale":
                await post(status="IN_PROGRESS", progress="90%")
                await post(status="SUBMITTED", progress="0%", imageUrl=None)
        if task.state == "running":
            await post(status="SUBMITTED", progress="0%", imageUrl=None)
            await post(status="IN_PROGRESS", progress="46%")
            task.state = "finished"
        await post()
