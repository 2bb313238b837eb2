"""Resilience against the emulator: retries by phase, one shared 429 cooldown, Retry-After, resumed streams
and reconciled submits that never pay twice.

Faults are put on single requests by a client-side aiohttp middleware (`FaultScript`): it adds the
emulator's ``x-mjasync-fault`` header to the next requests on a path, so a retry or a lookup goes out
clean, and it notes when each request left (by the client's clock: a test that gives the client
`VirtualTime` reads exactly when it sent what, with no slack for a loaded machine).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

import mjasync
from mjasync.emulator import FAULT_HEADER, Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL, open_connections
from ..helpers import serving
from ..virtual_time import VirtualTime

IMAGINE = "/midjourney/imagine"
TASKS = "/midjourney/tasks"
#: Small delays, so retried tests take milliseconds; the phases and counts are what they check.
FAST_RETRY = mjasync.RetryPolicy(initial_delay=0.01, max_delay=0.05, reconcile_delay=0.01)
OFF = mjasync.RetryPolicy(max_retries=0)


class FaultScript:
    """Client-side: scripted fault headers on chosen requests; every request is noted.

    `faults` gives, per path, the headers of the next requests on it in order (None: no fault);
    `first_try` gives, per path, the header for the first request of each distinct body (each job's
    first attempt, however the jobs interleave).
    """

    def __init__(
        self,
        faults: dict[str, list[str | None]] | None = None,
        *,
        first_try: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._queues = {path: deque(items) for path, items in (faults or {}).items()}
        self._first_try = dict(first_try or {})
        self._bodies: set[tuple[str, bytes]] = set()
        #: (time sent by `clock`, path, fault header or None), oldest first.
        self.log: list[tuple[float, str, str | None]] = []

    def add(self, path: str, *faults: str | None) -> None:
        """Put `faults` on the next requests on `path`."""
        self._queues.setdefault(path, deque()).extend(faults)

    async def middleware(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        path = request.url.path
        queue = self._queues.get(path)
        fault = queue.popleft() if queue else None
        if fault is None and path in self._first_try:
            key = (path, await request.body.as_bytes())
            if key not in self._bodies:
                self._bodies.add(key)
                fault = self._first_try[path]
        if fault is not None:
            request.headers[FAULT_HEADER] = fault
        self.log.append((self._clock(), path, fault))
        return await handler(request)

    def sent(self, path: str) -> list[float]:
        """When each request on `path` left, oldest first."""
        return [when for when, p, _ in self.log if p == path]

    def count(self, path: str) -> int:
        """How many requests went to `path`."""
        return len(self.sent(path))


class HeldRefusals(FaultScript):
    """Hands no 429 back to the client before `burst` of them are in: then all of them at once.

    So the refusals are one burst whatever the machine's pace, as if the provider had answered them
    all in the same instant.
    """

    def __init__(self, burst: int, **options: Any) -> None:
        super().__init__(**options)
        self._burst = burst
        self._refused = 0
        self._all_in = anyio.Event()

    async def middleware(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        response = await super().middleware(request, handler)
        if response.status == 429 and not self._all_in.is_set():
            self._refused += 1
            if self._refused == self._burst:
                self._all_in.set()
            await self._all_in.wait()
        return response


@asynccontextmanager
async def scripted(emulator: Emulator, script: FaultScript, **options: Any) -> AsyncIterator[mjasync.Client]:
    """A client on `emulator` whose requests pass through `script`; no connection may stay checked out."""
    options.setdefault("poll", FAST_POLL)
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("api_key", EMULATOR_TOKEN)
    options.setdefault("base_url", emulator.url)
    async with aiohttp.ClientSession(middlewares=(script.middleware,)) as session:
        async with mjasync.Client(http_session=session, **options) as client:
            yield client
            assert open_connections(client) == 0, "a connection was left checked out"


def posts(emulator: Emulator, path: str = IMAGINE) -> list[dict[str, Any] | None]:
    """Bodies of the requests the emulator received on `path` (resets and faulted ones included)."""
    return [r.json for r in emulator.requests if r.path == path]


def listings(emulator: Emulator) -> list[dict[str, Any]]:
    """The recent-task listings the emulator answered (how a submit of unknown fate is looked up)."""
    return [b for b in posts(emulator, TASKS) if b and b.get("action") == "retrieve_batch" and "type" in b]


async def finish(client: mjasync.Client, job: mjasync.Job[Any, Any], via: str) -> Any:
    """Run `job` to its result by `via`, streaming every update when it is a stream."""
    if via != "stream":
        return await job.result(via=via)  # type: ignore[arg-type]
    async with job.stream() as updates:
        async for _ in updates:
            pass
    return updates.final


VIAS = pytest.mark.parametrize("via", ["poll", "stream"])


# --- the shared 429 pause, the learnt cap -----------------------------------------------------------


async def test_a_burst_of_429s_is_one_shared_wait(mj_emulator: Emulator) -> None:
    """Twenty jobs all answered 429 (Retry-After 1 s) wait out ONE cooldown together, then all finish."""
    virtual = VirtualTime()
    script = HeldRefusals(20, first_try={IMAGINE: "429; retry-after=1"}, clock=virtual.clock)
    async with scripted(mj_emulator, script, clock=virtual.clock, sleep=virtual.sleep) as mj:

        async def burst() -> list[Any]:
            jobs = [mj.imagine(f"burst {i}") for i in range(20)]
            async with mj.run_many(jobs, concurrency=20) as outcomes:
                return [o async for o in outcomes]

        results = await virtual.drive(burst)
        stats = mj.statistics().limiter
    assert all(o.ok for o in results), [o.error for o in results]
    assert [o.retries_taken for o in results] == [1] * 20
    assert stats.cooldowns == 1, "the 20 answers of one burst started one cooldown, not one each"
    # The cap fell once for the burst, by at most half (64 → 32); 20 jobs never fill 32, so it stays.
    assert (stats.limit, stats.decreases) == (32, 1)
    sent = script.sent(IMAGINE)
    first_tries, retries = sent[:20], sent[20:]
    assert set(first_tries) == {0.0}
    assert set(retries) == {1.0}, "one wait of 1 s, not twenty: the retries left together when it ended"
    assert mj_emulator.counters["submits"] == 20 and max(mj_emulator.tasks_per_prompt.values()) == 1


async def test_a_lone_429_pauses_no_one_and_keeps_the_cap(mj_emulator: Emulator) -> None:
    """A 429 with nothing else out is no evidence of a cap: that job alone waits, the cap stays at 8."""
    script = FaultScript({IMAGINE: ["429; retry-after=0.01"]})
    limits = mjasync.Limits(max_in_flight=8)
    async with scripted(mj_emulator, script, limits=limits) as mj:
        assert (await mj.imagine("lone")).retries_taken == 1
        for i in range(10):
            await mj.imagine(f"after {i}")
        stats = mj.statistics().limiter
    assert (stats.limit, stats.cooldowns, stats.decreases) == (8, 0, 0)


async def test_a_burst_with_retry_after_0_is_one_decrease(mj_emulator: Emulator) -> None:
    """Four concurrent submits answered 429 with Retry-After: 0 lower the cap once, by at most half."""
    script = HeldRefusals(4, first_try={IMAGINE: "429; retry-after=0"})
    async with scripted(mj_emulator, script) as mj:
        jobs = [mj.imagine(f"zero {i}") for i in range(4)]
        async with mj.run_many(jobs, concurrency=4) as outcomes:
            results = [o async for o in outcomes]
        stats = mj.statistics().limiter
    assert all(o.ok for o in results), [o.error for o in results]
    assert stats.decreases == 1 and stats.limit >= 32, stats


# --- Retry-After ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "at_least", "at_most"),
    [
        ("429; retry-after=1", 1.0, 1.0),
        # The emulator also sends `Retry-After: 2`; the more precise Retry-After-Ms wins.
        ("429; retry-after-ms=1500", 1.5, 1.5),
        # An HTTP date at least 2 s ahead, rounded up to a whole second by the emulator (read against
        # the wall clock as the answer arrives, a little after the emulator wrote it).
        ("429; retry-after=date", 1.95, 3.0),
    ],
    ids=["seconds", "milliseconds", "http-date"],
)
@VIAS
async def test_retry_after_is_honoured_in_each_form(
    mj_emulator: Emulator, fault: str, at_least: float, at_most: float, via: str
) -> None:
    """The retry of a submit answered 429 leaves when its Retry-After says, in every form."""
    virtual = VirtualTime()
    script = FaultScript({IMAGINE: [fault]}, clock=virtual.clock)
    async with scripted(mj_emulator, script, clock=virtual.clock, sleep=virtual.sleep) as mj:
        result = await virtual.drive(lambda: finish(mj, mj.imagine("patience"), via))
        stats = mj.statistics().limiter
    first, retry = script.sent(IMAGINE)
    assert at_least <= retry - first <= at_most, "the wait is the header's, not some backoff of ours"
    assert result.is_final and result.retries_taken == 1
    assert stats.cooldowns == 0, "a lone refusal: only that request waits, no one else is paused"
    assert mj_emulator.counters["submits"] == 1 and len(posts(mj_emulator)) == 2


async def test_retry_after_ms_is_preferred_over_retry_after(mj_emulator: Emulator) -> None:
    """With Retry-After-Ms: 1500 and Retry-After: 2 both sent, the error carries 1.5 s (retries off)."""
    async with scripted(mj_emulator, FaultScript({IMAGINE: ["429; retry-after-ms=1500"]}), retry=OFF) as mj:
        with pytest.raises(mjasync.RateLimitError) as caught:
            await mj.imagine("precise")
    assert caught.value.retry_after == pytest.approx(1.5)


async def test_a_retry_after_beyond_the_policy_is_not_waited_for(mj_emulator: Emulator) -> None:
    """A 429 asking for longer than `max_retry_after` is raised at once, with the wait it asked for."""
    script = FaultScript({IMAGINE: ["429; retry-after=30"]})
    retry = mjasync.RetryPolicy(max_retry_after=5.0, initial_delay=0.01)
    virtual = VirtualTime()
    async with scripted(mj_emulator, script, retry=retry, clock=virtual.clock, sleep=virtual.sleep) as mj:
        with pytest.raises(mjasync.RateLimitError) as caught:
            await virtual.drive(lambda: mj.imagine("too long"))
        assert virtual.now == 0.0, "raised at once: the client waited for nothing"
        assert mj.statistics().limiter.cooldowns == 0
    assert caught.value.retry_after == 30 and caught.value.retries_taken == 0
    assert len(posts(mj_emulator)) == 1


async def test_retry_after_on_a_503_is_honoured(mj_emulator: Emulator) -> None:
    """A 503 with Retry-After: 1 on an idempotent call is retried no earlier than 1 s later."""
    path = "/midjourney/translate"
    virtual = VirtualTime()
    script = FaultScript({path: ["503; retry-after=1"]}, clock=virtual.clock)
    async with scripted(mj_emulator, script, clock=virtual.clock, sleep=virtual.sleep) as mj:
        assert (await virtual.drive(lambda: mj.translate("hello"))).content == "hello"
    first, retry = script.sent(path)
    assert retry - first == 1.0


# --- streams that break --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["cut-after=1", "malformed-line=2", "cut-after=3"])
async def test_a_broken_stream_finishes_by_polling_with_one_submit(fault: str) -> None:
    """A stream cut (or garbled) after its first line ends with the final result, polled, with no repeats."""
    async with Emulator(tokens=(EMULATOR_TOKEN,), speed=1.0) as emulator:
        script = FaultScript({IMAGINE: [fault]})
        async with scripted(emulator, script) as mj:
            updates_seen: list[mjasync.ImagineResult] = []
            async with mj.imagine("a ship in a storm").stream() as updates:
                async for update in updates:
                    updates_seen.append(update)
            assert updates.resumed
            final = updates.final
        faults = dict(emulator.faults)
        submits = emulator.counters["submits"]
    assert final is not None and final.is_final and final.progress == 100 and final.actions
    assert final is updates_seen[-1] and final.retries_taken == 0
    progress = [u.progress for u in updates_seen]
    assert progress == sorted(set(progress)), f"progress must rise strictly: {progress}"
    assert len({u.image_id for u in updates_seen}) == len(updates_seen), "no update arrived twice"
    assert {u.task_id for u in updates_seen} == {final.task_id}
    assert len(progress) >= 3, "polling carried on through the remaining progress"
    assert submits == 1 and len(posts(emulator)) == 1, "resumed without a second submit"
    assert faults["cut" if fault.startswith("cut") else "malformed"] == 1


@pytest.mark.parametrize("fault", ["cut-after=0", "malformed-line=1"])
async def test_a_stream_broken_before_its_first_line_is_looked_up_and_resumed(
    mj_emulator: Emulator, fault: str
) -> None:
    """A stream that breaks before any line names its task (cut, garbled): the task is found and finished."""
    script = FaultScript({IMAGINE: [fault]})
    async with scripted(mj_emulator, script) as mj:
        async with mj.imagine("a quiet harbour").stream() as updates:
            async for _ in updates:
                pass
        assert updates.resumed
        result = updates.final
    assert result is not None and result.is_final and result.task_id
    assert mj_emulator.counters["submits"] == 1 and len(posts(mj_emulator)) == 1
    assert len(listings(mj_emulator)) >= 1, "the provider's records were checked"


# --- submits of unknown fate ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset; phase=before", "502"])
@VIAS
async def test_a_submit_that_leaves_no_trace_raises_ambiguous_and_is_not_resent(
    mj_emulator: Emulator, fault: str, via: str
) -> None:
    """A reset (no answer) or an HTML 502 (no trace id), and no task to find: AmbiguousSubmitError, 1 POST."""
    script = FaultScript({IMAGINE: [fault]})
    async with scripted(mj_emulator, script) as mj:
        with pytest.raises(mjasync.AmbiguousSubmitError) as caught:
            await finish(mj, mj.imagine("maybe sent"), via)
    assert len(posts(mj_emulator)) == 1, "the submit was not sent again"
    assert mj_emulator.counters["submits"] == 0
    assert len(listings(mj_emulator)) == 1, "the provider's records were looked up first"
    assert caught.value.retries_taken == 0
    expected_cause = mjasync.APIStatusError if fault == "502" else mjasync.APIConnectionError
    assert isinstance(caught.value.__cause__, expected_cause)


@pytest.mark.parametrize("fault", ["reset; phase=before", "502"])
@VIAS
async def test_resubmit_policy_sends_an_ambiguous_submit_again(
    mj_emulator: Emulator, fault: str, via: str
) -> None:
    """With on_ambiguous_submit="resubmit", the same faults are retried: 2 POSTs, 1 task, 1 retry taken."""
    script = FaultScript({IMAGINE: [fault]})
    retry = mjasync.RetryPolicy(initial_delay=0.01, reconcile_delay=0.01, on_ambiguous_submit="resubmit")
    async with scripted(mj_emulator, script, retry=retry) as mj:
        result = await finish(mj, mj.imagine("send it anyway"), via)
    assert result.is_final and result.retries_taken == 1
    assert len(posts(mj_emulator)) == 2
    assert mj_emulator.tasks_per_prompt == {"send it anyway": 1}


@pytest.mark.parametrize(
    ("fault", "by_trace_id"),
    [
        ("500; phase=after", True),
        ("504; phase=after", True),
        ("502; phase=after", False),
        ("reset; phase=after", False),
    ],
)
@pytest.mark.parametrize("via", ["poll", "stream", "sync"])
async def test_a_submit_whose_answer_was_lost_is_found_and_resumed(
    mj_emulator: Emulator, fault: str, by_trace_id: bool, via: str
) -> None:
    """The task was made but the answer lost: found (by trace id, else by listing) and finished, 1 submit."""
    script = FaultScript({IMAGINE: [fault]})
    async with scripted(mj_emulator, script) as mj:
        result = await finish(mj, mj.imagine("lost answer"), via)
    assert result.is_final and result.progress == 100
    assert mj_emulator.counters["submits"] == 1 and len(posts(mj_emulator)) == 1
    assert mj_emulator.tasks_per_prompt == {"lost answer": 1}
    assert result.task_id == mj_emulator.fault_log[0].task_id, "the found task is the one the fault hit"
    trace_lookups = [b for b in posts(mj_emulator, TASKS) if b and "trace_id" in b]
    assert bool(trace_lookups) == by_trace_id
    assert bool(listings(mj_emulator)) != by_trace_id, "listing only when no trace id could find it"


async def test_reconciling_never_adopts_a_task_this_client_already_holds(mj_emulator: Emulator) -> None:
    """Two jobs with one prompt: the second's lost answer is matched to its own task, not the first's."""
    script = FaultScript({IMAGINE: [None, "502; phase=after"]})
    async with scripted(mj_emulator, script) as mj:
        first = await mj.imagine("twin").result(via="poll")
        second = await mj.imagine("twin").result(via="poll")
    assert first.task_id != second.task_id
    assert second.task_id == mj_emulator.fault_log[0].task_id
    assert mj_emulator.tasks_per_prompt == {"twin": 2} and len(posts(mj_emulator)) == 2


async def test_an_unclaimed_twin_task_makes_the_lookup_ambiguous(mj_emulator: Emulator) -> None:
    """A task with the same request made by another client is not adopted: the submit is ambiguous."""
    async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=mj_emulator.url, poll=FAST_POLL) as other:
        await other.imagine("twin").result(via="poll")
    async with scripted(mj_emulator, FaultScript({IMAGINE: ["502; phase=after"]})) as mj:
        with pytest.raises(mjasync.AmbiguousSubmitError, match="2 recent tasks match"):
            await mj.imagine("twin").result(via="poll")
    assert mj_emulator.tasks_per_prompt == {"twin": 2}, "not sent a third time"


@pytest.mark.parametrize("status", [500, 503, 504])
@VIAS
async def test_a_5xx_before_the_task_is_proven_absent_and_retried(
    mj_emulator: Emulator, status: int, via: str
) -> None:
    """A 5xx with a trace id that names no task is proven absent: retried, 2 POSTs, 1 task."""
    script = FaultScript({IMAGINE: [str(status)]})
    async with scripted(mj_emulator, script) as mj:
        result = await finish(mj, mj.imagine("try again"), via)
    assert result.is_final and result.retries_taken == 1
    assert len(posts(mj_emulator)) == 2 and mj_emulator.tasks_per_prompt == {"try again": 1}
    assert any(b and "trace_id" in b for b in posts(mj_emulator, TASKS)), "looked up by trace id first"


@pytest.mark.parametrize("policy", ["raise", "resubmit"])
async def test_a_lost_submit_is_found_among_many_newer_tasks(mj_emulator: Emulator, policy: str) -> None:
    """A 502-after-creation submit whose answer comes late, while 150 other tasks are made, is still found."""
    needle_made, crowd_done = anyio.Event(), anyio.Event()

    class LateAnswer(FaultScript):
        """The needle's 502 (its task already made) reaches the client only once the crowd is made."""

        async def middleware(
            self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
        ) -> aiohttp.ClientResponse:
            response = await super().middleware(request, handler)
            if request.url.path == IMAGINE and response.status == 502:
                needle_made.set()
                await crowd_done.wait()
            return response

    script = LateAnswer({IMAGINE: ["502; phase=after"]})
    retry = mjasync.RetryPolicy(
        initial_delay=0.01,
        reconcile_delay=0.01,
        on_ambiguous_submit=policy,  # type: ignore[arg-type]
    )
    async with (
        scripted(mj_emulator, script, retry=retry) as mj,
        mjasync.Client(api_key=EMULATOR_TOKEN, base_url=mj_emulator.url, poll=FAST_POLL) as crowd,
    ):
        outcome: dict[str, Any] = {}

        async def victim() -> None:
            try:
                outcome["result"] = await mj.imagine("needle").result(via="poll")
            except mjasync.MJError as exc:
                outcome["error"] = exc

        async def others() -> None:
            await needle_made.wait()
            async with crowd.run_many((crowd.imagine(f"hay {i}") for i in range(150)), concurrency=32) as out:
                assert all([o.ok async for o in out])
            crowd_done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(victim)
            group.start_soon(others)
    assert mj_emulator.tasks_per_prompt["needle"] == 1, "the needle was paid for twice"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].is_final


