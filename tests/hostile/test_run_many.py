"""`run_many` against the hostile server: every task the server made is reported, once, and only MJErrors.

A task the server created shows up in its job's outcome (result, error or `task_id`), in
`outcomes.unfinished` (accepted, not finished when the run stopped), or, for a submit whose id the
client never learned, in `outcomes.unconfirmed`. The caller may leave the block (cancel) at any
request the server sees. On the midjourney-proxy (its jobs share `list-by-condition` lookups, which
may omit ids, show strangers or twins), a task the server failed is never an outcome's success.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mjasync

from .checks import (
    assert_no_secret_in_error,
    assert_one_task_per_job,
    assert_only_mj_error,
    capture_logs,
    unconfirmed_of,
)
from .server import HostileServer, Script, serve
from .strategies import HANG_SECONDS, SETTINGS, hostile_client, proxy_scripts, scripts

pytestmark = pytest.mark.anyio

PROMPT = "hostile fan-out job {}"


def index_of(server: HostileServer, task_id: str) -> int:
    """The job a task was made for, by the prompt its submit carried (flags may follow the prompt)."""
    prompt = str(server.tasks[task_id].body.get("prompt", ""))
    return int(prompt.split(" job ")[1].split()[0])


def assert_every_task_reported(
    server: HostileServer, seen: dict[int, mjasync.types.Outcome[Any]], outcomes: mjasync.types.Outcomes[Any]
) -> None:
    unfinished = set(outcomes.unfinished)
    unconfirmed = {getattr(item, "index", None) for item in unconfirmed_of(outcomes)}
    for task in server.created:
        index = index_of(server, task.task_id)
        outcome = seen.get(index)
        named = set()
        if outcome is not None:
            named = {
                outcome.task_id,
                getattr(outcome.result, "task_id", None),
                getattr(outcome.error, "task_id", None),
            }
        assert task.task_id in named or task.task_id in unfinished or index in unconfirmed, (
            f"task {task.task_id} was made for job {index} and is not reported: outcome {outcome!r}, "
            f"unfinished {sorted(unfinished)}, unconfirmed indexes {sorted(map(str, unconfirmed))}"
        )


def assert_no_failed_success(server: HostileServer, seen: dict[int, mjasync.types.Outcome[Any]]) -> None:
    failed = {task.task_id for task in server.created if task.state == "failed"}
    for outcome in seen.values():
        task_id = getattr(outcome.result, "task_id", None)
        assert not (outcome.ok and task_id in failed), f"task {task_id} failed at the server: {outcome!r}"


async def check_run_many(
    provider: Literal["acedata", "goapi", "midjourney-proxy"],
    script: Script,
    jobs: int,
    via: Literal["poll", "stream"],
    cancel_after: int | None,
    resubmit: bool,
) -> None:
    seen: dict[int, mjasync.types.Outcome[Any]] = {}
    escaped: BaseException | None = None
    outcomes: mjasync.types.Outcomes[Any] | None = None
    with capture_logs() as logs:
        async with serve(provider, script) as server:
            try:
                with anyio.fail_after(HANG_SECONDS):
                    async with hostile_client(server, resubmit=resubmit) as mj:
                        async with anyio.create_task_group() as group:
                            if cancel_after is not None:

                                async def cancel_when_reached() -> None:
                                    await server.wait_requests(cancel_after)
                                    group.cancel_scope.cancel()

                                group.start_soon(cancel_when_reached)
                            try:
                                work = (mj.imagine(PROMPT.format(i)) for i in range(jobs))
                                async with mj.run_many(work, concurrency=2, via=via) as outcomes:
                                    async for outcome in outcomes:
                                        seen[outcome.index] = outcome
                            except Exception as error:  # every type, to check that only MJErrors escape
                                escaped = error
                            group.cancel_scope.cancel()
            except TimeoutError:
                pytest.fail(
                    f"run_many on {provider} did not end within {HANG_SECONDS} s (paths {server.paths})"
                )
    assert_only_mj_error(escaped)
    for failure in [escaped, *(o.error for o in seen.values())]:
        if failure is not None:
            assert_only_mj_error(failure)
            assert_no_secret_in_error(failure)
    logs.assert_no_secret()
    assert_one_task_per_job(server, resubmit_allowed=resubmit)
    if provider == "midjourney-proxy":
        assert_no_failed_success(server, seen)
    if outcomes is not None:
        assert_every_task_reported(server, seen, outcomes)
    else:
        assert not server.created, "tasks were made, and run_many never gave its outcomes to report them"


@pytest.mark.parametrize("provider", ["acedata", "goapi"])
@settings(SETTINGS, max_examples=10)
@given(
    script=scripts,
    jobs=st.integers(1, 4),
    via=st.sampled_from(["poll", "stream"]),
    cancel_after=st.none() | st.integers(1, 8),
    resubmit=st.booleans(),
)
async def test_run_many_reports_every_task_once(
    provider: Literal["acedata", "goapi"],
    script: Script,
    jobs: int,
    via: Literal["poll", "stream"],
    cancel_after: int | None,
    resubmit: bool,
) -> None:
    await check_run_many(provider, script, jobs, via, cancel_after, resubmit)


@settings(SETTINGS, max_examples=10)
@given(
    script=proxy_scripts,
    jobs=st.integers(1, 4),
    via=st.sampled_from(["poll", "stream"]),
    cancel_after=st.none() | st.integers(1, 8),
    resubmit=st.booleans(),
)
async def test_proxy_run_many_reports_every_task_once(
    script: Script, jobs: int, via: Literal["poll", "stream"], cancel_after: int | None, resubmit: bool
) -> None:
    await check_run_many("midjourney-proxy", script, jobs, via, cancel_after, resubmit)
