#!lua flags=no-writes
--[[ lookup_ids.lua - read one shard's seen-sets and order index (for trade enrichment).

KEYS[1]  <prefix>:{s<N>}:meta (the ids:<day>:<block> keys are derived from it, keys.lua)
ARGV     fields: "o<oid>" (order index) and/or "t<tid>" (seen trade ids), oids/tids decimal
Returns  one entry per field: "<#account>:<account><contract>" (cluster_risk/keys.py) for a known oid, "1" for a seen tid,
         else false (a nil reply); only generations within id retention are read

Read-only (no-writes), so it may run on a replica. Python calls it on every shard, pipelined,
for the trades of a batch that carry no account (or no contract) and whose order is not
earlier in the same batch: the oid gives the account (hence the shard), and a tid already
seen makes the trade a duplicate even when its order has been forgotten. apply.lua checks
again when it reaches the trade (see cluster_risk/remote.py).
]]

--@include builtins.lua
--@include keys.lua
--@include cache.lua
--@include seen_ids.lua

builtins.bind()
local m = redis.call('HMGET', KEYS[1], 'latest', 'gens', 'blocks')
-- the gens list holds exactly the live generations (older ones are deleted as the day moves)
local I = ids.open(keys.base(KEYS[1]), m[2], tonumber(m[1]) or -1, math.huge, nil, nil, m[3] or nil)
ids.preload(I, ARGV)
local out = {}
for i, f in ipairs(ARGV) do
  out[i] = I.val[f] or false
end
return out
