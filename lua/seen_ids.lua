#!lua
--[[ seen_ids.lua - library: seen-sets for oids and tids, and the order index oid -> (account,
contract), kept for `retention` trading days (the Lua twin of engine.py's IdRetention).

KEYS / ARGV: none. Included into apply.lua and lookup_ids.lua (`--@include seen_ids.lua`).

Ids are kept per generation: the shard's latest trading day when the id was first seen.
Generation g lives in hashes of at most 1,000 ids each, <prefix>:{s<N>}:ids:<YYYY-MM-DD of
g>:<block> (block: the id's field without its last 3 digits, keys.lua), fields "o<oid>" (value
"<#account>:<account><contract>": the order index) and "t<tid>" (value "1"); the set ...:blocks lists
them. An id is seen while latest - g <= retention, and a generation is deleted as the latest
day passes that. The live generations are listed in the shard's meta hash (field gens,
"d1,d2,..."). Why blocks: one hash per day grew to every id of the day (hundreds of thousands
of fields), and Redis's time went into searching it and rehashing it as it doubled, cache
miss by cache miss; a block stays small enough to stay in cache.

A block is listed in its day's set and given its TTL by the first call that writes it. The
meta field blocks, "-1 <lasto> <lastt> " (lasto, lastt: "<YYYY-MM-DD>:<block>", the block each
kind wrote last, or "-"; the leading -1 is a fixed placeholder), remembers that, so the calls
after it, whose ids ascend into the same block, pay one HSET and nothing else.

The meta hash also keeps the largest oid and tid ever added (maxo "o<oid>", maxt "t<tid>"; never lowered,
retention or not): an id above it was never seen, so it needs no look-up. Gateways number
their orders and trades upwards, so most of a batch's ids skip the HMGET.

What blocks cost per call, kept small: no table per kind or per block unless a block is new (a
table costs ~1,000 instructions in Redis's Lua, allocation and collection included), one meta
field for all of the above. What is left is a block's key and the check that it is listed, and
a second HSET when a call adds both oids and tids (different blocks): a few percent of a call.

  ids.open(base, gens, latest, retention, maxo, maxt, blocks) -> I
  ids.split(I, fields, kind, out)   the batch's ids of one kind (111 "o", 116 "t": their first
                         byte), in order: one above every id of its kind ever added and every
                         one before it is unseen (I.gen[f] = false; the maximum rises to it), the
                         others are appended to `out` (to look up); one call per kind, not per id.
                         When none is at or below the maximum, the kind's ids added in this
                         batch ascend: flush writes them without looking at each one
  ids.preload(I, fields)             newest generation first, each asked (one HMGET per block)
                                     only for the ids no newer one holds
  ids.seen(I, field) -> its value (true for an id added in this call), or nil when unseen
  ids.add(I, field, value, kind)     into generation I.latest (kind: 111 "o", 116 "t")
  ids.advance(I, day)                the shard's latest day moves to `day`; old generations go
  ids.flush(I, ttl_ms, meta) -> gens, maxo, maxt   write back (and meta's blocks field when it
                                     changes); the other meta fields to write
]]

local ids = {}

local NONE = {} -- an empty list, never written to

