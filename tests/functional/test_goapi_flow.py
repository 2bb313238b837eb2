"""Seed 003's GoAPI flow, run by `Client(provider="goapi")` against the emulator's `/mj/v2/*` over real sockets."""

from __future__ import annotations

import base64
import io
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web
from PIL import Image

import mjasync
from mjasync.emulator import Emulator, ImageSizes, ManualClock

from ..conftest import FAST_POLL, open_connections
from ..helpers import encoded, mask_image, serving, until

SEED_PROMPT = "Lamborghini speeds inside a volcano"
#: The key the emulator accepts here: distinctive, so a leak is easy to spot anywhere.
KEY = "goapi-key-7f3a9c51e2"
WRONG_KEY = "goapi-wrong-key-0d4b88"
SIZES = ImageSizes(grid=128, upscale=96, max_side=512)
GOAPI_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "goapi"
#: Fast polling with a short deadline, so a job that never ends fails a test instead of hanging it.
POLL = msgspec.structs.replace(FAST_POLL, deadline=15.0)

#: A grid's actions as GoAPI lists them (goapi-api.md §2.3); the neutral names are the same.
GRID_ACTIONS = [
    "reroll", "upscale1", "upscale2", "upscale3", "upscale4",
    "variation1", "variation2", "variation3", "variation4",
]  # fmt: skip
#: What the emulator's upscaled (non-square) image offers, in GoAPI's names ...
GOAPI_UPSCALED_ACTIONS = [
    "high_variation", "low_variation", "inpaint", "upscale_2x", "upscale_4x",
    "outpaint_1.5x", "outpaint_2x", "outpaint_custom", "outpaint_1x",
    "pan_up", "pan_down", "pan_left", "pan_right",
]  # fmt: skip
#: ... and as the client shows them.
NEUTRAL_UPSCALED_ACTIONS = [
    "variation_strong", "variation_subtle", "variation_region", "upscale_2x", "upscale_4x",
    "zoom_out_1_5x", "zoom_out_2x", "outpaint_custom", "outpaint_1x",
    "pan_up", "pan_down", "pan_left", "pan_right",
]  # fmt: skip
FETCHES = ("/mj/v2/fetch", "/mj/v2/multi_fetch")


# --- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
async def emu(anyio_backend: object) -> AsyncIterator[Emulator]:
    """An emulator at speed 0 (jobs finish at once) with small images, accepting only `KEY`."""
    async with Emulator(host="127.0.0.1", port=0, speed=0.0, tokens=(KEY,), image_sizes=SIZES) as emulator:
        yield emulator


@asynccontextmanager
async def goapi_client(
    emulator: Emulator, *, key: str = KEY, poll: mjasync.PollPolicy = POLL, **options: Any
) -> AsyncIterator[mjasync.Client]:
    """A GoAPI client on *emulator*; on the way out, no connection may still be checked out."""
    async with mjasync.Client(
        provider="goapi", api_key=key, base_url=emulator.url, poll=poll, **options
    ) as client:
        yield client
        assert open_connections(client) == 0, "a test left a connection checked out"


@pytest.fixture
async def goapi(emu: Emulator) -> AsyncIterator[mjasync.Client]:
    async with goapi_client(emu) as client:
        yield client


def submits(emulator: Emulator) -> list[tuple[str, dict[str, Any] | None]]:
    """(path, body) of every request except task lookups, in order."""
    return [(r.path, r.json) for r in emulator.requests if r.path not in FETCHES]


def lookups(emulator: Emulator) -> list[tuple[str, dict[str, Any] | None]]:
    """(path, body) of every fetch and multi_fetch, in order."""
    return [(r.path, r.json) for r in emulator.requests if r.path in FETCHES]


def png_size(data: bytes) -> tuple[int, int]:
    """The size of PNG *data* (and a check that it is one)."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def expected_size(aspect: float, long_side: int) -> tuple[int, int]:
    """The emulator's size for an image of *aspect* whose longest side is *long_side* (even sides)."""
    if aspect >= 1:
        width, height = float(long_side), long_side / aspect
    else:
        width, height = long_side * aspect, float(long_side)
    return max(2, 2 * round(width / 2)), max(2, 2 * round(height / 2))


