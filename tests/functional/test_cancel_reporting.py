"""Nothing paid is forgotten: cancel a `run_many`, a job or a stream at any moment, and every task the
provider made for it is reported — as an outcome received, a task id in `outcomes.unfinished`
(`job.task_id`), or a sent job in `outcomes.unconfirmed` (`job.sent_at`).

The emulator knows every task it made (`tasks_per_prompt`), and each job here has a prompt of its own,
so each task is matched to its job by prompt. The moments are drawn from seeded randomness.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import mjasync
from mjasync.emulator import Emulator

TOKEN = "cancel-reporting-token-0123456789"
SEEDS = range(24)
#: Seconds an emulated job takes: long enough that cancels land mid-way, short enough that some finish.
SPEED = 0.2
#: Cancel moments are drawn from [0, LATEST) seconds after the start.
LATEST = 0.3
HANG = 60.0
POLL = mjasync.PollPolicy(initial_interval=0.02, factor=1.5, max_interval=0.05, batch_window=0.005)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(tokens=(TOKEN,), speed=SPEED) as emu:
        yield emu


@pytest.fixture
async def mj(emulator: Emulator) -> AsyncIterator[mjasync.Client]:
    async with mjasync.Client(api_key=TOKEN, base_url=emulator.url, poll=POLL) as client:
        yield client


def made(emulator: Emulator, prompt: str) -> int:
    """How many tasks the emulator made for `prompt`."""
    return emulator.tasks_per_prompt.get(prompt, 0)


def task_prompt(emulator: Emulator, task_id: str) -> str | None:
    """The prompt of the emulator's task `task_id` (None: no such task)."""
    record = emulator.task_record(task_id)
    if record is None:
        return None
    request: dict[str, Any] = record.get("request") or {}
    return request.get("prompt")


@pytest.mark.parametrize("via", ["poll", "stream"])
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_cancelled_run_many_reports_every_task_it_made(
    emulator: Emulator, mj: mjasync.Client, via: mjasync.types.WaitVia, seed: int
) -> None:
    """Cancelled at a random moment, a run's tasks are each received, unfinished or unconfirmed."""
    moment = random.Random(seed).uniform(0, LATEST)
    prompts = [f"run {via} {seed} job {i}" for i in range(40)]
    received: list[mjasync.types.Outcome[mjasync.ImagineResult]] = []
    with anyio.fail_after(HANG):
        with anyio.move_on_after(moment):
            async with mj.run_many((mj.imagine(p) for p in prompts), concurrency=8, via=via) as outcomes:
                async for outcome in outcomes:
                    received.append(outcome)
    unfinished = set(outcomes.unfinished)
    unconfirmed = {entry.index: entry for entry in outcomes.unconfirmed}
    by_index = {outcome.index: outcome for outcome in received}
    assert not unfinished & {o.task_id for o in received}, "a received outcome is not also unfinished"
    assert not set(unconfirmed) & set(by_index), "a received outcome is not also unconfirmed"
    unfinished_prompts = {task_prompt(emulator, task_id) for task_id in unfinished}
    assert None not in unfinished_prompts, "every unfinished id is a task the provider made"
    for index, prompt in enumerate(prompts):
        if not made(emulator, prompt):
            continue
        assert made(emulator, prompt) == 1, "nothing was paid twice"
        reported = index in by_index or prompt in unfinished_prompts or index in unconfirmed
        assert reported, f"job {index}'s task was made but not reported (cancelled at {moment:.3f} s)"
    for index, entry in unconfirmed.items():
        assert entry.request.prompt == prompts[index]
        assert entry.sent_at > 0


@pytest.mark.parametrize("via", ["poll", "stream", "iterate"])
@pytest.mark.parametrize("seed", SEEDS)
async def test_a_cancelled_job_names_its_task(
    emulator: Emulator, mj: mjasync.Client, via: str, seed: int
) -> None:
    """A lone job (awaited, or its stream iterated) cancelled at a random moment: if the provider
    made a task for it, the job has its `task_id`, or at least its `sent_at` to look it up by."""
    moment = random.Random(seed).uniform(0, LATEST / 2)
    prompt = f"lone {via} {seed}"
    job = mj.imagine(prompt)
    finished = False
    with anyio.fail_after(HANG):
        with anyio.move_on_after(moment):
            if via == "iterate":
                async with job.stream() as updates:
                    async for _ in updates:
                        pass
            else:
                await job.result(via=via)  # type: ignore[arg-type]
            finished = True
    if job.task_id is not None:
        assert task_prompt(emulator, job.task_id) == prompt
    if made(emulator, prompt):
        assert job.task_id is not None or job.sent_at is not None, (
            f"a task was made but the job does not know it was sent (cancelled at {moment:.3f} s)"
        )
    if finished:
        assert job.task_id is not None
