"""Chaos across processes: 4 `mjasync worker` processes, 2,000 jobs, one shared cap, and everything breaking.

Everything runs as a user runs it: the jobs are enqueued with `mjasync batch FILE --redis URL --run NAME`,
the workers are `mjasync worker ... --until-done` subprocesses, the results are collected with
`mjasync batch results`; Redis is a real `redis-server` with its append-only file on, and the provider
is the in-package emulator (in this process, so its records can be read as the run goes). The cap is
the emulator's (`concurrency_limit=CAP`) and the workers' (`--max-in-flight CAP`), and the workers ask
for twice as much (`--concurrency`), so the shared cap is what holds them back.

While the jobs run, a seeded plan, each step fired when the emulator has seen a given number of
submits (so it lands mid-run however fast the machine is):

- SIGKILL a running worker at `RANDOM_KILLS` moments, and restart it at once; the restarts after the
  first three carry a kill point (`MJASYNC_WORKER_KILL_AT`: `after-intent`, `after-post`,
  `before-record`, at a random occurrence), so those incarnations kill themselves there, and are
  restarted in turn;
- SIGSTOP a worker past its lease and its claim time (its jobs go to the others), then SIGCONT it;
- kill redis-server and start it again (AOF with fsync on every write: nothing acknowledged is lost);
- stop redis-server for `OUTAGE` seconds, then start it: no submit may reach the emulator meanwhile,
  beyond those whose fence began before the stop (their POST may still be on its way).

Afterwards every job has its outcome (status and 2,000 result lines), the emulator made exactly one
task per job, every result is its own job's task, and the provider never held more than the cap at
once. "In flight" is read from the emulator's own task records (each task's `created_at` to its
`finished_at`): a worker submits asynchronously, and the emulator's open-submit count covers an
asynchronous submit only until it is answered, so its concurrency limit alone would see only the
POSTs. A task's life at the provider lies inside the slot its worker holds (taken before the intent,
given back after the result was seen), so the tasks alive at once never exceed the slots held at once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
import pytest
from anyio.abc import Process

from mjasync.emulator import Emulator
from mjasync.redis import RunOutcome, RunQueue
from mjasync.redis._worker import KILL_AT_ENV, KILL_POINTS
from mjasync.testing import EMULATOR_TOKEN
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

JOBS = 2000
WORKERS = 4
#: The provider's cap, and the workers' shared one.
CAP = 32
#: Each worker asks for this many jobs at once: together twice the cap, so the shared cap is what binds.
CONCURRENCY = 16
#: Seconds a job takes at the emulator.
SPEED = 0.3
#: The workers' submit fence and claim time: short, so a dead or stopped worker's jobs move on soon.
LEASE = 3.0
CLAIM_AFTER = 1.5
RANDOM_KILLS = 10
#: Seconds redis-server stays stopped.
OUTAGE = 10.0
#: How long a worker stays stopped: past its lease and its claim time.
STOPPED_FOR = 2 * (LEASE + CLAIM_AFTER)
SEED = 15
RUN = "chaos"
#: A hang detector for the whole run, never a timing claim.
HANG = 480.0
#: Seconds between looks at a condition waited for (the emulator's counters, a process's exit).
LOOK = 0.05


def _env(kill_at: str | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MJASYNC_", "ACEDATACLOUD_"))}
    env = {**clean, "PYTHONUNBUFFERED": "1"}
    if kill_at is not None:
        env[KILL_AT_ENV] = kill_at
    return env


def _mjasync(*args: str) -> list[str]:
    return [sys.executable, "-W", "error", "-m", "mjasync", *args]


async def _run_cli(*args: str) -> tuple[int, str, str]:
    with anyio.fail_after(120):
        done = await anyio.run_process(_mjasync(*args), env=_env(), check=False)
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


async def _until(condition: Callable[[], bool], what: str, bound: float = HANG) -> None:
    """Wait for `condition` (looked at every LOOK s; the bound is a hang detector)."""
    with anyio.fail_after(bound):
        while not condition():  # noqa: ASYNC110 (the emulator's counters have no event to wait on)
            await anyio.sleep(LOOK)


@dataclass
class _Incarnation:
    """One worker process: which slot it fills, its kill point if any, how it ended."""

    slot: int
    number: int
    kill_at: str | None
    log: Path
    process: Process | None = None
    returncode: int | None = None
    #: Killed by the plan (not by its own kill point).
    killed: bool = False


@dataclass
class _Fleet:
    """WORKERS slots, each a worker process restarted whenever it is killed, until the run has ended."""

    redis_url: str
    emulator_url: str
    folder: Path
    incarnations: list[_Incarnation] = field(default_factory=list)
    #: The kill point each slot's next incarnation starts with.
    next_kill_at: dict[int, str] = field(default_factory=dict)
    current: dict[int, _Incarnation] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)

    def command(self, name: str) -> list[str]:
        return _mjasync(
            "worker", "--redis", self.redis_url, "--run", RUN, "--until-done",
            "--base-url", self.emulator_url, "--api-key", EMULATOR_TOKEN,
            "--concurrency", str(CONCURRENCY), "--max-in-flight", str(CAP),
            "--poll-interval", "0.1", "--lease", str(LEASE), "--claim-after", str(CLAIM_AFTER),
            "--name", name,
        )  # fmt: skip

    async def serve(self, slot: int) -> None:
        """Keep slot `slot` filled: start a worker, and start another each time one is SIGKILLed."""
        while True:
            kill_at = self.next_kill_at.pop(slot, None)
            number = sum(1 for i in self.incarnations if i.slot == slot)
            me = _Incarnation(slot, number, kill_at, self.folder / f"w{slot}.{number}.log")
            self.incarnations.append(me)
            log: IO[bytes]
            with me.log.open("wb") as log:
                me.process = await anyio.open_process(
                    self.command(f"w{slot}.{number}"), stdout=log, stderr=log, env=_env(kill_at)
                )
                self.current[slot] = me
                me.returncode = await me.process.wait()
            if me.returncode == 0:
                self.finished.add(slot)
                return
            assert me.returncode == -signal.SIGKILL, self.tail(me)

    def running(self) -> list[_Incarnation]:
        """Incarnations running now without a kill point of their own (the plan's victims)."""
        return [
            i
            for i in self.current.values()
            if i.returncode is None and i.kill_at is None and not i.killed and i.process is not None
        ]

    @staticmethod
    def tail(me: _Incarnation) -> str:
        text = me.log.read_text(errors="replace") if me.log.exists() else ""
        return f"worker w{me.slot}.{me.number} (kill at {me.kill_at}) exited {me.returncode}:\n{text[-3000:]}"


@dataclass
class _Outage:
    """The emulator's submit counter around the 10 s stop of redis-server."""

    at_stop: int = -1
    #: Once every fence begun before the stop has ended (a POST sent inside one may still arrive).
    after_fences: int = -1
    before_start: int = -1
    #: The workers running all through it (each must say that submits paused, and then resumed).
    through: list[_Incarnation] = field(default_factory=list)


@dataclass
class _Chaos:
    """The plan, fired step by step as the emulator's submit count passes each step's threshold."""

    emu: Emulator
    server: RedisServer
    fleet: _Fleet
    rng: random.Random
    outage: _Outage = field(default_factory=_Outage)
    #: The steps done: (name, seconds since the plan began, submits seen then).
    done: list[tuple[str, float, int]] = field(default_factory=list)
    #: Submits seen when the stopped worker was stopped and continued (the others went on meanwhile).
    stopped_span: tuple[int, int] = (0, 0)

    def submits(self) -> int:
        return self.emu.counters.get("submits", 0)

    def plan(self) -> list[tuple[int, str, Callable[[], Awaitable[None]]]]:
        kills = sorted(self.rng.sample(range(60, int(0.85 * JOBS)), RANDOM_KILLS))
        steps: list[tuple[int, str, Callable[[], Awaitable[None]]]] = [
            (at, f"kill {n}", self._killer(n)) for n, at in enumerate(kills)
        ]
        steps += [
            (self.rng.randrange(250, 450), "stop a worker", self._stop_worker),
            (self.rng.randrange(650, 850), "restart redis", self._restart_redis),
            (self.rng.randrange(1100, 1300), "redis outage", self._redis_outage),
        ]
        return sorted(steps, key=lambda step: step[0])

    async def run(self) -> None:
        began = anyio.current_time()
        for at, name, step in self.plan():
            await self._reach(at, name)
            self.done.append((name, anyio.current_time() - began, self.submits()))
            await step()

    async def _reach(self, submits: int, name: str) -> None:
        await _until(lambda: self.submits() >= submits, f"{submits} submits before {name}")

    def _victim(self) -> _Incarnation:
        running = self.fleet.running()
        assert running, "no worker running to act on"
        return self.rng.choice(sorted(running, key=lambda i: i.slot))

    def _killer(self, n: int) -> Callable[[], Awaitable[None]]:
        async def kill() -> None:
            victim = self._victim()
            # The first three restarts carry a kill point each: that incarnation kills itself there.
            if n < len(KILL_POINTS):
                self.fleet.next_kill_at[victim.slot] = f"{KILL_POINTS[n]}:{self.rng.randint(2, 6)}"
            victim.killed = True
            assert victim.process is not None
            victim.process.send_signal(signal.SIGKILL)
            # Gone before the next step picks its victim (steps due together come one after another).
            await _until(lambda: victim.returncode is not None, f"w{victim.slot}.{victim.number} to die")

        return kill

    async def _stop_worker(self) -> None:
        victim = self._victim()
        assert victim.process is not None
        victim.process.send_signal(signal.SIGSTOP)
        before = self.submits()
        # The scenario's length, not a synchronisation: the worker stays stopped past its lease.
        await anyio.sleep(STOPPED_FOR)
        self.stopped_span = (before, self.submits())
        victim.process.send_signal(signal.SIGCONT)

    async def _restart_redis(self) -> None:
        await anyio.to_thread.run_sync(self.server.kill)
        await anyio.to_thread.run_sync(self.server.start)

    async def _redis_outage(self) -> None:
        running = self.fleet.running()
        await anyio.to_thread.run_sync(self.server.stop)  # SIGTERM: the AOF is complete
        stopped = anyio.current_time()
        self.outage.at_stop = self.submits()
        await anyio.sleep(LEASE)  # every fence begun before the stop has ended by now
        self.outage.after_fences = self.submits()
        await anyio.sleep(stopped + OUTAGE - anyio.current_time())
        self.outage.before_start = self.submits()
        self.outage.through = [i for i in running if i.returncode is None]
        await anyio.to_thread.run_sync(self.server.start)


def _most_tasks_at_once(emu: Emulator) -> int:
    """The most tasks the emulator held at once: each from its `created_at` to its `finished_at`."""
    changes: list[tuple[float, int]] = []
    for task_id in emu.finish_times:
        record = emu.task_record(task_id)
        assert record is not None
        # At a tie, an end comes before a start: a slot given back is free for the next task.
        changes += [(float(record["created_at"]), 1), (float(record["finished_at"]), -1)]
    most = held = 0
    for _, change in sorted(changes):
        held += change
        most = max(most, held)
    return most


async def _outcomes(redis_url: str) -> list[RunOutcome]:
    async with RunQueue(redis_url, account="default", run=RUN) as queue:
        return [outcome async for outcome in queue.outcomes(follow=False)]


async def test_four_worker_processes_run_every_job_once_through_kills_stops_and_redis_restarts(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    prompts = [f"chaos across processes, job {i}" for i in range(JOBS)]
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("".join(f"{p}\n" for p in prompts), encoding="utf-8")
    logs = tmp_path / "logs"
    logs.mkdir()

    server = RedisServer(tmp_path / "redis", appendonly=True)
    await anyio.to_thread.run_sync(server.start)
    try:
        code, out, err = await _run_cli("batch", str(prompt_file), "--redis", server.url, "--run", RUN)
        assert code == 0, err
        assert f"{JOBS} new jobs enqueued" in out, out

        async with Emulator(speed=SPEED, concurrency_limit=CAP) as emu:
            fleet = _Fleet(server.url, emu.url, logs)
            chaos = _Chaos(emu, server, fleet, rng)
            with anyio.fail_after(HANG):
                async with anyio.create_task_group() as group:
                    for slot in range(WORKERS):
                        group.start_soon(fleet.serve, slot)
                    await chaos.run()
                    await _until(lambda: len(fleet.finished) == WORKERS, "every worker to end the run")
            most_at_once = _most_tasks_at_once(emu)
            counters = dict(emu.counters)
            per_prompt = dict(emu.tasks_per_prompt)
            task_prompts = {
                task_id: (emu.task_record(task_id) or {}).get("request", {}).get("prompt")
                for task_id in emu.finish_times
            }

        code, out, err = await _run_cli("batch", "status", "--redis", server.url, "--run", RUN)
        assert code == 0, out + err
        assert f"{JOBS}/{JOBS} ended ({JOBS} ok, 0 failed, 0 ambiguous)" in out, out
        results = tmp_path / "results"
        code, out, err = await _run_cli(
            "batch", "results", "--redis", server.url, "--run", RUN, "--out", str(results), "--no-images"
        )
        assert code == 0, out + err
        outcomes = await _outcomes(server.url)
    finally:
        await anyio.to_thread.run_sync(server.kill)

    # What happened, shown with -s; never asserted as timings.
    workers = ", ".join(f"w{i.slot}.{i.number}[{i.kill_at or ''}]={i.returncode}" for i in fleet.incarnations)
    story = (
        f"\nplan (step, seconds, submits): {chaos.done}\noutage submits: {chaos.outage.at_stop} at the stop, "
        f"{chaos.outage.after_fences} after the fences, {chaos.outage.before_start} before the start; "
        f"stopped worker's span: {chaos.stopped_span}\nmost tasks at once: {most_at_once}; adopted "
        f"{sum(o.adopted for o in outcomes)}, sent again {sum(o.submits >= 2 for o in outcomes)}\n"
        f"workers: {workers}"
    )
    print(story)  # noqa: T201

    # --- the plan ran in full, and each kill point was reached ---
    assert len(chaos.done) == RANDOM_KILLS + 3, chaos.done
    killed = [i for i in fleet.incarnations if i.killed]
    assert len(killed) == RANDOM_KILLS and all(i.returncode == -signal.SIGKILL for i in killed)
    pointed = {i.kill_at.partition(":")[0]: i for i in fleet.incarnations if i.kill_at}
    assert sorted(pointed) == sorted(KILL_POINTS), pointed
    for point, me in pointed.items():
        assert me.returncode == -signal.SIGKILL and not me.killed, f"{point}: {fleet.tail(me)}"

    # --- no submit while Redis was away (past the fences already running when it stopped) ---
    outage = chaos.outage
    assert outage.before_start == outage.after_fences, outage
    assert outage.after_fences - outage.at_stop <= WORKERS * CONCURRENCY, outage
    assert outage.through, "no worker lived through the outage"
    for me in outage.through:
        said = me.log.read_text(errors="replace")
        assert "Redis does not answer: no new submit goes out" in said, fleet.tail(me)
        assert "Redis answers again: submits resume." in said, fleet.tail(me)

    # --- every job has its outcome, once ---
    lines = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    assert len(lines) == JOBS and all(line["ok"] for line in lines)
    assert sorted(line["prompt"] for line in lines) == sorted(prompts)
    assert len({line["key"] for line in lines}) == JOBS
    assert len(outcomes) == JOBS and len({o.key for o in outcomes}) == JOBS
    # Lost submits were settled at the provider: adopted when it had the task (after-post,
    # before-record), sent again when it proved it had none (after-intent).
    assert any(o.adopted for o in outcomes), "no lost submit was adopted"
    assert any(o.submits >= 2 for o in outcomes), "no lost submit was sent again"

    # --- one task per job, each result its own job's task ---
    assert counters["submits"] == JOBS, counters
    assert len(per_prompt) == JOBS and set(per_prompt.values()) == {1}, {
        p: n for p, n in per_prompt.items() if n != 1
    }
    for line in lines:
        assert task_prompts.get(line["task_id"]) == line["prompt"], line

    # --- the cap, from the provider's side ---
    assert most_at_once <= CAP, most_at_once
    assert counters["fault_concurrency"] == 0, counters
