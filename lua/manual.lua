#!lua
--[[ manual.lua - a manual pause (kill switch) or its lifting, atomically, on one shard:
the pause hash, the actions stream entry that gateways follow, and the audit record.

KEYS[1]  <prefix>:{s<N>}:paused:manual   field -> JSON {since, who, reason, scope}; no TTL (a
                                          kill switch never expires); apply.lua never reads it,
                                          so no automatic resume can lift it
KEYS[2]  <prefix>:{s<N>}:lease           the worker cursor: `aid` = the last action entry id
KEYS[3]  <prefix>:{s<N>}:actions         the shard's actions stream
KEYS[4]  <prefix>:{s<N>}:audit           the shard's audit stream
ARGV[1]  "pause" or "resume"
ARGV[2]  the field: the scope's values and dimension names, each percent-escaped
         ("A", "A:contract:C", "A:product:P")
ARGV[3]  the pause's JSON (kept in KEYS[1]; ignored for a resume)
ARGV[4]  the action's JSON (PAUSE_ORDER or RESUME_ORDER, rule "manual")
ARGV[5..] the audit entry's field/value pairs (when, who, why, what, scope, account)

Returns  {"ok", previous action id, action id, audit id}
         {"already", the pause's JSON}   pause of a scope already paused by hand: nothing written
         {"not_paused"}                  resume of a scope not paused by hand: nothing written

The action entry goes in with an automatic id ('*', as emit.lua's do) and becomes the lease's
`aid`: a worker's next latency hint then names it as its previous id, so a gateway that missed
it resyncs from the stream instead of skipping it (cluster_risk/cluster/client.py).
]]

local op, field = ARGV[1], ARGV[2]
local current = redis.call('HGET', KEYS[1], field)
if op == 'pause' then
  if current then return {'already', current} end
  redis.call('HSET', KEYS[1], field, ARGV[3])
elseif op == 'resume' then
  if not current then return {'not_paused'} end
  redis.call('HDEL', KEYS[1], field)
else
  return redis.error_reply('manual.lua: ARGV[1] must be pause or resume')
end
local prev = redis.call('HGET', KEYS[2], 'aid') or '0-0'
local id = redis.call('XADD', KEYS[3], '*', 'a', ARGV[4])
redis.call('HSET', KEYS[2], 'aid', id)
local audit = {}
for i = 5, #ARGV do audit[#audit + 1] = ARGV[i] end
local audit_id = redis.call('XADD', KEYS[4], '*', 'action', id, unpack(audit))
return {'ok', prev, id, audit_id}
