"""The midjourney-proxy side of the emulator, over real sockets with a raw aiohttp client (never mjasync's).

Each test drives the protocol of midjourney-proxy-api.md as a client would: submit replies and their
codes, the Task object through its statuses, buttons and the MODAL two-step, the lists, queueing under the
concurrency limit, banned words, notifyHook POSTs, injected faults and the counters.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.abc import ObjectReceiveStream

from mjasync.emulator import Emulator, FaultPlan, ImageSizes, ManualClock
from mjasync.emulator._faults import PROXY_SUBMIT_PATHS
from mjasync.testing import EMULATOR_TOKEN

from .. import helpers
from ..helpers import Delivery, encoded, fetch_png, mask_b64, mask_image, until, webhook_receiver

JSON = dict[str, Any]
SECRET = {"mj-api-secret": EMULATOR_TOKEN}
SMALL = ImageSizes(grid=128, upscale=96, max_side=512)
#: Seconds a job takes in the tests that step the clock.
JOB = 10.0
TASK_KEYS = {
    "id", "action", "status", "prompt", "promptEn", "description", "state", "submitTime", "startTime",
    "finishTime", "imageUrl", "progress", "failReason", "properties", "buttons",
}  # fmt: skip
GRID_LABELS = ["U1", "U2", "U3", "U4", "", "V1", "V2", "V3", "V4"]
KEYCAPS = ["1\ufe0f\u20e3", "2\ufe0f\u20e3", "3\ufe0f\u20e3", "4\ufe0f\u20e3", "5\ufe0f\u20e3"]


def data_url(size: tuple[int, int] = (32, 32)) -> str:
    """A small PNG as a ``data:`` URL (what NZ requires in ``base64``/``base64Array``)."""
    return "data:image/png;base64," + base64.b64encode(encoded(mask_image(size))).decode()


@dataclass
class Proxy:
    """A running emulator, a plain aiohttp session and (when stepping time) the emulator's clock."""

    emu: Emulator
    http: aiohttp.ClientSession
    clock: ManualClock

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        prefix: str = "",
    ) -> tuple[int, Any]:
        """Send *body* (JSON) to ``<prefix>/mj/<path>`` with the secret unless *headers* say otherwise."""
        url = f"{self.emu.url}{prefix}/mj/{path}"
        async with self.http.request(
            method, url, json=body, headers=SECRET if headers is None else headers
        ) as resp:
            data = await resp.read()
            return resp.status, json.loads(data) if data else None

    async def submit(self, kind: str, body: JSON, *, prefix: str = "", code: int | None = 1) -> JSON:
        """POST ``submit/<kind>``; require HTTP 200, the reply envelope and (unless None) *code*."""
        status, reply = await self.call("POST", f"submit/{kind}", body, prefix=prefix)
        assert status == 200, reply
        assert set(reply) == {"code", "description", "result", "properties"}, reply
        if code is not None:
            assert reply["code"] == code, reply
        return dict(reply)

    async def refusal(self, kind: str, body: JSON, *, code: int = 4) -> str:
        """POST ``submit/<kind>``, require a refusal with *code* (HTTP 200) and return its description."""
        reply = await self.submit(kind, body, code=code)
        assert reply["result"] is None, reply
        return str(reply["description"])

    async def run(self, kind: str, body: JSON, *, prefix: str = "") -> str:
        """Submit (code 1) and return the task id: epoch ms and three digits (16 digits)."""
        task_id = (await self.submit(kind, body, prefix=prefix))["result"]
        assert isinstance(task_id, str) and task_id.isdigit() and len(task_id) == 16
        return task_id

    async def task(self, task_id: str, *, prefix: str = "") -> JSON:
        """GET the Task object; check its keys."""
        status, task = await self.call("GET", f"task/{task_id}/fetch", prefix=prefix)
        assert status == 200, task
        assert TASK_KEYS <= set(task) <= TASK_KEYS | {"parentId"}, task
        assert task["id"] == task_id
        return dict(task)

    async def done(self, kind: str, body: JSON) -> JSON:
        """Submit to a speed-0 emulator and return the Task, which must be SUCCESS."""
        task = await self.task(await self.run(kind, body))
        assert task["status"] == "SUCCESS", task
        return task

    async def press(self, parent: JSON, label: str, *, code: int = 1, **extra: Any) -> JSON:
        """Submit ``action`` with the customId of *parent*'s button *label* (or emoji); return the reply."""
        custom_id = button(parent, label)
        return await self.submit(
            "action", {"taskId": parent["id"], "customId": custom_id, **extra}, code=code
        )

    async def png_size(self, url: str) -> tuple[int, int]:
        """GET a PNG from the emulator's CDN (no secret) and return its pixel size."""
        with await fetch_png(self.http, url) as img:
            width, height = img.size
            return width, height


def button(task: JSON, label: str) -> str:
    """The customId of the button whose label (or, unlabelled, emoji) is *label*."""
    found = [b["customId"] for b in task["buttons"] if (b["label"] or b["emoji"]) == label]
    assert len(found) == 1, (label, task["buttons"])
    return str(found[0])


@asynccontextmanager
async def proxy(**options: Any) -> AsyncIterator[Proxy]:
    """An emulator on 127.0.0.1 (small images, a manual clock unless given) and a plain aiohttp session."""
    options.setdefault("image_sizes", SMALL)
    clock = options.setdefault("clock", ManualClock())
    async with helpers.running(**options) as (emu, http):
        yield Proxy(emu, http, clock)


async def received(stream: ObjectReceiveStream[Delivery]) -> JSON:
    """The next notifyHook POST's Task (fails after 5 s)."""
    with anyio.fail_after(5):
        delivery = await stream.receive()
    assert delivery.method == "POST"
    assert delivery.content_type == "application/json"
    return dict(delivery.body)


# --- auth -------------------------------------------------------------------------------------------


