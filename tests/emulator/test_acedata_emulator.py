"""The AceData emulator itself, exercised over real sockets with a raw aiohttp client (never mjasync's)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from mjasync.emulator import Emulator, ImageSizes, ManualClock
from mjasync.testing import EMULATOR_TOKEN

from ..helpers import ACEDATA_GRID_ACTIONS as GRID_ACTIONS
from ..helpers import ACEDATA_UPSCALED_ACTIONS as UPSCALED_ACTIONS
from ..helpers import (
    NDJSON,
    acedata_headers,
    acedata_json,
    fetch_png,
    mask_b64,
    post_acedata,
    running,
    until,
    webhook_receiver,
)

pytestmark = pytest.mark.anyio

IMAGE_KEYS = {"image_url", "image_width", "image_height", "image_id", "raw_image_url", "raw_image_width"}
IMAGE_KEYS |= {"raw_image_height", "progress", "task_id", "success"}
VIDEO_KEYS = {
    "image_url",
    "image_width",
    "image_height",
    "progress",
    "video_id",
    "video_urls",
    "task_id",
    "success",
}


async def call(
    session: aiohttp.ClientSession, emu: Emulator, path: str, body: Any, **options: Any
) -> tuple[int, Any]:
    """POST *body* to an API path and return ``(status, parsed JSON)``; *options* as `acedata_json` takes them."""
    return await acedata_json(session, emu, f"/midjourney/{path}", body, **options)


def assert_error(status: int, body: Any, expected_status: int, code: str) -> None:
    """The provider's error shape: success false, error code/message and a fresh uuid4 trace_id."""
    assert status == expected_status, body
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert uuid.UUID(body["trace_id"]).version == 4


# --- imagine, synchronous -----------------------------------------------------------------------


async def test_sync_chain_has_documented_actions_at_each_step() -> None:
    """imagine -> variation2 -> upscale4 -> zoom_out_2x / pan_left / upscale_2x: each step offers the documented actions."""
    async with running() as (emu, session):
        status, grid = await call(session, emu, "imagine", {"prompt": "Lamborghini speeds inside a volcano"})
        assert status == 200
        assert set(grid) == IMAGE_KEYS | {"actions"}
        assert grid["actions"] == GRID_ACTIONS
        assert grid["progress"] == 100
        assert grid["success"] is True
        assert uuid.UUID(grid["task_id"]).version == 4
        assert grid["image_id"].isdigit()
        assert len(grid["image_id"]) == 19
        assert grid["image_url"].endswith(f"?width={grid['image_width']}&height={grid['image_height']}")

        status, varied = await call(
            session, emu, "imagine", {"action": "variation2", "image_id": grid["image_id"]}
        )
        assert status == 200
        assert varied["actions"] == GRID_ACTIONS
        assert varied["image_id"] != grid["image_id"]
        assert varied["task_id"] != grid["task_id"]

        status, upscaled = await call(
            session, emu, "imagine", {"action": "upscale4", "image_id": varied["image_id"]}
        )
        assert status == 200
        assert upscaled["actions"] == UPSCALED_ACTIONS

        for action in ("zoom_out_2x", "pan_left"):
            status, result = await call(
                session, emu, "imagine", {"action": action, "image_id": upscaled["image_id"]}
            )
            assert status == 200, action
            assert result["actions"] == GRID_ACTIONS, action

        status, big = await call(
            session, emu, "imagine", {"action": "upscale_2x", "image_id": upscaled["image_id"]}
        )
        assert status == 200
        assert big["actions"] == [a for a in UPSCALED_ACTIONS if a not in ("upscale_2x", "upscale_4x")]
        assert big["raw_image_width"] == 2 * upscaled["raw_image_width"]

        # An action the image does not offer is refused, naming what is available.
        status, body = await call(
            session, emu, "imagine", {"action": "pan_left", "image_id": grid["image_id"]}
        )
        assert_error(status, body, 400, "bad_request")
        assert "upscale1" in body["error"]["message"]