def mask_png() -> bytes:
    """A black 64x64 PNG mask whose white square is the area to repaint."""
    return encoded(mask_image((64, 64), (16, 16, 40, 40)))


def leaks(emulator: Emulator, secret: str) -> list[str]:
    """Where the emulator's request log holds *secret* or a credential header (should be nowhere)."""
    found = []
    for r in emulator.requests:
        names = {name.lower() for name in r.headers}
        if names & {"x-api-key", "authorization"}:
            found.append(f"{r.path}: credential header recorded")
        if secret in repr(r) or secret in json.dumps(r.json) or any(secret in v for v in r.headers.values()):
            found.append(f"{r.path}: the key itself recorded")
    return found


@asynccontextmanager
async def stepping(emulator: Emulator, clock: ManualClock, step: float = 0.1) -> AsyncIterator[None]:
    """Move *clock* on by *step* each time a task lookup has been answered, lock-step with polling.

    Every clock value is seen by at least one fetch before the next step, so each phase of a job (on a
    phase grid coarser than *step*) is observed exactly as the emulator plans it, whatever the machine's
    speed.
    """

    def answered() -> int:
        return sum(1 for r in emulator.requests if r.path in FETCHES and r.status is not None)

    async def drive() -> None:
        while True:
            seen = answered()
            await until(lambda: answered() > seen, seconds=60)  # noqa: B023 - called before `seen` moves on
            clock.advance(step)

    async with anyio.create_task_group() as group:
        group.start_soon(drive)
        yield
        group.cancel_scope.cancel()


# --- the seed flow, awaited ---------------------------------------------------------------------------