async def test_the_secret_is_required_and_never_recorded() -> None:
    """mj-api-secret, Bearer or a verbatim Authorization token pass; otherwise HTTP 401 with no body."""
    async with proxy() as p:
        body = {"prompt": "a lighthouse"}
        for headers in ({}, {"mj-api-secret": "wrong"}, {"Authorization": "Bearer wrong"}):
            assert await p.call("POST", "submit/imagine", body, headers=headers) == (401, None)
        assert await p.call("GET", "task/1/fetch", headers={}) == (401, None)
        assert await p.call("GET", "task/list", headers={"mj-api-secret": ""}) == (401, None)
        for headers in (
            SECRET,
            {"MJ-API-SECRET": EMULATOR_TOKEN},
            {"Authorization": f"Bearer {EMULATOR_TOKEN}"},
            {"Authorization": EMULATOR_TOKEN},  # trueai uses the header's value verbatim
        ):
            status, reply = await p.call("POST", "submit/imagine", body, headers=headers)
            assert status == 200 and reply["code"] == 1, reply
        assert p.emu.counters["submits"] == 4
        for request in p.emu.requests:
            assert "mj-api-secret" not in request.headers and "authorization" not in request.headers
            assert EMULATOR_TOKEN not in repr(request)


async def test_without_tokens_no_secret_is_needed() -> None:
    """Like NZ with a blank secret: an emulator with no tokens answers everyone."""
    async with proxy(tokens=()) as p:
        status, reply = await p.call("POST", "submit/imagine", {"prompt": "a fox"}, headers={})
        assert status == 200 and reply["code"] == 1


# --- imagine through its statuses --------------------------------------------------------------------


async def test_imagine_moves_through_every_status_with_rising_progress() -> None:
    """NOT_START -> SUBMITTED "0%" -> IN_PROGRESS with rising "NN%" and previews -> SUCCESS "100%"."""
    async with proxy(speed=JOB) as p:
        reply = await p.submit("imagine", {"prompt": "red fox in snow --ar 3:2", "state": "job-4b1e9c"})
        assert reply["description"] == "提交成功"
        assert reply["properties"] == {"discordInstanceId": reply["properties"]["discordInstanceId"]}
        task_id = reply["result"]
        seen: list[JSON] = []
        for _ in range(12):
            seen.append(await p.task(task_id))
            p.clock.advance(JOB / 10)
        statuses = [t["status"] for t in seen]
        first = {status: statuses.index(status) for status in reversed(statuses)}
        assert first["NOT_START"] < first["SUBMITTED"] < first["IN_PROGRESS"] < first["SUCCESS"]
        assert statuses == sorted(statuses, key=["NOT_START", "SUBMITTED", "IN_PROGRESS", "SUCCESS"].index)
        created = seen[0]
        assert created["progress"] is None and created["startTime"] is None and created["imageUrl"] is None
        assert created["finishTime"] is None and created["failReason"] is None and created["buttons"] == []
        assert created["state"] == "job-4b1e9c" and created["action"] == "IMAGINE"
        assert created["description"] == "/imagine red fox in snow --ar 3:2"
        assert created["submitTime"] == int(p.clock() * 1000) - int(JOB * 1.2 * 1000)
        submitted = seen[first["SUBMITTED"]]
        assert submitted["progress"] == "0%" and isinstance(submitted["startTime"], int)
        running = [t for t in seen if t["status"] == "IN_PROGRESS"]
        progress = [int(t["progress"].rstrip("%")) for t in running]
        assert progress == sorted(progress) and progress[0] > 0 and progress[-1] < 100
        assert len(set(progress)) >= 4
        # One preview per progress step, a new one at each.
        previews = {t["progress"]: t["imageUrl"] for t in running}
        assert len(set(previews.values())) == len(previews) == len(set(progress))
        assert all(previews[t["progress"]] == t["imageUrl"] for t in running)
        for task in running:
            assert task["properties"]["finalPrompt"] == "red fox in snow --ar 3:2"
            assert {"progressMessageId", "messageHash"} <= set(task["properties"])
            assert task["buttons"] == [] and task["failReason"] is None
        width, height = await p.png_size(running[0]["imageUrl"])
        assert width > height  # --ar 3:2
        final = seen[-1]
        assert final["status"] == "SUCCESS" and final["progress"] == "100%" and final["failReason"] == ""
        assert final["finishTime"] >= final["startTime"] >= final["submitTime"]
        assert final["state"] == "job-4b1e9c"
        assert [b["label"] for b in final["buttons"]] == GRID_LABELS
        job_hash = final["properties"]["messageHash"]
        assert all(job_hash in b["customId"] and b["type"] == 2 for b in final["buttons"])
        assert button(final, "🔄") == f"MJ::JOB::reroll::0::{job_hash}::SOLO"
        assert button(final, "U3") == f"MJ::JOB::upsample::3::{job_hash}"
        assert await p.png_size(final["imageUrl"]) == (128, 86)
        assert p.emu.counters["polls"] == 12


async def test_mode_prefixes_serve_the_same_api() -> None:
    """/mj-fast, /mj-relax and /mj-turbo serve every route, on the same tasks as /mj."""
    async with proxy() as p:
        task_id = await p.run("imagine", {"prompt": "a kite"}, prefix="/mj-relax")
        for prefix in ("", "/mj-fast", "/mj-relax", "/mj-turbo"):
            assert (await p.task(task_id, prefix=prefix))["status"] == "SUCCESS"
        status, listing = await p.call(
            "POST", "task/list-by-condition", {"ids": [task_id]}, prefix="/mj-turbo"
        )
        assert status == 200 and [t["id"] for t in listing] == [task_id]
        assert p.emu.requests[0].path == "/mj-relax/mj/submit/imagine"
        # Anything else under a prefix is not the API.
        async with p.http.post(f"{p.emu.url}/mj-slow/mj/submit/imagine", json={}, headers=SECRET) as resp:
            assert resp.status == 404


# --- buttons -----------------------------------------------------------------------------------------


