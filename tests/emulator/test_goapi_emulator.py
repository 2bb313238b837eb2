"""The GoAPI v2 side of the emulator, exercised over real sockets with a raw aiohttp client (never mjasync's)."""

from __future__ import annotations

import functools
import itertools
import uuid
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import anyio
from anyio.abc import ObjectReceiveStream

from mjasync.emulator import Emulator, ImageSizes, ManualClock
from mjasync.testing import EMULATOR_TOKEN

from .. import helpers
from ..helpers import (
    Delivery,
    acedata_headers,
    fetch_png,
    free_port,
    mask_b64,
    post_acedata,
    until,
    webhook_receiver,
)

GRID_ACTIONS = [
    "reroll", "upscale1", "upscale2", "upscale3", "upscale4",
    "variation1", "variation2", "variation3", "variation4",
]  # fmt: skip
UPSCALED_ACTIONS = [
    "high_variation", "low_variation", "inpaint", "upscale_2x", "upscale_4x",
    "outpaint_1.5x", "outpaint_2x", "outpaint_custom", "outpaint_1x",
    "pan_up", "pan_down", "pan_left", "pan_right",
]  # fmt: skip
TASK_KEYS = {"task_id", "status", "process_time", "retry_count", "meta", "task_result"}
META_KEYS = {"created_at", "started_at", "ended_at", "process_mode", "task_request", "task_param"}
META_KEYS |= {"task_type", "origin_task_id"}
RESULT_KEYS = {
    "discord_image_url", "image_url", "image_urls", "permanent_url", "task_progress",
    "intermediate_image_urls", "image_id", "seed", "result_message_id", "quota_used", "credit",
    "message", "error_messages", "need_retry", "actions",
}  # fmt: skip
SMALL = ImageSizes(grid=128, upscale=96, max_side=512)
Hook = tuple[str | None, dict[str, Any]]


def running(**options: Any) -> AbstractAsyncContextManager[tuple[Emulator, aiohttp.ClientSession]]:
    """Run an emulator on 127.0.0.1 (small images unless told otherwise) and a plain aiohttp session."""
    options.setdefault("image_sizes", SMALL)
    return helpers.running(**options)


