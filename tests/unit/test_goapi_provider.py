"""GoapiProvider, pure: request bodies, the documented GoAPI payloads decoded, task states and errors."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

import mjasync
from mjasync._models.params import encode_mask
from mjasync._models.requests import (
    DescribeRequest,
    EditsRequest,
    ImagineRequest,
    SeedRequest,
    ShortenRequest,
    TranslateRequest,
    VideosRequest,
)
from mjasync._models.results import DescribeResult, ImagineUpdate, Result, SeedResult
from mjasync._providers import CallbackTarget, GoapiProvider

GOAPI = Path(__file__).resolve().parent.parent / "fixtures" / "goapi"
PROVIDER = GoapiProvider()
ORIGIN = "45ffd445-28cf-45fc-9ac5-7ee5d426c901"
MASK = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
GRID_ACTIONS = [
    "reroll", "upscale1", "upscale2", "upscale3", "upscale4",
    "variation1", "variation2", "variation3", "variation4",
]  # fmt: skip
WEBHOOK_FIELDS = ("webhook_endpoint", "webhook_secret")

#: What each fixture file is used for here; every file in tests/fixtures/goapi/ must be listed.
FIXTURE_USES = {
    "seed003_imagine_request.json": "request",
    "seed003_reroll_request.json": "request",
    "seed003_upscale_request.json": "request",
    "seed003_variation_request.json": "request",
    "seed003_inpaint_request.json": "request",
    "seed003_outpaint_request.json": "request",
    "seed003_pan_request.json": "request",
    "seed003_describe_request.json": "request",
    "note_fetch_request.json": "request",
    "note_multi_fetch_request_fixed.json": "request",
    "seed003_imagine_response.json": "receipt",
    "seed003_reroll_response_fixed.json": "receipt",
    "seed003_upscale_response.json": "receipt",
    "seed003_variation_response.json": "receipt",
    "seed003_inpaint_response.json": "receipt",
    "seed003_outpaint_response.json": "receipt",
    "seed003_pan_response.json": "receipt",
    "note_submit_failed_composed.json": "failed receipt",
    "note_task_object.jsonc": "task",
}


def strip_comments(text: str) -> str:
    """*text* without its `//` line comments (those outside JSON strings): JSONC to JSON."""
    out: list[str] = []
    in_string = escaped = False
    i = 0
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


def load(name: str) -> Any:
    text = (GOAPI / name).read_text(encoding="utf-8")
    return json.loads(strip_comments(text) if name.endswith(".jsonc") else text)


def task_object() -> dict[str, Any]:
    """goapi-api.md §2.3's task object (a fresh copy to edit)."""
    return copy.deepcopy(load("note_task_object.jsonc"))


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def without_blanks(example: dict[str, Any]) -> dict[str, Any]:
    """A documented body minus the webhook fields it sends empty ("" counts as absent)."""
    return {k: v for k, v in example.items() if not (k in WEBHOOK_FIELDS and v == "")}


def submit(request: ImagineRequest, **options: Any) -> tuple[str, dict[str, Any], dict[str, str]]:
    wire = PROVIDER.job_request(request, via="poll", **options)
    return wire.path, json.loads(wire.body), dict(wire.headers)


def test_every_fixture_is_used_and_decodes() -> None:
    names = sorted(p.name for p in GOAPI.iterdir() if p.name != "README.md")
    assert names == sorted(FIXTURE_USES)
    for name in names:
        assert isinstance(load(name), dict), name


def test_strip_comments_keeps_slashes_inside_strings() -> None:
    text = '{"u": "https://a//b", // note "quoted"\n "v": "x\\"//y"} // end'
    assert json.loads(strip_comments(text)) == {"u": "https://a//b", "v": 'x"//y'}


# --- the provider's surface ------------------------------------------------------------------------------


def test_identity_and_credentials() -> None:
    assert PROVIDER.name == "goapi" and PROVIDER.default_base_url == "https://api.goapi.ai"
    assert PROVIDER.streams is False and PROVIDER.long_waits is False
    assert PROVIDER.callback_secret_header == "x-webhook-secret"
    assert PROVIDER.auth_headers("k-123") == {"x-api-key": "k-123"}
    assert PROVIDER.credential_headers() == frozenset({"x-api-key"})
    assert PROVIDER.follow_up_id(ImagineUpdate(task_id="t-1", image_id="i-1")) == "t-1"
    assert PROVIDER.allowed_actions(ImagineUpdate(actions=["upscale1", "reroll"])) == {"upscale1", "reroll"}
    assert PROVIDER.recent_tasks_request(DescribeRequest(image_url="https://a.b/c.png"), since=0.0) is None
    assert (
        PROVIDER.same_request(mjasync.types.TaskRecord(), DescribeRequest(image_url="https://a.b/c.png"))
        is False
    )


