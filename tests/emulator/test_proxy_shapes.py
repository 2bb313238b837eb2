"""Every recorded midjourney-proxy example (tests/fixtures/proxy) against the emulator's answer to the same request.

As `test_response_shapes` does for AceData: for each example the test makes the request the example
answers and compares the two recursively, the same keys and the same JSON type at every path. Values are
not compared (ids, hashes, URLs and times are the emulator's own), except a few that define the reply
(its code, and a few descriptions).

The examples come from different variants (§10 says which), so the emulator, which speaks one protocol,
differs from some of them. Each difference is listed here and asserted to still occur, so the list cannot
go stale:

* ``buttons``: the emulator's Task always has it (``[]`` until SUCCESS), as plus and trueai do; NZ's
  IN_PROGRESS and FAILURE examples (§10.2, §10.4) predate buttons.
* ``properties.botType`` (plus/trueai, §5.6) is in every emulator Task; NZ's §10.2 and §10.4 lack it.
* ``properties.nonce`` (NZ, trueai) is in every emulator Task; §10.3's (plus/trueai shape) lacks it.
* The describe example (§10.5) is NZ's documentation's, which shows only some fields: the emulator adds
  the rest of the Task (times, ``state``, ``failReason``, ``buttons``) and the properties every task has.
* The list-by-condition items (§10.6) and the MODAL task (§10.7) name a few fields and elide the rest
  (``"…"``), so only the fields they name are compared.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mjasync.emulator import ManualClock

from ..helpers import FIXTURES, mask_b64, webhook_receiver
from .test_proxy_emulator import JOB, Proxy, data_url, proxy
from .test_response_shapes import assert_same_shape

JSON = dict[str, Any]
#: The placeholder key §10.6's items use for "the other fields".
ELIDED = "…"


def load_fixture(name: str) -> Any:
    """Parse one recorded midjourney-proxy example."""
    return json.loads((FIXTURES / "proxy" / name).read_text(encoding="utf-8"))


# --- one request per recorded example -------------------------------------------------------------


async def accepted(p: Proxy) -> JSON:
    return await p.submit("imagine", {"prompt": "red fox in snow --v 6.1", "state": "job-4b1e9c"})


async def queued(p: Proxy) -> JSON:
    await p.submit("imagine", {"prompt": "first"})
    reply = await p.submit("imagine", {"prompt": "second"}, code=22)
    assert reply["description"] == "排队中，前面还有0个任务"
    return reply


async def queue_full(p: Proxy) -> JSON:
    await p.submit("imagine", {"prompt": "first"})
    await p.submit("imagine", {"prompt": "second"}, code=22)
    reply = await p.submit("imagine", {"prompt": "third"}, code=23)
    assert reply["description"] == load_fixture("submit_queue_full.json")["description"]
    return reply


async def banned(p: Proxy) -> JSON:
    reply = await p.submit("imagine", {"prompt": "gore statue"}, code=24)
    assert reply["description"] == load_fixture("submit_banned.json")["description"]
    return reply


async def upscaled(p: Proxy) -> JSON:
    """A finished upscale (speed 0), the parent of Vary (Region) and Custom Zoom."""
    grid = await p.done("imagine", {"prompt": "red fox in snow --v 6.1"})
    return await p.task((await p.press(grid, "U1"))["result"])


async def modal(p: Proxy) -> JSON:
    reply = await p.press(await upscaled(p), "Vary (Region)", code=21)
    assert reply["description"] == load_fixture("submit_modal.json")["description"]
    return reply


async def validation_error(p: Proxy) -> JSON:
    reply = await p.submit("imagine", {"state": "job-4b1e9c"}, code=4)
    assert reply == load_fixture("submit_validation_error.json")
    return reply


async def parent_not_found(p: Proxy) -> JSON:
    status, reply = await p.call("POST", "submit/action", {"taskId": "1720001234567123", "customId": "x"})
    assert status == 404
    assert reply == load_fixture("submit_parent_not_found.json")
    return dict(reply)


async def in_progress(p: Proxy) -> JSON:
    async with webhook_receiver() as (hook, _):
        body = {"prompt": "red fox in snow --ar 3:2", "state": "job-4b1e9c", "notifyHook": hook}
        task_id = (await p.submit("imagine", body))["result"]
        p.clock.advance(JOB / 2)
        task = await p.task(task_id)
        p.clock.advance(JOB)  # let every callback land before the receiver stops
        await p.task(task_id)
    assert (task["status"], task["progress"]) == ("IN_PROGRESS", "46%")
    return task


async def success_grid(p: Proxy) -> JSON:
    task = await p.done("imagine", {"prompt": "red fox in snow --v 6.1", "state": "job-4b1e9c"})
    recorded = load_fixture("task_success_grid.json")
    assert [b["label"] for b in task["buttons"]] == [b["label"] for b in recorded["buttons"]]
    assert [b["emoji"] for b in task["buttons"]] == [b["emoji"] for b in recorded["buttons"]]
    job_hash, recorded_hash = task["properties"]["messageHash"], recorded["properties"]["messageHash"]
    assert [b["customId"].replace(job_hash, "{h}") for b in task["buttons"]] == [
        b["customId"].replace(recorded_hash, "{h}") for b in recorded["buttons"]
    ]
    return task


async def failure(p: Proxy) -> JSON:
    task = await p.task(await p.run("imagine", {"prompt": "cat --ar 0:1"}))
    assert task["failReason"] == "[Invalid parameter] Invalid aspect ratio"
    return task


async def describe_success(p: Proxy) -> JSON:
    return await p.done("describe", {"base64": data_url()})


Scenario = Callable[[Proxy], Awaitable[JSON]]
#: Recorded example -> (emulator options, the request it answers, paths the emulator adds).
SCENARIOS: dict[str, tuple[JSON, Scenario, tuple[str, ...]]] = {
    "submit_accepted.json": ({}, accepted, ()),
    "submit_queued.json": ({"speed": JOB, "concurrency_limit": 1}, queued, ()),
    "submit_queue_full.json": ({"speed": JOB, "concurrency_limit": 1, "proxy_queue_size": 1}, queue_full, ()),
    "submit_banned.json": ({}, banned, ()),
    "submit_modal.json": ({}, modal, ()),
    "submit_validation_error.json": ({}, validation_error, ()),
    "submit_parent_not_found.json": ({}, parent_not_found, ()),
    "task_in_progress.json": ({"speed": JOB}, in_progress, ("$.buttons", "$.properties.botType")),
    "task_success_grid.json": ({}, success_grid, ("$.properties.nonce",)),
    "task_failure.json": ({}, failure, ("$.buttons", "$.properties.botType")),
    "task_describe_success.json": (
        {},
        describe_success,
        tuple(
            f"$.{key}" for key in ("state", "submitTime", "startTime", "finishTime", "failReason", "buttons")
        )
        + tuple(f"$.properties.{key}" for key in ("discordInstanceId", "botType", "nonce", "messageId")),
    ),
}
#: Examples that name only some fields; compared in their own tests below.
PARTIAL = {"list_by_condition.json", "task_modal_fixed.json"}


def test_every_recorded_example_is_compared() -> None:
    """Each example in tests/fixtures/proxy has a request here."""
    recorded = {path.name for path in (FIXTURES / "proxy").glob("*.json")}
    assert recorded == set(SCENARIOS) | PARTIAL


@pytest.mark.parametrize("fixture", sorted(SCENARIOS))
async def test_answer_has_the_recorded_shape(fixture: str) -> None:
    """The emulator's answer to the example's request has its keys and JSON types (bar the listed extras)."""
    options, scenario, extra = SCENARIOS[fixture]
    async with proxy(**options) as p:
        actual = await scenario(p)
    recorded = load_fixture(fixture)
    assert_same_shape(recorded, actual, extra=extra)
    if "code" in recorded:
        assert actual["code"] == recorded["code"]
    else:
        assert (actual["action"], actual["status"]) == (recorded["action"], recorded["status"])


def named_fields(recorded: JSON, actual: JSON) -> JSON:
    """*actual* cut down to the fields *recorded* names (its ``"…"`` stands for the rest)."""
    assert set(recorded) - {ELIDED} <= set(actual)
    return {key: actual[key] for key in recorded if key != ELIDED}


async def test_list_by_condition_items_have_the_recorded_fields() -> None:
    """list-by-condition: a list of Tasks without the unknown id; the named fields have the recorded types."""
    recorded = load_fixture("list_by_condition.json")
    async with proxy(clock=ManualClock()) as p:
        success = await p.run("imagine", {"prompt": "red fox in snow", "state": "job-4b1e9c"})
        p.clock.advance(1)
        failed = await p.run("imagine", {"prompt": "cat --ar 0:1"})
        status, listing = await p.call("POST", "task/list-by-condition", {"ids": [success, failed, "999"]})
    assert status == 200
    # The emulator lists newest first, which here is the example's order (the failure first).
    assert [item["id"] for item in listing] == [failed, success]
    assert [item["status"] for item in listing] == [item["status"] for item in recorded]
    assert_same_shape([{k: v for k, v in item.items() if k != ELIDED} for item in recorded], [
        named_fields(expected, item) for expected, item in zip(recorded, listing, strict=True)
    ])  # fmt: skip


async def test_modal_task_has_the_recorded_fields() -> None:
    """A fetched MODAL task (Custom Zoom, as §10.7's) has the fields and types the example names."""
    recorded = load_fixture("task_modal_fixed.json")
    async with proxy() as p:
        parent = await upscaled(p)
        reply = await p.press(parent, "Custom Zoom", code=21)
        task = await p.task(reply["result"])
        # The other kind of MODAL task (Vary (Region)) looks the same, with the mask still to come.
        region = await p.task((await p.press(parent, "Vary (Region)", code=21))["result"])
        await p.submit("modal", {"taskId": region["id"], "maskBase64": mask_b64()})
    assert_same_shape(recorded, named_fields(recorded, task))
    assert_same_shape(recorded, named_fields(recorded, region))
    assert (task["action"], task["status"], task["description"]) == ("ZOOM", "MODAL", recorded["description"])
    assert task["parentId"] == parent["id"]