async def call(
    session: aiohttp.ClientSession, emu: Emulator, path: str, body: Any, *, key: str | None = EMULATOR_TOKEN
) -> tuple[int, Any]:
    """POST *body* to ``/mj/v2/<path>`` with ``X-API-KEY`` and return ``(status, parsed JSON)``."""
    headers = {} if key is None else {"X-API-KEY": key}
    async with session.post(f"{emu.url}/mj/v2/{path}", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def submit(session: aiohttp.ClientSession, emu: Emulator, path: str, body: dict[str, Any]) -> str:
    """Submit a job, check the documented submit response, and return its task_id."""
    status, answer = await call(session, emu, path, body)
    assert status == 200, answer
    assert answer["status"] == "success"
    assert answer["message"] == ""
    assert set(answer) == {"task_id", "status", "message"}
    return str(uuid.UUID(answer["task_id"]))


async def fetch(session: aiohttp.ClientSession, emu: Emulator, task_id: str) -> dict[str, Any]:
    """Fetch a task object without a key (as many GoAPI clients do) and check its documented keys."""
    status, task = await call(session, emu, "fetch", {"task_id": task_id}, key=None)
    assert status == 200, task
    assert set(task) == TASK_KEYS
    assert set(task["meta"]) >= META_KEYS
    assert set(task["task_result"]) >= RESULT_KEYS
    assert task["task_id"] == task_id
    return dict(task)


async def finished(session: aiohttp.ClientSession, emu: Emulator, path: str, body: dict[str, Any]) -> Any:
    """Submit a job to a speed-0 emulator and return its task object, which must be finished."""
    task = await fetch(session, emu, await submit(session, emu, path, body))
    assert task["status"] == "finished", task
    assert task["task_result"]["task_progress"] == 100
    assert task["task_result"]["error_messages"] == []
    return task


async def png_size(session: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    """GET a PNG from the emulator's CDN (no key) and return its pixel size."""
    with await fetch_png(session, url) as img:
        return img.size


def assert_error(status: int, body: Any, expected: int, fragment: str = "") -> None:
    """GoAPI's error body: the submit response's keys, status "failed" and a message."""
    assert status == expected, body
    assert set(body) == {"task_id", "status", "message"}
    assert body["task_id"] == ""
    assert body["status"] == "failed"
    assert fragment in body["message"], body["message"]


async def received(stream: ObjectReceiveStream[Delivery]) -> Hook:
    """The next webhook POST as (x-webhook-secret header, JSON body) (fails after 5 s)."""
    with anyio.fail_after(5):
        delivery = await stream.receive()
    return delivery.headers.get("x-webhook-secret"), delivery.body


# --- the seed-003 flow ------------------------------------------------------------------------------


async def test_seed_flow_every_endpoint_finishes_with_real_pngs() -> None:
    """imagine, upscale, variation (1-4, high, low), reroll, inpaint, outpaint, pan, describe, blend, seed."""
    async with running() as (emu, session):
        grid = await finished(
            session,
            emu,
            "imagine",
            {
                "prompt": "a cute cat",
                "aspect_ratio": "4:3",
                "process_mode": "mixed",
                "webhook_endpoint": "",
                "webhook_secret": "",
            },
        )
        result = grid["task_result"]
        assert grid["meta"]["task_type"] == "imagine"
        assert grid["meta"]["origin_task_id"] == ""
        assert grid["meta"]["process_mode"] == "relax"  # mixed, no mode in the prompt
        assert grid["meta"]["task_param"]["prompt"] == "a cute cat"
        assert result["actions"] == GRID_ACTIONS
        assert result["quota_used"] == 3
        assert result["image_url"] == result["discord_image_url"]
        assert uuid.UUID(result["image_id"])
        assert result["result_message_id"].isdigit()
        assert await png_size(session, result["image_url"]) == (128, 96)
        assert len(result["image_urls"]) == 4
        for url in result["image_urls"]:
            assert await png_size(session, url) == (64, 48)
        assert len(result["intermediate_image_urls"]) == 4
        assert await png_size(session, result["intermediate_image_urls"][0]) == (64, 48)

        up = await finished(session, emu, "upscale", {"origin_task_id": grid["task_id"], "index": "1"})
        assert up["meta"]["task_type"] == "upscale"
        assert up["meta"]["origin_task_id"] == grid["task_id"]
        assert up["meta"]["process_mode"] == "relax"  # inherited from the parent
        assert up["task_result"]["actions"] == UPSCALED_ACTIONS  # 4:3, so Make Square is offered
        assert up["task_result"]["image_urls"] == []
        assert up["task_result"]["intermediate_image_urls"] == []
        assert await png_size(session, up["task_result"]["image_url"]) == (96, 72)
        big = await finished(session, emu, "upscale", {"origin_task_id": up["task_id"], "index": "2x"})
        assert big["task_result"]["actions"] == []
        assert big["task_result"]["quota_used"] == 9
        assert await png_size(session, big["task_result"]["image_url"]) == (192, 144)

        body = {"origin_task_id": grid["task_id"], "index": "2", "prompt": "a cute cat with a hat"}
        var = await finished(session, emu, "variation", {**body, "aspect_ratio": "3:4"})
        assert var["task_result"]["actions"] == GRID_ACTIONS
        assert var["meta"]["task_param"]["prompt"] == "a cute cat with a hat"
        assert await png_size(session, var["task_result"]["image_url"]) == (96, 128)
        for index in ("high_variation", "low_variation"):
            vary = await finished(
                session, emu, "variation", {"origin_task_id": up["task_id"], "index": index}
            )
            assert vary["meta"]["task_param"]["prompt"] == "a cute cat"  # the parent's prompt
            assert await png_size(session, vary["task_result"]["image_url"]) == (128, 96)

        body = {
            "origin_task_id": grid["task_id"],
            "prompt": "a cute cartoon blue cat",
            "aspect_ratio": "16:9",
        }
        rerolled = await finished(session, emu, "reroll", body)
        assert rerolled["task_result"]["actions"] == GRID_ACTIONS
        assert await png_size(session, rerolled["task_result"]["image_url"]) == (128, 72)

        body = {"origin_task_id": up["task_id"], "prompt": "mirror", "skip_prompt_check": False}
        painted = await finished(session, emu, "inpaint", {**body, "mask": mask_b64()})
        assert painted["meta"]["task_type"] == "inpaint"
        assert await png_size(session, painted["task_result"]["image_url"]) == (128, 96)

        body = {"origin_task_id": up["task_id"], "zoom_ratio": "2", "aspect_ratio": "4:3", "prompt": "a hat"}
        zoomed = await finished(session, emu, "outpaint", body)
        assert await png_size(session, zoomed["task_result"]["image_url"]) == (128, 96)
        square = await finished(
            session, emu, "outpaint", {"origin_task_id": up["task_id"], "zoom_ratio": "1"}
        )
        assert await png_size(session, square["task_result"]["image_url"]) == (128, 128)
        body = {"origin_task_id": up["task_id"], "zoom_ratio": "1.25"}
        custom = await finished(session, emu, "outpaint", body)
        assert custom["meta"]["task_param"]["zoom_ratio"] == "1.25"
        assert await png_size(session, custom["task_result"]["image_url"]) == (128, 96)

        panned = await finished(session, emu, "pan", {"origin_task_id": up["task_id"], "direction": "left"})
        assert panned["meta"]["task_param"]["direction"] == "left"
        assert await png_size(session, panned["task_result"]["image_url"]) == (128, 64)  # 4:3 widened 1.5x

        described = await finished(session, emu, "describe", {"image_url": "https://sample.png"})
        lines = described["task_result"]["message"].split("\n\n")
        assert [line[:3] for line in lines] == [
            "1\ufe0f\u20e3",
            "2\ufe0f\u20e3",
            "3\ufe0f\u20e3",
            "4\ufe0f\u20e3",
        ]
        assert all("--ar " in line for line in lines)
        assert described["task_result"]["description"] == described["task_result"]["message"]
        assert described["task_result"]["image_url"] == ""

        urls = ["https://a.example/1.png", "https://a.example/2.png"]
        blended = await finished(session, emu, "blend", {"image_urls": urls, "dimension": "portrait"})
        assert blended["task_result"]["actions"] == GRID_ACTIONS
        assert await png_size(session, blended["task_result"]["image_url"]) == (86, 128)

        seeded = await finished(session, emu, "seed", {"task_id": grid["task_id"]})
        assert seeded["task_result"]["seed"].isdigit()
        assert seeded["task_result"]["quota_used"] == 1
        again = await finished(session, emu, "seed", {"task_id": grid["task_id"]})
        assert again["task_result"]["seed"] == seeded["task_result"]["seed"]

        assert emu.counters["submits"] == emu.counters["tasks"] == 16
        assert emu.tasks_per_prompt["a cute cat"] == 1
        assert emu.counters["requests"] == 32  # a fetch per submit


async def test_states_follow_the_clock_in_documented_order() -> None:
    """pending, staged, processing with rising task_progress and previews, then finished."""
    created = 1_750_000_000
    clock = ManualClock(start=created)
    async with running(speed=10.0, clock=clock) as (emu, session):
        task_id = await submit(session, emu, "imagine", {"prompt": "dawn", "process_mode": "fast"})
        snapshots = [await fetch(session, emu, task_id)]
        for step in (1.0, 1.0, 2.2, 2.2, 2.2, 1.5):
            clock.advance(step)
            snapshots.append(await fetch(session, emu, task_id))
            if snapshots[-1]["status"] == "processing":
                status, body = await call(session, emu, "upscale", {"origin_task_id": task_id, "index": "1"})
                assert_error(status, body, 400, "derive from origin task:")
        assert [s["status"] for s in snapshots] == ["pending", "staged", *["processing"] * 4, "finished"]
        results = [s["task_result"] for s in snapshots]
        assert [r["task_progress"] for r in results] == [0, 0, 20, 40, 60, 80, 100]
        assert [len(r["intermediate_image_urls"]) for r in results] == [0, 0, 1, 2, 3, 4, 4]
        for earlier, later in itertools.pairwise(results):
            prefix = later["intermediate_image_urls"][: len(earlier["intermediate_image_urls"])]
            assert prefix == earlier["intermediate_image_urls"]
        for r in results[2:6]:
            assert r["image_url"] == r["intermediate_image_urls"][-1]  # the newest preview
            assert r["actions"] == []
            assert r["image_urls"] == []
        assert results[0]["image_url"] == results[1]["image_url"] == ""
        assert results[-1]["image_url"] not in results[-1]["intermediate_image_urls"]
        assert results[-1]["actions"] == GRID_ACTIONS
        metas = [s["meta"] for s in snapshots]
        assert {m["created_at"] for m in metas} == {created}
        assert [m["started_at"] for m in metas] == [0, 0, *[created + 1] * 5]
        assert [m["ended_at"] for m in metas] == [0] * 6 + [created + 10]
        assert [s["process_time"] for s in snapshots] == [0] * 6 + [9]  # ended_at - started_at
        assert [r["quota_used"] for r in results] == [0] * 6 + [9]
        # A preview is a real, blurry, smaller PNG.
        assert await png_size(session, results[2]["image_url"]) == (64, 64)


async def test_multi_fetch_returns_null_for_unknown_ids() -> None:
    """multi_fetch: {"data": {id: task or null}} in the order asked, the same objects fetch shows."""
    async with running() as (emu, session):
        first = await submit(session, emu, "imagine", {"prompt": "one"})
        second = await submit(session, emu, "imagine", {"prompt": "two"})
        unknown = str(uuid.uuid4())
        status, body = await call(
            session, emu, "multi_fetch", {"task_ids": [second, unknown, first]}, key=None
        )
        assert status == 200
        assert list(body) == ["data"]
        assert list(body["data"]) == [second, unknown, first]
        assert body["data"][unknown] is None
        assert body["data"][first] == await fetch(session, emu, first)
        assert body["data"][second]["meta"]["task_param"]["prompt"] == "two"
        for bad in ({}, {"task_ids": []}, {"task_ids": "x"}, {"task_ids": [1]}):
            assert_error(*await call(session, emu, "multi_fetch", bad), 400, "task_ids")


# --- errors ---------------------------------------------------------------------------------------


async def test_missing_or_wrong_key_is_401_and_fetch_needs_none() -> None:
    """No or a wrong X-API-KEY: 401 (any header case); fetch/multi_fetch work keyless but refuse a wrong key."""
    async with running() as (emu, session):
        for key in (None, "wrong-key", ""):
            status, body = await call(session, emu, "imagine", {"prompt": "a cat"}, key=key)
            assert_error(status, body, 401, "The API key is incorrect")
        bearer = acedata_headers(accept=None)
        async with session.post(f"{emu.url}/mj/v2/imagine", json={"prompt": "a"}, headers=bearer) as resp:
            assert resp.status == 401
        assert emu.counters["tasks"] == 0
        for header in ("x-api-key", "X-Api-Key"):
            async with session.post(
                f"{emu.url}/mj/v2/imagine", json={"prompt": "a cat"}, headers={header: EMULATOR_TOKEN}
            ) as resp:
                assert resp.status == 200
                task_id = (await resp.json())["task_id"]
        assert (await fetch(session, emu, task_id))["status"] == "finished"
        assert (await call(session, emu, "fetch", {"task_id": task_id}))[0] == 200  # with the key too
        assert_error(*await call(session, emu, "fetch", {"task_id": task_id}, key="wrong"), 401)
        assert_error(*await call(session, emu, "multi_fetch", {"task_ids": [task_id]}, key="wrong"), 401)
        assert all("x-api-key" not in r.headers for r in emu.requests), "the key is never recorded"


async def test_bad_requests_get_400() -> None:
    """Bad fields, unknown parents, bad indexes and actions the parent lacks: GoAPI's 400 body."""
    async with running() as (emu, session):
        grid = await submit(session, emu, "imagine", {"prompt": "a square cat"})
        up = await submit(session, emu, "upscale", {"origin_task_id": grid, "index": "3"})
        unknown = str(uuid.uuid4())
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("imagine", {}, "prompt is required"),
            ("imagine", {"prompt": "  "}, "prompt is required"),
            ("imagine", {"prompt": "a", "aspect_ratio": "wide"}, "aspect_ratio"),
            ("imagine", {"prompt": "a", "process_mode": "slow"}, "process_mode"),
            ("imagine", {"prompt": "a", "webhook_endpoint": "ftp://x"}, "webhook_endpoint"),
            ("imagine", {"prompt": "a", "notify_progress": "often"}, "notify_progress"),
            ("upscale", {"origin_task_id": unknown, "index": "1"}, "derive from origin task: task"),
            ("upscale", {"index": "1"}, "origin_task_id is required"),
            ("upscale", {"origin_task_id": grid}, "index is required"),
            ("upscale", {"origin_task_id": grid, "index": "5"}, "invalid index"),
            ("upscale", {"origin_task_id": grid, "index": 1}, "invalid index"),
            ("upscale", {"origin_task_id": grid, "index": "2x"}, "`upscale_2x` is not available"),
            ("upscale", {"origin_task_id": up, "index": "1"}, "`upscale1` is not available"),
            ("variation", {"origin_task_id": grid, "index": "high_variation"}, "not available"),
            ("variation", {"origin_task_id": up, "index": "1"}, "`variation1` is not available"),
            ("variation", {"origin_task_id": grid, "index": "strong"}, "invalid index"),
            ("reroll", {"origin_task_id": up}, "`reroll` is not available"),
            ("inpaint", {"origin_task_id": grid, "mask": mask_b64()}, "`inpaint` is not available"),
            ("inpaint", {"origin_task_id": up}, "mask is required"),
            ("inpaint", {"origin_task_id": up, "mask": "not base64!"}, "base64"),
            ("inpaint", {"origin_task_id": up, "mask": mask_b64(None)}, "no white area"),
            ("outpaint", {"origin_task_id": up}, "zoom_ratio is required"),
            ("outpaint", {"origin_task_id": up, "zoom_ratio": "3"}, "invalid zoom_ratio"),
            ("outpaint", {"origin_task_id": up, "zoom_ratio": 2}, "invalid zoom_ratio"),
            ("outpaint", {"origin_task_id": up, "zoom_ratio": "1"}, "`outpaint_1x` is not available"),
            ("outpaint", {"origin_task_id": grid, "zoom_ratio": "2"}, "not available"),
            ("pan", {"origin_task_id": up, "direction": "north"}, "invalid direction"),
            ("pan", {"origin_task_id": grid, "direction": "up"}, "`pan_up` is not available"),
            ("blend", {"image_urls": ["https://a.example/1.png"]}, "2 to 5"),
            ("blend", {"image_urls": [f"https://a.example/{i}.png" for i in range(6)]}, "2 to 5"),
            ("blend", {"image_urls": ["https://a.example/1.png", "nope"]}, "http(s) URLs"),
            (
                "blend",
                {"image_urls": ["https://a/1.png", "https://a/2.png"], "dimension": "wide"},
                "dimension",
            ),
            ("describe", {}, "image_url is required"),
            ("describe", {"image_url": "file:///etc/passwd"}, "http(s) URL"),
            ("seed", {"task_id": unknown}, "not found"),
            ("fetch", {"task_id": unknown}, "not found"),
            ("fetch", {}, "task_id is required"),
        ]
        for path, body, fragment in cases:
            status, answer = await call(session, emu, path, body)
            assert_error(status, answer, 400, fragment)
        headers = {"X-API-KEY": EMULATOR_TOKEN, "Content-Type": "application/json"}
        async with session.post(f"{emu.url}/mj/v2/imagine", data=b"{not json", headers=headers) as resp:
            assert_error(resp.status, await resp.json(), 400)
        assert_error(*await call(session, emu, "cancel", {"task_id": grid}), 404)
        assert emu.counters["submits"] == 2, "no refused request is billed"


async def test_banned_word_fails_the_task_with_a_moderation_message() -> None:
    """A banned word: the submit succeeds, then the task goes pending, staged, failed with error_messages."""
    clock = ManualClock()
    async with running(speed=10.0, clock=clock, banned_words=("gore",)) as (emu, session):
        checked = await submit(session, emu, "imagine", {"prompt": "so much GORE here"})
        skipped = await submit(session, emu, "imagine", {"prompt": "gore", "skip_prompt_check": True})
        assert (await fetch(session, emu, checked))["status"] == "pending"
        clock.advance(1.0)
        assert (await fetch(session, emu, checked))["status"] == "staged"
        clock.advance(0.6)
        task = await fetch(session, emu, checked)
        assert task["status"] == "failed"
        assert task["task_result"]["error_messages"] == ["Banned Prompt: gore"]
        assert task["task_result"]["image_url"] == ""
        assert task["task_result"]["quota_used"] == 0
        assert task["meta"]["ended_at"] == task["meta"]["started_at"] > 0
        clock.advance(100)
        assert (await fetch(session, emu, checked))["status"] == "failed"  # for good
        moderated = (await fetch(session, emu, skipped))["task_result"]["error_messages"]
        assert moderated == [
            "Sorry! Our AI moderators feel your prompt might be against our community standards."
        ]
        status, body = await call(session, emu, "upscale", {"origin_task_id": checked, "index": "1"})
        assert_error(status, body, 400, "is failed, not finished")
        assert emu.counters["submits"] == 2
        assert emu.tasks_per_prompt == {"so much GORE here": 1, "gore": 1}


async def test_modes_and_quota_follow_the_docs() -> None:
    """process_mode wins, then the in-prompt mode, else relax; follow-ups inherit; quota per the price table."""
    async with running() as (emu, session):
        cases = [
            ({"prompt": "a --fast"}, "fast", 9),
            ({"prompt": "a --turbo", "process_mode": "mixed"}, "turbo", 20),
            ({"prompt": "a --fast", "process_mode": "relax"}, "relax", 3),
            ({"prompt": "a"}, "relax", 3),
        ]
        for body, mode, quota in cases:
            task = await finished(session, emu, "imagine", body)
            assert (task["meta"]["process_mode"], task["task_result"]["quota_used"]) == (mode, quota)
        turbo = await finished(session, emu, "imagine", {"prompt": "b", "process_mode": "turbo"})
        up = await finished(session, emu, "upscale", {"origin_task_id": turbo["task_id"], "index": "4"})
        assert (up["meta"]["process_mode"], up["task_result"]["quota_used"]) == ("turbo", 3)
        big = await finished(session, emu, "upscale", {"origin_task_id": up["task_id"], "index": "4x"})
        assert (big["meta"]["process_mode"], big["task_result"]["quota_used"]) == ("turbo", 120)
        assert await png_size(session, big["task_result"]["image_url"]) == (384, 384)
        assert "outpaint_1x" not in up["task_result"]["actions"], "no Make Square for a square image"
        urls = ["https://a.example/1.png", "https://a.example/2.png", "https://a.example/3.png"]
        blended = await finished(session, emu, "blend", {"image_urls": urls, "process_mode": "fast"})
        assert (blended["meta"]["process_mode"], blended["task_result"]["quota_used"]) == ("fast", 9)
        assert await png_size(session, blended["task_result"]["image_url"]) == (128, 128)  # square default


# --- webhooks -------------------------------------------------------------------------------------


async def test_webhook_posts_the_task_object_with_the_secret() -> None:
    """webhook_endpoint: one POST of the finished (or failed) task object, x-webhook-secret when given."""
    async with webhook_receiver() as (hook, posts), running() as (emu, session):
        body = {"prompt": "a fox", "webhook_endpoint": hook, "webhook_secret": "s3cret"}
        task_id = await submit(session, emu, "imagine", body)
        secret, posted = await received(posts)
        assert secret == "s3cret"
        assert posted == await fetch(session, emu, task_id)  # unwrapped: the fetch body itself
        assert posted["status"] == "finished", "no progress webhooks without notify_progress"
        assert "webhook_secret" not in posted["meta"]["task_request"]
        assert posted["meta"]["task_request"]["webhook_endpoint"] == hook

        failed_id = await submit(session, emu, "imagine", {"prompt": "gore", "webhook_endpoint": hook})
        secret, posted = await received(posts)
        assert secret is None
        assert (posted["task_id"], posted["status"]) == (failed_id, "failed")
        assert posted["task_result"]["error_messages"] == ["Banned Prompt: gore"]
        await until(lambda: len(emu.callbacks) == 2)
        assert [(c.url, c.status, c.error) for c in emu.callbacks] == [(hook, 200, None)] * 2
        assert emu.counters["callbacks"] == 2


async def test_notify_progress_posts_every_progress_change() -> None:
    """notify_progress: a POST per processing phase (task_progress rising), then the finished one."""
    async with webhook_receiver() as (hook, posts), running() as (emu, session):
        body = {"prompt": "a fox", "webhook_endpoint": hook, "webhook_secret": "k", "notify_progress": True}
        await submit(session, emu, "imagine", body)
        hooks = [await received(posts) for _ in range(5)]
        assert {secret for secret, _ in hooks} == {"k"}
        bodies = [posted for _, posted in hooks]
        assert [b["status"] for b in bodies] == ["processing"] * 4 + ["finished"]
        assert [b["task_result"]["task_progress"] for b in bodies] == [20, 40, 60, 80, 100]
        assert [len(b["task_result"]["intermediate_image_urls"]) for b in bodies] == [1, 2, 3, 4, 4]
        await until(lambda: len(emu.callbacks) == 5)
        assert emu.counters["callbacks"] == 5


async def test_unacknowledged_webhook_is_retried_on_the_clock() -> None:
    """A 500 from the receiver: the same body is POSTed again 5 clock seconds later."""
    clock = ManualClock()
    async with webhook_receiver([500]) as (hook, posts), running(clock=clock) as (emu, session):
        await submit(session, emu, "imagine", {"prompt": "a fox", "webhook_endpoint": hook})
        _, first = await received(posts)
        clock.advance(5)
        _, second = await received(posts)
        assert second == first
        await until(lambda: len(emu.callbacks) == 2)
        assert [c.status for c in emu.callbacks] == [500, 200]
        assert emu.counters["callbacks"] == 2
        assert emu.counters.get("webhooks_dropped", 0) == 0


async def test_webhook_gives_up_after_three_attempts() -> None:
    """Three unacknowledged attempts (500s, or no listener at all), then the webhook is dropped."""
    clock = ManualClock()
    async with webhook_receiver([500] * 4) as (hook, posts), running(clock=clock) as (emu, session):
        await submit(session, emu, "imagine", {"prompt": "a fox", "webhook_endpoint": hook})
        for attempt in range(3):
            await received(posts)
            if attempt < 2:
                clock.advance(5)
        await until(lambda: emu.counters.get("webhooks_dropped", 0) == 1)
        assert [c.status for c in emu.callbacks] == [500] * 3

        emu.reset_records()
        # A port nobody listens on: connection errors count as unacknowledged too.
        dead = f"http://127.0.0.1:{free_port()}/hook"
        await submit(session, emu, "imagine", {"prompt": "a fox", "webhook_endpoint": dead})
        for attempts in (1, 2, 3):
            await until(functools.partial(has_callbacks, emu, attempts))
            clock.advance(5)
        await until(lambda: emu.counters.get("webhooks_dropped", 0) == 1)
        assert [c.status for c in emu.callbacks] == [None] * 3
        assert all(c.error for c in emu.callbacks)
        assert emu.counters["callback_errors"] == 3


def has_callbacks(emu: Emulator, count: int) -> bool:
    """Whether the emulator has recorded *count* callback POSTs."""
    return len(emu.callbacks) == count


# --- both providers on one emulator -----------------------------------------------------------------


async def test_acedata_and_goapi_coexist_without_double_billing(mj_emulator: Emulator) -> None:
    """One emulator serves both APIs; each bills once, keeps its own task ids and refuses the other's key."""
    emu = mj_emulator
    async with aiohttp.ClientSession() as session:
        async with post_acedata(
            session, emu, "/midjourney/imagine", {"prompt": "a fox", "async": True}, accept=None
        ) as resp:
            assert resp.status == 200
            ace_id = (await resp.json())["task_id"]
        go_id = await submit(session, emu, "imagine", {"prompt": "a fox"})
        assert (await fetch(session, emu, go_id))["status"] == "finished"
        assert emu.counters["submits"] == 2
        assert emu.counters["tasks"] == 2
        assert emu.tasks_per_prompt == {"a fox": 2}

        assert_error(*await call(session, emu, "fetch", {"task_id": ace_id}), 400, "not found")
        retrieve = {"action": "retrieve", "id": go_id}
        async with post_acedata(session, emu, "/midjourney/tasks", retrieve, accept=None) as resp:
            assert resp.status == 400
            assert (await resp.json())["success"] is False
        async with session.post(
            f"{emu.url}/midjourney/imagine", json={"prompt": "x"}, headers={"X-API-KEY": EMULATOR_TOKEN}
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "invalid_token"  # AceData's own shape
        assert emu.counters["submits"] == 2
