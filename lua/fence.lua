#!lua
--[[ fence.lua - library: the cluster worker's guard and input cursor around apply.lua.

Included into apply.lua (`--@include fence.lua`). Only a worker passes these; RemoteEngine's
own batches (one KEYS entry) skip all of it.

KEYS[2]  <prefix>:{s<N>}:lease   the shard's lease hash: owner, epoch, expires (lua/lease.lua),
                                 and the worker cursor: sid (last applied input entry id),
                                 aid (last action entry id), applied (input entries applied)
KEYS[3]  <prefix>:{s<N>}:actions the shard's actions stream (lua/emit.lua)
KEYS[4]  <prefix>:{s<N>}:dead    the shard's dead-letter stream (lua/emit.lua)
ARGV[n]  the caller's lease epoch (decimal); n = the first ARGV after apply.lua's own
ARGV[n+1] extras, in the codec of ARGV[1]:
           {after id, last id, entries, 0, events, stateless, dead, actions maxlen}
         (x[4], emit.lua's rules, is a constant: apply.lua's ARGV[6][2], given to fence.open)
         (the batch covers the input entries after `after` up to `last`, `entries` of them;
         last = "" when it has none, e.g. a clock tick; the rest is emit.lua's)
ARGV[n+2] the deployment id the caller belongs to: the lease hash's `deployment` field must
         hold it (written when the deployment was created, or by `cluster-risk recover`)

The lease hash has no TTL: the epoch must never go back, or a worker paused for long could
match a fresh epoch.

  fence.open(json, n, rules) -> W or nil
  fence.check_epoch(W) -> refusal or nil    {"lost", id found or "(none)"}: the shard does not carry
                                            the caller's deployment id: its state was lost
                                            (FLUSHALL, restart without persistence, eviction) or
                                            belongs to another deployment; {"fenced", epoch now}:
                                            the lease moved on. Called before anything else, so
                                            neither writes anything
  fence.check_cursor(W) -> refusal or nil   {"gap", sid}: the batch does not start right after
                                            the last applied entry (another writer moved on, or a
                                            failover lost applied batches: the worker rereads its
                                            cursor and reapplies from there). Called after the
                                            hwm check, so a retried batch gets its stored result.
]]

local fence = {}

function fence.open(json, n, rules)
  if #KEYS < 4 then return nil end
  local x
  if json then x = cjson.decode(ARGV[n + 1]) else x = cmsgpack.unpack(ARGV[n + 1]) end
  x[4] = rules
  return {lease = KEYS[2], actions = KEYS[3], dead = KEYS[4], epoch = ARGV[n], x = x, json = json,
    deployment = ARGV[n + 2] or ''}
end

-- Reads the lease hash once for the whole call (epoch; sid for check_cursor; aid, the last
-- action id, and applied, the entries applied so far, for emit.lua as W.aid and W.applied):
-- nothing in the call writes it before emit.run.
function fence.check_epoch(W)
  local now = redis.call('HMGET', W.lease, 'epoch', 'sid', 'aid', 'applied', 'deployment')
  W.sid, W.aid, W.applied = now[2] or '0-0', now[3] or '0-0', tonumber(now[4]) or 0
  if W.deployment == '' or now[5] ~= W.deployment then return {'lost', now[5] or '(none)'} end
  if now[1] ~= W.epoch then return {'fenced', now[1] or '0'} end
  return nil
end

function fence.check_cursor(W)
  if W.sid ~= W.x[1] then return {'gap', W.sid} end
  return nil
end
