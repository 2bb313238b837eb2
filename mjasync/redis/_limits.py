"""I/O layer (beside `mjasync._limiter`): one account's limits shared by every process and host on Redis.

`SharedLimits` is a `mjasync._limiter.Limiter` whose state lives on Redis, so clients in any number of
processes, given the same URL and account, share one in-flight cap, one submit pace, one 429 cooldown
and the cap the limiter learns (`mjasync._capacity`). It keeps `JobLimiter`'s semantics across
processes; what differs is where the state is and who may change it:

- **Admission** is one Lua script (`_limits_scripts.ADMIT`), one round trip: Redis `TIME`, the shared
  cooldown, expired leases purged, the cap (the learnt limit, floored), the pace (the next submit time
  reserved), and a lease taken. A slot is a lease with an expiry, refreshed while held (one round trip
  per `lease / 3` for all of a process's leases), so a process that dies frees its slots when they
  expire. A job that finds the cap reached or a pause running waits for a message on the account's
  pub/sub channel (one subscriber connection per `SharedLimits`) or the first lease expiry, at most
  `MAX_WAIT`, and asks again: no busy loop, and one waiter per process asks at a time.
- **Notes.** `release`, `succeeded` and `refused_for_good` are synchronous in the protocol: they are
  noted here and a background flusher sends them (`_limits_scripts.FLUSH`), as many as have gathered
  while the previous batch was out: one script releases leases, marks jobs waiting to retry, refreshes
  leases and writes the capacity state.
- **The learnt cap.** The pure `_capacity` steps run here on the state kept in Redis, with Redis's
  `TIME` as `now` (a note's local time moved onto Redis's clock by the offset seen in the last reply),
  and are written back by compare-and-set on the state's `version`; on a conflict the reply carries the
  state as it is, and the notes are applied to it again. A shared pause is a key with a TTL, announced
  on the channel; the probe after it is claimed in Redis by the first submit to ask
  (`_limits_scripts.SUBMIT`), and every other process waits for its answer.
- **Levels.** A refusal or completion is evidence at the level the provider held: leases held across
  processes, less those whose submit is unanswered (`T:sending`: marked at admission, cleared when the
  answer comes) and those waiting to retry (`T:retrying`). Each lease is followed through its task
  (the engine takes a slot and submits in one task), and its moves ride along with the next call to
  Redis. The other processes' part is read from the last reply; this process's part is counted here.
- **Fail closed.** Without an answer from Redis within `timeout`, `acquire` and `before_submit` raise
  `CoordinatorUnavailableError`: nothing is admitted without Redis. Lookups never ask Redis
  (`before_request` waits out the pause as last heard of), so waits on submitted tasks go on.

Waits that keep the provider's pace (the pace, a refusal's Retry-After, the pause as last heard of) use
the injected `clock` and `sleep`, as `JobLimiter` does; waits for Redis (a message, a lease expiry, the
refresh period) run on the event loop's time, as Redis's own clock does not follow a test's.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import msgspec
from anyio.abc import TaskGroup
from msgspec.structs import replace

from .. import _capacity
from .._exceptions import CoordinatorError, CoordinatorUnavailableError, InvalidRequestError, RateLimitError
from .._limiter import LimiterStatistics
from . import _limits_scripts as scripts
from ._connect import account_tag, connect, coordinator_errors, describe

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from .._limiter import Limiter

__all__ = ["SharedLimits", "SharedStatistics"]

#: The longest a waiter goes without asking Redis again (when no message comes), in seconds.
MAX_WAIT: Final = 1.0
#: The shortest such wait: a lease about to expire is not asked about in a tight loop.
MIN_WAIT: Final = 0.002
#: Background loops pause this long (growing to `MAX_WAIT`) after Redis failed them.
RETRY_PAUSE: Final = 0.1
#: Completions only grow the cap: they ride along with a batch that goes anyway (a release) once the
#: oldest is this old (seconds), so each holder writes the state at most this often (every holder
#: writing it on every batch would make most compare-and-sets fail); with no such batch, they go
#: after `NOTES_AT_LATEST`.
NOTES_EVERY: Final = 0.1
NOTES_AT_LATEST: Final = 1.0
#: The probe after a shared pause is claimed for at most this long (seconds, or the lease if shorter):
#: unanswered by then (its holder died or stalled), another submit goes first instead.
PROBE_CLAIM: Final = 10.0
#: Compare-and-set attempts per batch before its notes wait for the next one.
MAX_CAS: Final = 8
#: Longer messages are not ours (a `freed` names at most one holder per slot of the cap).
MAX_MESSAGE: Final = 1 << 20
#: Notes kept while Redis cannot be reached; beyond, the oldest completions are dropped (a refusal
#: is never dropped: it is the evidence that matters).
MAX_NOTES: Final = 10_000

_Kind = Literal["completed", "refused", "accepted", "unanswered"]

#: The `SharedLimits` whose admission (or cleared retry) paced this task's next submit: its send
#: needs no other clearance. Set in `acquire` and the gates, taken by `sending()`.
_CLEARED: contextvars.ContextVar[SharedLimits | None] = contextvars.ContextVar("_CLEARED", default=None)
#: The `SharedLimits` whose probe (the first submit after a shared pause) this task claimed.
_PROBE: contextvars.ContextVar[SharedLimits | None] = contextvars.ContextVar("_PROBE", default=None)
#: The `SharedLimits` and lease this task was admitted with: its sends and refusals move that lease.
_ADMITTED: contextvars.ContextVar[tuple[SharedLimits, str] | None] = contextvars.ContextVar(
    "_ADMITTED", default=None
)
#: The `SharedLimits` whose probe this task sent and saw refused: the refusal noted next is the probe's.
_PROBE_REFUSED: contextvars.ContextVar[SharedLimits | None] = contextvars.ContextVar(
    "_PROBE_REFUSED", default=None
)


@dataclass(frozen=True)
class SharedStatistics:
    """Where the shared limits stand across every process (`SharedLimits.shared_statistics()`)."""

    #: Slots held now by every process (live leases).
    in_flight: int
    #: Of them, jobs waiting to retry a refused submit.
    retrying: int
    #: Of them, jobs whose submit is not answered yet.
    sending: int
    #: The shared cap now: the learnt limit, floored (the configured cap before anything is learnt).
    limit: int
    #: The configured cap the learnt state started from.
    max_limit: int
    #: The provider's limit as learnt: one less than where it last refused (None before any refusal).
    estimate: float | None
    #: Seconds left in the shared pause (0 when none).
    cooldown_remaining: float
    #: How many times the cap was lowered (once per burst of refusals), by every process.
    decreases: int
    #: After a shared pause, the probe is still to be answered.
    probe: bool
    #: Leases held by each holder (one `SharedLimits` object: `SharedLimits.holder`).
    holders: dict[str, int] = field(default_factory=dict)


class _Verdict:
    """Where a refusal's verdict lands once the flusher has applied it in Redis."""

    __slots__ = ("event", "pause_until", "value")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: _capacity.Verdict | None = None
        #: The shared pause's end on the local clock (-inf: none).
        self.pause_until = -math.inf


