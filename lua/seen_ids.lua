#!lua
--[[ seen_ids.lua - library: seen-sets for oids and tids, and the order index oid -> (account,
contract), kept for `retention` trading days (the Lua twin of engine.py's IdRetention).

KEYS / ARGV: none. Included into apply.lua and lookup_ids.lua (`--@include seen_ids.lua`).

Ids are kept per generation: the shard's latest trading day when the id was first seen.
Generation g lives in the hash <prefix>:{s<N>}:ids:<YYYY-MM-DD of g>, fields "o<oid>" (value
"<account>\31<contract>": the order index) and "t<tid>" (value "1"); an id is seen while
latest - g <= retention, and a generation is deleted as the latest day passes that. The live
generations are listed in the shard's meta hash (field gens, "d1,d2,...").

The meta hash also keeps the largest oid and tid ever added (maxo "o<oid>", maxt "t<tid>"; never lowered,
retention or not): an id above it was never seen, so it needs no look-up. Gateways number
their orders and trades upwards, so most of a batch's ids skip the HMGET.

  ids.open(base, gens, latest, retention, maxo, maxt) -> I
  ids.split(I, fields, kind, out)   the batch's ids of one kind (111 "o", 116 "t": their first
                         byte), in order: one above every id of its kind ever added and every
                         one before it is unseen (I.gen[f] = false; the maximum rises to it), the
                         others are appended to `out` (to look up); one call per kind, not per id
  ids.preload(I, fields)             newest generation first, each asked (one HMGET) only for
                                     the ids no newer one holds
  ids.seen(I, field) -> its value (true for an id added in this call), or nil when unseen
  ids.add(I, field, value)           into generation I.latest
  ids.advance(I, day)                the shard's latest day moves to `day`; old generations go
  ids.flush(I, ttl_ms) -> gens, maxo, maxt   write back; the new meta fields
]]

local ids = {}

function ids.open(base, gens, latest, retention, maxo, maxt)
  -- adds[d]: the ids added to generation d in this batch, flat (field, value, ...), sent by
  -- one HSET at flush: each id is added once (it is seen afterwards), so no dirty tracking
  local I = {base = base, latest = latest, retention = retention, gens = {}, caches = {}, gen = {}, val = {},
    adds = {}}
  I.max = {[111] = maxo or '', [116] = maxt or ''} -- by first byte ("o", "t"): the largest id added
  I.had = {} -- the generations listed at open: their hashes exist (with their TTL)
  for text in string.gmatch(gens or '', '(%-?%d+)') do
    local d = tonumber(text)
    I.gens[#I.gens + 1] = d
    I.had[d] = true
  end
  return I
end

local function gen_cache(I, d)
  local c = I.caches[d]
  if not c then
    c = cache.new(keys.ids(I.base, d))
    I.caches[d] = c
  end
  return c
end

function ids.preload(I, fields)
  -- newest generation first, each asked only for the ids not found in a newer one (a trade's
  -- order is nearly always in the newest: one HMGET, not one per retained day)
  local want = {}
  for i = 1, #fields do
    if I.gen[fields[i]] == nil then want[#want + 1] = fields[i] end
  end
  for k = #I.gens, 1, -1 do
    if #want == 0 then break end
    local d = I.gens[k]
    local c = gen_cache(I, d)
    cache.preload(c, want)
    local left = {}
    for i = 1, #want do
      local f = want[i]
      local x = c.v[f]
      if x then
        I.gen[f], I.val[f] = d, x
      else
        left[#left + 1] = f
      end
    end
    want = left
  end
  for i = 1, #want do I.gen[want[i]] = false end
end

function ids.split(I, fields, kind, out)
  local m, gen, n = I.max[kind], I.gen, #out
  local lm = #m
  for k = 1, #fields do
    local f = fields[k]
    local lf = #f
    if lf > lm or (lf == lm and f > m) then -- ids are decimal digits without leading zeros: longer is larger, then bytes
      -- the batch's ids are all added (or the batch aborts), so the maximum moves here, once;
      -- f is above every id checked before it, so it has no generation yet
      m, lm, gen[f] = f, lf, false
    else
      n = n + 1
      out[n] = f
    end
  end
  I.max[kind] = m
end

function ids.seen(I, f)
  local g = I.gen[f]
  if g == nil then
    ids.preload(I, {f})
    g = I.gen[f]
  end
  if g and I.latest - g <= I.retention then return I.val[f] or true end
  return nil
end

function ids.add(I, f, x)
  local d = I.latest
  local l = I.adds[d]
  if not l then
    l = {}
    I.adds[d] = l
    if I.gens[#I.gens] ~= d then I.gens[#I.gens + 1] = d end
  end
  local n = #l
  l[n + 1], l[n + 2] = f, x
  I.gen[f] = d -- its value is not kept: only ids read from Redis are asked for theirs
end

function ids.advance(I, day)
  I.latest = day
  local keep = {}
  for _, d in ipairs(I.gens) do
    if day - d > I.retention then
      cache.clear(gen_cache(I, d))
      I.adds[d] = nil
    else
      keep[#keep + 1] = d
    end
  end
  I.gens = keep
end

function ids.flush(I, ttl_ms)
  for _, c in pairs(I.caches) do
    cache.flush(c, ttl_ms, false)
  end
  for d, l in pairs(I.adds) do cache.write(keys.ids(I.base, d), l, ttl_ms, false, I.had[d]) end
  local out = {}
  for i, d in ipairs(I.gens) do out[i] = string.format('%d', d) end
  return table.concat(out, ','), I.max[111], I.max[116]
end
