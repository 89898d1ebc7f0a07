#!lua
--[[ release.lua - give a shard's lease back (a worker leaving, or handing the shard to the
worker the assignment now gives it to).

KEYS[1]  <prefix>:{s<N>}:lease (lua/lease.lua)
ARGV[1]  worker id
ARGV[2]  the epoch it holds

Returns  1 released (owner cleared, expires 0; the epoch stays, the next taker bumps it),
         0 not held by the caller at that epoch (nothing changes)
]]

local h = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'expires', '0')
return 1
