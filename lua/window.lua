#!lua
--[[ window.lua - library: sliding-window counter with threshold and pause flag.
The Lua twin of cluster_risk.state.memory.SlidingWindow (SEMANTICS.md, OrderRateLimitRule).

KEYS / ARGV: none. Included into apply.lua (`--@include window.lua`). The caller keeps one
state per group in the hash <prefix>:{s<N>}:win:<rule> (field = scope key, value = encode(w)).

The contract only ever looks at bucket indices (t // B, h_g // B, T // B), so the state keeps
buckets, never timestamps, and Python sends bucket indices (< 2^53, exact in Lua's doubles).
K = window_ns / bucket_ns.

Stored value: a 23-byte header struct.pack('<BI7I4I4I7', p, hb, n, lc, fb), then the body.
  p   1 if the group is paused by this rule, else 0
  hb  the group's high-water bucket h_g // B
  n   count(g, h_g): hits in buckets [hb - K + 1, hb]
  lc  hits in bucket hb
  fb  the first bucket of the body (hb when the body is empty)
  body  the other live buckets, oldest first, as text "gap[:count]," (count 1 is left out),
        gap = the next bucket (the last one's next is hb) minus this one
Why this shape: the header unpacks in C (struct) without copying the string; a new bucket is
appended to a Lua table and joined once when the state is written back; only the buckets that
leave the window are ever parsed (fb < low); the text body stays short (2 bytes per bucket
for a steady flow).

  window.decode(s) -> w                    window.encode(w) -> s
  window.hit(w, b, K, threshold, resume) -> 0 | 1 paused | 2 resumed   (w.n is the value)
  window.count_at(w, c, K) -> the count at bucket c (c >= hb), state unchanged (for ticks)
]]

local window = {}

local HEADER = '<BI7I4I4I7'
local HEADER_SIZE = 23
local ENTRY = '^(%d+):?(%d*),()'

-- The text of a one-hit bucket for small gaps, made once (formatting a number is slow in Lua).
local GAP = {}
for gap = 1, 64 do GAP[gap] = gap .. ',' end

local function entry(gap, count)
  if count == 1 and GAP[gap] then return GAP[gap] end
  if gap < 1e14 then -- concatenation prints integers exactly below 1e14
    if count == 1 then return gap .. ',' end
    return gap .. ':' .. count .. ','
  end
  return string.format('%.0f:%d,', gap, count)
end

function window.decode(s)
  if not s then
    return {p = 0, hb = nil, n = 0, lc = 0, fb = 0, body = '', head = 1, tail = ''}
  end
  local p, hb, n, lc, fb = struct.unpack(HEADER, s)
  -- the body is s from `head` on, then `tail` (appended since, joined when written back)
  return {p = p, hb = hb, n = n, lc = lc, fb = fb, body = s, head = HEADER_SIZE + 1, tail = ''}
end

function window.encode(w)
  return struct.pack(HEADER, w.p, w.hb, w.n, w.lc, w.fb) .. string.sub(w.body, w.head) .. w.tail
end

-- Join the tail into the body, so that the body is every live bucket but hb.
local function join(w)
  if w.tail ~= '' then
    w.body, w.head, w.tail = string.sub(w.body, w.head) .. w.tail, 1, ''
  end
end

-- Drop the body buckets below `low` (they left the window) and their hits from n.
-- Called only when fb < low; stops at hb at the latest (fb + the last gap = hb).
local function trim(w, low)
  local fb, n = w.fb, w.n
  while fb < low do
    if w.head > #w.body then
      if w.tail == '' then break end -- cannot happen (the gaps add up to hb); stay safe
      join(w)
    end
    local gap, c, nxt = string.match(w.body, ENTRY, w.head)
    n = n - (c == '' and 1 or tonumber(c))
    fb = fb + tonumber(gap)
    w.head = nxt
  end
  w.fb, w.n = fb, n
end

-- Every body bucket and its count (for the rare paths).
local function entries(w)
  join(w)
  local bs, cs = {}, {}
  local body, pos, bucket = w.body, w.head, w.fb
  while pos <= #body do
    local gap, c, nxt = string.match(body, ENTRY, pos)
    bs[#bs + 1] = bucket
    cs[#cs + 1] = (c == '' and 1 or tonumber(c))
    bucket = bucket + tonumber(gap)
    pos = nxt
  end
  return bs, cs
end

-- A late hit inside the window (hb - K < b < hb): rare, so decode the body and rebuild it.
local function insert(w, b)
  local bs, cs = entries(w)
  local i = 1
  while i <= #bs and bs[i] < b do i = i + 1 end
  if bs[i] == b then
    cs[i] = cs[i] + 1
  else
    table.insert(bs, i, b)
    table.insert(cs, i, 1)
  end
  local parts = {}
  for j = 1, #bs do
    parts[j] = entry((bs[j + 1] or w.hb) - bs[j], cs[j])
  end
  w.body, w.head, w.fb = table.concat(parts), 1, bs[1]
end

function window.hit(w, b, K, threshold, resume)
  local hb = w.hb
  if hb == nil then
    w.hb, w.fb, w.lc, w.n = b, b, 1, 1
  elseif b == hb then
    w.lc, w.n = w.lc + 1, w.n + 1
  elseif b > hb then
    -- bucket hb joins the body (an empty body has fb == hb already)
    w.tail = w.tail .. entry(b - hb, w.lc)
    w.hb, w.lc, w.n = b, 1, w.n + 1
    if w.fb <= b - K then trim(w, b - K + 1) end
  elseif b > hb - K then
    insert(w, b)
    w.n = w.n + 1
  end
  -- else: too late for the window, not counted; the pause is re-checked all the same
  local n = w.n
  if w.p == 1 then
    if n <= resume then
      w.p = 0
      return 2
    end
  elseif n > threshold then
    w.p = 1
    return 1
  end
  return 0
end

function window.count_at(w, c, K)
  local hb = w.hb
  if hb == nil then return 0 end
  local low = c - K + 1
  if hb < low then return 0 end
  local n = w.n
  if w.fb >= low then return n end
  local bs, cs = entries(w)
  for i = 1, #bs do
    if bs[i] >= low then break end
    n = n - cs[i]
  end
  return n
end
