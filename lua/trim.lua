#!lua
--[[ trim.lua - keep one shard's streams bounded (a worker, about once a second per shard it
holds, and when it stops): cluster_risk.cluster.worker.Retention.

KEYS[1]  <prefix>:{s<N>}:lease     sid: the last input entry applied (lua/fence.lua, emit.lua)
KEYS[2]  <prefix>:{s<N>}:in        input stream
KEYS[3]  <prefix>:{s<N>}:actions   actions stream
KEYS[4]  <prefix>:{s<N>}:dead      dead letters
ARGV[1]  input retention, ms: applied entries published less than this long ago stay
ARGV[2]  actions retention, ms
ARGV[3]  dead-letter retention, ms
ARGV[4]  at most this many dead letters (0: no cap)

Returns  {input entries, actions, dead letters} trimmed

The input is trimmed below the cursor stored here, never the worker's own idea of it: after a
failover that lost applied batches the cursor is behind, and the entries after it must stay to
be applied again. Times are the server's (TIME), as the entry ids are.
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function before(ms) -- the id below which entries are older than ms
  return string.format('%d-0', math.max(0, now - ms))
end

local trimmed_in = 0
local sid = redis.call('HGET', KEYS[1], 'sid')
if sid then
  local ms, seq = string.match(sid, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq)
  if ms and seq < 2 ^ 53 then
    local keep = math.max(0, now - tonumber(ARGV[1])) -- entries from this ms on stay
    local minid
    if keep <= ms then
      minid = string.format('%d-0', keep)
    else
      minid = string.format('%.0f-%.0f', ms, seq + 1) -- everything applied goes, the cursor's entry too
    end
    trimmed_in = redis.call('XTRIM', KEYS[2], 'MINID', minid)
  end
end
local trimmed_actions = redis.call('XTRIM', KEYS[3], 'MINID', before(tonumber(ARGV[2])))
local trimmed_dead = redis.call('XTRIM', KEYS[4], 'MINID', before(tonumber(ARGV[3])))
if tonumber(ARGV[4]) > 0 then
  trimmed_dead = trimmed_dead + redis.call('XTRIM', KEYS[4], 'MAXLEN', ARGV[4])
end
return {trimmed_in, trimmed_actions, trimmed_dead}