class _Note:
    """One event for the learnt cap, noted here and applied in Redis by the flusher."""

    __slots__ = ("at", "in_flight", "kind", "level", "probe", "retry_after", "verdict")

    def __init__(
        self,
        kind: _Kind,
        at: float,
        level: int = 1,
        in_flight: int = 1,
        retry_after: float = 0.0,
        *,
        probe: bool = False,
        verdict: _Verdict | None = None,
    ) -> None:
        self.kind = kind
        #: The local clock when it happened.
        self.at = at
        self.level = level
        self.in_flight = in_flight
        self.retry_after = retry_after
        self.probe = probe
        self.verdict = verdict


class _Plan:
    """The capacity part of one flush: the new state and what to announce, or None for nothing."""

    __slots__ = ("cooldown_ms", "limit", "probe", "state", "verdicts")

    def __init__(
        self,
        state: _capacity.Capacity,
        verdicts: list[tuple[_Verdict, _capacity.Verdict]],
        cooldown_ms: int,
        limit: str,
        probe: str,
    ) -> None:
        self.state = state
        self.verdicts = verdicts
        self.cooldown_ms = cooldown_ms
        self.limit = limit
        self.probe = probe


class SharedLimits:
    """In-flight cap, submit pace, 429 cooldown and learnt cap of one account, shared on Redis.

    `async with SharedLimits(url, account="team") as limits, mjasync.Client(..., limiter=limits) as mj:`
    every client given a `SharedLimits` of the same Redis and account, in this process or any other,
    shares them. `max_in_flight` caps the jobs in flight across all of them (the learnt cap never goes
    above it); `submits_per_second` paces their submits; a slot is a lease of `lease` seconds,
    refreshed while held; every call to Redis waits at most `timeout` seconds, after which admission
    fails closed (`CoordinatorUnavailableError`). See the module docstring for how.
    """

    def __init__(
        self,
        url: str,
        *,
        account: str,
        max_in_flight: int = 32,
        submits_per_second: float | None = None,
        lease: float = 60.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise InvalidRequestError(f"max_in_flight must be an int >= 1, not {max_in_flight!r}")
        if submits_per_second is not None and not (0 < submits_per_second < math.inf):
            raise InvalidRequestError(f"submits_per_second must be > 0 or None, not {submits_per_second!r}")
        if not (0 < lease < math.inf):
            raise InvalidRequestError(f"lease must be > 0 seconds, not {lease!r}")
        tag = account_tag(account)
        self._account = account
        self._where = describe(url)
        self._max = max_in_flight
        self._interval_ms = 1000.0 / submits_per_second if submits_per_second else 0.0
        self._lease = lease
        self._lease_ms = max(1, round(lease * 1000))
        self._claim_ms = min(self._lease_ms, round(PROBE_CLAIM * 1000))
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        # The URL's password is held by `_redact` for as long as this object lives.
        self._redis = connect(url, owner=self, timeout=timeout)
        self._keys = [f"{tag}:{name}" for name in scripts.KEYS]
        self._channel = f"{tag}:{scripts.CHANNEL}"
        self._admit: AsyncScript = self._redis.register_script(scripts.ADMIT)
        self._submit: AsyncScript = self._redis.register_script(scripts.SUBMIT)
        self._flush_script: AsyncScript = self._redis.register_script(scripts.FLUSH)
        self._stats: AsyncScript = self._redis.register_script(scripts.STATS)
        #: This object's name in Redis: its leases are `<holder>:<n>`.
        self.holder = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._holder_bytes = self.holder.encode()
        self._serial = itertools.count(1)
        #: Redis commands and scripts sent by this object (the subscription included).
        self.round_trips = 0
        #: Leases found expired while still held (this process stalled past them) and taken again.
        self.leases_lost = 0

        self._group: TaskGroup | None = None
        self._running = False
        self._closed = False
        #: Slots held: lease ids by borrower (`id`: a borrower need not be hashable), and all of them.
        self._held: dict[int, list[str]] = {}
        self._leases: dict[str, None] = {}
        #: Leases given back and not yet sent, and those in the batch being sent.
        self._releasing: list[str] = []
        self._flushing: list[str] = []
        #: This holder's leases marked in Redis as sending and as retrying (as confirmed by a reply),
        #: and the moves not sent yet (lease to "held" or "retrying"; the last one counts).
        self._in_sending: set[str] = set()
        self._in_retrying: set[str] = set()
        self._moves: dict[str, str] = {}
        #: When the first of the moves not sent yet was made (local clock).
        self._moves_at = 0.0
        self._notes: list[_Note] = []
        #: A note that goes with the next batch (not a completion) is among `_notes`.
        self._urgent = False
        self._refresh_due = False
        self._flush_busy = False
        #: Set to wake the flusher; set (and replaced) after each batch, for `__aexit__`.
        self._wake = anyio.Event()
        self._flushed = anyio.Event()
        #: Set (and replaced) on every message and every batch sent: waiters look at Redis again.
        self._changed = anyio.Event()
        self._admit_lock = anyio.Lock()
        self._subscribed = False
        #: Set (and replaced) when a slot may be free for this holder: a `freed` naming it (or no
        #: one), a higher cap. `_wakes` counts them; `_full` is (`_wakes` then, seconds to wait at
        #: most) once Redis said the cap is reached, until the next waiter has waited.
        self._admissible = anyio.Event()
        self._wakes = 0
        self._full: tuple[int, float] | None = None

        #: The capacity state as last read or written, and its version (-1: not read yet).
        self._state: _capacity.Capacity | None = None
        self._version = -1
        #: Redis's clock minus the local clock, in seconds, as of the last reply (None before one).
        self._offset: float | None = None
        #: As of the last reply: leases held (all holders), of them retrying and sending, then this
        #: holder's part of each (the others' part of a level is the difference).
        self._seen = (0, 0, 0, 0, 0, 0)
        #: The local view: the cap, the pause's end (local clock), whether a probe is to come.
        self._limit = max_in_flight
        self._cooldown_until = -math.inf
        self._cooldowns = 0
        self._probe_phase = False
        #: Jobs here waiting for a slot, waiting to retry a refused submit, and sending a submit.
        self._waiting = 0
        self._retrying = 0
        self._sending = 0
        self._plain_sending = _Sending(self, probe=False)

    def __repr__(self) -> str:
        return f"SharedLimits({self._where}, account={self._account!r}, max_in_flight={self._max})"

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> SharedLimits:
        """Start the subscriber, the flusher and the lease refresher (nothing fails if Redis is down:
        admissions fail closed until it answers)."""
        if self._group is not None or self._closed:
            raise RuntimeError("a SharedLimits is entered once; create another")
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        self._running = True
        subscribed = anyio.Event()
        group.start_soon(self._listen, subscribed)
        group.start_soon(self._flush_loop)
        group.start_soon(self._refresh_loop)
        # Messages sent before the subscription would be missed: wait for it (or its first failure).
        with anyio.move_on_after(self._timeout + 1.0):
            await subscribed.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Give back every lease still held and send what is noted (at most `timeout`), then close."""
        group, self._group = self._group, None
        if group is None:
            return
        self._running = False
        self._releasing.extend(self._leases)
        self._leases.clear()
        self._held.clear()
        self._in_sending.clear()
        self._in_retrying.clear()
        self._moves.clear()
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout + 1.0):
                while self._releasing or self._notes or self._flush_busy:
                    flushed = self._flushed
                    self._wake.set()
                    await flushed.wait()
        finally:
            group.cancel_scope.cancel()
            try:
                # The body's own error is not the background tasks': it propagates from here as it is,
                # not wrapped in an exception group (which `except MJError` would not catch).
                await group.__aexit__(None, None, None)
            finally:
                self._closed = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
                    await self._redis.aclose()

    # -- the Limiter protocol ------------------------------------------------------------------------------

    def slot(self, borrower: object) -> _Slot:
        """`async with limits.slot(job):` holds one shared slot for `job` (any object)."""
        return _Slot(self, borrower)

    async def acquire(self, borrower: object) -> None:
        """Take one shared slot for `borrower`, waiting while the cap is reached or a pause runs.

        Raises `CoordinatorUnavailableError` when Redis does not answer within the timeout.
        """
        self._check_running("admitting a job")
        lease = f"{self.holder}:{next(self._serial)}"
        self._waiting += 1
        try:
            # One admission in flight per process: waiters queue here in order, and only the first
            # asks Redis (the others would hear the same answer).
            async with self._admit_lock:
                pace_ms = await self._admit_one(borrower, lease)
            self._waiting -= 1
            if pace_ms > 0:
                await self._sleep(pace_ms / 1000)  # this submit's reserved time
        except BaseException:
            if lease in self._leases:
                self.release(borrower)  # granted to a caller cancelled meanwhile: given back
            else:
                self._waiting -= 1
            raise
        _ADMITTED.set((self, lease))
        if self._interval_ms:
            _CLEARED.set(self)

    async def _admit_one(self, borrower: object, lease: str) -> int:
        """Ask Redis for `lease` until it is granted (then held for `borrower`); the pace's wait, ms.

        Once Redis has said the cap is reached, no one here asks again until a message names this
        holder (or any holder), or the first lease may have expired, or `MAX_WAIT` has passed.
        """
        while True:
            if self._full is not None:
                heard, seconds = self._full
                await self._wait_admissible(heard, seconds)
                self._full = None
            heard = self._wakes
            more = self._waiting > 1
            moves, self._moves = self._moves, {}
            try:
                reply = await self._run(
                    self._admit,
                    [
                        lease,
                        self._lease_ms,
                        self._max,
                        self._interval_ms,
                        self.holder,
                        "1" if more else "0",
                        len(moves),
                        *itertools.chain.from_iterable(moves.items()),
                    ],
                    "admitting a job",
                    shield=True,  # a lease granted to a cancelled caller is held, then given back
                )
            except BaseException:
                self._unmoved(moves)
                raise
            self._moved(moves)
            status, wait_ms, now_ms = int(reply[0]), int(reply[1]), int(reply[2])
            self._probe_phase = reply[8] == b"1"
            if status == scripts.COOLING:
                self._saw(now_ms)
                self._cooling(wait_ms)
                await self._wait_changed(wait_ms / 1000)
                continue
            counts = int(reply[3]), int(reply[4]), int(reply[5])
            self._limit = cap = int(reply[6])
            if status == scripts.OK:
                self._held.setdefault(id(borrower), []).append(lease)
                self._leases[lease] = None
                self._in_sending.add(lease)  # marked so by the script: its submit goes next
                self._saw(now_ms, *counts)
                if more and counts[0] >= cap:
                    self._full = (heard, MAX_WAIT)  # the last free slot: the next waiter is queued
                return wait_ms
            self._saw(now_ms, *counts)
            self._full = (heard, wait_ms / 1000)

    async def _wait_admissible(self, heard: int, seconds: float) -> None:
        """Wait until a slot may be free: a `freed` naming this holder since `heard` was read, or
        `seconds` (within MIN_WAIT..MAX_WAIT)."""
        if self._wakes != heard:
            return  # it came while the answer that said "full" was on its way
        admissible = self._admissible
        with anyio.move_on_after(min(MAX_WAIT, max(MIN_WAIT, seconds))):
            await admissible.wait()

    def release(self, borrower: object) -> None:
        """Give back `borrower`'s slot (sent to Redis by the flusher, at once)."""
        leases = self._held.get(id(borrower))
        if not leases:
            if not self._running:
                return  # closed: every lease went back then
            raise RuntimeError("this borrower holds no slot of this SharedLimits")
        lease = leases.pop()
        if not leases:
            del self._held[id(borrower)]
        del self._leases[lease]
        # The release takes its marks off too.
        self._in_sending.discard(lease)
        self._in_retrying.discard(lease)
        self._moves.pop(lease, None)
        self._releasing.append(lease)
        self._wake.set()

    def sending(self) -> _Sending:
        """`with limits.sending():` around a submit's request, until its answer (or error) is in."""
        if _CLEARED.get() is self:
            _CLEARED.set(None)
        if _PROBE.get() is self:
            _PROBE.set(None)
            return _Sending(self, probe=True)
        return _Sending(self, probe=False) if self._probe_phase else self._plain_sending

    def clear_to_submit(self) -> bool:
        """Whether a submit may go now with no round trip: no pause heard of, no probe to await, and the
        pace kept by this task's admission (or no pace)."""
        if not self._running or self._cooldown_until > self._clock():
            return False
        if self._probe_phase and _PROBE.get() is not self:
            return False
        return not self._interval_ms or _CLEARED.get() is self

    async def before_request(self) -> None:
        """Wait out the shared pause as last heard of (lookups do not ask Redis: they go on without it)."""
        while (remaining := self._cooldown_until - self._clock()) > 0:
            await self._sleep(remaining)

    async def before_submit(self) -> None:
        """Wait out the shared pause, and after it the probe's answer (unless this submit is the probe),
        then keep the pace. Raises `CoordinatorUnavailableError` when Redis does not answer in time."""
        self._check_running("clearing a submit")
        await self.before_request()
        await self._gate(resend=False)

    async def refused(self, retry_after: float, *, submit: bool = True) -> None:
        """The provider answered 429; wait until a retry may go (see `JobLimiter.refused`).

        A refused submit is evidence for the shared cap: it waits its own Retry-After when the refusal
        is isolated, else the shared pause; then until fewer jobs than the cap are held across every
        process. Raises `CoordinatorUnavailableError` when Redis does not answer in time.
        """
        if not submit:
            await self._sleep(retry_after)
            await self.before_request()
            return
        self._check_running("noting a refusal")
        now = self._clock()
        level, in_flight = self._levels()
        verdict = _Verdict()
        note = _Note(
            "refused", now, level, in_flight, retry_after, probe=self._probe_refused(), verdict=verdict
        )
        self._retrying += 1
        if lease := self._task_lease():
            self._move(lease, "retrying")  # in the same batch as the note
        self._add(note)
        try:
            with anyio.move_on_after(self._timeout + 1.0):
                await verdict.event.wait()
            if verdict.value is None:
                raise CoordinatorUnavailableError(
                    "Redis could not be reached while noting a refusal (429); no submit goes out "
                    "until it answers"
                )
            if verdict.value in ("isolated", "cap") or now + retry_after > verdict.pause_until:
                await self._sleep(retry_after)  # this request's own wait
            await self.before_request()  # and the shared pause, if one runs
            await self._gate(resend=True)
        finally:
            self._retrying -= 1

    def refused_for_good(self, retry_after: float) -> None:
        """A submit answered 429 that will not be retried: evidence all the same, and no one waits."""
        level, in_flight = self._levels()
        note = _Note("refused", self._clock(), level, in_flight, retry_after, probe=self._probe_refused())
        self._add(note, wake=False)  # the release that follows takes it along, at once

    def succeeded(self) -> None:
        """A job finished cleanly (call it while the job still holds its slot)."""
        level, in_flight = self._levels()
        self._add(_Note("completed", self._clock(), level, in_flight), wake=False)

    def statistics(self) -> LimiterStatistics:
        """Where the limits stand as this process sees them (its own slots; the shared cap and pause
        as last heard of). `shared_statistics()` asks Redis about every process."""
        state = self._state
        ceiling = state.ceiling if state is not None else math.inf
        return LimiterStatistics(
            in_flight=len(self._leases),
            waiting=self._waiting,
            limit=self._limit,
            max_limit=self._max,
            cooldowns=self._cooldowns,
            cooldown_remaining=max(0.0, self._cooldown_until - self._clock()),
            estimate=ceiling - 1 if math.isfinite(ceiling) else None,
            decreases=state.decreases if state is not None else 0,
            retrying=self._retrying,
        )

    async def shared_statistics(self) -> SharedStatistics:
        """Where the limits stand across every process, read from Redis (one round trip)."""
        self._check_running("reading the shared limits")
        reply = await self._run(self._stats, [self._max], "reading the shared limits")
        self._saw(int(reply[0]))
        holders: dict[str, int] = {}
        for member in reply[1]:
            holder = bytes(member).rpartition(b":")[0].decode(errors="replace")
            holders[holder] = holders.get(holder, 0) + 1
        state = _decode(reply[5], self._max)
        limit = float(reply[6]) if reply[6] else float(self._max)
        pttl = int(reply[7])
        ceiling = state.ceiling
        return SharedStatistics(
            in_flight=int(reply[2]),
            retrying=int(reply[3]),
            sending=int(reply[4]),
            limit=max(1, min(math.floor(limit), self._max)),
            max_limit=state.max_limit,
            estimate=ceiling - 1 if math.isfinite(ceiling) else None,
            cooldown_remaining=max(0.0, pttl / 1000),
            decreases=state.decreases,
            probe=reply[8] == b"1",
            holders=holders,
        )

    # -- talking to Redis -----------------------------------------------------------------------------------

    def _check_running(self, what: str) -> None:
        if not self._running:
            raise CoordinatorUnavailableError(
                f"this SharedLimits is not running while {what}: use it inside `async with`"
            )

    async def _run(
        self, script: AsyncScript, args: list[Any], what: str, *, shield: bool = False
    ) -> list[Any]:
        """One script, one round trip (two the first time Redis meets it), bounded by the timeout."""
        self.round_trips += 1
        with coordinator_errors(what), anyio.CancelScope(shield=shield):
            # redis-py bounds each read by the socket timeout; this bounds the whole call (a TimeoutError
            # is an OSError, which `coordinator_errors` turns into ours).
            with anyio.fail_after(self._timeout + 1.0):
                reply = await script(keys=self._keys, args=[self._channel, *args])
        if not isinstance(reply, list):
            raise CoordinatorUnavailableError(
                f"Redis answered a script with {type(reply).__name__} while {what}"
            )
        return reply

    def _saw(self, now_ms: int, in_flight: int = -1, retrying: int = 0, sending: int = 0) -> None:
        """A reply came: Redis's clock against ours, and (when given) the leases held across holders,
        of them retrying and sending."""
        self._offset = now_ms / 1000 - self._clock()
        if in_flight >= 0:
            mine = len(self._leases) + len(self._releasing) + len(self._flushing)
            self._seen = (
                in_flight,
                retrying,
                sending,
                mine,
                len(self._in_retrying),
                len(self._in_sending),
            )

    def _levels(self) -> tuple[int, int]:
        """(level, in flight) now: the jobs the provider holds across holders (the others' as of the
        last reply, this holder's now: less those waiting to retry or still sending), and slots held."""
        seen_in, seen_retrying, seen_sending, mine_in, mine_retrying, mine_sending = self._seen
        others = seen_in - mine_in
        others_held = (seen_in - seen_retrying - seen_sending) - (mine_in - mine_retrying - mine_sending)
        out = len(self._leases)
        in_flight = max(0, others) + out
        level = max(0, others_held) + out - self._retrying - self._sending
        return (level if level > 1 else 1), (in_flight if in_flight > 1 else 1)

    def _cooling(self, remaining_ms: int) -> None:
        """A shared pause runs for `remaining_ms` more (heard from a reply or a message)."""
        now = self._clock()
        until = now + remaining_ms / 1000
        if self._cooldown_until <= now:
            self._cooldowns += 1  # a new pause, not more of the one already heard of
        self._cooldown_until = max(self._cooldown_until, until)
        self._probe_phase = True  # every pause ends with a probe

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait_changed(self, seconds: float) -> None:
        """Wait for a message (or a batch sent), at most `seconds` (within MIN_WAIT..MAX_WAIT)."""
        changed = self._changed
        with anyio.move_on_after(min(MAX_WAIT, max(MIN_WAIT, seconds))):
            await changed.wait()

    async def _gate(self, *, resend: bool) -> None:
        """Clear one submit in Redis (`_limits_scripts.SUBMIT`): the pause, (a retry:) room under the
        cap, the probe, the pace. The probe claimed here is this task's; its send tells the others."""
        what = "clearing a retry" if resend else "clearing a submit"
        member = self._task_lease()
        while True:
            interval = 0.0 if _CLEARED.get() is self else self._interval_ms
            reply = await self._run(
                self._submit,
                [
                    "resend" if resend else "submit",
                    member,
                    self._max,
                    interval,
                    member or f"{self.holder}:-",
                    self._claim_ms,
                ],
                what,
                shield=True,  # a claim or an unmark done for a cancelled caller is settled below
            )
            status, wait_ms = int(reply[0]), int(reply[1])
            self._saw(int(reply[2]))
            if status == scripts.OK:
                break
            if status == scripts.COOLING:
                self._cooling(wait_ms)
            elif status == scripts.PROBE_OUT:
                self._probe_phase = True
            await self._wait_changed(wait_ms / 1000)
        if member and member in self._leases:
            self._moves.pop(member, None)  # superseded: the script marked it sending
            self._in_retrying.discard(member)
            self._in_sending.add(member)
        claimed = int(reply[3]) == 1
        if claimed:
            self._probe_phase = True
            _PROBE.set(self)
        try:
            if wait_ms > 0:
                await self._sleep(wait_ms / 1000)
        except BaseException:
            if claimed:
                _PROBE.set(None)
                self._add(_Note("unanswered", self._clock()))  # another goes first instead
            raise
        _CLEARED.set(self)

    def _task_lease(self) -> str:
        """The lease this task was admitted with, while it is held ("" when unknown)."""
        admitted = _ADMITTED.get()
        if admitted is not None and admitted[0] is self and admitted[1] in self._leases:
            return admitted[1]
        return ""

    def _moved(self, moves: dict[str, str]) -> None:
        """`moves` are done in Redis (those of leases still held count)."""
        for lease, to in moves.items():
            if lease in self._leases:
                self._in_sending.discard(lease)
                if to == "held":
                    self._in_retrying.discard(lease)
                else:
                    self._in_retrying.add(lease)

    def _unmoved(self, moves: dict[str, str]) -> None:
        """`moves` did not reach Redis: send them later, unless a later move replaced one."""
        for lease, to in moves.items():
            if lease in self._leases and lease not in self._moves:
                self._move(lease, to)

    def _move(self, lease: str, to: str) -> None:
        """Note that `lease` is now `to` ("held" or "retrying"): it rides along with the next call,
        or goes after `NOTES_AT_LATEST` (the flusher, woken now, waits that long for company)."""
        if not self._moves:
            self._moves_at = self._clock()
            self._wake.set()
        self._moves[lease] = to

    def _probe_refused(self) -> bool:
        """Whether the refusal being noted is this task's probe's (told by its send, taken once)."""
        if _PROBE_REFUSED.get() is self:
            _PROBE_REFUSED.set(None)
            return True
        return False

    def _add(self, note: _Note, *, wake: bool = True) -> None:
        """Note `note` for the flusher, and (`wake`) have a batch go now. Anything but a completion
        goes in the next batch; completions ride along later (`NOTES_EVERY`)."""
        notes = self._notes
        if len(notes) >= MAX_NOTES:
            # Redis has been away a long while: forget the oldest completion (growth can wait).
            for index, old in enumerate(notes):
                if old.kind == "completed":
                    del notes[index]
                    break
        notes.append(note)
        if note.kind != "completed":
            self._urgent = True
        if wake:
            self._wake.set()

    # -- background tasks -------------------------------------------------------------------------------

    async def _listen(self, subscribed: anyio.Event) -> None:
        """Hold the subscription to the account's channel, and come back to it after a failure."""
        failures = 0
        while True:
            pubsub = self._redis.pubsub()
            try:
                self.round_trips += 1
                with coordinator_errors("subscribing to the limiter's messages"):
                    with anyio.fail_after(self._timeout + 1.0):
                        await pubsub.subscribe(self._channel)
                    self._subscribed = True
                    subscribed.set()
                    failures = 0
                    self._notify()  # what was missed while away: everyone looks again
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=MAX_WAIT)
                        if message is not None and message.get("type") == "message":
                            self._heard(message.get("data"))
            except CoordinatorError:
                pass
            finally:
                self._subscribed = False
                subscribed.set()
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    with contextlib.suppress(CoordinatorError), coordinator_errors("unsubscribing"):
                        await pubsub.aclose()
            failures += 1
            await anyio.sleep(min(MAX_WAIT, RETRY_PAUSE * failures))

    def _heard(self, data: object) -> None:
        """One message from the channel: `freed [holder ...]`, `retry`, `cooldown <ms>`, `limit <n>`,
        `probe <p> <out>` (see `_limits_scripts`)."""
        if not isinstance(data, bytes) or len(data) > MAX_MESSAGE:
            return
        words = data.split()
        if not words:
            return
        try:
            if words[0] == b"freed":
                if len(words) == 1 or self._holder_bytes in words:
                    self._admissible_now()
            elif words[0] == b"cooldown" and len(words) == 2:
                self._cooling(int(words[1]))
            elif words[0] == b"limit" and len(words) == 2:
                limit = max(1, min(int(words[1]), self._max))
                if limit > self._limit:
                    self._admissible_now()
                self._limit = limit
            elif words[0] == b"probe" and len(words) == 3:
                self._probe_phase = words[1] == b"1"
        except ValueError:
            return
        self._notify()

    def _admissible_now(self) -> None:
        self._wakes += 1
        self._admissible.set()
        self._admissible = anyio.Event()

    async def _refresh_loop(self) -> None:
        """Every `lease / 3`, have the flusher refresh the leases held (one round trip for all)."""
        while True:
            await anyio.sleep(self._lease / 3)
            if self._leases:
                self._refresh_due = True
                self._wake.set()

    async def _flush_loop(self) -> None:
        """Send the notes in batches, one batch out at a time; after a failure, again shortly.

        A batch goes when something urgent is noted (a release, a refusal, a probe's answer, a
        refresh); completions ride along (see `NOTES_EVERY`), and so do the moves of leases whose
        submit was answered; either goes alone after `NOTES_AT_LATEST`.
        """
        failures = 0
        while True:
            if self._notes or self._moves:
                with anyio.move_on_after(NOTES_AT_LATEST):
                    await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake = anyio.Event()
            self._flush_busy = True
            try:
                await self._flush()
            except CoordinatorError:
                failures += 1
                self._wake.set()  # what failed is queued again
                await anyio.sleep(min(MAX_WAIT, RETRY_PAUSE * failures))
            else:
                failures = 0
            finally:
                self._flush_busy = False
                self._flushed.set()
                self._flushed = anyio.Event()

    async def _flush(self) -> None:
        """One batch: releases, retry marks, refreshes, and the notes applied to the capacity state."""
        now = self._clock()
        releases, self._releasing = self._releasing, []
        refreshes = list(self._leases) if self._refresh_due else []
        self._refresh_due = False
        closing = not self._running
        # Something that cannot wait makes the batch go; what can wait rides along with it.
        going = bool(releases or refreshes or self._urgent or closing)
        moves: dict[str, str] = {}
        if self._moves and (going or now - self._moves_at >= NOTES_AT_LATEST):
            moves, self._moves = self._moves, {}
            going = True
        notes: list[_Note] = []
        if self._notes and now - self._notes[0].at >= (NOTES_EVERY if going else NOTES_AT_LATEST):
            going = True
        if self._notes and going:
            notes, self._notes, self._urgent = self._notes, [], False
        if not going:
            return
        self._flushing = releases
        leases_sent = False
        try:
            for _ in range(MAX_CAS):
                # The notes are applied to the state last seen; with none seen yet, a version that
                # cannot match fetches it, and they are applied to that on the next pass.
                plan = self._plan(notes) if notes and self._version >= 0 else None
                if leases_sent:
                    counts, ids = [0, 0, 0], []
                else:
                    counts = [len(releases), len(moves), len(refreshes)]
                    ids = [*releases, *itertools.chain.from_iterable(moves.items()), *refreshes]
                capacity: list[Any] = [self._version, b"", "", "0", "0", 0, "", ""]
                if plan is not None:
                    state = plan.state
                    capacity[1:] = [
                        msgspec.msgpack.encode(state),
                        repr(state.limit),
                        "1" if state.probe else "0",
                        "1" if state.probe_out else "0",
                        plan.cooldown_ms,
                        plan.limit,
                        plan.probe,
                    ]
                reply = await self._run(
                    self._flush_script,
                    [self._lease_ms, self._max, *counts, *capacity, *ids],
                    "sending the limiter's notes",
                )
                if not leases_sent:
                    leases_sent = True
                    self._flushing = []
                    self._moved(moves)
                    if lost := int(reply[7]):
                        # Taken again, unmarked: held, as far as the others can tell.
                        self.leases_lost += lost
                        self._in_sending.clear()
                        self._in_retrying.clear()
                status, version = int(reply[1]), int(reply[2])
                self._saw(int(reply[0]), int(reply[3]), int(reply[4]), int(reply[5]))
                if status == scripts.WRITTEN and plan is not None:
                    self._commit(plan, version)
                    notes = []
                elif status == scripts.STALE:
                    self._adopt(reply[8], reply[9] == b"1", reply[10] == b"1", version)
                    if plan is not None and not (
                        closing
                        or any(note.kind != "completed" for note in notes)
                        or self._clock() - notes[0].at >= NOTES_AT_LATEST
                    ):
                        break  # completions only: they go with the next batch, on the state now in hand
                if not notes:
                    break
        except BaseException:
            if not leases_sent:
                self._releasing[:0] = releases
                self._flushing = []
                self._unmoved(moves)
            self._requeue(notes)
            raise
        finally:
            self._notify()
        self._requeue(notes)  # conflicts every time: the next batch tries again

    def _requeue(self, notes: list[_Note]) -> None:
        """Notes not applied go back in front, urgent if any of them waits for a verdict."""
        if notes:
            self._notes[:0] = notes
            self._urgent = self._urgent or any(note.kind != "completed" for note in notes)

    def _adopt(self, blob: bytes, probe: bool, probe_out: bool, version: int) -> None:
        """The state as Redis holds it (written by another holder, or never)."""
        state = _decode(blob, self._max)
        self._state = replace(state, probe=probe, probe_out=probe_out)
        self._version = version
        self._limit = max(1, min(math.floor(state.limit), self._max))
        self._probe_phase = probe

    def _plan(self, notes: list[_Note]) -> _Plan:
        """The notes applied, in order, to the state last read, each at its time on Redis's clock."""
        assert self._state is not None and self._offset is not None
        offset = self._offset
        before = state = self._state
        verdicts: list[tuple[_Verdict, _capacity.Verdict]] = []
        for note in notes:
            now = note.at + offset
            if note.kind == "completed":
                state = _capacity.completed(state, now, level=note.level, in_flight=note.in_flight)
            elif note.kind == "refused":
                state, verdict = _capacity.refused(
                    state,
                    now,
                    level=note.level,
                    in_flight=note.in_flight,
                    retry_after=note.retry_after,
                    probe=note.probe,
                )
                if note.verdict is not None:
                    verdicts.append((note.verdict, verdict))
            elif note.kind == "accepted":
                state = _capacity.accepted(state, now)
            else:
                state = _capacity.unanswered(state)
        redis_now = self._clock() + offset
        cooldown_ms = 0
        if state.pause_until != before.pause_until and state.pause_until > redis_now:
            cooldown_ms = max(1, math.ceil((state.pause_until - redis_now) * 1000))
        cap = max(1, min(math.floor(state.limit), self._max))
        limit = str(cap) if cap != max(1, min(math.floor(before.limit), self._max)) else ""
        probe = "1" if (state.probe, state.probe_out) != (before.probe, before.probe_out) else ""
        return _Plan(state, verdicts, cooldown_ms, limit, probe)

    def _commit(self, plan: _Plan, version: int) -> None:
        """The planned state is in Redis: it is the one to build on, and refusals have their verdicts."""
        state = plan.state
        self._state = state
        self._version = version
        self._limit = max(1, min(math.floor(state.limit), self._max))
        self._probe_phase = state.probe
        if plan.cooldown_ms:
            self._cooling(plan.cooldown_ms)
        pause_until = self._cooldown_until
        for verdict, value in plan.verdicts:
            verdict.value = value
            verdict.pause_until = pause_until
            verdict.event.set()