def test_fetch_and_multi_fetch_requests_match_the_documented_bodies() -> None:
    wire = PROVIDER.task_request("<id>")
    assert wire.path == "/mj/v2/fetch" and json.loads(wire.body) == load("note_fetch_request.json")
    wire = PROVIDER.task_batch_request(["id1", "id2"])
    assert wire.path == "/mj/v2/multi_fetch"
    assert json.loads(wire.body) == load("note_multi_fetch_request_fixed.json")


def test_trace_ids_are_refused() -> None:
    """GoAPI has no trace ids: looking a task up by one is an InvalidRequestError, not a wrong request."""
    with pytest.raises(mjasync.InvalidRequestError, match="trace id"):
        PROVIDER.task_request(None, trace_id="trace-1")
    with pytest.raises(mjasync.InvalidRequestError, match="trace id"):
        PROVIDER.task_batch_request(None, trace_ids=["trace-1"])


# --- submit bodies ----------------------------------------------------------------------------------------

#: Every neutral follow-up the client offers on GoAPI -> (endpoint, extra body fields).
FOLLOW_UPS: list[tuple[str, str, dict[str, str]]] = [
    *[(f"upscale{i}", "upscale", {"index": str(i)}) for i in range(1, 5)],
    ("upscale_2x", "upscale", {"index": "2x"}),
    ("upscale_4x", "upscale", {"index": "4x"}),
    *[(f"variation{i}", "variation", {"index": str(i)}) for i in range(1, 5)],
    ("variation_strong", "variation", {"index": "high_variation"}),
    ("variation_subtle", "variation", {"index": "low_variation"}),
    ("reroll", "reroll", {}),
    ("variation_region", "inpaint", {"mask": MASK}),
    ("zoom_out_2x", "outpaint", {"zoom_ratio": "2"}),
    ("zoom_out_1_5x", "outpaint", {"zoom_ratio": "1.5"}),
    ("outpaint_1x", "outpaint", {"zoom_ratio": "1"}),
    *[(f"pan_{d}", "pan", {"direction": d}) for d in ("up", "down", "left", "right")],
]
#: Endpoints that take a new prompt; upscale acts on the picture alone.
PROMPTED = {"variation", "reroll", "inpaint", "outpaint", "pan"}


@pytest.mark.parametrize("prompt", [None, "a cute cat with a hat"])
@pytest.mark.parametrize(("action", "endpoint", "extra"), FOLLOW_UPS, ids=[a for a, _, _ in FOLLOW_UPS])
def test_follow_up_bodies(action: str, endpoint: str, extra: dict[str, str], prompt: str | None) -> None:
    """Each follow-up: its endpoint, `origin_task_id`, its index/ratio/direction as strings, the prompt
    where the endpoint takes one, and never a process_mode (follow-ups inherit the parent's, seed 003)."""
    request = ImagineRequest(
        action=action,
        image_id=ORIGIN,
        prompt=prompt,
        mask=MASK if action == "variation_region" else None,
        mode="fast",
        split_images=True,
        timeout=30.0,
    )
    path, body, headers = submit(request)
    expected: dict[str, Any] = {"origin_task_id": ORIGIN, **extra}
    if prompt is not None and endpoint in PROMPTED:
        expected["prompt"] = prompt
    assert path == f"/mj/v2/{endpoint}"
    assert body == expected
    assert headers == {"accept": "application/json"}


def test_the_follow_up_table_covers_every_goapi_action_the_client_names() -> None:
    """GoAPI's action names (§2.3, and the upscaled image's) all have a neutral follow-up in the table,
    except outpaint_custom, whose zoom value the client has no way to pass."""
    goapi_actions = [
        *GRID_ACTIONS, "high_variation", "low_variation", "inpaint", "upscale_2x", "upscale_4x",
        "outpaint_1.5x", "outpaint_2x", "outpaint_1x", "pan_up", "pan_down", "pan_left", "pan_right",
    ]  # fmt: skip
    task = task_object()
    task["task_result"]["actions"] = [*goapi_actions, "outpaint_custom"]
    neutral = PROVIDER.decode_result(ImagineUpdate, encode(task)).actions
    assert neutral[-1] == "outpaint_custom"
    assert sorted(neutral[:-1]) == sorted(action for action, _, _ in FOLLOW_UPS)
    with pytest.raises(mjasync.UnsupportedFeatureError, match="outpaint_custom"):
        PROVIDER.job_request(ImagineRequest(action="outpaint_custom", image_id=ORIGIN), via="poll")


