"""Transport layer of the scale-out: a run's queue of jobs on Redis, and the fenced steps that run each once.

A run `R` of account `A` keeps, under the account's hash tag `T = {mj:A}`:

    T:run:R:meta       HASH    epoch, created, total, and the count of jobs in each state (n:<state>)
    T:run:R:jobs       STREAM  one entry per job key; consumer group `workers`
    T:run:R:job:<key>  HASH    the job's spec, state, owner, fencing token and task (see _queue_scripts)
    T:run:R:keys       ZSET    key -> enqueue order
    T:run:R:tasks      SET     every task id the run holds (settling a lost submit never adopts one)
    T:run:R:done       STREAM  one entry per ended job, with its outcome (`RunQueue.outcomes` reads it)

`RunQueue` enqueues (idempotent by key), reports status and outcomes, and offers the steps a `Worker`
runs each job through, each one Lua script checking the run's epoch first: `take` (own the job under a
new fencing token, `gen`), `intent` (announce a submit, fenced until a time), `record_task`, `finish`
(and `release`, `touch`, `claim`). The reasoning that makes them exactly-once is in `_worker`.

Every Redis error becomes `CoordinatorUnavailableError`, and a missing or changed epoch
`RunDataLostError` (`_connect.coordinator_errors`); every wait is bounded by the connection's timeout.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, cast, get_args

import msgspec
import redis.exceptions
from redis.commands.core import AsyncScript

from .._exceptions import CoordinatorError, InvalidRequestError, RunDataLostError
from .._models.errors import ErrorInfo
from .._models.params import PromptParams
from .._models.results import ImagineResult
from .._types import Mode
from ._connect import account_tag, check_name, connect, coordinator_errors, describe
from ._queue_scripts import CLAIM, ENQUEUE, FINISH, INTENT, PROGRESS, RECORD, RELEASE, START, TAKE, TOUCH

__all__ = [
    "GROUP",
    "MAX_KEY_CHARS",
    "Claimed",
    "Entry",
    "Intent",
    "JobRecord",
    "ErrorInfo",
    "QueuedJob",
    "RunOutcome",
    "RunQueue",
    "RunStatus",
    "Taken",
]

#: The stream's consumer group every worker reads in.
GROUP: Final = "workers"
#: A job key is at most this long (it becomes part of a Redis key).
MAX_KEY_CHARS: Final = 512
#: Jobs per enqueue script call, and outcomes per read of the `done` stream (bounded replies).
_ENQUEUE_BATCH: Final = 256
_DONE_BATCH: Final = 200
#: Task ids per `SSCAN` page when the run's held tasks are read.
_SCAN_PAGE: Final = 1000
_MODES: Final = get_args(Mode)

EndState = Literal["ok", "failed", "ambiguous"]
JobState = Literal["queued", "intent", "accepted", "ok", "failed", "ambiguous"]


class QueuedJob(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One job of a run: a grid (`imagine`) from `prompt`, or a follow-up `action` on an earlier image.

    `key` names it in the run (enqueueing a key twice adds nothing). A grid with `upscale=(1, 3)` gets
    the follow-ups `<key>/upscale1` and `<key>/upscale3` enqueued when it ends ok; those carry
    `action` ("upscale1") and `target` (the id the provider names the grid's image by), set by the
    worker.
    """

    key: str
    prompt: str
    mode: Mode | None = None
    params: PromptParams | None = None
    image_urls: tuple[str, ...] = ()
    upscale: tuple[int, ...] = ()
    #: A follow-up's action on `target` (enqueued by the worker); None for a grid.
    action: str | None = None
    #: The id a follow-up acts on (`Client.follow_up_id` of its grid's result).
    target: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not 0 < len(self.key) <= MAX_KEY_CHARS:
            raise InvalidRequestError(f"a job key is 1-{MAX_KEY_CHARS} characters, not {self.key!r:.80}")
        if not isinstance(self.prompt, str):
            raise InvalidRequestError(f"job {self.key!r}: prompt must be a string")
        if self.mode is not None and self.mode not in _MODES:
            raise InvalidRequestError(f"job {self.key!r}: mode must be one of {_MODES}, not {self.mode!r}")
        if not all(isinstance(url, str) for url in self.image_urls):
            raise InvalidRequestError(f"job {self.key!r}: image_urls must be strings")
        if any(isinstance(n, bool) or n not in (1, 2, 3, 4) for n in self.upscale) or len(
            set(self.upscale)
        ) != len(self.upscale):
            raise InvalidRequestError(
                f"job {self.key!r}: upscale takes distinct indices 1-4, not {self.upscale}"
            )
        if self.action is not None and self.upscale:
            raise InvalidRequestError(f"job {self.key!r}: a follow-up has no follow-ups of its own")


class RunOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """One ended job of a run: its result, or why it has none. Each job ends exactly once.

    `state` is "ok", "failed" (the provider failed or refused it, or it was invalid), or "ambiguous"
    (its submit may have made a task the provider cannot show: never sent again, settle it by hand).
    """

    key: str
    ok: bool
    state: EndState
    #: The job's prompt (a follow-up's is its grid's).
    prompt: str = ""
    task_id: str | None = None
    result: ImagineResult | None = None
    error: ErrorInfo | None = None
    #: Retries the client took for it (sends and lookups), as the result or error said.
    retries: int = 0
    #: Submits announced for it (intents): more than 1 only when earlier ones were proven to make no task.
    submits: int = 0
    #: Whether its task was found at the provider after its submitter died, rather than sent by the
    #: worker that ended it.
    adopted: bool = False
    #: The worker that ended it.
    worker: str | None = None


class RunStatus(msgspec.Struct, frozen=True):
    """How many jobs of a run are in each state."""

    total: int = 0
    queued: int = 0
    #: Announced (an intent written), their task not recorded yet.
    submitting: int = 0
    #: Sent, their task recorded, not ended yet.
    accepted: int = 0
    ok: int = 0
    failed: int = 0
    ambiguous: int = 0

    @property
    def ended(self) -> int:
        """Jobs that have their outcome."""
        return self.ok + self.failed + self.ambiguous

    @property
    def done(self) -> bool:
        """Whether every job enqueued so far has ended."""
        return self.ended >= self.total


@dataclass(frozen=True, slots=True)
class Entry:
    """A job's entry in the run's stream, as a worker holds it."""

    id: str
    key: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """Entries a worker got (a dead worker's idle ones first, then new ones), and the run's progress."""

    cursor: str
    entries: list[Entry]
    total: int
    ended: int


@dataclass(frozen=True, slots=True)
class Taken:
    """What `take` found. `kind`: "own" (the caller owns the job under `gen`), "fenced" (another's
    submit may be going out until `wait` seconds from now: leave it), "ended" or "missing" (nothing to do).
    """

    kind: Literal["own", "fenced", "ended", "missing"]
    gen: int = 0
    state: JobState | None = None
    spec: QueuedJob | None = None
    task_id: str | None = None
    #: Unix time of the last intent (Redis's clock), when there was one.
    intent_at: float | None = None
    attempts: int = 0
    wait: float = 0.0
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Intent:
    """A written intent: Redis's times (unix seconds) and the job's submits so far, this one included."""

    intent_at: float
    fence_until: float
    attempts: int


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job's hash as it stands (for status listings and tests)."""

    key: str
    state: JobState
    gen: int
    owner: str | None
    task_id: str | None
    attempts: int
    takes: int
    adopted: bool
    intent_at: float | None
    fence_until: float | None
    outcome: RunOutcome | None


