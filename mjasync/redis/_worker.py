"""Fan-out layer of the scale-out: `Worker`, the loop that takes a run's jobs from Redis and runs each once.

Any number of workers, in any processes and hosts, share one `RunQueue`. Each paid job is submitted
once across all of them and across crashes, by this protocol (`gen` is the job's fencing token, bumped
by every take, so a step of an earlier owner is refused once someone else has taken the job):

1. Entries come from the stream's consumer group: new ones (XREADGROUP), or a dead or stopped
   worker's, idle for `claim_after` seconds (XAUTOCLAIM). A live worker's heartbeat claims its own
   entries again every `claim_after / 3`, so no one else takes them.
2. `take` owns the job under a new `gen`: an ended job is skipped; an accepted one (a task recorded)
   is waited on; an intent whose fence still holds is another's submit that may be going out, so it
   is left for later; an intent past its fence with no task is settled at the provider:
   `Client.find_task(job, since=intent_at)`, every task id the run holds made known to the client
   first so it is never adopted. Found: adopted. Proven absent: submitted. Cannot tell
   (`AmbiguousSubmitError`): the job ends ambiguous, never sent again.
3. A submit is announced first: `intent` writes a fence, `lease` seconds of Redis time. The POST runs
   inside a cancel scope that ends earlier by this host's clock (the lease, less a margin, from before
   the intent was sent), so every send starts and ends inside the fence; cut off by it, the intent
   stays for whoever settles it after the fence.
4. The task id is recorded (`record_task`, fenced by `gen`) before anything else happens.
5. The task is waited on, holding a slot of the limiter from before the intent to the result; then
   `finish` writes the outcome, appends it to the `done` stream and acknowledges the entry, all in one
   step (a grid's follow-ups are enqueued in it too). Fenced out at any step: the job is dropped, as
   another worker owns it now.

Fail closed: when Redis cannot be reached no submit goes out (there is no intent without it); the job
waits and tries again when Redis answers, while waits on submitted tasks go on and their outcomes are
held until Redis takes them. `statistics().coordinator_down` says so meanwhile. A script finding the
run's epoch missing or changed means Redis lost the run's data: `run()` stops every job and raises
`RunDataLostError`, rather than guess which jobs were paid for.

For tests only, `MJASYNC_WORKER_KILL_AT="<point>[:<n>]"` SIGKILLs the process at the n-th time (the
first by default) it reaches `after-intent` (the intent written, nothing sent), `after-post` (the
submit answered, its task id known only here) or `before-record` (about to record a task: sent, or
found by settling). Unset, as it always is outside tests, it does nothing.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

import anyio
from anyio.abc import TaskGroup

from .._client import Client
from .._exceptions import (
    AmbiguousSubmitError,
    APIStatusError,
    AuthenticationError,
    CoordinatorError,
    CoordinatorUnavailableError,
    InvalidRequestError,
    JobFailedError,
    MJError,
    RateLimitError,
    ResponseDecodeError,
    TaskNotFoundError,
)
from .._job import ImagineHandle, ImagineJob
from .._limiter import Limiter
from .._models.errors import error_info
from .._models.results import ImagineResult
from .._retry import made_no_task
from .._types import WaitVia
from ._connect import check_name
from ._queue import Entry, QueuedJob, RunOutcome, RunQueue, Taken

__all__ = [
    "KILL_AT_ENV",
    "KILL_POINTS",
    "EventKind",
    "Worker",
    "WorkerEvent",
    "WorkerStatistics",
    "job_for",
]

T = TypeVar("T")

#: The test-only kill switch (see the module docstring).
KILL_AT_ENV: Final = "MJASYNC_WORKER_KILL_AT"
KILL_POINTS: Final = ("after-intent", "after-post", "before-record")
#: The local fence ends this share of the lease (at most `_MAX_FENCE_MARGIN` s) before Redis's: room for
#: a request cut off at its end to be over at the provider before anyone looks for its task.
_FENCE_MARGIN: Final = 0.2
_MAX_FENCE_MARGIN: Final = 5.0
#: Waits between tries while Redis cannot be reached: doubling from the first, up to the last.
_FIRST_RETRY: Final = 0.05
_MAX_RETRY: Final = 1.0
#: Settling looks again at most this many times when the task it found turns out held by another job.
_SETTLE_TRIES: Final = 3

EventKind = Literal[
    "taken",
    "submitting",
    "accepted",
    "adopted",
    "resumed",
    "ended",
    "fenced-out",
    "left",
    "coordinator-down",
    "coordinator-up",
]


@dataclass(frozen=True, slots=True)
class WorkerEvent:
    """Something a worker did or met, for progress lines (`Worker(on_event=...)`).

    `taken` (a job is this worker's now), `submitting` (its intent is written; the submit goes out),
    `accepted` (its task is recorded), `adopted` (its lost submit's task was found at the provider),
    `resumed` (waiting on a task recorded by an earlier owner), `ended` (its outcome is written),
    `fenced-out` (another worker owns it now: dropped), `left` (left for later: `detail` says why),
    `coordinator-down` / `coordinator-up` (Redis stopped / started answering: no submit goes out
    meanwhile).
    """

    kind: EventKind
    key: str | None = None
    task_id: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """What a worker has done so far (`Worker.statistics()`)."""

    name: str
    #: Jobs taken (owned under a new fencing token).
    taken: int
    #: Submits this worker sent, each after its intent (answered, refused or cut off by the fence).
    submitted: int
    #: Lost submits whose task settling found at the provider.
    adopted: int
    #: Waits on tasks an earlier owner had recorded.
    resumed: int
    #: Outcomes this worker wrote, and of which kind.
    ended: int
    ok: int
    failed: int
    ambiguous: int
    #: Jobs dropped because another worker had taken them.
    fenced_out: int
    #: Jobs left for later (another's live intent, a passing error): they are taken again.
    left: int
    #: Submits cut off by their fence (their intent is settled after it).
    fence_expired: int
    #: Jobs this worker holds now, and those of them whose outcome waits for Redis.
    in_flight: int
    finishing: int
    #: Whether Redis cannot be reached now (no submit goes out), how many times it stopped answering,
    #: and how many calls to it failed.
    coordinator_down: bool
    outages: int
    coordinator_errors: int
    #: Heartbeats sent, and Redis round trips of the worker's queue.
    heartbeats: int
    round_trips: int


def job_for(client: Client, spec: QueuedJob) -> ImagineJob:
    """The job (built, not sent) a worker runs for `spec`: an imagine, or a follow-up action on `target`.

    Raises `InvalidRequestError` for a job the client refuses (nothing is sent then).
    """
    if spec.action is not None:
        if spec.target is None:
            raise InvalidRequestError(f"the follow-up {spec.key!r} has no image id to act on")
        return client.act(spec.target, spec.action, mode=spec.mode)
    return client.imagine(spec.prompt, image_urls=spec.image_urls, params=spec.params, mode=spec.mode)


def _ends_job(error: MJError) -> bool:
    """Whether `error` is the job's outcome, or trying again later could still succeed."""
    if isinstance(error, (JobFailedError, InvalidRequestError, ResponseDecodeError, TaskNotFoundError)):
        return True
    if isinstance(error, (AuthenticationError, RateLimitError)):
        return False  # fix the key, or wait: the job itself is fine
    status = error.status if isinstance(error, APIStatusError) else None
    return status is not None and 400 <= status < 500 and status != 408


def _default_name() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname())[:60] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


class _KillSwitch:
    """The test-only kill points: SIGKILL this process at the n-th time it reaches one."""

    def __init__(self, setting: str | None) -> None:
        self._point: str | None = None
        self._nth = 1
        self._seen = 0
        if not setting:
            return
        point, _, nth = setting.partition(":")
        if point not in KILL_POINTS or (nth and not nth.isdigit()):
            raise InvalidRequestError(f"{KILL_AT_ENV} is '<point>[:<n>]' with a point of {KILL_POINTS}")
        self._point, self._nth = point, int(nth or 1)

    def at(self, point: str) -> None:
        if point != self._point:
            return
        self._seen += 1
        if self._seen == self._nth:
            os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9` would: no cleanup, no flush


class _Absent:
    """Settling proved the lost submit made no task: submit it."""


_ABSENT: Final = _Absent()


@dataclass(slots=True, eq=False)
class _Held:
    """A job this worker holds: its entry, its fencing token once taken, and the scope that cancels it."""

    entry: Entry
    gen: int = 0
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


@dataclass(frozen=True, slots=True)
class _Ending:
    """A job's outcome, and the follow-ups to enqueue with it."""

    outcome: RunOutcome
    follow_ups: tuple[QueuedJob, ...] = ()


@dataclass(slots=True)
class _Counts:
    taken: int = 0
    submitted: int = 0
    adopted: int = 0
    resumed: int = 0
    ended: int = 0
    ok: int = 0
    failed: int = 0
    ambiguous: int = 0
    fenced_out: int = 0
    left: int = 0
    fence_expired: int = 0
    finishing: int = 0
    outages: int = 0
    coordinator_errors: int = 0
    heartbeats: int = 0


class Worker:
    """Takes jobs from a run's queue and runs each exactly once, with any number of other workers.

    ```python
    async with (
        RunQueue(url, account="team", run="night") as queue,
        mjasync.Client() as mj,
    ):
        await Worker(mj, queue, concurrency=16).run(until_done=True)
    ```

    `concurrency` jobs at most at once in this worker; `limits` (the client's own limiter unless
    given: pass the same `SharedLimits` as the client's `limiter=`) caps the jobs in flight, and a job
    holds one of its slots from before its submit to its result. `lease` is how long a submit's fence
    lasts (longer than a submit takes, retries included); `claim_after` how long a dead worker's jobs
    wait before another takes them. `via` is "poll" or "callback" (the client's `WebhookReceiver`):
    a worker always submits asynchronously, so that only the submit is inside the fence.
    `on_event` gets a `WorkerEvent` for each step, for progress lines.

    The client must not resubmit ambiguous submits (`RetryPolicy(on_ambiguous_submit="resubmit")` is
    refused): that could pay twice, which the run is here to prevent.
    """

    def __init__(
        self,
        client: Client,
        queue: RunQueue,
        *,
        name: str | None = None,
        concurrency: int = 8,
        lease: float = 60.0,
        claim_after: float = 30.0,
        limits: Limiter | None = None,
        via: WaitVia = "poll",
        on_event: Callable[[WorkerEvent], None] | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidRequestError(f"concurrency must be an int >= 1, not {concurrency!r}")
        if not lease > 0 or not claim_after > 0:
            raise InvalidRequestError(
                f"lease and claim_after must be > 0 seconds, not {lease!r}, {claim_after!r}"
            )
        engine = client._engine
        if via not in ("poll", "callback"):
            raise InvalidRequestError(
                f"a worker waits via 'poll' or 'callback' (it submits asynchronously), not {via!r}"
            )
        if via == "callback" and engine.callbacks is None:
            raise InvalidRequestError("via='callback' needs a client with webhooks=WebhookReceiver(...)")
        if engine.retry.on_ambiguous_submit == "resubmit":
            raise InvalidRequestError(
                "a worker's client must not resubmit ambiguous submits (RetryPolicy(on_ambiguous_submit="
                "'resubmit')): that could pay for a job twice"
            )
        self.name = check_name(name if name is not None else _default_name(), "worker name")
        self._client = client
        self._queue = queue
        self._concurrency = concurrency
        self._lease = lease
        self._fence = lease - min(lease * _FENCE_MARGIN, _MAX_FENCE_MARGIN)
        self._claim_after = claim_after
        self._limiter: Limiter = limits if limits is not None else engine.limiter
        self._via = via
        self._on_event = on_event
        self._kill = _KillSwitch(os.environ.get(KILL_AT_ENV))
        # The reader's wait for new entries stays under the connection's timeout: a quiet stream is not
        # an unreachable Redis.
        self._block = min(1.0, queue.timeout / 2)
        self._n = _Counts()
        self._down = False
        self._held: dict[str, _Held] = {}
        #: Task ids made known to the client as held by the run (settling never adopts them).
        self._known: set[str] = set()
        self._running = False
        self._group: TaskGroup | None = None
        self._room: anyio.Event | None = None
        self._stopped_by: CoordinatorError | None = None

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} on {self._queue!r}>"

    def statistics(self) -> WorkerStatistics:
        """What this worker has done so far, and whether Redis answers now."""
        n = self._n
        return WorkerStatistics(
            name=self.name,
            taken=n.taken,
            submitted=n.submitted,
            adopted=n.adopted,
            resumed=n.resumed,
            ended=n.ended,
            ok=n.ok,
            failed=n.failed,
            ambiguous=n.ambiguous,
            fenced_out=n.fenced_out,
            left=n.left,
            fence_expired=n.fence_expired,
            in_flight=len(self._held),
            finishing=n.finishing,
            coordinator_down=self._down,
            outages=n.outages,
            coordinator_errors=n.coordinator_errors,
            heartbeats=n.heartbeats,
            round_trips=self._queue.round_trips,
        )

    # -- the loop ---------------------------------------------------------------------------------------

    async def run(self, *, until_done: bool = False) -> None:
        """Take and run jobs until cancelled or, with `until_done`, until every job of the run has ended.

        Raises `RunDataLostError` (after stopping every job) when Redis lost the run's data.
        """
        if self._running:
            raise RuntimeError("this worker is running already")
        self._running = True
        self._stopped_by = None
        self._room = anyio.Event()
        try:
            await self._coordinated(self._queue.epoch)
            async with anyio.create_task_group() as group:
                self._group = group
                group.start_soon(self._heartbeat)
                await self._read(group, until_done=until_done)
                group.cancel_scope.cancel()
        finally:
            self._running = False
            self._group = None
        if self._stopped_by is not None:
            raise self._stopped_by

    def _stop(self, error: CoordinatorError) -> None:
        """Stop the run (the first reason is the one `run()` raises)."""
        if self._stopped_by is None:
            self._stopped_by = error
        if self._group is not None:
            self._group.cancel_scope.cancel()

    async def _read(self, group: TaskGroup, *, until_done: bool) -> None:
        """Hand entries to jobs while there is room: a dead worker's idle ones first, then new ones."""
        cursor = "0-0"
        delay = _FIRST_RETRY
        while True:
            free = self._concurrency - len(self._held)
            if free <= 0:
                assert self._room is not None
                await self._room.wait()
                continue
            try:
                claimed = await self._queue.claim(self.name, free, min_idle=self._claim_after, cursor=cursor)
                cursor, entries = claimed.cursor, claimed.entries
                if not entries:
                    if until_done and claimed.ended >= claimed.total and not self._held:
                        return
                    entries = await self._queue.read_new(self.name, free, block=self._block)
            except CoordinatorUnavailableError as error:
                self._went_down(error)
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY)
                continue
            except CoordinatorError as error:
                self._stop(error)
                return
            self._came_up()
            delay = _FIRST_RETRY
            for entry in entries:
                if entry.key in self._held:
                    continue  # already running here (its entry came back while Redis was away)
                held = self._held[entry.key] = _Held(entry)
                group.start_soon(self._hold, held)

    async def _heartbeat(self) -> None:
        """Keep this worker's entries its own (and notice the jobs others took, or a lost run)."""
        while True:
            await anyio.sleep(self._claim_after / 3)
            # The jobs as they are now: by the time the answer is in, one may have ended and its entry
            # been taken again by a new job of this worker's, which the answer is not about.
            taken = {held.entry.key: held for held in self._held.values() if held.gen}
            try:
                lost = await self._queue.touch(self.name, [held.entry for held in taken.values()])
            except CoordinatorUnavailableError as error:
                self._went_down(error)
                continue
            except CoordinatorError as error:
                self._stop(error)
                return
            self._came_up()
            self._n.heartbeats += 1
            for key in lost:
                held = taken[key]
                if self._held.get(key) is held and not held.scope.cancel_called:
                    held.scope.cancel()
                    self._fenced_out(key)

    async def _hold(self, held: _Held) -> None:
        """Run one job, and give its room back however it ends."""
        try:
            with held.scope:
                await self._process(held)
        except CoordinatorError as error:  # not an outage (those are waited out): a lost run
            self._stop(error)
        finally:
            self._held.pop(held.entry.key, None)
            assert self._room is not None
            self._room.set()
            self._room = anyio.Event()

    async def _process(self, held: _Held) -> None:
        key = held.entry.key
        queue = self._queue
        taken = await self._coordinated(lambda: queue.take(key, self.name, held.entry.id))
        if taken.kind in ("ended", "missing"):
            return
        if taken.kind == "fenced":
            self._left(
                key, f"another worker's submit may be going out ({taken.wait:.1f} s left on its fence)"
            )
            return
        held.gen = taken.gen
        self._n.taken += 1
        self._event("taken", key, detail=taken.state or "")
        ending = await self._run_taken(held, taken)
        if ending is not None:
            await self._finish(held, ending)

    async def _run_taken(self, held: _Held, taken: Taken) -> _Ending | None:
        """What the job comes to (None: dropped, or left for later), holding a slot of the limiter."""
        spec = taken.spec
        assert spec is not None
        limiter = self._limiter
        await self._coordinated(lambda: limiter.acquire(held))
        try:
            if taken.state == "accepted" and taken.task_id:
                self._n.resumed += 1
                self._event("resumed", spec.key, taken.task_id)
                handle = self._client.task(taken.task_id)
                return await self._wait(spec, handle, attempts=taken.attempts, adopted=False)
            if taken.state == "intent":
                settled = await self._settle(held, spec, taken)
                if not isinstance(settled, _Absent):
                    return settled
            return await self._submit(held, spec)
        finally:
            limiter.release(held)

    async def _settle(self, held: _Held, spec: QueuedJob, taken: Taken) -> _Ending | _Absent | None:
        """An intent past its fence with no task: is there a task at the provider?"""
        since = taken.intent_at or 0.0
        for _ in range(_SETTLE_TRIES):
            await self._know_run_tasks()
            job = self._build(spec)
            if isinstance(job, _Ending):
                return job
            try:
                found = await self._client.find_task(job, since=since)
            except AmbiguousSubmitError as error:
                return self._failure(spec, error, state="ambiguous", attempts=taken.attempts)
            except CoordinatorError as error:
                if not isinstance(error, CoordinatorUnavailableError):
                    raise
                self._went_down(error)
                self._left(spec.key, "Redis could not be reached while its lost submit was looked up")
                return None
            except MJError as error:
                self._left(
                    spec.key, f"its lost submit could not be looked up ({type(error).__name__}: {error})"
                )
                return None
            finally:
                job.close()  # only read: the lookup compares its request
            if found is None:
                return _ABSENT
            self._kill.at("before-record")
            adopt = functools.partial(self._queue.record_task, spec.key, held.gen, found, adopted=True)
            verdict = await self._coordinated(adopt)
            if verdict == "fenced":
                self._fenced_out(spec.key)
                return None
            if verdict == "ok":
                self._known.add(found)
                self._n.adopted += 1
                self._event("adopted", spec.key, found)
                return await self._wait(spec, self._client.task(found), attempts=taken.attempts, adopted=True)
            # "held": another job of the run recorded it since the ids were read; look again.
        self._left(spec.key, "the tasks its lookup found kept turning out to be other jobs'")
        return None

    async def _submit(self, held: _Held, spec: QueuedJob) -> _Ending | None:
        """Announce the submit, send it inside the fence, record its task, wait for the result."""
        delay = _FIRST_RETRY
        while True:
            job = self._build(spec)
            if isinstance(job, _Ending):
                return job
            try:
                done = await self._submit_once(held, spec, job)
            finally:
                job.close()  # a job never sent (no intent, a refusal before the send) is discarded quietly
            if done is not None or self._stopped_by is not None:
                return None if done is None else done[0]
            # The limiter could not reach Redis before the send: nothing went out; try again.
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY)

    async def _submit_once(
        self, held: _Held, spec: QueuedJob, job: ImagineJob
    ) -> tuple[_Ending | None] | None:
        """One go at the submit: `(what the job came to,)`, or None to go again (Redis was away)."""
        key, queue = spec.key, self._queue
        # A shared pause is waited out before the fence starts, so the fence covers only the send.
        await self._coordinated(self._limiter.before_request)
        token = secrets.token_hex(8)
        delay = _FIRST_RETRY
        while True:
            started = anyio.current_time()  # before the intent leaves: this host's fence ends no later
            try:
                intent = await queue.intent(key, self.name, held.gen, self._lease, token)
            except CoordinatorUnavailableError as error:
                self._went_down(error)  # no intent, no submit: fail closed
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY)
                continue
            self._came_up()
            break
        if intent is None:
            self._fenced_out(key)
            return (None,)
        self._kill.at("after-intent")
        self._n.submitted += 1
        self._event("submitting", key)
        handle: ImagineHandle | None = None
        try:
            with anyio.CancelScope(deadline=started + self._fence):
                handle = await job._submit(callbacks=self._via == "callback")
        except AmbiguousSubmitError as error:
            return (self._failure(spec, error, state="ambiguous", attempts=intent.attempts),)
        except CoordinatorUnavailableError as error:
            # The limiter could not reach Redis before the send (it fails closed): nothing went out.
            self._went_down(error)
            if not await self._coordinated(lambda: queue.release(key, held.gen)):
                self._fenced_out(key)
                return (None,)
            return None
        except CoordinatorError:
            raise
        except MJError as error:
            if not made_no_task(error):
                self._left(key, f"its submit may have made a task; it is looked up after its fence ({error})")
                return (None,)
            if _ends_job(error):
                return (self._failure(spec, error, state="failed", attempts=intent.attempts),)
            # Turned away, or never sent: withdraw the intent, so the next try needs no lookup.
            if not await self._coordinated(lambda: queue.release(key, held.gen)):
                self._fenced_out(key)
                return (None,)
            self._left(key, f"{type(error).__name__}: {error}")
            return (None,)
        if handle is None:
            self._n.fence_expired += 1
            self._left(key, "its fence ended before its submit was settled; it is looked up after the fence")
            return (None,)
        self._kill.at("after-post")
        self._kill.at("before-record")
        task_id = handle.task_id
        verdict = await self._coordinated(lambda: queue.record_task(key, held.gen, task_id))
        if verdict == "fenced":
            self._fenced_out(key)
            return (None,)
        if verdict == "held":
            # The submit's answer was lost and the engine's own lookup took another job's identical
            # task for it: this job's own fate is unknown.
            lost = AmbiguousSubmitError(
                f"the task found for this submit ({task_id}) is another job's of the run; this job's "
                "submit may or may not have made one"
            )
            return (self._failure(spec, lost, state="ambiguous", attempts=intent.attempts),)
        self._known.add(task_id)
        self._event("accepted", key, task_id)
        return (await self._wait(spec, handle, attempts=intent.attempts, adopted=False),)

    async def _wait(
        self, spec: QueuedJob, handle: ImagineHandle, *, attempts: int, adopted: bool
    ) -> _Ending | None:
        """Wait for the task's result (None: an error a later try could get past; left)."""
        delay = _FIRST_RETRY
        while True:
            try:
                result = await handle.wait()
            except CoordinatorUnavailableError as error:
                # A shared limiter could not tell whether a pause is on: the task runs on regardless.
                self._went_down(error)
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY)
                continue
            except CoordinatorError:
                raise
            except MJError as error:
                if _ends_job(error):
                    return self._failure(
                        spec,
                        error,
                        state="failed",
                        attempts=attempts,
                        task_id=handle.task_id,
                        adopted=adopted,
                    )
                self._left(spec.key, f"waiting on {handle.task_id}: {type(error).__name__}: {error}")
                return None
            break
        self._limiter.succeeded()  # while the slot is held: its level counts this job
        return _Ending(
            RunOutcome(
                key=spec.key,
                ok=True,
                state="ok",
                prompt=spec.prompt,
                task_id=handle.task_id,
                result=result,
                retries=result.retries_taken,
                submits=attempts,
                adopted=adopted,
                worker=self.name,
            ),
            self._follow_ups(spec, result),
        )

    def _follow_ups(self, spec: QueuedJob, result: ImagineResult) -> tuple[QueuedJob, ...]:
        if spec.action is not None or not spec.upscale:
            return ()
        target = self._client.follow_up_id(result)
        return tuple(
            QueuedJob(
                key=f"{spec.key}/upscale{n}",
                prompt=spec.prompt,
                mode=spec.mode,
                action=f"upscale{n}",
                target=target,
            )
            for n in spec.upscale
        )

    async def _finish(self, held: _Held, ending: _Ending) -> None:
        """Write the outcome, holding it until Redis takes it."""
        outcome = ending.outcome
        self._n.finishing += 1
        try:
            written = await self._coordinated(
                lambda: self._queue.finish(outcome.key, held.gen, outcome, ending.follow_ups)
            )
        finally:
            self._n.finishing -= 1
        if not written:
            self._fenced_out(outcome.key)
            return
        n = self._n
        n.ended += 1
        if outcome.state == "ok":
            n.ok += 1
        elif outcome.state == "failed":
            n.failed += 1
        else:
            n.ambiguous += 1
        detail = outcome.state if outcome.error is None else f"{outcome.state}: {outcome.error.type}"
        self._event("ended", outcome.key, outcome.task_id, detail=detail)

    # -- helpers ----------------------------------------------------------------------------------------

    def _build(self, spec: QueuedJob) -> ImagineJob | _Ending:
        try:
            return job_for(self._client, spec)
        except InvalidRequestError as error:
            return self._failure(spec, error, state="failed", attempts=0)

    def _failure(
        self,
        spec: QueuedJob,
        error: MJError,
        *,
        state: Literal["failed", "ambiguous"],
        attempts: int,
        task_id: str | None = None,
        adopted: bool = False,
    ) -> _Ending:
        outcome = RunOutcome(
            key=spec.key,
            ok=False,
            state=state,
            prompt=spec.prompt,
            task_id=task_id or getattr(error, "task_id", None),
            error=error_info(error),
            retries=int(getattr(error, "retries_taken", 0) or 0),
            submits=attempts,
            adopted=adopted,
            worker=self.name,
        )
        return _Ending(outcome)

    async def _know_run_tasks(self) -> None:
        """Make every task id the run holds known to the client, so a lookup never adopts one."""
        held = await self._coordinated(self._queue.held_task_ids)
        for task_id in held - self._known:
            self._client.task(task_id)  # held by the client from now on
        self._known |= held

    async def _coordinated(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, tried again while Redis cannot be reached (each try bounded by its timeout)."""
        delay = _FIRST_RETRY
        while True:
            try:
                value = await call()
            except CoordinatorUnavailableError as error:
                self._went_down(error)
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY)
                continue
            self._came_up()
            return value

    def _went_down(self, error: CoordinatorUnavailableError) -> None:
        self._n.coordinator_errors += 1
        if not self._down:
            self._down = True
            self._n.outages += 1
            self._event("coordinator-down", detail=f"{error}")

    def _came_up(self) -> None:
        if self._down:
            self._down = False
            self._event("coordinator-up")

    def _fenced_out(self, key: str) -> None:
        self._n.fenced_out += 1
        self._event("fenced-out", key, detail="another worker owns it now")

    def _left(self, key: str, why: str) -> None:
        self._n.left += 1
        self._event("left", key, detail=why)

    def _event(
        self, kind: EventKind, key: str | None = None, task_id: str | None = None, *, detail: str = ""
    ) -> None:
        if self._on_event is not None:
            self._on_event(WorkerEvent(kind, key, task_id, detail))
