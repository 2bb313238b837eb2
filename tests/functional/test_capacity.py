"""The learnt cap against the emulator's true per-account cap: behaviour, not speed."""

from __future__ import annotations

import mjasync
from mjasync.emulator import Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL


async def test_the_limiter_learns_a_true_cap_and_every_job_finishes() -> None:
    """Sixteen slots against a cap of 4 open streams: the cap is learnt as 4, and every job ends well
    with the default retry policy (refusals spend no retry)."""
    async with (
        Emulator(speed=0.2, concurrency_limit=4) as emu,
        mjasync.Client(
            api_key=EMULATOR_TOKEN,
            base_url=emu.url,
            poll=FAST_POLL,
            limits=mjasync.Limits(max_in_flight=16),
        ) as mj,
    ):
        jobs = [mj.imagine(f"capped {i}") for i in range(48)]
        async with mj.run_many(jobs, via="stream") as outcomes:
            results = [o async for o in outcomes]
        stats = mj.statistics().limiter
    assert all(o.ok for o in results), [o.error for o in results if not o.ok]
    assert stats.estimate == 4 and stats.limit in (4, 5), stats
    assert stats.in_flight == stats.retrying == 0
    # Sixteen went out at once; after that burst the limit keeps further refusals few.
    assert emu.faults["concurrency"] < 48, emu.faults
