"""midjourney-proxy's notifyHook callbacks through a `WebhookReceiver`, against the emulator's `/mj` side.

The proxy signs nothing (`callback_secret_header` is None), may send a callback twice or out of order,
and never retries one. What is shown: each job's notifyHook is an address of its own, with at least
128 bits of randomness, so nobody can guess another job's; a POST to a guessed address or to another
job's address resolves nothing and leaves the job to end with its own task, answered exactly as any
ignored callback is (no oracle for which addresses exist); a repeated or stale callback (lower progress,
an earlier status, anything after the end) is never reported; a job whose callbacks were all lost is
finished by the polling fallback; and a sender gone before its answer costs no error log.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import secrets
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import msgspec
import pytest

import mjasync
from mjasync._providers import get_provider
from mjasync.emulator import Emulator, ManualClock, RecordedRequest
from mjasync.testing import EMULATOR_TOKEN
from mjasync.types import ProviderName

from ..conftest import FAST_POLL, open_connections
from ..helpers import until
from .test_webhooks import Waiter, gather, post

PROVIDER: ProviderName = "midjourney-proxy"
#: Callbacks are never late here: a poll would mean the callback path failed.
HOOK_POLL = msgspec.structs.replace(FAST_POLL, callback_grace=10.0)
#: A lost callback is noticed after 0.3 s of silence.
QUICK_GRACE = msgspec.structs.replace(FAST_POLL, callback_grace=0.3)
#: Clock seconds a job takes under a `ManualClock`: it waits until the test advances the clock.
HELD = 10.0
#: What an address's token may be made of (`secrets.token_urlsafe`).
URLSAFE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class Hooked:
    """An emulator, a served receiver and a proxy client awaiting jobs through it."""

    emu: Emulator
    receiver: mjasync.WebhookReceiver
    mj: mjasync.Client
    url: str
    clock: ManualClock | None


@asynccontextmanager
async def hooked(
    *, poll: mjasync.PollPolicy = HOOK_POLL, held: bool = False, **emulator_options: Any
) -> AsyncIterator[Hooked]:
    """All on 127.0.0.1; *held* puts the emulator on a `ManualClock`, so jobs wait to be advanced."""
    receiver = mjasync.WebhookReceiver()
    clock = ManualClock() if held else None
    if held:
        emulator_options.update(clock=clock, speed=HELD)
    async with Emulator(port=0, **emulator_options) as emu, receiver.serve() as url:
        async with mjasync.Client(
            provider=PROVIDER, api_key=EMULATOR_TOKEN, base_url=emu.url, poll=poll, webhooks=receiver
        ) as mj:
            yield Hooked(emu, receiver, mj, url, clock)
            assert open_connections(mj) == 0, "a test left a connection checked out"


def is_poll(request: RecordedRequest) -> bool:
    """A task lookup (every proxy read is under `/mj/task/`)."""
    return "/mj/task/" in request.path


def polled_ids(emu: Emulator) -> set[str]:
    """Every task id a lookup asked about."""
    ids: set[str] = set()
    for request in emu.requests:
        if is_poll(request):
            ids.update((request.json or {}).get("ids") or ())
    return ids


def hook_of(request: RecordedRequest) -> str:
    """The notifyHook a submit asked for."""
    return str((request.json or {})["notifyHook"])


def callbacks_of(emu: Emulator, task_id: str) -> list[dict[str, Any]]:
    """The Task objects the emulator has POSTed for *task_id* so far, oldest first."""
    return [copy.deepcopy(c.body) for c in emu.callbacks if c.body.get("id") == task_id]


def forged_success(template: dict[str, Any], task_id: str) -> dict[str, Any]:
    """A finished Task object (*template*, another task's) claiming to be *task_id*'s, with its own picture."""
    body = copy.deepcopy(template)
    body["id"] = task_id
    body["imageUrl"] = "https://forged.invalid/not-yours.png"
    return body


async def template_body(h: Hooked) -> dict[str, Any]:
    """A real final notifyHook body (a job run to its end), to forge others from."""
    assert h.clock is not None
    handle = await h.mj.imagine("a template to forge from").submit()
    h.clock.advance(HELD)
    task_id = (await handle).task_id
    assert task_id is not None
    await until(lambda: any(body["status"] == "SUCCESS" for body in callbacks_of(h.emu, task_id)))
    return next(body for body in callbacks_of(h.emu, task_id) if body["status"] == "SUCCESS")


# --- each job its own unguessable address ----------------------------------------------------------


async def test_each_job_gets_its_own_unguessable_notify_hook() -> None:
    assert get_provider(PROVIDER).callback_secret_header is None, "the proxy signs nothing"
    async with hooked() as h:
        results = await gather(*(lambda i=i: h.mj.imagine(f"a lantern, take {i}") for i in range(20)))

        assert all(r.is_final and r.image_url for r in results)
        sent = [r for r in h.emu.requests if r.path == "/mj/submit/imagine"]
        assert len(sent) == h.emu.counters["submits"] == 20
        hooks = [hook_of(r) for r in sent]
        assert len(set(hooks)) == 20, "each job gets an address of its own"
        tokens = []
        for hook in hooks:
            assert hook.startswith(h.url + "/")
            token = hook.removeprefix(h.url + "/")
            assert URLSAFE.match(token), token
            assert len(token) * 6 >= 128, f"{token!r} holds under 128 bits"
            tokens.append(token)
        # Nothing of a job (its prompt, its state marker, its task) is in its address.
        for request, token in zip(sent, tokens, strict=True):
            body = request.json or {}
            assert token not in str(body.get("state")) and token not in body["prompt"]
        assert not {r.task_id for r in results} & set(tokens)
        # No shared stem either: two addresses differ early (a random token, not a counter).
        assert len({token[:8] for token in tokens}) == 20
        # Unsigned: no secret of the receiver is handed to the proxy.
        assert all("webhook_secret" not in (r.json or {}) for r in sent)
        assert not any(is_poll(r) for r in h.emu.requests)
        stats = h.receiver.statistics()
        assert stats.rejected == 0 and stats.open_routes == 0


async def test_a_post_to_a_guessed_or_another_jobs_address_resolves_nothing() -> None:
    async with hooked(held=True) as h:
        assert h.clock is not None
        template = await template_body(h)
        victim = await h.mj.imagine("a copper robot").submit()
        victim_hook = hook_of(h.emu.requests[-1])
        other = await h.mj.imagine("a field of tulips").submit()
        other_hook = hook_of(h.emu.requests[-1])
        before = h.receiver.statistics()
        waiters = [Waiter(victim), Waiter(other)]
        async with anyio.create_task_group() as group:
            for waiter in waiters:
                group.start_soon(waiter.run)

            guessed = f"{h.url}/{secrets.token_urlsafe(18)}"
            answers = [
                await post(guessed, forged_success(template, victim.task_id), secret=None),
                # Another job's address, with the victim's task: that job waits for its own task only.
                await post(other_hook, forged_success(template, victim.task_id), secret=None),
                # The victim's address with a task that is nobody's.
                await post(victim_hook, forged_success(template, "1700000000000000"), secret=None),
            ]
            # All alike: an outsider cannot tell a live address from a guessed one.
            assert answers == [(200, {"status": "ignored"})] * 3
            stats = h.receiver.statistics()
            assert stats.ignored - before.ignored == 3
            assert stats.delivered == before.delivered
            assert stats.open_routes == 2
            assert not any(waiter.done.is_set() for waiter in waiters)

            h.clock.advance(HELD)
            with anyio.fail_after(5):
                for waiter in waiters:
                    await waiter.done.wait()
        victim_result, other_result = (waiter.result for waiter in waiters)
        assert victim_result.task_id == victim.task_id and other_result.task_id == other.task_id
        assert victim_result.raw["prompt"] == "a copper robot"
        assert "forged.invalid" not in victim_result.image_url + other_result.image_url
        assert not any(is_poll(r) for r in h.emu.requests)
        assert h.receiver.statistics().open_routes == 0


# --- repeated, stale and out-of-order callbacks --------------------------------------------------


async def test_a_repeated_or_stale_callback_is_never_reported() -> None:
    async with hooked(held=True) as h:
        assert h.clock is not None
        got: list[mjasync.types.ImagineUpdate] = []
        seen = anyio.Event()

        async with h.mj.imagine("a paper kite").stream() as updates:

            async def follow() -> None:
                async for update in updates:
                    got.append(update)
                    if update.progress and update.progress > 0:
                        seen.set()

            async with anyio.create_task_group() as group:
                group.start_soon(follow)
                with anyio.fail_after(10):
                    await until(lambda: any(r.path == "/mj/submit/imagine" for r in h.emu.requests))
                    hook = hook_of(next(r for r in h.emu.requests if r.path == "/mj/submit/imagine"))
                    # Halfway: the task has said SUBMITTED and some IN_PROGRESS steps.
                    h.clock.advance(HELD * 0.6)
                    await seen.wait()
                task_id = updates.task_id
                assert task_id is not None
                # The emulator records a callback once it has read the answer: just after the job had it.
                await until(lambda: callbacks_of(h.emu, task_id)[-1]["status"] == "IN_PROGRESS")
                sent = callbacks_of(h.emu, task_id)
                statuses = [body["status"] for body in sent]
                assert statuses[0] == "SUBMITTED" and statuses[-1] == "IN_PROGRESS", statuses
                latest, earliest = sent[-1], sent[0]
                reported = len(got)

                # The newest again (a duplicate), then the first (stale: an earlier status, lower
                # progress), then the newest with a lower progress: all taken, none reported.
                lower = copy.deepcopy(latest)
                lower["progress"] = "1%"
                for body in (latest, earliest, lower, latest):
                    status, answer = await post(hook, body, secret=None)
                    assert status == 200, answer
                h.clock.advance(HELD)
        assert got[-1].is_final and got[-1].task_id == task_id
        progress = [u.progress for u in got if u.progress is not None]
        assert len(progress) == len(got), "every update says how far it got"
        assert progress == sorted(set(progress)), f"stale or repeated updates were reported: {progress}"
        assert len(got) > reported, "the rest came after the stale ones"
        assert not any(is_poll(r) for r in h.emu.requests)

        # After the end: a late copy of an earlier step, or a failure, changes nothing.
        final = updates.final
        for body in (latest, {**latest, "status": "FAILURE", "failReason": "late and wrong"}):
            assert await post(hook, body, secret=None) == (200, {"status": "ignored"})
        assert updates.final is final and not final.failed
        assert h.receiver.statistics().open_routes == 0


async def test_the_end_arriving_before_a_progress_step_ends_the_job_once() -> None:
    """Out of order: the final Task object first, then an IN_PROGRESS one, then the final again."""
    async with hooked(held=True) as h:
        assert h.clock is not None
        template = await template_body(h)
        handle = await h.mj.imagine("a brass compass").submit()
        hook = hook_of(h.emu.requests[-1])
        waiter = Waiter(handle)
        async with anyio.create_task_group() as group:
            group.start_soon(waiter.run)
            # The real task's final object, as the proxy would send it, ahead of its own progress.
            final = {**forged_success(template, handle.task_id), "imageUrl": "https://cdn.invalid/own.png"}
            in_progress = {**final, "status": "IN_PROGRESS", "progress": "40%", "buttons": []}
            answers = [await post(hook, body, secret=None) for body in (final, in_progress, final)]
            with anyio.fail_after(5):
                await waiter.done.wait()
        result = waiter.result
        assert answers[0] == (200, {"status": "ok"})
        assert result.task_id == handle.task_id and result.is_final and not result.failed
        assert result.image_url == "https://cdn.invalid/own.png"
        assert not any(is_poll(r) for r in h.emu.requests)
        # The job took the first final; what followed changed nothing, and its address is closed.
        assert h.receiver.statistics().open_routes == 0


# --- lost callbacks ------------------------------------------------------------------------------


async def test_jobs_whose_callbacks_are_all_lost_finish_by_polling() -> None:
    async with hooked(poll=QUICK_GRACE, speed=0.2) as h:
        h.emu.drop_callbacks(10_000)
        with anyio.fail_after(30):
            results = await gather(*(lambda i=i: h.mj.imagine(f"a quiet pond, take {i}") for i in range(10)))

        assert all(r.is_final and r.image_url for r in results)
        assert h.emu.counters["callbacks_dropped"] >= 10
        assert h.emu.counters.get("callbacks", 0) == 0
        assert polled_ids(h.emu) == {r.task_id for r in results}
        assert h.emu.counters["submits"] == 10, "lost callbacks never cost a second submit"
        assert h.receiver.statistics().delivered == 0
        assert h.receiver.statistics().open_routes == 0


async def test_lost_callbacks_cost_only_their_own_job_polls() -> None:
    async with hooked(poll=QUICK_GRACE, speed=0.2) as h:
        with anyio.fail_after(30):
            first = await h.mj.imagine("a harbour, the reference")
            await until(lambda: any(c.body["status"] == "SUCCESS" for c in h.emu.callbacks))
            per_job = len(h.emu.callbacks)
            # Every callback of the next job (run alone) is lost; the jobs after it lose none.
            h.emu.drop_callbacks(per_job)
            lone = await h.mj.imagine("a harbour, unheard")
            results = await gather(*(lambda i=i: h.mj.imagine(f"a harbour, take {i}") for i in range(9)))

        assert all(r.is_final for r in (first, lone, *results))
        assert h.emu.counters["callbacks_dropped"] == per_job
        assert lone.task_id not in {c.body["id"] for c in h.emu.callbacks}
        assert polled_ids(h.emu) == {lone.task_id}, "only the job whose callbacks were lost looked itself up"
        assert h.emu.counters["submits"] == 11


@pytest.mark.parametrize("via", ["callback", "stream"])
async def test_a_failed_task_arrives_by_notify_hook(via: str) -> None:
    async with hooked() as h:
        with pytest.raises(mjasync.JobFailedError) as caught:
            await h.mj.imagine("a cat -c x").result(via=via)  # type: ignore[arg-type]
        assert caught.value.task_id
        assert not any(is_poll(r) for r in h.emu.requests)
        assert h.receiver.statistics().open_routes == 0


# --- a sender that does not wait for the answer --------------------------------------------------


async def test_a_sender_that_hangs_up_before_its_answer_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The proxy never reads our answer twice, and may be gone before it comes (it shut down, or gave
    up): answering a closed connection is nobody's error, so nothing is logged for it."""
    receiver = mjasync.WebhookReceiver()
    body = json.dumps({"id": "1700000000000000", "status": "SUCCESS"}).encode()
    senders = 20
    with caplog.at_level(logging.DEBUG):
        async with receiver.serve() as url:
            parts = urlsplit(url)
            assert parts.hostname == "127.0.0.1" and parts.port is not None
            head = (
                f"POST {parts.path}/{secrets.token_urlsafe(18)} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            for _ in range(senders):
                # The whole request, then a reset at once (SO_LINGER 0): gone before any answer.
                with socket.create_connection((parts.hostname, parts.port), timeout=5) as sender:
                    sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sender.sendall(head + body)
            await until(lambda: receiver.statistics().received == senders)
            await until(lambda: receiver.statistics().open_connections == 0)
        # Leaving serve() waits for every handler to end.
    stats = receiver.statistics()
    assert stats.ignored == senders and stats.delivered == 0
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]