async def test_buttons_drive_every_follow_up() -> None:
    """U, V and re-roll on a grid; vary, zoom, pan and the upscales on an upscale; each a new task."""
    async with proxy() as p:
        grid = await p.done("imagine", {"prompt": "a harbour at dusk"})
        upscale = await p.task((await p.press(grid, "U2"))["result"])
        assert upscale["action"] == "UPSCALE" and upscale["status"] == "SUCCESS"
        assert upscale["description"] == f"/up {grid['id']} U2" and upscale["parentId"] == grid["id"]
        assert upscale["prompt"] == "a harbour at dusk"
        assert await p.png_size(upscale["imageUrl"]) == (96, 96)
        labels = [b["label"] or b["emoji"] for b in upscale["buttons"]]
        assert labels == [
            "Upscale (Subtle)", "Upscale (Creative)", "Vary (Subtle)", "Vary (Strong)", "Vary (Region)",
            "Zoom Out 2x", "Zoom Out 1.5x", "Custom Zoom", "⬅️", "➡️", "⬆️", "⬇️",
        ]  # fmt: skip
        job_hash = upscale["properties"]["messageHash"]
        assert button(upscale, "Vary (Region)") == f"MJ::Inpaint::1::{job_hash}::SOLO"
        assert button(upscale, "Zoom Out 1.5x") == f"MJ::Outpaint::75::1::{job_hash}::SOLO"
        assert button(upscale, "Custom Zoom") == f"MJ::CustomZoom::{job_hash}"
        assert button(upscale, "⬅️") == f"MJ::JOB::pan_left::1::{job_hash}::SOLO"
        assert button(upscale, "Upscale (Subtle)") == f"MJ::JOB::upsample_v7_2x_subtle::1::{job_hash}::SOLO"
        for parent, label, action, description in (
            (grid, "V1", "VARIATION", f"/up {grid['id']} V1"),
            (grid, "🔄", "REROLL", f"/up {grid['id']} R"),
            (upscale, "Vary (Subtle)", "VARIATION", "Submit success"),
            (upscale, "Vary (Strong)", "VARIATION", "Submit success"),
            (upscale, "Zoom Out 2x", "ZOOM", "Submit success"),
            (upscale, "Zoom Out 1.5x", "ZOOM", "Submit success"),
            (upscale, "➡️", "PAN", "Submit success"),
        ):
            task = await p.task((await p.press(parent, label))["result"])
            assert (task["action"], task["status"], task["description"]) == (action, "SUCCESS", description)
            assert [b["label"] for b in task["buttons"]] == GRID_LABELS, label
            assert task["parentId"] == parent["id"]
            assert task["imageUrl"] != parent["imageUrl"]
        panned = await p.task((await p.press(upscale, "⬆️"))["result"])
        width, height = await p.png_size(panned["imageUrl"])
        assert height > width  # panning up makes the picture taller
        enlarged = await p.task((await p.press(upscale, "Upscale (Creative)"))["result"])
        assert enlarged["action"] == "UPSCALE"
        assert await p.png_size(enlarged["imageUrl"]) == (192, 192)
        assert not any(b["label"].startswith("Upscale") for b in enlarged["buttons"])
        assert len(enlarged["buttons"]) == len(upscale["buttons"]) - 2
        # Every press billed one task; a grid still offers its buttons after being used.
        assert p.emu.counters["submits"] == p.emu.counters["tasks"] == 11
        await p.press(grid, "U2")


@pytest.mark.parametrize(
    ("flag", "names", "side"),
    [
        ("--v 5.2", ["upsample_v5_2x", "upsample_v5_4x"], 384),
        ("--v 6", ["upsample_v6_2x_subtle", "upsample_v6_2x_creative"], 192),
        ("--v 6.1", ["upsample_v6r1_2x_subtle", "upsample_v6r1_2x_creative"], 192),
        ("--niji 7", ["upsample_v7_2x_subtle", "upsample_v7_2x_creative"], 192),
    ],
)
async def test_upscale_buttons_follow_the_prompt_version(flag: str, names: list[str], side: int) -> None:
    """v5 offers Upscale 2x and 4x; v6, v6.1 and v7 offer subtle and creative (2x)."""
    async with proxy() as p:
        grid = await p.done("imagine", {"prompt": f"a lantern {flag}"})
        upscale = await p.task((await p.press(grid, "U1"))["result"])
        upscales = [b for b in upscale["buttons"] if b["label"].startswith("Upscale")]
        assert [b["customId"].split("::")[2] for b in upscales] == names
        last = await p.task((await p.press(upscale, upscales[-1]["label"]))["result"])
        assert await p.png_size(last["imageUrl"]) == (side, side)


async def test_actions_are_refused_with_the_proxy_codes() -> None:
    """Unknown parent: HTTP 404 code 3; a customId the parent lacks or an unfinished parent: code 4."""
    async with proxy(speed=JOB) as p:
        status, reply = await p.call("POST", "submit/action", {"taskId": "1720000000000999", "customId": "x"})
        assert (status, reply["code"], reply["description"]) == (404, 3, "关联任务不存在或已失效")
        assert reply["result"] is None and reply["properties"] == {}
        running = await p.run("imagine", {"prompt": "a windmill"})
        refused = await p.submit("action", {"taskId": running, "customId": "MJ::JOB::upsample::1::x"}, code=4)
        assert refused["description"] == "关联任务状态错误"
        p.clock.advance(JOB)
        grid = await p.task(running)
        wrong_hash = button(grid, "U1").replace(grid["properties"]["messageHash"], "0" * 8)
        for custom_id in (wrong_hash, "MJ::Inpaint::1::x::SOLO"):
            refused = await p.submit("action", {"taskId": running, "customId": custom_id}, code=4)
            assert refused["description"] == "未知的 Action 类型"
        refused = await p.submit("action", {"taskId": running, "customId": ""}, code=4)
        assert refused["description"] == "参数错误"
        assert p.emu.counters["submits"] == 1


# --- the MODAL two-step ------------------------------------------------------------------------------


