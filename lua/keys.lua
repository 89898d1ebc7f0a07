#!lua
--[[ keys.lua - library: the key layout as the scripts build it (the one definition is
cluster_risk/keys.py; tests/unit/test_keys.py checks this file against it).

KEYS / ARGV: none. Included first by apply.lua and lookup_ids.lua. Every key is the
shard's base "<prefix>:{s<N>}:" (KEYS[1] without its "meta" suffix) plus a suffix, so all of
a shard's keys share its hash tag and one script touches one Redis Cluster slot.

  base .. "meta"                         shard scalars: hwm, clock, latest, gens, maxo, maxt, touched,
                                         blocks (seen_ids.lua);
                                         rseq<k>, result<k>, digest<k>: the batches seq with seq % 4 == k
  base .. "acct"                         account -> current trading day ("<ordinal>[p]")
  base .. "win:" .. rule                 scope -> sliding window state, hot part (window.lua)
  base .. "winc:" .. rule                "<chunk number>:<scope>" -> older window buckets (window.lua)
  base .. "day:" .. YYYY-MM-DD .. ":" .. rule   scope -> that day's sum (daily_sum.lua)
  base .. "paused:" .. rule              scope -> "since=<ns> value=<v> limit=<l> ..." (current pauses)
  base .. "ids:" .. YYYY-MM-DD .. ":" .. block   a block of that day's ids: "o<oid>" -> "<#account>:<account><contract>" (keys.py),
                                         "t<tid>" -> 1; block = the id field without its last 3 digits
                                         ("o12" holds o12000..o12999; "o" holds o0..o999) (seen_ids.lua)
  base .. "ids:" .. YYYY-MM-DD .. ":blocks"   set: the day's blocks

Trading days travel as proleptic Gregorian ordinals (Python's date.toordinal()).
]]

local keys = {}

-- ordinal -> "YYYY-MM-DD" (days-from-civil inverted, H. Hinnant); exact for any ordinal >= 1
local function iso_day(ordinal)
  local z = ordinal + 305 -- days since 0000-03-01 (ordinal 1 is 0001-01-01)
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02d', y, m, d)
end

-- memoised: every call names its day and id hashes, and a Function library keeps this table
-- across calls (a pure function of the ordinal; one entry per trading day seen)
local iso_days = {}
function keys.iso_day(ordinal)
  local s = iso_days[ordinal]
  if not s then
    s = iso_day(ordinal)
    iso_days[ordinal] = s
  end
  return s
end

function keys.base(meta) return string.sub(meta, 1, -5) end
function keys.acct(base) return base .. 'acct' end
function keys.win(base, rule) return base .. 'win:' .. rule end
function keys.winc(base, rule) return base .. 'winc:' .. rule end
function keys.day(base, d, rule) return base .. 'day:' .. keys.iso_day(d) .. ':' .. rule end
function keys.paused(base, rule) return base .. 'paused:' .. rule end
function keys.ids_block(base, d, block) return base .. 'ids:' .. keys.iso_day(d) .. ':' .. block end
function keys.ids_blocks(base, d) return base .. 'ids:' .. keys.iso_day(d) .. ':blocks' end