def test_imagine_body_matches_seed_003() -> None:
    example = load("seed003_imagine_request.json")
    request = ImagineRequest(action="generate", prompt="a cute cat", aspect_ratio="4:3", mode="mixed")
    path, body, _ = submit(request)
    assert path == "/mj/v2/imagine" and body == without_blanks(example)


def test_imagine_body_carries_only_what_was_set() -> None:
    assert submit(ImagineRequest(action="generate", prompt="a cat"))[1] == {"prompt": "a cat"}
    request = ImagineRequest(action="generate", prompt="a cat", skip_prompt_check=False, mode="turbo")
    assert submit(request)[1] == {"prompt": "a cat", "process_mode": "turbo", "skip_prompt_check": False}


@pytest.mark.parametrize(
    ("name", "action", "dropped"),
    [
        ("seed003_upscale_request.json", "upscale1", ()),
        # The client offers no aspect_ratio for follow-ups: they keep the parent's (seed 003's default).
        ("seed003_variation_request.json", "variation1", ("aspect_ratio",)),
        ("seed003_reroll_request.json", "reroll", ("aspect_ratio",)),
        ("seed003_outpaint_request.json", "zoom_out_2x", ("aspect_ratio",)),
        ("seed003_pan_request.json", "pan_left", ()),
    ],
)
def test_follow_up_bodies_match_seed_003(name: str, action: str, dropped: tuple[str, ...]) -> None:
    example = load(name)
    request = ImagineRequest(action=action, image_id=example["origin_task_id"], prompt=example.get("prompt"))
    path, body, _ = submit(request)
    assert path == f"/mj/v2/{name.split('_')[1]}"
    assert body == {k: v for k, v in without_blanks(example).items() if k not in dropped}


def test_inpaint_body_matches_seed_003_byte_for_byte() -> None:
    """The seed's inpaint example (a WebP mask, skip_prompt_check false) is exactly what the client sends."""
    example = load("seed003_inpaint_request.json")
    request = ImagineRequest(
        action="variation_region",
        image_id=example["origin_task_id"],
        prompt=example["prompt"],
        mask=encode_mask(example["mask"]),
        skip_prompt_check=False,
    )
    path, body, _ = submit(request)
    assert path == "/mj/v2/inpaint" and body == example


def test_describe_and_seed_are_tasks() -> None:
    example = load("seed003_describe_request.json")
    call = PROVIDER.call_request(DescribeRequest(image_url=example["image_url"]))
    assert (call.path, call.result_type, call.as_task) == ("/mj/v2/describe", DescribeResult, True)
    # The client sends no mode for describe ("mixed", the documented default, is what the seed sends).
    assert json.loads(call.body) == {k: v for k, v in without_blanks(example).items() if k != "process_mode"}
    call = PROVIDER.call_request(SeedRequest(image_id=ORIGIN))
    assert (call.path, call.result_type, call.as_task) == ("/mj/v2/seed", SeedResult, True)
    assert json.loads(call.body) == {"task_id": ORIGIN}


def test_blend_body() -> None:
    urls = ["https://e.com/a.png", "https://e.com/b.png", "https://e.com/c.png"]
    request = ImagineRequest(
        action="generate",
        prompt=" ".join(urls) + " --ar 2:3",
        blend_urls=urls,
        dimension="portrait",
        mode="relax",
    )
    path, body, _ = submit(request)
    assert path == "/mj/v2/blend"
    assert body == {"image_urls": urls, "dimension": "portrait", "process_mode": "relax"}
    bare = ImagineRequest(action="generate", prompt=" ".join(urls[:2]), blend_urls=urls[:2])
    assert submit(bare)[1] == {"image_urls": urls[:2]}


@pytest.mark.parametrize(
    "prompt", ["{urls} a bear", "{urls} --ar 2:3", "{urls} --s 250", "a bear {urls}"], ids=str
)
def test_blend_with_text_or_parameters_is_unsupported(prompt: str) -> None:
    """GoAPI's blend takes images only; `--ar` passes only as the dimension's own."""
    urls = ["https://e.com/a.png", "https://e.com/b.png"]
    request = ImagineRequest(action="generate", prompt=prompt.format(urls=" ".join(urls)), blend_urls=urls)
    with pytest.raises(mjasync.UnsupportedFeatureError, match="blend"):
        PROVIDER.check(request)