async def test_pngs_are_real_and_match_the_size_fields() -> None:
    """Every image URL serves a PNG whose pixel size equals the width/height fields."""
    sizes = ImageSizes(grid=256, upscale=256)
    async with running(image_sizes=sizes) as (emu, session):
        body = {"prompt": "a cat --ar 16:9", "split_images": True}
        status, grid = await call(session, emu, "imagine", body)
        assert status == 200
        thumb = await fetch_png(session, grid["image_url"])
        raw = await fetch_png(session, grid["raw_image_url"])
        assert thumb.size == (grid["image_width"], grid["image_height"])
        assert raw.size == (grid["raw_image_width"], grid["raw_image_height"]) == (256, 144)
        assert len(grid["sub_image_urls"]) == 4
        quadrants = [await fetch_png(session, url) for url in grid["sub_image_urls"]]
        assert {q.size for q in quadrants} == {(128, 72)}
        assert len({q.tobytes() for q in quadrants}) == 4, "the four panels differ"

        status, up = await call(session, emu, "imagine", {"action": "upscale1", "image_id": grid["image_id"]})
        up_raw = await fetch_png(session, up["raw_image_url"])
        assert up_raw.size == (up["raw_image_width"], up["raw_image_height"]) == (256, 144)
        status, zoom = await call(session, emu, "imagine", {"action": "pan_up", "image_id": up["image_id"]})
        # Panning up makes the canvas taller, and the fields follow the real PNG.
        zoom_raw = await fetch_png(session, zoom["raw_image_url"])
        assert zoom_raw.size == (zoom["raw_image_width"], zoom["raw_image_height"])
        assert zoom_raw.height / zoom_raw.width > raw.height / raw.width
        assert emu.counters["image_gets"] == 8


async def test_images_are_deterministic_from_the_prompt() -> None:
    """The same prompt paints the same pixels under different image ids; another prompt paints others."""
    async with running(image_sizes=ImageSizes(grid=128)) as (emu, session):
        first = (await call(session, emu, "imagine", {"prompt": "a red fox"}))[1]
        again = (await call(session, emu, "imagine", {"prompt": "a red fox"}))[1]
        other = (await call(session, emu, "imagine", {"prompt": "a blue whale"}))[1]
        assert first["image_id"] != again["image_id"]
        pixels = [(await fetch_png(session, b["raw_image_url"])).tobytes() for b in (first, again, other)]
        assert pixels[0] == pixels[1] != pixels[2]
        assert emu.tasks_per_prompt == {"a red fox": 2, "a blue whale": 1}


async def test_prompt_images_blend_and_variation_region() -> None:
    """Up to five leading image URLs are accepted; region variation needs an upscaled image and a mask."""
    async with running(image_sizes=ImageSizes(grid=128, upscale=128)) as (emu, session):
        urls = " ".join(f"https://cdn.example.com/{i}.png" for i in range(5))
        status, grid = await call(session, emu, "imagine", {"prompt": f"{urls} blend them --iw 2"})
        assert status == 200
        assert grid["actions"] == GRID_ACTIONS
        status, body = await call(
            session, emu, "imagine", {"prompt": f"{urls} https://x.example/6.png too many"}
        )
        assert_error(status, body, 400, "bad_request")

        up = (await call(session, emu, "imagine", {"action": "upscale2", "image_id": grid["image_id"]}))[1]
        region = {"action": "variation_region", "image_id": up["image_id"], "prompt": "A cute cat"}
        status, result = await call(session, emu, "imagine", {**region, "mask": mask_b64()})
        assert status == 200
        assert result["actions"] == GRID_ACTIONS
        for bad_mask in (
            "not base64!",
            base64.b64encode(b"plain text, not an image").decode(),
            mask_b64(None),
        ):
            status, body = await call(session, emu, "imagine", {**region, "mask": bad_mask})
            assert_error(status, body, 400, "bad_request")
        status, body = await call(session, emu, "imagine", region)  # no mask
        assert_error(status, body, 400, "bad_request")
        grid_region = {**region, "image_id": grid["image_id"], "mask": mask_b64()}
        status, body = await call(session, emu, "imagine", grid_region)  # a grid, not an upscale
        assert_error(status, body, 400, "bad_request")