@pytest.mark.parametrize("policy", ["raise", "resubmit"])
async def test_a_task_seen_on_two_pages_of_the_listing_is_one_match(
    mj_emulator: Emulator, policy: str
) -> None:
    """New tasks made while the listing is paged repeat the submit's task on the next page: still one match."""
    async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=mj_emulator.url, poll=FAST_POLL) as crowd:

        async def make_tasks(count: int, label: str) -> None:
            async with crowd.run_many(
                (crowd.imagine(f"{label} {i}") for i in range(count)), concurrency=32
            ) as out:
                assert all([o.ok async for o in out])

        class ShiftingListing(FaultScript):
            """Before the listing's second page is fetched, 100 newer tasks appear."""

            shifted = False

            async def middleware(
                self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
            ) -> aiohttp.ClientResponse:
                if request.url.path == TASKS and not self.shifted:
                    body = json.loads(await request.body.as_bytes())
                    if body.get("type") and body.get("offset"):
                        self.shifted = True
                        await make_tasks(100, "newer")
                return await super().middleware(request, handler)

        await make_tasks(150, "older")  # the listing has two pages from the start
        script = ShiftingListing({IMAGINE: ["502; phase=after"]})
        retry = mjasync.RetryPolicy(
            initial_delay=0.01,
            reconcile_delay=0.01,
            on_ambiguous_submit=policy,  # type: ignore[arg-type]
        )
        async with scripted(mj_emulator, script, retry=retry) as mj:
            result = await mj.imagine("needle").result(via="poll")
    assert script.shifted, "the listing was paged"
    assert result.is_final and result.task_id == mj_emulator.fault_log[0].task_id
    assert mj_emulator.tasks_per_prompt["needle"] == 1


