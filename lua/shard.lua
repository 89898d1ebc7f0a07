#!lua
--[[ shard.lua - library: one shard's state for the length of one script call.

KEYS / ARGV: none. Included into apply.lua (`--@include shard.lua`), after keys, cache, window,
daily_sum and seen_ids. Everything the batch reads is loaded into Lua tables (preloaded in a
few variadic calls, the rare rest on first use); everything it changes is written back by
shard.flush at the end, so every check of the batch (hwm, unknown orders) comes before the
first write.

X = shard.open(base, plan, m) (m: the meta hash's shard.META fields, HMGET's reply) holds:
  rules[r]   {"w", name, K, threshold, resume} | {"d", name, cap}  (stateful rules, config order)
  accounts, pairs, groups      the plan's tables (apply.lua's header)
  clock      day of the latest tick/reset (-1: none); latest  latest day of any event (-1)
  acc[a]     {day, flag, dirty}: the account's current day D_a, and whether it holds daily pauses
  out        result records {pos, code, r, scope key, value}

  shard.account(X, a) -> info       (day = max(D_a, clock): a tick moves every account)
  shard.window(X, r, key) -> w      shard.sum(X, r, d, key) -> e = {sum, isfloat}
  shard.window_value(X, r, key) -> value, changed in this batch
  raw[r][key]  a window value changed by window.hit_raw in this batch (no table: the common
               hit); shard.window decodes it when a rarer path needs the table
  shard.sums(X, r, d)               the day's cache entry {c = cache, v = {key -> e}}
  shard.daily_pauses(X) -> account -> {{r, key}, ...}   (built on first use)
  shard.pause(X, r, key, a, text)   shard.advance_latest(X, d)   shard.flush(X, ...)
]]

local shard = {}

-- the meta hash's fields a call reads first (in this order); keys.lua says what each holds
shard.META = {'hwm', 'clock', 'latest', 'gens', 'maxo', 'maxt', 'touched', 'blocks'}

function shard.open(base, plan, m)
  local clock, latest = tonumber(m[2]) or -1, tonumber(m[3]) or -1
  local X = {
    base = base, rules = plan[2], accounts = plan[3], pairs = plan[4],
    groups = plan[5] ~= 0 and plan[5] or plan[3], -- 0: the groups are the accounts
    retention = plan[7], ttl = plan[8], clock = clock, latest = latest, touched = m[7], out = {},
    acct = cache.new(keys.acct(base)), acc = {}, reg = {}, win = {}, winc = {}, ws = {}, raw = {}, sums = {},
    dpi = nil,
  }
  for r, rule in ipairs(X.rules) do
    X.reg[r] = cache.new(keys.paused(base, rule[2]))
    if rule[1] == 'w' then
      X.win[r] = cache.new(keys.win(base, rule[2]))
      X.winc[r] = cache.new(keys.winc(base, rule[2]))
      X.ws[r] = {}
      X.raw[r] = {}
    else
      X.sums[r] = {}
    end
  end
  X.ids = ids.open(base, m[4], latest, X.retention, m[5] or nil, m[6] or nil, m[8] or nil)
  return X
end

function shard.account(X, a)
  local info = X.acc[a]
  if not info then
    local rec = cache.get(X.acct, a)
    info = {day = -1, flag = false, dirty = false}
    if rec then
      if string.byte(rec, -1) == 112 then -- "p": the account holds daily pauses
        info.day, info.flag = tonumber(string.sub(rec, 1, -2)), true
      else
        info.day = tonumber(rec)
      end
    end
    X.acc[a] = info
  end
  -- Lazily applied tick: when the clock passed D_a, its daily pauses were lifted then.
  if info.day < X.clock then info.day = X.clock end
  return info
end

-- Window chunks live in the shard's cache of the rule's winc hash (ctx = {cache, scope key}).
window.backend = {
  get = function(ctx, number) return cache.get(ctx[1], window.field(number, ctx[2])) end,
  set = function(ctx, number, chunk) cache.set(ctx[1], window.field(number, ctx[2]), chunk) end,
  del = function(ctx, number) cache.del(ctx[1], window.field(number, ctx[2])) end,
}

-- A window's value as of now: changed by window.hit_raw earlier in this batch (true), or stored
function shard.window_value(X, r, key)
  local s = X.raw[r][key]
  if s ~= nil then return s, true end
  return cache.get(X.win[r], key), false