async def test_imagine_validation_errors() -> None:
    """Missing prompt or image_id, unknown image_id, bad mode or types: 400 bad_request."""
    async with running() as (emu, session):
        for body in (
            {},
            {"prompt": "   "},
            {"action": "upscale1"},
            {"action": "upscale1", "image_id": "1234"},
            {"prompt": "a cat", "mode": "slow"},
            {"prompt": "a cat", "split_images": "yes"},
            {"prompt": "a cat", "timeout": 0},
            {"prompt": "a cat", "async": "yes"},
            {"prompt": 42},
            {"prompt": "a cat", "callback_url": "ftp://example.com/hook"},
        ):
            status, reply = await call(session, emu, "imagine", body)
            assert_error(status, reply, 400, "bad_request")
        assert emu.counters["submits"] == 0


# --- streaming, async, tasks, callbacks ---------------------------------------------------------


async def test_ndjson_stream_lines() -> None:
    """accept ndjson: >= 6 lines, rising progress, a new image_id per line, actions only on the last."""
    async with running(image_sizes=ImageSizes(grid=128)) as (emu, session):
        body = {"prompt": "a beautiful cat --v 6"}
        async with post_acedata(session, emu, "/midjourney/imagine", body, accept=NDJSON) as resp:
            assert resp.status == 200
            assert resp.content_type == NDJSON
            lines = [json.loads(line) async for line in resp.content if line.strip()]
        assert len(lines) >= 6
        progress = [line["progress"] for line in lines]
        assert progress == sorted(set(progress))
        assert progress[-1] == 100
        assert len(progress) - 1 >= 5
        assert len({line["image_id"] for line in lines}) == len(lines)
        assert {line["task_id"] for line in lines} == {lines[0]["task_id"]}
        assert all(line["success"] is True for line in lines)
        assert all(line["actions"] == [] for line in lines[:-1])
        assert lines[-1]["actions"] == GRID_ACTIONS
        # Intermediate images are smaller (and real).
        assert lines[0]["raw_image_width"] < lines[-1]["raw_image_width"]
        blurry = await fetch_png(session, lines[0]["image_url"])
        assert blurry.size == (lines[0]["image_width"], lines[0]["image_height"])
        assert emu.requests[-1].accept == NDJSON
        assert emu.counters["streams"] == 1


async def test_stream_lines_follow_the_clock_and_match_the_task_record() -> None:
    """Each line is sent when its time comes, and /tasks shows that same line meanwhile."""
    clock = ManualClock()
    async with running(speed=10.0, clock=clock) as (emu, session):
        async with post_acedata(
            session, emu, "/midjourney/imagine", {"prompt": "dawn"}, accept=NDJSON
        ) as resp:
            assert resp.status == 200
            task_id = await latest_task_id(session, emu)
            status, record = await call(session, emu, "tasks", {"action": "retrieve", "id": task_id})
            assert status == 200
            assert "response" not in record
            assert "started_at" not in record
            clock.advance(1.6)  # past the queued phase (15 % of 10 s)
            first = json.loads(await resp.content.readline())
            assert first["progress"] == 5
            record = (await call(session, emu, "tasks", {"action": "retrieve", "id": task_id}))[1]
            assert record["response"] == first
            assert "finished_at" not in record
            clock.advance(10)
            rest = [json.loads(line) async for line in resp.content if line.strip()]
        assert [line["progress"] for line in rest] == [20, 35, 55, 75, 100]
        record = (await call(session, emu, "tasks", {"action": "retrieve", "id": task_id}))[1]
        assert record["response"] == rest[-1]
        assert record["image_id"] == rest[-1]["image_id"]


