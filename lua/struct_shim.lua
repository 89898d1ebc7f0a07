#!lua
--[[ struct_shim.lua - library: the part of Redis's `struct` library that window.lua uses, in
plain Lua, for Lua emulators that lack it (fakeredis). Never loaded by a real Redis: the
loader (cluster_risk/state/redis.py) puts it in front of a script only when the server has
no `struct`.

KEYS / ARGV: none.
  struct.pack(fmt, ...)         -> string
  struct.unpack(fmt, s[, pos])  -> values..., next position
fmt: "<" (little endian, the only order supported), "B" (1 byte), "I<n>" (n-byte unsigned),
and for pack "c<n>" (a string's first n bytes; c0: all of it); values are non-negative
integers below 2^53.
]]

local struct = {}

-- the format's items: {kind, size}, kind "B", "I" or "c"
local function items(fmt)
  local out = {}
  for kind, n in string.gmatch(fmt, '([BIc])(%d*)') do
    out[#out + 1] = {kind, kind == 'B' and 1 or tonumber(n)}
  end
  return out
end

function struct.pack(fmt, ...)
  local args, out = {...}, {}
  for i, item in ipairs(items(fmt)) do
    local v, n = args[i], item[2]
    if item[1] == 'c' then
      out[#out + 1] = n == 0 and v or string.sub(v, 1, n)
    else
      for _ = 1, n do
        out[#out + 1] = string.char(v % 256)
        v = math.floor(v / 256)
      end
    end
  end
  return table.concat(out)
end

function struct.unpack(fmt, s, pos)
  pos = pos or 1
  local out = {}
  for _, item in ipairs(items(fmt)) do
    assert(item[1] ~= 'c', 'struct_shim: unpack reads numbers only')
    local n, v, mul = item[2], 0, 1
    for k = 0, n - 1 do
      v = v + string.byte(s, pos + k) * mul
      mul = mul * 256
    end
    out[#out + 1] = v
    pos = pos + n
  end
  out[#out + 1] = pos
  return unpack(out)
end