async def test_seed_flow_awaited_sends_goapi_bodies_and_reads_back_neutral_results(
    goapi: mjasync.Client, emu: Emulator
) -> None:
    """imagine -> upscale -> variation (index, strong, subtle) -> reroll -> inpaint -> outpaint -> pan ->
    describe -> blend -> seed, each awaited: the exact `/mj/v2/*` bodies, neutral actions, raw task objects."""
    mask = mask_png()
    grid = await goapi.imagine(SEED_PROMPT, mode="fast", aspect_ratio="16:9")
    upscaled = await goapi.upscale(grid, 2)
    varied = await goapi.variation(grid, 3)
    strong = await goapi.variation_strong(upscaled)
    subtle = await goapi.variation_subtle(upscaled)
    rerolled = await goapi.reroll(grid)
    repainted = await goapi.variation_region(upscaled, mask, "a red sports car")
    zoomed = await goapi.zoom_out(upscaled, 2)
    zoomed_less = await goapi.zoom_out(upscaled, 1.5)
    panned = await goapi.pan(upscaled, "left")
    bigger = await goapi.upscale_2x(upscaled)
    assert grid.image_url is not None and upscaled.image_url is not None
    described = await goapi.describe(grid.image_url)
    blended = await goapi.blend([grid.image_url, upscaled.image_url], dimension="portrait")
    seeded = await goapi.seed(grid)

    g, u = grid.task_id, upscaled.task_id
    assert submits(emu) == [
        (
            "/mj/v2/imagine",
            {"prompt": f"{SEED_PROMPT} --ar 16:9", "process_mode": "fast", "aspect_ratio": "16:9"},
        ),
        ("/mj/v2/upscale", {"origin_task_id": g, "index": "2"}),
        ("/mj/v2/variation", {"origin_task_id": g, "index": "3"}),
        ("/mj/v2/variation", {"origin_task_id": u, "index": "high_variation"}),
        ("/mj/v2/variation", {"origin_task_id": u, "index": "low_variation"}),
        ("/mj/v2/reroll", {"origin_task_id": g}),
        (
            "/mj/v2/inpaint",
            {"origin_task_id": u, "prompt": "a red sports car", "mask": base64.b64encode(mask).decode()},
        ),
        ("/mj/v2/outpaint", {"origin_task_id": u, "zoom_ratio": "2"}),
        ("/mj/v2/outpaint", {"origin_task_id": u, "zoom_ratio": "1.5"}),
        ("/mj/v2/pan", {"origin_task_id": u, "direction": "left"}),
        ("/mj/v2/upscale", {"origin_task_id": u, "index": "2x"}),
        ("/mj/v2/describe", {"image_url": grid.image_url}),
        ("/mj/v2/blend", {"image_urls": [grid.image_url, upscaled.image_url], "dimension": "portrait"}),
        ("/mj/v2/seed", {"task_id": g}),
    ]
    assert all(r.status == 200 for r in emu.requests)
    # Every job was read back through fetch, by the task id its submit answered.
    results = [grid, upscaled, varied, strong, subtle, rerolled, repainted, zoomed, zoomed_less, panned]
    results += [bigger, described, blended, seeded]
    task_ids = [r.task_id for r in results]
    assert len(set(task_ids)) == len(task_ids) and all(task_ids)
    fetched = {body["task_id"] for path, body in lookups(emu) if path == "/mj/v2/fetch" and body}
    assert fetched == set(task_ids)

    # Neutral actions on the results; GoAPI's own names stay in `raw`.
    assert grid.actions == GRID_ACTIONS
    assert upscaled.actions == NEUTRAL_UPSCALED_ACTIONS
    assert upscaled.raw is not None and upscaled.raw["task_result"]["actions"] == GOAPI_UPSCALED_ACTIONS
    assert bigger.actions == [] and bigger.is_final
    grids = {
        "upscaled": (upscaled, "upscale", g),
        "varied": (varied, "variation", g),
        "strong": (strong, "variation", u),
        "subtle": (subtle, "variation", u),
        "rerolled": (rerolled, "reroll", g),
        "repainted": (repainted, "inpaint", u),
        "zoomed": (zoomed, "outpaint", u),
        "zoomed_less": (zoomed_less, "outpaint", u),
        "panned": (panned, "pan", u),
        "bigger": (bigger, "upscale", u),
        "blended": (blended, "blend", ""),
    }
    for name, (result, task_type, origin) in grids.items():
        assert result.is_final and result.finished is True and result.progress == 100, name
        assert result.raw is not None and result.raw["status"] == "finished", name
        assert result.raw["meta"]["task_type"] == task_type, name
        assert result.raw["meta"]["origin_task_id"] == origin, name
        if task_type not in ("upscale", "blend"):
            assert result.actions == GRID_ACTIONS, name
    # Follow-ups inherit the parent's mode: none of them sent process_mode.
    assert all(r.raw is not None and r.raw["meta"]["process_mode"] == "fast" for r in [grid, *results[1:11]])

    # The whole task object is kept: fields the neutral result has no slot for are still there.
    raw = grid.raw
    assert raw is not None and raw["status"] == "finished" and raw["task_id"] == g
    assert raw["task_result"]["discord_image_url"] == grid.image_url
    assert raw["task_result"]["quota_used"] == 9  # fast imagine (goapi-api.md §5)
    assert raw["meta"]["task_type"] == "imagine" and raw["meta"]["task_request"]["aspect_ratio"] == "16:9"
    assert grid.sub_image_urls == raw["task_result"]["image_urls"] and len(grid.sub_image_urls or []) == 4
    assert grid.image_id == raw["task_result"]["image_id"] and grid.progress == 100
    assert goapi.follow_up_id(grid) == g

    assert isinstance(described, mjasync.types.DescribeResult) and described.is_final
    assert len(described.descriptions) == 4
    assert all(d and d[0] not in "1234" and "\u20e3" not in d for d in described.descriptions)
    assert described.raw is not None and "1\ufe0f\u20e3" in described.raw["task_result"]["message"]
    assert isinstance(seeded, mjasync.types.SeedResult) and seeded.is_final and str(seeded.seed).isdigit()
    assert seeded.raw is not None and seeded.raw["meta"]["origin_task_id"] == g
    assert leaks(emu, KEY) == []


