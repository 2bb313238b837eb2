"""The emulator records when each job ends, so a benchmark can measure how late a client learns of it."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from mjasync.emulator import Emulator, ManualClock
from mjasync.testing import EMULATOR_TOKEN

from ..helpers import acedata_json, running

pytestmark = pytest.mark.anyio


async def finishes(session: aiohttp.ClientSession, emu: Emulator) -> dict[str, Any]:
    """``GET /_emulator/finishes`` (no credentials)."""
    async with session.get(f"{emu.url}/_emulator/finishes") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
    return body


async def test_a_job_is_listed_once_it_ends_at_the_time_its_record_turns_final() -> None:
    """Nothing is listed while the job runs; once it ends, its end is the record's `finished_at`."""
    clock = ManualClock()
    async with running(speed=10.0, clock=clock) as (emu, session):
        task_id = (
            await acedata_json(session, emu, "/midjourney/imagine", {"prompt": "a cat", "async": True})
        )[1]["task_id"]
        clock.advance(9.9)
        assert emu.finish_times == {}
        assert await finishes(session, emu) == {"finished": {}}

        clock.advance(0.1)
        record = emu.task_record(task_id)
        assert record is not None and record["response"]["progress"] == 100
        assert emu.finish_times == {task_id: record["finished_at"]}
        assert record["finished_at"] == pytest.approx(record["created_at"] + 10.0)
        assert await finishes(session, emu) == {"finished": {task_id: record["finished_at"]}}


async def test_goapi_jobs_and_failed_jobs_are_listed_too() -> None:
    """A GoAPI job ends at its last phase; a failed job (moderated at its start) is listed as well."""
    clock = ManualClock()
    async with running(speed=10.0, clock=clock) as (emu, session):
        headers = {"X-API-KEY": EMULATOR_TOKEN}

        async def goapi_submit(prompt: str) -> str:
            async with session.post(
                f"{emu.url}/mj/v2/imagine", json={"prompt": prompt}, headers=headers
            ) as resp:
                assert resp.status == 200
                return str((await resp.json())["task_id"])

        created = clock()
        finished, failed = await goapi_submit("a cat"), await goapi_submit("gore")
        clock.advance(10.0)
        ends = emu.finish_times
        assert ends[finished] == pytest.approx(created + 10.0)
        assert failed in ends and ends[failed] < ends[finished]
        async with session.post(f"{emu.url}/mj/v2/fetch", json={"task_id": failed}) as resp:
            assert (await resp.json())["status"] == "failed"