# --- what is never retried, and idempotent calls ------------------------------------------------------------

JobMaker = Callable[[mjasync.Client], Awaitable[Any]]

FATAL: list[tuple[str, dict[str, Any], JobMaker, type[mjasync.APIStatusError], int]] = [
    (
        "400 unknown image_id",
        {},
        lambda mj: mj.upscale("1234567890", 1).result(),
        mjasync.BadRequestError,
        400,
    ),
    (
        "401 wrong key",
        {"api_key": "wrong-token"},
        lambda mj: mj.imagine("x").result(),
        mjasync.AuthenticationError,
        401,
    ),
    ("403 moderation", {}, lambda mj: mj.imagine("gore").result(), mjasync.ModerationError, 403),
    (
        "401 on translate",
        {"api_key": "wrong-token"},
        lambda mj: mj.translate("x"),
        mjasync.AuthenticationError,
        401,
    ),
    ("400 on seed", {}, lambda mj: mj.seed("1234567890"), mjasync.BadRequestError, 400),
]


@pytest.mark.parametrize(("name", "options", "make", "error", "status"), FATAL, ids=[f[0] for f in FATAL])
async def test_fatal_statuses_are_never_retried(
    mj_emulator: Emulator,
    name: str,
    options: dict[str, Any],
    make: JobMaker,
    error: type[mjasync.APIStatusError],
    status: int,
) -> None:
    """400, 401 and 403 (moderation) are raised after exactly one request, with no lookup."""
    script = FaultScript()
    async with scripted(mj_emulator, script, **options) as mj:
        with pytest.raises(error) as caught:
            await make(mj)
    assert caught.value.status == status and caught.value.retries_taken == 0
    assert len(script.log) == 1, f"{name}: {[p for _, p, _ in script.log]}"
    assert mj_emulator.counters["submits"] == 0


