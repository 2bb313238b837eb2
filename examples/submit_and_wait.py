"""Submit many jobs at once, then wait for all: no connection is held while they queue, and the
waiting handles share one batched task lookup per round.

    python examples/submit_and_wait.py [N]
"""

from __future__ import annotations

import sys

import anyio

import mjasync
from mjasync.emulator import DEFAULT_TOKEN, Emulator


async def main(count: int) -> None:
    async with Emulator(speed=1.0) as emulator:
        poll = mjasync.PollPolicy(initial_interval=0.5, max_interval=2.0)
        async with mjasync.Client(api_key=DEFAULT_TOKEN, base_url=emulator.url, poll=poll) as mj:
            handles = [await mj.imagine(f"a lighthouse, study {i}").submit() for i in range(count)]
            results: list[mjasync.ImagineResult] = []

            async def wait(handle: mjasync.types.ImagineHandle) -> None:
                results.append(await handle.wait(deadline=60))

            async with anyio.create_task_group() as group:
                for handle in handles:
                    group.start_soon(wait, handle)
            print(f"{len(results)} jobs finished with {mj.statistics().lookups} task lookups")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 20)
