#!lua flags=no-writes
--[[ snapshot.lua - one shard's current pauses and the actions stream position they match,
read in one atomic step (a gateway's start, or its resync after a gap).

KEYS[1]  <prefix>:{s<N>}:actions   the shard's actions stream
KEYS[2..] <prefix>:{s<N>}:paused:<rule>, one per stateful rule (scope -> "since=... value=...")

Returns  {last action id ("0-0": none), {scope, text, scope, text, ...} per paused hash}
         A client applies the actions after that id on top of this snapshot.
]]

local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local out = {last[1] and last[1][1] or '0-0'}
for i = 2, #KEYS do
  out[i] = redis.call('HGETALL', KEYS[i])
end
return out