async def test_results_download_as_pngs_of_the_result_size(goapi: mjasync.Client) -> None:
    """Grid, quadrants, previews, upscales and a portrait blend download as PNGs of the sizes they stand for."""
    grid = await goapi.imagine(SEED_PROMPT, aspect_ratio="16:9")
    upscaled = await goapi.upscale(grid, 1)
    bigger = await goapi.upscale_2x(upscaled)
    assert grid.image_url and upscaled.image_url and bigger.image_url and grid.sub_image_urls
    blended = await goapi.blend([grid.image_url, upscaled.image_url], dimension="portrait")
    assert blended.image_url and grid.raw is not None

    assert png_size(await goapi.download(grid.image_url)) == expected_size(16 / 9, SIZES.grid)
    quadrant = expected_size(16 / 9, SIZES.grid)
    for url in grid.sub_image_urls:
        assert png_size(await goapi.download(url)) == (quadrant[0] // 2, quadrant[1] // 2)
    previews = grid.raw["task_result"]["intermediate_image_urls"]
    assert len(previews) == 4
    preview = round(SIZES.grid * SIZES.progress_scale)
    assert png_size(await goapi.download(previews[0])) == expected_size(16 / 9, preview)
    assert png_size(await goapi.download(upscaled.image_url)) == expected_size(16 / 9, SIZES.upscale)
    assert png_size(await goapi.download(bigger.image_url)) == expected_size(16 / 9, 2 * SIZES.upscale)
    assert png_size(await goapi.download(blended.image_url)) == expected_size(2 / 3, SIZES.grid)


async def test_inpaint_takes_the_seeds_own_webp_mask(goapi: mjasync.Client, emu: Emulator) -> None:
    """Seed 003's inpaint example mask (base64 WebP) goes to /mj/v2/inpaint unchanged, and the job runs."""
    example = json.loads((GOAPI_FIXTURES / "seed003_inpaint_request.json").read_text())
    upscaled = await goapi.upscale(await goapi.imagine("a room with a wall"), 4)
    repainted = await goapi.variation_region(upscaled, example["mask"], example["prompt"])
    assert repainted.is_final and repainted.actions == GRID_ACTIONS
    assert submits(emu)[-1] == (
        "/mj/v2/inpaint",
        {"origin_task_id": upscaled.task_id, "prompt": "mirror", "mask": example["mask"]},
    )


async def test_actions_beyond_the_named_calls(goapi: mjasync.Client, emu: Emulator) -> None:
    """Make Square (outpaint_1x) works through `act`; outpaint_custom (no zoom value to send) and an action
    the result does not offer are refused before anything is sent."""
    upscaled = await goapi.upscale(await goapi.imagine(SEED_PROMPT, aspect_ratio="3:2"), 3)
    squared = await goapi.act(upscaled, "outpaint_1x")
    assert squared.is_final and squared.actions == GRID_ACTIONS
    assert submits(emu)[-1] == ("/mj/v2/outpaint", {"origin_task_id": upscaled.task_id, "zoom_ratio": "1"})
    assert squared.raw is not None
    assert squared.raw["meta"]["task_param"]["zoom_ratio"] == "1"

    sent = len(emu.requests)
    with pytest.raises(mjasync.UnsupportedFeatureError, match="outpaint_custom"):
        goapi.act(upscaled, "outpaint_custom")
    with pytest.raises(mjasync.ActionNotAvailableError) as caught:
        goapi.upscale_2x(squared)  # a grid: upscale_2x is for upscaled images
    assert caught.value.available == sorted(GRID_ACTIONS)
    assert len(emu.requests) == sent


# --- the seed flow, iterated --------------------------------------------------------------------------


async def test_seed_flow_streamed_shows_rising_progress_with_previews() -> None:
    """Each job of the flow iterated: polled updates with rising task_progress and preview images, then
    the final result (the only one with `is_final`), on a clock that moves one step per lookup."""
    clock = ManualClock()
    poll = mjasync.PollPolicy(
        initial_interval=0.005, factor=1.5, max_interval=0.02, batch_window=0.0, deadline=15.0
    )
    options: dict[str, Any] = {"speed": 1.0, "queue_fraction": 0.2, "clock": clock, "tokens": (KEY,)}
    async with (
        Emulator(host="127.0.0.1", port=0, image_sizes=SIZES, **options) as emu,
        goapi_client(emu, poll=poll) as mj,
        stepping(emu, clock),
    ):

        async def streamed(job: mjasync.types.ImagineJob, name: str) -> list[mjasync.ImagineResult]:
            async with job.stream() as updates:
                seen = [u async for u in updates]
            assert seen, name
            assert updates.final is seen[-1] and updates.task_id == seen[-1].task_id, name
            assert [u.is_final for u in seen] == [False] * (len(seen) - 1) + [True], name
            assert len({u.task_id for u in seen}) == 1, name
            progress = [u.progress for u in seen]
            assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(progress))
            final = seen[-1]
            assert final.progress == 100 and final.finished is True and final.actions, name
            assert final.raw is not None and final.raw["status"] == "finished", name
            for update in seen[:-1]:
                assert update.finished is False and update.actions == [] and update.image_id is None, name
                assert update.raw is not None and update.raw["status"] == "processing", name
                assert update.raw["task_result"]["task_progress"] == update.progress, name
            return seen

        def check_previews(seen: list[mjasync.ImagineResult], name: str) -> None:
            # A grid is painted in four steps, each with a new preview image.
            assert len(seen) >= 3, name
            assert [u.progress for u in seen] == [20, 40, 60, 80, 100], name
            previews = [u.image_url for u in seen[:-1]]
            assert all(previews) and len(set(previews)) == len(previews), name
            for i, update in enumerate(seen[:-1]):
                assert update.raw is not None
                assert update.raw["task_result"]["intermediate_image_urls"] == previews[: i + 1], name
            assert seen[-1].image_url not in previews, name

        grid_steps = await streamed(mj.imagine(SEED_PROMPT, mode="relax", aspect_ratio="16:9"), "imagine")
        check_previews(grid_steps, "imagine")
        grid = grid_steps[-1]
        assert grid.actions == GRID_ACTIONS
        first_preview = grid_steps[0].image_url
        assert first_preview is not None
        preview_side = round(SIZES.grid * SIZES.progress_scale)
        assert png_size(await mj.download(first_preview)) == expected_size(16 / 9, preview_side)

        upscale_steps = await streamed(mj.upscale(grid, 2), "upscale")
        # An upscale just appears: one processing step without a preview, then the image.
        assert [u.progress for u in upscale_steps] == [50, 100]
        assert upscale_steps[0].image_url is None
        upscaled = upscale_steps[-1]
        assert upscaled.actions == NEUTRAL_UPSCALED_ACTIONS

        jobs = {
            "variation": mj.variation(grid, 3),
            "variation_strong": mj.variation_strong(upscaled),
            "variation_subtle": mj.variation_subtle(upscaled),
            "reroll": mj.reroll(grid),
            "inpaint": mj.variation_region(upscaled, mask_png(), "a red sports car"),
            "outpaint": mj.zoom_out(upscaled, 2),
            "pan": mj.pan(upscaled, "left"),
        }
        for name, job in jobs.items():
            check_previews(await streamed(job, name), name)
        assert grid.image_url and upscaled.image_url
        check_previews(await streamed(mj.blend([grid.image_url, upscaled.image_url]), "blend"), "blend")
        # describe and seed are calls, not jobs: awaited, they poll the same way.
        described = await mj.describe(grid.image_url)
        seeded = await mj.seed(grid)
        assert len(described.descriptions) == 4 and seeded.is_final

        paths = [path for path, _ in submits(emu)]
        assert paths == [
            "/mj/v2/imagine", "/mj/v2/upscale", "/mj/v2/variation", "/mj/v2/variation",
            "/mj/v2/variation", "/mj/v2/reroll", "/mj/v2/inpaint", "/mj/v2/outpaint", "/mj/v2/pan",
            "/mj/v2/blend", "/mj/v2/describe", "/mj/v2/seed",
        ]  # fmt: skip
        assert emu.counters["submits"] == len(paths), "each job was submitted once, then followed by fetch"
        assert leaks(emu, KEY) == []


