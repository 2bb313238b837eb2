"""A process that shares an account's limits on Redis, for tests/redis/test_shared_limits.py.

    python limits_worker.py run REDIS_URL ACCOUNT MAX_IN_FLIGHT EMULATOR_URL PREFIX JOBS
        runs JOBS jobs ("PREFIX 0", ...) via stream through a `Client` on a `SharedLimits`, then
        prints one JSON line: {"holder", "ok", "errors", "round_trips", "statistics"}.
    python limits_worker.py hold REDIS_URL ACCOUNT MAX_IN_FLIGHT SLOTS LEASE
        takes SLOTS slots with leases of LEASE seconds, prints {"holder", "held"} and keeps them
        (refreshed) until killed, or for at most `HOLD_AT_MOST` seconds.

It imports only mjasync, so it runs the way a user's worker would.
"""

from __future__ import annotations

import json
import sys

import anyio

import mjasync
from mjasync.redis._limits import SharedLimits

#: A killed holder is the point; one that is not killed ends on its own (a hang detector).
HOLD_AT_MOST = 120.0
EMULATOR_TOKEN = "test-token"
POLL = mjasync.PollPolicy(initial_interval=0.01, factor=1.5, max_interval=0.05, batch_window=0.005)


def say(report: dict[str, object]) -> None:
    """One JSON line on stdout, at once (the test reads it while this process runs)."""
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


async def run(url: str, account: str, max_in_flight: int, emulator: str, prefix: str, jobs: int) -> None:
    async with (
        SharedLimits(url, account=account, max_in_flight=max_in_flight) as limits,
        mjasync.Client(api_key=EMULATOR_TOKEN, base_url=emulator, poll=POLL, limiter=limits) as mj,
    ):
        batch = [mj.imagine(f"{prefix} {n}") for n in range(jobs)]
        async with mj.run_many(batch, via="stream") as outcomes:
            ended = [outcome async for outcome in outcomes]
        stats = limits.statistics()
    report = {
        "holder": limits.holder,
        "ok": sum(outcome.ok for outcome in ended),
        "errors": [repr(outcome.error) for outcome in ended if not outcome.ok],
        "round_trips": limits.round_trips,
        "statistics": {"limit": stats.limit, "estimate": stats.estimate, "in_flight": stats.in_flight},
    }
    say(report)


async def hold(url: str, account: str, max_in_flight: int, slots: int, lease: float) -> None:
    async with SharedLimits(url, account=account, max_in_flight=max_in_flight, lease=lease) as limits:
        borrowers = [object() for _ in range(slots)]
        for borrower in borrowers:
            await limits.acquire(borrower)
        say({"holder": limits.holder, "held": slots})
        await anyio.sleep(HOLD_AT_MOST)


def main(argv: list[str]) -> None:
    mode, url, account, max_in_flight, *rest = argv
    if mode == "run":
        emulator, prefix, jobs = rest
        anyio.run(run, url, account, int(max_in_flight), emulator, prefix, int(jobs))
    elif mode == "hold":
        slots, lease = rest
        anyio.run(hold, url, account, int(max_in_flight), int(slots), float(lease))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