async def test_async_task_is_pending_then_partial_then_final() -> None:
    """async: {task_id} at once; the record has no response while queued, a partial one, then the final."""
    clock = ManualClock()
    async with running(speed=10.0, clock=clock) as (emu, session):
        body = {"prompt": "A cat sitting on a table", "async": True, "mode": "turbo"}
        status, submitted = await call(session, emu, "imagine", body)
        assert status == 200
        assert list(submitted) == ["task_id"]
        retrieve = {"action": "retrieve", "id": submitted["task_id"]}
        record = (await call(session, emu, "tasks", retrieve))[1]
        assert record["id"] == submitted["task_id"]
        assert record["type"] == "imagine"
        assert record["mode"] == "turbo"
        assert len(record["_id"]) == 24
        assert int(record["_id"], 16) >= 0
        assert record["request"] == body
        assert isinstance(record["created_at"], float)
        assert "response" not in record
        assert "started_at" not in record
        assert "finished_at" not in record

        clock.advance(6.5)
        record = (await call(session, emu, "tasks", retrieve))[1]
        assert record["started_at"] > record["created_at"]
        assert record["response"]["progress"] == 35
        assert record["response"]["actions"] == []
        assert "finished_at" not in record

        clock.advance(3.6)
        record = (await call(session, emu, "tasks", retrieve))[1]
        assert record["response"]["progress"] == 100
        assert record["response"]["actions"] == GRID_ACTIONS
        assert record["duration"] == pytest.approx(10.0)
        assert record["finished_at"] == pytest.approx(record["created_at"] + 10.0)

        by_trace = (
            await call(session, emu, "tasks", {"action": "retrieve", "trace_id": record["trace_id"]})
        )[1]
        assert by_trace["id"] == record["id"]
        status, body = await call(session, emu, "tasks", {"action": "retrieve", "id": "no-such-task"})
        assert_error(status, body, 400, "bad_request")


async def test_retrieve_batch() -> None:
    """retrieve_batch returns the existing ids in order, or a page of all tasks with the total count."""
    async with running() as (emu, session):
        ids = [
            (await call(session, emu, "imagine", {"prompt": f"p{i}", "async": True}))[1]["task_id"]
            for i in range(3)
        ]
        status, batch = await call(
            session, emu, "tasks", {"action": "retrieve_batch", "ids": [ids[2], "nope", ids[0]]}
        )
        assert status == 200
        assert batch["count"] == 2
        assert [item["id"] for item in batch["items"]] == [ids[2], ids[0]]
        assert all(item["response"]["progress"] == 100 for item in batch["items"])
        page = (await call(session, emu, "tasks", {"action": "retrieve_batch", "offset": 1, "limit": 1}))[1]
        assert page["count"] == 3
        assert [item["id"] for item in page["items"]] == [ids[1]]


async def test_callback_receives_the_final_body() -> None:
    """callback_url: {task_id} at once, then one POST with success, task_id and the result fields."""
    async with (
        webhook_receiver() as (hook, received),
        running(image_sizes=ImageSizes(grid=128)) as (emu, session),
    ):
        status, submitted = await call(session, emu, "imagine", {"prompt": "a cat", "callback_url": hook})
        assert status == 200
        assert list(submitted) == ["task_id"]
        with anyio.fail_after(5):
            body = (await received.receive()).body
        assert body["success"] is True
        assert body["task_id"] == submitted["task_id"]
        assert set(body) == IMAGE_KEYS | {"actions"}
        assert body["actions"] == GRID_ACTIONS

        # A prompt the worker rejects reports failure through the callback.
        status, submitted = await call(
            session, emu, "imagine", {"prompt": "a cat -c x", "callback_url": hook}
        )
        assert status == 200
        with anyio.fail_after(5):
            body = (await received.receive()).body
        assert body == {
            "success": False,
            "task_id": submitted["task_id"],
            "error": {"code": "bad_request", "message": "Unrecognized argument(s): `-c`, `x`"},
        }
        # The emulator records the outcome only after reading the webhook's reply, which
        # happens after our hook has forwarded the body; nothing to wait on but the record.
        await until(lambda: len(emu.callbacks) >= 2)
        assert emu.counters["callbacks"] == 2
        assert [(c.url, c.status, c.error) for c in emu.callbacks] == [(hook, 200, None)] * 2


async def test_ndjson_with_callback_posts_every_line() -> None:
    """accept ndjson + callback_url: the reply is still {task_id}; the callback gets one POST per line."""
    async with (
        webhook_receiver() as (hook, received),
        running(image_sizes=ImageSizes(grid=128)) as (emu, session),
    ):
        body = {"prompt": "a lighthouse", "callback_url": hook}
        status, submitted = await call(session, emu, "imagine", body, accept=NDJSON)
        assert status == 200
        assert list(submitted) == ["task_id"]
        with anyio.fail_after(5):
            lines = [(await received.receive()).body for _ in range(6)]
        assert [line["progress"] for line in lines] == [5, 20, 35, 55, 75, 100]
        assert {line["task_id"] for line in lines} == {submitted["task_id"]}
        assert lines[-1]["actions"] == GRID_ACTIONS


