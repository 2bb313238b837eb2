"""The job's deadline bounds what follows a failed long wait or stream open, not only the request.

A synchronous long wait and a stream's opening request carry the job's deadline as their own overall
timeout, so the usual call needs no cancel scope; the waits that only a failure brings (a lookup to
settle a submit of unknown fate, a Retry-After) are bounded by `Engine.submit` itself. Each test
breaks the request at once and makes the wait after it endless; `anyio.fail_after` is only a hang
detector, far above the deadline and far below `Timeouts.total` and the Retry-After.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest
from aiohttp import web

import mjasync

from .test_deadlines import HANG, MANY_RETRIES, POLL, TOKEN, Handler, never_answers, serving

#: Far beyond the hang detector (and within `RetryPolicy.max_retry_after`, so it is waited for): only
#: the job's deadline can end these waits in time.
LONG = 5 * HANG


async def hangs_up(request: web.Request) -> web.StreamResponse:
    """Reads the submit and drops the connection without an answer: its fate is unknown."""
    await request.read()
    assert request.transport is not None
    request.transport.close()
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def refuses(request: web.Request) -> web.StreamResponse:
    """429, come back much later."""
    await request.read()
    return web.json_response({"detail": "too many"}, status=429, headers={"retry-after": str(LONG)})


def client(url: str) -> mjasync.Client:
    return mjasync.Client(
        api_key=TOKEN,
        base_url=url,
        poll=POLL,
        retry=MANY_RETRIES,
        timeouts=mjasync.Timeouts(total=LONG),
    )


@pytest.mark.parametrize("via", ["sync", "stream"])
@pytest.mark.parametrize(
    "routes",
    [
        # The lookup that would settle the dropped submit never answers.
        {"/midjourney/imagine": hangs_up, "/midjourney/tasks": never_answers},
        # The provider asks for a wait far longer than the deadline.
        {"/midjourney/imagine": refuses, "/midjourney/tasks": never_answers},
    ],
    ids=["settling-lookup-hangs", "long-retry-after"],
)
async def test_the_wait_after_a_failed_send_ends_at_the_deadline(
    via: str, routes: dict[str, Handler]
) -> None:
    """A long wait or a stream whose send breaks at once: the lookup or the Retry-After after it ends
    with WaitTimeoutError at the job's deadline, though `Timeouts.total` and the wait are far longer."""
    async with serving(routes) as url, client(url) as mj:
        job = mj.imagine("a cat")
        with anyio.fail_after(HANG), pytest.raises(mjasync.WaitTimeoutError):
            await job.result(via=via)  # type: ignore[arg-type]
    assert job.sent_at is not None and job.task_id is None