def test_webhook_fields() -> None:
    """A receiver's route becomes webhook_endpoint/secret (+ notify_progress); a bare callback_url only the endpoint."""
    request = ImagineRequest(action="generate", prompt="a cat", callback_url="https://me.example/hook")
    assert submit(request)[1] == {"prompt": "a cat", "webhook_endpoint": "https://me.example/hook"}
    target = CallbackTarget(url="https://recv.example/cb/1", secret="s3cret", progress=True)
    assert submit(request, callback=target)[1] == {
        "prompt": "a cat",
        "webhook_endpoint": "https://recv.example/cb/1",
        "webhook_secret": "s3cret",
        "notify_progress": True,
    }
    quiet = CallbackTarget(url="https://recv.example/cb/2", secret="s3cret")
    body = submit(ImagineRequest(action="upscale1", image_id=ORIGIN), callback=quiet)[1]
    assert body == {
        "origin_task_id": ORIGIN,
        "index": "1",
        "webhook_endpoint": "https://recv.example/cb/2",
        "webhook_secret": "s3cret",
    }


UNSUPPORTED: dict[str, Any] = {
    "videos": VideosRequest(action="generate", image_url="https://e.com/a.png"),
    "extend": VideosRequest(action="extend", video_id="1"),
    "edits": EditsRequest(action="generate", image_url="https://e.com/a.png", prompt="snow"),
    "shorten": ShortenRequest(prompt="a long prompt"),
    "translate": TranslateRequest(content="一只猫"),
    "translation": ImagineRequest(action="generate", prompt="一只猫", translation=True),
    "quality": ImagineRequest(action="generate", prompt="a cat", quality="2"),
    "moodboard": ImagineRequest(action="generate", prompt="a cat", moodboard=True),
    "unknown_action": ImagineRequest(action="upscale_creative", image_id=ORIGIN),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
def test_unsupported_requests(case: str) -> None:
    request = UNSUPPORTED[case]
    with pytest.raises(mjasync.UnsupportedFeatureError) as caught:
        PROVIDER.check(request)
    assert caught.value.provider == "goapi" and isinstance(caught.value, mjasync.InvalidRequestError)
    with pytest.raises(mjasync.UnsupportedFeatureError):
        if isinstance(request, (ImagineRequest, EditsRequest, VideosRequest)):
            PROVIDER.job_request(request, via="poll")
        else:
            PROVIDER.call_request(request)


# --- submit answers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, use in FIXTURE_USES.items() if use == "receipt"))
def test_submit_receipts_give_the_task_id(name: str) -> None:
    raw = (GOAPI / name).read_bytes()
    assert PROVIDER.decode_receipt(raw, request="POST /mj/v2/x") == load(name)["task_id"]


def test_a_failed_submit_answer_raises_its_message() -> None:
    raw = (GOAPI / "note_submit_failed_composed.json").read_bytes()
    with pytest.raises(mjasync.APIStatusError) as caught:
        PROVIDER.decode_receipt(raw, request="POST /mj/v2/upscale")
    error = caught.value
    assert type(error) is mjasync.APIStatusError and error.status == 200
    assert error.message == "derive from origin task: parent task is outdated"
    assert error.request == "POST /mj/v2/upscale" and error.body is not None
    with pytest.raises(mjasync.APIStatusError, match="refused"):
        PROVIDER.decode_receipt(b'{"task_id": "t", "status": "failed", "message": ""}')


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"status": "success", "message": ""}', b'{"task_id": ""}']
)
def test_undecodable_submit_answers(body: bytes) -> None:
    with pytest.raises(mjasync.ResponseDecodeError) as caught:
        PROVIDER.decode_receipt(body, request="POST /mj/v2/imagine")
    assert caught.value.request == "POST /mj/v2/imagine"


def test_a_receipt_without_status_is_accepted() -> None:
    assert PROVIDER.decode_receipt(b'{"task_id": "t-9"}') == "t-9"


# --- task objects -----------------------------------------------------------------------------------------


def test_the_documented_task_object_decodes_to_a_final_result() -> None:
    """goapi-api.md §2.3: a finished grid; neutral fields filled, the whole object kept in raw."""
    task = task_object()
    result = PROVIDER.decode_result(ImagineUpdate, encode(task), request="POST /mj/v2/fetch")
    assert result.is_final and result.finished is True and not result.failed
    assert result.task_id == "c0d39b5a-…" and result.image_id == "34ca8bae-…"
    assert result.image_url == "https://img.midjourneyapi.xyz/mj/<task_id>.png"
    assert result.progress == 100  # finished, whatever the last task_progress said (90)
    assert result.actions == GRID_ACTIONS and result.sub_image_urls is None  # image_urls is []
    assert result.raw == task
    assert result.raw["task_result"]["discord_image_url"] == "https://cdn.discordapp.com/attachments/…"
    assert result.error is None and result.success is True
    assert PROVIDER.decode_callback(ImagineUpdate, encode(task)) == result


