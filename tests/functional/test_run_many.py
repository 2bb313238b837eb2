"""run_many: many jobs at once, outcomes as they complete, bounded, cancel-safe."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from aiohttp import web

import mjasync
from mjasync.emulator import Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL, open_connections
from ..helpers import serving


async def test_outcomes_arrive_for_every_job_with_batched_polling(
    mj: mjasync.Client, mj_emulator: Any
) -> None:
    """Forty imagine jobs all finish, each index once, polled with far fewer lookups than jobs."""
    jobs = [mj.imagine(f"a lighthouse, study {i}") for i in range(40)]
    async with mj.run_many(jobs, concurrency=16) as outcomes:
        seen = [outcome async for outcome in outcomes]
    assert sorted(o.index for o in seen) == list(range(40))
    assert all(o.ok and o.result is not None and o.result.is_final for o in seen)
    assert all(o.task_id == o.result.task_id for o in seen if o.result)
    assert outcomes.unfinished == []
    assert mj.statistics().lookups < 40
    assert mj_emulator.counters["submits"] == 40


async def test_mixed_jobs_and_one_failure_do_not_cancel_the_rest(mj: mjasync.Client) -> None:
    """Imagines and follow-ups mix; a moderated prompt is that job's outcome, the others still finish."""
    grid = await mj.imagine("a cat")
    jobs = [mj.imagine("a dog"), mj.upscale(grid, 2), mj.imagine("gore"), mj.variation(grid, 1)]
    async with mj.run_many(jobs, concurrency=4, via="stream") as outcomes:
        by_index = {o.index: o async for o in outcomes}
    assert isinstance(by_index[2].error, mjasync.ModerationError)
    assert all(by_index[i].ok for i in (0, 1, 3))
    assert by_index[1].result is not None
    assert "upscale_2x" in by_index[1].result.actions


async def test_an_outcome_is_succeeded_or_failed_and_ok_says_which(mj: mjasync.Client) -> None:
    """`ok is True` exactly on a `Succeeded` (a final result, no error) and `ok is False` on a `Failed`
    (its error, no result): both read `result` and `error`, as user code without isinstance does."""
    async with mj.run_many([mj.imagine("a dog"), mj.imagine("gore")], concurrency=2) as outcomes:
        done, refused = sorted([o async for o in outcomes], key=lambda o: o.index)
    assert isinstance(done, mjasync.types.Succeeded) and done.ok is True and done.error is None
    assert done.result.image_url.startswith("http") and done.retries_taken == done.result.retries_taken
    assert isinstance(refused, mjasync.types.Failed) and refused.ok is False and refused.result is None
    assert isinstance(refused.error, mjasync.ModerationError) and refused.retries_taken == 0


async def test_fail_fast_raises_the_first_error(mj: mjasync.Client) -> None:
    """With fail_fast, the first failure cancels the run and is raised from the block."""
    jobs = [mj.imagine("gore")] + [mj.imagine(f"cat {i}") for i in range(5)]
    with pytest.raises(mjasync.ModerationError):
        async with mj.run_many(jobs, concurrency=2, fail_fast=True) as outcomes:
            async for _ in outcomes:
                pass
    assert open_connections(mj) == 0


async def test_async_iterables_and_lazy_consumption(mj: mjasync.Client) -> None:
    """An async generator of jobs is pulled only as slots free up, never far ahead of the outcomes."""
    pulled = 0

    async def jobs() -> AsyncIterator[mjasync.types.ImagineJob]:
        nonlocal pulled
        for i in range(30):
            pulled += 1
            yield mj.imagine(f"fox {i}")

    received = 0
    async with mj.run_many(jobs(), concurrency=3) as outcomes:
        async for outcome in outcomes:
            received += 1
            # Pulled = finished + running (≤ 3) + buffered outcomes (≤ 3).
            assert pulled <= received + 3 + 3
            assert outcome.ok
    assert received == pulled == 30


async def test_an_error_in_the_input_iterable_is_raised_plainly(mj: mjasync.Client) -> None:
    """A failing input generator stops the run and its own exception comes out (no ExceptionGroup)."""

    def jobs() -> Iterator[mjasync.types.ImagineJob]:
        yield mj.imagine("fox")
        raise LookupError("the prompt file vanished")

    with pytest.raises(LookupError, match="vanished"):
        async with mj.run_many(jobs(), concurrency=2) as outcomes:
            async for _ in outcomes:
                pass


async def test_leaving_early_cancels_and_reports_accepted_unfinished_tasks() -> None:
    """Breaking out leaves no task or connection behind and lists the accepted, unfinished task ids."""
    async with Emulator(tokens=(EMULATOR_TOKEN,), speed=30.0) as emulator:
        async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=emulator.url, poll=FAST_POLL) as client:
            before = asyncio.all_tasks()
            jobs = (client.imagine(f"slow cat {i}") for i in range(1000))
            with pytest.raises(TimeoutError):
                async with client.run_many(jobs, concurrency=5) as outcomes:
                    with mjasync_fail_after(0.5):
                        async for _ in outcomes:
                            pass
            leftover = {t for t in asyncio.all_tasks() - before if not _is_server_task(t)}
            assert leftover == set()
            assert open_connections(client) == 0
            assert len(outcomes.unfinished) == 5
            assert outcomes.started == 5, "nothing was pulled beyond the running jobs"
            known = {
                r.json.get("id") for r in emulator.requests if r.json and r.json.get("action") == "retrieve"
            }
            assert emulator.counters["submits"] == 5
            assert set(outcomes.unfinished) >= {t for t in known if t}
            assert client.statistics().limiter.in_flight == 0


