"""The seeds' flows, run by the client against the emulator over real sockets."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

import mjasync

from ..helpers import ACEDATA_GRID_ACTIONS as GRID_ACTIONS
from ..helpers import ACEDATA_UPSCALED_ACTIONS as UPSCALED_ACTIONS
from ..helpers import encoded, mask_image

SEED_PROMPT = "Lamborghini speeds inside a volcano"


def png_info(source: Any) -> tuple[str | None, tuple[int, int]]:
    """(format, size) of a PNG path or bytes, closing the file."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return image.format, image.size


def submitted(emulator: Any, path: str) -> list[dict[str, Any]]:
    """Bodies of the requests the emulator received on `path`."""
    return [r.json for r in emulator.requests if r.path == path]


async def test_seed_flow_awaited(mj: mjasync.Client, mj_emulator: Any) -> None:
    """imagine → variation2 → upscale4 → zoom_out_2x → pan_left, each awaited, with the documented actions."""
    grid = await mj.imagine(SEED_PROMPT)
    assert grid.is_final and grid.actions == GRID_ACTIONS and grid.progress == 100
    variations = await mj.variation(grid, 2)
    assert variations.actions == GRID_ACTIONS and variations.image_id != grid.image_id
    upscaled = await mj.upscale(variations, 4)
    assert upscaled.actions == UPSCALED_ACTIONS
    zoomed = await mj.zoom_out(upscaled, 2)
    assert zoomed.actions == GRID_ACTIONS
    panned = await mj.pan(await mj.upscale(zoomed, 1), "left")
    assert panned.is_final

    bodies = submitted(mj_emulator, "/midjourney/imagine")
    assert [b["action"] for b in bodies] == [
        "generate",
        "variation2",
        "upscale4",
        "zoom_out_2x",
        "upscale1",
        "pan_left",
    ]
    assert bodies[0]["prompt"] == SEED_PROMPT
    assert bodies[1]["image_id"] == grid.image_id and bodies[2]["image_id"] == variations.image_id
    assert all("async" not in b for b in bodies), "the default wait is a stream, not async + polling"


async def test_seed_flow_streamed(mj: mjasync.Client) -> None:
    """Each step streamed: ≥3 updates with rising progress and changing image_id, then the final result."""
    target: mjasync.ImagineResult | None = None
    steps = ["generate", "variation2", "upscale4", "zoom_out_2x"]
    for step in steps:
        job = mj.imagine(SEED_PROMPT) if target is None else mj.act(target, step)
        async with job.stream() as updates:
            seen = [u async for u in updates]
        progress = [u.progress for u in seen]
        assert len(seen) >= 4, f"{step}: too few updates"
        assert progress == sorted(progress) and progress[-1] == 100 and progress[0] < 100
        assert len({u.image_id for u in seen}) == len(seen), "image_id changes on every line"
        assert all(u.success for u in seen), "every line says success: true, done or not"
        assert [u.is_final for u in seen] == [False] * (len(seen) - 1) + [True]
        assert all(u.actions == [] for u in seen[:-1])
        assert updates.final is seen[-1] and updates.task_id == seen[0].task_id
        target = seen[-1]
    assert target is not None and target.actions == GRID_ACTIONS


async def test_async_for_directly_on_a_job(mj: mjasync.Client) -> None:
    """`async for` on a job streams it too, ending with the final result."""
    updates = [u async for u in mj.imagine("a cat sitting on a table")]
    assert updates[-1].is_final and not updates[0].is_final


