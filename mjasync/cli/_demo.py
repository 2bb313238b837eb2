"""Entry layer: `mjasync demo`, the whole flow against an in-process emulator, with live progress."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

import mjasync

from .._job import ImagineJob
from .._providers import ProviderName
from ..emulator import DEFAULT_TOKEN, Emulator
from ._progress import ProgressView

__all__ = ["run_demo"]


def run_demo(*, out: str, speed: float, prompt: str, provider: ProviderName = "acedata") -> int:
    """Run the demo; return the exit status."""
    if speed < 0:
        print("error: --speed must be >= 0", file=sys.stderr)
        return 2
    try:
        paths = anyio.run(_demo, Path(out), speed, prompt, provider, backend="asyncio")
    except mjasync.MJError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(f"\nWrote {len(paths)} PNGs to {Path(out).resolve()}:")
    for path in paths:
        print(f"  {path}")
    return 0


#: Providers that stream progress need no polling; for the others, poll often: the jobs are short.
_DEMO_POLL = mjasync.PollPolicy(initial_interval=0.2, factor=1.2, max_interval=0.5)


async def _demo(out: Path, speed: float, prompt: str, provider: ProviderName) -> list[Path]:
    async with Emulator(speed=speed) as emulator:
        print(f"Embedded emulator on {emulator.url} (nothing leaves this machine), speaking {provider}")
        async with mjasync.Client(
            api_key=DEFAULT_TOKEN, base_url=emulator.url, provider=provider, poll=_DEMO_POLL
        ) as mj:
            with ProgressView() as view:
                grid = await _step(view, "imagine", mj.imagine(prompt))
                variations = await _step(view, "variation2", mj.variation(grid, 2))
                upscaled = await _step(view, "upscale4", mj.upscale(variations, 4))
                zoomed = await _step(view, "zoom_out_2x", mj.zoom_out(upscaled, 2))
            paths = []
            for number, (name, result) in enumerate(
                [
                    ("imagine", grid),
                    ("variation2", variations),
                    ("upscale4", upscaled),
                    ("zoom_out_2x", zoomed),
                ],
                1,
            ):
                assert result.image_url is not None
                paths.append(await mj.download_to(result.image_url, _ensure(out) / f"{number}-{name}.png"))
            return paths


async def _step(view: ProgressView, label: str, job: ImagineJob) -> mjasync.ImagineResult:
    async with job.stream() as updates:
        with view.task(label) as bar:
            async for update in updates:
                bar.update(update.progress or 0.0)
    return updates.final


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