@VIAS
async def test_a_404_is_never_retried(via: str) -> None:
    """A server that answers 404 (a wrong path, say): NotFoundError after one request, nothing looked up.

    (A base URL with a path prefix, which used to provoke the 404 here, is now refused before sending.)
    """
    seen: list[str] = []

    async def not_found(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response(
            {"success": False, "error": {"code": "not_found", "message": "no such path"}}, status=404
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_found)
    async with serving(app) as port:
        retry = mjasync.RetryPolicy(initial_delay=0.01, max_delay=0.01, reconcile_delay=0)
        async with mjasync.Client(
            api_key=EMULATOR_TOKEN, base_url=f"http://127.0.0.1:{port}", poll=FAST_POLL, retry=retry
        ) as mj:
            with pytest.raises(mjasync.NotFoundError):
                await finish(mj, mj.imagine("lost"), via)
    assert seen == [IMAGINE]


#: (name, path, call); the call gets the grid made first: its image_id, or its task_id for task lookups.
IDEMPOTENT: list[tuple[str, str, Callable[[mjasync.Client, str], Awaitable[Any]]]] = [
    ("describe", "/midjourney/describe", lambda mj, _: mj.describe("https://cdn.example.com/a.png")),
    ("translate", "/midjourney/translate", lambda mj, _: mj.translate("a cat")),
    ("shorten", "/midjourney/shorten", lambda mj, _: mj.shorten("a cat on a mat, soft light")),
    ("seed", "/midjourney/seed", lambda mj, image_id: mj.seed(image_id)),
    ("retrieve_task", TASKS, lambda mj, task_id: mj.retrieve_task(task_id)),
    ("task_record", TASKS, lambda mj, task_id: mj.task(task_id).record()),
    ("retrieve_tasks", TASKS, lambda mj, task_id: mj.retrieve_tasks([task_id])),
]


@pytest.mark.parametrize(
    ("name", "path", "call"),
    IDEMPOTENT,
    ids=[item[0] for item in IDEMPOTENT],
)
async def test_idempotent_calls_retry_on_5xx_and_resets(
    mj_emulator: Emulator, name: str, path: str, call: Callable[[mjasync.Client, str], Awaitable[Any]]
) -> None:
    """describe, translate, shorten, seed and task lookups are sent again after a 500 and a reset."""
    script = FaultScript()
    async with scripted(mj_emulator, script) as mj:
        grid = await mj.imagine("a cat")
        target = grid.task_id if path == TASKS else grid.image_id
        assert target
        script.add(path, "500; phase=after", "reset; phase=after")
        before = script.count(path)
        answer = await call(mj, target)
        assert answer is not None
    assert script.count(path) - before == 3, f"{name}: the call, and a retry after each of the two faults"


@pytest.mark.parametrize("fault", ["502", "503", "504", "reset; phase=before"])
async def test_idempotent_calls_give_up_after_max_retries(mj_emulator: Emulator, fault: str) -> None:
    """An idempotent call that keeps failing raises after 1 + max_retries requests, with retries_taken."""
    path = "/midjourney/translate"
    script = FaultScript({path: [fault] * 10})
    retry = mjasync.RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=0.02)
    async with scripted(mj_emulator, script, retry=retry) as mj:
        with pytest.raises(mjasync.APIError) as caught:
            await mj.translate("again and again")
    assert script.count(path) == 4 and caught.value.retries_taken == 3
    assert isinstance(
        caught.value, mjasync.APIConnectionError if fault.startswith("reset") else mjasync.ServerError
    )


