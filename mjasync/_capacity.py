"""Pure layer: how many jobs to keep in flight, learnt from where the provider refuses.

The state is one small frozen `Capacity`; every step is a pure function of (state, event, now), so
the same steps can run anywhere a clock is at hand (a `JobLimiter` in one process, a Lua script with
Redis's TIME across processes). `now` is any monotonic seconds. The events (an admission needs no
event of its own: it shows in the `level` and `in_flight` of the next one):

- `completed(state, now, level=, in_flight=)`: a job finished cleanly; `level` jobs were held by the
  provider at once (itself included), `in_flight` held a slot;
- `refused(state, now, level=, in_flight=, retry_after=, probe=)`: a submit was answered 429 while the
  provider held `level - 1` of our jobs (those waiting to retry, and submits not yet answered, are
  not held); the answer says whether the request waits alone or with everyone;
- `probing(state, now)`: after a shared pause, the one request that goes first is being sent;
- `accepted(state, now)`: a submit was taken (after a shared pause: the probe got through);
- `tick(state, now)`: time passed (forgets a shared pause and a burst that are over).

What the steps do:

- **Evidence of the cap.** `proven` is the highest `level` of a clean completion since the last
  overload: the provider held that many at once. A refusal above it says the cap is `level - 1`:
  the limit falls there (`cap`: by at most half, unless overloads came back to back, when the
  evidence is taken whole), no one else is paused, and `ceiling` remembers where trouble began. A
  refusal with nothing else held is no evidence (a cap of 0 is no cap).
- **Isolated or sustained.** A refusal at a proven level is isolated (the provider refuses now and
  then, independent of load): only that request waits its Retry-After, the limit stays. A second
  refusal in a row at exactly the top proven level is not: that level was held only in passing (a
  job let in as another left), so `proven` steps down. When refusals are at least `OVERLOAD_SHARE`
  of the window's outcomes (a window no longer than the jobs in flight; two refusals at least),
  it is sustained overload: one shared pause of Retry-After (doubled, up to `MAX_PAUSE_FACTOR`
  times, for overloads in a row while the provider holds none of our jobs: an outage), the limit
  set to the evidence but halved at most (unless overloads come in a row), and `proven` starts
  again from nothing. After the pause one request goes first (`probe`); the others wait for its
  answer. Taken: the overload is over. Refused: it goes on, and the next pause is longer.
- **Old news.** The jobs the provider held at an overload finish after it, but their completions
  say nothing about whether it is over: the next `level - 1` completions (`skip`) count in no window
  and prove no level.
- **One decrease per burst.** A decrease opens a burst that lasts `BURST` seconds or the
  Retry-After (or the shared pause), whichever is longest: refusals inside it refine the limit
  down to the evidence (never below the burst's floor) and may turn it into an overload, but are
  not a new decrease. The burst is defined by the time of the decrease, not by the cooldown's end,
  so Retry-After: 0 (or a date in the past) cannot make the next 429 of the same burst decrease
  again.
- **Recovery in windows.** A window is as many outcomes as the limit (one round of the jobs in
  flight), so growth per window does not depend on the limit's size. A window with few refusals
  (under a quarter) in which the limit was reached grows it: halfway back toward `ceiling` when
  below it (at most doubling it); at the ceiling, after `2**probes` such windows (each probe the
  cap refused makes the next wait longer, up to `MAX_HOLD`), by a step that doubles each window
  (1, 2, 4, ...; at most half the limit at once). A probe that holds a whole window forgets the
  ceiling.

What was taken from the anchors:

- TCP (RFC 5681, 6298): after a timeout, one segment goes first and the window opens again only
  once it is acknowledged (here the probe after a shared pause); acknowledgements of data sent
  before a loss do not grow the new window (here `skip`).
- TCP Vegas: estimate the queue instead of waiting for losses; here the level at a refusal, minus
  the refused request, is read as the provider's limit, and the limit is set to it, not halved.
- CUBIC (and BIC before it): remember the level where trouble began (W_max, here `ceiling`), come
  back to it fast (concave: halfway per window), stay near it, and probe beyond it slowly at first
  and faster the longer it holds (convex: doubling steps). One decrease per congestion event.
- Netflix's concurrency-limits (Vegas, Gradient2): a limit that grows only when the current one is
  actually used (no growth while the application sends less), smoothing over a window of samples
  instead of reacting to each one; the limit is a concurrency, not a rate.
- Envoy's adaptive concurrency filter: measure in windows of requests, never drop below a floor of
  one, and re-measure what is "good" (`proven` starts over after each overload).
- The AWS SDKs' "adaptive" retry mode: a throttle is an event, not a per-request failure; the
  client-side limit follows a CUBIC-shaped curve after it, and a throttled request alone retries
  after its delay while the others go on.
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec
from msgspec.structs import replace

__all__ = [
    "BURST",
    "OVERLOAD_SHARE",
    "Capacity",
    "Verdict",
    "accepted",
    "completed",
    "probing",
    "refused",
    "start",
    "tick",
    "unanswered",
]

#: Seconds after a decrease during which more refusals belong to the same burst.
BURST = 1.0
#: Share of a window's outcomes that, refused, is sustained overload.
OVERLOAD_SHARE = 0.5
#: The shared pause after back-to-back overloads grows up to this many times Retry-After.
MAX_PAUSE_FACTOR = 4
#: Clean windows to wait at the ceiling before probing above it, at most.
MAX_HOLD = 12

#: "No such time" for `burst_until` and `pause_until`.
_NEVER = -math.inf

#: What a refused request does: wait its own Retry-After (`isolated`), or the shared pause.
Verdict = Literal["isolated", "cap", "overload", "burst"]


class Capacity(msgspec.Struct, frozen=True, kw_only=True):
    """The whole state of the capacity control (small enough for one Redis hash).

    A frozen msgspec Struct: each step makes a new state, and `msgspec.structs.replace` does that in
    well under a microsecond (`dataclasses.replace` took several, on every completion).
    """

    #: Jobs allowed in flight now (at least 1).
    limit: float
    #: The configured cap, never exceeded.
    max_limit: int
    #: Where the provider last refused: the level growth comes back to before probing beyond.
    ceiling: float
    #: The most jobs in flight at a clean completion since the last overload.
    proven: int = 0
    #: Outcomes (completions and refusals) and refusals in the current window.
    outcomes: int = 0
    refusals: int = 0
    #: The most jobs holding a slot in the current window (was the limit reached?).
    peak: int = 0
    #: The level of the last refusal.
    last_level: int = 0
    #: The next probing step above the ceiling, and how many probes in a row were refused.
    step: float = 1.0
    probes: int = 0
    #: Clean windows since the last decrease (probing waits for `2**probes` of them).
    clean: int = 0
    #: Refusals until this time belong to the last decrease's burst; the floor of that burst.
    burst_until: float = -math.inf
    floor: float = 1.0
    #: Every request waits until this time (a shared pause for sustained overload).
    pause_until: float = -math.inf
    #: Overloads in a row without a clean window in between.
    overloads: int = 0
    #: After a shared pause: one request goes first, the others wait for its answer; it has gone.
    probe: bool = False
    probe_out: bool = False
    #: Completions still to come from jobs the provider held at the last decrease (not counted).
    skip: int = 0
    #: How many decreases (bursts) so far.
    decreases: int = 0


def start(max_limit: int) -> Capacity:
    """The initial state: the configured cap, nothing learnt yet."""
    if max_limit < 1:
        raise ValueError("max_limit must be >= 1")
    return Capacity(limit=float(max_limit), max_limit=max_limit, ceiling=math.inf)


def refused(
    state: Capacity, now: float, *, level: int, in_flight: int, retry_after: float, probe: bool = False
) -> tuple[Capacity, Verdict]:
    """A submit was refused; the new state, and whether the request waits alone or with everyone.

    `level`: jobs whose requests the provider holds or is answering, this one included (those waiting
    to retry after a refusal excluded); `in_flight`: every job holding a slot; `probe`: the refused
    request was the one sent first after a shared pause (`probing`).
    """
    state = tick(state, now)
    refusals, outcomes = state.refusals + 1, state.outcomes + 1
    state = replace(state, refusals=refusals, outcomes=outcomes, peak=max(state.peak, in_flight))
    evidence = max(1.0, float(level - 1))  # the provider held `level - 1` others, and no more
    # Overload: most of a window's outcomes refused (a window no longer than the jobs in flight).
    window = max(outcomes, min(math.ceil(state.limit), in_flight))
    # The probe sent after a shared pause was refused: the overload goes on. (Requests of the burst
    # answered late, even after the probe went, are not the probe: only the sender can tell.)
    probe_refused = probe and state.probe_out
    overloaded = probe_refused or (refusals >= 2 and refusals >= OVERLOAD_SHARE * window)
    if now < state.burst_until and not probe_refused:
        state = replace(state, limit=min(state.limit, max(state.floor, evidence)))
        if overloaded and not state.probe:  # one shared pause per burst, however short it was
            return _pause(state, retry_after, now, level), "overload"  # the same burst: no second decrease
        return state, "burst"
    if overloaded:
        # At most halved, unless overloads come back to back: then the evidence holds.
        floor = 1.0 if state.overloads else max(1.0, state.limit / 2)
        # Back-to-back overloads (an outage) keep the level where the first one began.
        ceiling = state.ceiling if state.overloads else state.limit
        limit = min(state.limit, max(floor, evidence))
        state = replace(state, limit=limit, ceiling=ceiling, floor=floor, probes=0)
        return _pause(_decrease(state, now, retry_after), retry_after, now, level), "overload"
    # Refused at a level the provider held before, or with nothing else out (a cap of 0 is no cap),
    # is isolated; but a second refusal in a row at the very top of what was proven says that top
    # was held only in passing (one job let in as another left), so it no longer counts.
    second_at_top = level == state.proven == state.last_level
    state = replace(state, last_level=level)
    if level <= max(state.proven, 1) and not second_at_top:
        return state, "isolated"
    if second_at_top:
        state = replace(state, proven=level - 1)
    floor = 1.0 if state.overloads else max(1.0, state.limit / 2)
    limit = min(state.limit, max(floor, evidence))
    state = replace(
        state,
        limit=limit,
        # During an overload (an outage) the level where it began stays the one to come back to.
        ceiling=state.ceiling if state.overloads else max(limit + 1, min(state.ceiling, float(level))),
        floor=floor,
        probes=state.probes + 1 if state.limit >= state.ceiling else state.probes,
    )
    return _decrease(state, now, retry_after), "cap"


def _decrease(state: Capacity, now: float, retry_after: float) -> Capacity:
    """Open a burst: the refusals of the next `BURST` seconds (or Retry-After) are this one decrease."""
    return replace(
        state,
        clean=0,
        step=1.0,
        burst_until=now + max(BURST, retry_after),
        decreases=state.decreases + 1,
    )


def _pause(state: Capacity, retry_after: float, now: float, level: int) -> Capacity:
    """One shared pause, with a probe after it; what was proven no longer holds.

    Longer for each overload in a row while the provider holds none of our jobs (an outage). The
    `level - 1` jobs the provider holds now finish under the old conditions: not counted.
    """
    factor = min(2**state.overloads, MAX_PAUSE_FACTOR) if level <= 1 else 1
    pause = max(retry_after, 0.0) * factor
    return replace(
        state,
        proven=0,
        outcomes=0,
        refusals=0,
        pause_until=now + pause,
        burst_until=max(state.burst_until, now + max(BURST, pause)),
        overloads=state.overloads + 1,
        probe=True,
        probe_out=False,
        skip=max(state.skip, level - 1),
    )


def probing(state: Capacity, now: float) -> Capacity:
    """The probe after a shared pause is being sent (the others wait for its answer)."""
    return replace(tick(state, now), probe_out=True)


def unanswered(state: Capacity) -> Capacity:
    """The probe got no verdict (a 5xx, a broken connection, never sent): another goes first instead."""
    return replace(state, probe_out=False)


def accepted(state: Capacity, now: float) -> Capacity:
    """A submit was taken: after a shared pause, the probe got through and the others may follow."""
    return replace(tick(state, now), probe=False, probe_out=False) if state.probe else state


def completed(state: Capacity, now: float, *, level: int, in_flight: int) -> Capacity:
    """A job finished cleanly; `level`: jobs the provider held at once while it ran (itself
    included), `in_flight`: every job holding a slot."""
    # Called for every job: the usual case (no pause or burst to forget, mid-window) is one replace.
    if state.burst_until != _NEVER or state.pause_until != _NEVER:
        state = tick(state, now)
    if state.skip:
        return replace(state, skip=state.skip - 1)  # held since before the last decrease
    outcomes = state.outcomes + 1
    proven = state.proven if state.proven >= level else level
    peak = state.peak if state.peak >= in_flight else in_flight
    if outcomes < state.limit:  # the window is ceil(limit) outcomes
        return replace(state, outcomes=outcomes, proven=proven, peak=peak)
    # The window is over.
    clean = state.refusals * 4 < outcomes  # isolated refusals do not spoil it
    used = peak >= math.floor(state.limit)  # no growth for a limit the jobs did not reach
    state = replace(state, outcomes=0, refusals=0, proven=proven, peak=0)
    if not clean:
        return replace(state, clean=0)
    state = replace(state, overloads=0, clean=state.clean + 1)
    if not used or state.limit >= state.max_limit:
        return state
    if math.isfinite(state.ceiling) and state.limit < state.ceiling - 1:
        # Concave: halfway back to where trouble began (at most doubling: a stale ceiling must not
        # send a crowd of new jobs at once).
        limit = state.limit + max(1.0, min((state.ceiling - state.limit) / 2, state.limit))
        return replace(state, limit=min(limit, state.ceiling - 1, float(state.max_limit)))
    if state.limit > state.ceiling:
        # A probe above the old ceiling held for a whole window: that ceiling is gone.
        state = replace(state, ceiling=math.inf, probes=0)
    if state.clean < min(2**state.probes, MAX_HOLD):
        return state
    # Convex: probe beyond, by steps that double while they hold (at most half the limit at once).
    limit = min(state.limit + state.step, 1.5 * state.limit, float(state.max_limit))
    return replace(state, limit=limit, step=state.step * 2)


def tick(state: Capacity, now: float) -> Capacity:
    """Time passed: forget a pause and a burst that are over (for state kept outside this process)."""
    if state.pause_until <= now and state.pause_until != -math.inf:
        state = replace(state, pause_until=-math.inf)
    if state.burst_until <= now and state.burst_until != -math.inf:
        state = replace(state, burst_until=-math.inf)
    return state
