"""Leaf layer: the Lua scripts of a run queue (`RunQueue`), as source strings.

Each script is one atomic step of the exactly-once protocol, run by `EVALSHA` (redis-py's
`register_script`). Every script but `START` checks the run's epoch first: a run whose `meta` hash has
no epoch, or another one than the caller read, lost its data (Redis restarted without persistence,
or flushed), and the script answers `EPOCH ...` (`_connect.EPOCH_ERROR`), which the caller turns
into `RunDataLostError` rather than guess which jobs were paid for.

Times are Redis's own (`TIME`, in ms), so no two hosts need agree on a clock. A job's hash holds:

    spec         the `QueuedJob`, JSON
    state        queued | intent | accepted | ok | failed | ambiguous
    gen          the fencing token: bumped by every take (every change of owner); each step after a
                 take names the gen it holds and is refused once another take has bumped it
    owner        the worker that took it last
    entry        the id of its entry in the `jobs` stream (acknowledged when it ends)
    intent_at    when its last submit was announced (ms); fence_until: until when that submit may be sent
    intent_token the caller's id for that intent (a retried intent is counted once in `attempts`)
    attempts     intents written (submits that may have gone out)
    takes        takes so far
    task_id      the provider's task, once recorded; adopted: "1" when found by settling, not sent
    outcome      the `RunOutcome`, JSON, once ended
    order        its place in the run (also its score in `keys`); taken_at, accepted_at, ended_at (ms)

`meta` counts jobs by state (`n:<state>`) so a status is one read, and `total` counts jobs enqueued.

Keys are passed in `KEYS` where the script knows them up front; a job's hash named only at run time
(enqueued follow-ups, the heartbeat's ownership check) is built from a prefix. All of them share the
account's hash tag, so on a Cluster they live in one slot.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLAIM",
    "ENQUEUE",
    "FINISH",
    "INTENT",
    "PROGRESS",
    "RECORD",
    "RELEASE",
    "START",
    "TAKE",
    "TOUCH",
]

#: Helpers every script starts with: Redis's clock, the epoch check, the per-state counts, and how a
#: job is added (one stream entry and one hash per new key; an existing key adds nothing).
_COMMON: Final = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function epoch_error(meta, epoch)
  local current = redis.call('HGET', meta, 'epoch')
  if not current then
    return redis.error_reply('EPOCH missing: the run has no epoch (Redis lost its data, or it was never started)')
  end
  if current ~= epoch then
    return redis.error_reply('EPOCH changed: the run was started again since this worker read it')
  end
  return nil
end

local function move(meta, from, to)
  if from then redis.call('HINCRBY', meta, 'n:' .. from, -1) end
  if to then redis.call('HINCRBY', meta, 'n:' .. to, 1) end
end

local ENDED = {ok = true, failed = true, ambiguous = true}

-- Adds the (key, spec) pairs in ARGV[first..]; returns how many were new.
local function add_jobs(meta, jobs, keys, prefix, first)
  local total = tonumber(redis.call('HGET', meta, 'total') or '0')
  local added = 0
  for i = first, #ARGV - 1, 2 do
    local key, spec = ARGV[i], ARGV[i + 1]
    local hash = prefix .. key
    if redis.call('EXISTS', hash) == 0 then
      local order = total + added
      local entry = redis.call('XADD', jobs, '*', 'key', key)
      redis.call('HSET', hash, 'spec', spec, 'state', 'queued', 'gen', 0, 'attempts', 0, 'takes', 0,
        'entry', entry, 'order', order)
      redis.call('ZADD', keys, order, key)
      added = added + 1
    end
  end
  if added > 0 then
    redis.call('HINCRBY', meta, 'total', added)
    redis.call('HINCRBY', meta, 'n:queued', added)
  end
  return added
end
"""

#: Start a run: write its epoch once. KEYS: meta, jobs. ARGV: new epoch, group, the epoch the caller
#: already knows ("" if none). Returns the run's epoch. A caller that knew an epoch Redis no longer has
#: gets the epoch error: its run's data is gone, and starting afresh could pay for jobs twice.
START: Final = (
    _COMMON
    + """
local current = redis.call('HGET', KEYS[1], 'epoch')
if current then
  if ARGV[3] ~= '' and current ~= ARGV[3] then
    return redis.error_reply('EPOCH changed: the run was started again since this queue read it')
  end
  return current
end
if ARGV[3] ~= '' then
  return redis.error_reply('EPOCH missing: the run has no epoch (Redis lost its data)')
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'created', now_ms())
redis.call('HSETNX', KEYS[1], 'total', 0)
-- The group may exist already (a start that lost its reply is retried): BUSYGROUP is no error then.
redis.pcall('XGROUP', 'CREATE', KEYS[2], ARGV[2], '0', 'MKSTREAM')
return ARGV[1]
"""
)