# --- max_retries=0 turns the layer off ------------------------------------------------------------------

OFF_CASES = [
    ("429", IMAGINE, "poll", mjasync.RateLimitError),
    ("500; phase=after", IMAGINE, "poll", mjasync.ServerError),
    ("reset; phase=after", IMAGINE, "stream", mjasync.APIConnectionError),
    ("cut-after=1", IMAGINE, "stream", mjasync.APIConnectionError),
    ("malformed-line=2", IMAGINE, "stream", mjasync.MalformedLineError),
    ("503", "/midjourney/translate", "call", mjasync.ServerError),
]


@pytest.mark.parametrize(
    ("fault", "path", "via", "error"), OFF_CASES, ids=[c[0] + "-" + c[2] for c in OFF_CASES]
)
async def test_max_retries_zero_turns_everything_off(
    mj_emulator: Emulator, fault: str, path: str, via: str, error: type[mjasync.MJError]
) -> None:
    """With max_retries=0 the first error is raised as it is: no retry, no lookup, no resume, no cooldown."""
    script = FaultScript({path: [fault]})
    async with scripted(mj_emulator, script, retry=OFF) as mj:
        with pytest.raises(error):
            if via == "call":
                await mj.translate("once")
            else:
                await finish(mj, mj.imagine("once"), via)
        assert mj.statistics().limiter.cooldowns == 0
    assert [p for _, p, _ in script.log] == [path], "one request, and nothing after it"


