#!lua
--[[ apply.lua - apply one shard's part of a batch of events, atomically, in event order.

KEYS[1]  <prefix>:{s<N>}:meta; every other key is derived from it (keys.lua), so all of them
         carry the shard's hash tag and the call touches one Redis Cluster slot.
ARGV[1]  the plan (msgpack; JSON when ARGV[4] is "j" - fakeredis has no cmsgpack)
ARGV[2]  this batch's number (decimal < 2^53), recorded as the shard's high-water mark (hwm)
ARGV[3]  digest of the plan: the same number with the same digest is a retry of a batch
         already applied (one of the last 4, kept in the meta hash: a sender may have one in
         flight behind another)
ARGV[4]  "m" or "j": codec of ARGV[1] and of the result
ARGV[5]  the hwm the sender expects (its previous batch): the batch applies only on top of it
ARGV[6]  the sender's constants, in the codec of ARGV[1] (decoded once per server while the
         bytes stay the same: constants.lua): {rules, emit.lua's rules or absent}
KEYS[2..4], ARGV[7..9]  a cluster worker's lease, input cursor, output streams and deployment id
         (lua/fence.lua, lua/emit.lua); RemoteEngine's own batches pass none of them

Returns  {"ok", result}     applied; result = encoded list of records (below)
         {"again", result}  a batch applied before (a retried call whose reply was lost): its
                            stored result; nothing changes
         {"abort", pos}     event pos is a trade whose order is no longer in the index
                            (retention expired earlier in this batch): nothing written;
                            resend without it (it is an unknown_order)
         {"stale", hwm}     hwm is not what the sender expects: another writer, an earlier
                            batch of this sender that did not apply, or a lost reply followed
                            by a different batch; nothing written
         {"lost", id} / {"fenced", epoch} / {"gap", sid}   (cluster worker) refused before any
                            write: the shard lacks the worker's deployment id (ARGV[9]: its
                            state was lost), the lease moved on, the cursor is elsewhere
         {"ok", result, hint}               (cluster worker) hint: see emit.lua

plan = {1, 0, accounts, pairs, groups, events, retention_days, ttl_ms, t0[, hint day, unhinted]}
  rules[r]    (ARGV[6][1]) {"w", name, K, threshold, resume, 1, A} | {"d", name, cap, 0, 0, 1 if
              orders feed it, A}; A = 1 when the rule groups by account only
  accounts[a] account id
  pairs       flat, per (account, contract) pair p: a, its order-index value
              "<#account>:<account><contract>" (opaque here: cluster_risk/keys.py), then its group g
              for each rule r; no groups when every rule groups by account only (A = 1): then
              each rule's group is the account's own, g = a
  groups[g]   a scope key, listed once even when several rules group by it: a pair's entry
              for rule r that points at g makes it rule r's group; 0 when the list is the
              accounts list (rules that group by account only)
  events      one flat array (cheapest to decode), each event one of
              1, "o<oid>", p, ts, then per rule that orders feed (rules[r][6] == 1):
                 bucket (-1: not counted) for a window rule, amount, kind (0 int, 1 float,
                 2 none) for a daily rule
              2, "t<tid>", p, ts, "o<oid>" to check in the index or "", then per daily
                 rule: amount, kind
              3, day, then per rule: T // B (0 for daily rules)       tick
              4, day                                                  reset_daily
              4, {day, account, escaped account, {its place in the scope of each rule}}
                                                    reset of one account (ops extension)
              5, day    not an event: the trading day of the orders and trades after it
                        (sent when it changes, not with every event)
  hint day, unhinted   optional: every account of the plan but those at the indices listed in
              unhinted had an event on the hint day, in a batch applied before this one and not
              reported a duplicate; used only when that day is the shard's latest day (then it
              is the account's current day, whose record need not be read)
  ts = the event time in ns minus t0 (a decimal string): a number that Lua's doubles hold
  exactly, or the time itself as a string when it is 2^53 ns or more away; Lua only writes
  it into the pause registry. day = the trading-day ordinal, computed by Python (Lua has no
  time zones).
record = {pos, code, r, scope key, value}   (pos = the event's number in this plan, from 1)
  codes (codes.lua, from cluster_risk/state/codes.py): DUPLICATE (no other fields), PAUSE,
  RESUME (window, by an order), ROLLOVER resume, TICK_RESUME, RESET_RESUME (rollover.lua)
]]

