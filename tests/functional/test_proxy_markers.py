"""Job markers on the midjourney-proxy protocol: unique per job, so a lost submit never takes an identical
sibling's task for its own.

Every submit carries `state` = `mjasync-<request digest>-<job nonce>`, which the proxy echoes. Two jobs
with the same prompt share the digest but not the nonce: a job whose answer was lost looks for its own
whole marker in `GET /mj/task/list`, so a sibling's task (made, its answer still on the way, so not yet
held by the client) is never adopted, and the sibling being there never makes the job's own lookup
ambiguous. Each retry of one job sends the same marker. A job rebuilt from the same request (after a
crash: the batch CLI, the Redis worker) knows only the digest and matches any task of the request, as
`Client.find_task` does for a job that was never sent; tests/functional/test_proxy_batch.py shows the
batch resume path end to end.

The sibling's answer is held back in the client's HTTP layer (`SiblingFirst`) after the emulator has made
its task, so the order of events is exact, with no sleep.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import anyio
import pytest

import mjasync
from mjasync.emulator import FAULT_HEADER, Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL
from .test_proxy_lost_submits import HANG, IMAGINE, VIAS, listings_read, submits_sent
from .test_resilience import FAST_RETRY, FaultScript, finish, scripted

PROVIDER = "midjourney-proxy"
DESCRIBE = "/mj/submit/describe"
#: `mjasync-<24 hex digits of digest>-<16 hex digits of nonce>`.
MARKER = re.compile(r"mjasync-(?P<digest>[0-9a-f]{24})-(?P<nonce>[0-9a-f]{16})")


def states(emulator: Emulator, path: str = IMAGINE) -> list[str]:
    """The `state` of every submit on `path` that reached the emulator, in order (faulted ones included)."""
    return [str((r.json or {}).get("state")) for r in emulator.requests if r.path == path]


def marker_parts(state: str) -> tuple[str, str]:
    """The digest and the nonce of a marker (failing the test if it is not one)."""
    match = MARKER.fullmatch(state)
    assert match is not None, f"not a job marker: {state!r}"
    return match["digest"], match["nonce"]


class SiblingFirst(FaultScript):
    """The first imagine (the sibling's) goes through clean and makes its task, but its answer reaches
    the client only once `release` is set (`held` is set then: the task exists, the client does not
    know it yet); the second imagine gets `fault`. Every other request goes clean."""

    def __init__(self, fault: str) -> None:
        super().__init__()
        self._fault = fault
        self._imagines = 0
        self.held = anyio.Event()
        self.release = anyio.Event()

    async def middleware(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if request.url.path != IMAGINE:
            return await handler(request)
        self._imagines += 1
        if self._imagines == 2:
            request.headers[FAULT_HEADER] = self._fault
        if self._imagines != 1:
            return await handler(request)
        response = await handler(request)
        self.held.set()
        with anyio.fail_after(HANG):
            await self.release.wait()
        return response


async def with_held_sibling(
    mj: mjasync.Client, script: SiblingFirst, sibling: mjasync.ImagineJob, job: mjasync.ImagineJob, via: str
) -> tuple[Any, Any]:
    """Run `sibling` until its task is made (its answer held), then `job` to its end, then let the
    sibling's answer through and run it to its end; each one's result, or its `MJError`."""
    ends: dict[str, Any] = {}

    async def run(name: str, which: mjasync.ImagineJob) -> None:
        try:
            ends[name] = await finish(mj, which, via)
        except mjasync.MJError as error:
            ends[name] = error

    async with anyio.create_task_group() as group:
        group.start_soon(run, "sibling", sibling)
        try:
            with anyio.fail_after(HANG):
                await script.held.wait()
            await run("job", job)
        finally:
            script.release.set()  # whatever happened: the sibling must not hang the group
    return ends["job"], ends["sibling"]


@VIAS
async def test_a_submit_that_made_nothing_never_adopts_an_identical_siblings_task(via: str) -> None:
    """The job's submit is reset before anything is made while its sibling's task (same prompt) exists,
    its answer still in flight: the listing shows only the sibling's task, whose marker is not the
    job's. The job ends `AmbiguousSubmitError` with no task; the sibling ends with its own task."""
    async with Emulator(speed=0.0) as emulator:
        script = SiblingFirst("reset; phase=before")
        async with scripted(emulator, script, provider=PROVIDER) as mj:
            sibling, job = mj.imagine("twin kite"), mj.imagine("twin kite")
            ended, sibling_ended = await with_held_sibling(mj, script, sibling, job, via)
        assert isinstance(ended, mjasync.AmbiguousSubmitError), ended
        assert ended.task_id is None and job.task_id is None, "the sibling's task was adopted"
        assert isinstance(sibling_ended, mjasync.ImagineResult), sibling_ended
        assert sibling_ended.is_final and sibling_ended.task_id == sibling.task_id
        assert emulator.tasks_per_prompt == {"twin kite": 1}
        assert submits_sent(emulator) == 2 and listings_read(emulator) == ["GET"]
        (sibling_digest, sibling_nonce), (digest, nonce) = map(marker_parts, states(emulator))
        assert sibling_digest == digest and sibling_nonce != nonce, "one request, two jobs"


@VIAS
async def test_a_lost_answer_finds_its_own_task_beside_an_identical_siblings(via: str) -> None:
    """The job's task is made and its answer lost, while an identical sibling's task, made before it,
    is not yet known to the client: by the digest alone two tasks would match (ambiguous); by the
    whole marker, the job finds its own. Both end with their own task; nothing is sent twice."""
    async with Emulator(speed=0.0) as emulator:
        script = SiblingFirst("reset; phase=after")
        async with scripted(emulator, script, provider=PROVIDER) as mj:
            sibling, job = mj.imagine("twin lantern"), mj.imagine("twin lantern")
            ended, sibling_ended = await with_held_sibling(mj, script, sibling, job, via)
        assert isinstance(ended, mjasync.ImagineResult), ended
        assert isinstance(sibling_ended, mjasync.ImagineResult), sibling_ended
        assert ended.is_final and sibling_ended.is_final
        assert ended.task_id == job.task_id == emulator.fault_log[0].task_id, "not the job's own task"
        assert sibling_ended.task_id == sibling.task_id != job.task_id
        assert ended.retries_taken == 0
        assert emulator.tasks_per_prompt == {"twin lantern": 2}
        assert submits_sent(emulator) == 2 and listings_read(emulator) == ["GET"]


@pytest.mark.parametrize(
    ("fault", "retry"),
    [
        pytest.param("429; retry-after=0.01", FAST_RETRY, id="refused"),
        pytest.param(
            "reset; phase=before",
            mjasync.RetryPolicy(
                initial_delay=0.01, max_delay=0.05, reconcile_delay=0.01, on_ambiguous_submit="resubmit"
            ),
            id="resubmitted",
        ),
    ],
)
@VIAS
async def test_every_retry_of_a_job_sends_its_one_marker(
    fault: str, retry: mjasync.RetryPolicy, via: str
) -> None:
    """A job sent twice (refused, or lost and resubmitted by the user's choice) carries the same
    `state` both times; the next job of the same prompt carries the same digest with its own nonce."""
    async with Emulator(speed=0.0) as emulator:
        script = FaultScript({IMAGINE: [fault]})
        async with scripted(emulator, script, provider=PROVIDER, retry=retry) as mj:
            first = await finish(mj, mj.imagine("paper boat"), via)
            second = await finish(mj, mj.imagine("paper boat"), via)
        assert first.retries_taken == 1 and second.retries_taken == 0
        sent = states(emulator)
        assert len(sent) == 3 and sent[0] == sent[1], "a retry sent another marker"
        (digest, nonce), (other_digest, other_nonce) = marker_parts(sent[1]), marker_parts(sent[2])
        assert digest == other_digest and nonce != other_nonce
        assert emulator.tasks_per_prompt == {"paper boat": 2}


async def test_a_describes_retries_send_its_one_marker_too() -> None:
    """A describe runs as a task on the proxy: its call has a nonce of its own, kept across retries."""
    async with Emulator(speed=0.0) as emulator:
        script = FaultScript({DESCRIBE: ["429; retry-after=0.01"]})
        async with scripted(emulator, script, provider=PROVIDER) as mj:
            grid = await mj.imagine("a cat to describe").result(via="poll")
            assert grid.image_url is not None  # on the emulator, at 127.0.0.1
            await mj.describe(grid.image_url)
            await mj.describe(grid.image_url)
        sent = states(emulator, DESCRIBE)
        assert len(sent) == 3 and sent[0] == sent[1]
        assert marker_parts(sent[1])[0] == marker_parts(sent[2])[0] and sent[1] != sent[2]


async def test_find_task_matches_the_sent_job_exactly_and_a_rebuilt_one_by_its_request() -> None:
    """`Client.find_task` with the job that was sent finds its task even beside an identical
    sibling's; with a job rebuilt from the same request (never sent) it knows only the request, so
    two tasks match and it cannot choose; with one, it finds it."""
    async with Emulator(speed=0.0) as emulator:
        options: dict[str, Any] = {
            "api_key": EMULATOR_TOKEN,
            "base_url": emulator.url,
            "provider": PROVIDER,
            "poll": FAST_POLL,
        }
        async with mjasync.Client(**options) as crashed:
            alone = crashed.imagine("lone heron")
            first, second = crashed.imagine("twin heron"), crashed.imagine("twin heron")
            for job in (alone, first, second):
                await job.result(via="poll")
        assert first.sent_at is not None and alone.sent_at is not None
        async with mjasync.Client(**options) as rerun:  # holds none of those tasks
            # Rebuilt ones first: a task found is held by the client from then on, and never found again.
            rebuilt = rerun.imagine("twin heron")
            rebuilt.close()
            with pytest.raises(mjasync.AmbiguousSubmitError, match="2 recent tasks match"):
                await rerun.find_task(rebuilt, since=first.sent_at)
            rebuilt_alone = rerun.imagine("lone heron")
            rebuilt_alone.close()
            assert await rerun.find_task(rebuilt_alone, since=alone.sent_at) == alone.task_id
            assert await rerun.find_task(first, since=first.sent_at) == first.task_id
            assert await rerun.find_task(second, since=first.sent_at) == second.task_id