async def test_vary_region_goes_through_modal_with_a_mask() -> None:
    """Vary (Region): code 21 and a MODAL task; ``submit/modal`` with maskBase64 runs that same task."""
    async with proxy() as p:
        grid = await p.done("imagine", {"prompt": "a red barn", "state": "s1"})
        upscale = await p.task((await p.press(grid, "U1"))["result"])
        reply = await p.press(upscale, "Vary (Region)", code=21, state="job-modal")
        assert reply["description"] == "Waiting for window confirm"
        assert reply["properties"] == {"finalPrompt": "a red barn", "remix": True}
        modal = await p.task(reply["result"])
        assert (modal["status"], modal["progress"], modal["parentId"]) == ("MODAL", None, upscale["id"])
        assert modal["description"] == "Waiting for window confirm" and modal["state"] == "job-modal"
        assert modal["buttons"] == [] and modal["startTime"] is None
        assert reply["result"] not in p.emu.finish_times
        body = {"taskId": reply["result"], "prompt": "a blue barn"}
        assert await p.refusal("modal", body) == "maskBase64不能为空"
        black = mask_b64(None)
        assert await p.refusal("modal", {**body, "maskBase64": black}) == "maskBase64没有选中区域"
        assert await p.refusal("modal", {**body, "maskBase64": "%%%"}) == "maskBase64格式错误"
        status, unknown = await p.call("POST", "submit/modal", {**body, "taskId": "1720000000000999"})
        assert (status, unknown["code"]) == (404, 3)
        assert (await p.task(reply["result"]))["status"] == "MODAL"
        done = await p.submit("modal", {**body, "maskBase64": "data:image/png;base64," + mask_b64()})
        assert done["result"] == reply["result"]
        task = await p.task(reply["result"])
        assert (task["status"], task["action"], task["prompt"]) == ("SUCCESS", "VARIATION", "a blue barn")
        assert [b["label"] for b in task["buttons"]] == GRID_LABELS
        assert task["properties"]["finalPrompt"] == "a blue barn"
        assert await p.refusal("modal", {**body, "maskBase64": mask_b64()}) == "关联任务状态错误"
        # The MODAL task was billed once, when it was made; the modal only continued it.
        assert p.emu.counters["submits"] == p.emu.counters["tasks"] == 3
        assert p.emu.counters["modal_submits"] == 1
        assert reply["result"] in p.emu.finish_times


async def test_custom_zoom_needs_a_zoom_between_1_and_2() -> None:
    """Custom Zoom always asks for the modal, whose prompt must carry ``--zoom`` in [1, 2]."""
    async with proxy() as p:
        grid = await p.done("imagine", {"prompt": "a small island"})
        upscale = await p.task((await p.press(grid, "U4"))["result"])
        modal = (await p.press(upscale, "Custom Zoom", code=21))["result"]
        assert (await p.task(modal))["action"] == "ZOOM"
        for prompt in ("a small island", "a small island --zoom 3", "a small island --zoom x"):
            refused = await p.submit("modal", {"taskId": modal, "prompt": prompt}, code=4)
            assert refused["description"] == "--zoom参数错误，取值1-2"
        await p.submit("modal", {"taskId": modal, "prompt": "a small island --zoom 1.5"})
        task = await p.task(modal)
        assert (task["status"], task["action"]) == ("SUCCESS", "ZOOM")
        assert [b["label"] for b in task["buttons"]] == GRID_LABELS


async def test_remix_sends_variations_through_modal() -> None:
    """With ``enableRemix`` V1-V4, re-roll, vary and pan go through the modal with a new prompt."""
    async with proxy() as p:
        grid = await p.done("imagine", {"prompt": "a castle"})
        reply = await p.press(grid, "V3", code=21, enableRemix=True)
        assert (await p.task(reply["result"]))["status"] == "MODAL"
        await p.submit("modal", {"taskId": reply["result"], "prompt": "a castle at night"})
        task = await p.task(reply["result"])
        assert (task["status"], task["action"], task["prompt"]) == (
            "SUCCESS",
            "VARIATION",
            "a castle at night",
        )
        # A prompt typed into the modal can be one Midjourney rejects.
        rejected = (await p.press(grid, "🔄", code=21, enableRemix=True))["result"]
        await p.submit("modal", {"taskId": rejected, "prompt": "a castle -c x"})
        task = await p.task(rejected)
        assert (task["status"], task["action"], task["progress"]) == ("FAILURE", "REROLL", "")
        # Without remix, the same button runs at once; upscales never take remix.
        await p.press(grid, "V3")
        await p.press(grid, "U1", enableRemix=True)


async def test_a_modal_task_stays_modal_until_picked_up() -> None:
    """As trueai: after its modal is submitted the task shows MODAL until it starts, then SUBMITTED."""
    async with proxy(speed=JOB) as p:
        grid_id = await p.run("imagine", {"prompt": "a bridge"})
        p.clock.advance(JOB)
        upscale_id = (await p.press(await p.task(grid_id), "U1"))["result"]
        p.clock.advance(JOB)
        modal = (await p.press(await p.task(upscale_id), "Custom Zoom", code=21))["result"]
        p.clock.advance(5)
        await p.submit("modal", {"taskId": modal, "prompt": "a bridge --zoom 2"})
        assert (await p.task(modal))["status"] == "MODAL"
        p.clock.advance(1)
        task = await p.task(modal)
        assert task["status"] == "SUBMITTED" and task["progress"] == "0%"
        assert task["startTime"] - task["submitTime"] >= 5000
        p.clock.advance(JOB)
        assert (await p.task(modal))["status"] == "SUCCESS"


# --- change, describe, blend, shorten --------------------------------------------------------------


