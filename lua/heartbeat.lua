#!lua
--[[ heartbeat.lua - a worker says it is alive (or leaving) and learns who else is.

KEYS[1]  <prefix>:workers   sorted set: worker id -> its last heartbeat (server time, ms)
ARGV[1]  worker id
ARGV[2]  liveness window, ms: a worker not heard of for that long is dropped
ARGV[3]  "1": the worker leaves (removed now), "0": it is alive

Returns  {now ms, id, id, ...}: the live workers, sorted by id (the shard assignment is
         computed from this list by every worker alike: cluster_risk/cluster/leases.py)
]]

local now_s, now_us = unpack(redis.call('TIME'))
local now = tonumber(now_s) * 1000 + math.floor(tonumber(now_us) / 1000)
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
table.sort(live)
table.insert(live, 1, now)
return live
