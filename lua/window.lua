#!lua
--[[ window.lua - library: sliding-window counter with threshold and pause flag.
The Lua twin of cluster_risk.state.memory.SlidingWindow (SEMANTICS.md, OrderRateLimitRule).

KEYS / ARGV: none. Included into apply.lua and inspect.lua (`--@include window.lua`), after
builtins.lua (its hot path calls struct_pack and struct_unpack, that builtins.bind() binds). The caller
keeps one state per group: the hot part in the hash <prefix>:{s<N>}:win:<rule> (field = scope
key, value = encode(w)), older buckets in chunks in <prefix>:{s<N>}:winc:<rule> (field =
"<chunk number>:<scope key>"), reached through a backend (below).

The contract only ever looks at bucket indices (t // B, h_g // B, T // B), so the state keeps
buckets, never timestamps, and Python sends bucket indices (< 2^53, exact in Lua's doubles).
K = window_ns / bucket_ns.

Hot value: struct.pack('<I4I4I4', cf, cn, co), then the hot body, then a 28-byte trailer
struct.pack('<BI7I4I7I4I4B', p, hb, lc, fb, hc, n, 2) (2: this format's number).
  n   count(g, h_g): hits in buckets [hb - K + 1, hb]; the value's last 5 bytes, so
      `redis-cli EVAL "local v = redis.call('HGET', KEYS[1], ARGV[1]) return v and
      struct.unpack('<I4', v, #v - 4)" 1 <win key> <scope>` prints it
  p   1 if the group is paused by this rule, else 0
  hb  the group's high-water bucket h_g // B        lc  hits in bucket hb
  fb  the oldest live bucket (hb when there is no other)
  hc  entries in the hot body
  cf, cn, co   the cold chunks: numbers cf .. cf + cn - 1, oldest first; the oldest is read
               from byte co on (its earlier entries have left the window)
The common hit rewrites only the trailer and appends to the body: one struct.pack copies the
value's first bytes (c<n>), the new entry and the new trailer, so the hit makes one string
(Redis's Lua hashes and interns every string it makes).
The live buckets but hb, oldest first, are the entries of the cold chunks then of the hot body,
each as text "gap[:count]," (count 1 is left out), gap = the next bucket (the last one's next is
hb) minus this one.
Why this shape: a batch reads and writes only the small hot value of each group it touches
(a value of 600 bytes costs Redis about 4x one of 100 to read and to write back, and a full
1,000-bucket window would be 2 KB); a new bucket is appended to a Lua table and joined once;
when the hot body passes HOT_MAX entries, all but the newest HOT_KEEP move to one new cold
chunk, written once and read once, when its buckets leave the window.

  window.decode(s, ctx) -> w               window.encode(w) -> s (nil for a group never hit)
  window.hit(w, b, K, threshold, resume) -> 0 | 1 paused | 2 resumed   (w.n is the value)
  window.hit_raw(s, b, K, threshold, resume) -> s', code, n   the same hit on the stored value s
                                           (nil: none yet), or nil when it needs the table path
  window.count_at(w, c, K) -> the count at bucket c (c >= hb), state unchanged (for ticks)
  window.backend = {get(ctx, number) -> chunk, set(ctx, number, chunk), del(ctx, number)}:
    how chunks are reached; ctx is what the caller gave decode. The default reads with HGET
    from ctx = {cold hash key, scope key} and refuses to write (read-only scripts).
]]

local window = {}

local COLD = '<I4I4I4' -- cf, cn, co: the value's first 12 bytes
local TRAILER, TRAILER_BYTES, FORMAT = '<BI7I4I7I4I4B', 28, 2 -- p, hb, lc, fb, hc, n, FORMAT: its last bytes
local NO_COLD = '\0\0\0\0\0\0\0\0\1\0\0\0' -- struct.pack(COLD, 0, 0, 1): no cold chunks
local ENTRY = '^(%d+):?(%d*),()'
-- A spill moves HOT_MAX - HOT_KEEP = 32 entries; a small HOT_KEEP keeps the hot value short
-- between spills (Redis's Lua hashes every byte of every string it makes: each hit makes the
-- value three times over); 40/8 makes fewer instructions per event than larger bounds.
local HOT_MAX, HOT_KEEP = 40, 8

-- The text of a one-hit bucket for small gaps (formatting a number is slow in Lua: sprintf).
-- Written out, since this file runs on every script call: a loop of 64 concatenations would be
-- a large share of a one-event call.
local GAP = {
  '1,', '2,', '3,', '4,', '5,', '6,', '7,', '8,', '9,', '10,', '11,', '12,', '13,', '14,', '15,',
  '16,', '17,', '18,', '19,', '20,', '21,', '22,', '23,', '24,', '25,', '26,', '27,', '28,',
  '29,', '30,', '31,', '32,', '33,', '34,', '35,', '36,', '37,', '38,', '39,', '40,', '41,',
  '42,', '43,', '44,', '45,', '46,', '47,', '48,', '49,', '50,', '51,', '52,', '53,', '54,',
  '55,', '56,', '57,', '58,', '59,', '60,', '61,', '62,', '63,', '64,'
}

local function entry(gap, count)
  if count == 1 and GAP[gap] then return GAP[gap] end
  if gap < 1e14 then -- concatenation prints integers exactly below 1e14
    if count == 1 then return gap .. ',' end
    return gap .. ':' .. count .. ','
  end
  return string.format('%.0f:%d,', gap, count)
end

function window.field(number, key) return string.format('%d', number) .. ':' .. key end

window.backend = {
  get = function(ctx, number) return redis.call('HGET', ctx[1], window.field(number, ctx[2])) end,
  set = function() error('window.lua: read-only backend') end,
  del = function() error('window.lua: read-only backend') end,
}

function window.decode(s, ctx)
  if not s then
    return {n = 0, p = 0, hb = nil, lc = 0, fb = 0, hc = 0, cf = 0, cn = 0, co = 1,
      body = '', head = 1, tail = '', ctx = ctx}
  end
  -- the hot body is `body` from `head` on, then `tail` (appended since, joined when written back)
  local cf, cn, co, head = struct.unpack(COLD, s)
  local p, hb, lc, fb, hc, n = struct.unpack(TRAILER, s, #s - TRAILER_BYTES + 1)
  return {n = n, p = p, hb = hb, lc = lc, fb = fb, hc = hc, cf = cf, cn = cn, co = co,
    body = string.sub(s, head, #s - TRAILER_BYTES), head = 1, tail = '', ctx = ctx}
end

-- Join the tail into the body, so that the hot body is body from head on.
local function join(w)
  if w.tail ~= '' then
    w.body, w.head, w.tail = string.sub(w.body, w.head) .. w.tail, 1, ''
  end
end

-- Move all but the newest HOT_KEEP hot entries to a new cold chunk.
local function spill(w)
  join(w)
  local body, pos = w.body, w.head
  for _ = 1, w.hc - HOT_KEEP do pos = string.find(body, ',', pos, true) + 1 end
  if w.cn == 0 then w.co = 1 end
  window.backend.set(w.ctx, w.cf + w.cn, string.sub(body, w.head, pos - 1))
  w.cn, w.hc, w.head = w.cn + 1, HOT_KEEP, pos
end

function window.encode(w)
  if w.hb == nil then return nil end
  if w.hc > HOT_MAX then spill(w) end
  return struct.pack(COLD, w.cf, w.cn, w.co) .. string.sub(w.body, w.head) .. w.tail
    .. struct.pack(TRAILER, w.p, w.hb, w.lc, w.fb, w.hc, w.n, FORMAT)
end

-- Take the oldest live entry off the state: its gap and count, as text.
local function take(w)
  if w.cn > 0 then
    local chunk = w.chunk
    if not chunk then
      chunk = window.backend.get(w.ctx, w.cf)
      w.chunk = chunk
    end
    local gap, c, nxt = string.match(chunk, ENTRY, w.co)
    if nxt > #chunk then
      window.backend.del(w.ctx, w.cf)
      w.cf, w.cn, w.co, w.chunk = w.cf + 1, w.cn - 1, 1, nil
    else
      w.co = nxt
    end
    return gap, c
  end
  if w.head > #w.body then join(w) end
  local gap, c, nxt = string.match(w.body, ENTRY, w.head)
  w.head, w.hc = nxt, w.hc - 1
  return gap, c
end

-- Drop the buckets below `low` (they left the window) and their hits from n.
-- Called only when fb < low; stops at hb at the latest (fb + the gaps = hb).
local function trim(w, low)
  local fb, n = w.fb, w.n
  while fb < low and fb < w.hb do
    local gap, c = take(w)
    n = n - (c == '' and 1 or tonumber(c))
    fb = fb + tonumber(gap)
  end
  w.fb, w.n = fb, n
end

-- Every live bucket but hb and its count, oldest first (for the rare paths); read only.
local function entries(w)
  join(w)
  local bs, cs, bucket = {}, {}, w.fb
  local function scan(text, pos)
    while pos <= #text do
      local gap, c, nxt = string.match(text, ENTRY, pos)
      bs[#bs + 1] = bucket
      cs[#cs + 1] = (c == '' and 1 or tonumber(c))
      bucket = bucket + tonumber(gap)
      pos = nxt
    end
  end
  for i = 0, w.cn - 1 do
    local chunk = (i == 0 and w.chunk) or window.backend.get(w.ctx, w.cf + i)
    scan(chunk, i == 0 and w.co or 1)
  end
  scan(w.body, w.head)
  return bs, cs
end

-- A late hit inside the window (hb - K < b < hb): rare, so rebuild every entry in the hot body.
local function insert(w, b)
  local bs, cs = entries(w)
  for i = 0, w.cn - 1 do window.backend.del(w.ctx, w.cf + i) end
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
  w.body, w.head, w.fb, w.hc = table.concat(parts), 1, bs[1], #bs
  w.cf, w.cn, w.co, w.chunk = w.cf + w.cn, 0, 1, nil
end

-- The pause flag after a hit that left n in the window (SEMANTICS.md, step 3): p and the
-- code NO_CHANGE | PAUSED | RESUMED (codes.lua).
local function crossing(p, n, threshold, resume)
  if p == 1 then
    if n <= resume then return 0, RESUMED end
  elseif n > threshold then
    return 1, PAUSED
  end
  return p, NO_CHANGE
end

function window.hit(w, b, K, threshold, resume)
  local hb = w.hb
  if hb == nil then
    w.hb, w.fb, w.lc, w.n = b, b, 1, 1
  elseif b == hb then
    w.lc, w.n = w.lc + 1, w.n + 1
  elseif b > hb then
    -- bucket hb joins the body (with no other live bucket, fb == hb already)
    w.tail = w.tail .. entry(b - hb, w.lc)
    w.hb, w.lc, w.n, w.hc = b, 1, w.n + 1, w.hc + 1
    if w.fb <= b - K then trim(w, b - K + 1) end
  elseif b > hb - K then
    insert(w, b)
    w.n = w.n + 1
  end
  -- else: too late for the window, not counted; the pause is re-checked all the same
  local code
  w.p, code = crossing(w.p, w.n, threshold, resume)
  return code
end

-- hit_raw's struct.pack format by the number of bytes it copies from the old value, memoised:
-- a pure memo, so a Redis Function's library keeps it across calls; window.new_call() starts
-- it over past MEMO entries (lengths are few: a hot value stays under HOT_MAX entries).
local pack_format, memo_size = {}, 0
local MEMO = 4096
function window.new_call()
  if memo_size > MEMO then pack_format, memo_size = {}, 0 end
end

-- The common hit without a state table, value to value: a hit in the group's latest bucket
-- or a new one that expires nothing and needs no spill (most groups get one hit per batch).
-- The same value, code and count as decode + hit + encode; nil when it does not apply.
function window.hit_raw(s, b, K, threshold, resume)
  local n, p, hb, lc, fb, hc, kept
  local add = ''
  if s then
    -- the cold fields and the body stay as they are: the value's first `kept` bytes
    kept = #s - TRAILER_BYTES
    p, hb, lc, fb, hc, n = struct_unpack(TRAILER, s, kept + 1)
    if b == hb then
      lc = lc + 1
    elseif b > hb and fb > b - K and hc < HOT_MAX then
      add = lc == 1 and GAP[b - hb] or entry(b - hb, lc)
      hb, lc, hc = b, 1, hc + 1
    else
      return nil
    end
    n = n + 1
  else
    s, kept, n, p, hb, lc, fb, hc = NO_COLD, 12, 1, 0, b, 1, b, 0
  end
  local code = NO_CHANGE -- the pause flag after the hit, as crossing() (inline on the hot path)
  if p == 1 then
    if n <= resume then p, code = 0, RESUMED end
  elseif n > threshold then
    p, code = 1, PAUSED
  end
  local f = pack_format[kept]
  if not f then
    f = '<c' .. kept .. 'c0' .. string.sub(TRAILER, 2)
    pack_format[kept] = f
    memo_size = memo_size + 1
  end
  return struct_pack(f, s, add, p, hb, lc, fb, hc, n, FORMAT), code, n
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