class _Sending:
    """Around one submit's request: counts it as sent and unanswered; once answered (but by a 429, which
    `refused` moves to retrying), its lease is held as far as the other holders can tell. After a
    shared pause, tells the others how the probe went (taken: all go; refused: noted by the refusal;
    else another goes)."""

    __slots__ = ("_limits", "_probe")

    def __init__(self, limits: SharedLimits, *, probe: bool) -> None:
        self._limits = limits
        self._probe = probe

    def __enter__(self) -> None:
        self._limits._sending += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        limits = self._limits
        limits._sending -= 1
        if not isinstance(exc, RateLimitError):
            lease = limits._task_lease()
            if lease in limits._in_sending:
                limits._move(lease, "held")
        if self is limits._plain_sending:
            return
        if exc is None:
            # Any submit taken ends the overload (the probe's or not).
            if limits._probe_phase or self._probe:
                limits._probe_phase = False
                limits._add(_Note("accepted", limits._clock()))
        elif self._probe:
            if isinstance(exc, RateLimitError):
                _PROBE_REFUSED.set(limits)  # the refusal noted next says the overload goes on
            else:
                limits._add(_Note("unanswered", limits._clock()))


class _Slot:
    __slots__ = ("_borrower", "_limits")

    def __init__(self, limits: SharedLimits, borrower: object) -> None:
        self._limits = limits
        self._borrower = borrower

    async def __aenter__(self) -> None:
        await self._limits.acquire(self._borrower)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._limits.release(self._borrower)


def _decode(blob: object, max_limit: int) -> _capacity.Capacity:
    """A state from Redis; a fresh one when there is none (or none this version can read)."""
    if isinstance(blob, bytes) and blob:
        try:
            return msgspec.msgpack.decode(blob, type=_capacity.Capacity)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
    return _capacity.start(max_limit)


if TYPE_CHECKING:

    def _is_a_limiter(limits: SharedLimits) -> Limiter:
        """mypy checks here that `SharedLimits` satisfies the engine's `Limiter` protocol."""
        return limits