async def test_async_for_directly_on_a_job_polls_to_the_final_result() -> None:
    """`async for` on a job follows it too, on a real clock (speed > 0), ending with the final result."""
    async with (
        Emulator(host="127.0.0.1", port=0, speed=0.6, tokens=(KEY,), image_sizes=SIZES) as emu,
        goapi_client(emu) as mj,
    ):
        updates = [u async for u in mj.imagine("a cat sitting on a table")]
    assert len(updates) >= 2 and updates[-1].is_final and not any(u.is_final for u in updates[:-1])
    progress = [u.progress or 0 for u in updates]
    assert all(a < b for a, b in itertools.pairwise(progress)) and progress[-1] == 100


# --- many jobs ------------------------------------------------------------------------------------------


async def test_many_waiting_handles_share_multi_fetch(goapi: mjasync.Client, emu: Emulator) -> None:
    """Twenty submitted handles waited at once are looked up together with multi_fetch."""
    handles = [await goapi.imagine(f"a cat number {i}").submit() for i in range(20)]
    assert all(isinstance(h, mjasync.TaskHandle) for h in handles)
    assert [r.path for r in emu.requests] == ["/mj/v2/imagine"] * 20, "submit does not wait"
    results: dict[str, mjasync.ImagineResult] = {}

    async def wait(handle: mjasync.types.ImagineHandle) -> None:
        results[handle.task_id] = await handle

    async with anyio.create_task_group() as group:
        for handle in handles:
            group.start_soon(wait, handle)

    ids = {h.task_id for h in handles}
    assert set(results) == ids and len(ids) == 20
    assert all(r.is_final and r.task_id == task_id for task_id, r in results.items())
    found = lookups(emu)
    batches = [body for path, body in found if path == "/mj/v2/multi_fetch"]
    assert batches, "waiting handles were looked up together"
    assert all(body is not None and len(body["task_ids"]) > 1 for body in batches)
    assert set().union(*(set(body["task_ids"]) for body in batches if body)) == ids
    assert len(found) < len(handles)
    assert goapi.statistics().lookups == len(found) < len(handles)


