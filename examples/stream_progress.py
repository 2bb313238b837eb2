"""Watch a job's progress live: one decoded Struct per ndjson line, then the final result.

python examples/stream_progress.py
"""

from __future__ import annotations

import anyio

import mjasync
from mjasync.emulator import DEFAULT_TOKEN, Emulator


async def main() -> None:
    async with Emulator(speed=1.0) as emulator:
        async with mjasync.Client(api_key=DEFAULT_TOKEN, base_url=emulator.url) as mj:
            async with mj.imagine("a cat sitting on a table").stream() as updates:
                async for update in updates:
                    state = "final" if update.is_final else "in progress"
                    print(f"{update.progress:5.1f}%  image_id={update.image_id}  {state}")
            print("actions:", ", ".join(updates.final.actions))


if __name__ == "__main__":
    anyio.run(main)
