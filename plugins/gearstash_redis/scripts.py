"""The Lua scripts of the Redis store: one ``write()`` call, one read of many jobs. No I/O here.

Both run with EVALSHA (EVAL when the server answers NOSCRIPT). Scripts are atomic in Redis, so a
batch is applied whole or not at all, chunks from concurrent writers never interleave within a
batch, and a read never sees half a batch.

The write script is the Redis store's implementation of :meth:`JobRecord.apply
<gearstash.model.records.JobRecord.apply>` (one round trip per ``write()``, atomic);
tests/test_apply_equivalence.py property-tests it against the Python one.
"""

from __future__ import annotations

import hashlib

# Event codes in the write script's ARGV (see WRITE below).
OP_STARTED = b"S"
OP_DATA = b"D"
OP_WARNING = b"W"
OP_STATUS = b"T"
OP_COMPLETED = b"C"
OP_FAILED = b"F"
OP_SUBMITTED = b"Q"
OP_HEARTBEAT = b"B"
OP_LEASE = b"L"
OP_WORKLOAD = b"P"
MAX_RUN = 1000  # values per RPUSH (Lua's unpack() has a C-stack limit of ~8000)

# KEYS, per job (7 each): job, data, warnings, status, gone, handle index, unique index.
# (A job's first write also adds it to the listing index PREFIX:all, scored by INCR PREFIX:serial,
# and forgets the oldest two entries there whose job and tombstone have both expired; every write
# keeps the job in the state index PREFIX:st:<stored state> scored by its expires_at ('+inf':
# never), moving it when the state changes: keys the script does not declare, like the index
# pruning.)
# ARGV, per job: K, server, handle, unique, ttl_ms (0 = keep for ever), life_ms (tombstone and
#   index entries), updated_at (of the last event that is not 'submitted'; '' if none), expires_at,
#   n (number of ARGV slots of the ops that follow), ops...
# (The prefix, J and the channel are cut out of the key names: PREFIX:{J}:job, PREFIX:h:{H}.)
# ops: S at function worker | D n chunk... | W n warning... | T n "num den at"... |
#      C at result | F at kind message traceback |
#      Q at function (submitted: makes a queued record when there is none, else nothing) |
#      B lease_until-or-'' (heartbeat: ignored when there is no record) |
#      L lease_until (the lease of the event before it) |
#      P workload (the captured workload of the 'started' before it)
# An event other than Q and B makes the record when there is none. A batch that changes nothing
# (Q for a record that exists, B for none) writes nothing: no TTL, no tombstone, no announcement.
WRITE = r"""
local function prune(prefix, idx, keep, n)
  -- forget index entries whose job and tombstone have both expired (oldest n only)
  for _, m in ipairs(redis.call('ZRANGE', idx, 0, n - 1)) do
    if m ~= keep then
      local base = prefix .. ':{' .. string.sub(redis.sha1hex(m), 1, 24) .. '}:'
      if redis.call('EXISTS', base .. 'job', base .. 'gone') == 0 then
        redis.call('ZREM', idx, m)
      end
    end
  end
end

local function enlist(prefix, idx, member)
  -- member becomes the newest entry of an index; true when the index is new
  local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('ZADD', idx, tonumber(top[2]) + 1, member)
    prune(prefix, idx, member, 8)
    return false
  end
  redis.call('ZADD', idx, 1, member)
  return true
end

local function keep(idx, life, new)
  -- the index lives at least as long as the tombstone just written
  if new then
    redis.call('PEXPIRE', idx, life)
  else
    local left = redis.call('PTTL', idx)
    if left >= 0 and left < life then redis.call('PEXPIRE', idx, life) end
  end
end

local a = 1
for k = 1, #KEYS, 7 do
  local job, data, warn, stat, gone, idx, uidx =
    KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]
  local member = ARGV[a]
  local ttl, life = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local last = a + 9 + tonumber(ARGV[a + 8])
  local prefix = string.sub(job, 1, -32)  -- PREFIX:{J}:job
  local unique = ARGV[a + 3] ~= ''  -- listed in the unique index
  local f = {}
  local now = redis.call('HMGET', job, 'attempt', 'started_at', 'state')
  local exists = now[1] ~= false
  local created = false
  local touched = false  -- an event other than 'submitted' applied
  local new_index, new_uindex = false, false
  local started = now[2] ~= false
  local attempt = tonumber(now[1]) or 0
  local pushed = exists  -- the lists may hold something (a new attempt empties them)
  local lists = exists  -- the lists may exist (their TTLs follow the hash's)
  local i = a + 9
  while i < last do
    local op = ARGV[i]
    if not exists and op ~= 'B' then
      exists = true
      created = true
      f['server'] = ARGV[a + 1]
      f['handle'] = ARGV[a + 2]
      f['unique'] = ARGV[a + 3]
      f['function'] = ''
      f['state'] = 'running'
      f['worker'] = ''
      attempt = 1
      f['attempt'] = '1'
      new_index = enlist(prefix, idx, member)
      if unique then new_uindex = enlist(prefix, uidx, member) end
      -- the listing index PREFIX:all: every job by creation serial (PREFIX:serial)
      redis.call('ZADD', prefix .. ':all', redis.call('INCR', prefix .. ':serial'), member)
      prune(prefix, prefix .. ':all', member, 2)
      if op == 'Q' then
        f['state'] = 'queued'
        f['function'] = ARGV[i + 2]
        f['updated_at'] = ARGV[i + 1]
        attempt = 0
        f['attempt'] = '0'
      end
    end
    if op ~= 'Q' and exists then touched = true end
    if op == 'Q' then
      i = i + 3
    elseif op == 'B' or op == 'L' then
      if exists and ARGV[i + 1] ~= '' then f['lease_until'] = ARGV[i + 1] end
      i = i + 2
    elseif op == 'P' then
      f['workload'] = ARGV[i + 1]
      i = i + 2
    elseif op == 'D' or op == 'W' or op == 'T' then
      local n = tonumber(ARGV[i + 1])
      local list = data
      if op == 'W' then list = warn elseif op == 'T' then list = stat end
      redis.call('RPUSH', list, unpack(ARGV, i + 2, i + 1 + n))
      pushed = true
      lists = true
      i = i + 2 + n
    elseif op == 'S' then
      if started then attempt = attempt + 1 else attempt = 1 end
      f['attempt'] = tostring(attempt)
      started = true
      if ARGV[i + 2] ~= '' then f['function'] = ARGV[i + 2] end
      f['worker'] = ARGV[i + 3]
      f['state'] = 'running'
      f['started_at'] = ARGV[i + 1]
      f['finished_at'] = false
      f['result'] = false
      f['error_kind'] = false
      f['error_message'] = false
      f['traceback'] = false
      if pushed then
        redis.call('DEL', data, warn, stat)
        pushed = false
      end
      i = i + 4
    elseif op == 'C' then
      f['state'] = 'complete'
      f['finished_at'] = ARGV[i + 1]
      f['result'] = ARGV[i + 2]
      i = i + 3
    else -- 'F'
      f['state'] = 'failed'
      f['finished_at'] = ARGV[i + 1]
      f['error_kind'] = ARGV[i + 2]
      f['error_message'] = ARGV[i + 3]
      f['traceback'] = ARGV[i + 4]
      i = i + 5
    end
  end
  if created or touched then  -- else nothing changed: write nothing
    if touched then f['updated_at'] = ARGV[a + 6] end
    local expires = ARGV[a + 7]
    f['expires_at'] = ttl > 0 and expires
    local hset, hdel = {}, {}
    for name, value in pairs(f) do
      if value then
        hset[#hset + 1] = name
        hset[#hset + 1] = value
      else
        hdel[#hdel + 1] = name
      end
    end
    if #hdel > 0 and not created then redis.call('HDEL', job, unpack(hdel)) end
    redis.call('HSET', job, unpack(hset))
    if ttl > 0 then
      redis.call('PEXPIRE', job, ttl)
      if lists then
        redis.call('PEXPIRE', data, ttl)
        redis.call('PEXPIRE', warn, ttl)
        redis.call('PEXPIRE', stat, ttl)
      end
      redis.call('SET', gone, expires, 'PX', life)
      keep(idx, life, new_index)
      if unique then keep(uidx, life, new_uindex) end
    else
      redis.call('PERSIST', job)
      if lists then
        redis.call('PERSIST', data)
        redis.call('PERSIST', warn)
        redis.call('PERSIST', stat)
      end
      redis.call('DEL', gone)
      redis.call('PERSIST', idx)
      if unique then redis.call('PERSIST', uidx) end
    end
    -- the state index PREFIX:st:STATE: the job under its stored state, scored by expires_at
    local state = f['state'] or now[3]
    if state then
      if now[3] and now[3] ~= state then redis.call('ZREM', prefix .. ':st:' .. now[3], member) end
      local score = '+inf'
      if ttl > 0 then score = expires end
      redis.call('ZADD', prefix .. ':st:' .. state, score, member)
    end
    -- PREFIX:ev:{H} gets J
    redis.call('PUBLISH', prefix .. ':ev:' .. string.sub(idx, #prefix + 4), string.sub(job, -29, -6))
  end
  a = last
end
return #KEYS / 7
"""