def test_the_documented_task_object_as_a_record() -> None:
    record = PROVIDER.decode_task(encode(task_object()))
    assert record.id == "c0d39b5a-…" and record.type == "imagine" and record.state == "finished"
    assert record.mode == "fast" and record.request == {"prompt": "…"}
    assert (record.created_at, record.started_at, record.finished_at) == (1709035361, 1709035380, 1709035414)
    assert record.duration == 34 and record.trace_id is None
    assert isinstance(record.response, ImagineUpdate) and record.response.is_final
    assert PROVIDER.task_state(record) == "succeeded"


@pytest.mark.parametrize(
    ("task_type", "kind"),
    [
        ("imagine", ImagineUpdate), ("upscale", ImagineUpdate), ("variation", ImagineUpdate),
        ("reroll", ImagineUpdate), ("inpaint", ImagineUpdate), ("outpaint", ImagineUpdate),
        ("pan", ImagineUpdate), ("blend", ImagineUpdate), ("describe", DescribeResult),
        ("seed", SeedResult), ("something_new", Result), (None, Result),
    ],
)  # fmt: skip
def test_task_type_picks_the_result_type(task_type: str | None, kind: type[Result]) -> None:
    task = task_object()
    task["meta"]["task_type"] = task_type
    record = PROVIDER.decode_task(encode(task))
    assert type(record.response) is kind and record.type == task_type
    # A kind given by the caller wins.
    assert type(PROVIDER.decode_task(encode(task), SeedResult).response) is SeedResult


def test_multi_fetch_leaves_out_null_entries() -> None:
    """goapi-api.md §2.5: `{"data": {id: task object or null}}`, here with the §2.3 object and a null."""
    task = task_object()
    answer = {"data": {task["task_id"]: task, "807400b9-9d79-465b-8ecc-eecb7419dbbc": None}}
    bodies = PROVIDER.task_bodies(encode(answer), batch=True)
    assert list(bodies) == [task["task_id"]] and json.loads(bodies[task["task_id"]]) == task
    batch = PROVIDER.decode_task_batch(encode(answer))
    assert batch.count == 1 and [r.id for r in batch.items] == [task["task_id"]]
    assert isinstance(batch.items[0].response, ImagineUpdate) and batch.items[0].response.is_final
    assert PROVIDER.task_bodies(b'{"data": {}}', batch=True) == {}


def test_fetch_bodies_are_keyed_by_their_task_id() -> None:
    body = encode(task_object())
    assert PROVIDER.task_bodies(body, batch=False) == {"c0d39b5a-…": body}
    assert PROVIDER.task_bodies(b'{"status": "pending"}', batch=False) == {}
    for bad, batch in ((b"[1]", False), (b"<html>", False), (b'{"data": [1]}', True), (b"nope", True)):
        with pytest.raises(mjasync.ResponseDecodeError):
            PROVIDER.task_bodies(bad, batch=batch)


def failed_task(*messages: str, message: str = "") -> dict[str, Any]:
    task = task_object()
    task["status"] = "failed"
    task["task_result"].update(error_messages=list(messages), message=message, actions=[], task_progress=0)
    return task


def test_a_failed_task_reports_its_error_and_maps_to_job_failed() -> None:
    """§2.6: a task-level failure is `status: failed` with the reason in task_result.error_messages."""
    task = failed_task("Banned Prompt: gore")
    result = PROVIDER.decode_result(ImagineUpdate, encode(task))
    assert result.failed and not result.is_final and result.finished is False
    assert result.error == "Banned Prompt: gore" and result.actions == [] and result.image_id is None
    record = PROVIDER.decode_task(encode(task))
    assert PROVIDER.task_state(record) == "failed" and record.response == result
    error = PROVIDER.job_failed(result, request="POST /mj/v2/fetch")
    assert isinstance(error, mjasync.JobFailedError) and error.code == "banned_prompt"
    assert isinstance(error, mjasync.BannedPromptError) and isinstance(error, mjasync.ModerationError)
    assert error.message == "Banned Prompt: gore" and error.task_id == task["task_id"]
    assert error.request == "POST /mj/v2/fetch" and error.body is not None
    assert json.loads(error.body) == task


@pytest.mark.parametrize(
    ("messages", "message", "expected"),
    [
        (("Request cancelled due to image filters",), "", "Request cancelled due to image filters"),
        (("first", "", "second"), "", "first; second"),
        ((), "the task failed upstream", "the task failed upstream"),
        ((), "", "task failed"),
    ],
)
def test_failure_messages(messages: tuple[str, ...], message: str, expected: str) -> None:
    result = PROVIDER.decode_result(ImagineUpdate, encode(failed_task(*messages, message=message)))
    assert result.error == expected
    error = PROVIDER.job_failed(result)
    assert error.message == expected and error.code is None