# --- retries_taken --------------------------------------------------------------------------------------


@VIAS
async def test_retries_taken_is_recorded_on_results_and_outcomes(mj_emulator: Emulator, via: str) -> None:
    """Each outcome's result says how many retries its submit took: 1 after a 429, 2 after a 429 and a 503."""
    # Run one job at a time, so the scripted faults land on known jobs.
    script = FaultScript({IMAGINE: ["429; retry-after=0.01", None, None, "429; retry-after=0.01", "503"]})
    async with scripted(mj_emulator, script) as mj:
        jobs = [mj.imagine(f"counted {i}") for i in range(3)]
        async with mj.run_many(jobs, concurrency=1, via=via) as outcomes:  # type: ignore[arg-type]
            by_index = {o.index: o async for o in outcomes}
    assert [by_index[i].retries_taken for i in range(3)] == [1, 0, 2]
    assert [by_index[i].result.retries_taken for i in range(3)] == [1, 0, 2]  # type: ignore[union-attr]
    assert mj_emulator.counters["submits"] == 3


@pytest.mark.parametrize(
    ("prompt", "faults", "error", "retries"),
    [
        # Refusals (429) spend no retry; the three 503s that follow do.
        (
            "counted error",
            ["429; retry-after=0.01"] * 3 + ["503; retry-after=0.01"] * 3,
            mjasync.APIStatusError,
            5,
        ),
        ("counted error", ["429; retry-after=0.01", "reset; phase=before"], mjasync.AmbiguousSubmitError, 1),
        ("gore", ["503"], mjasync.ModerationError, 1),
    ],
    ids=["refused-then-unavailable", "ambiguous", "moderated-after-a-retry"],
)
async def test_retries_taken_is_recorded_on_errors(
    mj_emulator: Emulator, prompt: str, faults: list[str | None], error: type[mjasync.APIError], retries: int
) -> None:
    """The error that ends a job says how many retries were taken before it."""
    async with scripted(mj_emulator, FaultScript({IMAGINE: faults})) as mj:
        with pytest.raises(error) as caught:
            await mj.imagine(prompt).result(via="poll")
    assert caught.value.retries_taken == retries
    assert len(posts(mj_emulator)) == retries + 1
    assert mj_emulator.counters["submits"] == 0


