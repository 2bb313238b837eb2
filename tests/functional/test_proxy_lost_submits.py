"""Lost submits on the midjourney-proxy protocol, settled exactly against the emulator's `/mj` side.

Every submit carries its job's marker in `state`, which the proxy echoes; a submit whose answer was
lost is looked up by it in `GET /mj/task/list`. Found: followed, never sent again. Not there:
`AmbiguousSubmitError`, never a second submit (a listing cannot prove that a request still in flight
behind a gateway made nothing), unless `on_ambiguous_submit="resubmit"` allows one. A listing that
cannot reach back (trueai's newest 100, here `Emulator(proxy_list_limit=100)`) or that does not exist
(new-api, here a relay in front of the emulator that 404s it) cannot find it either.

Faults go on single requests through the emulator's `x-mjasync-fault` header (`FaultScript`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

import mjasync
from mjasync.emulator import FAULT_HEADER, Emulator, ManualClock
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL
from ..helpers import serving
from .test_resilience import FAST_RETRY, FaultScript, finish, scripted

PROVIDER = "midjourney-proxy"
IMAGINE = "/mj/submit/imagine"
LISTING = "/mj/task/list"
VIAS = pytest.mark.parametrize("via", ["poll", "stream"])
#: new-api's answer when its relay to the proxy got no answer (§9 of the reference).
DO_REQUEST_FAILED = {"description": "do_request_failed ", "type": "upstream_error", "code": 5}
#: A bound on waits that only a hang would reach.
HANG = 60.0


def submits_sent(emulator: Emulator, prompt: str | None = None) -> int:
    """How many imagine submits (of `prompt`, if given) reached the emulator (faulted ones and resets
    included)."""
    return sum(
        1
        for r in emulator.requests
        if r.path == IMAGINE and (prompt is None or (r.json or {}).get("prompt") == prompt)
    )


def listings_read(emulator: Emulator) -> list[str]:
    """The method of every request on the task listing (the client must GET it)."""
    return [r.method for r in emulator.requests if r.path == LISTING]


def proxy_options(**options: Any) -> dict[str, Any]:
    return {"provider": PROVIDER, **options}


# --- found by its marker -----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset; phase=after", "502; phase=after", "500; phase=after"])
@VIAS
async def test_a_lost_answer_is_found_by_its_marker_and_followed(fault: str, via: str) -> None:
    """The task was made, the answer lost: found in the listing by its marker, 1 submit, 1 task."""
    async with Emulator(speed=0.05) as emulator:
        script = FaultScript({IMAGINE: [fault]})
        async with scripted(emulator, script, **proxy_options()) as mj:
            result = await finish(mj, mj.imagine("a lost lantern"), via)
        assert result.is_final and result.progress == 100 and result.image_url
        assert result.task_id == emulator.fault_log[0].task_id, "the found task is the one the fault hit"
        assert result.retries_taken == 0
        assert submits_sent(emulator) == 1 and emulator.counters["submits"] == 1
        assert emulator.tasks_per_prompt == {"a lost lantern": 1}
        assert listings_read(emulator) == ["GET"], "looked up once, by GET"


async def test_a_describe_whose_answer_was_lost_is_found_too() -> None:
    """Describe runs as a task on the proxy and carries the marker as well."""
    async with Emulator(speed=0.0) as emulator:
        script = FaultScript({"/mj/submit/describe": ["reset; phase=after"]})
        async with scripted(emulator, script, **proxy_options()) as mj:
            grid = await mj.imagine("a cat to describe").result(via="poll")
            assert grid.image_url is not None  # on the emulator, at 127.0.0.1
            result = await mj.describe(grid.image_url)
        assert result.descriptions
        assert sum(1 for r in emulator.requests if r.path == "/mj/submit/describe") == 1
        assert emulator.counters["tasks"] == 2 and listings_read(emulator) == ["GET"]


# --- not in the listing: ambiguous, never sent again unless allowed -------------------------------------


@pytest.mark.parametrize("fault", ["reset; phase=before", "502; phase=before", "500"])
@VIAS
async def test_a_submit_missing_from_the_listing_is_ambiguous_and_not_resent(fault: str, via: str) -> None:
    """Nothing was made, but an absent marker proves nothing: `AmbiguousSubmitError`, 1 submit, no task."""
    async with Emulator(speed=0.0) as emulator:
        script = FaultScript({IMAGINE: [fault]})
        async with scripted(emulator, script, **proxy_options()) as mj:
            with pytest.raises(mjasync.AmbiguousSubmitError):
                await finish(mj, mj.imagine("try once more"), via)
        assert submits_sent(emulator) == 1 and emulator.tasks_per_prompt == {}
        assert listings_read(emulator) == ["GET"]


@pytest.mark.parametrize("fault", ["reset; phase=before", "502; phase=before", "500"])
@VIAS
async def test_resubmit_sends_a_submit_missing_from_the_listing_again(fault: str, via: str) -> None:
    """`on_ambiguous_submit="resubmit"`: the user's choice to send again; here it makes 1 task."""
    retry = mjasync.RetryPolicy(
        initial_delay=0.01, max_delay=0.05, reconcile_delay=0.01, on_ambiguous_submit="resubmit"
    )
    async with Emulator(speed=0.0) as emulator:
        script = FaultScript({IMAGINE: [fault]})
        async with scripted(emulator, script, **proxy_options(retry=retry)) as mj:
            result = await finish(mj, mj.imagine("try once more"), via)
        assert result.is_final and result.retries_taken == 1
        assert submits_sent(emulator) == 2 and emulator.tasks_per_prompt == {"try once more": 1}
        assert listings_read(emulator) == ["GET"]