async def test_region_variation_with_mask_from_bytes_path_and_pil(
    mj: mjasync.Client, mj_emulator: Any, tmp_path: Any
) -> None:
    """variation_region sends the mask as base64, from bytes, a path or a PIL image."""
    upscaled = await mj.upscale(await mj.imagine("a cat"), 1)
    assert upscaled.image_width and upscaled.image_height
    size = (upscaled.image_width, upscaled.image_height)
    mask = mask_image(size, (0, 0, upscaled.image_width // 2, upscaled.image_height // 2))
    png = encoded(mask)
    path = tmp_path / "mask.png"
    path.write_bytes(png)

    for given in (png, path, str(path), mask):
        repainted = await mj.variation_region(upscaled, given, prompt="A cute cat")
        assert repainted.is_final and repainted.actions == GRID_ACTIONS
    bodies = [b for b in submitted(mj_emulator, "/midjourney/imagine") if b["action"] == "variation_region"]
    assert len(bodies) == 4
    import base64

    for body in bodies:
        assert base64.b64decode(body["mask"], validate=True).startswith(b"\x89PNG")
        assert body["image_id"] == upscaled.image_id and body["prompt"] == "A cute cat"


async def test_image_prompt_and_two_image_blend(mj: mjasync.Client, mj_emulator: Any) -> None:
    """Image URLs go before the text; a blend is two to five of them."""
    grid = await mj.imagine("a highway at sunset")
    url = grid.image_url
    assert url is not None
    rewritten = await mj.imagine(
        "an illustration of a car parked on the beach",
        image_urls=[url],
        params=mjasync.PromptParams(image_weight=2),
    )
    blended = await mj.blend([url, grid.raw_image_url or url], "The bear is holding the chainsaw")
    assert rewritten.is_final and blended.is_final
    prompts = [b["prompt"] for b in submitted(mj_emulator, "/midjourney/imagine")]
    assert prompts[1] == f"{url} an illustration of a car parked on the beach --iw 2"
    assert prompts[2].startswith(f"{url} ") and prompts[2].endswith("The bear is holding the chainsaw")


async def test_edits_awaited_and_streamed(mj: mjasync.Client, mj_emulator: Any) -> None:
    """edits returns the seed's shape (no actions), awaited or streamed."""
    source = (await mj.imagine("a cat sitting on a table")).image_url
    assert source is not None
    edited = await mj.edits(source, "A cat sitting on a table", split_images=True)
    assert isinstance(edited, mjasync.types.EditsResult) and edited.is_final
    assert edited.sub_image_urls is not None and len(edited.sub_image_urls) == 4
    async with mj.edits(source, "in the snow").stream() as updates:
        seen = [u async for u in updates]
    assert seen[-1].is_final and len(seen) >= 2
    assert submitted(mj_emulator, "/midjourney/edits")[0] == {
        "action": "generate",
        "image_url": source,
        "prompt": "A cat sitting on a table",
        "split_images": True,
    }


async def test_videos_generate_and_extend(mj: mjasync.Client) -> None:
    """videos gives four video URLs; extend continues one of them."""
    frame = (await mj.imagine("a car")).image_url
    assert frame is not None
    video = await mj.videos(frame, "the car drives off", resolution="720p")
    assert video.is_final and video.video_urls and len(video.video_urls) == 4 and video.video_id
    longer = await mj.extend_video(video, index=1)
    assert longer.is_final and longer.video_id


async def test_short_calls(mj: mjasync.Client) -> None:
    """describe, shorten, translate and seed return their typed results."""
    grid = await mj.imagine("a cat")
    assert grid.image_url is not None
    described = await mj.describe(grid.image_url)
    assert len(described.descriptions) == 4 and all(isinstance(d, str) and d for d in described.descriptions)
    shorter = await mj.shorten("a very long prompt about a cat sitting on a table in the afternoon sun")
    assert 1 <= len(shorter.prompts) <= 5
    english = await mj.translate("精致，无暇，洁白的天使")
    assert english.content
    seed = await mj.seed(grid)
    assert seed.seed is not None and str(seed.seed).isdigit()


@pytest.mark.parametrize("via", ["poll", "sync", "stream"])
async def test_every_wait_strategy_gives_the_same_kind_of_result(
    mj: mjasync.Client, mj_emulator: Any, via: str
) -> None:
    """await via stream, poll and sync all give a final ImagineResult; poll sends async: true."""
    result = await mj.imagine("a cat").result(via=via)  # type: ignore[arg-type]
    assert isinstance(result, mjasync.ImagineResult) and result.is_final
    body = submitted(mj_emulator, "/midjourney/imagine")[0]
    assert body.get("async") is (True if via == "poll" else None)
    if via == "sync":
        assert "timeout" not in body or body["timeout"] > 0


async def test_submit_then_wait_through_tasks(mj: mjasync.Client, mj_emulator: Any) -> None:
    """submit gives a task_id at once; waiting polls /midjourney/tasks; the record carries the response."""
    handle = await mj.imagine("a cat sitting on a table").submit()
    assert handle.task_id
    result = await handle.wait()
    assert result.is_final and result.task_id == handle.task_id
    record = await mj.retrieve_task(handle.task_id)
    assert record.id == handle.task_id and record.type == "imagine"
    assert (
        isinstance(record.response, mjasync.types.ImagineUpdate)
        and record.response.image_id == result.image_id
    )
    assert submitted(mj_emulator, "/midjourney/tasks"), "waiting went through the tasks endpoint"
    batch = await mj.retrieve_tasks([handle.task_id])
    assert [r.id for r in batch.items] == [handle.task_id] and batch.count == 1


async def test_many_waiting_handles_share_batched_lookups(mj: mjasync.Client, mj_emulator: Any) -> None:
    """Twenty handles waiting together are polled with retrieve_batch, far fewer lookups than handles."""
    import anyio

    handles = [await mj.imagine(f"a cat number {i}").submit() for i in range(20)]
    results: dict[str, mjasync.ImagineResult] = {}

    async def wait(handle: mjasync.types.ImagineHandle) -> None:
        results[handle.task_id] = await handle

    async with anyio.create_task_group() as group:
        for handle in handles:
            group.start_soon(wait, handle)
    assert set(results) == {h.task_id for h in handles}
    assert all(r.is_final for r in results.values())
    batch_bodies = [b for b in submitted(mj_emulator, "/midjourney/tasks") if b["action"] == "retrieve_batch"]
    assert batch_bodies, "waiting handles were batched"
    assert len(submitted(mj_emulator, "/midjourney/tasks")) < len(handles)
    assert mj.statistics().lookups < len(handles)


async def test_a_job_is_sent_once(mj: mjasync.Client, mj_emulator: Any) -> None:
    """Awaiting a job twice raises instead of submitting (and paying) again."""
    job = mj.imagine("a cat")
    await job
    with pytest.raises(RuntimeError, match="already sent"):
        await job
    with pytest.raises(RuntimeError):
        job.stream()
    assert len(submitted(mj_emulator, "/midjourney/imagine")) == 1


async def test_results_download_as_real_pngs_of_the_stated_size(mj: mjasync.Client, tmp_path: Any) -> None:
    """download/download_to/save_images fetch real PNGs whose sizes match the width/height fields."""
    grid = await mj.imagine("a cat", split_images=True)
    assert grid.image_url and grid.raw_image_url and grid.sub_image_urls
    assert png_info(await mj.download(grid.image_url)) == ("PNG", (grid.image_width, grid.image_height))
    raw_path = await mj.download_to(grid.raw_image_url, tmp_path / "raw.png")
    assert png_info(raw_path) == ("PNG", (grid.raw_image_width, grid.raw_image_height))
    assert not (tmp_path / "raw.png.part").exists()
    parts = await mj.save_images(grid, tmp_path / "parts")
    assert len(parts) == 4
    assert all(png_info(p)[0] == "PNG" for p in parts)
    with pytest.raises(mjasync.ResponseDecodeError, match="max_bytes"):
        await mj.download(grid.raw_image_url, max_bytes=1024)
