#!lua
--[[ lease.lua - take, or keep, a worker's lease on one shard.

KEYS[1]  <prefix>:{s<N>}:lease   hash: owner, epoch, expires (server time, ms); no TTL, so the
                                 epoch never goes back (fence.lua, emit.lua keep the cursor here)
ARGV[1]  worker id
ARGV[2]  lease time, ms
ARGV[3]  the epoch the caller holds ("0": it holds none and asks to take the shard)

Returns  {"taken", epoch}        the shard was free, expired, or the caller's own id from an
                                 earlier life: the epoch is bumped, so every write of an older
                                 holder is refused by apply.lua from now on
         {"kept", epoch}         the caller still holds `epoch`: expires moves on
         {"held", owner, ms}     another worker holds it for ms more
         {"lost", epoch, owner}  the caller asked to keep an epoch it no longer holds

Time is the server's (TIME), so workers' clocks do not matter. A lease that expired but was
not taken over is still kept by its holder: nobody else wrote, the epoch did not move.
]]

local now_s, now_us = unpack(redis.call('TIME'))
local now = tonumber(now_s) * 1000 + math.floor(tonumber(now_us) / 1000)
local h = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'expires')
local owner, epoch, expires = h[1] or '', tonumber(h[2]) or 0, tonumber(h[3]) or 0
local me, ttl = ARGV[1], tonumber(ARGV[2])

if ARGV[3] ~= '0' then
  if owner == me and string.format('%d', epoch) == ARGV[3] then
    redis.call('HSET', KEYS[1], 'expires', string.format('%d', now + ttl))
    return {'kept', epoch}
  end
  return {'lost', epoch, owner}
end
if owner ~= '' and owner ~= me and expires > now then
  return {'held', owner, expires - now}
end
epoch = epoch + 1
redis.call('HSET', KEYS[1], 'owner', me, 'epoch', string.format('%d', epoch),
  'expires', string.format('%d', now + ttl))
return {'taken', epoch}
