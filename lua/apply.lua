#!lua
--[[ apply.lua - apply one shard's part of a batch of events, atomically, in event order.

KEYS[1]  <prefix>:{s<N>}:meta; every other key is derived from it (keys.lua), so all of them
         carry the shard's hash tag and the call touches one Redis Cluster slot.
ARGV[1]  the plan (msgpack; JSON when ARGV[4] is "j" - fakeredis has no cmsgpack)
ARGV[2]  batch sequence number (decimal < 2^53): applied only if above the shard's hwm
ARGV[3]  digest of the plan: the same seq with the same digest is a retry of the last batch
ARGV[4]  "m" or "j": codec of ARGV[1] and of the result

Returns  {"ok", result}         applied; result = encoded list of records (below)
         {"again", result}      seq == hwm, same digest: applied before (a retried call whose
                                reply was lost); the stored result, nothing changes
         {"abort", pos}         event pos is a trade whose order is no longer in the index
                                (retention expired earlier in this batch): nothing written,
                                resend without it (it is an unknown_order)
         {"stale", hwm} / {"conflict", hwm}   seq < hwm, or seq == hwm with another digest:
                                another writer, or a lost reply followed by a different batch

plan = {1, rules, accounts, groups, events, retention_days, ttl_ms, pairs}
  rules[r]    {"w", name, K, threshold, resume} | {"d", name, cap}     (names escaped)
  accounts[a] account id; pairs[p] "<account>\31<contract>"; groups[g] {r, scope key, a}
  events[pos] {1, oid, a, day, ts, p, steps...}        order; steps: window (g, bucket),
                                                       daily (g, amount, isfloat 0/1)
              {2, tid, a, day, ts, verify oid or "", steps...}   trade; daily steps
              {3, day, ts, {bucket per rule r, 0 for daily rules}}   tick
              {4, day, ts}                                         reset_daily
  ids are strings (Lua numbers are doubles); day = trading-day ordinal computed by Python.
record = {pos, code, r, scope key, value}
  1 duplicate (no other fields)   2 pause   3 resume (window, by an order)
  4 rollover resume   5 tick resume   6 reset resume (rollover.lua)
]]

--@include keys.lua
--@include cache.lua
--@include window.lua
--@include daily_sum.lua
--@include seen_ids.lua
--@include shard.lua
--@include rollover.lua

local meta = KEYS[1]
local base = keys.base(meta)
local seq, digest = ARGV[2], ARGV[3]
local json = ARGV[4] == 'j'

local m = redis.call('HMGET', meta, 'hwm', 'digest', 'clock', 'latest', 'gens')
local hwm = tonumber(m[1]) or 0
if tonumber(seq) <= hwm then
  if tonumber(seq) == hwm then
    if m[2] == digest then return {'again', redis.call('GET', keys.result(base))} end
    return {'conflict', m[1]}
  end
  return {'stale', m[1]}
end

local plan
if json then plan = cjson.decode(ARGV[1]) else plan = cmsgpack.unpack(ARGV[1]) end
local X = shard.open(base, plan, tonumber(m[3]) or -1, tonumber(m[4]) or -1, m[5])
local events = plan[5]

