"""Every recorded AceData example (tests/fixtures/acedata) against the emulator's answer to the same request.

For each recorded body the test makes the request the seed shows (or the one the example implies) and
compares the two recursively: the same keys and the same JSON type at every path (null, bool, int,
float, str, list, object). Values are not compared: ids, URLs and sizes are the emulator's own.

Documented differences (each one is asserted to still occur, so this list cannot go stale):

* The OAS error examples (``note_error_timeout_504_fixed``, ``note_error_forbidden_403_composed``) have no
  ``success`` key; the emulator sends the guides' error shape with ``success: false`` (as seed 004's
  recorded error does) at every status. acedata-api.md §12 lists both shapes.
* Seed 004's 500 ``api_error`` example is compared with a 400 from the emulator: its error body has
  one shape at every status, and no plain request makes it answer 500 (that is fault injection).
* The task record adds a top-level ``trace_id`` (declared by the web console, acedata-api.md §11), and
  its ``response`` is exactly the endpoint's body, as §11's text says, without the ``job_id``/``hold``
  its example also shows inside it (they are at the record's top level).
* The batch's second (pending) record in the fixture was composed from placeholders, so only its keys
  are required of the emulator's pending record.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from mjasync.emulator import Emulator, ManualClock

from ..helpers import ACEDATA_GRID_ACTIONS as GRID_ACTIONS
from ..helpers import ACEDATA_UPSCALED_ACTIONS as UPSCALED_ACTIONS
from ..helpers import (
    FIXTURES,
    NDJSON,
    Delivery,
    acedata_json,
    fetch_png,
    jpeg_mask_b64,
    post_acedata,
    running,
    until,
    webhook_receiver,
)

JSON = dict[str, Any]


# --- comparing shapes ----------------------------------------------------------------------------


def load_fixture(name: str) -> Any:
    """Parse one recorded AceData example."""
    return json.loads((FIXTURES / "acedata" / name).read_text(encoding="utf-8"))


def load_stream_fixture() -> list[JSON]:
    """The three recorded ndjson progress lines of seed 000 (progress 35, 75, 100)."""
    text = (FIXTURES / "streams" / "acedata_imagine.ndjson").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, telling int from float and bool from int."""
    if value is None:
        return "null"
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "list")):
        if isinstance(value, kind):
            return name
    if isinstance(value, dict):
        return "object"
    raise TypeError(f"not a JSON value: {value!r}")


