"""One call at a time against the hostile server, each way a user can make it, on all three providers.

Hypothesis picks the call, the server's script of misbehaviours, and a point (the n-th request the
server sees) at which the caller cancels. Whatever it picks: only `MJError`s escape, the call ends
within the client's small limits, no secret surfaces, every task the server made is reported, and no
job is paid for twice. On the midjourney-proxy, also: a task that failed (FAILURE with progress
"100%", CANCEL) is never reported as a success.
"""

from __future__ import annotations

import copy
import io
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import mjasync
from mjasync.types import WaitVia

from .checks import (
    assert_no_secret_in_error,
    assert_one_task_per_job,
    assert_only_mj_error,
    capture_logs,
    job_report,
)
from .server import Garbage, HostileServer, Script, Task, serve
from .strategies import HANG_SECONDS, SETTINGS, hostile_client, proxy_scripts, scripts

# Hypothesis wraps the tests, so the suite's hook does not see coroutines: mark them for anyio here.
pytestmark = pytest.mark.anyio


@dataclass
class Trial:
    """What one call did."""

    job: Any = None
    result: Any = None
    error: BaseException | None = None
    finished: bool = False


#: A call, given the client, the trial to note its job in, and a tag that makes its job unique.
Call = Callable[[mjasync.Client, Trial, str], Awaitable[Any]]


def _keep(trial: Trial, job: Any) -> Any:
    trial.job = job
    return job


async def _await_via(via: WaitVia, mj: mjasync.Client, trial: Trial, tag: str) -> Any:
    job = _keep(trial, mj.imagine(f"hostile lone imagine {tag}", server_wait=1))
    return await job.result(via=via)


async def _stream(mj: mjasync.Client, trial: Trial, tag: str) -> Any:
    job = _keep(trial, mj.imagine(f"hostile lone stream {tag}"))
    async with job.stream() as updates:
        async for _ in updates:
            pass
    return updates.final


async def _submit_wait(mj: mjasync.Client, trial: Trial, tag: str) -> Any:
    job = _keep(trial, mj.imagine(f"hostile lone submit {tag}"))
    handle = await job.submit()
    return await handle.wait()


def _proxy_parent(tag: str) -> tuple[str, str]:
    """A proxy task id (16 digits) and job hash for `tag`: the server never issued them, and takes them."""
    number = zlib.crc32(tag.encode())
    return str(1720000000000000 + number), str(uuid.UUID(int=number))


def _image(mj: mjasync.Client, tag: str) -> str:
    """What a follow-up acts on: an image id at AceData, a task id at GoAPI, `<task id>:<job hash>` at
    the proxy (its `follow_up_id`)."""
    if mj.provider == "midjourney-proxy":
        return ":".join(_proxy_parent(tag))
    return f"origin-task-{tag}" if mj.provider == "goapi" else f"12341971970679{tag}"


async def _upscale(mj: mjasync.Client, trial: Trial, tag: str) -> Any:
    return await _keep(trial, mj.upscale(_image(mj, tag), 2)).result(via="poll")


async def _unknown_task(mj: mjasync.Client, trial: Trial, tag: str) -> Any:
    return await mj.task("7489df4c-ef03-4de0-b598-e9a590793434").wait()


CALLS: dict[str, Call] = {
    "await-stream": lambda mj, t, tag: _await_via("stream", mj, t, tag),
    "await-poll": lambda mj, t, tag: _await_via("poll", mj, t, tag),
    "stream": _stream,
    "submit-wait": _submit_wait,
    "upscale": _upscale,
    "unknown-task": _unknown_task,
    "describe": lambda mj, t, tag: mj.describe(f"https://cdn.example.invalid/{tag}.png"),
    "seed": lambda mj, t, tag: mj.seed(_image(mj, tag)),
}


def _mask() -> bytes:
    from PIL import Image

    image = Image.new("L", (64, 64), 0)
    image.paste(255, (16, 16, 48, 48))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _served(mj: mjasync.Client, tag: str, name: str = "image") -> str:
    """An image URL on the hostile server itself (the proxy's client fetches images to send them)."""
    return f"{mj.base_url.rstrip('/')}/img/{name}-{tag}.png"


