"""The MODAL two-step on the midjourney-proxy protocol, as one job, end to end against the emulator.

Vary region, custom zoom and a prompted (Remix) follow-up press their button (`submit/action`, which
makes a task waiting in status MODAL), then send `submit/modal` for that task exactly once. The job
follows the one task to its result, by polling, by stream or by notifyHook callbacks. A modal whose
answer is lost is settled by looking the task up, never by sending it again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

import mjasync
from mjasync._models.requests import ImagineRequest
from mjasync._providers import PROVIDERS
from mjasync.emulator import Emulator

from ..helpers import encoded, mask_image
from .test_proxy_images import proxy_client, submits

MASK = encoded(mask_image())
PROXY = PROVIDERS["midjourney-proxy"]


@asynccontextmanager
async def upscaled_image(
    via: str = "poll", faults: dict[str, str] | None = None, **options: Any
) -> AsyncIterator[tuple[Emulator, mjasync.Client, mjasync.ImagineResult, mjasync.ImagineResult]]:
    """An emulator, a proxy client on it (with a webhook receiver for `via="callback"`), a finished
    grid and its upscale; the emulator's records start afresh after them."""
    async with AsyncExitStack() as stack:
        emulator = await stack.enter_async_context(Emulator(speed=0.1))
        if via == "callback":
            receiver = mjasync.WebhookReceiver()
            await stack.enter_async_context(receiver.serve(host="127.0.0.1", port=0))
            options["webhooks"] = receiver
        mj = await stack.enter_async_context(proxy_client(emulator, faults, **options))
        grid = await mj.imagine("a red fox in snow").result(via="poll")
        upscaled = await mj.upscale(grid, 1).result(via="poll")
        emulator.reset_records()
        yield emulator, mj, grid, upscaled


async def finish(job: mjasync.ImagineJob, via: str) -> mjasync.ImagineResult:
    if via == "stream":
        async with job.stream() as updates:
            async for _ in updates:
                pass
        return updates.final
    return await job.result(via=via)  # type: ignore[arg-type]


def follow_up(kind: str, mj: mjasync.Client, grid: Any, upscaled: Any) -> mjasync.ImagineJob:
    if kind == "vary_region":
        return mj.variation_region(upscaled, MASK, "a red scarf")
    if kind == "zoom_custom":
        return mj.act(upscaled, "zoom_custom", prompt="a red fox in snow --zoom 1.5")
    return mj.variation(grid, 2, prompt="a red fox in a blue coat")


@pytest.mark.parametrize("via", ["poll", "stream", "callback"])
@pytest.mark.parametrize("kind", ["vary_region", "zoom_custom", "remix"])
async def test_a_modal_follow_up_is_one_task_and_one_modal_submit(kind: str, via: str) -> None:
    async with upscaled_image(via) as (emulator, mj, grid, upscaled):
        lookups = mj.statistics().lookups
        result = await finish(follow_up(kind, mj, grid, upscaled), via)
        assert result.image_url and result.raw is not None and result.raw["status"] == "SUCCESS"
        assert emulator.counters.get("tasks") == 1 and emulator.counters.get("modal_submits") == 1
        (action,) = submits(emulator, "action")
        (modal,) = submits(emulator, "modal")
        assert modal["taskId"] == result.task_id
        if kind == "vary_region":
            assert action["customId"].startswith("MJ::Inpaint::") and modal["maskBase64"]
        elif kind == "zoom_custom":
            assert action["customId"].startswith("MJ::CustomZoom::") and "--zoom 1.5" in modal["prompt"]
        else:
            assert action["enableRemix"] is True and modal["prompt"] == "a red fox in a blue coat"
        if via == "callback":
            assert mj.statistics().lookups == lookups  # the callbacks carried it all


async def test_a_lost_modal_answer_with_the_task_moved_on_is_the_result() -> None:
    """The modal went through (the emulator ran it) but its answer was a 502: the task no longer
    waits, so the job follows it, and the modal is not sent again.

    The emulator shows the task MODAL until it is SUBMITTED (a few ms at this speed): the lookup
    waits `reconcile_delay` first, as it would for a proxy still handling the step.
    """
    retry = mjasync.RetryPolicy(initial_delay=0.01, max_delay=0.05, reconcile_delay=0.1)
    faults = {"/mj/submit/modal": "502; phase=after"}
    async with upscaled_image(faults=faults, retry=retry) as (emulator, mj, _, upscaled):
        result = await mj.variation_region(upscaled, MASK, "a red scarf")
        assert result.image_url
        assert len(submits(emulator, "modal")) == 1 and emulator.counters.get("modal_submits") == 1
        assert emulator.counters.get("tasks") == 1
        assert [f.phase for f in emulator.fault_log] == ["after"]


async def test_a_lost_modal_answer_with_the_task_still_waiting_is_ambiguous() -> None:
    """The modal's answer was a 500 and the task still waits for it: it may yet arrive (a proxy may
    still be handling it), so the job ends `AmbiguousSubmitError`, naming the task, and never sends
    the modal twice."""
    async with upscaled_image(faults={"/mj/submit/modal": "500"}) as (emulator, mj, _, upscaled):
        job = mj.act(upscaled, "zoom_custom", prompt="a red fox --zoom 1.5")
        with pytest.raises(mjasync.AmbiguousSubmitError, match="still waits") as raised:
            await job
        assert raised.value.task_id == job.task_id is not None
        assert len(submits(emulator, "modal")) == 1 and emulator.counters.get("modal_submits", 0) == 0
        assert emulator.counters.get("tasks") == 1


async def test_a_full_queue_on_the_modal_is_retried_like_a_429() -> None:
    """Code 23 leaves the task waiting and made nothing: the modal goes again, and runs once."""
    async with (
        Emulator(speed=0.2, concurrency_limit=1, proxy_queue_size=1) as emulator,
        proxy_client(emulator) as mj,
        proxy_client(emulator) as other,  # the same key, another client: its own in-flight limit
    ):
        grid = await mj.imagine("a red fox in snow").result(via="poll")
        upscaled = await mj.upscale(grid, 1).result(via="poll")
        emulator.reset_records()
        # One task runs, one waits: the queue is full until the first ends.
        busy = [await other.imagine(f"a busy lantern {i}").submit() for i in (1, 2)]
        result = await mj.variation_region(upscaled, MASK, "a red scarf")
        assert all([(await handle.wait()).image_url for handle in busy])
        assert result.image_url
        assert emulator.counters.get("queue_rejections", 0) >= 1
        assert len(submits(emulator, "modal")) >= 2  # refused with 23, then sent again
        assert emulator.counters.get("modal_submits") == 1 and emulator.counters.get("tasks") == 3


@pytest.mark.parametrize("action", ["upscale1", "upscale_2x", "zoom_out_2x"])
def test_a_prompt_goes_only_with_a_follow_up_remix_opens(action: str) -> None:
    """Remix prompts variations, reroll and pan: another button would run without the prompt, and
    its modal be refused, so it is refused before anything is sent."""
    parent = "1720001234567123:9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff"
    with pytest.raises(mjasync.UnsupportedFeatureError, match="Remix"):
        PROXY.check(ImagineRequest(action=action, image_id=parent, prompt="a red fox"))
    for remixed in ("variation2", "variation_strong", "reroll", "pan_left"):
        PROXY.check(ImagineRequest(action=remixed, image_id=parent, prompt="a red fox"))
    assert PROXY.follow_up_step(ImagineRequest(action="variation2", image_id=parent), "7") is None
