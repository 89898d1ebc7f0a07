#!lua flags=no-writes
--[[ health.lua - is anybody applying one shard? A gateway's periodic check (RiskClient):
it counts a shard's accounts as paused when no live worker holds its lease, or when its oldest
entry not yet applied has waited too long.

KEYS[1]  <prefix>:{s<N>}:lease   owner, expires (server time, ms), sid (the last applied
                                 input entry): lua/lease.lua, lua/fence.lua
KEYS[2]  <prefix>:{s<N>}:in      the shard's input stream

Returns  {now, owner, expires, oldest}: the server's time in ms (decimal), the lease's owner
         ("" when released or never taken), its expiry in ms ("0" when none), and the id of
         the first entry after sid ("" when everything present has been applied)
]]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'owner', 'expires', 'sid')
local next_entry = redis.call('XRANGE', KEYS[2], '(' .. (h[3] or '0-0'), '+', 'COUNT', 1)
return {string.format('%d', now), h[1] or '', h[2] or '0', next_entry[1] and next_entry[1][1] or ''}