#: Enqueue jobs, idempotent by key. KEYS: meta, jobs, keys. ARGV: epoch, job hash prefix, then
#: (key, spec) pairs. Returns how many were new.
ENQUEUE: Final = (
    _COMMON
    + """
local err = epoch_error(KEYS[1], ARGV[1])
if err then return err end
return add_jobs(KEYS[1], KEYS[2], KEYS[3], ARGV[2], 3)
"""
)

#: Take a job for a worker. KEYS: meta, job, jobs. ARGV: epoch, worker, group, entry id.
#: Returns {'ended', state} or {'missing'} (its entry acknowledged: nothing to do), {'fenced', ms
#: left, owner} (another's submit may be going out: leave it), or {'own', gen, state, spec, task_id,
#: intent_at, attempts}: the caller owns it under `gen`.
TAKE: Final = (
    _COMMON
    + """
local err = epoch_error(KEYS[1], ARGV[1])
if err then return err end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
  return {'missing'}
end
local f = redis.call('HMGET', KEYS[2], 'state', 'fence_until', 'task_id', 'spec', 'intent_at', 'attempts', 'owner')
local state = f[1]
if ENDED[state] then
  redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
  return {'ended', state}
end
local now = now_ms()
if state == 'intent' and not f[3] then
  local fence = tonumber(f[2] or '0')
  if now < fence then
    return {'fenced', fence - now, f[7] or ''}
  end
end
local gen = redis.call('HINCRBY', KEYS[2], 'gen', 1)
redis.call('HINCRBY', KEYS[2], 'takes', 1)
redis.call('HSET', KEYS[2], 'owner', ARGV[2], 'taken_at', now)
return {'own', gen, state, f[4], f[3] or '', f[5] or '', tonumber(f[6] or '0')}
"""
)

#: Announce a submit (the fenced intent). KEYS: meta, job. ARGV: epoch, worker, gen, lease ms, intent
#: token. Returns {1, intent_at, fence_until, attempts}, or {0, why} when the gen moved on or the job
#: is no longer one to submit. Retried with the same token (a lost reply), it moves the fence on but
#: counts the attempt once.
INTENT: Final = (
    _COMMON
    + """
local err = epoch_error(KEYS[1], ARGV[1])
if err then return err end
local f = redis.call('HMGET', KEYS[2], 'gen', 'state', 'intent_token')
if f[1] ~= ARGV[3] then return {0, 'fenced'} end
if f[2] ~= 'queued' and f[2] ~= 'intent' then return {0, f[2] or 'missing'} end
local now = now_ms()
local fence = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[2], 'state', 'intent', 'intent_at', now, 'fence_until', fence, 'owner', ARGV[2],
  'intent_token', ARGV[5])
local attempts
if f[3] ~= ARGV[5] then
  attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
else
  attempts = tonumber(redis.call('HGET', KEYS[2], 'attempts'))
end
if f[2] == 'queued' then move(KEYS[1], 'queued', 'intent') end
return {1, now, fence, attempts}
"""
)

#: Record the task of an intent. KEYS: meta, job, tasks. ARGV: epoch, gen, task id, adopted ("1" when
#: found by settling). Returns 'ok' (also when retried after a lost reply), 'fenced' (another owns the
#: job now, or it is past the intent), or 'held' (another job of the run holds that task: never adopted).
RECORD: Final = (
    _COMMON
    + """
local err = epoch_error(KEYS[1], ARGV[1])
if err then return err end
local f = redis.call('HMGET', KEYS[2], 'gen', 'state', 'task_id')
if f[1] ~= ARGV[2] then return 'fenced' end
if f[2] == 'accepted' and f[3] == ARGV[3] then return 'ok' end
if f[2] ~= 'intent' then return 'fenced' end
if redis.call('SISMEMBER', KEYS[3], ARGV[3]) == 1 then return 'held' end
redis.call('HSET', KEYS[2], 'state', 'accepted', 'task_id', ARGV[3], 'adopted', ARGV[4], 'accepted_at', now_ms())
redis.call('SADD', KEYS[3], ARGV[3])
move(KEYS[1], 'intent', 'accepted')
return 'ok'
"""
)