# --- failures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["stream", "poll"])
async def test_banned_word_fails_the_job_with_the_providers_message(
    goapi: mjasync.Client, emu: Emulator, via: str
) -> None:
    """A banned word: the submit is accepted, the task ends `failed`, and the wait raises JobFailedError."""
    with pytest.raises(mjasync.JobFailedError) as caught:
        await goapi.imagine("a gore scene in a volcano").result(via=via)  # type: ignore[arg-type]
    error = caught.value
    assert error.message == "Banned Prompt: gore" and "Banned Prompt: gore" in str(error)
    assert error.code == "banned_prompt"
    [(path, body)] = submits(emu)
    assert path == "/mj/v2/imagine" and body == {"prompt": "a gore scene in a volcano"}
    [task_id] = {b["task_id"] for _, b in lookups(emu) if b}
    assert error.task_id == task_id
    assert error.body is not None and json.loads(error.body)["status"] == "failed"
    record = await goapi.retrieve_task(task_id)
    assert record.state == "failed" and isinstance(record.response, mjasync.types.ImagineUpdate)
    assert record.response.failed and record.response.error == "Banned Prompt: gore"


async def test_banned_word_with_skip_prompt_check_fails_with_midjourneys_text(
    goapi: mjasync.Client, emu: Emulator
) -> None:
    """skip_prompt_check goes in the body; Midjourney's own moderator then refuses the prompt."""
    handle = await goapi.imagine("a gore scene", skip_prompt_check=True).submit()
    with pytest.raises(mjasync.JobFailedError, match="AI moderators") as caught:
        await handle
    assert caught.value.code is None and caught.value.task_id == handle.task_id
    assert submits(emu) == [("/mj/v2/imagine", {"prompt": "a gore scene", "skip_prompt_check": True})]


UNSUPPORTED: dict[str, Callable[[mjasync.Client], object]] = {
    "videos": lambda mj: mj.videos("https://example.com/frame.png", "the car drives off"),
    "extend_video": lambda mj: mj.extend_video("1234567890"),
    "edits": lambda mj: mj.edits("https://example.com/cat.png", "a cat in the snow"),
    "shorten": lambda mj: mj.shorten("a very long prompt about a cat on a table"),
    "translate": lambda mj: mj.translate("精致，无暇，洁白的天使"),
    "translation": lambda mj: mj.imagine("一只猫", translation=True),
    "quality": lambda mj: mj.imagine("a cat", quality="2"),
    "moodboard": lambda mj: mj.imagine("a cat", moodboard=True),
    "blend_with_text": lambda mj: mj.blend(["https://e.com/a.png", "https://e.com/b.png"], "a bear"),
}


