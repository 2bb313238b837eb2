"""A `Worker` in a process of its own, for the tests that kill, stop and restart workers.

    python -W error -m tests.redis.worker_process --redis URL --run R --base-url URL [options]

It runs the run until every job has ended and prints its `WorkerStatistics` as one JSON line; exit
code 3 when Redis lost the run's data. The API key comes from `MJASYNC_API_KEY`; the test-only kill
switch from `MJASYNC_WORKER_KILL_AT` (see `mjasync.redis._worker`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import anyio

import mjasync
from mjasync.redis import RunDataLostError
from mjasync.redis._queue import RunQueue
from mjasync.redis._worker import Worker

#: Fast polling, as the in-process tests use, so jobs end soon after the emulator finishes them.
POLL = mjasync.PollPolicy(initial_interval=0.01, factor=1.5, max_interval=0.05, batch_window=0.005)


async def main(options: argparse.Namespace) -> int:
    async with (
        RunQueue(options.redis, account=options.account, run=options.run, timeout=options.timeout) as queue,
        mjasync.Client(base_url=options.base_url, provider=options.provider, poll=POLL) as mj,
    ):
        worker = Worker(
            mj,
            queue,
            name=options.name,
            concurrency=options.concurrency,
            lease=options.lease,
            claim_after=options.claim_after,
        )
        try:
            await worker.run(until_done=True)
        except RunDataLostError as error:
            print(f"run data lost: {error}", file=sys.stderr)  # noqa: T201 (the test reads it)
            return 3
        finally:
            print(json.dumps(dataclasses.asdict(worker.statistics())), flush=True)  # noqa: T201
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--account", default="team")
    parser.add_argument("--run", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--provider", default="acedata", choices=["acedata", "goapi"])
    parser.add_argument("--name", default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--claim-after", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=2.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(anyio.run(main, parse(sys.argv[1:])))