QUEUED = ["pending", "staged", "retry", "starting", "", "mystery_state"]


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("pending", "pending"),
        ("staged", "pending"),
        ("processing", "running"),
        ("finished", "succeeded"),
        ("failed", "failed"),
        ("retry", "pending"),
        ("starting", "pending"),
        ("mystery_state", "pending"),
        ("", "pending"),
        (None, "pending"),
    ],
)
def test_task_state_for_every_status(status: str | None, state: str) -> None:
    task = task_object()
    task["status"] = status
    task["task_result"]["task_progress"] = 40
    record = PROVIDER.decode_task(encode(task), ImagineUpdate)
    assert record.state == (status or None)
    assert PROVIDER.task_state(record) == state
    if status in QUEUED or status is None:
        assert record.response is None, "a queued task has no response yet"
    else:
        assert isinstance(record.response, ImagineUpdate)
    if status == "processing":
        assert record.response is not None and record.response.progress == 40
        assert not record.response.is_final and record.response.actions == []


def test_task_state_of_records_without_a_response() -> None:
    assert PROVIDER.task_state(mjasync.types.TaskRecord(state="finished")) == "pending"
    assert PROVIDER.task_state(mjasync.types.TaskRecord(state="processing")) == "pending"
    assert PROVIDER.task_state(mjasync.types.TaskRecord(state="failed")) == "failed"
    assert PROVIDER.task_state(mjasync.types.TaskRecord()) == "pending"


# --- lenient decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task",
    [
        {},
        {"task_id": "t"},
        {"task_id": None, "status": None, "process_time": None, "meta": None, "task_result": None},
        {"task_id": "t", "status": "finished", "meta": {}, "task_result": {}},
        {
            "task_id": "t",
            "status": "finished",
            "meta": dict.fromkeys(("created_at", "started_at", "ended_at", "process_mode", "task_type")),
            "task_result": dict.fromkeys(
                ("image_url", "image_urls", "task_progress", "intermediate_image_urls", "image_id", "seed",
                 "message", "description", "error_messages", "actions")
            ),
        },
    ],
    ids=["empty", "only-id", "all-null", "empty-parts", "null-fields"],
)  # fmt: skip
def test_every_field_is_optional(task: dict[str, Any]) -> None:
    for kind in (ImagineUpdate, DescribeResult, SeedResult, Result):
        record = PROVIDER.decode_task(encode(task), kind)
        assert PROVIDER.task_state(record) in ("pending", "succeeded")
        result = PROVIDER.decode_result(kind, encode(task))
        assert result.raw == task and result.task_id == (task.get("task_id") or None)
        assert result.error is None
    imagine = PROVIDER.decode_result(ImagineUpdate, encode(task))
    assert imagine.image_url is None and imagine.sub_image_urls is None and imagine.image_id is None
    if task.get("status") == "finished":
        assert imagine.actions == [] and imagine.progress == 100
    record = PROVIDER.decode_task(encode(task))
    assert record.created_at is None and record.started_at is None and record.mode is None


def test_zero_times_read_as_absent_and_numbers_may_be_strings() -> None:
    """The emulator (and Go) send 0 for times not reached yet; lax decoding takes "40" for 40."""
    task = task_object()
    task["status"] = "processing"
    task["meta"].update(started_at=0, ended_at=0)
    task["task_result"].update(task_progress="40", seed=12345, image_id="")
    record = PROVIDER.decode_task(encode(task))
    assert record.started_at is None and record.finished_at is None and record.created_at == 1709035361
    assert isinstance(record.response, ImagineUpdate) and record.response.progress == 40.0
    assert record.response.image_id is None
    seed_task = task_object()
    seed_task["meta"]["task_type"] = "seed"
    seed_task["task_result"]["seed"] = 12345
    assert PROVIDER.decode_result(SeedResult, encode(seed_task)).seed == 12345
    seed_task["task_result"]["seed"] = ""
    assert PROVIDER.decode_result(SeedResult, encode(seed_task)).seed is None


def test_a_finished_task_is_final_without_an_image_id() -> None:
    """goapi-api.md §2.3: any task_result field may be missing; `status: finished` is what ends a task."""
    task = task_object()
    del task["task_result"]["image_id"]
    record = PROVIDER.decode_task(encode(task), ImagineUpdate)
    assert PROVIDER.task_state(record) == "succeeded"
    assert record.response is not None and record.response.is_final


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"finished"',
        b"{",
        b'{"task_id": 5}',
        b'{"status": ["finished"]}',
        b'{"meta": []}',
        b'{"task_result": "done"}',
        b'{"task_result": {"actions": "upscale1"}}',
        b'{"task_result": {"task_progress": "half"}}',
        b'{"meta": {"created_at": 1e400}}',
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
    ],
    ids=lambda b: repr(b[:24]),
)
def test_malformed_task_objects_raise_response_decode_error(body: bytes) -> None:
    with pytest.raises(mjasync.ResponseDecodeError) as caught:
        PROVIDER.decode_task(body)
    assert caught.value.body is not None
    with pytest.raises(mjasync.ResponseDecodeError) as in_result:
        PROVIDER.decode_result(ImagineUpdate, body, request="POST /mj/v2/fetch")
    assert in_result.value.request == "POST /mj/v2/fetch"
    with pytest.raises(mjasync.ResponseDecodeError) as in_update:
        PROVIDER.decode_update(ImagineUpdate, body, 3)
    assert in_update.value.request == "line 3"


