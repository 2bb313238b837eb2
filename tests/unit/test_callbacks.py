"""CallbackInbox and WebhookReceiver routes, without sockets: what a job keeps of its callbacks."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

import anyio
import pytest

import mjasync
from mjasync._exceptions import ResponseDecodeError
from mjasync._inbox import CallbackInbox
from mjasync._providers import get_provider
from mjasync.emulator import ManualClock

from ..virtual_time import VirtualTime

SECRET = "a-webhook-secret-for-tests"


def goapi_inbox() -> CallbackInbox[mjasync.types.ImagineUpdate]:
    return CallbackInbox(get_provider("goapi"), mjasync.types.ImagineUpdate)


def task(task_id: str, status: str = "processing", progress: int = 20) -> bytes:
    """A GoAPI task object, as its webhooks carry it."""
    body: dict[str, Any] = {"task_id": task_id, "status": status, "task_result": {"task_progress": progress}}
    if status == "finished":
        body["task_result"].update(
            image_url="http://127.0.0.1:9/grid.png",
            image_urls=[f"http://127.0.0.1:9/{i}.png" for i in range(4)],
            task_progress=100,
            image_id="img-1",
            actions=["upscale1"],
        )
    return json.dumps(body).encode()


# --- CallbackInbox ----------------------------------------------------------------------------------


async def test_progress_comes_out_first_then_the_final_once() -> None:
    inbox = goapi_inbox()
    inbox.expect("t1")
    assert inbox.deliver(task("t1", progress=20))
    assert inbox.deliver(task("t1", progress=40))
    assert inbox.deliver(task("t1", "finished"))
    assert inbox.deliver(task("t1", progress=60)), "a late body is acknowledged, and dropped"

    first = await inbox.next(within=0.01)
    assert first is not None and first.progress == 20 and not first.is_final
    second = await inbox.next(within=0.01)
    assert second is not None and second.progress == 40
    final = await inbox.next(within=0.01)
    assert final is not None and final.is_final
    assert await inbox.next(within=0.01) is None, "the final is handed out once"
    assert inbox.received == 4


async def test_a_repeat_of_the_final_changes_nothing() -> None:
    inbox = goapi_inbox()
    inbox.expect("t1")
    inbox.deliver(task("t1", "finished"))
    assert inbox.deliver(task("t1", "failed")), "acknowledged, so the provider stops retrying"
    final = await inbox.next(within=0.01)
    assert final is not None and final.is_final and not final.failed
    assert inbox.received == 2


def test_callbacks_for_another_task_are_refused_once_the_task_is_known() -> None:
    inbox = goapi_inbox()
    assert inbox.deliver(task("t2")), "before the submit answers, any task's callback is taken"
    inbox.expect("t1")
    assert inbox.task_id == "t1"
    assert not inbox.deliver(task("t2", "finished"))
    assert inbox.received == 1  # only the one taken before the id was known


async def test_expect_drops_what_arrived_early_for_another_task() -> None:
    inbox = goapi_inbox()
    inbox.deliver(task("t2", progress=20))
    inbox.deliver(task("t1", progress=40))
    inbox.deliver(task("t2", "finished"))
    inbox.expect("t1")
    kept = await inbox.next(within=0.01)
    assert kept is not None and (kept.task_id, kept.progress) == ("t1", 40)
    assert await inbox.next(within=0.01) is None, "another task's final does not end this job"


async def test_the_queue_is_bounded_and_keeps_the_newest() -> None:
    inbox = goapi_inbox()
    inbox.expect("t1")
    for progress in range(1, 101):
        inbox.deliver(task("t1", progress=progress))
    seen = []
    while (update := await inbox.next(within=0)) is not None:
        seen.append(update.progress)
    assert seen == list(range(69, 101))


async def test_next_waits_for_a_callback_and_gives_up_after_within() -> None:
    fake = VirtualTime()
    inbox = CallbackInbox(get_provider("goapi"), mjasync.types.ImagineUpdate, sleep=fake.sleep)
    assert await fake.drive(lambda: inbox.next(within=0.05)) is None
    assert fake.now == 0.05, "it waited `within`, on the time it was given"

    got: list[mjasync.ImagineResult | None] = []
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: _append(got, inbox.next(within=1.0)))
        await anyio.wait_all_tasks_blocked()
        inbox.deliver(task("t1", progress=60))
    assert [update.progress for update in got if update is not None] == [60]
    assert fake.now == 0.05, "a callback ends the wait at once"


async def _append(
    into: list[mjasync.ImagineResult | None], update: Awaitable[mjasync.ImagineResult | None]
) -> None:
    into.append(await update)


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b"null", b'{"task_id": 5}'])
def test_a_body_that_is_no_callback_raises(body: bytes) -> None:
    with pytest.raises(ResponseDecodeError):
        goapi_inbox().deliver(body)


def test_the_inbox_knows_which_header_carries_the_secret() -> None:
    assert goapi_inbox().secret_header == "x-webhook-secret"
    assert CallbackInbox(get_provider("acedata"), mjasync.types.ImagineUpdate).secret_header is None


# --- WebhookReceiver routes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"secret": "short"},
        {"secret": 12345678},
        {"path": "no-slash"},
        {"path": "/a/{token}"},
        {"max_body_bytes": 1023},
        {"max_body_bytes": True},
        {"max_body_bytes": 4096.0},
        {"route_ttl": 0},
        {"route_ttl": -1.0},
        {"public_url": "ftp://example.com/hooks"},
        {"public_url": "not a url"},
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(mjasync.InvalidRequestError):
        mjasync.WebhookReceiver(**options)


def test_a_route_needs_a_public_url() -> None:
    receiver = mjasync.WebhookReceiver(secret=SECRET)
    assert receiver.url is None
    with pytest.raises(mjasync.InvalidRequestError, match="public URL"):
        receiver.open_route(goapi_inbox(), progress=False, ttl=None)
    assert receiver.statistics().open_routes == 0


def test_each_route_is_its_own_address_and_closes_once() -> None:
    receiver = mjasync.WebhookReceiver(
        secret=SECRET, public_url="https://bot.example.com/hooks/", path="/hooks"
    )
    assert receiver.url == "https://bot.example.com/hooks"
    assert receiver.path == "/hooks"
    one, close_one = receiver.open_route(goapi_inbox(), progress=True, ttl=None)
    two, close_two = receiver.open_route(goapi_inbox(), progress=False, ttl=None)

    assert one.url != two.url
    assert one.url.startswith("https://bot.example.com/hooks/")
    assert len(one.url.rsplit("/", 1)[1]) >= 20, "an unguessable token"
    assert (one.secret, one.progress, two.progress) == (SECRET, True, False)
    assert SECRET not in repr(one)
    assert SECRET not in repr(receiver)
    assert receiver.statistics().open_routes == 2
    close_one()
    close_one()  # idempotent
    assert receiver.statistics().open_routes == 1
    close_two()
    assert receiver.statistics().open_routes == 0


def test_expired_routes_are_swept_when_another_opens() -> None:
    with pytest.raises(mjasync.InvalidRequestError, match="clock"):
        mjasync.WebhookReceiver(clock=5.0)  # type: ignore[arg-type]
    clock = ManualClock(start=0.0)
    receiver = mjasync.WebhookReceiver(
        secret=SECRET, public_url="http://127.0.0.1:9/h", route_ttl=30.0, clock=clock
    )
    receiver.open_route(goapi_inbox(), progress=False, ttl=5.0)  # a job's deadline is shorter
    receiver.open_route(goapi_inbox(), progress=False, ttl=5.0)
    clock.advance(4.0)
    receiver.open_route(goapi_inbox(), progress=False, ttl=None)  # open until 34
    assert receiver.statistics().open_routes == 3, "none has expired yet"
    clock.advance(1.0)
    receiver.open_route(goapi_inbox(), progress=False, ttl=None)
    assert receiver.statistics().open_routes == 2, "the two short ones expired, on the receiver's clock"
    clock.advance(29.0)
    receiver.open_route(goapi_inbox(), progress=False, ttl=None)
    assert receiver.statistics().open_routes == 2, "route_ttl bounds a route without a deadline"


def test_statistics_are_a_snapshot() -> None:
    receiver = mjasync.WebhookReceiver(secret=SECRET, public_url="http://127.0.0.1:9/h")
    before = receiver.statistics()
    receiver.open_route(goapi_inbox(), progress=False, ttl=None)
    assert before.open_routes == 0
    assert receiver.statistics() == mjasync.types.ReceiverStatistics(open_routes=1)


# --- a callback must name the awaited task (issue 12) -------------------------------------------------


@pytest.mark.parametrize("provider", ["goapi", "acedata"])
@pytest.mark.parametrize("expected", [None, "t1"], ids=["before-submit-answers", "task-known"])
async def test_a_callback_naming_no_task_is_ignored(provider: str, expected: str | None) -> None:
    inbox = CallbackInbox(get_provider(provider), mjasync.types.ImagineUpdate)
    if expected is not None:
        inbox.expect(expected)
    if provider == "goapi":
        nameless = json.loads(task("t1", "finished"))
    else:
        nameless = {
            "success": True,
            "image_url": "http://127.0.0.1:9/chosen.png",
            "progress": 100,
            "actions": [],
        }
    for body in ({k: v for k, v in nameless.items() if k != "task_id"}, {**nameless, "task_id": ""}):
        assert not inbox.deliver(json.dumps(body).encode()), "nobody's result: ignored"
    inbox.expect("t1")
    assert inbox.received == 0
    assert await inbox.next(within=0) is None, "nothing resolves the job"


def test_a_callback_for_another_task_is_ignored_for_acedata_too() -> None:
    inbox = CallbackInbox(get_provider("acedata"), mjasync.types.ImagineUpdate)
    inbox.expect("t1")
    other = {"success": True, "task_id": "t2", "image_url": "http://127.0.0.1:9/x.png", "progress": 100}
    assert not inbox.deliver(json.dumps(other).encode())
    assert inbox.deliver(json.dumps({**other, "task_id": "t1"}).encode())
    assert inbox.received == 1
