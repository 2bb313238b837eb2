"""`run_many` on the midjourney-proxy protocol: 200 jobs against an emulator that runs 8 tasks at a time.

The proxy queues what it cannot run yet (code 22: accepted, a task made) and refuses past its queue
(code 23: no task made). What is shown: every job is reported once, with its own task; each prompt has
exactly one task (a refusal made none and was sent again, and nothing else was); the refusals are
counted by the emulator, fed to the client's capacity control, and every one was followed by a retry.
"""

from __future__ import annotations

from collections import Counter

import anyio
import msgspec

import mjasync
from mjasync.emulator import Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..conftest import FAST_POLL, open_connections

JOBS = 200
#: Tasks the emulator runs at once, and how many may wait for a slot before a submit is refused.
RUNNING = 8
QUEUED = 16
SPEED = 0.1
QUEUE_FRACTION = 0.15
#: A refusal without Retry-After backs off from here: short, so the run stays short.
RETRY = mjasync.RetryPolicy(max_retries=30, initial_delay=0.01, max_delay=0.1)


async def test_two_hundred_jobs_through_a_full_queue_each_end_once_with_one_task() -> None:
    prompts = [f"a queued kite {i}" for i in range(JOBS)]
    async with (
        Emulator(
            speed=SPEED, concurrency_limit=RUNNING, proxy_queue_size=QUEUED, queue_fraction=QUEUE_FRACTION
        ) as emu,
        mjasync.Client(
            provider="midjourney-proxy",
            api_key=EMULATOR_TOKEN,
            base_url=emu.url,
            poll=msgspec.structs.replace(FAST_POLL, max_interval=0.1),
            retry=RETRY,
            # Far more in flight than the proxy holds (8 running + 16 queued), so it refuses some.
            limits=mjasync.Limits(max_in_flight=64),
        ) as mj,
    ):
        outcomes: list[mjasync.types.Outcome[mjasync.ImagineResult]] = []
        with anyio.fail_after(120):
            async with mj.run_many((mj.imagine(p) for p in prompts), via="poll") as results:
                async for outcome in results:
                    outcomes.append(outcome)
        assert results.unfinished == [] and results.unconfirmed == []
        assert open_connections(mj) == 0
        limiter = mj.statistics().limiter
        assert limiter.in_flight == 0

        # Every job reported once, with its own result of its own task.
        assert sorted(o.index for o in outcomes) == list(range(JOBS))
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok][:3]
        task_ids = [o.task_id for o in outcomes]
        assert len(set(task_ids)) == JOBS and None not in task_ids
        for outcome in outcomes:
            result = outcome.result
            assert result is not None and result.is_final and result.image_url
            assert result.task_id == outcome.task_id
            assert result.raw is not None and result.raw["prompt"] == prompts[outcome.index], "another job's"

        # One task per job: nothing paid twice.
        assert emu.tasks_per_prompt == dict.fromkeys(prompts, 1)
        assert emu.counters["submits"] == JOBS

        # Code 23 happened, made no task, and each refusal was followed by the same submit again.
        rejections = emu.counters.get("queue_rejections", 0)
        assert rejections > 0, "the proxy's queue never filled"
        sent = Counter(r.json["prompt"] for r in emu.requests if r.path == "/mj/submit/imagine" and r.json)
        assert sum(sent.values()) == JOBS + rejections
        assert set(sent) == set(prompts)
        assert emu.faults["concurrency"] == rejections
        # ... and fed the capacity control, which lowered the client's cap.
        assert limiter.decreases >= 1, limiter

        # Code 22 happened: tasks accepted while all slots were busy started later than a task that
        # found a free slot (whose start is half its queued phase after its submit).
        unqueued_ms = 1000 * SPEED * QUEUE_FRACTION / 2
        waited = [
            raw["startTime"] - raw["submitTime"] > unqueued_ms + 2
            for o in outcomes
            if o.result is not None and (raw := o.result.raw) is not None
        ]
        assert sum(waited) >= RUNNING, "no task waited in the proxy's queue"