def shape_diff(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Every path where *actual* has another key set or JSON type than *expected*.

    A list's items are compared with the expected item at the same index (or its last one), so a
    list of progress bodies or of task records is checked item by item.
    """
    kind, got = json_type(expected), json_type(actual)
    if kind != got:
        return [f"{path}: expected {kind}, got {got}"]
    if kind == "object":
        diffs = [f"{path}.{key}: missing" for key in expected if key not in actual]
        diffs += [f"{path}.{key}: unexpected" for key in actual if key not in expected]
        for key in expected:
            if key in actual:
                diffs += shape_diff(expected[key], actual[key], f"{path}.{key}")
        return diffs
    if kind == "list":
        if not expected or not actual:
            return (
                []
                if len(expected) == len(actual)
                else [f"{path}: expected {len(expected)} items, got {len(actual)}"]
            )
        diffs = []
        for index, item in enumerate(actual):
            diffs += shape_diff(expected[min(index, len(expected) - 1)], item, f"{path}[{index}]")
        return diffs
    return []


def assert_same_shape(
    expected: Any, actual: Any, *, missing: Collection[str] = (), extra: Collection[str] = ()
) -> None:
    """Assert equal key sets and JSON types, except the documented *missing* and *extra* paths."""
    allowed = {f"{path}: missing" for path in missing} | {f"{path}: unexpected" for path in extra}
    diffs = shape_diff(expected, actual)
    unexplained = [d for d in diffs if d not in allowed]
    assert not unexplained, "\n".join([*unexplained, json.dumps(actual)[:2000]])
    assert allowed <= set(diffs), (
        f"documented differences that no longer occur: {sorted(allowed - set(diffs))}"
    )


def test_shape_diff_tells_types_and_keys_apart() -> None:
    """The comparator catches int vs float, bool vs int, null, missing and unexpected keys, and list items."""
    assert shape_diff({"a": 1, "b": [1.5]}, {"a": 1, "b": [2.5, 3.5]}) == []
    assert shape_diff({"a": 1}, {"a": 1.0}) == ["$.a: expected int, got float"]
    assert shape_diff({"a": 1}, {"a": True}) == ["$.a: expected int, got bool"]
    assert shape_diff({"a": "x"}, {"a": None}) == ["$.a: expected str, got null"]
    assert shape_diff({"a": 1, "b": 2}, {"a": 1, "c": 2}) == ["$.b: missing", "$.c: unexpected"]
    assert shape_diff({"l": []}, {"l": ["x"]}) == ["$.l: expected 0 items, got 1"]
    assert shape_diff([{"k": 1}, {"k": "s"}], [{"k": 1}, {"k": 2}]) == ["$[1].k: expected str, got int"]


# --- talking to the emulator ---------------------------------------------------------------------


@dataclass
class Session:
    """A running emulator, a plain aiohttp session (never mjasync's) and a webhook receiver."""

    emu: Emulator
    http: aiohttp.ClientSession
    hook: str
    received: MemoryObjectReceiveStream[Delivery]

    async def post(self, path: str, body: Any, *, accept: str = "application/json") -> tuple[int, Any]:
        """POST *body* to ``/midjourney/<path>`` with the emulator's token; return (status, JSON)."""
        return await acedata_json(
            self.http, self.emu, f"/midjourney/{path}", body, accept=accept, content_type=None
        )

    async def ok(self, path: str, body: Any) -> JSON:
        """POST and require a 200 with a JSON object."""
        status, reply = await self.post(path, body)
        assert status == 200, reply
        assert isinstance(reply, dict)
        return reply

    async def stream(self, path: str, body: Any) -> list[JSON]:
        """POST with ``accept: application/x-ndjson`` and return the parsed lines."""
        async with post_acedata(self.http, self.emu, f"/midjourney/{path}", body, accept=NDJSON) as resp:
            assert resp.status == 200
            assert resp.content_type == NDJSON
            return [json.loads(line) async for line in resp.content if line.strip()]

    async def callback(self) -> JSON:
        """The next body POSTed to the webhook (bounded wait)."""
        with anyio.fail_after(10):
            body: JSON = (await self.received.receive()).body
        return body

    async def upscaled(self, prompt: str = "A cat sitting on a table") -> JSON:
        """imagine then upscale1: the result whose image_id `variation_region` accepts."""
        grid = await self.ok("imagine", {"prompt": prompt})
        return await self.ok("imagine", {"action": "upscale1", "image_id": grid["image_id"]})


@asynccontextmanager
async def session(**options: Any) -> AsyncIterator[Session]:
    """An emulator on 127.0.0.1 (port 0, *options*), an aiohttp session and a webhook receiver."""
    async with webhook_receiver() as (hook, received), running(**options) as (emu, http):
        yield Session(emu, http, hook, received)


# --- one request per recorded example ------------------------------------------------------------

LAMBORGHINI = "Lamborghini speeds inside a volcano"


async def imagine_generate(s: Session) -> JSON:
    body = await s.ok("imagine", {"prompt": LAMBORGHINI})
    assert body["actions"] == GRID_ACTIONS
    return body


async def variation2(s: Session) -> JSON:
    grid = await s.ok("imagine", {"prompt": LAMBORGHINI})
    body = await s.ok("imagine", {"action": "variation2", "image_id": grid["image_id"]})
    assert body["actions"] == GRID_ACTIONS
    return body


async def upscale4(s: Session) -> JSON:
    grid = await s.ok("imagine", {"prompt": LAMBORGHINI})
    varied = await s.ok("imagine", {"action": "variation2", "image_id": grid["image_id"]})
    body = await s.ok("imagine", {"action": "upscale4", "image_id": varied["image_id"]})
    assert body["actions"] == UPSCALED_ACTIONS
    return body


async def image_prompt(s: Session) -> JSON:
    prompt = "https://cdn.acedata.cloud/v014oc.png an illustration of a car parked on the beach --iw 2"
    return await s.ok("imagine", {"prompt": prompt})


async def blend(s: Session) -> JSON:
    prompt = (
        "https://cdn.acedata.cloud/8fapzl.png https://cdn.acedata.cloud/c1igbw.png "
        "The bear is holding the chainsaw --iw 2"
    )
    return await s.ok("imagine", {"prompt": prompt})


async def variation_region(s: Session) -> JSON:
    upscaled = await s.upscaled()
    request = {
        "prompt": "A cute cat ",
        "action": "variation_region",
        "image_id": upscaled["image_id"],
        # Same size as the image it masks, as the guide asks.
        "mask": jpeg_mask_b64(upscaled["raw_image_width"], upscaled["raw_image_height"]),
    }
    body = await s.ok("imagine", request)
    assert body["actions"] == GRID_ACTIONS
    return body


async def seed002_imagine(s: Session) -> JSON:
    # Seed 002's request minus its three OAS placeholders ("<string>" for mask, image_id, callback_url).
    request = {k: v for k, v in load_fixture("seed002_imagine_request.json").items() if v != "<string>"}
    assert request == {
        "mode": "fast",
        "action": "generate",
        "prompt": "A cat sitting on a table",
        "timeout": 480,
        "translation": False,
        "split_images": False,
    }
    return await s.ok("imagine", request)


async def callback_success(s: Session) -> JSON:
    # The guide's webhook step: `callback_url` and `prompt`, an immediate {task_id}, then one POST.
    receipt = await s.ok("imagine", {"prompt": "A cat sitting on a table", "callback_url": s.hook})
    assert list(receipt) == ["task_id"]
    body = await s.callback()
    assert body["task_id"] == receipt["task_id"]
    return body


async def callback_failure(s: Session) -> JSON:
    prompt = "A cat sitting on a table -c x"
    receipt = await s.ok("imagine", {"prompt": prompt, "callback_url": s.hook})
    body = await s.callback()
    expected = load_fixture("seed000_callback_failure.json")
    assert body == {**expected, "task_id": receipt["task_id"]}
    return body


def edits_request() -> JSON:
    return dict(load_fixture("seed004_edits_request.json"))


async def edits_response(s: Session) -> JSON:
    body = await s.ok("edits", edits_request())
    assert len(body["sub_image_urls"]) == 4
    return body


async def edits_receipt(s: Session) -> JSON:
    receipt = await s.ok("edits", {**edits_request(), "callback_url": s.hook})
    await s.callback()  # let the callback land before the emulator stops
    async_receipt = await s.ok("edits", {**edits_request(), "async": True})
    assert list(async_receipt) == ["task_id"]
    return receipt


async def edits_callback(s: Session) -> JSON:
    receipt = await s.ok("edits", {**edits_request(), "callback_url": s.hook})
    body = await s.callback()
    assert body["task_id"] == receipt["task_id"]
    return body


async def error_400(s: Session) -> JSON:
    status, body = await s.post("imagine", {"action": "generate"})
    assert status == 400
    assert body["error"]["code"] == "bad_request"
    return body


async def error_504(s: Session) -> JSON:
    status, body = await s.post("imagine", {"prompt": "A cat sitting on a table", "timeout": 0.05})
    assert status == 504
    assert body["error"] == load_fixture("note_error_timeout_504_fixed.json")["error"]
    return body


async def error_403(s: Session) -> JSON:
    status, body = await s.post("imagine", {"prompt": "gore on a table"})
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    return body


async def describe(s: Session) -> JSON:
    body = await s.ok("describe", {"image_url": "https://cdn.acedata.cloud/8fapzl.png"})
    assert len(body["descriptions"]) == 4
    return body


async def shorten(s: Session) -> JSON:
    prompt = "a very detailed painting of an old lighthouse on a cliff above a stormy sea at dusk --ar 16:9"
    body = await s.ok("shorten", {"prompt": prompt})
    assert 1 <= len(body["prompts"]) <= 5
    return body


async def translate(s: Session) -> JSON:
    body = await s.ok("translate", load_fixture("note_translate_request.json"))
    assert body == load_fixture("note_translate_response.json")
    return body


async def seed(s: Session) -> JSON:
    # The note's image_id is not one the emulator made; a fresh grid's id stands in for it.
    grid = await s.ok("imagine", {"prompt": "A cat sitting on a table"})
    return await s.ok("seed", {**load_fixture("note_seed_request.json"), "image_id": grid["image_id"]})


async def videos(s: Session) -> JSON:
    request = {
        "action": "generate",
        "image_url": "https://cdn.acedata.cloud/r9vsv9.png",
        "prompt": "A cat walking",
    }
    body = await s.ok("videos", request)
    assert len(body["video_urls"]) == 4
    return body


Scenario = Callable[[Session], Awaitable[JSON]]
#: Recorded example -> (emulator options, the request that example answers).
SCENARIOS: dict[str, tuple[dict[str, Any], Scenario]] = {
    "seed000_imagine_generate.json": ({}, imagine_generate),
    "seed001_imagine_generate.json": ({}, imagine_generate),
    "seed000_variation2.json": ({}, variation2),
    "seed001_variation2.json": ({}, variation2),
    "seed000_upscale4.json": ({}, upscale4),
    "seed001_upscale4.json": ({}, upscale4),
    "seed000_image_prompt.json": ({}, image_prompt),
    "seed000_blend.json": ({}, blend),
    "seed000_variation_region.json": ({}, variation_region),
    "seed002_imagine_response.json": ({}, seed002_imagine),
    "seed000_callback_success.json": ({}, callback_success),
    "seed000_callback_failure.json": ({}, callback_failure),
    "seed004_edits_response.json": ({}, edits_response),
    "seed004_edits_async_receipt.json": ({}, edits_receipt),
    "seed004_edits_callback.json": ({}, edits_callback),
    "seed004_error_api_error.json": ({}, error_400),
    "note_error_timeout_504_fixed.json": ({"speed": 30.0}, error_504),
    "note_error_forbidden_403_composed.json": ({}, error_403),
    "note_describe_response.json": ({}, describe),
    "note_shorten_response.json": ({}, shorten),
    "note_translate_response.json": ({}, translate),
    "note_seed_response.json": ({}, seed),
    "note_videos_response.json": ({}, videos),
}
#: Documented differences (see the module docstring): fixture -> paths the emulator adds.
EXTRA = {
    "note_error_timeout_504_fixed.json": {"$.success"},
    "note_error_forbidden_403_composed.json": {"$.success"},
}
#: Compared in their own tests below.
TASK_FIXTURES = {"note_task_record_fixed.json", "note_tasks_batch_fixed.json"}


def test_every_recorded_response_is_compared() -> None:
    """Each response example in tests/fixtures/acedata has a request here (request bodies excluded)."""
    responses = {p.name for p in (FIXTURES / "acedata").glob("*.json") if "_request" not in p.name}
    assert responses == set(SCENARIOS) | TASK_FIXTURES


@pytest.mark.parametrize("fixture", sorted(SCENARIOS))
async def test_response_has_the_recorded_shape(fixture: str) -> None:
    """The emulator's answer to the example's request has the recorded example's keys and JSON types."""
    options, scenario = SCENARIOS[fixture]
    async with session(**options) as s:
        actual = await scenario(s)
    assert_same_shape(load_fixture(fixture), actual, extra=EXTRA.get(fixture, ()))


async def test_stream_lines_have_the_recorded_shapes() -> None:
    """ndjson: intermediate lines have the shape of the recorded 35%/75% lines, the last one of the 100% line."""
    recorded = load_stream_fixture()
    assert [line["progress"] for line in recorded] == [35, 75, 100]
    async with session() as s:
        lines = await s.stream("imagine", load_fixture("seed000_stream_request_python.json"))
    assert len(lines) >= 3
    for line in lines[:-1]:
        assert_same_shape(recorded[0], line)
        assert_same_shape(recorded[1], line)
    assert_same_shape(recorded[2], lines[-1])
    progress = [line["progress"] for line in lines]
    assert progress == sorted(set(progress))
    assert progress[-1] == 100
    assert all(line["actions"] == [] for line in lines[:-1])
    assert lines[-1]["actions"] == GRID_ACTIONS
    # As recorded: every line names a new image; only the last one can be acted on.
    assert len({line["image_id"] for line in lines}) == len(lines)


# --- the task record and the batch --------------------------------------------------------------

#: Declared at the top level by AceData's web console (acedata-api.md §11 field table).
RECORD_EXTRA = ("$.trace_id",)
#: §11 says `response` is exactly the endpoint's body; its example also puts job_id and hold in it,
#: which no recorded body has. The emulator follows the text (they are at the top level only).
RECORD_RESPONSE_ONLY_IN_EXAMPLE = ("$.response.job_id", "$.response.hold")
RECORD_REQUEST = {"mode": "fast", "prompt": "A cat sitting on a table", "action": "generate"}


async def finished_record(s: Session) -> JSON:
    """Submit the record's own request synchronously and retrieve its task record."""
    result = await s.ok("imagine", RECORD_REQUEST)
    record = await s.ok("tasks", {"action": "retrieve", "id": result["task_id"]})
    assert record["request"] == RECORD_REQUEST
    assert record["response"] == result
    return record


async def test_task_record_has_every_documented_field() -> None:
    """A finished task record has every field of the documented record (§11), with the same types."""
    async with session() as s:
        record = await finished_record(s)
    assert_same_shape(
        load_fixture("note_task_record_fixed.json"),
        record,
        missing=RECORD_RESPONSE_ONLY_IN_EXAMPLE,
        extra=RECORD_EXTRA,
    )


#: Clock seconds a job of the batch test takes.
BATCH_JOB_SECONDS = 10.0


async def batch_of_finished_and_pending(clock: ManualClock, s: Session) -> JSON:
    """retrieve_batch over a finished task and a still-queued one (the fixture's two records)."""
    pending_request = load_fixture("note_tasks_batch_fixed.json")["items"][1]["request"]
    replies: list[JSON] = []

    async def submit(body: JSON) -> None:
        replies.append(await s.ok("imagine", body))

    async with anyio.create_task_group() as group:
        group.start_soon(submit, RECORD_REQUEST)
        # The job is timed from its arrival: once the emulator has it, its whole length finishes it.
        await until(lambda: s.emu.counters["tasks"] >= 1, seconds=10)
        clock.advance(BATCH_JOB_SECONDS)
        await until(lambda: bool(replies), seconds=10)
        first = replies[0]["task_id"]
        group.start_soon(submit, pending_request)
        await until(lambda: s.emu.counters["tasks"] >= 2, seconds=10)  # nothing to wait on but the table
        listing = await s.ok("tasks", {"action": "retrieve_batch", "limit": 1})
        second = listing["items"][0]["id"]
        batch = await s.ok("tasks", {"action": "retrieve_batch", "ids": [first, second]})
        clock.advance(60.0)  # let the second sync request finish before the emulator stops
    assert [item["id"] for item in batch["items"]] == [first, second]
    return batch


async def test_batch_has_the_documented_types() -> None:
    """retrieve_batch: {items, count}; a finished item as the record above, a pending one has no response."""
    expected = load_fixture("note_tasks_batch_fixed.json")
    clock = ManualClock()
    async with session(speed=BATCH_JOB_SECONDS, clock=clock) as s:
        batch = await batch_of_finished_and_pending(clock, s)
    pending, recorded_pending = batch["items"][1], expected["items"][1]
    # The composed pending record only names the keys a pending record must have.
    assert_same_shape(recorded_pending, {key: pending[key] for key in recorded_pending})
    assert {"response", "finished_at", "duration"}.isdisjoint(pending)
    assert pending["request"] == recorded_pending["request"]
    finished = {"items": batch["items"][:1], "count": batch["count"]}
    extra = [path.replace("$", "$.items[0]", 1) for path in RECORD_EXTRA]
    missing = [path.replace("$", "$.items[0]", 1) for path in RECORD_RESPONSE_ONLY_IN_EXAMPLE]
    assert_same_shape({**expected, "items": expected["items"][:1]}, finished, missing=missing, extra=extra)
    assert batch["count"] == 2


# --- the PNGs behind the URLs -------------------------------------------------------------------


async def png_size(http: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    """GET a PNG (no auth, as from a CDN), check it really is one and return its pixel size."""
    with await fetch_png(http, url) as img:
        assert img.format == "PNG"
        return img.size


async def assert_pngs_match(http: aiohttp.ClientSession, body: JSON) -> None:
    """image_url and raw_image_url are PNGs of exactly the advertised sizes; sub images are raw quadrants."""
    assert await png_size(http, body["image_url"]) == (body["image_width"], body["image_height"])
    if "raw_image_url" in body:
        raw = (body["raw_image_width"], body["raw_image_height"])
        assert await png_size(http, body["raw_image_url"]) == raw
        for url in body.get("sub_image_urls", []):
            assert await png_size(http, url) == (raw[0] // 2, raw[1] // 2)


async def test_result_pngs_match_their_size_fields() -> None:
    """imagine, upscale, zoom, pan, variation_region, edits, video and stream images open at their stated sizes."""
    async with session() as s:
        grid = await s.ok("imagine", {"prompt": "a harbour at dusk --ar 16:9", "split_images": True})
        assert grid["image_width"] > grid["image_height"]
        assert len(grid["sub_image_urls"]) == 4
        upscaled = await s.ok("imagine", {"action": "upscale1", "image_id": grid["image_id"]})
        bodies = [grid, upscaled]
        for action in ("zoom_out_2x", "zoom_out_1_5x", "pan_left", "pan_up", "upscale_2x"):
            bodies.append(await s.ok("imagine", {"action": action, "image_id": upscaled["image_id"]}))
        region = {"action": "variation_region", "image_id": upscaled["image_id"], "mask": jpeg_mask_b64()}
        bodies.append(await s.ok("imagine", region))
        bodies.append(await s.ok("edits", edits_request()))
        bodies.append(
            await s.ok("videos", {"image_url": "https://cdn.acedata.cloud/r9vsv9.png", "prompt": "waves"})
        )
        bodies += await s.stream("imagine", {"prompt": "a tall tower --ar 2:3"})
        for body in bodies:
            await assert_pngs_match(s.http, body)
        # A pan really widens (or heightens) the picture, and upscale_2x doubles it.
        pan_left, pan_up, enlarged = bodies[4], bodies[5], bodies[6]
        ratio = upscaled["raw_image_width"] / upscaled["raw_image_height"]
        assert pan_left["raw_image_width"] / pan_left["raw_image_height"] > ratio
        assert pan_up["raw_image_width"] / pan_up["raw_image_height"] < ratio
        assert enlarged["raw_image_width"] == 2 * upscaled["raw_image_width"]