#: The calls a midjourney-proxy client makes (seed and translate it refuses before sending; edits and
#: videos it lacks): the common ones, and its buttons, `/submit/change`, the MODAL two-step and blend.
PROXY_CALLS: dict[str, Call] = {
    # Not "await-stream": on the proxy a stream is polling, as "await-poll" and "stream" already are.
    **{name: call for name, call in CALLS.items() if name not in ("describe", "seed", "await-stream")},
    "describe": lambda mj, t, tag: mj.describe(_served(mj, tag)),
    "shorten": lambda mj, t, tag: mj.shorten(f"a very very long prompt about a cat on a table {tag}"),
    "blend": lambda mj, t, tag: _keep(
        t, mj.blend([_served(mj, tag, "left"), _served(mj, tag, "right")])
    ).result(via="poll"),
    "image-prompt": lambda mj, t, tag: _keep(
        t, mj.imagine(f"hostile lone image prompt {tag}", image_urls=[_served(mj, tag, "prompt")])
    ).result(via="poll"),
    "upscale-change": lambda mj, t, tag: _keep(t, mj.upscale(_proxy_parent(tag)[0], 3)).result(via="poll"),
    "zoom-out": lambda mj, t, tag: _keep(t, mj.zoom_out(_image(mj, tag), 2)).result(via="stream"),
    "variation-region": lambda mj, t, tag: _keep(
        t, mj.variation_region(_image(mj, tag), _mask(), f"a hostile patch {tag}")
    ).result(via="poll"),
    "record": lambda mj, t, tag: mj.retrieve_task("1720001234567999"),
}
PROXY_CALLS["unknown-task"] = lambda mj, t, tag: mj.task("1720001234567999").wait()

ACEDATA_ONLY: dict[str, Call] = {
    "await-sync": lambda mj, t, tag: _await_via("sync", mj, t, tag),
    "edits": lambda mj, t, tag: _keep(
        t, mj.edits(f"https://cdn.example.invalid/{tag}.png", "hostile edit")
    ).result(via="poll"),
    "videos": lambda mj, t, tag: _keep(
        t, mj.videos(f"https://cdn.example.invalid/{tag}.png", "hostile video")
    ).result(via="stream"),
    "translate": lambda mj, t, tag: mj.translate(f"精致，无暇，洁白的天使 {tag}"),
    "shorten": lambda mj, t, tag: mj.shorten(
        f"a very very long prompt about a cat on a table in the sun {tag}"
    ),
    "record": lambda mj, t, tag: mj.retrieve_task("7489df4c-ef03-4de0-b598-e9a590793434"),
}


async def attempt(
    server: HostileServer, mj: mjasync.Client, call: Call, cancel_after: int | None, tag: str = "0"
) -> Trial:
    """Make the call; the caller cancels it once the server has seen `cancel_after` more requests."""
    start = server.requests
    trial = Trial()

    async def cancel_when_reached(scope: anyio.CancelScope) -> None:
        assert cancel_after is not None
        await server.wait_requests(start + cancel_after)
        scope.cancel()

    async with anyio.create_task_group() as group:
        if cancel_after is not None:
            group.start_soon(cancel_when_reached, group.cancel_scope)
        try:
            trial.result = await call(mj, trial, tag)
        except Exception as error:  # every type, to check that only MJErrors escape
            trial.error = error
        trial.finished = True
        group.cancel_scope.cancel()
    return trial


def assert_reported(tasks: list[Task], trial: Trial) -> None:
    """Each task the server made for this (lone) call is in its result, its error, or its job's report."""
    for task in tasks:
        if trial.result is not None and getattr(trial.result, "task_id", None) == task.task_id:
            continue
        if trial.error is not None and getattr(trial.error, "task_id", None) == task.task_id:
            continue
        if trial.error is None and trial.finished:
            pytest.fail(f"task {task.task_id} was made, and the call's result names {trial.result!r}")
        if trial.job is not None:
            task_id, sent_at = job_report(trial.job)
            if task_id == task.task_id:
                continue
            # Cancelled, out of time, or told it cannot tell: the id was never learned, the send is noted.
            unsure = not trial.finished or isinstance(
                trial.error, mjasync.AmbiguousSubmitError | mjasync.WaitTimeoutError
            )
            assert unsure and task_id is None and sent_at is not None, (
                f"task {task.task_id} was made for the job, which reports task_id={task_id!r}, "
                f"sent_at={sent_at!r} after {'cancellation' if not trial.finished else repr(trial.error)}"
            )
            continue
        if not trial.finished:
            continue  # a cancelled one-shot call (describe, seed) has no handle to report on
        assert isinstance(trial.error, mjasync.AmbiguousSubmitError), (
            f"task {task.task_id} was made, and the error does not name it: {trial.error!r}"
        )


