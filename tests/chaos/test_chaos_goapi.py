"""Chaos on GoAPI: a thousand jobs per run against an emulator that faults a quarter of all requests.

GoAPI cannot list an account's tasks and its errors carry no trace id, so a submit whose fate is unknown
(a 500, 502 or 504, or a reset, before or after its task was made) cannot be looked up: with
``RetryPolicy(on_ambiguous_submit="raise")`` the job ends with `AmbiguousSubmitError` and the submit is
never POSTed again. Everything else must come through: a refused submit (429) is retried to its result,
a faulted lookup (``/mj/v2/fetch``, ``/mj/v2/multi_fetch``) never fails a job, no prompt gets two tasks
(nothing paid twice), and no task, connection or webhook route is left behind. A 503 with Retry-After on a
submit is a refusal too (the server shedding load) and is retried like a 429.

Runs poll, "stream" (GoAPI has no ndjson: a submit, then polling) and, with a `WebhookReceiver` on the
client, wait by webhook (some of them dropped, so the polling fallback has work) or stream by progress
webhooks. Stream faults (``cut``, ``malformed``) never apply to GoAPI; every other kind is drawn.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
import pytest

import mjasync
from mjasync.emulator import DEFAULT_TOKEN, Emulator, FaultPlan, FaultRecord, RecordedRequest

from ..conftest import open_connections

pytestmark = pytest.mark.slow

JOBS = 1000
#: Every 20th prompt is moderated (the emulator bans "gore"): GoAPI takes the submit, then fails the task.
BANNED_EVERY = 20
SUBMIT = "/mj/v2/imagine"
LOOKUPS = frozenset({"/mj/v2/fetch", "/mj/v2/multi_fetch"})
#: The fault kinds that apply to GoAPI (``cut`` and ``malformed`` need an ndjson stream, which it lacks).
GOAPI_KINDS = ("429", "500", "502", "503", "504", "reset", "slow")
STREAM_KINDS = ("cut", "malformed")
#: Faults that leave a submit's fate unknown: the only ones after which a job may end ambiguous.
AMBIGUOUS_KINDS = frozenset({"500", "502", "504", "reset"})
#: How each failing fault shows in the emulator's request log (a reset is never answered: no status).
KIND_OF_STATUS: dict[int | None, str] = {
    429: "429", 500: "500", 502: "502", 503: "503", 504: "504", None: "reset",
}  # fmt: skip
AMBIGUOUS_STATUSES = frozenset(s for s, kind in KIND_OF_STATUS.items() if kind in AMBIGUOUS_KINDS)
#: Refusals: nothing was made, so the submit is sent again.
REFUSED_STATUSES = frozenset({429, 503})
REFUSED_KINDS = frozenset(KIND_OF_STATUS[s] for s in REFUSED_STATUSES)
#: Seconds a job takes in the emulator: long enough that most jobs are polled more than once.
SPEED = 0.05
#: A webhook that has not come within `callback_grace` (less than a job takes) is looked for by polling,
#: so webhook runs race webhooks against lookups, and the lookups meet faults too.
FAST_POLL = mjasync.PollPolicy(
    initial_interval=0.01, factor=1.5, max_interval=0.05, batch_window=0.005, callback_grace=SPEED / 2
)
RETRY = mjasync.RetryPolicy(
    max_retries=8, initial_delay=0.01, max_delay=0.05, reconcile_delay=0.01, on_ambiguous_submit="raise"
)


def prompt_for(name: str, i: int) -> str:
    """A distinct prompt per job; every BANNED_EVERY-th one is moderated."""
    return f"gore scene {name} {i}" if i % BANNED_EVERY == 7 else f"chaos {name} {i}"


def plan(seed: int, *, weight_429: float = 0.15, **options: Any) -> FaultPlan:
    """A quarter of all requests (submits and lookups) faulted, with every kind that applies to GoAPI.

    Each 429 pauses the whole client and halves its in-flight cap, by design, so a 429 is drawn less
    often than the others: at the AceData test's 0.3 a polling run took 7 to 19 s, at 0.15 about 4
    (webhook runs poll less and keep 0.3: their submit bodies vary, so only a higher weight makes a
    429 on a submit all but certain). Short Retry-After and slow first bytes keep the runs short too;
    half the ambiguous submit faults strike after the task was made.
    """
    kinds = {kind: weight_429 if kind == "429" else 1.0 for kind in GOAPI_KINDS}
    settings: dict[str, Any] = {"rate": 0.25, "kinds": kinds, "after_share": 0.5}
    settings.update(retry_after=0.05, slow_first_byte=0.05, **options)
    return FaultPlan(seed=seed, **settings)


@dataclass
class Run:
    """What one chaos run left: the jobs, their outcomes, and the emulator's records."""

    prompts: list[str]
    outcomes: list[mjasync.types.Outcome[mjasync.ImagineResult]]
    counters: dict[str, int]
    faults: dict[str, int]
    fault_log: list[FaultRecord]
    tasks_per_prompt: dict[str, int]
    requests: list[RecordedRequest]
    #: The prompt of each task a submit made before its answer was lost (a fault "after").
    lost_tasks: dict[str, str]
    receiver: mjasync.types.ReceiverStatistics | None = None
    #: Each prompt's submits, oldest first, by the status they got (None: reset, never answered).
    submits: dict[str, list[int | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        submits: dict[str, list[int | None]] = defaultdict(list)
        for request in self.requests:
            if request.path == SUBMIT and request.json:
                submits[request.json["prompt"]].append(request.status)
        self.submits = dict(submits)


def _is_server_task(task: asyncio.Task[Any]) -> bool:
    """The servers' own connection handlers (the emulator's, the receiver's), and the emulator's webhooks.

    The await chain is walked because anyio runs a task's coroutine inside a wrapper of its own.
    """
    coro: Any = task.get_coro()
    while getattr(coro, "cr_code", None) is not None:
        if (
            coro.__qualname__.startswith("RequestHandler.")
            # The receiver's accept loop, alive for as long as it serves.
            or coro.__qualname__ == "_Connections.accept"
            or "/mjasync/emulator/" in coro.cr_code.co_filename
        ):
            return True
        coro = coro.cr_await
    return False


async def run_chaos(name: str, via: str, faults: FaultPlan, *, drop_webhooks: int | None = None) -> Run:
    """Run JOBS jobs through `run_many` under `faults`; check nothing is left behind; return the records.

    With `drop_webhooks` (a count), the client waits by webhook and the emulator loses the first that many.
    """
    with_webhooks = drop_webhooks is not None
    prompts = [prompt_for(name, i) for i in range(JOBS)]
    async with AsyncExitStack() as stack:
        emu = await stack.enter_async_context(Emulator(speed=SPEED, faults=faults))
        if drop_webhooks:
            emu.drop_callbacks(drop_webhooks)
        before = asyncio.all_tasks()
        outcomes: list[mjasync.types.Outcome[mjasync.ImagineResult]] = []
        receiver = mjasync.WebhookReceiver() if with_webhooks else None
        if receiver is not None:
            await stack.enter_async_context(receiver.serve(host="127.0.0.1"))
        client = mjasync.Client(
            provider="goapi",
            api_key=DEFAULT_TOKEN,
            base_url=emu.url,
            poll=FAST_POLL,
            retry=RETRY,
            webhooks=receiver,
        )
        async with client:
            with anyio.fail_after(90):
                jobs = (client.imagine(prompt) for prompt in prompts)
                async with client.run_many(jobs, via=via) as results:  # type: ignore[arg-type]
                    async for outcome in results:
                        outcomes.append(outcome)
            assert results.unfinished == []
            assert open_connections(client) == 0, "a connection is still checked out"
            assert client.statistics().limiter.in_flight == 0
        assert client._pool.closed
        leftover = {t for t in asyncio.all_tasks() - before if not t.done() and not _is_server_task(t)}
        if leftover:
            # aiohttp ends a request's body writer by itself once its connection is closed, a few loop
            # turns after the session: a bounded moment for that; a task still running then is a leak.
            await asyncio.wait(leftover, timeout=10)
            leftover = {t for t in leftover if not t.done()}
        assert leftover == set(), f"tasks left running: {leftover}"
        stats = None
        if receiver is not None:
            stats = receiver.statistics()
            assert stats.open_routes == 0, "a webhook route outlived its job"
        lost_ids = [
            f.task_id
            for f in emu.fault_log
            if f.path == SUBMIT and f.phase == "after" and f.kind in AMBIGUOUS_KINDS
        ]
        assert all(lost_ids), "an after-fault on a submit names the task it made"
        # Snapshots first: the look-up below is one more (unfaulted) request.
        run = Run(
            prompts=prompts,
            outcomes=outcomes,
            counters=dict(emu.counters),
            faults=dict(emu.faults),
            fault_log=list(emu.fault_log),
            tasks_per_prompt=dict(emu.tasks_per_prompt),
            requests=list(emu.requests),
            lost_tasks=await task_prompts(emu, [str(i) for i in lost_ids]),
            receiver=stats,
        )
    return run


async def task_prompts(emu: Emulator, task_ids: list[str]) -> dict[str, str]:
    """The prompt of each task, read with a raw (unfaulted) ``multi_fetch``."""
    if not task_ids:
        return {}
    headers = {"X-API-KEY": DEFAULT_TOKEN, "x-mjasync-fault": "none"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{emu.url}/mj/v2/multi_fetch", json={"task_ids": task_ids}, headers=headers
        ) as resp:
            assert resp.status == 200
            data = (await resp.json())["data"]
    return {task_id: task["meta"]["task_request"]["prompt"] for task_id, task in data.items()}


def check_faults(run: Run, *, lookup_faults: int) -> None:
    """At least 20 % of the requests faulted, every GoAPI kind drawn, submits and lookups both hit."""
    counters, faults = run.counters, run.faults
    assert counters["faulted_requests"] >= 0.2 * counters["requests"], counters
    assert {kind for kind in GOAPI_KINDS if faults[kind] == 0} == set(), faults
    assert all(faults[kind] == 0 for kind in STREAM_KINDS), "GoAPI has no stream to cut or garble"
    assert counters["fault_after"] > 0, "some submits failed after their task was made"
    on_submits = Counter(f.kind for f in run.fault_log if f.path == SUBMIT)
    on_lookups = Counter(f.kind for f in run.fault_log if f.path in LOOKUPS)
    assert {kind for kind in AMBIGUOUS_KINDS | REFUSED_KINDS if not on_submits[kind]} == set(), on_submits
    assert sum(on_lookups.values()) >= lookup_faults, f"lookups were hardly faulted: {on_lookups}"
    # The request log and the fault log tell the same story about submits: each failing fault is
    # one submit that got that status (or none, for a reset).
    failed_submits = Counter(
        KIND_OF_STATUS[status] for statuses in run.submits.values() for status in statuses if status != 200
    )
    failing = Counter({kind: n for kind, n in on_submits.items() if kind in KIND_OF_STATUS.values()})
    assert failed_submits == failing, (failed_submits, failing)


def check_outcomes(run: Run) -> Counter[str]:
    """Each job ended with its own result, or with the error its faults force; nothing paid twice."""
    prompts = run.prompts
    assert sorted(o.index for o in run.outcomes) == list(range(JOBS))
    # --- nothing paid twice ---
    assert run.counters["submits"] == sum(run.tasks_per_prompt.values())
    assert max(run.tasks_per_prompt.values()) == 1, "a prompt has two tasks"
    lost_prompts = set(run.lost_tasks.values())
    assert len(lost_prompts) == len(run.lost_tasks), "two lost tasks share a prompt"

    ended: Counter[str] = Counter()
    task_ids: set[str] = set()
    for outcome in run.outcomes:
        prompt = prompts[outcome.index]
        banned = prompt.startswith("gore")
        tasks = run.tasks_per_prompt.get(prompt, 0)
        statuses = run.submits.get(prompt, [])
        ended[type(outcome.error).__name__ if outcome.error else "result"] += 1
        assert statuses, f"{prompt!r} was never submitted"
        # Only refusals are sent again; after an answer, or a submit of unknown fate, nothing is.
        *earlier, last = statuses
        assert set(earlier) <= REFUSED_STATUSES, f"{prompt!r} was re-POSTed after {statuses}"
        if last == 200:
            # Answered: the job ends with its own task's end, whatever its lookups met.
            assert tasks == 1, f"{prompt!r}: answered, yet {tasks} tasks"
            assert prompt not in lost_prompts
            if banned:
                assert isinstance(outcome.error, mjasync.JobFailedError), f"{prompt!r}: {outcome.error!r}"
                assert isinstance(outcome.error, mjasync.BannedPromptError), repr(outcome.error)
                assert not isinstance(outcome.error, mjasync.AmbiguousSubmitError)
                assert outcome.error.code == "banned_prompt", repr(outcome.error)
                assert outcome.task_id and outcome.error.task_id == outcome.task_id
            else:
                assert outcome.ok, f"{prompt!r}: answered, yet ended with {outcome.error!r}"
                result = outcome.result
                assert result is not None and result.is_final and result.progress == 100
                assert result.image_url and result.task_id == outcome.task_id
                assert result.raw["meta"]["task_request"]["prompt"] == prompt, "another job's task"
                assert result.task_id not in task_ids, "two jobs got the same task"
                assert result.task_id not in run.lost_tasks
                task_ids.add(result.task_id)
        elif last in AMBIGUOUS_STATUSES:
            # Its fate unknown and GoAPI unable to look it up: raised, never sent again.
            assert isinstance(outcome.error, mjasync.AmbiguousSubmitError), f"{prompt!r}: {outcome.error!r}"
            assert outcome.task_id is None
            # Its task exists exactly when the fault struck after the task was made.
            made = prompt in lost_prompts
            assert tasks == (1 if made else 0), f"{prompt!r}: {tasks} tasks, lost after making one: {made}"
            if last not in AMBIGUOUS_STATUSES:
                assert not made, f"{prompt!r}: a refusal ({last}) made a task"
        else:
            pytest.fail(f"{prompt!r}: submits {statuses} ended with {outcome.error!r}")
    return ended


def check_run(run: Run, *, lookup_faults: int = 20) -> Counter[str]:
    """Every invariant of a run with every GoAPI fault kind."""
    check_faults(run, lookup_faults=lookup_faults)
    assert run.lost_tasks, "some submits lost their answer after their task was made"
    ended = check_outcomes(run)
    answered = {prompt for prompt, statuses in run.submits.items() if statuses[-1] == 200}
    banned = sum(prompt.startswith("gore") for prompt in answered)
    assert ended == {
        "result": len(answered) - banned,
        "BannedPromptError": banned,  # a JobFailedError and a ModerationError both
        "AmbiguousSubmitError": JOBS - len(answered),
    }, ended
    assert ended["result"] >= 0.6 * JOBS, ended
    return ended


@pytest.mark.parametrize(("via", "seed"), [("poll", 21), ("stream", 22)])
async def test_goapi_chaos_every_job_ends_with_its_result_or_its_forced_error(via: str, seed: int) -> None:
    """1,000 GoAPI jobs under 25 % faults: results, or AmbiguousSubmitError only after an unknown-fate submit."""
    run = await run_chaos(f"{via}-{seed}", via, plan(seed))
    check_run(run)
    assert run.counters["polls"] > 0


#: Webhooks the emulator loses (the first that many due), so that jobs fall back to polling: a tenth of
#: the jobs' when awaited by callback (one webhook each), a fifth when streamed (about five each).
@pytest.mark.parametrize(("via", "seed", "dropped"), [("callback", 23, 100), ("stream", 24, 1000)])
async def test_goapi_chaos_with_webhooks(via: str, seed: int, dropped: int) -> None:
    """The same, awaited by webhook (callback) or progress webhooks (stream), some webhooks lost."""
    run = await run_chaos(f"hooks-{via}-{seed}", via, plan(seed, weight_429=0.3), drop_webhooks=dropped)
    # Streamed jobs hear progress webhooks so often that only those whose webhooks were lost poll.
    check_run(run, lookup_faults=1)
    stats = run.receiver
    assert stats is not None
    assert stats.delivered > 0 and stats.rejected == 0, stats
    assert run.counters["callbacks_dropped"] == dropped
    # Jobs whose webhook was lost, or came late, were found by polling.
    assert run.counters["polls"] > 0


async def test_a_503_on_a_goapi_submit_is_retried_to_its_result() -> None:
    """503 "busy" is a refusal, like 429: nothing was made, so the submit is sent again and succeeds."""
    run = await run_chaos("busy", "poll", plan(25, kinds={"503": 1.0}, scope="submits"))
    assert run.faults["503"] > 0
    assert run.fault_log and all(f.phase == "before" and f.task_id is None for f in run.fault_log)
    ended = check_outcomes(run)
    assert ended["AmbiguousSubmitError"] == 0
    busy = {prompt for prompt, statuses in run.submits.items() if statuses[-1] == 503}
    assert busy == set(), f"{len(busy)} jobs ended ambiguous after a 503 on their submit, e.g. {min(busy)!r}"
