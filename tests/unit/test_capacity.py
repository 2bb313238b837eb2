"""The capacity algorithm (`mjasync._capacity`), with an injected clock: no sleeps, no timings.

A deterministic discrete-time loop plays a provider with a concurrency cap (that may change, refuse
at random, or refuse everything for a while) against a client that follows the algorithm the way
`JobLimiter` does: at most `limit` jobs hold a slot, a refused job waits (its Retry-After, or the
shared pause) and then re-sends only when fewer than `limit` jobs are running.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from mjasync import _capacity as capacity
from mjasync._capacity import Capacity

DT = 0.01


@dataclass
class Provider:
    """A provider's side: its cap at time t, a share of random refusals, an outage."""

    cap: Callable[[float], int]
    random_share: float = 0.0
    outage: tuple[float, float] | None = None
    retry_after: float = 1.0
    duration: tuple[float, float] = (0.8, 1.2)


@dataclass
class Run:
    state: Capacity
    submits: list[float] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)
    completions: list[float] = field(default_factory=list)
    #: (time, jobs running at the provider) at every step.
    running: list[tuple[float, int]] = field(default_factory=list)
    limits: list[tuple[float, float]] = field(default_factory=list)

    def mean_running(self, since: float, until: float = math.inf) -> float:
        values = [n for t, n in self.running if since <= t < until]
        return sum(values) / len(values)

    def share_refused(self, since: float = 0.0) -> float:
        sent = [t for t in self.submits if t >= since]
        return len([t for t in self.refusals if t >= since]) / len(sent)

    def rate(self, events: list[float], since: float, until: float) -> float:
        return len([t for t in events if since <= t < until]) / (until - since)


def simulate(provider: Provider, *, seconds: float, max_limit: int = 64, seed: int = 1) -> Run:
    rng = random.Random(seed)
    run = Run(capacity.start(max_limit))
    running: list[float] = []  # finish times
    parked: list[float] = []  # when each refused job may re-send
    for step in range(round(seconds / DT)):
        now = step * DT
        for end in sorted(e for e in running if e <= now):
            run.state = capacity.completed(
                run.state, now, level=len(running), in_flight=len(running) + len(parked)
            )
            running.remove(end)
            run.completions.append(now)
        limit = math.floor(run.state.limit)
        ready = [r for r in parked if r <= now]
        new = max(0, limit - len(running) - len(parked))
        senders = [("parked", r) for r in sorted(ready)] + [("new", 0.0)] * new
        for kind, ready_at in senders:
            if now < run.state.pause_until or len(running) >= math.floor(run.state.limit):
                break
            if run.state.probe_out:
                break  # after a shared pause, the others wait for the probe's answer
            probe = run.state.probe
            if probe:
                run.state = capacity.probing(run.state, now)
            if kind == "parked":
                parked.remove(ready_at)
            run.submits.append(now)
            out = provider.outage is not None and provider.outage[0] <= now < provider.outage[1]
            if out or len(running) >= provider.cap(now) or rng.random() < provider.random_share:
                run.refusals.append(now)
                run.state, verdict = capacity.refused(
                    run.state,
                    now,
                    level=len(running) + 1,
                    in_flight=len(running) + len(parked) + 1,
                    retry_after=provider.retry_after,
                    probe=probe,
                )
                waits_alone = verdict in ("isolated", "cap") or run.state.pause_until <= now
                parked.append(now + provider.retry_after if waits_alone else run.state.pause_until)
            else:
                run.state = capacity.accepted(run.state, now)
                running.append(now + rng.uniform(*provider.duration))
        run.running.append((now, len(running)))
        run.limits.append((now, run.state.limit))
    return run


def refuse(
    state: Capacity, now: float, level: int, retry_after: float = 1.0, *, probe: bool = False
) -> tuple[Capacity, str]:
    """A refusal while `level` jobs are out and 20 hold a slot."""
    return capacity.refused(state, now, level=level, in_flight=20, retry_after=retry_after, probe=probe)


def fixed(n: int) -> Callable[[float], int]:
    return lambda _t: n


# --- one decrease per burst -------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", [0.0, 1.0])
def test_a_burst_of_refusals_is_one_decrease_however_short_its_retry_after(retry_after: float) -> None:
    """Twenty refusals in a row, with Retry-After 0 or 1: one decrease, the limit halved at most."""
    state = capacity.start(64)
    for i in range(20):
        state, _ = refuse(state, 0.001 * i, 20 - i, retry_after)
    assert state.decreases == 1
    assert state.limit == 32
    # Once the burst is over, a refusal is a new event.
    state, _ = refuse(state, capacity.BURST + 0.1, 33, retry_after)
    assert state.decreases == 2


def test_a_sustained_burst_gets_one_shared_pause_and_a_lone_refusal_none() -> None:
    state = capacity.start(64)
    state, verdict = refuse(state, 0.0, 20)
    assert verdict == "cap" and state.pause_until == -math.inf, "one refusal pauses no one"
    verdicts = []
    for i in range(1, 20):
        state, verdict = refuse(state, 0.01 * i, 20 - i)
        verdicts.append(verdict)
    assert verdicts.count("overload") == 1, "one shared pause for the burst"
    assert state.pause_until > 0.1 and state.decreases == 1