def assert_failed_is_no_success(server: HostileServer, trial: Trial) -> None:
    """A task the server ended as failed (FAILURE "100%", CANCEL) is never the call's success."""
    for task in server.created:
        if task.state == "failed" and getattr(trial.result, "task_id", None) == task.task_id:
            pytest.fail(f"task {task.task_id} failed at the server, and the call returned {trial.result!r}")


def calls_for(provider: str) -> dict[str, Call]:
    if provider == "midjourney-proxy":
        return PROXY_CALLS
    return {**CALLS, **ACEDATA_ONLY} if provider == "acedata" else CALLS


async def check_call(provider: str, call_name: str, script: Script, cancel_after: int | None) -> None:
    calls = calls_for(provider)
    # A copy: the server pops moves off the script's lists, and an `@example` script is shared by every
    # parametrized call (without it, only the first call would meet its hostility).
    script = copy.deepcopy(script)
    with capture_logs() as logs:
        async with serve(provider, script) as server:  # type: ignore[arg-type]
            try:
                with anyio.fail_after(HANG_SECONDS):
                    async with hostile_client(server) as mj:
                        trial = await attempt(server, mj, calls[call_name], cancel_after)
            except TimeoutError:
                pytest.fail(
                    f"{call_name} on {provider} did not end within {HANG_SECONDS} s (paths {server.paths})"
                )
    assert_only_mj_error(trial.error)
    if trial.error is not None:
        assert_no_secret_in_error(trial.error)
    logs.assert_no_secret()
    assert_one_task_per_job(server)
    assert_reported(server.created, trial)
    assert_failed_is_no_success(server, trial)


cancel_points = st.none() | st.integers(1, 6)

#: Run on every call whatever hypothesis draws: an undecodable 200 for a created task (5,000 deep),
#: an answer that drips, and a stream that never ends while lookups say "running" forever.
HOSTILE_EXAMPLES = (
    Script(submits=["garbage-after"], garbage=Garbage("deep")),
    Script(submits=["drip-after"]),
    Script(waits=["endless"], lookups=["running"] * 40, shorts=["drip"]),
)


#: The proxy's: the same two submits, then lookups "running" for ever behind an image host that drips
#: (each image is fetched within `Timeouts.total`).
PROXY_EXAMPLES = (
    *HOSTILE_EXAMPLES[:2],
    Script(lookups=["running"] * 40, shorts=["drip"]),
)


def with_hostile_examples(
    test: Callable[..., Any], examples: tuple[Script, ...] = HOSTILE_EXAMPLES
) -> Callable[..., Any]:
    for script in examples:
        test = example(script=script, cancel_after=None)(test)
    return test


@pytest.mark.parametrize("call_name", sorted({**CALLS, **ACEDATA_ONLY}))
@SETTINGS
@with_hostile_examples
@given(script=scripts, cancel_after=cancel_points)
async def test_acedata_call_keeps_the_promises(
    call_name: str, script: Script, cancel_after: int | None
) -> None:
    await check_call("acedata", call_name, script, cancel_after)


@pytest.mark.parametrize("call_name", sorted(CALLS))
@SETTINGS
@with_hostile_examples
@given(script=scripts, cancel_after=cancel_points)
async def test_goapi_call_keeps_the_promises(
    call_name: str, script: Script, cancel_after: int | None
) -> None:
    await check_call("goapi", call_name, script, cancel_after)


@pytest.mark.parametrize("call_name", sorted(PROXY_CALLS))
@settings(SETTINGS, max_examples=4)
@partial(with_hostile_examples, examples=PROXY_EXAMPLES)
@given(script=proxy_scripts, cancel_after=cancel_points)
async def test_proxy_call_keeps_the_promises(
    call_name: str, script: Script, cancel_after: int | None
) -> None:
    await check_call("midjourney-proxy", call_name, script, cancel_after)