# The record fields a read returns, in this order (HMGET), then the data (from ARGV[2] on), the
# warnings and the status lists.
READ_FIELDS = (
    b"server",
    b"handle",
    b"unique",
    b"function",
    b"state",
    b"attempt",
    b"worker",
    b"started_at",
    b"finished_at",
    b"updated_at",
    b"expires_at",
    b"result",
    b"error_kind",
    b"error_message",
    b"traceback",
    b"lease_until",
    b"workload",
)

# Reads a batch of references in one call (atomic: every job as of the same moment).
# KEYS, per reference (1 each): PREFIX:{J}:job for a complete reference (server and unique known),
#   else the handle index PREFIX:h:{H}.
# ARGV: prefix, index of the first data chunk to return; then per reference a mode and its args:
#   'f' (complete) | 'h' handle (newest job of the handle) | 's' handle server | 'u' handle unique
#   | 'a' handle server unique (an empty handle: the index, not K, as for the others) |
#   'q' unique (newest job with that unique; KEYS: the unique index PREFIX:u:{U}) | 'r' unique server
# Returns one entry per reference:
#   live job: {server, handle, unique, function, state, attempt, worker, started_at, finished_at,
#              updated_at, expires_at, result, error_kind, error_message, traceback, lease_until,
#              workload, data, warnings, status} (a field not set: nil);
#   gone job: {tombstone} for 'f', {tombstone, K} otherwise (the newest matching job);
#   nil: no such job (or vanished without a trace).
# A reference by handle (or by unique) follows its index (newest first) to the first matching job
# that has not vanished; it reads keys it does not declare (like the write script's pruning).
READ_MANY = r"""
local prefix, after = ARGV[1], ARGV[2]
local FIELDS = {'server', 'handle', 'unique', 'function', 'state', 'attempt', 'worker',
                'started_at', 'finished_at', 'updated_at', 'expires_at', 'result', 'error_kind',
                'error_message', 'traceback', 'lease_until', 'workload'}

local call = redis.call

local function live(base)
  local f = call('HMGET', base .. 'job', unpack(FIELDS))
  if not f[1] then return false end
  f[18] = call('LRANGE', base .. 'data', after, '-1')  -- string arguments: a little cheaper
  f[19] = call('LRANGE', base .. 'warnings', '0', '-1')
  f[20] = call('LRANGE', base .. 'status', '0', '-1')
  return f
end

local function newest(idx, handle, server, unique)
  local members = call('ZRANGE', idx, '0', '-1')
  for n = #members, 1, -1 do
    local m = members[n]
    local parts, pos = {}, 1
    for p = 1, 3 do
      local colon = string.find(m, ':', pos, true)
      local size = colon and tonumber(string.sub(m, pos, colon - 1))
      if not size then break end
      parts[p] = string.sub(m, colon + 1, colon + size)
      pos = colon + size + 2
    end
    if parts[3] and (not handle or parts[2] == handle) and (not server or parts[1] == server)
        and (not unique or parts[3] == unique) then
      local base = prefix .. ':{' .. string.sub(redis.sha1hex(m), 1, 24) .. '}:'
      local f = live(base)
      if f then return f end
      local gone = call('GET', base .. 'gone')
      if gone then return {gone, m} end
    end
  end
  return false
end

local out = {}
local a = 3
for k = 1, #KEYS do
  local mode = ARGV[a]
  if mode == 'f' then
    local base = string.sub(KEYS[k], 1, -4)  -- PREFIX:{J}:job
    local f = live(base)
    if not f then
      local gone = call('GET', base .. 'gone')
      f = gone and {gone}
    end
    out[k] = f
    a = a + 1
  elseif mode == 'h' then
    out[k] = newest(KEYS[k], ARGV[a + 1], false, false)
    a = a + 2
  elseif mode == 's' then
    out[k] = newest(KEYS[k], ARGV[a + 1], ARGV[a + 2], false)
    a = a + 3
  elseif mode == 'u' then
    out[k] = newest(KEYS[k], ARGV[a + 1], false, ARGV[a + 2])
    a = a + 3
  elseif mode == 'a' then
    out[k] = newest(KEYS[k], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
    a = a + 4
  elseif mode == 'q' then
    out[k] = newest(KEYS[k], false, false, ARGV[a + 1])
    a = a + 2
  else -- 'r'
    out[k] = newest(KEYS[k], false, ARGV[a + 2], ARGV[a + 1])
    a = a + 3
  end
end
return out
"""


