#!lua
--[[ window.lua - library: sliding-window counter with threshold and pause flag.
The Lua twin of cluster_risk.state.memory.SlidingWindow (SEMANTICS.md, OrderRateLimitRule).

KEYS / ARGV: none. Included into apply.lua (`--@include window.lua`). The caller keeps one
state per group in the hash <prefix>:{s<N>}:win:<rule> (field = scope key, value = encode(w)).

The contract only ever looks at bucket indices (t // B, h_g // B, T // B), so the state keeps
buckets, never timestamps, and Python sends bucket indices (< 2^53, exact in Lua's doubles).
K = window_ns / bucket_ns.

State w (decoded):
  p   1 if the group is paused by this rule, else 0
  hb  the group's high-water bucket h_g // B (nil for a new group)
  n   count(g, h_g): hits in buckets [hb - K + 1, hb]
  lc  hits in bucket hb
  body  the other live buckets, oldest first, as text "delta[:count]," (count 1 is left out);
        the first bucket is f0 + delta1, each next one previous + delta; lb = last body bucket
Text, not struct/cmsgpack: it needs no library that fakeredis lacks, and only the records
that leave the window are ever parsed (one string.match each); a new bucket is appended.

  window.decode(s) -> w           window.encode(w) -> s
  window.hit(w, b, K, threshold, resume) -> 0 | 1 paused | 2 resumed   (w.n is the value)
  window.count_at(w, c, K) -> the count at bucket c (c >= hb), state unchanged (for ticks)
]]

local window = {}

local ENTRY = '^(%d+):?(%d*),()'

function window.decode(s)
  if not s then
    return {p = 0, hb = nil, n = 0, lc = 0, f0 = 0, lb = 0, body = ''}
  end
  local p, hb, n, lc, f0, lb, pos = string.match(s, '^(%d),(%d+),(%d+),(%d+),(%d+),(%d+);()')
  return {
    p = tonumber(p), hb = tonumber(hb), n = tonumber(n), lc = tonumber(lc),
    f0 = tonumber(f0), lb = tonumber(lb), body = string.sub(s, pos),
  }
end

function window.encode(w)
  return string.format('%d,%.0f,%d,%d,%.0f,%.0f;', w.p, w.hb, w.n, w.lc, w.f0, w.lb) .. w.body
end

local function entry(delta, count)
  if count == 1 then return string.format('%.0f,', delta) end
  return string.format('%.0f:%d,', delta, count)
end

-- Drop body buckets below `low` (they left the window) and their hits from n.
local function trim(w, low)
  local body, pos, f0, n = w.body, 1, w.f0, w.n
  local len = #body
  while pos <= len do
    local d, c, nxt = string.match(body, ENTRY, pos)
    local b = f0 + tonumber(d)
    if b >= low then break end
    n = n - (c == '' and 1 or tonumber(c))
    f0, pos = b, nxt
  end
  if pos > 1 then
    w.body, w.f0, w.n = string.sub(body, pos), f0, n
  end
end

-- A late hit inside the window (hb - K < b < hb): rare, so decode the body and rebuild it.
local function insert(w, b)
  local bs, cs = {}, {}
  local body, pos, bucket = w.body, 1, w.f0
  local len = #body
  while pos <= len do
    local d, c, nxt = string.match(body, ENTRY, pos)
    bucket = bucket + tonumber(d)
    bs[#bs + 1] = bucket
    cs[#cs + 1] = (c == '' and 1 or tonumber(c))
    pos = nxt
  end
  local i = 1
  while i <= #bs and bs[i] < b do i = i + 1 end
  if bs[i] == b then
    cs[i] = cs[i] + 1
  else
    table.insert(bs, i, b)
    table.insert(cs, i, 1)
  end
  local parts, prev = {}, bs[1]
  for j = 1, #bs do
    parts[j] = entry(bs[j] - prev, cs[j])
    prev = bs[j]
  end
  w.body, w.f0, w.lb = table.concat(parts), bs[1], bs[#bs]
end

local function check(w, threshold, resume)
  if w.p == 1 then
    if w.n <= resume then
      w.p = 0
      return 2
    end
  elseif w.n > threshold then
    w.p = 1
    return 1
  end
  return 0
end

function window.hit(w, b, K, threshold, resume)
  local hb = w.hb
  if hb == nil then
    w.hb, w.lc, w.n = b, 1, 1
  elseif b == hb then
    w.lc, w.n = w.lc + 1, w.n + 1
  elseif b > hb then
    -- bucket hb joins the body; an empty body restarts at f0 = hb (delta 0)
    if w.body == '' then
      w.f0 = hb
      w.body = entry(0, w.lc)
    else
      w.body = w.body .. entry(hb - w.lb, w.lc)
    end
    w.lb, w.hb, w.lc, w.n = hb, b, 1, w.n + 1
    trim(w, b - K + 1)
  elseif b > hb - K then
    insert(w, b)
    w.n = w.n + 1
  end
  -- else: too late for the window, not counted; the pause is re-checked all the same
  return check(w, threshold, resume)
end

function window.count_at(w, c, K)
  local hb = w.hb
  if hb == nil then return 0 end
  local low = c - K + 1
  if hb < low then return 0 end
  local body, pos, b, n = w.body, 1, w.f0, w.n
  local len = #body
  while pos <= len do
    local d, cnt, nxt = string.match(body, ENTRY, pos)
    b = b + tonumber(d)
    if b >= low then break end
    n = n - (cnt == '' and 1 or tonumber(cnt))
    pos = nxt
  end
  return n
end
