#!lua
--[[ cache.lua - library: one Redis hash, read through a cache and written back at the end.

KEYS / ARGV: none. A library, not a script: the loader (cluster_risk/state/redis.py) pastes it
into apply.lua and lookup_ids.lua where they say `--@include cache.lua`, without this
first line.

Why: the apply script runs its logic on Lua tables and talks to Redis about ten times per
batch, not per event (notes/performance.md). Reads go through `get` (one HGET on a miss) or
`preload` (one HMGET for many fields); writes are buffered by `set`/`del`/`clear` and sent by
`flush` as one DEL, one HSET and one HDEL, after every check of the script has passed.

  cache.new(key)               -> c
  cache.preload(c, fields)     fetch the fields not yet known (chunked HMGET)
  cache.preload_unique(c, fs)  the same for distinct fields known not fetched yet
  cache.get(c, field)          -> value or nil
  cache.values(c)              -> the table behind get: field -> value, false when known absent,
                               nil when not fetched (for hot loops that read preloaded fields
                               without a call; valid until cache.clear)
  cache.set(c, field, value)   / cache.del(c, field)
  cache.fields(c)              -> array of the fields present (one HGETALL the first time)
  cache.send(cmd, key, list[, from, to])   one variadic command (HSET, HDEL, HMGET-like) in chunks
  cache.write(key, sets, ttl_ms, touch, known)  HSET a ready field/value list (not through a
                               cache, for values only this call writes), then its TTL as flush
                               does (known: the caller saw the key exist)
  cache.clear(c)               the whole hash goes (DEL at flush)
  cache.flush(c, ttl_ms, touch) -> true if written; PEXPIREs the key when written and not
                               seen to exist, or on touch

TTLs: every key written here gets its TTL (PEXPIRE) from the call that may have created it:
one that wrote the key without having read any field of it (c.found, or `known` for write).
A key with a field was written by such a call, so it has a TTL: a write to it is not followed
by a PEXPIRE, except on the caller's `touch` (shard.lua: a shard's first batch of a new day and
every 256th), which keeps long-lived keys from expiring. (A PEXPIRE per written key and call
would be a sizeable share of the redis.calls of a worker's small call.)
]]

local cache = {}

-- unpack() is limited by LUAI_MAXCSTACK (8000 in Lua 5.1): send long lists in chunks.
local CHUNK = 4000

function cache.new(key)
  -- v[field]: the value, or false when known to be absent; nil = not fetched yet
  -- dirty: the fields set since, a table made on the first set (most caches are only read)
  -- found: a field of the key was read, so the key exists (and has its TTL)
  return {key = key, v = {}, all = false, cleared = false, dirty = false, ndirty = 0, found = false}
end

function cache.preload(c, fields)
  if c.all then return end
  local v, want, seen = c.v, {}, {}
  for i = 1, #fields do
    local f = fields[i]
    if v[f] == nil and not seen[f] then
      seen[f] = true
      want[#want + 1] = f
    end
  end
  cache.preload_unique(c, want)
end

-- preload for a list of distinct fields not fetched yet (no filtering: the caller knows)
function cache.preload_unique(c, want)
  local v = c.v
  local i = 1
  while i <= #want do
    local j = math.min(i + CHUNK - 1, #want)
    local got = redis.call('HMGET', c.key, unpack(want, i, j))
    for k = i, j do
      v[want[k]] = got[k - i + 1]
    end
    if not c.found then
      for k = 1, #got do
        if got[k] then
          c.found = true
          break
        end
      end
    end
    i = j + 1
  end
end

function cache.get(c, f)
  local x = c.v[f]
  if x == nil then
    if c.all then return nil end
    x = redis.call('HGET', c.key, f)
    c.v[f] = x
    if x then c.found = true end
  end
  if x then return x end
  return nil
end

function cache.values(c)
  return c.v
end

function cache.set(c, f, x)
  c.v[f] = x
  local dirty = c.dirty
  if not dirty then
    dirty = {}
    c.dirty = dirty
  end
  if not dirty[f] then
    dirty[f] = true
    c.ndirty = c.ndirty + 1
  end
end

function cache.del(c, f)
  cache.set(c, f, false)
end

function cache.fields(c)
  if not c.all then
    local flat = redis.call('HGETALL', c.key)
    if #flat > 0 then c.found = true end
    local v = c.v
    for i = 1, #flat, 2 do
      if v[flat[i]] == nil then v[flat[i]] = flat[i + 1] end
    end
    c.all = true
  end
  local out = {}
  for f, x in pairs(c.v) do
    if x then out[#out + 1] = f end
  end
  return out
end

function cache.clear(c)
  c.v, c.all, c.cleared, c.dirty, c.ndirty, c.found = {}, true, true, false, 0, false
end

-- cmd key list[from] .. list[to] (default: all of it), in chunks of CHUNK values (CHUNK is
-- even: field/value pairs stay together when from is odd)
function cache.send(cmd, key, list, from, to)
  local i, last = from or 1, to or #list
  while i <= last do
    local j = math.min(i + CHUNK - 1, last)
    redis.call(cmd, key, unpack(list, i, j))
    i = j + 1
  end
end

function cache.write(key, sets, ttl_ms, touch, known)
  if #sets > 0 then cache.send('HSET', key, sets) end
  if ttl_ms > 0 and ((#sets > 0 and not known) or touch) then redis.call('PEXPIRE', key, ttl_ms) end
end

function cache.flush(c, ttl_ms, touch)
  local wrote = c.cleared
  if c.cleared then redis.call('DEL', c.key) end
  if c.ndirty > 0 then
    local sets, dels = {}, {}
    for f in pairs(c.dirty) do
      local x = c.v[f]
      if x then
        sets[#sets + 1] = f
        sets[#sets + 1] = x
      else
        dels[#dels + 1] = f
      end
    end
    cache.send('HSET', c.key, sets)
    cache.send('HDEL', c.key, dels)
    wrote = true
  end
  if ttl_ms > 0 and ((wrote and not c.found) or touch) then redis.call('PEXPIRE', c.key, ttl_ms) end
  return wrote
end