_encoder: Final = msgspec.json.Encoder()
_spec_decoder: Final = msgspec.json.Decoder(QueuedJob)
_outcome_decoder: Final = msgspec.json.Decoder(RunOutcome)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(decoder: msgspec.json.Decoder[Any], data: object, what: str) -> Any:
    try:
        return decoder.decode(cast("bytes", data))
    except (msgspec.DecodeError, TypeError) as exc:
        raise CoordinatorError(f"undecodable {what} in Redis: {exc}") from None


class RunQueue:
    """One run's queue of jobs on Redis: enqueue, status, outcomes, and the fenced steps workers use.

    ```python
    async with RunQueue("redis://127.0.0.1:6379/0", account="team", run="night") as queue:
        await queue.start()
        await queue.enqueue(QueuedJob(key=f"p{i}", prompt=p) for i, p in enumerate(prompts))
        async for outcome in queue.outcomes():
            print(outcome.key, outcome.ok)
    ```

    `start()` writes the run's epoch (once; later calls return it). Everything else needs it: a run
    whose epoch is missing or changed lost its data, and every call then raises `RunDataLostError`.
    Each Redis command waits at most `timeout` seconds; an unreachable Redis raises
    `CoordinatorUnavailableError`. The URL's password never shows (`describe`).
    """

    def __init__(self, url: str, *, account: str, run: str, timeout: float = 5.0) -> None:
        check_name(account)
        check_name(run, "run")
        self.account = account
        self.run = run
        self.timeout = timeout
        self._where = describe(url)
        self._redis = connect(url, owner=self, timeout=timeout)
        prefix = f"{account_tag(account)}:run:{run}:"
        self._meta = prefix + "meta"
        self._jobs = prefix + "jobs"
        self._job_prefix = prefix + "job:"
        self._keys = prefix + "keys"
        self._tasks = prefix + "tasks"
        self._done = prefix + "done"
        register = self._redis.register_script
        self._start = register(START)
        self._enqueue = register(ENQUEUE)
        self._take = register(TAKE)
        self._intent = register(INTENT)
        self._record = register(RECORD)
        self._finish = register(FINISH)
        self._release = register(RELEASE)
        self._touch = register(TOUCH)
        self._claim = register(CLAIM)
        self._progress = register(PROGRESS)
        self._epoch: str | None = None
        #: Redis commands and scripts sent so far (benchmark 7 reports them per job).
        self.round_trips = 0

    def __repr__(self) -> str:
        return f"<RunQueue {self._where} account={self.account!r} run={self.run!r}>"

    async def __aenter__(self) -> RunQueue:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._redis.aclose()

    # -- the run ----------------------------------------------------------------------------------------

    async def start(self) -> str:
        """Start the run (write its epoch, make its stream and group) or, if started, return its epoch.

        A queue that already knew the run's epoch and finds it gone raises `RunDataLostError`: the
        run's data is lost, and starting it afresh could pay for its jobs twice.
        """
        epoch = await self._script(
            self._start,
            [self._meta, self._jobs],
            [secrets.token_hex(8), GROUP, self._epoch or ""],
            "starting the run",
        )
        self._epoch = _text(epoch)
        return self._epoch

    async def epoch(self) -> str:
        """The run's epoch, read once (`RunDataLostError` when the run has none)."""
        if self._epoch is None:
            with coordinator_errors("reading the run's epoch"):
                self.round_trips += 1
                value = await cast("Any", self._redis.hget(self._meta, "epoch"))
            if value is None:
                raise RunDataLostError(
                    f"run {self.run!r} of account {self.account!r} at {self._where} has no epoch: it was "
                    "never started (RunQueue.start), or Redis lost its data"
                )
            self._epoch = _text(value)
        return self._epoch

    async def enqueue(self, jobs: Iterable[QueuedJob]) -> int:
        """Add `jobs` to the run; returns how many were new (a key already in the run adds nothing)."""
        epoch = await self.epoch()
        added = 0
        batch: list[str] = []
        for job in jobs:
            if not isinstance(job, QueuedJob):
                raise InvalidRequestError(f"enqueue takes QueuedJob objects, not {type(job).__name__}")
            batch += [job.key, _encoder.encode(job).decode()]
            if len(batch) >= 2 * _ENQUEUE_BATCH:
                added += await self._enqueue_batch(epoch, batch)
                batch = []
        if batch:
            added += await self._enqueue_batch(epoch, batch)
        return added

    async def _enqueue_batch(self, epoch: str, pairs: list[str]) -> int:
        keys = [self._meta, self._jobs, self._keys]
        return int(
            await self._script(self._enqueue, keys, [epoch, self._job_prefix, *pairs], "enqueueing jobs")
        )

    async def status(self) -> RunStatus:
        """How many jobs are in each state."""
        fields = await self._meta_fields()

        def number(name: str) -> int:
            return int(fields.get(name, 0))

        return RunStatus(
            total=number("total"),
            queued=number("n:queued"),
            submitting=number("n:intent"),
            accepted=number("n:accepted"),
            ok=number("n:ok"),
            failed=number("n:failed"),
            ambiguous=number("n:ambiguous"),
        )

    async def _meta_fields(self) -> dict[str, str]:
        epoch = await self.epoch()
        flat = await self._script(self._progress, [self._meta], [epoch], "reading the run's status")
        return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}

    def outcomes(self, *, follow: bool = True) -> AsyncIterator[RunOutcome]:
        """Every ended job's outcome, in the order they ended; with `follow`, then each new one as it
        ends, until every job of the run has ended. Each job comes once.

        Each read waits at most the connection's timeout. Redis unreachable raises
        `CoordinatorUnavailableError` (a new iteration starts from the first outcome again); the run's
        data lost, `RunDataLostError`.
        """
        return _Outcomes(self, follow)

    async def record(self, key: str) -> JobRecord | None:
        """The job `key` as Redis holds it now; None if the run has no such job."""
        await self.epoch()
        with coordinator_errors("reading a job"):
            self.round_trips += 1
            raw = await cast("Any", self._redis.hgetall(self._job_prefix + key))
        if not raw:
            return None
        fields = {_text(name): value for name, value in raw.items()}

        def text(name: str) -> str | None:
            value = fields.get(name)
            return None if value is None or value == b"" else _text(value)

        def seconds(name: str) -> float | None:
            value = text(name)
            return int(value) / 1000 if value else None

        outcome = fields.get("outcome")
        return JobRecord(
            key=key,
            state=cast("JobState", text("state")),
            gen=int(text("gen") or 0),
            owner=text("owner"),
            task_id=text("task_id"),
            attempts=int(text("attempts") or 0),
            takes=int(text("takes") or 0),
            adopted=text("adopted") == "1",
            intent_at=seconds("intent_at"),
            fence_until=seconds("fence_until"),
            outcome=None if outcome is None else _decode(_outcome_decoder, outcome, "outcome"),
        )

    # -- the fenced steps a worker runs a job through ------------------------------------------------------

    async def take(self, key: str, worker: str, entry_id: str) -> Taken:
        """Own the job `key` (bumping its `gen`), unless it has ended or another's submit may be going out."""
        epoch = await self.epoch()
        reply = await self._script(
            self._take,
            [self._meta, self._job_prefix + key, self._jobs],
            [epoch, worker, GROUP, entry_id],
            "taking a job",
        )
        kind = _text(reply[0])
        if kind == "ended":
            return Taken("ended", state=cast("JobState", _text(reply[1])))
        if kind == "missing":
            return Taken("missing")
        if kind == "fenced":
            return Taken("fenced", wait=int(reply[1]) / 1000, owner=_text(reply[2]) or None)
        intent_at = _text(reply[5])
        return Taken(
            "own",
            gen=int(reply[1]),
            state=cast("JobState", _text(reply[2])),
            spec=_decode(_spec_decoder, reply[3], "job spec"),
            task_id=_text(reply[4]) or None,
            intent_at=int(intent_at) / 1000 if intent_at else None,
            attempts=int(reply[6]),
        )

    async def intent(self, key: str, worker: str, gen: int, lease: float, token: str) -> Intent | None:
        """Announce a submit of `key` under `gen`, fenced for `lease` seconds from Redis's now.

        None when `gen` is stale (another worker owns the job) or the job is past submitting. A retry
        with the same `token` (after a lost reply) moves the fence on but counts one attempt.
        """
        epoch = await self.epoch()
        reply = await self._script(
            self._intent,
            [self._meta, self._job_prefix + key],
            [epoch, worker, gen, max(1, round(lease * 1000)), token],
            "announcing a submit",
        )
        if not int(reply[0]):
            return None
        return Intent(
            intent_at=int(reply[1]) / 1000, fence_until=int(reply[2]) / 1000, attempts=int(reply[3])
        )

    async def record_task(
        self, key: str, gen: int, task_id: str, *, adopted: bool = False
    ) -> Literal["ok", "fenced", "held"]:
        """Record the task of `key`'s intent (and hold it for the run): "ok", "fenced" (stale `gen`),
        or "held" (another job of the run holds that task)."""
        epoch = await self.epoch()
        reply = await self._script(
            self._record,
            [self._meta, self._job_prefix + key, self._tasks],
            [epoch, gen, task_id, "1" if adopted else "0"],
            "recording a task",
        )
        return cast("Literal['ok', 'fenced', 'held']", _text(reply))

    async def finish(
        self, key: str, gen: int, outcome: RunOutcome, follow_ups: Sequence[QueuedJob] = ()
    ) -> bool:
        """End `key` with `outcome` (and enqueue its `follow_ups` in the same step); False if `gen` is stale."""
        epoch = await self.epoch()
        pairs: list[str] = []
        for job in follow_ups:
            pairs += [job.key, _encoder.encode(job).decode()]
        reply = await self._script(
            self._finish,
            [self._meta, self._job_prefix + key, self._jobs, self._done, self._keys],
            [
                epoch,
                gen,
                outcome.state,
                _encoder.encode(outcome).decode(),
                GROUP,
                key,
                self._job_prefix,
                *pairs,
            ],
            "writing an outcome",
        )
        return bool(int(reply))

    async def release(self, key: str, gen: int) -> bool:
        """Withdraw `key`'s intent (its submit certainly made no task); False if `gen` is stale."""
        epoch = await self.epoch()
        reply = await self._script(
            self._release, [self._meta, self._job_prefix + key], [epoch, gen], "withdrawing an intent"
        )
        return bool(int(reply))

    async def touch(self, worker: str, held: Sequence[Entry]) -> list[str]:
        """A worker's heartbeat: keep its entries of the jobs it still owns from being claimed; returns
        the keys of those another worker has taken since."""
        epoch = await self.epoch()
        pairs: list[str] = []
        for entry in held:
            pairs += [entry.id, entry.key]
        reply = await self._script(
            self._touch,
            [self._meta, self._jobs],
            [epoch, GROUP, worker, self._job_prefix, *pairs],
            "heartbeat",
        )
        return [_text(key) for key in reply]

    async def claim(self, worker: str, count: int, *, min_idle: float, cursor: str = "0-0") -> Claimed:
        """Up to `count` entries for `worker`: idle over `min_idle` seconds first (a dead or stopped
        worker's), then new ones; with the run's total and ended counts. Pass the returned cursor next."""
        epoch = await self.epoch()
        reply = await self._script(
            self._claim,
            [self._meta, self._jobs],
            [epoch, GROUP, worker, max(0, round(min_idle * 1000)), cursor, max(1, count)],
            "claiming jobs",
        )
        flat = reply[1]
        entries = [Entry(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]
        return Claimed(_text(reply[0]), entries, int(reply[2]), int(reply[3]))

    async def read_new(self, worker: str, count: int, *, block: float) -> list[Entry]:
        """New entries for `worker`, waiting up to `block` seconds (keep it under the timeout) for one."""
        group_gone = False
        with coordinator_errors("waiting for jobs"):
            self.round_trips += 1
            try:
                reply = await cast("Any", self._redis.xreadgroup)(
                    GROUP, worker, {self._jobs: ">"}, count=max(1, count), block=max(1, round(block * 1000))
                )
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                group_gone = True
        if group_gone:
            await self._meta_fields()  # the epoch error, when the run lost its data
            raise RunDataLostError(f"run {self.run!r}'s stream of jobs at {self._where} is gone")
        return [Entry(entry_id, _text(key)) for entry_id, key in _stream_entries(reply, "key")]

    async def held_task_ids(self) -> set[str]:
        """Every task id the run holds (read page by page)."""
        await self.epoch()
        found: set[str] = set()
        cursor: Any = 0
        while True:
            with coordinator_errors("reading the run's tasks"):
                self.round_trips += 1
                cursor, page = await cast("Any", self._redis.sscan)(self._tasks, cursor, count=_SCAN_PAGE)
            found.update(_text(task_id) for task_id in page)
            if int(cursor) == 0:
                return found

    async def _read_done(self, after: str, *, block: float | None) -> list[tuple[str, bytes]]:
        """Entries of the `done` stream after id `after` (waiting up to `block` seconds for one)."""
        with coordinator_errors("reading outcomes"):
            self.round_trips += 1
            reply = await cast("Any", self._redis.xread)(
                {self._done: after},
                count=_DONE_BATCH,
                block=None if block is None else max(1, round(block * 1000)),
            )
        return _stream_entries(reply, "outcome")

    async def _script(self, script: AsyncScript, keys: list[str], args: list[Any], what: str) -> Any:
        with coordinator_errors(what):
            self.round_trips += 1
            return await script(keys=keys, args=args, client=self._redis)


def _stream_entries(reply: Any, field: str) -> list[tuple[str, Any]]:
    """(id, the value of `field`) for each entry of an XREAD/XREADGROUP reply (`connect` speaks RESP2:
    a list of [stream, [(id, {field: value}), ...]])."""
    found: list[tuple[str, Any]] = []
    name = field.encode()
    for _, entries in reply or ():
        for entry_id, fields in entries:
            value = (fields or {}).get(name)
            if value is not None:
                found.append((_text(entry_id), value))
    return found


class _Outcomes:
    """`RunQueue.outcomes()`: reads the `done` stream from its start, a bounded batch at a time."""

    def __init__(self, queue: RunQueue, follow: bool) -> None:
        self._queue = queue
        self._follow = follow
        self._after = "0-0"
        self._seen = 0
        self._ready: deque[RunOutcome] = deque()
        self._over = False
        # The wait for a new outcome stays under the connection's timeout, so it never reads as an outage.
        self._block = min(1.0, queue.timeout / 2)

    def __aiter__(self) -> _Outcomes:
        return self

    async def __anext__(self) -> RunOutcome:
        while not self._ready:
            if self._over:
                raise StopAsyncIteration
            await self._fill()
        return self._ready.popleft()

    async def _fill(self) -> None:
        queue = self._queue
        await queue.epoch()
        if self._take(await queue._read_done(self._after, block=None)):
            return
        # Nothing new: every job has ended (each has exactly one entry), or wait for the next to end.
        status = await queue.status()
        if not self._follow or self._seen >= status.total:
            self._over = True
            return
        self._take(await queue._read_done(self._after, block=self._block))

    def _take(self, entries: list[tuple[str, bytes]]) -> bool:
        for entry_id, data in entries:
            self._after = entry_id
            self._seen += 1
            self._ready.append(_decode(_outcome_decoder, data, "outcome"))
        return bool(entries)