--@include builtins.lua
--@include codes.lua
--@include keys.lua
--@include constants.lua
--@include cache.lua
--@include window.lua
--@include daily_sum.lua
--@include seen_ids.lua
--@include shard.lua
--@include rollover.lua
--@include fence.lua
--@include emit.lua

--@body (the library above is defined once per server when this runs as a Redis Function)
builtins.bind()
window.new_call()
local meta = KEYS[1]
local base = keys.base(meta)
local seq, digest, prev = ARGV[2], ARGV[3], ARGV[5]
local json = ARGV[4] == 'j'
local static = constants.decode(ARGV[6], json)
local worker = fence.open(json, 7, static[2])
if worker then
  local refused = fence.check_epoch(worker)
  if refused then return refused end
end

local m = redis.call('HMGET', meta, unpack(shard.META))
local hwm, seqn = tonumber(m[1]) or 0, tonumber(seq)
if seqn <= hwm then
  local slot = seqn % 4
  local done = redis.call('HMGET', meta, 'rseq' .. slot, 'result' .. slot, 'digest' .. slot)
  if done[1] == seq and done[3] == digest then return {'again', done[2]} end
  return {'stale', string.format('%.0f', hwm)}
end
if tonumber(prev) ~= hwm then return {'stale', string.format('%.0f', hwm)} end
if worker then
  local refused = fence.check_cursor(worker)
  if refused then return refused end
end

local plan
if json then plan = cjson.decode(ARGV[1]) else plan = cmsgpack.unpack(ARGV[1]) end
plan[2] = static[1]
local X = shard.open(base, plan, m)
local ev, nev = plan[6], #plan[6]
local rules, groups, pairs_ = X.rules, X.groups, X.pairs