-- Preload what the batch reads: accounts, window groups, day sums, ids (a few variadic calls).
do
  cache.preload(X.acct, X.accounts)
  local wins, days, idf = {}, {}, {}
  for _, g in ipairs(X.groups) do
    if X.rules[g[1]][1] == 'w' then
      local l = wins[g[1]] or {}
      wins[g[1]] = l
      l[#l + 1] = g[2]
    end
  end
  for _, ev in ipairs(events) do
    local kind = ev[1]
    if kind == 1 then
      idf[#idf + 1] = 'o' .. ev[2]
    elseif kind == 2 then
      idf[#idf + 1] = 't' .. ev[2]
      if ev[6] ~= '' then idf[#idf + 1] = 'o' .. ev[6] end
      for i = 7, #ev, 3 do
        local g = X.groups[ev[i]]
        local byday = days[g[1]] or {}
        days[g[1]] = byday
        local l = byday[ev[4]] or {}
        byday[ev[4]] = l
        l[#l + 1] = g[2]
      end
    end
  end
  for r, l in pairs(wins) do cache.preload(X.win[r], l) end
  for r, byday in pairs(days) do
    for d, l in pairs(byday) do cache.preload(shard.sums(X, r, d).c, l) end
  end
  ids.preload(X.ids, idf)
end

local function fmt_limit(x)
  return daily.format(x, x ~= math.floor(x))
end

local function window_step(pos, ev, g, b, a)
  local r = g[1]
  local rule = X.rules[r]
  local w = shard.window(X, r, g[2])
  local code = window.hit(w, b, rule[3], rule[4], rule[5])
  w.dirty = true
  if code == 1 then
    cache.set(X.reg[r], g[2], string.format('since=%s value=%d limit=%d account=%s', ev[5], w.n, rule[4], a))
    X.out[#X.out + 1] = {pos, 2, r, g[2], w.n}
  elseif code == 2 then
    cache.del(X.reg[r], g[2])
    X.out[#X.out + 1] = {pos, 3, r, g[2], w.n}
  end
end

local function daily_step(pos, ev, g, amount, isfloat, current)
  local r = g[1]
  local rule = X.rules[r]
  local d = ev[4]
  local e = shard.sum(X, r, d, g[2])
  daily.add(e, amount, isfloat == 1)
  if d == current and daily.crosses(e, rule[3]) and not cache.get(X.reg[r], g[2]) then
    local a = X.accounts[g[3]]
    local value = daily.format(e[1], e[2])
    shard.pause(X, r, g[2], a, string.format('since=%s value=%s limit=%s day=%s account=%s',
      ev[5], value, fmt_limit(rule[3]), keys.iso_day(d), a))
    X.out[#X.out + 1] = {pos, 2, r, g[2], value}
  end
end

-- The account's day: a later day rolls it over first (SEMANTICS.md, step 1).
local function enter_day(pos, a, d)
  local info = shard.account(X, a)
  if d > info.day then rollover.account(X, a, info, d, pos) end
  return info.day
end

local function order(pos, ev)
  local f = 'o' .. ev[2]
  if ids.seen(X.ids, f) then
    X.out[#X.out + 1] = {pos, 1}
    return
  end
  local a = X.accounts[ev[3]]
  local current = enter_day(pos, a, ev[4])
  ids.add(X.ids, f, X.pairs[ev[6]])
  local i, n = 7, #ev
  while i <= n do
    local g = X.groups[ev[i]]
    if X.rules[g[1]][1] == 'w' then
      window_step(pos, ev, g, ev[i + 1], a)
      i = i + 2
    else
      daily_step(pos, ev, g, ev[i + 1], ev[i + 2], current)
      i = i + 3
    end
  end
end

local function trade(pos, ev)
  local f = 't' .. ev[2]
  if ids.seen(X.ids, f) then
    X.out[#X.out + 1] = {pos, 1}
    return
  end
  if ev[6] ~= '' and not ids.seen(X.ids, 'o' .. ev[6]) then return pos end
  local current = enter_day(pos, X.accounts[ev[3]], ev[4])
  ids.add(X.ids, f, '1')
  for i = 7, #ev, 3 do
    daily_step(pos, ev, X.groups[ev[i]], ev[i + 1], ev[i + 2], current)
  end
end

for pos, ev in ipairs(events) do
  local kind = ev[1]
  if kind == 1 then
    order(pos, ev)
  elseif kind == 2 then
    local aborted = trade(pos, ev)
    if aborted then return {'abort', aborted} end
  elseif kind == 3 then
    rollover.clock(X, ev[2], pos)
    rollover.tick(X, ev[4], pos)
  else
    rollover.clock(X, ev[2], pos)
    rollover.reset(X, ev[2], pos)
  end
end

-- Every check has passed: write back.
local result
if json then result = cjson.encode(X.out) else result = cmsgpack.pack(X.out) end
shard.flush(X, meta, seq, digest, result)
return {'ok', result}
