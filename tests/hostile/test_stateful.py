"""One long-lived client against one hostile server, through a sequence of calls and fan-outs.

What a client carries from call to call (the shared 429 cooldown, the shrunken in-flight limit, the
task ids it holds, pooled connections a reset left behind) must not let one call's hostility break
a later call's promises. Hypothesis's `RuleBasedStateMachine` picks the sequence; each step gets a
fresh script and unique prompts, and is checked like a lone call or a `run_many`. The machine runs
on an anyio blocking portal, since hypothesis drives its steps synchronously. The same machine runs
on each provider; the midjourney-proxy's draws its own calls and scripts (reply codes, views, hooks).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

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
from .test_lone_calls import (
    ACEDATA_ONLY,
    CALLS,
    PROXY_CALLS,
    Trial,
    assert_failed_is_no_success,
    assert_reported,
    attempt,
    calls_for,
)


class HostileSession(RuleBasedStateMachine):
    provider = "acedata"

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.stack = ExitStack()
        self.portal = self.stack.enter_context(start_blocking_portal("asyncio"))
        self.logs = self.stack.enter_context(capture_logs())
        self.server: HostileServer = self.stack.enter_context(
            self.portal.wrap_async_context_manager(serve(self.provider, Script()))  # type: ignore[arg-type]
        )
        self.client: mjasync.Client = self.stack.enter_context(
            self.portal.wrap_async_context_manager(hostile_client(self.server))
        )

    def teardown(self) -> None:
        self.stack.close()

    def _tag(self) -> str:
        self.steps += 1
        return f"{self.steps:02d}"

    async def _bounded(self, work: Any) -> Any:
        try:
            with anyio.fail_after(HANG_SECONDS):
                return await work()
        except TimeoutError:
            pytest.fail(f"a step did not end within {HANG_SECONDS} s (paths {self.server.paths[-20:]})")

    @rule(
        call_name=st.sampled_from(sorted(CALLS)) | st.sampled_from(sorted(ACEDATA_ONLY)),
        script=scripts,
        cancel_after=st.none() | st.integers(1, 6),
    )
    def lone_call(self, call_name: str, script: Script, cancel_after: int | None) -> None:
        calls = calls_for(self.provider)
        if call_name not in calls:
            return
        tag = self._tag()
        self.portal.call(self.server.reset, script)
        before = len(self.server.created)
        trial: Trial = self.portal.call(
            self._bounded, lambda: attempt(self.server, self.client, calls[call_name], cancel_after, tag)
        )
        assert_only_mj_error(trial.error)
        if trial.error is not None:
            assert_no_secret_in_error(trial.error)
        assert_reported(self.server.created[before:], trial)
        if self.provider == "midjourney-proxy":
            assert_failed_is_no_success(self.server, trial)

    @rule(script=scripts, jobs=st.integers(1, 3), cancel_after=st.none() | st.integers(1, 8))
    def fan_out(self, script: Script, jobs: int, cancel_after: int | None) -> None:
        tag = self._tag()
        self.portal.call(self.server.reset, script)
        before = len(self.server.created)
        seen: dict[int, mjasync.types.Outcome[Any]] = {}
        box: dict[str, Any] = {}

        async def run() -> None:
            start = self.server.requests
            async with anyio.create_task_group() as group:
                if cancel_after is not None:

                    async def cancel_when_reached() -> None:
                        await self.server.wait_requests(start + cancel_after)
                        group.cancel_scope.cancel()

                    group.start_soon(cancel_when_reached)
                try:
                    work = (self.client.imagine(f"hostile session {tag} job {i}") for i in range(jobs))
                    async with self.client.run_many(work, concurrency=2) as outcomes:
                        box["outcomes"] = outcomes
                        async for outcome in outcomes:
                            seen[outcome.index] = outcome
                except Exception as error:  # every type, to check that only MJErrors escape
                    box["error"] = error
                group.cancel_scope.cancel()

        self.portal.call(self._bounded, run)
        assert_only_mj_error(box.get("error"))
        for error in [box.get("error"), *(o.error for o in seen.values())]:
            if error is not None:
                assert_only_mj_error(error)
                assert_no_secret_in_error(error)
        outcomes = box.get("outcomes")
        made = self.server.created[before:]
        if outcomes is None:
            assert not made, "tasks were made, and run_many never gave its outcomes to report them"
            return
        unfinished = set(outcomes.unfinished)
        unconfirmed = {getattr(item, "index", None) for item in unconfirmed_of(outcomes)}
        for task in made:
            index = int(str(task.body.get("prompt", "")).split(" job ")[1].split()[0])
            outcome = seen.get(index)
            named = (
                {
                    outcome.task_id,
                    getattr(outcome.result, "task_id", None),
                    getattr(outcome.error, "task_id", None),
                }
                if outcome is not None
                else set()
            )
            assert task.task_id in named or task.task_id in unfinished or index in unconfirmed, (
                f"task {task.task_id} of job {index} is not reported: {outcome!r}, unfinished {sorted(unfinished)}"
            )

    @invariant()
    def nothing_paid_twice_and_no_secret_logged(self) -> None:
        assert_one_task_per_job(self.server)
        self.logs.assert_no_secret()


class GoapiHostileSession(HostileSession):
    provider = "goapi"


class ProxyHostileSession(HostileSession):
    """The machine on the midjourney-proxy: its own calls, and scripts with its codes, views and hooks."""

    provider = "midjourney-proxy"

    @rule(
        call_name=st.sampled_from(sorted(PROXY_CALLS)),
        script=proxy_scripts,
        cancel_after=st.none() | st.integers(1, 6),
    )
    def lone_call(self, call_name: str, script: Script, cancel_after: int | None) -> None:
        super().lone_call(call_name, script, cancel_after)

    @rule(script=proxy_scripts, jobs=st.integers(1, 3), cancel_after=st.none() | st.integers(1, 8))
    def fan_out(self, script: Script, jobs: int, cancel_after: int | None) -> None:
        super().fan_out(script, jobs, cancel_after)


session_settings = settings(SETTINGS, max_examples=3, stateful_step_count=4)
TestAcedataSession = HostileSession.TestCase
TestAcedataSession.settings = session_settings
TestGoapiSession = GoapiHostileSession.TestCase
TestGoapiSession.settings = session_settings
TestProxySession = ProxyHostileSession.TestCase
TestProxySession.settings = session_settings