-- What the rules make of a plan's shape, the same in every call (computed once per server):
-- SPAN[kind], the values an event of each kind takes in the plan; the rules an order / a
-- trade feeds, in the order of its values; and which rules are window rules.
local shape = constants.derived(rules, function(rs)
  local order_width, trade_width = 0, 0
  local order_rules, trade_rules, is_window = {}, {}, {}
  local by_account, at = true, {} -- at[r]: where rule r's group is among a pair's values
  for _, rule in ipairs(rs) do by_account = by_account and rule[7] == 1 end
  for r, rule in ipairs(rs) do
    at[r] = by_account and 1 or 2 + r
    is_window[r] = rule[1] == 'w'
    if is_window[r] then
      order_width = order_width + 1
      order_rules[#order_rules + 1] = r
    else
      trade_width = trade_width + 2
      if rule[6] == 1 then
        order_width = order_width + 2
        order_rules[#order_rules + 1] = r
      end
      trade_rules[#trade_rules + 1] = r
    end
  end
  return {span = {4 + order_width, 5 + trade_width, 2 + #rs, 2, 2}, order_rules = order_rules,
    trade_rules = trade_rules, is_window = is_window, at = at, width = by_account and 2 or 2 + #rs}
end)
local SPAN = shape.span -- by kind: the values an entry of the events array takes
local W, AT = shape.width, shape.at -- values per pair; where each rule's group is among them

-- the scope key of pair p's group for rule r
local function group(p, r)
  return groups[pairs_[(p - 1) * W + AT[r]]]
end

-- The hot path, per order and trade: the shard's tables in locals, the rules each kind of
-- event feeds listed once, the common cases (an id known unseen, an account already read on
-- its current day, a window already decoded) without a library call.
local I, acc, ws_of, reg, accounts = X.ids, X.acc, X.ws, X.reg, X.accounts
local raw_of, win_v = X.raw, {} -- per window rule: this batch's new values; the preloaded ones
local gen = I.gen -- id -> generation, false when known unseen (ids.split)
local order_rules, trade_rules, is_window = shape.order_rules, shape.trade_rules, shape.is_window
for r in ipairs(rules) do
  if is_window[r] then win_v[r] = cache.values(X.win[r]) end
end

-- The sender's hint (plan[10], plan[11]): every account but those listed had an event on day
-- plan[10], applied in an earlier batch. When that day is the shard's latest day, it is each
-- such account's day D_a (D_a never decreases and never passes the latest day): its record
-- need not be read for an event on that day.
local hinted_day = plan[10] == X.latest and plan[10] or nil

-- Preload what the batch reads: accounts, window groups, day sums, ids (a few variadic calls).
do
  if hinted_day then
    local unhinted, want = plan[11], {}
    for k = 1, #unhinted do want[k] = X.accounts[unhinted[k]] end
    cache.preload_unique(X.acct, want)
  else
    cache.preload_unique(X.acct, X.accounts) -- the plan lists each account once
  end
  local wins, days, idf = {}, {}, {}
  local np = #pairs_ / W
  for r, rule in ipairs(rules) do
    if rule[1] == 'w' and W == 2 then
      wins[r] = groups -- every rule groups by account: each account's own group, listed once
    elseif rule[1] == 'w' then
      -- a group number stands for one (rule, scope): distinct numbers are distinct fields
      local l, seen, n = {}, {}, 0
      for p = AT[r], np * W, W do
        local g = pairs_[p]
        if not seen[g] then
          seen[g] = true
          n = n + 1
          l[n] = groups[g]
        end
      end
      wins[r] = l
    end
  end
  local i, d = 1, nil
  local oids, tids, no, nt = {}, {}, 0, 0 -- the batch's own ids, by kind (ids.split below)
  while i <= nev do
    local kind = ev[i]
    if kind == 1 then
      no = no + 1
      oids[no] = ev[i + 1]
    elseif kind == 2 then
      nt = nt + 1
      tids[nt] = ev[i + 1]
      if ev[i + 4] ~= '' then idf[#idf + 1] = ev[i + 4] end
      local p = ev[i + 2]
      for j = 1, #trade_rules do
        local r = trade_rules[j]
        local byday = days[r] or {}
        days[r] = byday
        local l = byday[d] or {}
        byday[d] = l
        l[#l + 1] = group(p, r)
      end
    elseif kind == 5 then
      d = ev[i + 1]
    end
    i = i + SPAN[kind]
  end
  ids.split(I, oids, 111, idf)
  ids.split(I, tids, 116, idf)
  for r, l in pairs(wins) do cache.preload_unique(X.win[r], l) end
  for r, byday in pairs(days) do
    for d, l in pairs(byday) do cache.preload(shard.sums(X, r, d).c, l) end
  end
  ids.preload(X.ids, idf)
end

local function fmt_limit(x)
  return daily.format(x, x ~= math.floor(x))
end

-- The event time as a decimal string: t0 + ts, in two exact halves (only when pausing).
local function since(ts)
  if type(ts) == 'string' then return ts end
  local t0 = plan[9]
  local hi = tonumber(string.sub(t0, 1, -10)) or 0
  local lo = tonumber(string.sub(t0, -9)) + ts
  local carry = math.floor(lo / 1e9)
  hi, lo = hi + carry, lo - carry * 1e9
  if hi > 0 then return string.format('%.0f%09.0f', hi, lo) end
  return string.format('%.0f', lo)
end

-- A window hit's pause (code PAUSED) or resume (RESUMED); n the count.
local function window_crossed(pos, ts, r, key, a, code, n)
  local rule = rules[r]
  if code == PAUSED then
    -- the account by `..`, not %s: Lua 5.1's string.format cuts a string at its first \0
    cache.set(reg[r], key, string.format('since=%s value=%d limit=%d account=', since(ts), n, rule[4]) .. a)
    X.out[#X.out + 1] = {pos, PAUSE, r, key, n}
  elseif code == RESUMED then
    cache.del(reg[r], key)
    X.out[#X.out + 1] = {pos, RESUME, r, key, n}
  end
end

-- A hit through the group's decoded table (the loop below tries the value-to-value hit first).
local function window_decoded_hit(pos, ts, r, key, b, a)
  local rule = rules[r]
  local w = shard.window(X, r, key)
  local code = window.hit(w, b, rule[3], rule[4], rule[5])
  w.dirty = true
  window_crossed(pos, ts, r, key, a, code, w.n)
end

local function daily_step(pos, ts, d, r, key, a, amount, kind, current)
  if kind == 2 then return end
  local rule = rules[r]
  local e = shard.sum(X, r, d, key)
  daily.add(e, amount, kind == 1)
  if d == current and daily.crosses(e, rule[3]) and not cache.get(reg[r], key) then
    local value = daily.format(e[1], e[2])
    shard.pause(X, r, key, a, string.format('since=%s value=%s limit=%s day=%s account=',
      since(ts), value, fmt_limit(rule[3]), keys.iso_day(d)) .. a) -- `..`: %s cuts at a \0
    X.out[#X.out + 1] = {pos, PAUSE, r, key, value}
  end
end

-- The account's day D_a: a later day rolls it over first (SEMANTICS.md, step 1).
local acct_v, day_text = cache.values(X.acct), {} -- the preloaded account records; day -> its record text
local function enter_day(pos, a, d)
  local info = acc[a]
  if not info then
    -- most often D_a = d and no tick passed it: nothing changes. The loop below does not call
    -- this when the sender's hint says so; here, the record says day d without daily pauses
    local t = day_text[d]
    if not t then
      t = string.format('%d', d)
      day_text[d] = t
    end
    if acct_v[a] == t and d >= X.clock then return d end
    info = shard.account(X, a)
  elseif info.day < X.clock then
    info.day = X.clock -- a tick passed it: shard.account's lazy clock, inline
  end
  if d > info.day then rollover.account(X, a, info, d, pos) end
  return info.day
end

local hit_raw = window.hit_raw

-- The events, in order. An order's and a trade's steps, and the common window hit, are inline
-- in this loop, not in functions of their own: in Redis's Lua a call and a closure's upvalue
-- reads cost about 1,000 instructions, a few percent of an event's work.
local pos, i, day = 0, 1, nil
while i <= nev do
  local kind = ev[i]
  if kind <= 2 then -- an order (1) or a trade (2)
    pos = pos + 1
    local f = ev[i + 1]
    if gen[f] ~= false and ids.seen(I, f) then
      X.out[#X.out + 1] = {pos, DUPLICATE} -- a duplicate: nothing else happens
    else
      if kind == 2 and ev[i + 4] ~= '' and not ids.seen(I, ev[i + 4]) then
        return {'abort', pos} -- the trade's order left the index earlier in this batch
      end
      local d, base_p = day, (ev[i + 2] - 1) * W
      local a, ts = accounts[pairs_[base_p + 1]], ev[i + 3]
      local current = d -- enter_day's most common case, inline: a hinted account on the hinted day
      if d ~= hinted_day or acct_v[a] ~= nil or acc[a] or d < X.clock then current = enter_day(pos, a, d) end
      if kind == 1 then
        ids.add(I, f, pairs_[base_p + 2], 111)
        local k = i + 4
        for j = 1, #order_rules do
          local r = order_rules[j]
          if is_window[r] then
            local b = ev[k]
            if b >= 0 then
              local key, raw = groups[pairs_[base_p + AT[r]]], raw_of[r]
              local v, code, n
              if ws_of[r][key] == nil then -- no decoded table: the value-to-value hit (most hits)
                local s = raw[key] -- changed earlier in this batch (shard.window_value, inline)
                if s == nil then
                  s = win_v[r][key] -- preloaded: the value, or false for none (hit_raw takes either)
                  if s == nil then s = cache.get(X.win[r], key) end
                end
                local rule = rules[r]
                v, code, n = hit_raw(s, b, rule[3], rule[4], rule[5])
              end
              if v then
                raw[key] = v
                if code ~= NO_CHANGE then window_crossed(pos, ts, r, key, a, code, n) end
              else
                window_decoded_hit(pos, ts, r, key, b, a)
              end
            end
            k = k + 1
          else
            daily_step(pos, ts, d, r, groups[pairs_[base_p + AT[r]]], a, ev[k], ev[k + 1], current)
            k = k + 2
          end
        end
      else
        ids.add(I, f, '1', 116)
        local k = i + 5
        for j = 1, #trade_rules do
          local r = trade_rules[j]
          daily_step(pos, ts, d, r, groups[pairs_[base_p + AT[r]]], a, ev[k], ev[k + 1], current)
          k = k + 2
        end
      end
    end
  elseif kind == 5 then
    day = ev[i + 1]
  else
    pos = pos + 1
    if kind == 3 then
      rollover.clock(X, ev[i + 1], pos)
      local buckets = {}
      for r = 1, #rules do buckets[r] = ev[i + 1 + r] end
      rollover.tick(X, buckets, pos)
    elseif type(ev[i + 1]) == 'table' then
      rollover.reset_account(X, ev[i + 1], pos)
    else
      rollover.clock(X, ev[i + 1], pos)
      rollover.reset(X, ev[i + 1], pos)
    end
  end
  i = i + SPAN[kind]
end

-- Every check has passed: write back.
local result
if json then result = cjson.encode(X.out) else result = cmsgpack.pack(X.out) end
shard.flush(X, meta, seq, seqn, digest, result)
if worker then return {'ok', result, emit.run(worker, X)} end
return {'ok', result}
