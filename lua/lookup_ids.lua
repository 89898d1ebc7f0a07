#!lua flags=no-writes
--[[ lookup_orders.lua - read the order index of one shard (trade enrichment).

KEYS[1]  <prefix>:{s<N>}:meta (the ids:<day> keys are derived from it, keys.lua)
ARGV     oids, as decimal strings
Returns  one entry per oid: "<account>\31<contract>" if the oid is in this shard's index
         (within id retention), else false (nil reply)

Read-only (no-writes): may run on a replica. Python calls it on every shard, pipelined, for
the trades of a batch that carry no account (or no contract) and whose order is not earlier
in the same batch; apply.lua checks again at apply time (see cluster_risk/remote.py).
]]

--@include keys.lua
--@include cache.lua
--@include seen_ids.lua

local m = redis.call('HMGET', KEYS[1], 'latest', 'gens')
local I = ids.open(keys.base(KEYS[1]), m[2], tonumber(m[1]) or -1, math.huge)
local fields = {}
for i, oid in ipairs(ARGV) do fields[i] = 'o' .. oid end
ids.preload(I, fields)
local out = {}
for i, f in ipairs(fields) do
  out[i] = I.val[f] or false
end
return out
