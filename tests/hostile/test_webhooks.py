"""Jobs awaited by callback, with the hostile server POSTing hostile callbacks to the `WebhookReceiver`.

Garbage, a wrong `x-webhook-secret` that carries the API key, another task's failure, a body far past
the receiver's limit, and this task's failure spelled with both secrets: the job still ends with a
result or an `MJError`, within its limits, with both secrets (the receiver holds the webhook secret)
nowhere in its error or the logs, and its task reported once. On the midjourney-proxy (notifyHook:
unsigned, may come twice or out of order, never retried) the callbacks are garbage, another task's
failure, a huge body, this task's failure (also with progress "100%"), duplicates and stale updates;
a job whose task failed never ends as a success.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any, Literal, get_args

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mjasync

from .checks import assert_no_secret_in_error, assert_one_task_per_job, assert_only_mj_error, capture_logs
from .server import API_KEY, WEBHOOK_SECRET, CallbackMove, HookMove, Script, serve
from .strategies import HANG_SECONDS, SETTINGS, garbage, hostile_client

pytestmark = pytest.mark.anyio

webhook_scripts = st.builds(
    Script,
    callbacks=st.lists(st.sampled_from(get_args(CallbackMove)), max_size=4),
    lookups=st.lists(st.sampled_from(["honest", "running", "garbage", "reset"]), max_size=2),
    garbage=garbage,
    echo=st.sampled_from(["plain", "escaped", "split"]),
)


proxy_webhook_scripts = st.builds(
    Script,
    hooks=st.lists(st.sampled_from(get_args(HookMove)), max_size=4),
    lookups=st.lists(st.sampled_from(["honest", "running", "garbage", "reset"]), max_size=2),
    views=st.lists(st.sampled_from(["honest", "backwards", "omit", "failure-100"]), max_size=2),
    garbage=garbage,
    echo=st.sampled_from(["plain", "escaped", "split"]),
)


@pytest.mark.parametrize("provider", ["acedata", "goapi"])
@settings(SETTINGS, max_examples=8)
@given(script=webhook_scripts, how=st.sampled_from(["await", "submit-wait", "stream"]))
async def test_hostile_callbacks_keep_the_promises(
    provider: Literal["acedata", "goapi"], script: Script, how: str
) -> None:
    await check_callbacks(provider, script, how)


@settings(SETTINGS, max_examples=8)
@given(script=proxy_webhook_scripts, how=st.sampled_from(["await", "submit-wait", "stream"]))
async def test_hostile_proxy_callbacks_keep_the_promises(script: Script, how: str) -> None:
    await check_callbacks("midjourney-proxy", script, how)


async def check_callbacks(
    provider: Literal["acedata", "goapi", "midjourney-proxy"], script: Script, how: str
) -> None:
    # The proxy signs nothing: its receiver holds no secret, and only the key must stay hidden.
    proxy = provider == "midjourney-proxy"
    receiver = mjasync.WebhookReceiver() if proxy else mjasync.WebhookReceiver(secret=WEBHOOK_SECRET)
    secrets = (API_KEY,) if proxy else (API_KEY, WEBHOOK_SECRET)
    result: Any = None
    error: Exception | None = None
    with capture_logs() as logs:
        async with AsyncExitStack() as stack:
            # The proxy keeps POSTing after a job ends (duplicates, stale updates). Its server stops
            # first, so that none arrives while the receiver is closing: on Python 3.11 one that does
            # can make asyncio's `sock_accept` raise InvalidStateError in the receiver's accept loop
            # (reported to the lead; not this test's subject). The others keep their order.
            if proxy:
                await stack.enter_async_context(receiver.serve(host="127.0.0.1", port=0))
            server = await stack.enter_async_context(serve(provider, script))
            if not proxy:
                await stack.enter_async_context(receiver.serve(host="127.0.0.1", port=0))
            try:
                with anyio.fail_after(HANG_SECONDS):
                    async with hostile_client(server, webhooks=receiver) as mj:
                        job = mj.imagine("hostile webhook job")
                        try:
                            if how == "await":
                                result = await job
                            elif how == "submit-wait":
                                result = await (await job.submit()).wait()
                            else:
                                async with job.stream() as updates:
                                    async for _ in updates:
                                        pass
                                result = updates.final
                        except Exception as caught:  # every type, to check that only MJErrors escape
                            error = caught
            except TimeoutError:
                pytest.fail(f"a job awaited by callback did not end within {HANG_SECONDS} s")
    assert_only_mj_error(error)
    if error is not None:
        assert_no_secret_in_error(error, secrets)
    logs.assert_no_secret(secrets)
    assert_one_task_per_job(server)
    for task in server.created:
        named = {getattr(result, "task_id", None), getattr(error, "task_id", None)}
        assert task.task_id in named or isinstance(
            error, mjasync.AmbiguousSubmitError | mjasync.WaitTimeoutError
        ), f"task {task.task_id} is not reported by {result!r} / {error!r}"
        if proxy and task.state == "failed":
            assert getattr(result, "task_id", None) != task.task_id, f"task {task.task_id} failed: {result!r}"