@VIAS
async def test_refusals_spend_no_retry(mj_emulator: Emulator, via: str) -> None:
    """A submit refused (429) more often than `max_retries` still goes through: a refusal made nothing,
    and the limiter paces it; only time (the call's budget, or the job's deadline) bounds it."""
    script = FaultScript({IMAGINE: ["429; retry-after=0.01"] * 4})
    async with scripted(mj_emulator, script) as mj:
        result = await mj.imagine("patient").result(via=via)  # type: ignore[arg-type]
    assert result.is_final and result.retries_taken == 4
    assert mj_emulator.counters["submits"] == 1 and len(posts(mj_emulator)) == 5


async def test_a_task_id_the_provider_does_not_know_ends_with_task_not_found(
    mj: mjasync.Client, mj_emulator: Any
) -> None:
    """`mj.task("no-such-id").wait()` ends with TaskNotFoundError after a few lookups (the emulator
    answers a lookup of an unknown id 400 "not found"), alone or batched with a real task."""
    with anyio.fail_after(30), pytest.raises(mjasync.TaskNotFoundError) as caught:
        await mj.task("no-such-id").wait()
    assert caught.value.task_id == "no-such-id"
    lookups = [r for r in mj_emulator.requests if r.path == "/midjourney/tasks"]
    assert len(lookups) == mjasync.PollPolicy().max_missing_lookups

    real = await mj.imagine("a cat").submit()
    outcomes: dict[str, BaseException | mjasync.ImagineResult] = {}

    async def wait(handle: mjasync.types.ImagineHandle) -> None:
        try:
            outcomes[handle.task_id] = await handle.wait()
        except mjasync.MJError as exc:
            outcomes[handle.task_id] = exc

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(wait, mj.task("no-such-id-2"))
            group.start_soon(wait, real)
    assert isinstance(outcomes["no-such-id-2"], mjasync.TaskNotFoundError)
    assert isinstance(outcomes[real.task_id], mjasync.ImagineResult)