#: End a job. KEYS: meta, job, jobs, done, keys. ARGV: epoch, gen, end state (ok|failed|ambiguous),
#: outcome JSON, group, key, job hash prefix, then the follow-ups' (key, spec) pairs, enqueued in the
#: same step (so a crash cannot end a grid and lose its upscales). Returns 1 (also when retried after a
#: lost reply), or 0 when another owns the job now.
FINISH: Final = (
    _COMMON
    + """
local err = epoch_error(KEYS[1], ARGV[1])
if err then return err end
local f = redis.call('HMGET', KEYS[2], 'gen', 'state', 'entry')
if f[1] ~= ARGV[2] then return 0 end
if ENDED[f[2]] then return 1 end
redis.call('HSET', KEYS[2], 'state', ARGV[3], 'outcome', ARGV[4], 'ended_at', now_ms())
redis.call('XADD', KEYS[4], '*', 'key', ARGV[6], 'outcome', ARGV[4])
if f[3] then redis.call('XACK', KEYS[3], ARGV[5], f[3]) end
move(KEYS[1], f[2], ARGV[3])
add_jobs(KEYS[1], KEYS[3], KEYS[5], ARGV[7], 8)
return 1
"""
)

#: Withdraw an intent whose submit certainly made no task (it never left, or was turned away), so the
#: next owner submits without a lookup. KEYS: meta, job. ARGV: epoch, gen. Returns 1, or 0 if fenced.
RELEASE: Final = (
    _COMMON
    + """
local err = epoch_error(KEYS[1], ARGV[1])
if err then return err end
local f = redis.call('HMGET', KEYS[2], 'gen', 'state')
if f[1] ~= ARGV[2] then return 0 end
if f[2] == 'intent' then
  redis.call('HSET', KEYS[2], 'state', 'queued', 'fence_until', 0)
  move(KEYS[1], 'intent', 'queued')
end
return 1
"""
)

#: A worker's heartbeat. KEYS: meta, jobs. ARGV: epoch, group, worker, job hash prefix, then (entry
#: id, key) pairs of the jobs it holds. Its entries for jobs it still owns are claimed again (their
#: idle time reset, so no one else claims them); returns the keys of those another worker has taken.
TOUCH: Final = (
    _COMMON
    + """
local err = epoch_error(KEYS[1], ARGV[1])
if err then return err end
local mine, lost = {}, {}
for i = 5, #ARGV - 1, 2 do
  if redis.call('HGET', ARGV[4] .. ARGV[i + 1], 'owner') == ARGV[3] then
    mine[#mine + 1] = ARGV[i]
  else
    lost[#lost + 1] = ARGV[i + 1]
  end
end
if #mine > 0 then
  local args = {'XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0}
  for _, id in ipairs(mine) do args[#args + 1] = id end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return lost
"""
)

#: Entries for a worker: first those idle for `min_idle` ms (a dead or stopped worker's), then new
#: ones, up to `count` in all. KEYS: meta, jobs. ARGV: epoch, group, worker, min idle ms, cursor,
#: count. Returns {next cursor, {id, key, id, key, ...}, total, ended}.
CLAIM: Final = (
    _COMMON
    + """
local err = epoch_error(KEYS[1], ARGV[1])
if err then return err end
local function key_of(fields)
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'key' then return fields[i + 1] end
  end
  return nil
end
local count = tonumber(ARGV[6])
local found = {}
local claimed = redis.call('XAUTOCLAIM', KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], 'COUNT', count)
for _, entry in ipairs(claimed[2]) do
  -- Redis 6.2 lists an entry deleted from the stream as nil; nothing deletes ours, but skip it anyway.
  if entry and entry[2] then
    local key = key_of(entry[2])
    if key then
      found[#found + 1] = entry[1]
      found[#found + 1] = key
    end
  end
end
local room = count - math.floor(#found / 2)
if room > 0 then
  local new = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', room, 'STREAMS', KEYS[2], '>')
  if new then
    for _, entry in ipairs(new[1][2]) do
      local key = key_of(entry[2])
      if key then
        found[#found + 1] = entry[1]
        found[#found + 1] = key
      end
    end
  end
end
local m = redis.call('HMGET', KEYS[1], 'total', 'n:ok', 'n:failed', 'n:ambiguous')
local ended = tonumber(m[2] or '0') + tonumber(m[3] or '0') + tonumber(m[4] or '0')
return {claimed[1], found, tonumber(m[1] or '0'), ended}
"""
)

#: The run's counts, after the epoch check. KEYS: meta. ARGV: epoch. Returns the `meta` hash's
#: fields and values, flat.
PROGRESS: Final = (
    _COMMON
    + """
local err = epoch_error(KEYS[1], ARGV[1])
if err then return err end
return redis.call('HGETALL', KEYS[1])
"""
)