async def test_an_older_twin_is_not_taken_for_the_lost_task() -> None:
    """The same request made an hour ago (same marker) is older than the send: not adopted."""
    clock = ManualClock(time.time() - 3600)
    async with Emulator(speed=0.0, clock=clock) as emulator:
        async with mjasync.Client(
            api_key=EMULATOR_TOKEN, base_url=emulator.url, provider=PROVIDER, poll=FAST_POLL
        ) as other:
            await other.imagine("twin lantern").result(via="poll")
        clock.advance(3600)
        script = FaultScript({IMAGINE: ["reset; phase=before"]})
        async with scripted(emulator, script, **proxy_options()) as mj:
            with pytest.raises(mjasync.AmbiguousSubmitError) as caught:
                await mj.imagine("twin lantern").result(via="poll")
        assert caught.value.task_id is None, "the twin was adopted"
        assert emulator.tasks_per_prompt == {"twin lantern": 1}


async def test_a_gateway_timeout_is_not_taken_as_proof() -> None:
    """A 504 says a gateway gave up waiting, not that the proxy did: the task may still come, so an
    empty listing cannot prove absence; 1 submit."""
    async with Emulator(speed=0.0) as emulator:
        script = FaultScript({IMAGINE: ["504"]})
        async with scripted(emulator, script, **proxy_options()) as mj:
            with pytest.raises(mjasync.AmbiguousSubmitError) as caught:
                await mj.imagine("late gateway").result(via="poll")
        assert isinstance(caught.value.__cause__, mjasync.ServerError)
        assert submits_sent(emulator) == 1 and listings_read(emulator) == ["GET"]


# --- trueai's listing: the newest 100 ----------------------------------------------------------------


