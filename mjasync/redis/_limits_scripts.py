"""Leaf layer: the Lua scripts of the shared limiter (`mjasync.redis.SharedLimits`), as source strings.

Each script is one atomic step on Redis, reading Redis's own clock (`TIME`, in milliseconds here), so
hosts need not agree on the time. Every script takes the same keys, all under the account's hash tag
T = `{mj:<account>}` (one slot on a Cluster), and the pub/sub channel as its first argument:

| key | type | holds |
|---|---|---|
| `T:inflight` | ZSET | one member per slot held (a lease id, `<holder>:<n>`), scored by its expiry (ms) |
| `T:retrying` | ZSET | leases whose jobs wait to retry a refused submit (scored like their lease) |
| `T:sending` | ZSET | leases whose submit is not answered yet: marked at admission, cleared by the answer |
| `T:capacity` | HASH | `state` (the `_capacity.Capacity`, msgpack), `version` (for compare-and-set), `limit` (the learnt limit, read here), `probe`, `probe_out`, `probe_until`, `probe_owner` (the probe after a shared pause, claimed here) |
| `T:cooldown` | STRING | present while a shared pause runs (its PX TTL is the pause) |
| `T:pace` | STRING | when the next submit may go (ms), if a pace is set |
| `T:waiting` | ZSET | holders with jobs waiting for a slot, scored by when they last asked (ms) |

The provider holds the jobs of the leases in neither `retrying` nor `sending`: that count is the level
the learnt cap reads a refusal or completion at (`_capacity`), across every holder.

Channel `T:events` carries `freed <holder> ...` (slots came back: the holders named, one per free
slot, those that asked longest ago, may ask again; with no names, anyone may), `retry` (a job began to
wait to retry: room for another retry), `cooldown <ms>` (a shared pause began), `limit <n>` (the
learnt cap changed) and `probe <probe> <probe_out>` (the probe after a pause went, or was answered).
Naming the holders keeps a freed slot from waking every process's waiter when only one can have it.

A lease is moved between the marks by a `move` list: pairs of a lease and `held` (out of both
marks) or `retrying` (out of `sending`, into `retrying`); a lease no longer held is left alone.

A script's reply is a flat array of integers and strings (a Lua `false` would cut it short, so none is
returned); the `*_REPLY` tuples name its fields in order.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADMIT",
    "ADMIT_REPLY",
    "CHANNEL",
    "COOLING",
    "CURRENT",
    "FLUSH",
    "FLUSH_REPLY",
    "FULL",
    "KEYS",
    "OK",
    "PROBE_OUT",
    "STALE",
    "STATS",
    "STATS_REPLY",
    "SUBMIT",
    "SUBMIT_REPLY",
    "WAITER_MS",
    "WRITTEN",
]

#: The keys every script takes, in this order, each after the account's tag and a colon.
KEYS: Final = ("inflight", "retrying", "sending", "capacity", "cooldown", "pace", "waiting")
#: The pub/sub channel, after the tag and a colon.
CHANNEL: Final = "events"
#: A holder that has not asked for this long (ms) is no longer waiting (its waiters ask every second).
WAITER_MS: Final = 3000

#: A reply's status: admitted (or cleared), the cap is reached, a shared pause runs, the probe after a
#: pause is out (someone else's) and its answer is awaited.
OK: Final = 1
FULL: Final = 0
COOLING: Final = -1
PROBE_OUT: Final = -2
#: `FLUSH`'s status: the state was written; the caller's version was stale; nothing to write.
WRITTEN: Final = 1
STALE: Final = 0
CURRENT: Final = -1

_PRELUDE: Final = f"""
local inflight, retrying, sending, capacity = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cooldown, pace, waiting = KEYS[5], KEYS[6], KEYS[7]
local channel = ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- Numbers go to Redis as strings; '%.14g' (Lua's own) would round large ones.
local function int(x) return string.format('%d', x) end
local function num(x) return string.format('%.3f', x) end

-- The cap now: the learnt limit (none learnt yet: the caller's cap), at most the caller's, at least 1.
local function cap(max_in_flight)
  local c = max_in_flight
  local limit = tonumber(redis.call('HGET', capacity, 'limit'))
  if limit then c = math.min(math.floor(limit), max_in_flight) end
  if c < 1 then c = 1 end
  return c
end

-- Slots are free: name the holders that asked longest ago, one per free slot, to ask again.
local function wake(max_in_flight)
  local free = cap(max_in_flight) - redis.call('ZCARD', inflight)
  if free <= 0 then return end
  redis.call('ZREMRANGEBYSCORE', waiting, '-inf', int(now - {WAITER_MS}))
  local names = redis.call('ZRANGE', waiting, 0, free - 1)
  table.insert(names, 1, 'freed')
  redis.call('PUBLISH', channel, table.concat(names, ' '))
end

-- Leases past their expiry belong to processes that died or stalled: their slots come back (and
-- waiters are told, unless the caller does it later: no `max_in_flight`).
local function purge(max_in_flight)
  local gone = redis.call('ZREMRANGEBYSCORE', inflight, '-inf', int(now))
  redis.call('ZREMRANGEBYSCORE', retrying, '-inf', int(now))
  redis.call('ZREMRANGEBYSCORE', sending, '-inf', int(now))
  if gone > 0 and max_in_flight then wake(max_in_flight) end
  return gone
end

-- Move `count` leases from ARGV[first] on (pairs: lease, 'held' or 'retrying'); the next index, and
-- how many began to wait to retry.
local function move(first, count)
  local i, retries = first, 0
  for _ = 1, count do
    local lease, to = ARGV[i], ARGV[i + 1]
    redis.call('ZREM', sending, lease)
    if to == 'held' then
      redis.call('ZREM', retrying, lease)
    else
      local score = redis.call('ZSCORE', inflight, lease)
      if score then retries = retries + redis.call('ZADD', retrying, score, lease) end
    end
    i = i + 2
  end
  return i, retries
end

-- Milliseconds until the first lease expires (a waiter looks again then at the latest).
local function earliest()
  local first = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
  if first[2] then return math.max(1, tonumber(first[2]) - now) end
  return 1000
end

local function version() return tonumber(redis.call('HGET', capacity, 'version')) or 0 end

-- Reserve the next submit time under a pace of `interval` ms; the wait until it, in ms.
local function reserve(interval)
  if interval <= 0 then return 0 end
  local start = math.max(now, tonumber(redis.call('GET', pace)) or 0)
  redis.call('SET', pace, num(start + interval), 'PX', int(start + interval - now + 1000))
  return start - now
end
"""

#: Take one slot: cooldown, purge, cap, pace, lease (marked `sending`: its submit goes next). A
#: holder turned away (or admitted into the last free slot with more jobs waiting) is queued in
#: `waiting`, to be named when a slot frees. Moves of the holder's other leases ride along.
#: ARGV: [2] lease id, [3] lease ms, [4] max in flight, [5] pace interval ms (0: none), [6] the holder,
#: [7] "1" when more of its jobs wait after this one, [8] moves n, then the moves.
ADMIT: Final = (
    _PRELUDE
    + """
move(9, tonumber(ARGV[8]))
local probe = redis.call('HGET', capacity, 'probe') or '0'
local pttl = redis.call('PTTL', cooldown)
if pttl > 0 then return {-1, pttl, now, 0, 0, 0, 0, version(), probe} end
purge(tonumber(ARGV[4]))
local c = cap(tonumber(ARGV[4]))
local n = redis.call('ZCARD', inflight)
local r = redis.call('ZCARD', retrying)
local s = redis.call('ZCARD', sending)
if n >= c then
  redis.call('ZADD', waiting, int(now), ARGV[6])
  return {0, earliest(), now, n, r, s, c, version(), probe}
end
local wait = reserve(tonumber(ARGV[5]))
local expiry = int(now + tonumber(ARGV[3]))
redis.call('ZADD', inflight, expiry, ARGV[2])
redis.call('ZADD', sending, expiry, ARGV[2])
if ARGV[7] ~= '1' then
  redis.call('ZREM', waiting, ARGV[6])
elseif n + 1 >= c then
  redis.call('ZADD', waiting, int(now), ARGV[6])  -- to the back: the others' turn comes first
end
return {1, wait, now, n + 1, r, s + 1, c, version(), probe}
"""
)
#: status (OK: the wait is the pace's; FULL: until the first lease expires; COOLING: the pause left),
#: wait ms, Redis time ms, leases held (all holders), of them retrying, of them sending, the cap, the
#: state's version, whether the probe after a pause is still to come ("0"/"1").
ADMIT_REPLY: Final = (
    "status", "wait", "now", "in_flight", "retrying", "sending", "cap", "version", "probe"
)  # fmt: skip

#: Clear one submit of a job that holds a slot: cooldown, (for a retry of a refused submit: room under
#: the cap, counting every job but those waiting to retry, as `JobLimiter` does), the probe after a
#: pause (claimed by the first to ask; the others wait for its answer), pace. The lease cleared is
#: marked `sending` (and no longer `retrying`).
#: ARGV: [2] "submit" or "resend", [3] the caller's lease ("" unknown), [4] max in flight, [5] pace
#: interval ms (0: none, or already kept), [6] the claimer's id (its lease), [7] how long a claim
#: holds, ms (a claim that runs out with no answer lets another go first).
SUBMIT: Final = (
    _PRELUDE
    + """
local pttl = redis.call('PTTL', cooldown)
if pttl > 0 then return {-1, pttl, now, 0} end
local member = ARGV[3]
if ARGV[2] == 'resend' then
  purge(tonumber(ARGV[4]))
  local out = redis.call('ZCARD', inflight) - redis.call('ZCARD', retrying)
  -- The job asking waits to retry: it is not among those out, marked or not.
  if member == '' or not redis.call('ZSCORE', retrying, member) then out = out - 1 end
  if out >= cap(tonumber(ARGV[4])) then return {0, earliest(), now, 0} end
end
local claimed = 0
if (redis.call('HGET', capacity, 'probe') or '0') == '1' then
  local out_until = tonumber(redis.call('HGET', capacity, 'probe_until')) or 0
  local owner = redis.call('HGET', capacity, 'probe_owner')
  -- The claim's owner asking again (its submit waited out another pause) is still the probe.
  if redis.call('HGET', capacity, 'probe_out') == '1' and out_until > now and owner ~= ARGV[6] then
    return {-2, out_until - now, now, 0}
  end
  redis.call('HSET', capacity, 'probe_out', '1', 'probe_until', int(now + tonumber(ARGV[7])),
    'probe_owner', ARGV[6])
  -- A writer that read the state before this claim must not undo it: its compare-and-set fails.
  redis.call('HINCRBY', capacity, 'version', 1)
  claimed = 1
end
local wait = reserve(tonumber(ARGV[5]))
if member ~= '' then
  redis.call('ZREM', retrying, member)
  local score = redis.call('ZSCORE', inflight, member)
  if score then redis.call('ZADD', sending, score, member) end
end
return {1, wait, now, claimed}
"""
)
#: status (OK, FULL for a retry with no room, COOLING, PROBE_OUT), wait ms (the pace's, or until it is
#: worth asking again), Redis time ms, whether this caller claimed the probe (1/0).
SUBMIT_REPLY: Final = ("status", "wait", "now", "claimed")

#: What a holder sends in one batch: releases, moves, lease refreshes, and (compare-and-set on
#: `version`) the capacity state its notes made. The leases are handled whatever the version is; a
#: caller whose version is stale gets the state as it is (so its copy keeps up with every batch).
#: ARGV: [2] lease ms, [3] max in flight, [4] releases n, [5] moves n, [6] refreshes n, [7] the version
#: the caller knows (-1: none), [8] state blob to write ("" none), [9] limit, [10] probe "0"/"1",
#: [11] probe_out "0"/"1", [12] cooldown ms to start (0: none), [13] the cap to announce ("" none),
#: [14] announce the probe ("" no), then the releases, the moves, the refreshes.
FLUSH: Final = (
    _PRELUDE
    + """
local max_in_flight = tonumber(ARGV[3])
local nrel, nmove, nrefresh = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local i = 15
local freed = 0
for _ = 1, nrel do
  freed = freed + redis.call('ZREM', inflight, ARGV[i])
  redis.call('ZREM', retrying, ARGV[i])
  redis.call('ZREM', sending, ARGV[i])
  i = i + 1
end
local retries
i, retries = move(i, nmove)
local purged = purge(nil)
-- A lease found gone (its holder stalled past it) is taken again: the job is still out.
local lost = 0
local expiry = int(now + tonumber(ARGV[2]))
for _ = 1, nrefresh do
  lost = lost + redis.call('ZADD', inflight, expiry, ARGV[i])
  redis.call('ZADD', retrying, 'XX', expiry, ARGV[i])
  redis.call('ZADD', sending, 'XX', expiry, ARGV[i])
  i = i + 1
end
if freed + purged > 0 then wake(max_in_flight) end
-- A job waiting to retry makes room for another retry.
if retries > 0 then redis.call('PUBLISH', channel, 'retry') end
local status, v = -1, version()
local blob, probe, probe_out = '', '0', '0'
local known = tonumber(ARGV[7])
if known == v and ARGV[8] ~= '' then
  v = v + 1
  redis.call('HSET', capacity, 'state', ARGV[8], 'limit', ARGV[9], 'probe', ARGV[10],
    'probe_out', ARGV[11], 'version', v)
  if ARGV[11] == '0' then redis.call('HDEL', capacity, 'probe_until', 'probe_owner') end
  local pause = tonumber(ARGV[12])
  if pause > 0 and redis.call('PTTL', cooldown) < pause then
    redis.call('SET', cooldown, '1', 'PX', int(pause))
    redis.call('PUBLISH', channel, 'cooldown ' .. int(pause))
  end
  if ARGV[13] ~= '' then redis.call('PUBLISH', channel, 'limit ' .. ARGV[13]) end
  if ARGV[14] ~= '' then redis.call('PUBLISH', channel, 'probe ' .. ARGV[10] .. ' ' .. ARGV[11]) end
  status = 1
elseif known ~= v then
  -- Someone wrote since the caller read: the state as it is now (for its notes to be applied to
  -- again, if it sent any).
  status = 0
  blob = redis.call('HGET', capacity, 'state') or ''
  probe = redis.call('HGET', capacity, 'probe') or '0'
  probe_out = redis.call('HGET', capacity, 'probe_out') or '0'
  if probe_out == '1' and (tonumber(redis.call('HGET', capacity, 'probe_until')) or 0) <= now then
    probe_out = '0'  -- a claim past its time (its holder died) is no claim
  end
end
return {now, status, v, redis.call('ZCARD', inflight), redis.call('ZCARD', retrying),
  redis.call('ZCARD', sending), freed, lost, blob, probe, probe_out}
"""
)
#: Redis time ms, status (WRITTEN; STALE: the caller's version had moved, nothing was written and the
#: state follows; CURRENT: nothing to write, and the caller's version is current), the version now,
#: leases held (all holders), of them retrying, of them sending, leases released, leases found gone
#: and taken again, then (when STALE) the state blob, probe, probe_out.
FLUSH_REPLY: Final = (
    "now", "status", "version", "in_flight", "retrying", "sending", "released", "lost", "blob", "probe",
    "probe_out",
)  # fmt: skip

#: Everything the shared statistics show (at most 10,000 lease ids are listed).
#: ARGV: [2] max in flight.
STATS: Final = (
    _PRELUDE
    + """
purge(tonumber(ARGV[2]))
return {now, redis.call('ZRANGE', inflight, 0, 9999), redis.call('ZCARD', inflight),
  redis.call('ZCARD', retrying), redis.call('ZCARD', sending),
  redis.call('HGET', capacity, 'state') or '', redis.call('HGET', capacity, 'limit') or '',
  redis.call('PTTL', cooldown), redis.call('HGET', capacity, 'probe') or '0',
  redis.call('HGET', capacity, 'probe_out') or '0', version()}
"""
)
#: Redis time ms, lease ids, leases held, of them retrying, of them sending, state blob, limit,
#: cooldown PTTL (ms; < 0: none), probe, probe_out, version.
STATS_REPLY: Final = (
    "now", "leases", "in_flight", "retrying", "sending", "blob", "limit", "cooldown", "probe", "probe_out",
    "version",
)  # fmt: skip