# Lists or counts jobs from the listing index PREFIX:all, newest first (read-mostly: an entry whose
# job and tombstone have both expired is removed on the way).
# ARGV: prefix, before (a serial: list below it; '' = from the newest), limit (0: count instead),
#   budget (entries examined at most per call when listing), now, states (comma-separated; '' =
#   any), has_function ('1'/'0'), function, server ('' = any), since ('' = none), until ('' =
#   none), prefix of the handle or the unique ('' = none).
# Returns {entries, next} when listing: each entry {server, handle, unique, function, state,
#   attempt, worker, started_at, finished_at, updated_at, expires_at, lease_until, error_kind,
#   last status point ("num den at" or nil), serial}; next is the serial to continue below, or ''
#   when the index has no more entries. A job whose hash expired but whose tombstone lives is
#   {server, handle, unique, '', 'expired', ..., expires_at} (its function is forgotten).
# When counting: {state, n, state, n, ...}.
LIST = r"""
local prefix, before, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local budget, now = tonumber(ARGV[4]), tonumber(ARGV[5])
local wanted, anystate = {}, ARGV[6] == ''
for name in string.gmatch(ARGV[6], '[^,]+') do wanted[name] = true end
local hasfn, fn, server = ARGV[7] == '1', ARGV[8], ARGV[9]
local since, till, pfx = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12]
local all = prefix .. ':all'
local FIELDS = {'server', 'handle', 'unique', 'function', 'state', 'attempt', 'worker',
                'started_at', 'finished_at', 'updated_at', 'expires_at', 'lease_until',
                'error_kind'}
local call = redis.call

local function parse(m)
  local parts, pos = {}, 1
  for p = 1, 3 do
    local colon = string.find(m, ':', pos, true)
    local size = colon and tonumber(string.sub(m, pos, colon - 1))
    if not size then return nil end
    parts[p] = string.sub(m, colon + 1, colon + size)
    pos = colon + size + 2
  end
  return parts
end

local function starts(value, p)
  return value and string.sub(value, 1, #p) == p
end

local function passes(f)
  if not anystate and not wanted[f[5]] then return false end
  if hasfn and f[4] ~= fn then return false end
  if server ~= '' and f[1] ~= server then return false end
  if since or till then
    local at = tonumber(f[10])
    if not at then return false end
    if since and at < since then return false end
    if till and at >= till then return false end
  end
  if pfx ~= '' and not starts(f[2], pfx) and not starts(f[3], pfx) then return false end
  return true
end

local out, counts, examined = {}, {}, 0
local max = '+inf'
if before ~= '' then max = '(' .. before end
while true do
  local batch = call('ZREVRANGEBYSCORE', all, max, '-inf', 'WITHSCORES', 'LIMIT', 0, 200)
  if #batch == 0 then break end
  for n = 1, #batch, 2 do
    local m, serial = batch[n], batch[n + 1]
    max = '(' .. serial
    examined = examined + 1
    local base = prefix .. ':{' .. string.sub(redis.sha1hex(m), 1, 24) .. '}:'
    local f = call('HMGET', base .. 'job', unpack(FIELDS))
    if f[1] then
      if f[11] and tonumber(f[11]) <= now then
        f[5] = 'expired'
        f[13] = false
        f[14] = false
      else
        f[14] = call('LINDEX', base .. 'status', '-1')
      end
    else
      local gone = call('GET', base .. 'gone')
      local parts = gone and parse(m)
      if parts then
        f = {parts[1], parts[2], parts[3], '', 'expired', false, false, false, false, false,
             gone, false, false, false}
      else
        call('ZREM', all, m)
        f = nil
      end
    end
    if f and passes(f) then
      if limit == 0 then
        counts[f[5]] = (counts[f[5]] or 0) + 1
      else
        f[15] = serial
        out[#out + 1] = f
        if #out >= limit then return {out, serial} end
      end
    end
    if limit > 0 and examined >= budget then return {out, serial} end
  end
end
if limit > 0 then return {out, ''} end
local flat = {}
for name, count in pairs(counts) do
  flat[#flat + 1] = name
  flat[#flat + 1] = count
end
return flat
"""


def sha1(source: str) -> bytes:
    """The EVALSHA name of a script."""
    return hashlib.sha1(source.encode()).hexdigest().encode()


# Redis >= 7: one call keeps the index's TTL at the longest of its jobs' (GT never shortens it,
# and leaves an index kept for ever alone).
_INDEX_TTL = """
    local left = redis.call('PTTL', idx)
    if left >= 0 and left < life then redis.call('PEXPIRE', idx, life) end
"""
assert WRITE.count(_INDEX_TTL) == 1
WRITE_GT = WRITE.replace(_INDEX_TTL, "\n    redis.call('PEXPIRE', idx, life, 'GT')\n")

WRITE_SHA = sha1(WRITE)
WRITE_GT_SHA = sha1(WRITE_GT)
READ_MANY_SHA = sha1(READ_MANY)
LIST_SHA = sha1(LIST)
SOURCES = {
    LIST_SHA: LIST.encode(),
    WRITE_SHA: WRITE.encode(),
    WRITE_GT_SHA: WRITE_GT.encode(),
    READ_MANY_SHA: READ_MANY.encode(),
}