function ids.open(base, gens, latest, retention, maxo, maxt, blocks)
  -- adds[d * 256 + kind]: the ids of a kind added to generation d in this batch, flat (field,
  -- value, ...), sent by one HSET per block at flush: each id is added once (it is seen
  -- afterwards), so no dirty tracking. dropped: the generations to delete at flush; fresh[d]:
  -- the blocks of day d first written in this call (both made on first use: most calls have none)
  local I = {base = base, latest = latest, retention = retention, gens = {}, caches = {}, gen = {}, val = {},
    adds = {}, dropped = false, fresh = false, blocks = blocks or false, opened = blocks or false,
    ascending_o = false, ascending_t = false}
  I.max = {[111] = maxo or '', [116] = maxt or ''} -- by first byte ("o", "t"): the largest id added
  for text in string.gmatch(gens or '', '(%-?%d+)') do I.gens[#I.gens + 1] = tonumber(text) end
  return I
end

-- Ids per block: 10^DIGITS. A hash of 1,000 fields ends its growth with its table rehashed
-- (1,024 slots); one of 10,000 stops half-way through rehashing from 8,192 to 16,384 slots and
-- keeps both tables, since Redis rehashes a hash only as it is used: 70.3 bytes per id
-- against 59.0 (MEMORY USAGE, seed workload).
local DIGITS = 3
local ZEROS = '000' -- DIGITS zeros (the standard libraries are bound per call: builtins.lua)

-- An id's block: its field without the last DIGITS digits ("o12" for o12000 .. o12999; an id of
-- 1 to DIGITS digits: its kind's letter)
local function block_of(f)
  if #f <= DIGITS + 1 then return string.sub(f, 1, 1) end
  return string.sub(f, 1, -(DIGITS + 1))
end

local function key_cache(I, key)
  local c = I.caches[key]
  if not c then
    c = cache.new(key)
    I.caches[key] = c
  end
  return c
end

function ids.preload(I, fields)
  -- newest generation first, each asked only for the ids not found in a newer one (a trade's
  -- order is nearly always in the newest: one HMGET per block, not per retained day)
  local want = {}
  for i = 1, #fields do
    if I.gen[fields[i]] == nil then want[#want + 1] = fields[i] end
  end
  for k = #I.gens, 1, -1 do
    if #want == 0 then break end
    local d = I.gens[k]
    local by_block, of = {}, {} -- block -> its ids here; id -> its block's cache
    for i = 1, #want do
      local f = want[i]
      local b = block_of(f)
      local l = by_block[b]
      if not l then
        l = {}
        by_block[b] = l
      end
      l[#l + 1] = f
    end
    for b, l in pairs(by_block) do
      local c = key_cache(I, keys.ids_block(I.base, d, b))
      cache.preload(c, l)
      for i = 1, #l do of[l[i]] = c end
    end
    local left = {}
    for i = 1, #want do
      local f = want[i]
      local x = of[f].v[f]
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
  local lm, before = #m, n
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
  -- no id of this kind at or below the maximum: all ascend
  if kind == 111 then I.ascending_o = n == before else I.ascending_t = n == before end
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

function ids.add(I, f, x, kind)
  local d = I.latest
  local s = d * 256 + kind -- one list per day and kind, no table of tables (exact: d < 2^40)
  local l = I.adds[s]
  if not l then
    l = {}
    I.adds[s] = l
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
      local dropped = I.dropped or {}
      I.dropped = dropped
      dropped[#dropped + 1] = d
      I.adds[d * 256 + 111], I.adds[d * 256 + 116] = nil, nil
    else
      keep[#keep + 1] = d
    end
  end
  I.gens = keep
end

-- The first id of the block after block b, for ids of n characters (nil: b is the last)
local function next_block(b, n)
  local after = string.sub(b, 1, 1) .. string.format('%.0f', tonumber(string.sub(b, 2)) + 1)
  if #after + DIGITS ~= n then return nil end
  return after .. ZEROS
end

-- Whether id g, not below the first id of the block whose ids have len characters and which
-- ends before hi (nil: at the end of that length), is in that block
local function in_block(g, len, hi)
  local lg = #g
  if len <= DIGITS + 1 then return lg <= DIGITS + 1 end -- the kind's letter as the block
  return lg == len and (not hi or g < hi)
end

-- A block written for the first time, or again after another block of its kind: its TTL, a
-- place in its day's set, and its name in the blocks field as its kind's last
local function relist(I, d, b, kind, key, name, ttl_ms)
  if ttl_ms > 0 then redis.call('PEXPIRE', key, ttl_ms) end
  local fresh = I.fresh or {}
  I.fresh = fresh
  local l = fresh[d] or {}
  fresh[d] = l
  l[#l + 1] = b
  local _, lasto, lastt = string.match(I.blocks or '', '^(%S+) (%S+) (%S+) $')
  if kind == 111 then lasto = name else lastt = name end
  I.blocks = string.format('-1 %s %s ', lasto or '-', lastt or '-')
end

-- HSET one block's ids, list[from..to]; relist it unless the blocks field names it as its
-- kind's last
local function write_block(I, d, b, list, from, to, kind, ttl_ms)
  local key = keys.ids_block(I.base, d, b)
  cache.send('HSET', key, list, from, to)
  local day = keys.iso_day(d)
  if not (I.blocks and string.find(I.blocks, ' ' .. day .. ':' .. b .. ' ', 1, true)) then
    relist(I, d, b, kind, key, day .. ':' .. b, ttl_ms)
  end
end

-- HSET the flat (id, value, ...) list l of one kind into its blocks, one HSET per block.
local function write_blocks(I, d, l, kind, ttl_ms)
  local k, n = 1, #l
  if kind == 111 and I.ascending_o or kind == 116 and I.ascending_t then
    -- ids.split saw every id of this kind above the maximum, so l ascends and each block's
    -- ids are one run of it: its end is found by bisection, and sent from l as it is
    while k <= n do
      local b = block_of(l[k])
      local last = n / 2 -- pair numbers (pair p: l[2p - 1], l[2p])
      if k < n - 1 and block_of(l[n - 1]) ~= b then -- most often the first and the last share a block
        local len = #l[k]
        local hi = len > DIGITS + 1 and next_block(b, len)
        local top = last - 1 -- the last pair is not in b; pair `last` is
        last = (k + 1) / 2
        while last < top do
          local mid = math.floor((last + top + 1) / 2)
          if in_block(l[2 * mid - 1], len, hi) then last = mid else top = mid - 1 end
        end
      end
      write_block(I, d, b, l, k, 2 * last, kind, ttl_ms)
      k = 2 * last + 1
    end
    return
  end
  -- otherwise runs of ids in one block, each id compared with the run's bounds
  while k <= n do
    local f = l[k]
    local b, len = block_of(f), #f
    local lo, hi = b .. ZEROS, len > DIGITS + 1 and next_block(b, len)
    local sets, m = {f, l[k + 1]}, 2
    k = k + 2
    while k <= n do
      local g = l[k]
      if g < lo and #g == len or not in_block(g, len, hi) then break end
      sets[m + 1], sets[m + 2], m = g, l[k + 1], m + 2
      k = k + 2
    end
    write_block(I, d, b, sets, 1, m, kind, ttl_ms)
  end
end

function ids.flush(I, ttl_ms, meta)
  for s, l in pairs(I.adds) do
    local kind = s % 256
    write_blocks(I, (s - kind) / 256, l, kind, ttl_ms)
  end
  for d, l in pairs(I.fresh or NONE) do
    local listed = keys.ids_blocks(I.base, d)
    cache.send('SADD', listed, l)
    if ttl_ms > 0 then redis.call('PEXPIRE', listed, ttl_ms) end
  end
  for _, d in ipairs(I.dropped or NONE) do
    local listed = keys.ids_blocks(I.base, d)
    local gone = {listed} -- `listed` itself, also when the day has no block
    for _, b in ipairs(redis.call('SMEMBERS', listed)) do gone[#gone + 1] = keys.ids_block(I.base, d, b) end
    cache.send('DEL', listed, gone) -- in chunks, each naming `listed` again (deleted by the first)
  end
  -- the blocks field changes rarely (a new block; the first call to write blocks): written then
  if not I.blocks then I.blocks = '-1 - - ' end
  if I.blocks ~= I.opened then redis.call('HSET', meta, 'blocks', I.blocks) end
  local out = {}
  for i, d in ipairs(I.gens) do out[i] = string.format('%d', d) end
  return table.concat(out, ','), I.max[111], I.max[116]
end