end

function shard.window(X, r, key)
  local w = X.ws[r][key]
  if not w then
    local s, changed = shard.window_value(X, r, key)
    if changed then X.raw[r][key] = nil end -- the table takes over
    w = window.decode(s, {X.winc[r], key})
    w.dirty = changed
    X.ws[r][key] = w
  end
  return w
end

function shard.sums(X, r, d)
  local s = X.sums[r][d]
  if not s then
    s = {c = cache.new(keys.day(X.base, d, X.rules[r][2])), v = {}}
    X.sums[r][d] = s
  end
  return s
end

function shard.sum(X, r, d, key)
  local s = shard.sums(X, r, d)
  local e = s.v[key]
  if not e then
    local x, f = daily.parse(cache.get(s.c, key))
    e = {x, f}
    s.v[key] = e
  end
  return e
end

function shard.daily_pauses(X)
  if X.dpi then return X.dpi end
  local dpi = {}
  for r, rule in ipairs(X.rules) do
    if rule[1] == 'd' then
      local reg = X.reg[r]
      for _, key in ipairs(cache.fields(reg)) do
        local a = string.match(cache.get(reg, key), ' account=(.*)$')
        local l = dpi[a]
        if not l then
          l = {}
          dpi[a] = l
        end
        l[#l + 1] = {r, key}
      end
    end
  end
  X.dpi = dpi
  return dpi
end

-- A daily pause: registered, and remembered on the account so its rollover finds it.
function shard.pause(X, r, key, a, text)
  cache.set(X.reg[r], key, text)
  local info = shard.account(X, a)
  info.flag, info.dirty = true, true
  if X.dpi then
    local l = X.dpi[a]
    if not l then
      l = {}
      X.dpi[a] = l
    end
    l[#l + 1] = {r, key}
  end
end

function shard.advance_latest(X, d)
  if d > X.latest then
    X.latest = d
    ids.advance(X.ids, d)
  end
end

function shard.flush(X, meta, seq, seqn, digest, result)
  local ttl = X.ttl
  -- A key gets its TTL from the call that may have created it (cache.lua, "TTLs"); every key,
  -- read or written, is refreshed on the first batch of each new latest day and on every 256th
  -- batch (`touch`): a PEXPIRE per key and batch was the fixed cost that small batches pay.
  local latest = string.format('%d', X.latest)
  local touch = X.touched ~= latest or seqn % 256 == 0
  for a, info in pairs(X.acc) do
    if info.dirty then
      cache.set(X.acct, a, string.format('%d', info.day) .. (info.flag and 'p' or ''))
    end
  end
  cache.flush(X.acct, ttl, touch)
  for r, rule in ipairs(X.rules) do
    if rule[1] == 'w' then
      -- the windows go back in one HSET (not through the cache: nothing else writes them)
      local sets, n = {}, 0
      for key, v in pairs(X.raw[r]) do
        sets[n + 1], sets[n + 2], n = key, v, n + 2
      end
      for key, w in pairs(X.ws[r]) do
        if w.dirty then
          local v = window.encode(w) -- nil for a group never hit: it has no field
          if v then
            sets[n + 1], sets[n + 2], n = key, v, n + 2
          end
        end
      end
      cache.write(X.win[r].key, sets, ttl, touch, X.win[r].found)
      cache.flush(X.winc[r], ttl, touch)
    else
      for _, s in pairs(X.sums[r]) do
        for key, e in pairs(s.v) do
          if e.dirty then cache.set(s.c, key, daily.format(e[1], e[2])) end
        end
        cache.flush(s.c, ttl, false)
      end
    end
    cache.flush(X.reg[r], ttl, touch)
  end
  local gens, maxo, maxt = ids.flush(X.ids, ttl, meta)
  -- with the results of the last 4 batches, for retries (a sender keeps at most one batch in
  -- flight), in slots seq % 4 of the same hash: one HSET, nothing to delete
  local slot = string.format('%d', seqn % 4)
  redis.call('HSET', meta, 'hwm', seq, 'clock', string.format('%d', X.clock),
    'latest', latest, 'gens', gens, 'maxo', maxo, 'maxt', maxt, 'touched', latest,
    'rseq' .. slot, seq, 'result' .. slot, result, 'digest' .. slot, digest)
  if ttl > 0 and touch then redis.call('PEXPIRE', meta, ttl) end
end