async def latest_task_id(session: aiohttp.ClientSession, emu: Emulator) -> str:
    """The id of the newest task, found through retrieve_batch's listing."""
    status, page = await call(session, emu, "tasks", {"action": "retrieve_batch", "limit": 1})
    assert status == 200
    return str(page["items"][0]["id"])


async def test_sync_timeout_answers_504_and_the_job_runs_on() -> None:
    """Sync: a job longer than `timeout` answers 504 when the timeout runs out; the task stays retrievable."""
    async with running(speed=30.0) as (emu, session):
        status, body = await call(session, emu, "imagine", {"prompt": "slow cat", "timeout": 0.05})
        assert_error(status, body, 504, "timeout")
        assert body["error"]["message"] == "Timeout to generate the image."
        record = (
            await call(
                session, emu, "tasks", {"action": "retrieve", "id": await latest_task_id(session, emu)}
            )
        )[1]
        assert record["request"]["prompt"] == "slow cat"
        assert "finished_at" not in record
        assert emu.counters["sync_timeouts"] == 1


async def test_sync_failure_answers_an_error_with_the_task_trace_id() -> None:
    """Sync: a prompt the worker rejects answers 400 with the task's trace_id, and the record shows the failure."""
    async with running() as (emu, session):
        status, body = await call(session, emu, "imagine", {"prompt": "a cat -c x"})
        assert_error(status, body, 400, "bad_request")
        record = emu.task_record(await latest_task_id(session, emu))
        assert record is not None
        assert body["trace_id"] == record["trace_id"]
        assert record["response"]["success"] is False
        assert record["response"]["error"] == body["error"]


# --- errors and limits --------------------------------------------------------------------------


async def test_auth_errors_are_401_invalid_token() -> None:
    """A missing, wrong or non-Bearer token gets 401 invalid_token with the documented message."""
    async with running() as (emu, session):
        trace_ids = set()
        for token in (None, "wrong-token"):
            status, body = await call(session, emu, "imagine", {"prompt": "a cat"}, token=token)
            assert_error(status, body, 401, "invalid_token")
            assert body["error"]["message"] == "The specified token is invalid or wrong."
            trace_ids.add(body["trace_id"])
        headers = {"authorization": EMULATOR_TOKEN}  # the token without "Bearer"
        async with session.post(
            f"{emu.url}/midjourney/imagine", json={"prompt": "a"}, headers=headers
        ) as resp:
            assert resp.status == 401
        assert len(trace_ids) == 2, "every error has a fresh trace_id"
        assert emu.counters["tasks"] == 0


async def test_invalid_json_moderation_and_unknown_route() -> None:
    """Bad JSON: 400 bad_request; a banned word: 403 forbidden; an unknown API path: 404 no_api."""
    async with running(banned_words=("gore",)) as (emu, session):
        headers = {**acedata_headers(accept=None), "content-type": "application/json"}
        for payload in (b"{not json", b"", b'["a list"]'):
            async with session.post(f"{emu.url}/midjourney/imagine", data=payload, headers=headers) as resp:
                body = await resp.json()
            assert_error(resp.status, body, 400, "bad_request")
            assert body["error"]["message"] == "The json payload is not valid to request the API"
        status, body = await call(session, emu, "imagine", {"prompt": "so much GORE here"})
        assert_error(status, body, 403, "forbidden")
        assert body["error"]["message"].startswith("Sorry! Our AI moderators")
        status, body = await call(
            session, emu, "edits", {"image_url": "https://a.example/x.png", "prompt": "gore"}
        )
        assert_error(status, body, 403, "forbidden")
        status, body = await call(session, emu, "blend", {"prompt": "a"})
        assert_error(status, body, 404, "no_api")


async def test_oversized_bodies_get_413() -> None:
    """Bodies over max_body_size are refused with 413, whether the length is declared or chunked."""
    async with running(max_body_size=1024) as (emu, session):
        status, body = await call(session, emu, "imagine", {"prompt": "x" * 2000})
        assert_error(status, body, 413, "content_too_large")

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"prompt": "'
            for _ in range(8):
                yield b"y" * 512
            yield b'"}'

        headers = {**acedata_headers(accept=None), "content-type": "application/json"}
        async with session.post(f"{emu.url}/midjourney/imagine", data=chunks(), headers=headers) as resp:
            assert_error(resp.status, await resp.json(), 413, "content_too_large")
        assert emu.counters["submits"] == 0


