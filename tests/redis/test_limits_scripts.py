"""The shared limiter's Lua scripts, each step's semantics on a real redis-server.

Leases of a few milliseconds let Redis's own clock expire them; the tests poll the condition (bounded)
instead of sleeping for it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
import redis

from mjasync import _capacity
from mjasync.redis import _limits_scripts as scripts

TAG = "{mj:scripts}"
KEYS = [f"{TAG}:{name}" for name in scripts.KEYS]
INFLIGHT, RETRYING, SENDING, CAPACITY, COOLDOWN, PACE, WAITING = KEYS
CHANNEL = f"{TAG}:{scripts.CHANNEL}"
#: A hang detector for the polled conditions, not a timing expectation.
BOUND = 30.0


class Limits:
    """The scripts, called as `SharedLimits` calls them."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.admit_script = client.register_script(scripts.ADMIT)
        self.submit_script = client.register_script(scripts.SUBMIT)
        self.flush_script = client.register_script(scripts.FLUSH)
        self.stats_script = client.register_script(scripts.STATS)

    def admit(
        self,
        lease: str,
        *,
        lease_ms: int = 60_000,
        cap: int = 3,
        interval: float = 0,
        more: bool = False,
        moves: tuple[tuple[str, str], ...] = (),
    ) -> dict[str, Any]:
        holder = lease.rpartition(":")[0]
        args = [CHANNEL, lease, lease_ms, cap, interval, holder, "1" if more else "0", len(moves)]
        args += [part for pair in moves for part in pair]
        reply = self.admit_script(keys=KEYS, args=args)
        return dict(zip(scripts.ADMIT_REPLY, reply, strict=True))

    def submit(
        self,
        *,
        resend: bool = False,
        member: str = "",
        cap: int = 3,
        interval: float = 0,
        claimer: str = "me",
        claim_ms: int = 60_000,
    ) -> dict[str, Any]:
        mode = "resend" if resend else "submit"
        reply = self.submit_script(keys=KEYS, args=[CHANNEL, mode, member, cap, interval, claimer, claim_ms])
        return dict(zip(scripts.SUBMIT_REPLY, reply, strict=True))

    def flush(
        self,
        *,
        lease_ms: int = 60_000,
        cap: int = 3,
        releases: tuple[str, ...] = (),
        moves: tuple[tuple[str, str], ...] = (),
        refreshes: tuple[str, ...] = (),
        known: int = -1,
        state: _capacity.Capacity | None = None,
        cooldown_ms: int = 0,
        announce_limit: str = "",
        announce_probe: bool = False,
    ) -> dict[str, Any]:
        capacity: list[Any] = [known, b"", "", "0", "0", 0, "", ""]
        if state is not None:
            capacity = [
                known,
                msgspec.msgpack.encode(state),
                repr(state.limit),
                "1" if state.probe else "0",
                "1" if state.probe_out else "0",
                cooldown_ms,
                announce_limit,
                "1" if announce_probe else "",
            ]
        counts = [len(releases), len(moves), len(refreshes)]
        ids = [*releases, *(part for pair in moves for part in pair), *refreshes]
        reply = self.flush_script(keys=KEYS, args=[CHANNEL, lease_ms, cap, *counts, *capacity, *ids])
        return dict(zip(scripts.FLUSH_REPLY, reply, strict=True))

    def stats(self, *, cap: int = 3) -> dict[str, Any]:
        return dict(zip(scripts.STATS_REPLY, self.stats_script(keys=KEYS, args=[CHANNEL, cap]), strict=True))

    def redis_ms(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000


@pytest.fixture
def limits(redis_url: str) -> Iterator[Limits]:
    with redis.Redis.from_url(redis_url) as client:
        yield Limits(client)


@pytest.fixture
def messages(redis_url: str) -> Iterator[Callable[[], list[bytes]]]:
    """Subscribes to the channel; calling it returns the messages so far (waiting briefly for more)."""
    with redis.Redis.from_url(redis_url) as client, client.pubsub() as pubsub:
        pubsub.subscribe(CHANNEL)
        assert pubsub.get_message(timeout=10)["type"] == "subscribe"  # type: ignore[index]
        seen: list[bytes] = []

        def read() -> list[bytes]:
            while (message := pubsub.get_message(timeout=0.2)) is not None:
                seen.append(message["data"])
            return seen

        yield read


def poll(condition: Callable[[], Any], what: str) -> Any:
    """Ask `condition` until it is truthy (Redis time has to pass); a hang detector bounds it."""
    give_up = time.monotonic() + BOUND
    while not (value := condition()):
        assert time.monotonic() < give_up, f"never: {what}"
        time.sleep(0.001)
    return value


def probing_state() -> _capacity.Capacity:
    """A state just after a shared pause: the probe is still to go."""
    return msgspec.structs.replace(_capacity.start(8), probe=True, probe_out=False, limit=4.0)


def test_admission_grants_up_to_the_cap_and_not_beyond(limits: Limits) -> None:
    granted = [limits.admit(f"h:{n}", cap=3) for n in range(3)]
    assert [g["status"] for g in granted] == [scripts.OK] * 3
    assert [g["in_flight"] for g in granted] == [1, 2, 3]
    refused = limits.admit("h:3", cap=3)
    assert refused["status"] == scripts.FULL and refused["in_flight"] == 3
    assert 0 < refused["wait"] <= 60_000  # until the first lease expires
    assert limits.client.zcard(INFLIGHT) == 3 and limits.client.zscore(INFLIGHT, "h:3") is None
    # The learnt limit caps below the configured one (floored), never above it.
    limits.client.hset(CAPACITY, "limit", "2.7")
    limits.flush(releases=("h:0", "h:1"))
    assert limits.admit("h:4", cap=3)["status"] == scripts.OK
    assert limits.admit("h:5", cap=3)["status"] == scripts.FULL
    limits.client.hset(CAPACITY, "limit", "40")
    assert limits.admit("h:6", cap=3)["status"] == scripts.OK
    assert limits.admit("h:7", cap=3)["status"] == scripts.FULL


def test_an_expired_lease_frees_its_slot(limits: Limits, messages: Callable[[], list[bytes]]) -> None:
    assert limits.admit("dead:1", lease_ms=5, cap=1)["status"] == scripts.OK
    # Nothing refreshes it: once Redis's clock passes its expiry, the slot is another's.
    granted = poll(lambda: limits.admit("live:1", cap=1)["status"] == scripts.OK, "the lease expired")
    assert granted
    assert limits.client.zscore(INFLIGHT, "dead:1") is None
    assert limits.client.zscore(INFLIGHT, "live:1") is not None
    assert b"freed live" in messages()  # the purge names the waiter


def test_a_refresh_keeps_a_lease_alive(limits: Limits) -> None:
    first = limits.admit("h:1", lease_ms=200, cap=1)
    expiry = first["now"] + 200
    refreshed = limits.flush(refreshes=("h:1",), lease_ms=60_000)
    assert refreshed["lost"] == 0
    assert limits.client.zscore(INFLIGHT, "h:1") == refreshed["now"] + 60_000
    poll(lambda: limits.redis_ms() > expiry + 5, "Redis's clock passed the first expiry")
    assert limits.admit("h:2", cap=1)["status"] == scripts.FULL  # still held
    # A lease found gone (its holder stalled past it) is taken again, and reported.
    assert limits.admit("h:3", lease_ms=5, cap=5)["status"] == scripts.OK
    poll(lambda: limits.stats()["in_flight"] == 1, "the short lease expired")
    again = limits.flush(refreshes=("h:1", "h:3"))
    assert again["lost"] == 1 and again["in_flight"] == 2


def test_the_learnt_cap_is_written_by_compare_and_set(
    limits: Limits, messages: Callable[[], list[bytes]]
) -> None:
    fresh = limits.flush(known=-1, state=_capacity.start(8))  # a version that cannot match: a read
    assert fresh["status"] == scripts.STALE and fresh["version"] == 0 and fresh["blob"] == b""
    assert limits.flush(known=0)["status"] == scripts.CURRENT  # nothing to write, nothing new
    lowered = msgspec.structs.replace(_capacity.start(8), limit=2.5, ceiling=4.0, decreases=1)
    written = limits.flush(known=0, state=lowered, announce_limit="2")
    assert written["status"] == scripts.WRITTEN and written["version"] == 1
    assert limits.client.hget(CAPACITY, "limit") == b"2.5"
    assert b"limit 2" in messages()
    # A writer that read version 0 is refused, and told the state as it is now.
    stale = limits.flush(known=0, state=_capacity.start(8))
    assert stale["status"] == scripts.STALE and stale["version"] == 1
    assert msgspec.msgpack.decode(stale["blob"], type=_capacity.Capacity) == lowered
    # A batch with no state of its own brings a stale copy up to date too.
    assert limits.flush(known=0)["blob"] == stale["blob"] and limits.flush(known=1)["blob"] == b""
    assert limits.client.hget(CAPACITY, "limit") == b"2.5"
    # The cap admission applies is the written limit, floored.
    assert [limits.admit(f"h:{n}", cap=8)["status"] for n in range(3)] == [1, 1, scripts.FULL]
    assert limits.stats()["version"] == 1


def test_a_cooldown_blocks_admission_for_its_ttl_and_announces_itself(
    limits: Limits, messages: Callable[[], list[bytes]]
) -> None:
    paused = msgspec.structs.replace(_capacity.start(8), probe=True)
    assert limits.flush(known=0, state=paused, cooldown_ms=300)["status"] == scripts.WRITTEN
    assert b"cooldown 300" in messages()
    cooling = limits.admit("h:1", cap=8)
    assert cooling["status"] == scripts.COOLING and 0 < cooling["wait"] <= 300
    assert limits.submit()["status"] == scripts.COOLING
    assert limits.client.zcard(INFLIGHT) == 0  # no lease taken while it runs
    poll(lambda: limits.admit("h:1", cap=8)["status"] == scripts.OK, "the cooldown ended")
    assert limits.client.pttl(COOLDOWN) <= 0  # admitted only once the pause had run out
    # A shorter pause does not cut a longer one short.
    limits.flush(known=1, state=paused, cooldown_ms=60_000)
    limits.flush(known=2, state=paused, cooldown_ms=10)
    assert limits.client.pttl(COOLDOWN) > 10_000


def test_pace_reserves_successive_submit_times(limits: Limits) -> None:
    starts = []
    for n in range(4):
        granted = limits.admit(f"h:{n}", cap=8, interval=100)
        assert granted["status"] == scripts.OK
        starts.append(granted["now"] + granted["wait"])
    for before, after in itertools.pairwise(starts):
        assert abs(after - before - 100) <= 1, starts  # each 100 ms after the last (ms rounding)
    # A retry cleared by the submit script keeps the same pace.
    cleared = limits.submit(interval=100)
    assert abs(cleared["now"] + cleared["wait"] - starts[-1] - 100) <= 1
    # Without a pace, no wait.
    assert limits.submit()["wait"] == 0


def test_the_probe_after_a_pause_admits_exactly_one(
    limits: Limits, messages: Callable[[], list[bytes]]
) -> None:
    assert limits.flush(known=0, state=probing_state())["status"] == scripts.WRITTEN
    answers = [limits.submit(claimer=f"c{n}") for n in range(5)]
    assert [a["claimed"] for a in answers] == [1, 0, 0, 0, 0]
    assert [a["status"] for a in answers] == [scripts.OK] + [scripts.PROBE_OUT] * 4
    assert all(0 < a["wait"] <= 60_000 for a in answers[1:])  # until the claim runs out at the latest
    assert limits.client.hget(CAPACITY, "probe_owner") == b"c0"
    # Its owner asking again (its submit waited out another pause first) is still the probe.
    assert limits.submit(claimer="c0")["claimed"] == 1
    assert limits.submit(claimer="c1")["status"] == scripts.PROBE_OUT
    # The claim moved the version: a writer that read the state before it cannot undo it.
    assert limits.flush(known=1, state=probing_state())["status"] == scripts.STALE
    # The probe was taken: the state says so (and the others hear it); everyone goes.
    done = msgspec.structs.replace(probing_state(), probe=False)
    assert limits.flush(known=3, state=done, announce_probe=True)["status"] == scripts.WRITTEN
    assert b"probe 0 0" in messages()
    assert [limits.submit(claimer=f"c{n}")["status"] for n in range(3)] == [scripts.OK] * 3
    assert limits.client.hget(CAPACITY, "probe_owner") is None


def test_a_claim_whose_holder_died_runs_out(limits: Limits) -> None:
    assert limits.flush(known=0, state=probing_state())["status"] == scripts.WRITTEN
    assert limits.submit(claimer="dead", claim_ms=5)["claimed"] == 1
    retaken = poll(lambda: limits.submit(claimer="next")["claimed"], "the dead claim ran out")
    assert retaken == 1 and limits.client.hget(CAPACITY, "probe_owner") == b"next"
    # A conflict reply reports a claim past its time as none.
    assert limits.submit(claimer="short", claim_ms=5)["status"] == scripts.PROBE_OUT
    limits.client.hset(CAPACITY, "probe_until", str(limits.redis_ms() - 1))
    assert limits.flush(known=0, state=probing_state())["probe_out"] == b"0"


def test_a_lease_is_sending_until_answered_then_held_or_retrying(
    limits: Limits, messages: Callable[[], list[bytes]]
) -> None:
    """The level the learnt cap reads counts only leases whose jobs the provider holds."""
    assert [limits.admit(f"h:{n}", cap=3)["sending"] for n in range(3)] == [1, 2, 3]
    assert limits.client.zscore(SENDING, "h:0") == limits.client.zscore(INFLIGHT, "h:0")
    # h:0 was taken, h:1 refused: one held, one waiting to retry, one still unanswered.
    moved = limits.flush(moves=(("h:0", "held"), ("h:1", "retrying")))
    assert (moved["in_flight"], moved["retrying"], moved["sending"]) == (3, 1, 1)
    assert b"retry" in messages()  # room for another retry
    # Moves ride along with an admission too; a lease no longer held is left alone.
    turned_away = limits.admit("h:3", cap=3, moves=(("h:2", "held"), ("gone:1", "retrying")))
    assert turned_away["status"] == scripts.FULL
    assert (turned_away["retrying"], turned_away["sending"]) == (1, 0)
    assert limits.client.zcard(RETRYING) == 1 and limits.client.zscore(RETRYING, "gone:1") is None
    # A refresh keeps the marks with their leases; a release takes them off.
    limits.flush(refreshes=("h:1",), lease_ms=90_000)
    assert limits.client.zscore(RETRYING, "h:1") == limits.client.zscore(INFLIGHT, "h:1")
    released = limits.flush(releases=("h:1",))
    assert (released["in_flight"], released["retrying"], released["sending"]) == (2, 0, 0)


def test_a_retry_waits_for_room_among_jobs_out(limits: Limits, messages: Callable[[], list[bytes]]) -> None:
    """A refused submit goes again only into room under the cap, counting every job out but those that
    wait to retry; cleared, its lease is sending again."""
    assert [limits.admit(f"h:{n}", cap=2)["status"] for n in range(2)] == [1, 1]
    limits.flush(moves=(("h:0", "retrying"), ("h:1", "held")))
    # h:0 waits to retry: only h:1 is out, so there is room under 2.
    cleared = limits.submit(resend=True, member="h:0", cap=2)
    assert cleared["status"] == scripts.OK
    assert limits.client.zcard(RETRYING) == 0 and limits.client.zscore(SENDING, "h:0") is not None
    # Under a cap of 1, h:1 holds the only place: h:0 waits.
    limits.flush(moves=(("h:0", "retrying"),))
    assert limits.submit(resend=True, member="h:0", cap=1)["status"] == scripts.FULL
    assert limits.client.zcard(RETRYING) == 1
    # Once h:1 is released there is room; a first submit (not a retry) is not held back by the cap.
    assert limits.submit(member="h:0", cap=1)["status"] == scripts.OK
    limits.flush(releases=("h:1",), moves=(("h:0", "retrying"),), cap=1)
    assert limits.submit(resend=True, member="h:0", cap=1)["status"] == scripts.OK
    assert limits.flush(releases=("h:0",))["retrying"] == 0


def test_statistics_read_everything_at_once(limits: Limits) -> None:
    for n in range(3):
        limits.admit(f"a:{n}", cap=8)
    limits.admit("b:1", cap=8)
    moves = (("a:0", "retrying"), ("a:1", "held"), ("b:1", "held"))
    limits.flush(moves=moves, known=0, state=_capacity.start(8), cooldown_ms=5_000, cap=8)
    stats = limits.stats(cap=8)
    assert sorted(stats["leases"]) == [b"a:0", b"a:1", b"a:2", b"b:1"]
    assert (stats["in_flight"], stats["retrying"], stats["sending"]) == (4, 1, 1)
    assert 0 < stats["cooldown"] <= 5_000 and stats["version"] == 1
    assert float(stats["limit"]) == 8.0


def test_a_freed_slot_names_the_holders_that_waited_longest(
    limits: Limits, messages: Callable[[], list[bytes]]
) -> None:
    """Each free slot wakes one waiting holder, the one that asked longest ago, not every process."""
    assert [limits.admit(f"x:{n}", cap=2)["status"] for n in range(2)] == [1, 1]
    for holder in ("a", "b", "c"):  # turned away, in this order: queued
        turned_away = limits.admit(f"{holder}:1", cap=2)
        assert turned_away["status"] == scripts.FULL
        poll(lambda at=turned_away["now"]: limits.redis_ms() > at, "a new millisecond")  # distinct scores
    assert limits.client.zrange(WAITING, 0, -1) == [b"a", b"b", b"c"]
    limits.flush(releases=("x:0",), cap=2)
    assert messages()[-1] == b"freed a"
    # a is admitted with more jobs waiting into the last slot: to the back of the queue.
    assert limits.admit("a:1", cap=2, more=True)["status"] == scripts.OK
    assert limits.client.zrange(WAITING, 0, -1) == [b"b", b"c", b"a"]
    limits.flush(releases=("x:1", "a:1"), cap=2)
    assert messages()[-1] == b"freed b c"
    # Admitted with nothing more waiting: out of the queue. With no one queued, anyone may ask.
    assert limits.admit("b:1", cap=2)["status"] == scripts.OK
    assert limits.admit("c:1", cap=2)["status"] == scripts.OK
    limits.client.zrem(WAITING, "a")
    assert limits.client.zcard(WAITING) == 0
    limits.flush(releases=("b:1",), cap=2)
    assert messages()[-1] == b"freed"
    # A holder that stopped asking long ago (it died) is named no more.
    limits.client.zadd(WAITING, {"dead": 1})
    limits.flush(releases=("c:1",), cap=2)
    assert messages()[-1] == b"freed" and limits.client.zcard(WAITING) == 0