# --- describe -----------------------------------------------------------------------------------------


FOUR = ["a paper boat --ar 1:1", "a quiet harbour", "a copper robot, neon glow", "tulips --ar 3:2"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\n\n".join(f"{n}\ufe0f\u20e3 {p}" for n, p in enumerate(FOUR, 1)), FOUR),
        ("\n\n".join(f"{n}\u20e3 {p}" for n, p in enumerate(FOUR, 1)), FOUR),
        ("\r\n\r\n".join(f"{n}\ufe0f\u20e3 {p}" for n, p in enumerate(FOUR, 1)), FOUR),
        ("\n \n\n".join(f"  {n}\ufe0f\u20e3  {p}  " for n, p in enumerate(FOUR, 1)) + "\n\n", FOUR),
        ("\n\n".join(FOUR), FOUR),
        ("one prompt only", ["one prompt only"]),
        ("", []),
    ],
    ids=["keycaps", "bare-keycaps", "crlf", "extra-space", "no-keycaps", "single", "empty"],
)
def test_describe_text_is_split_into_prompts(text: str, expected: list[str]) -> None:
    task = task_object()
    task["meta"]["task_type"] = "describe"
    task["task_result"].update(description=text, message="ignored when description is there", actions=[])
    if not text:
        task["task_result"]["message"] = ""
    result = PROVIDER.decode_result(DescribeResult, encode(task))
    assert result.descriptions == expected
    assert result.is_final is bool(expected)


def test_describe_falls_back_to_message_and_waits_for_finished() -> None:
    task = task_object()
    task["meta"]["task_type"] = "describe"
    task["task_result"].pop("description", None)
    task["task_result"]["message"] = "1\ufe0f\u20e3 a cat\n\n2\ufe0f\u20e3 a dog"
    assert PROVIDER.decode_task(encode(task)).response == PROVIDER.decode_result(DescribeResult, encode(task))
    assert PROVIDER.decode_result(DescribeResult, encode(task)).descriptions == ["a cat", "a dog"]
    task["status"] = "processing"
    running = PROVIDER.decode_result(DescribeResult, encode(task))
    assert running.descriptions == [] and not running.is_final


# --- errors -------------------------------------------------------------------------------------------


def goapi_error(message: str) -> bytes:
    """The error body the emulator sends (the submit answer's keys, status failed)."""
    return encode({"task_id": "", "status": "failed", "message": message})


@pytest.mark.parametrize(
    ("status", "headers", "body", "cls", "message"),
    [
        (400, {}, goapi_error("derive from origin task: task `x` not found."), mjasync.BadRequestError,
         "derive from origin task: task `x` not found."),
        (401, {}, goapi_error("The API key is incorrect"), mjasync.AuthenticationError,
         "The API key is incorrect"),
        (403, {}, goapi_error("not on your plan"), mjasync.PermissionDeniedError, "not on your plan"),
        (404, {}, b"404 page not found", mjasync.NotFoundError, "HTTP 404 with no error message (18 bytes)"),
        (429, {"Retry-After": "7"}, goapi_error("too many requests"), mjasync.RateLimitError,
         "too many requests"),
        (500, {}, goapi_error("Service is experiencing an error"), mjasync.ServerError,
         "Service is experiencing an error"),
        (502, {"Content-Type": "text/html"}, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
         mjasync.ServerError, "HTTP 502 with no error message (50 bytes)"),
        (503, {"Retry-After": "3600"}, b"", mjasync.ServerError, "HTTP 503 with an empty body"),
        (500, {}, b"", mjasync.ServerError, "HTTP 500 with an empty body"),
        (402, {}, encode({"code": 402, "data": None, "message": "no credits"}), mjasync.APIStatusError,
         "no credits"),
        (400, {}, encode({"error": {"message": "bad field"}}), mjasync.BadRequestError, "bad field"),
        (422, {}, encode({"detail": "prompt is required"}), mjasync.APIStatusError, "prompt is required"),
        (400, {}, b'["not", "an", "object"]', mjasync.BadRequestError,
         "HTTP 400 with no error message (23 bytes)"),
    ],
    ids=["400", "401", "403", "404-text", "429", "500", "502-html", "503-empty", "500-empty", "402-unified",
         "400-error-object", "422-detail", "400-array"],
)  # fmt: skip
def test_error_mapping_by_status(
    status: int, headers: dict[str, str], body: bytes, cls: type[mjasync.APIStatusError], message: str
) -> None:
    error = PROVIDER.status_error(status, CIMultiDict(headers), body, request="POST /mj/v2/imagine")
    assert type(error) is cls
    assert error.status == status and error.message == message
    assert error.request == "POST /mj/v2/imagine" and error.code is None and error.trace_id is None
    assert error.body == body.decode()
    expected_wait = {"7": 7.0, "3600": 3600.0}.get(headers.get("Retry-After", ""))
    assert error.retry_after == expected_wait