class HeldAnswer(FaultScript):
    """The faulted submit's answer (its reset, or its error) reaches the client only once `release` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answered = anyio.Event()
        self.release = anyio.Event()

    async def middleware(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if request.url.path != IMAGINE or self.answered.is_set():
            return await super().middleware(request, handler)
        try:
            return await super().middleware(request, handler)
        finally:
            self.answered.set()
            with anyio.fail_after(HANG):
                await self.release.wait()


async def make_tasks(emulator: Emulator, count: int, label: str) -> None:
    """`count` finished tasks, made by another client of the same proxy."""
    async with mjasync.Client(
        api_key=EMULATOR_TOKEN, base_url=emulator.url, provider=PROVIDER, poll=FAST_POLL
    ) as crowd:
        jobs = (crowd.imagine(f"{label} {i}") for i in range(count))
        async with crowd.run_many(jobs, concurrency=32) as outcomes:
            assert all([outcome.ok async for outcome in outcomes])


@pytest.mark.parametrize("fault", ["502; phase=after", "reset; phase=before"])
@VIAS
async def test_a_cut_listing_full_of_newer_tasks_cannot_tell(fault: str, via: str) -> None:
    """The newest 100 tasks were all made after the send: the submit's task may be older than them.
    Found or not, the listing cannot say: `AmbiguousSubmitError`, 1 submit."""
    async with Emulator(speed=0.0, proxy_list_limit=100) as emulator:
        script = HeldAnswer({IMAGINE: [fault]})
        async with scripted(emulator, script, **proxy_options()) as mj:
            outcome: dict[str, Any] = {}

            async def victim() -> None:
                try:
                    outcome["result"] = await finish(mj, mj.imagine("needle"), via)
                except mjasync.MJError as exc:
                    outcome["error"] = exc

            async def crowd() -> None:
                with anyio.fail_after(HANG):
                    await script.answered.wait()
                await make_tasks(emulator, 120, "hay")
                script.release.set()

            async with anyio.create_task_group() as group:
                group.start_soon(victim)
                group.start_soon(crowd)
        error = outcome.get("error")
        assert isinstance(error, mjasync.AmbiguousSubmitError), outcome
        assert "newest 100 tasks" in str(error)
        assert submits_sent(emulator, "needle") == 1
        assert emulator.tasks_per_prompt.get("needle", 0) == (1 if "after" in fault else 0)
        assert listings_read(emulator) == ["GET"]


@pytest.mark.parametrize("fault", ["502; phase=after", "reset; phase=after"])
async def test_a_listing_of_every_task_is_complete_however_many_are_newer(fault: str) -> None:
    """NZ lists every task: a listing longer than trueai's 100 is not cut, so it finds the submit's
    task even when all its other tasks are newer than the send."""
    async with Emulator(speed=0.0) as emulator:
        script = HeldAnswer({IMAGINE: [fault]})
        async with scripted(emulator, script, **proxy_options()) as mj:
            outcome: dict[str, Any] = {}

            async def victim() -> None:
                outcome["result"] = await mj.imagine("needle").result(via="poll")

            async def crowd() -> None:
                with anyio.fail_after(HANG):
                    await script.answered.wait()
                await make_tasks(emulator, 120, "hay")
                script.release.set()

            async with anyio.create_task_group() as group:
                group.start_soon(victim)
                group.start_soon(crowd)
        assert outcome["result"].is_final and outcome["result"].retries_taken == 0
        assert submits_sent(emulator, "needle") == 1 and emulator.tasks_per_prompt["needle"] == 1
        assert listings_read(emulator) == ["GET"]


@pytest.mark.parametrize("fault", ["502; phase=after", "reset; phase=after"])
async def test_a_cut_listing_that_reaches_back_past_the_send_is_complete(fault: str) -> None:
    """Only the newest 100 are listed, but the oldest of them is older than the send: the listing
    covers it, and the made task is found."""
    clock = ManualClock(time.time() - 3600)
    async with Emulator(speed=0.0, clock=clock, proxy_list_limit=100) as emulator:
        await make_tasks(emulator, 120, "old")
        clock.advance(3600)
        script = FaultScript({IMAGINE: [fault]})
        async with scripted(emulator, script, **proxy_options()) as mj:
            result = await mj.imagine("needle").result(via="poll")
        assert result.is_final and result.retries_taken == 0
        assert submits_sent(emulator, "needle") == 1 and emulator.tasks_per_prompt["needle"] == 1
        assert listings_read(emulator) == ["GET"]


# --- new-api: no listing, and its relay failure ----------------------------------------------------------


class NewApiRelay:
    """A new-api-like gateway in front of the emulator: it relays `/mj` requests, 404s the listing
    (unless `lists`), and answers the first imagine with its 400 `do_request_failed` once the emulator
    has made the task (unless `relay_fails` is off)."""

    def __init__(self, emulator: Emulator, *, lists: bool, relay_fails: bool) -> None:
        self.emulator = emulator
        self.lists = lists
        self.relay_fails = relay_fails
        self.listing_statuses: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == LISTING and not self.lists:
            self.listing_statuses.append(404)
            return web.Response(status=404, text="404 page not found")  # gin's default
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        body = await request.read()
        async with aiohttp.ClientSession() as session:
            async with session.request(
                request.method,
                self.emulator.url + request.path_qs,
                data=body or None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=HANG),
            ) as upstream:
                answer = await upstream.read()
                status, content_type = upstream.status, upstream.content_type
        if request.path == LISTING:
            self.listing_statuses.append(status)
        if request.path == IMAGINE and self.relay_fails:
            self.relay_fails = False
            return web.json_response(DO_REQUEST_FAILED, status=400)
        return web.Response(status=status, body=answer, content_type=content_type)


@asynccontextmanager
async def relayed(emulator: Emulator, relay: NewApiRelay) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay.handle)
    async with serving(app) as port:
        yield f"http://127.0.0.1:{port}"


@VIAS
async def test_new_apis_relay_failure_is_looked_up_and_found(via: str) -> None:
    """A 400 `do_request_failed` is a failure after the submit was received: looked up, never refused,
    never resent; a gateway that relays the listing shows the task."""
    async with Emulator(speed=0.0) as emulator:
        relay = NewApiRelay(emulator, lists=True, relay_fails=True)
        async with (
            relayed(emulator, relay) as url,
            scripted(emulator, FaultScript(), **proxy_options(base_url=url)) as mj,
        ):
            result = await finish(mj, mj.imagine("relayed"), via)
        assert result.is_final and result.retries_taken == 0
        assert submits_sent(emulator) == 1 and emulator.tasks_per_prompt == {"relayed": 1}
        assert relay.listing_statuses == [200]


@pytest.mark.parametrize("relay_fails", [True, False])
@VIAS
async def test_without_a_listing_a_lost_submit_is_ambiguous(relay_fails: bool, via: str) -> None:
    """new-api routes no listing (404): a lost answer (its relay failure, or a 500 after the task was
    made) cannot be settled, so the job raises `AmbiguousSubmitError` and the submit is not resent."""
    async with Emulator(speed=0.0) as emulator:
        relay = NewApiRelay(emulator, lists=False, relay_fails=relay_fails)
        script = FaultScript({} if relay_fails else {IMAGINE: ["500; phase=after"]})
        async with (
            relayed(emulator, relay) as url,
            scripted(emulator, script, **proxy_options(base_url=url)) as mj,
        ):
            with pytest.raises(mjasync.AmbiguousSubmitError, match="lookup failed too") as caught:
                await finish(mj, mj.imagine("unlisted"), via)
        assert isinstance(caught.value.__cause__, mjasync.ServerError)
        assert caught.value.status == (400 if relay_fails else 500)
        assert "GET /mj/task/list" in str(caught.value), "the failed lookup is named by its method"
        assert submits_sent(emulator) == 1 and emulator.tasks_per_prompt == {"unlisted": 1}
        assert relay.listing_statuses == [404]


# --- many jobs at once ---------------------------------------------------------------------------------


class FirstTryByPrompt(FaultScript):
    """The first submit of each prompt gets that prompt's fault header; every later request goes clean."""

    def __init__(self, faults: dict[str, str]) -> None:
        super().__init__()
        self._first = dict(faults)

    async def middleware(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if request.url.path == IMAGINE:
            prompt = json.loads(await request.body.as_bytes()).get("prompt")
            fault = self._first.pop(prompt, None)
            if fault is not None:
                request.headers[FAULT_HEADER] = fault
        return await handler(request)


@VIAS
async def test_run_many_settles_every_lost_submit_exactly(via: str) -> None:
    """Every job's first submit is lost (some after the task was made, some before): a job whose task
    was made ends with its result and that one task; one whose submit made nothing ends
    `AmbiguousSubmitError` with none. Nothing is sent twice."""
    kinds = ["502; phase=after", "reset; phase=before", "reset; phase=after", "500", "502; phase=before"]
    faults = {f"a paper lantern {i}": kinds[i % len(kinds)] for i in range(15)}
    async with Emulator(speed=0.02) as emulator:
        script = FirstTryByPrompt(faults)
        async with scripted(
            emulator, script, **proxy_options(limits=mjasync.Limits(max_in_flight=4), retry=FAST_RETRY)
        ) as mj:
            async with mj.run_many((mj.imagine(p) for p in faults), via=via) as outcomes:  # type: ignore[arg-type]
                ended = [outcome async for outcome in outcomes]
        made = {prompt for prompt, fault in faults.items() if "after" in fault}
        assert len(ended) == len(faults)
        for outcome in ended:
            prompt = list(faults)[outcome.index]
            if prompt in made:
                assert outcome.ok, (prompt, outcome.error)
            else:
                assert isinstance(outcome.error, mjasync.AmbiguousSubmitError), (prompt, outcome.error)
        assert emulator.tasks_per_prompt == dict.fromkeys(made, 1)
        for prompt in faults:
            assert submits_sent(emulator, prompt) == 1, prompt
