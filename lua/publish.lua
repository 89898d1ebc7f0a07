#!lua
--[[ publish.lua - append a gateway's events to shards' input streams, in order, once; then
write the routes of its orders.

ARGV[1]  n, the shards of the call; ARGV[2]  m, the route hashes of the call (0 or more)
For each shard k = 1 .. n:
  KEYS[2k-1]  <prefix>:{s<N>}:in          shard N's input stream
  KEYS[2k]    <prefix>:{s<N>}:pub:<id>    the publisher's last sequence number on shard N
  ARGV[3k]    the shard's events' wire JSON, separated by "\n" (JSON text holds no raw newline)
  ARGV[3k+1]  their line indices, separated by "\n", an empty one for an event without; or ""
              when no event has one
  ARGV[3k+2]  this call's sequence number for the shard (decimal, increasing per publisher
              and shard)
For each route hash j = 1 .. m:
  KEYS[2n+j]       <prefix>:{r<M>}:route:<day>   oid -> account of the orders sent
  ARGV[3n+2+j]     its fields and values, a JSON array of strings [oid, account, ...]
  ARGV[3n+m+2+j]   "1": give the hash its TTL if it has none (its first writer), else "0"
ARGV[3n+2m+3]  TTL of the sequence keys (s);  ARGV[3n+2m+4]  TTL of the route hashes (s)
Returns  the number of entries added; a shard whose number is not above its last one seen adds
         none (a retry of a call that was applied but whose reply was lost: nothing twice)

Each event becomes one entry {e = event[, i = index]}, in order within its shard. On one
server a chunk is one call: every shard's events, then the routes, so that a fill arriving at
another gateway finds a route only once its order is in its stream (a call per shard and a
pipeline of HSETs after them cost a gateway two round trips and ~5x the Python per chunk).
On a Redis Cluster a script's keys share a slot: one call per shard and no routes (m = 0),
which the publisher writes afterwards. Every sequence number is read (one MGET) before the
first write.
]]

local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local seqs = {}
for k = 1, n do seqs[k] = KEYS[2 * k] end
local last = redis.call('MGET', unpack(seqs))
local seq_ttl, route_ttl = ARGV[3 * n + 2 * m + 3], ARGV[3 * n + 2 * m + 4]

local added = 0
for k = 1, n do
  local seq = ARGV[3 * k + 2]
  if tonumber(seq) > tonumber(last[k] or '0') then
    local stream = KEYS[2 * k - 1]
    redis.call('SET', KEYS[2 * k], seq, 'EX', seq_ttl)
    local events, indices = ARGV[3 * k], ARGV[3 * k + 1]
    local elen, ilen = #events, #indices
    local ep, ip = 1, 1
    while ep <= elen do
      local ee = string.find(events, '\n', ep, true) or (elen + 1)
      local event = string.sub(events, ep, ee - 1)
      local index = ''
      if ilen > 0 then
        local ie = string.find(indices, '\n', ip, true) or (ilen + 1)
        index = string.sub(indices, ip, ie - 1)
        ip = ie + 1
      end
      if index == '' then
        redis.call('XADD', stream, '*', 'e', event)
      else
        redis.call('XADD', stream, '*', 'e', event, 'i', index)
      end
      ep = ee + 1
      added = added + 1
    end
  end
end

for j = 1, m do
  local key = KEYS[2 * n + j]
  local pairs_ = cjson.decode(ARGV[3 * n + 2 + j])
  for i = 1, #pairs_, 4000 do -- unpack() takes at most ~8000 values (LUAI_MAXCSTACK)
    redis.call('HSET', key, unpack(pairs_, i, math.min(i + 3999, #pairs_)))
  end
  -- the TTL only where the key has none: EXPIRE's NX, which Redis 6.2 lacks
  if ARGV[3 * n + m + 2 + j] == '1' and redis.call('TTL', key) == -1 then redis.call('EXPIRE', key, route_ttl) end
end
return added
