"""A stream that breaks before its first line is looked up from when it was sent, not from the break."""

from __future__ import annotations

import pytest

import mjasync
from mjasync._providers import acedata
from mjasync.emulator import Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL


async def test_a_long_silent_stream_cut_before_its_first_line_is_found_and_resumed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream stays silent longer than the lookup's clock-skew margin, then is cut: still found.

    Searching from the moment of the break would start after the task was made and miss it; the
    lookup must start from when the stream was sent. One submit, and the job ends with its result.
    """
    monkeypatch.setattr(acedata, "_RECONCILE_SKEW", 0.05)
    retry = mjasync.RetryPolicy(initial_delay=0.01, reconcile_delay=0.01)
    fault = {"x-mjasync-fault": "slow-first-byte=0.5; cut-after=0"}
    async with Emulator(tokens=(EMULATOR_TOKEN,)) as emulator:
        async with mjasync.Client(
            api_key=EMULATOR_TOKEN, base_url=emulator.url, poll=FAST_POLL, retry=retry, default_headers=fault
        ) as client:
            async with client.imagine("a quiet heron").stream() as updates:
                seen = [update async for update in updates]
        assert updates.resumed
        assert seen[-1].is_final
        assert emulator.counters["submits"] == 1
        assert emulator.tasks_per_prompt == {"a quiet heron": 1}