async def test_change_and_simple_change_follow_nz_rules() -> None:
    """``submit/change`` (UPSCALE/VARIATION index, REROLL) and ``simple-change``, with NZ's refusals."""
    async with proxy() as p:
        grid = await p.done("imagine", {"prompt": "a tram"})
        for body, action, description in (
            ({"action": "UPSCALE", "index": 3}, "UPSCALE", f"/up {grid['id']} U3"),
            ({"action": "VARIATION", "index": 1}, "VARIATION", f"/up {grid['id']} V1"),
            ({"action": "REROLL"}, "REROLL", f"/up {grid['id']} R"),
        ):
            task = await p.task(await p.run("change", {"taskId": grid["id"], **body, "state": "c"}))
            assert (task["action"], task["description"], task["state"]) == (action, description, "c")
            assert task["status"] == "SUCCESS"
        for content, description in (
            (f"{grid['id']} u2", "U2"),
            (f"{grid['id']} V4", "V4"),
            (f"{grid['id']} r", "R"),
        ):
            task = await p.task(await p.run("simple-change", {"content": content}))
            assert task["description"] == f"/up {grid['id']} {description}"
        for body, description in (
            ({"action": "ZOOM", "index": 1}, "action参数错误"),
            ({"action": "UPSCALE", "index": 5}, "index参数错误"),
            ({"action": "UPSCALE"}, "index参数错误"),
            ({"action": "UPSCALE", "index": True}, "index参数错误"),
        ):
            refused = await p.submit("change", {"taskId": grid["id"], **body}, code=4)
            assert refused["description"] == description
        assert await p.refusal("change", {"action": "REROLL"}) == "taskId不能为空"
        for content in ("", f"{grid['id']}", f"{grid['id']} U5", f"{grid['id']} X1", f"a {grid['id']} U1"):
            assert await p.refusal("simple-change", {"content": content}) == "content参数错误"
        # A missing parent is code 3 with HTTP 200 (NZ); an upscale cannot be changed.
        missing = await p.submit("change", {"taskId": "1", "action": "REROLL"}, code=3)
        assert missing["description"] == "关联任务不存在或已失效"
        upscale_id = await p.run("change", {"taskId": grid["id"], "action": "UPSCALE", "index": 1})
        refused = await p.submit("change", {"taskId": upscale_id, "action": "VARIATION", "index": 1}, code=4)
        assert refused["description"] == "关联任务不允许执行变化"


async def test_describe_lists_four_prompts_and_picks_one_through_modal() -> None:
    """Describe: four numbered prompts; a number button asks for the modal and then imagines that prompt."""
    async with proxy() as p:
        task = await p.done("describe", {"base64": data_url(), "state": "d"})
        assert task["action"] == "DESCRIBE" and task["description"] == f"/describe {task['id']}.png"
        text = task["properties"]["finalPrompt"]
        assert task["prompt"] == task["promptEn"] == text
        options = text.split("\n\n")
        assert [o[: len(KEYCAPS[i])] for i, o in enumerate(options)] == KEYCAPS[:4]
        assert all("--ar " in option for option in options)
        assert await p.png_size(task["imageUrl"]) == (96, 96)
        assert [b["customId"] for b in task["buttons"]] == [
            "MJ::Job::PicReader::1", "MJ::Job::PicReader::2", "MJ::Job::PicReader::3", "MJ::Job::PicReader::4",
            "MJ::Picread::Retry",
        ]  # fmt: skip
        chosen = options[1].removeprefix(KEYCAPS[1]).strip()
        reply = await p.press(task, KEYCAPS[1], code=21)
        assert reply["properties"]["finalPrompt"] == chosen
        await p.submit("modal", {"taskId": reply["result"]})  # an empty prompt takes the proposed one
        imagined = await p.task(reply["result"])
        assert (imagined["action"], imagined["prompt"], imagined["status"]) == ("IMAGINE", chosen, "SUCCESS")
        assert [b["label"] for b in imagined["buttons"]] == GRID_LABELS
        retried = await p.task((await p.press(task, "🔄"))["result"])
        assert retried["action"] == "DESCRIBE" and retried["status"] == "SUCCESS"
        assert retried["description"] == f"/describe {retried['id']}.png"
        by_link = await p.done("describe", {"link": "https://example.com/fox.png"})
        assert len(by_link["properties"]["finalPrompt"].split("\n\n")) == 4
        for body, description in (
            ({}, "base64不能为空"),
            ({"base64": " "}, "base64不能为空"),
            ({"base64": "aGVsbG8="}, "base64格式错误"),
            ({"base64": "data:image/png;base64,@@"}, "base64格式错误"),
            ({"link": "ftp://example.com/x.png"}, "link格式错误"),
        ):
            assert await p.refusal("describe", body) == description


async def test_blend_makes_a_grid_in_the_asked_dimensions() -> None:
    """Blend: 2-5 data URLs; PORTRAIT is 2:3, LANDSCAPE 3:2, SQUARE (the default) 1:1."""
    async with proxy() as p:
        task = await p.done(
            "blend", {"base64Array": [data_url(), data_url((16, 16))], "dimensions": "PORTRAIT"}
        )
        assert task["action"] == "BLEND" and task["description"] == f"/blend {task['id']} 2"
        assert task["prompt"].startswith("<https://s.mj.run/") and task["prompt"].endswith("--ar 2:3")
        assert [b["label"] for b in task["buttons"]] == GRID_LABELS
        width, height = await p.png_size(task["imageUrl"])
        assert height > width
        square = await p.done("blend", {"base64Array": [data_url()] * 5})
        assert await p.png_size(square["imageUrl"]) == (128, 128)
        for body, description in (
            ({"base64Array": [data_url()]}, "base64List参数错误"),
            ({"base64Array": [data_url()] * 6}, "base64List参数错误"),
            ({"base64Array": "x"}, "base64List参数错误"),
            ({"base64Array": [data_url(), "https://example.com/a.png"]}, "base64格式错误"),
            ({"base64Array": [data_url()] * 2, "dimensions": "WIDE"}, "dimensions参数错误"),
            ({"base64Array": [data_url()] * 2, "dimensions": None}, "dimensions参数错误"),
        ):
            assert await p.refusal("blend", body) == description
        assert p.emu.tasks_per_prompt == {"": 2}


async def test_shorten_puts_the_shorter_prompts_in_final_prompt() -> None:
    """Shorten: numbered shorter prompts in ``properties.finalPrompt``, each a button to imagine it."""
    async with proxy() as p:
        prompt = "a very detailed painting of an old lighthouse on a cliff above a stormy sea --ar 16:9"
        task = await p.done("shorten", {"prompt": prompt})
        assert (task["action"], task["prompt"], task["imageUrl"]) == ("SHORTEN", prompt, None)
        options = task["properties"]["finalPrompt"].split("\n\n")
        assert 1 <= len(options) <= 5 and all(o.endswith("--ar 16:9") for o in options)
        assert [b["customId"] for b in task["buttons"]] == [
            f"MJ::Job::PromptAnalyzer::{n}" for n in range(1, len(options) + 1)
        ]
        reply = await p.press(task, KEYCAPS[0], code=21)
        assert reply["properties"]["finalPrompt"] == options[0].removeprefix(KEYCAPS[0]).strip()
        assert p.emu.tasks_per_prompt == {prompt: 1, "": 1}