def test_an_isolated_refusal_at_a_proven_level_changes_nothing() -> None:
    state = capacity.start(16)
    for i in range(16):
        state = capacity.completed(state, float(i), level=16, in_flight=16)
    state, verdict = refuse(state, 20.0, 16)
    assert verdict == "isolated"
    assert state.limit == 16 and state.decreases == 0 and state.pause_until == -math.inf


def test_tick_forgets_a_pause_that_is_over() -> None:
    state = capacity.start(8)
    for level in range(8, 0, -1):
        state, _ = refuse(state, 0.0, level, 2.0)
    assert state.pause_until == 2.0
    assert capacity.tick(state, 1.0).pause_until == 2.0
    assert capacity.tick(state, 2.5).pause_until == -math.inf


# --- against a provider ----------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [4, 16, 48])
def test_the_limit_converges_to_a_true_cap(cap: int) -> None:
    """Mean in flight after warm-up at least 0.9 of the cap, and at most 5 % of submits refused."""
    run = simulate(Provider(fixed(cap)), seconds=60)
    assert run.mean_running(since=10) >= 0.9 * cap
    assert run.share_refused(since=10) <= 0.05
    assert run.state.limit <= cap + 1


def test_random_refusals_do_not_collapse_the_limit() -> None:
    """15 % of submits refused at random, with no cap: the limit stays up, throughput stays high."""
    clean = simulate(Provider(fixed(1000)), seconds=60, max_limit=16)
    noisy = simulate(Provider(fixed(1000), random_share=0.15), seconds=60, max_limit=16)
    assert min(limit for t, limit in noisy.limits if t > 5) >= 8
    assert len(noisy.completions) >= 0.6 * len(clean.completions)


def test_an_outage_sends_little_and_recovers() -> None:
    """Everything refused for 10 s: at most 2 requests/s during it, full rate within 10 s after."""
    run = simulate(Provider(fixed(16), outage=(20.0, 30.0)), seconds=60)
    assert run.rate(run.submits, 21.0, 30.0) <= 2.0
    assert run.mean_running(since=38, until=45) >= 0.9 * 16


def test_a_changing_cap_is_followed_each_way() -> None:
    """16 → 4 → 16: converged within 20 s each way."""
    run = simulate(Provider(lambda t: 4 if 30 <= t < 60 else 16), seconds=90)
    assert run.mean_running(since=10, until=30) >= 0.9 * 16
    assert run.mean_running(since=50, until=60) >= 0.9 * 4
    assert run.share_refused(since=50) <= 0.05 or run.rate(run.refusals, 50, 60) <= 0.5
    assert run.mean_running(since=80, until=90) >= 0.9 * 16


# --- after a shared pause: one probe, and old news ignored --------------------------------------------


def overloaded(level: int = 1) -> Capacity:
    """A state just after a burst of refusals that was sustained overload (a shared pause of 1 s)."""
    state = capacity.start(16)
    for i in range(8):
        state, _ = refuse(state, 0.001 * i, level)
    assert state.probe and state.pause_until > 0
    return state


def test_after_a_pause_one_probe_goes_first_and_its_acceptance_ends_the_overload() -> None:
    state = capacity.probing(overloaded(), 2.0)
    assert state.probe_out
    state = capacity.accepted(state, 2.1)
    assert not state.probe and not state.probe_out
    # A later refusal at a level held before is judged afresh, not as a refused probe.
    state, verdict = refuse(state, 5.0, 1)
    assert verdict != "overload" and state.pause_until == -math.inf


def test_a_refused_probe_is_another_overload_with_a_longer_pause() -> None:
    state = overloaded()
    first = state.pause_until
    state, verdict = refuse(capacity.probing(state, 2.0), 2.0, 1, probe=True)
    assert verdict == "overload"
    assert state.pause_until - 2.0 > first, "the provider holds none of ours: the pause grows"
    assert state.probe and not state.probe_out and state.limit == 1


def test_refusals_of_the_burst_answered_during_the_pause_are_not_the_probe() -> None:
    state = overloaded()
    decreases = state.decreases
    state, verdict = refuse(state, 0.5, 1)  # sent before the pause, answered during it
    assert verdict == "burst" and state.decreases == decreases
    # With Retry-After: 0 the probe may go before the burst's last answers are in: still not the probe.
    state, verdict = refuse(capacity.probing(state, 0.6), 0.6, 1)
    assert verdict == "burst" and state.decreases == decreases and state.probe_out


def test_a_probe_without_a_verdict_lets_another_go() -> None:
    state = capacity.unanswered(capacity.probing(overloaded(), 2.0))
    assert state.probe and not state.probe_out


def test_completions_of_jobs_held_at_an_overload_do_not_end_it() -> None:
    """Twelve jobs held when the provider started refusing everything: their completions are old news."""
    state = overloaded(level=13)
    assert state.skip == 12
    limit = state.limit
    for i in range(12):
        state = capacity.completed(state, 1.0 + i * 0.01, level=12 - i, in_flight=20)
    assert state.overloads == 1 and state.limit == limit and state.proven == 0
    state = capacity.completed(state, 2.0, level=1, in_flight=20)
    assert state.proven == 1, "a job accepted after the overload counts again"