@pytest.mark.parametrize("case", list(UNSUPPORTED))
async def test_unsupported_features_are_refused_before_anything_is_sent(
    goapi: mjasync.Client, emu: Emulator, case: str
) -> None:
    """What GoAPI cannot do raises UnsupportedFeatureError when the job is built (or the call made)."""
    with pytest.raises(mjasync.UnsupportedFeatureError) as caught:
        made = UNSUPPORTED[case](goapi)
        assert not isinstance(made, mjasync.Job), f"{case}: a job was built instead of refused"
        assert isinstance(made, Awaitable)
        await made
    error = caught.value
    assert isinstance(error, mjasync.InvalidRequestError) and error.provider == "goapi"
    assert "goapi" in str(error) and error.feature
    assert emu.requests == [] and emu.counters["requests"] == 0


async def test_wrong_key_raises_authentication_error_that_never_shows_the_key(emu: Emulator) -> None:
    """A key the provider refuses: AuthenticationError (401) on submit, call and lookup; the key is nowhere."""
    async with goapi_client(emu, key=WRONG_KEY) as mj:
        with pytest.raises(mjasync.AuthenticationError) as on_submit:
            await mj.imagine(SEED_PROMPT)
        with pytest.raises(mjasync.AuthenticationError) as on_call:
            await mj.describe("https://example.com/cat.png")
        with pytest.raises(mjasync.AuthenticationError) as on_lookup:
            await mj.retrieve_task("807400b9-9d79-465b-8ecc-eecb7419dbbc")
    for caught, request in ((on_submit, "imagine"), (on_call, "describe"), (on_lookup, "fetch")):
        error = caught.value
        assert error.status == 401 and error.message == "The API key is incorrect"
        assert error.request == f"POST /mj/v2/{request}"
        for text in (str(error), repr(error), error.message, error.body or "", str(error.args)):
            assert WRONG_KEY not in text and KEY not in text
    assert emu.counters["tasks"] == 0
    assert [r.status for r in emu.requests] == [401, 401, 401]
    assert leaks(emu, WRONG_KEY) == []


async def test_a_key_echoed_back_in_an_error_is_scrubbed() -> None:
    """A server that quotes the X-API-KEY it got: the error's message, body, str and repr hide it."""

    async def refuse(request: web.Request) -> web.Response:
        key = request.headers.get("X-API-KEY", "")
        return web.json_response(
            {"task_id": "", "status": "failed", "message": f"key {key} is not valid"}, status=401
        )

    app = web.Application()
    app.router.add_post("/mj/v2/imagine", refuse)
    async with (
        serving(app) as port,
        mjasync.Client(provider="goapi", api_key=WRONG_KEY, base_url=f"http://127.0.0.1:{port}") as mj,
    ):
        with pytest.raises(mjasync.AuthenticationError) as caught:
            await mj.imagine("a cat")
    error = caught.value
    assert error.message.startswith("key ") and error.message.endswith(" is not valid")
    for text in (str(error), repr(error), error.message, error.body or ""):
        assert WRONG_KEY not in text


async def test_the_key_travels_as_x_api_key_and_is_never_recorded(emu: Emulator) -> None:
    """Every API request carries `X-API-KEY: <key>` (fetch too) and no Authorization; downloads carry no
    key; the emulator's log keeps neither the header nor the key."""
    sent: list[tuple[str, str, dict[str, str]]] = []

    async def on_request_start(
        session: aiohttp.ClientSession, context: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        sent.append((params.method, params.url.path, {k.lower(): v for k, v in params.headers.items()}))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        goapi_client(emu, http_session=session) as mj,
    ):
        grid = await mj.imagine(SEED_PROMPT)
        assert grid.image_url is not None
        await mj.describe(grid.image_url)
        await mj.download(grid.image_url)
    api = [(m, p, h) for m, p, h in sent if p.startswith("/mj/v2/")]
    downloads = [(m, p, h) for m, p, h in sent if p.startswith("/images/")]
    assert {p for _, p, _ in api} == {"/mj/v2/imagine", "/mj/v2/describe", "/mj/v2/fetch"}
    assert all(h.get("x-api-key") == KEY and "authorization" not in h for _, _, h in api)
    assert len(downloads) == 1 and "x-api-key" not in downloads[0][2]
    assert "authorization" not in downloads[0][2]
    assert len(emu.requests) == len(api) and all(r.status == 200 for r in emu.requests)
    assert leaks(emu, KEY) == []