# --- failures and refusals ---------------------------------------------------------------------------


async def test_a_rejected_prompt_ends_in_failure() -> None:
    """A prompt Midjourney rejects ends FAILURE: progress "", NZ's failReason, no image, no buttons."""
    async with proxy(speed=JOB) as p:
        task_id = await p.run("imagine", {"prompt": "A cat sitting on a table -c x"})
        p.clock.advance(JOB * 0.1)
        assert (await p.task(task_id))["status"] == "SUBMITTED"
        p.clock.advance(JOB * 0.1)
        task = await p.task(task_id)
        assert (task["status"], task["progress"], task["imageUrl"]) == ("FAILURE", "", None)
        assert task["failReason"] == "[Invalid parameter] Unrecognized argument(s): `-c`, `x`"
        assert task["buttons"] == [] and isinstance(task["finishTime"], int)
        assert "finalPrompt" not in task["properties"]
        refused = await p.submit("action", {"taskId": task_id, "customId": "MJ::JOB::upsample::1::x"}, code=4)
        assert refused["description"] == "关联任务状态错误"
        zero = await p.run("imagine", {"prompt": "cat --ar 0:1"})
        p.clock.advance(JOB)
        assert (await p.task(zero))["failReason"] == "[Invalid parameter] Invalid aspect ratio"
        assert p.emu.finish_times.keys() >= {task_id, zero}


async def test_banned_words_are_refused_with_code_24() -> None:
    """A banned word is refused at once with code 24 naming it; no task is made."""
    async with proxy() as p:
        reply = await p.submit("imagine", {"prompt": "Gore on a table"}, code=24)
        assert reply == {
            "code": 24,
            "description": "可能包含敏感词",
            "result": None,
            "properties": {"promptEn": "Gore on a table", "bannedWord": "gore"},
        }
        shorten = await p.submit("shorten", {"prompt": "some gore"}, code=24)
        assert shorten["properties"]["bannedWord"] == "gore"
        await p.run("imagine", {"prompt": "gorensson, a surname"})  # whole words only
        grid = await p.done("imagine", {"prompt": "a hill"})
        remix = (await p.press(grid, "🔄", code=21, enableRemix=True))["result"]
        await p.submit("modal", {"taskId": remix, "prompt": "gore hill"}, code=24)
        assert (await p.task(remix))["status"] == "MODAL"
        assert p.emu.counters["submits"] == 3
        assert p.emu.tasks_per_prompt == {"gorensson, a surname": 1, "a hill": 1, "": 1}


async def test_bad_fields_are_refused() -> None:
    """Business validation: HTTP 200 with code 4; a body that is not JSON or a wrong type: HTTP 400, code 4."""
    async with proxy() as p:
        cases: list[tuple[JSON, str]] = [
            ({}, "prompt不能为空"),
            ({"prompt": "  "}, "prompt不能为空"),
            ({"prompt": "a", "state": "x" * 256}, "state长度不能超过255"),
            ({"prompt": "a", "notifyHook": "not a url"}, "notifyHook格式错误"),
            ({"prompt": "a", "base64Array": ["https://example.com/a.png"]}, "base64格式错误"),
            ({"prompt": "a", "base64": "Zm9v"}, "base64格式错误"),
        ]
        for body, description in cases:
            reply = await p.submit("imagine", body, code=4)
            assert reply == {"code": 4, "description": description, "result": None, "properties": {}}
        wrong_types: list[Any] = [
            {"prompt": 5},
            {"prompt": "a", "state": 1},
            {"prompt": "a", "base64Array": "x"},
            [1],
        ]
        for wrong in wrong_types:
            status, reply = await p.call("POST", "submit/imagine", wrong)
            assert status == 400 and reply["code"] == 4 and reply["result"] is None, reply
        async with p.http.post(f"{p.emu.url}/mj/submit/imagine", data=b"{", headers=SECRET) as resp:
            assert resp.status == 400 and (await resp.json())["code"] == 4
        status, reply = await p.call("GET", "submit/imagine")
        assert status == 405 and reply["code"] == 9
        assert p.emu.counters["submits"] == 0
        # An image prompt is accepted as data URLs and shown as the bot's links before the prompt.
        task = await p.done(
            "imagine", {"prompt": "in this style", "base64Array": [data_url()], "base64": data_url()}
        )
        links = task["promptEn"].split()[:2]
        assert all(link.startswith("https://s.mj.run/") for link in links)
        assert task["prompt"] == "in this style"
        assert task["properties"]["finalPrompt"] == " ".join(f"<{link}>" for link in links) + " in this style"


# --- reads -------------------------------------------------------------------------------------------


async def test_lists_find_tasks_by_id_and_by_state() -> None:
    """list-by-condition omits unknown ids; task/list has every task newest first; task/queue the live ones."""
    async with proxy(speed=JOB) as p:
        first = await p.run("imagine", {"prompt": "one", "state": "job-1"})
        p.clock.advance(JOB)
        second = await p.run("imagine", {"prompt": "two", "state": "job-2"})
        p.clock.advance(1)
        third = await p.run("imagine", {"prompt": "three"})
        status, listing = await p.call(
            "POST", "task/list-by-condition", {"ids": [first, "999", f" {second} "]}
        )
        assert status == 200 and [t["id"] for t in listing] == [second, first]
        assert [t["state"] for t in listing] == ["job-2", "job-1"]
        assert all(set(t) == TASK_KEYS for t in listing)
        nothing: list[JSON] = [{}, {"ids": []}, {"ids": None}, {"ids": ["999"]}]
        for body in nothing:
            assert await p.call("POST", "task/list-by-condition", body) == (200, [])
        status, reply = await p.call("POST", "task/list-by-condition", {"ids": "x"})
        assert status == 400 and reply["code"] == 4
        assert [t["id"] for t in (await p.call("POST", "task/list-by-ids", {"ids": [third]}))[1]] == [third]
        status, everything = await p.call("GET", "task/list")
        assert status == 200 and [t["id"] for t in everything] == [third, second, first]
        assert [t["id"] for t in everything if t["state"] == "job-1"] == [first]
        status, live = await p.call("GET", "task/queue")
        assert status == 200 and [t["id"] for t in live] == [second, third]
        assert p.emu.counters["polls"] == 9


