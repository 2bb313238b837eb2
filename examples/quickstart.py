"""Imagine, vary, upscale and save: the seed's flow, run against the embedded emulator.

To use the real service instead, delete the Emulator block and set MJASYNC_API_KEY.
    python examples/quickstart.py [OUT_DIR]
"""

from __future__ import annotations

import sys

import anyio

import mjasync
from mjasync.emulator import DEFAULT_TOKEN, Emulator


async def main(out_dir: str) -> None:
    async with Emulator(speed=0.5) as emulator:
        async with mjasync.Client(api_key=DEFAULT_TOKEN, base_url=emulator.url) as mj:
            grid = await mj.imagine(
                "Lamborghini speeds inside a volcano", params=mjasync.PromptParams(aspect_ratio="1:1")
            )
            print("grid:", grid.image_id, grid.actions)
            variations = await mj.variation(grid, 2)
            upscaled = await mj.upscale(variations, 4)
            print("upscaled:", upscaled.image_id, upscaled.actions)
            path = await mj.download_to(upscaled.image_url or "", f"{out_dir}/upscaled.png")
            print("saved", path)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "mjasync-example")