# --- task records ---------------------------------------------------------------------------------------


async def test_retrieve_task_reads_the_task_object_as_a_record() -> None:
    """retrieve_task(task_id) -> TaskRecord: queued with no response, then finished with the result;
    GoAPI has no trace ids, so asking by one is refused before anything is sent."""
    clock = ManualClock()
    async with (
        Emulator(host="127.0.0.1", port=0, speed=10.0, clock=clock, tokens=(KEY,), image_sizes=SIZES) as emu,
        goapi_client(emu) as mj,
    ):
        handle = await mj.imagine(SEED_PROMPT, mode="turbo").submit()
        queued = await mj.retrieve_task(handle.task_id)
        assert queued.id == handle.task_id and queued.type == "imagine"
        assert queued.state == "pending" and queued.response is None
        assert queued.mode == "turbo" and queued.created_at == int(clock())
        assert queued.started_at is None and queued.finished_at is None
        assert queued.request == {"prompt": SEED_PROMPT, "process_mode": "turbo"}
        assert (await handle.record()).state == "pending"

        clock.advance(5.0)
        running = await handle.record()
        assert running.state == "processing" and isinstance(running.response, mjasync.types.ImagineUpdate)
        assert running.response.progress in (20, 40, 60, 80) and not running.response.is_final

        clock.advance(5.0)
        done = await mj.retrieve_task(handle.task_id)
        assert done.state == "finished" and done.mode == "turbo"
        assert isinstance(done.response, mjasync.types.ImagineUpdate) and done.response.is_final
        assert done.response.task_id == handle.task_id and done.response.actions == GRID_ACTIONS
        assert done.created_at is not None and done.started_at is not None and done.finished_at is not None
        assert done.created_at <= done.started_at <= done.finished_at
        assert done.duration == done.finished_at - done.started_at
        result = await handle
        assert result.image_id == done.response.image_id

        batch = await mj.retrieve_tasks([handle.task_id, "00000000-0000-4000-8000-000000000000"])
        assert [r.id for r in batch.items] == [handle.task_id] and batch.count == 1
        with pytest.raises(mjasync.BadRequestError, match="not found"):
            await mj.retrieve_task("00000000-0000-4000-8000-000000000000")

        sent = len(emu.requests)
        with pytest.raises(mjasync.InvalidRequestError, match="trace id"):
            await mj.retrieve_task(trace_id="a6b3c2d1-trace")
        with pytest.raises(mjasync.InvalidRequestError, match="trace id"):
            await mj.retrieve_tasks(trace_ids=["a6b3c2d1-trace"])
        assert len(emu.requests) == sent


# --- lenient decoding, end to end -------------------------------------------------------------------------


async def test_a_finished_task_without_image_id_still_ends_the_job() -> None:
    """goapi-api.md §2.3: every task_result field may be missing by plan; `finished` alone ends the job."""

    async def imagine(request: web.Request) -> web.Response:
        return web.json_response({"task_id": "t-1", "status": "success", "message": ""})

    async def fetch(request: web.Request) -> web.Response:
        task_result = {"image_url": "https://img.example.com/t-1.png", "actions": GRID_ACTIONS}
        return web.json_response({"task_id": "t-1", "status": "finished", "task_result": task_result})

    app = web.Application()
    app.router.add_post("/mj/v2/imagine", imagine)
    app.router.add_post("/mj/v2/fetch", fetch)
    async with (
        serving(app) as port,
        mjasync.Client(provider="goapi", api_key=KEY, base_url=f"http://127.0.0.1:{port}", poll=POLL) as mj,
    ):
        with anyio.fail_after(10):
            result = await mj.imagine("a cat")  # the default wait: a "stream" followed by polling
    assert result.is_final and result.image_url == "https://img.example.com/t-1.png"