# --- the other endpoints ------------------------------------------------------------------------


async def test_edits_shapes() -> None:
    """edits: sub_image_urls with split_images, image fields, progress 100, no actions; image_url required."""
    async with running(image_sizes=ImageSizes(grid=160)) as (emu, session):
        body = {"image_url": "https://cdn.acedata.cloud/jgo1cw.jpg", "prompt": "A cat", "split_images": True}
        status, result = await call(session, emu, "edits", body)
        assert status == 200
        assert set(result) == IMAGE_KEYS | {"sub_image_urls"}
        assert "actions" not in result
        assert len(result["sub_image_urls"]) == 4
        assert result["progress"] == 100
        raw = await fetch_png(session, result["raw_image_url"])
        assert raw.size == (result["raw_image_width"], result["raw_image_height"])
        status, stream_reply = await call(session, emu, "edits", {**body, "async": True})
        assert status == 200
        assert list(stream_reply) == ["task_id"]
        record = emu.task_record(stream_reply["task_id"])
        assert record is not None
        assert record["type"] == "edits"
        for bad in ({"prompt": "no image"}, {"image_url": "not-a-url"}, {**body, "mask": "%%%"}):
            status, reply = await call(session, emu, "edits", bad)
            assert_error(status, reply, 400, "bad_request")


async def test_videos_generate_and_extend() -> None:
    """videos: four mp4 URLs and a first-frame image; extend needs a known video_id; no relax mode."""
    async with running() as (emu, session):
        body = {
            "image_url": "https://a.example/first.png",
            "prompt": "waves",
            "mode": "fast",
            "resolution": "480p",
        }
        status, video = await call(session, emu, "videos", body)
        assert status == 200
        assert set(video) == VIDEO_KEYS
        assert video["progress"] == 100
        assert video["video_id"].isdigit()
        assert len(video["video_urls"]) == 4
        cover = await fetch_png(session, video["image_url"])
        assert cover.size == (video["image_width"], video["image_height"])
        async with session.get(video["video_urls"][3]) as resp:
            assert resp.status == 200
            assert resp.content_type == "video/mp4"
            assert (await resp.read())[4:8] == b"ftyp"

        extend = {"action": "extend", "video_id": video["video_id"], "video_index": 3}
        status, extended = await call(session, emu, "videos", extend)
        assert status == 200
        assert extended["video_id"] != video["video_id"]
        for bad in (
            {**body, "mode": "relax"},
            {"prompt": "no image"},
            {"action": "extend", "video_id": "123"},
            {**extend, "video_index": 4},
            {**body, "resolution": "4k"},
        ):
            status, reply = await call(session, emu, "videos", bad)
            assert_error(status, reply, 400, "bad_request")
        listing = (await call(session, emu, "tasks", {"action": "retrieve_batch"}))[1]
        assert [item["type"] for item in listing["items"]] == ["videos", "videos"]
        assert listing["items"][0]["response"]["video_urls"][0].endswith(".mp4")


async def test_describe_shorten_translate_seed() -> None:
    """The quick endpoints answer their documented shapes and refuse missing fields with 400."""
    async with running() as (emu, session):
        status, described = await call(session, emu, "describe", {"image_url": "https://a.example/cat.png"})
        assert status == 200
        assert list(described) == ["descriptions"]
        assert len(described["descriptions"]) == 4
        assert all(
            " --ar " in d and d.rsplit("--ar ", 1)[1].count(":") == 1 for d in described["descriptions"]
        )
        listing = (await call(session, emu, "tasks", {"action": "retrieve_batch", "type": "describe"}))[1]
        assert listing["count"] == 1
        assert listing["items"][0]["response"] == described

        prompt = "a very detailed painting of an old lighthouse on a cliff at dawn --ar 16:9"
        status, shortened = await call(session, emu, "shorten", {"prompt": prompt})
        assert status == 200
        assert 1 <= len(shortened["prompts"]) <= 5
        assert all(p.endswith("--ar 16:9") and len(p) <= len(prompt) for p in shortened["prompts"])

        status, translated = await call(session, emu, "translate", {"content": "精致，无暇，洁白的天使"})
        assert status == 200
        assert translated == {"content": "Exquisite, flawless, pure white angel."}

        grid = (await call(session, emu, "imagine", {"prompt": "a cat"}))[1]
        status, seeded = await call(session, emu, "seed", {"image_id": grid["image_id"]})
        assert status == 200
        assert seeded["seed"].isdigit()
        assert (await call(session, emu, "seed", {"image_id": grid["image_id"]}))[1] == seeded

        for path, body in (
            ("describe", {}),
            ("shorten", {}),
            ("translate", {"content": 3}),
            ("seed", {"image_id": "999"}),
            ("tasks", {"action": "retrieve"}),
            ("tasks", {"action": "delete"}),
        ):
            status, reply = await call(session, emu, path, body)
            assert_error(status, reply, 400, "bad_request")