def _is_server_task(task: asyncio.Task[Any]) -> bool:
    """The emulator's own connection handlers (it serves the client's idle keep-alive sockets)."""
    return task.get_coro().__qualname__.startswith("RequestHandler.")  # type: ignore[union-attr]


def mjasync_fail_after(seconds: float) -> Any:
    import anyio

    return anyio.fail_after(seconds)


async def test_handles_of_earlier_submits_are_waited_on_not_resubmitted(
    mj: mjasync.Client, mj_emulator: Any
) -> None:
    """Handles in the input resume jobs submitted before; on_accepted reports every task id once."""
    earlier = [await mj.imagine(f"owl {i}").submit() for i in range(3)]
    resumed = [mj.task(handle.task_id) for handle in earlier]
    accepted: dict[int, str] = {}
    jobs: list[Any] = [*resumed, mj.imagine("owl 3")]
    async with mj.run_many(jobs, concurrency=4, on_accepted=accepted.__setitem__) as outcomes:
        results = {o.index: o async for o in outcomes}
    assert all(o.ok for o in results.values())
    assert [accepted[i] for i in range(3)] == [h.task_id for h in earlier]
    assert accepted[3] == results[3].task_id
    assert mj_emulator.counters["submits"] == 4


async def test_find_task_picks_up_a_submit_whose_answer_was_never_written_down(mj: mjasync.Client) -> None:
    """find_task finds the task of an identical earlier submit, and None for a request never sent."""
    import time

    since = time.time()
    other_client_job = mj.with_options()  # a fresh client knows none of the tasks
    handle = await other_client_job.imagine("a crane at dawn").submit()
    looked_for, never_sent = mj.imagine("a crane at dawn"), mj.imagine("never sent")
    assert await mj.find_task(looked_for, since=since) == handle.task_id
    assert await mj.find_task(never_sent, since=since) is None
    looked_for.close(), never_sent.close()  # built only to be looked for


async def test_a_rebuilt_handle_is_never_adopted_by_a_lookup(mj: mjasync.Client) -> None:
    """After task(id), find_task skips that id: of two identical earlier submits, the other one is found."""
    import time

    since = time.time()
    first = (await mj.with_options().imagine("same prompt").submit()).task_id
    second = (await mj.with_options().imagine("same prompt").submit()).task_id
    mj.task(first)
    looked_for = mj.imagine("same prompt")
    assert await mj.find_task(looked_for, since=since) == second
    looked_for.close()  # built only to be looked for


def _one_undecodable_receipt_app(bad_submit: int, depth: int) -> web.Application:
    """AceData imagine (async) and tasks: submit number `bad_submit` (1-based) is answered 200 with JSON
    nested `depth` deep; every other gets a task id, whose lookup says it finished."""
    submits = 0

    async def imagine(request: web.Request) -> web.Response:
        nonlocal submits
        await request.read()
        submits += 1
        if submits == bad_submit:
            return web.Response(body=b"[" * depth + b"]" * depth, content_type="application/json")
        return web.json_response({"task_id": f"task-{submits}"})

    def record(task_id: str) -> dict[str, Any]:
        response = {
            "success": True,
            "task_id": task_id,
            "image_id": f"image-{task_id}",
            "image_url": f"https://cdn.example/{task_id}.png",
            "progress": 100,
            "actions": ["upscale1"],
        }
        return {"id": task_id, "type": "imagine", "response": response}

    async def tasks(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if body.get("action") == "retrieve":
            return web.json_response(record(body["id"]))
        items = [record(task_id) for task_id in body.get("ids") or []]
        return web.json_response({"items": items, "count": len(items)})

    app = web.Application()
    app.router.add_post("/midjourney/imagine", imagine)
    app.router.add_post("/midjourney/tasks", tasks)
    return app


async def test_one_undecodable_answer_is_that_jobs_outcome_and_the_others_go_on() -> None:
    """20 jobs; only the 5th submit gets a 200 whose JSON nests 5,000 deep: 19 results and one
    `MJError` outcome, with nothing raised out of the run.

    The garbled answer came from a server that got the submit, so its fate is open: it is looked up
    (the listing shows no such task, which proves nothing), ends as `AmbiguousSubmitError` chained
    from the decode error, and is listed in `unconfirmed` for the caller to look up later."""
    async with serving(_one_undecodable_receipt_app(bad_submit=5, depth=5000)) as port:
        async with mjasync.Client(
            api_key=EMULATOR_TOKEN, base_url=f"http://127.0.0.1:{port}", poll=FAST_POLL
        ) as client:
            with anyio.fail_after(60):
                async with client.run_many(
                    (client.imagine(f"a cat {i}") for i in range(20)), concurrency=1
                ) as outcomes:
                    seen = [outcome async for outcome in outcomes]
    failed = [outcome for outcome in seen if not outcome.ok]
    assert len(seen) == 20 and sorted(o.index for o in seen) == list(range(20))
    assert len(failed) == 1 and failed[0].index == 4
    assert isinstance(failed[0].error, mjasync.AmbiguousSubmitError)
    assert isinstance(failed[0].error.__cause__, mjasync.ResponseDecodeError)
    assert all(o.result is not None and o.result.is_final for o in seen if o.ok)
    assert outcomes.unfinished == []
    assert [entry.index for entry in outcomes.unconfirmed] == [4]
