#!lua
--[[ daily_sum.lua - library: a sum per trading day with a cap.
The Lua twin of cluster_risk.state.memory.DailySum (SEMANTICS.md, AccountVolumeLimitRule).

KEYS / ARGV: none. Included into apply.lua (`--@include daily_sum.lua`). The caller keeps the
sums of one rule and day in the hash <prefix>:{s<N>}:day:<YYYY-MM-DD>:<rule> (field = scope
key, value = format(sum)); zeroing a day (reset_daily) is deleting that hash.

A sum is a Lua number plus whether it is a float: Python adds ints and floats and prints 84
and 84.0 differently, so the type must survive (an int sum is stored "84", a float "84.0").
Floats are stored with the fewest digits that read back exactly.

  daily.parse(s) -> sum, isfloat        (nil -> 0, false)
  daily.format(x, isfloat) -> s
  daily.add(e, amount, isfloat)         e = {sum, isfloat}
  daily.crosses(e, cap) -> true when the sum is over the cap (the caller pauses on the
                          account's current day only, once, SEMANTICS.md step 3)
]]

local daily = {}

function daily.parse(s)
  if not s then return 0, false end
  return tonumber(s), string.find(s, '[%.eEnN]') ~= nil
end

function daily.format(x, isfloat)
  if not isfloat then return string.format('%.0f', x) end
  local s = string.format('%.15g', x)
  if tonumber(s) ~= x then
    s = string.format('%.16g', x)
    if tonumber(s) ~= x then s = string.format('%.17g', x) end
  end
  if not string.find(s, '[%.eEnN]') then s = s .. '.0' end
  return s
end

-- A sum saturates rather than drift (as cluster_risk.state.memory.saturated does): an integer
-- sum that would pass 2^53 (no longer exact) becomes SATURATED = 2^53 + 2, above every allowed
-- cap (<= 2^53); a float sum stays within +-the largest finite double (never inf or nan).
-- (Integer amounts are >= 0 for the built-in metrics; the test is exact for those.)
local EXACT, SATURATED, FMAX = 9007199254740992, 9007199254740994, 1.7976931348623157e308

function daily.add(e, amount, isfloat)
  local x = e[1] + amount
  e[2] = e[2] or isfloat
  if e[2] then
    if not (x >= -FMAX and x <= FMAX) then x = (x > 0) and FMAX or -FMAX end
  elseif amount > 0 and e[1] > EXACT - amount then
    x = SATURATED
  end
  e[1] = x
  e.dirty = true
end

function daily.crosses(e, cap)
  return e[1] > cap
end