# --- records, fixture, lifecycle, CLI -----------------------------------------------------------


async def test_requests_are_recorded_without_the_auth_header() -> None:
    """emu.requests keeps method, path, JSON body and accept, never the token; counters track submits."""
    async with running() as (emu, session):
        await call(session, emu, "imagine", {"prompt": "a cat", "async": True}, accept=NDJSON)
        await call(session, emu, "translate", {"content": "hello"})
        await call(session, emu, "imagine", {"prompt": "a cat"}, token="bad")
        assert [(r.method, r.path, r.status) for r in emu.requests] == [
            ("POST", "/midjourney/imagine", 200),
            ("POST", "/midjourney/translate", 200),
            ("POST", "/midjourney/imagine", 401),
        ]
        assert emu.requests[0].json == {"prompt": "a cat", "async": True}
        assert emu.requests[0].accept == NDJSON
        assert emu.requests[2].json is None, "an unauthenticated body is not read"
        assert emu.requests[1].headers["Content-Type"] == "application/json"
        assert "authorization" not in emu.requests[1].headers
        assert EMULATOR_TOKEN not in repr(emu.requests)
        assert "bad" not in repr(vars(emu.requests[2]))
        assert not any("authorization" in str(vars(r)).lower() for r in emu.requests)
        assert emu.counters["requests"] == 3
        assert emu.counters["submits"] == 1
        assert emu.tasks_per_prompt == {"a cat": 1}
        emu.reset_records()
        assert emu.requests == []
        assert set(emu.counters.values()) == {0}
        assert emu.tasks_per_prompt == {}


async def test_mj_emulator_fixture(mj_emulator: Emulator) -> None:
    """The opt-in fixture yields a running emulator on 127.0.0.1 accepting EMULATOR_TOKEN."""
    assert mj_emulator.url.startswith("http://127.0.0.1:")
    assert mj_emulator.port > 0
    async with aiohttp.ClientSession() as session:
        status, body = await call(session, mj_emulator, "imagine", {"prompt": "fixture"})
    assert status == 200
    assert body["progress"] == 100


async def test_shutdown_ends_an_open_stream() -> None:
    """Leaving the emulator while a stream waits on a frozen clock ends that stream cleanly."""
    clock = ManualClock()
    async with aiohttp.ClientSession() as session:
        async with Emulator(clock=clock, speed=5.0) as emu:
            headers = acedata_headers(accept=NDJSON)
            resp = await session.post(
                f"{emu.url}/midjourney/imagine", json={"prompt": "wait"}, headers=headers
            )
        with anyio.fail_after(5):
            assert await resp.read() == b""
        resp.release()
        with pytest.raises(RuntimeError):
            emu.url  # noqa: B018 - the property raises once stopped


async def test_a_busy_port_fails_plainly() -> None:
    """Starting on a port already in use raises OSError itself (not wrapped in an exception group)."""
    async with Emulator() as first:
        with pytest.raises(OSError, match="in use"):
            async with Emulator(port=first.port):
                pass  # pragma: no cover - never reached


def test_command_line_prints_readiness_and_exits_0_on_signals() -> None:
    """`python -m mjasync.emulator --port 0` prints one readiness line and exits 0 on SIGINT or SIGTERM."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        cmd = [sys.executable, "-m", "mjasync.emulator", "--port", "0", "--token", "a", "--token", "b"]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("mjasync emulator listening on http://127.0.0.1:")
            assert int(line.rsplit(":", 1)[1]) > 0
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert out == ""
