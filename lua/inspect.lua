#!lua flags=no-writes
--[[ inspect.lua - what one account looks like on its shard, read in one atomic step, read only
(`cluster-risk inspect`).

KEYS[1]  <prefix>:{s<N>}:meta; the other keys derive from it (keys.lua), all in the shard's slot
ARGV[1]  JSON {account = the account id,
               rules = [{kind = "w" | "d", name = escaped rule name, K = window_ns / bucket_ns,
                         c = the bucket to count the window at (window rules; absent:
                             the group's own latest bucket),
                         exact = the scope key when the rule's only dimension is the account,
                                 else "",
                         match = an HSCAN MATCH pattern for the scope keys holding the account}
                        ...] (stateful rules, config order),
               manual = an HSCAN MATCH pattern for the account's manual pauses}

Returns  {day, per rule {scope, value, scope, value, ...}, {scope, pause text, ...}, then
          {field, pause JSON, ...} of paused:manual}
  day    the account's current trading day (ordinal; max of its own and the shard's clock
         day; "-1": none yet): the sums are that day's
  value  window rule: window.count_at(w, c, K) (c >= the group's latest bucket is assumed, as
         for a tick); daily rule: that day's sum, as stored
The MATCH patterns may let through more than the account's scopes; the caller filters.

The window's format is window.lua's business: only window.decode (ctx = {cold hash key, scope
key}, read through window.lua's default read-only backend) and window.count_at are used here. Cost: HSCAN walks the shard's hashes of the rules (an ops command, not for the
hot path).
]]

--@include builtins.lua
--@include codes.lua
--@include keys.lua
--@include window.lua

builtins.bind()
local base = keys.base(KEYS[1])
local spec = cjson.decode(ARGV[1])

local function scan(key, match, exact)
  if exact ~= '' then
    local v = redis.call('HGET', key, exact)
    if v then return {exact, v} end
    return {}
  end
  local out, cursor = {}, '0'
  repeat
    local r = redis.call('HSCAN', key, cursor, 'MATCH', match, 'COUNT', 1000)
    cursor = r[1]
    for i = 1, #r[2] do out[#out + 1] = r[2][i] end
  until cursor == '0'
  return out
end

local day = -1
local rec = redis.call('HGET', keys.acct(base), spec.account)
if rec then day = tonumber(string.match(rec, '^%-?%d+')) or -1 end
local clock = tonumber(redis.call('HGET', KEYS[1], 'clock')) or -1
if clock > day then day = clock end

local out = {string.format('%d', day)}
for _, r in ipairs(spec.rules) do
  local values = {}
  if r.kind == 'w' then
    local flat = scan(keys.win(base, r.name), r.match, r.exact)
    local cold = keys.winc(base, r.name) -- older buckets: window.lua's read-only backend
    for j = 1, #flat, 2 do
      values[#values + 1] = flat[j]
      local w = window.decode(flat[j + 1], {cold, flat[j]})
      values[#values + 1] = window.count_at(w, r.c or w.hb or 0, r.K)
    end
  elseif day >= 0 then
    values = scan(keys.day(base, day, r.name), r.match, r.exact)
  end
  out[#out + 1] = values
  out[#out + 1] = scan(keys.paused(base, r.name), r.match, r.exact)
end
out[#out + 1] = scan(keys.paused(base, 'manual'), spec.manual, '')
return out