async def test_an_unknown_task_is_an_empty_200() -> None:
    """NZ answers a fetch of an unknown id with HTTP 200 and no body (Spring's null)."""
    async with proxy() as p:
        async with p.http.get(f"{p.emu.url}/mj/task/1720000000000999/fetch", headers=SECRET) as resp:
            assert resp.status == 200 and await resp.read() == b""


# --- queueing ----------------------------------------------------------------------------------------


async def test_concurrency_limit_queues_with_22_and_refuses_with_23() -> None:
    """N tasks run per key; later ones wait in NOT_START (code 22); past the queue size, 23 and no task."""
    async with proxy(
        speed=JOB, concurrency_limit=2, proxy_queue_size=2, tokens=(EMULATOR_TOKEN, "other")
    ) as p:
        a, b = [await p.run("imagine", {"prompt": f"job {n}"}) for n in "ab"]
        c = await p.submit("imagine", {"prompt": "job c"}, code=22)
        assert c["description"] == "排队中，前面还有0个任务"
        assert c["properties"] == {
            "numberOfQueues": 0,
            "discordInstanceId": c["properties"]["discordInstanceId"],
        }
        d = await p.submit("imagine", {"prompt": "job d"}, code=22)
        assert d["properties"]["numberOfQueues"] == 1
        full = await p.submit("imagine", {"prompt": "job e"}, code=23)
        assert (full["description"], full["result"]) == ("队列已满，请稍后尝试", None)
        assert p.emu.counters["submits"] == 4 and "job e" not in p.emu.tasks_per_prompt
        assert p.emu.faults["concurrency"] == 1 and p.emu.counters["queue_rejections"] == 1
        # Another key has its own slots.
        status, other = await p.call(
            "POST", "submit/imagine", {"prompt": "x"}, headers={"mj-api-secret": "other"}
        )
        assert status == 200 and other["code"] == 1
        running: list[int] = []
        for _ in range(7):  # to a little past 2 x JOB, when the queued tasks are done
            live = (await p.call("GET", "task/queue"))[1]
            mine = [t for t in live if t["id"] in (a, b, c["result"], d["result"])]
            running.append(sum(t["status"] in ("SUBMITTED", "IN_PROGRESS") for t in mine))
            if p.clock() - 1_750_000_000 < JOB:  # both queued tasks wait for a slot
                assert {c["result"], d["result"]} <= {t["id"] for t in mine if t["status"] == "NOT_START"}
            p.clock.advance(JOB / 3)
        assert max(running) == 2
        queued = await p.task(c["result"])
        assert queued["status"] == "SUCCESS" and queued["startTime"] - queued["submitTime"] >= JOB * 1000
        # Room again: accepted at once; and without a limit nothing queues.
        await p.run("imagine", {"prompt": "job f"})
        p.emu.set_limits(concurrency_limit=None)
        for n in range(4):
            await p.run("imagine", {"prompt": f"free {n}"})
        # A modal refused for a full queue leaves its task MODAL.
        p.emu.set_limits(concurrency_limit=1)
        p.clock.advance(JOB)
        grid = await p.task(await p.run("imagine", {"prompt": "g"}))
        p.clock.advance(JOB)
        modal = (await p.press(await p.task(grid["id"]), "V1", code=21, enableRemix=True))["result"]
        for n in range(3):
            await p.submit("imagine", {"prompt": f"fill {n}"}, code=1 if n == 0 else 22)
        await p.submit("modal", {"taskId": modal, "prompt": "g2"}, code=23)
        assert (await p.task(modal))["status"] == "MODAL"


# --- notifyHook --------------------------------------------------------------------------------------


async def test_notify_hook_gets_every_step_in_order() -> None:
    """notifyHook: SUBMITTED, each progress step and SUCCESS, in order; the Task as fetch shows it."""
    async with webhook_receiver() as (hook, stream), proxy() as p:
        task_id = await p.run("imagine", {"prompt": "a comet", "state": "job-9", "notifyHook": hook})
        bodies = [await received(stream) for _ in range(8)]
        assert [b["status"] for b in bodies] == ["SUBMITTED", *["IN_PROGRESS"] * 6, "SUCCESS"]
        assert [b["progress"] for b in bodies] == ["0%", "15%", "31%", "46%", "62%", "78%", "93%", "100%"]
        assert all(b["id"] == task_id and b["state"] == "job-9" for b in bodies)
        assert all(b["properties"]["notifyHook"] == hook for b in bodies)
        assert bodies[-1] == await p.task(task_id)
        assert [c.status for c in p.emu.callbacks] == [200] * 8
        assert p.emu.counters["callbacks"] == 8


async def test_callbacks_are_never_retried_and_can_be_dropped() -> None:
    """A failed callback is not sent again; `drop_callbacks` loses some, counted in callbacks_dropped."""
    async with webhook_receiver(answers=[500]) as (hook, stream), proxy() as p:
        p.emu.drop_callbacks(1)
        await p.run("describe", {"base64": data_url(), "notifyHook": hook})
        final = await received(stream)  # SUBMITTED was dropped; the SUCCESS POST is answered 500
        assert final["status"] == "SUCCESS"
        await until(lambda: len(p.emu.callbacks) == 1)
        assert p.emu.callbacks[0].status == 500
        assert p.emu.counters["callbacks_dropped"] == 1
        await p.run("describe", {"base64": data_url(), "notifyHook": hook})
        assert [(await received(stream))["status"] for _ in range(2)] == ["SUBMITTED", "SUCCESS"]
        assert p.emu.counters["callbacks"] == 3


