#!lua
--[[ rollover.lua - library: tick, trading-day rollover and reset_daily (SEMANTICS.md).
The Lua twin of engine.py's _advance / _advance_clock / tick / reset_daily.

KEYS / ARGV: none. Included into apply.lua after shard.lua; works on its shard context X.
Each function appends result records {pos, code, r, scope key, value} to X.out:
  code 4  a daily pause lifted because the account's day moved (value: the new day's sum)
  code 5  a window pause lifted by a tick (value: the window count at max(T, h_g))
  code 6  a daily pause lifted by reset_daily (value 0)
Python sorts the records of one event by (rule, scope) as the contract orders them; the
action timestamps (start of the new day, T) are Python's too: Lua never sees nanoseconds.

  rollover.account(X, a, info, d, pos)   the account's own event is on day d > D_a
  rollover.clock(X, d, pos)              a tick or reset on day d: every account moves to >= d
  rollover.tick(X, buckets, pos)         window resumes; buckets[r] = T // B of window rule r
  rollover.reset(X, d, pos)              zero day d of every daily rule, lift every daily pause
  rollover.reset_account(X, r, pos)      one account (ops extension; r = {d, account, escaped
                                         account, {its place in each rule's scope}}): as its own
                                         event on day d would, then zero day d of its scopes and
                                         lift its daily pauses (code RESET_RESUME)
]]

local rollover = {}

local function lift(X, pos, code, r, key, d)
  cache.del(X.reg[r], key)
  local value = '0'
  if d then
    local e = shard.sum(X, r, d, key)
    value = daily.format(e[1], e[2])
  end
  X.out[#X.out + 1] = {pos, code, r, key, value}
end

function rollover.account(X, a, info, d, pos)
  shard.advance_latest(X, d)
  if info.flag then
    local l = shard.daily_pauses(X)[a]
    if l then
      for _, p in ipairs(l) do lift(X, pos, ROLLOVER, p[1], p[2], d) end
      X.dpi[a] = nil
    end
    info.flag = false
  end
  info.day, info.dirty = d, true
end

function rollover.clock(X, d, pos)
  if d <= X.clock then return end
  shard.advance_latest(X, d)
  for a, l in pairs(shard.daily_pauses(X)) do
    local info = shard.account(X, a)
    if info.day < d then
      for _, p in ipairs(l) do lift(X, pos, ROLLOVER, p[1], p[2], d) end
      X.dpi[a] = nil
      info.day, info.flag, info.dirty = d, false, true
    end
  end
  X.clock = d
end

function rollover.tick(X, buckets, pos)
  for r, rule in ipairs(X.rules) do
    if rule[1] == 'w' then
      for _, key in ipairs(cache.fields(X.reg[r])) do
        local w = shard.window(X, r, key)
        local c = buckets[r]
        if w.hb and w.hb > c then c = w.hb end
        local n = window.count_at(w, c, rule[3])
        if w.p == 1 and n <= rule[5] then
          w.p, w.dirty = 0, true
          cache.del(X.reg[r], key)
          X.out[#X.out + 1] = {pos, TICK_RESUME, r, key, n}
        end
      end
    end
  end
end

function rollover.reset(X, d, pos)
  local dpi = shard.daily_pauses(X)
  for r, rule in ipairs(X.rules) do
    if rule[1] == 'd' then
      local s = shard.sums(X, r, d)
      cache.clear(s.c)
      s.v = {}
      for _, key in ipairs(cache.fields(X.reg[r])) do lift(X, pos, RESET_RESUME, r, key, nil) end
    end
  end
  for a in pairs(dpi) do
    local info = shard.account(X, a)
    info.flag, info.dirty = false, true
  end
  X.dpi = {}
end

-- Does scope key `key` hold `account` (escaped) at place `place` (1-based)?
local function holds(key, account, place)
  local i = 0
  for part in string.gmatch(key .. ':', '([^:]*):') do
    i = i + 1
    if i == place then return part == account end
  end
  return false
end

function rollover.reset_account(X, req, pos)
  local d, a, esc, places = req[1], req[2], req[3], req[4]
  local info = shard.account(X, a)
  if d > info.day then rollover.account(X, a, info, d, pos) end
  local lifted = shard.daily_pauses(X)[a] or {}
  for r, rule in ipairs(X.rules) do
    if rule[1] == 'd' then
      local s = shard.sums(X, r, d)
      local found = {}
      for _, key in ipairs(cache.fields(s.c)) do found[key] = true end
      for key in pairs(s.v) do found[key] = true end -- written earlier in this batch
      for key in pairs(found) do
        if holds(key, esc, places[r]) then
          cache.del(s.c, key)
          s.v[key] = nil
        end
      end
    end
  end
  for _, p in ipairs(lifted) do lift(X, pos, RESET_RESUME, p[1], p[2], nil) end
  X.dpi[a] = nil
  info.flag, info.dirty = false, true
end