def test_error_retry_after_as_a_date_and_request_id() -> None:
    headers = CIMultiDict({"retry-after": "Wed, 21 Oct 2099 07:28:00 GMT", "X-Request-Id": "req-77"})
    error = PROVIDER.status_error(429, headers, b"")
    assert isinstance(error, mjasync.RateLimitError) and error.trace_id == "req-77"
    assert error.retry_after is not None and error.retry_after > 365 * 24 * 3600
    assert PROVIDER.status_error(429, CIMultiDict({"Retry-After": "soon"}), b"").retry_after is None


# --- any JSON at all --------------------------------------------------------------------------------------

KEYS = st.sampled_from(
    [
        "task_id", "status", "process_time", "meta", "task_result", "created_at", "started_at", "ended_at",
        "process_mode", "task_type", "task_request", "image_url", "image_urls", "task_progress",
        "intermediate_image_urls", "image_id", "seed", "message", "description", "error_messages",
        "actions", "data",
    ]
) | st.text(max_size=8)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["finished", "failed", "processing", "pending", "imagine", "describe", "seed"])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=25,
)
OBJECTS = st.dictionaries(KEYS, JSON_VALUES, max_size=8)
KINDS = st.sampled_from([None, ImagineUpdate, DescribeResult, SeedResult, Result])


@settings(max_examples=300, deadline=None)
@given(task=OBJECTS, kind=KINDS)
def test_any_json_object_decodes_or_raises_response_decode_error(
    task: dict[str, Any], kind: type[Result] | None
) -> None:
    body = encode(task)
    try:
        record = PROVIDER.decode_task(body, kind)
    except mjasync.ResponseDecodeError:
        return
    assert isinstance(record, mjasync.types.TaskRecord)
    assert PROVIDER.task_state(record) in ("pending", "running", "succeeded", "failed")
    if record.response is not None:
        assert record.response.raw == task
        if record.response.failed:
            assert isinstance(PROVIDER.job_failed(record.response), mjasync.JobFailedError)


@settings(max_examples=200, deadline=None)
@given(answer=st.dictionaries(st.just("data") | KEYS, JSON_VALUES | OBJECTS, max_size=3))
def test_any_multi_fetch_answer_decodes_or_raises_response_decode_error(answer: dict[str, Any]) -> None:
    try:
        batch = PROVIDER.decode_task_batch(encode(answer))
    except mjasync.ResponseDecodeError:
        return
    assert batch.count == len(batch.items)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=64))
def test_any_bytes_decode_or_raise_response_decode_error(body: bytes) -> None:
    for call in (
        lambda: PROVIDER.decode_task(body),
        lambda: PROVIDER.decode_receipt(body),
        lambda: PROVIDER.task_bodies(body, batch=True),
        lambda: PROVIDER.task_bodies(body, batch=False),
    ):
        try:
            call()
        except (mjasync.ResponseDecodeError, mjasync.APIStatusError):
            pass


def test_false_flags_ask_for_nothing_goapi_lacks() -> None:
    """`translation=False` or `moodboard=False` is no feature request, so the job is not refused."""
    request = ImagineRequest(action="generate", prompt="a cat", translation=False, moodboard=False)
    PROVIDER.check(request)
    wire = PROVIDER.job_request(request, via="poll")
    assert wire.path == "/mj/v2/imagine"
    assert json.loads(wire.body) == {"prompt": "a cat"}


def test_describe_prompts_numbered_on_single_lines_are_split_too() -> None:
    """The bot's keycap numbers start each prompt, blank line or not."""
    text = "1\ufe0f\u20e3 a cat\n2\ufe0f\u20e3 a dog --ar 2:3\n\n3\ufe0f\u20e3 a fox\n4\ufe0f\u20e3 an owl"
    task = {"task_id": "t", "status": "finished", "task_result": {"message": text}}
    result = PROVIDER.decode_result(DescribeResult, json.dumps(task).encode())
    assert result.descriptions == ["a cat", "a dog --ar 2:3", "a fox", "an owl"]