async def test_a_modal_task_calls_back_only_once_its_modal_is_in() -> None:
    """No callback for a MODAL task's creation; after the modal, SUBMITTED onwards."""
    async with webhook_receiver() as (hook, stream), proxy() as p:
        grid = await p.done("imagine", {"prompt": "a dune"})
        upscale = await p.task((await p.press(grid, "U1"))["result"])
        modal = (await p.press(upscale, "Vary (Region)", code=21, notifyHook=hook))["result"]
        assert p.emu.counters["callbacks"] == 0
        await p.submit("modal", {"taskId": modal, "maskBase64": mask_b64()})
        bodies = [await received(stream) for _ in range(8)]
        assert bodies[0]["status"] == "SUBMITTED" and bodies[-1]["status"] == "SUCCESS"
        assert {b["id"] for b in bodies} == {modal}


# --- faults and counters -----------------------------------------------------------------------------


async def test_the_fault_header_works_on_proxy_routes() -> None:
    """``phase=after`` creates the task the client never hears of (found by state); ``before`` creates none."""
    async with proxy() as p:
        headers = {**SECRET, "x-mjasync-fault": "500; phase=after"}
        status, reply = await p.call(
            "POST", "submit/imagine", {"prompt": "lost", "state": "job-lost"}, headers=headers
        )
        assert status == 500 and reply["code"] == 9
        everything = (await p.call("GET", "task/list"))[1]
        lost = [t for t in everything if t["state"] == "job-lost"]
        assert len(lost) == 1 and lost[0]["status"] == "SUCCESS"
        assert p.emu.fault_log[-1].task_id == lost[0]["id"]
        status, reply = await p.call(
            "POST",
            "submit/imagine",
            {"prompt": "early"},
            headers={**SECRET, "x-mjasync-fault": "429; retry-after=3"},
        )
        assert status == 429 and reply["code"] == 9
        async with p.http.post(
            f"{p.emu.url}/mj/submit/imagine",
            json={"prompt": "gw"},
            headers={**SECRET, "x-mjasync-fault": "502"},
        ) as resp:
            assert resp.status == 502 and resp.content_type == "text/html"
        with pytest.raises(aiohttp.ClientError):
            await p.call(
                "POST", "submit/imagine", {"prompt": "reset"}, headers={**SECRET, "x-mjasync-fault": "reset"}
            )
        task_id = lost[0]["id"]
        status, _ = await p.call("GET", f"task/{task_id}/fetch", headers={**SECRET, "x-mjasync-fault": "503"})
        assert status == 503
        grid = await p.task(task_id)
        modal_headers = {**SECRET, "x-mjasync-fault": "504; phase=after"}
        status, _ = await p.call(
            "POST",
            "submit/action",
            {"taskId": task_id, "customId": button(grid, "U1")},
            headers=modal_headers,
        )
        assert status == 504
        assert p.emu.tasks_per_prompt == {"lost": 1, "": 1}
        assert p.emu.faults["500"] == p.emu.faults["429"] == p.emu.faults["502"] == p.emu.faults["reset"] == 1


@pytest.mark.parametrize("scope", ["submits", "fetch"])
async def test_a_fault_plan_scopes_proxy_submits_and_lookups(scope: str) -> None:
    """FaultPlan's ``submits`` and ``fetch`` scopes know the proxy's paths (fetch ids are in the path)."""
    plan = FaultPlan(rate=1.0, kinds=["503"], scope=scope)  # type: ignore[arg-type]
    async with proxy(faults=plan) as p:
        status, _ = await p.call("POST", "submit/imagine", {"prompt": "x"})
        assert status == (503 if scope == "submits" else 200)
        for method, path, body in (
            ("GET", "task/1720000000000999/fetch", None),
            ("POST", "task/list-by-condition", {"ids": []}),
            ("GET", "task/list", None),
        ):
            status, _ = await p.call(method, path, body, prefix="/mj-fast")
            assert status == (503 if scope == "fetch" else 200), path
        assert p.emu.counters["polls"] == 3


async def test_counters_and_finish_times_include_proxy_tasks() -> None:
    """submits, tasks, tasks_per_prompt and finish_times count proxy tasks as they do the others'."""
    async with proxy(speed=JOB) as p:
        first = await p.run("imagine", {"prompt": "same"})
        await p.run("imagine", {"prompt": "same"})
        assert p.emu.finish_times == {}
        p.clock.advance(JOB)
        assert p.emu.finish_times[first] == p.clock()
        async with p.http.get(f"{p.emu.url}/_emulator/counters") as resp:
            snapshot = await resp.json()
        assert snapshot["counters"]["submits"] == snapshot["counters"]["tasks"] == 2
        assert snapshot["tasks_per_prompt"] == {"same": 2}
        # Proxy submits are not held open, so they never count as open submits.
        assert p.emu.open_submits == {"now": 0, "seconds": 0.0}


async def test_goapi_keeps_its_mj_v2_paths() -> None:
    """``/mj/v2/*`` still reaches GoAPI (its key and error shape), inside the proxy's ``/mj/``."""
    async with proxy() as p:
        async with p.http.post(f"{p.emu.url}/mj/v2/fetch", json={"task_id": "nope"}) as resp:
            assert resp.status == 400
            assert set(await resp.json()) == {"task_id", "status", "message"}


def test_every_proxy_submit_route_is_a_submit_path() -> None:
    """The fault injector's `PROXY_SUBMIT_PATHS` are exactly the emulator's submit routes."""
    from mjasync.emulator import _proxy
    from mjasync.emulator._faults import FaultInjector
    from mjasync.emulator._store import Settings, Store

    spec = _proxy.provider(FaultInjector(Store(Settings()), None, None))
    submits = {path for path, _ in spec.routes if "/submit/" in path}
    assert submits == PROXY_SUBMIT_PATHS
    assert all(path.startswith(spec.prefix) for path, _ in [*spec.routes, *spec.get_routes])
    with pytest.raises(ValueError, match="proxy_queue_size"):
        Emulator(proxy_queue_size=-1)
