"""The client on the midjourney-proxy protocol, end to end against the emulator's `/mj` side.

Imagine, follow-ups through the result's buttons, progress by polling or by notifyHook callbacks, a
banned word, a full queue (code 23) retried like a 429, `mode=` prefixes, and what the proxy lacks
refused before anything is sent. Image prompts, the MODAL step, lost submits, webhooks, the batch CLI
and `run_many` have their own `test_proxy_*` files.
"""

from __future__ import annotations

import pytest

import mjasync
from mjasync.emulator import Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL

PROVIDER = "midjourney-proxy"


def proxy_client(emulator: Emulator, **options: object) -> mjasync.Client:
    return mjasync.Client(
        api_key=EMULATOR_TOKEN,
        base_url=emulator.url,
        provider=PROVIDER,
        poll=FAST_POLL,
        **options,  # type: ignore[arg-type]
    )


async def test_imagine_then_follow_ups_through_the_buttons() -> None:
    async with Emulator(speed=0.05) as emulator, proxy_client(emulator) as mj:
        grid = await mj.imagine("a red fox in snow")
        assert {"upscale1", "variation4", "reroll"} <= set(grid.actions)
        upscaled = await mj.upscale(grid, 2)
        zoomed = await mj.zoom_out(upscaled, 2)
        assert grid.raw is not None and grid.raw["status"] == "SUCCESS"  # the Task object, whole
        assert upscaled.image_url and zoomed.image_url
        paths = [r.path for r in emulator.requests if r.path.startswith("/mj/submit/")]
        assert paths == ["/mj/submit/imagine", "/mj/submit/action", "/mj/submit/action"]
        assert emulator.tasks_per_prompt == {"a red fox in snow": 1, "": 2}


async def test_progress_by_polling_rises_to_the_final_result() -> None:
    async with Emulator(speed=0.3) as emulator, proxy_client(emulator) as mj:
        async with mj.imagine("a paper crane").stream() as updates:
            progress = [update.progress async for update in updates]
        assert progress == sorted(progress) and progress[-1] == 100.0
        assert updates.final.image_url


async def test_notify_hook_callbacks_resolve_jobs_without_lookups() -> None:
    async with Emulator(speed=0.3) as emulator:
        receiver = mjasync.WebhookReceiver()
        async with receiver.serve(host="127.0.0.1", port=0), proxy_client(emulator, webhooks=receiver) as mj:
            boat = await mj.imagine("a paper boat")
            async with mj.imagine("a paper plane").stream() as updates:
                progress = [update.progress async for update in updates]
            assert boat.image_url and progress[-1] == 100.0
            assert mj.statistics().lookups == 0
        assert receiver.statistics().delivered >= 2


async def test_a_banned_word_is_a_moderation_error_and_makes_no_task() -> None:
    async with Emulator(speed=0.0) as emulator, proxy_client(emulator) as mj:
        with pytest.raises(mjasync.ModerationError):
            await mj.imagine("something gore-y")
        assert emulator.counters.get("submits", 0) == 0


async def test_a_full_queue_is_refused_and_retried_like_a_429() -> None:
    """Code 23 made no task: the job waits and goes again, and every job ends with one task."""
    async with (
        Emulator(speed=0.2, concurrency_limit=1, proxy_queue_size=1) as emulator,
        proxy_client(emulator, limits=mjasync.Limits(max_in_flight=6)) as mj,
    ):
        prompts = [f"a queued lantern {i}" for i in range(6)]
        async with mj.run_many((mj.imagine(p) for p in prompts), via="poll") as outcomes:
            ended = [outcome async for outcome in outcomes]
        assert all(outcome.ok for outcome in ended), [o.error for o in ended]
        assert emulator.tasks_per_prompt == dict.fromkeys(prompts, 1)
        assert emulator.counters.get("queue_rejections", 0) >= 1


async def test_what_the_proxy_lacks_is_refused_before_sending() -> None:
    async with Emulator(speed=0.0) as emulator, proxy_client(emulator) as mj:
        with pytest.raises(mjasync.UnsupportedFeatureError):
            mj.videos("https://example.invalid/a.png")
        assert emulator.requests == []


@pytest.mark.parametrize(
    ("mode", "prefix"),
    [("fast", "/mj-fast/mj"), ("relax", "/mj-relax/mj"), ("turbo", "/mj-turbo/mj"), (None, "/mj")],
)
async def test_mode_picks_the_gateways_prefix(mode: str | None, prefix: str) -> None:
    """`mode=` sends the submit under TA's `/mj-fast|relax|turbo/mj/...`; follow-ups take their own mode."""
    async with Emulator(speed=0.05) as emulator, proxy_client(emulator) as mj:
        grid = await mj.imagine("a tin robot", mode=mode)  # type: ignore[arg-type]
        upscaled = await mj.upscale(grid, 1)
        assert upscaled.image_url
        submits = [r.path for r in emulator.requests if "/submit/" in r.path]
        assert submits == [f"{prefix}/submit/imagine", "/mj/submit/action"]
