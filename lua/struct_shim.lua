#!lua
--[[ struct_shim.lua - library: the part of Redis's `struct` library that window.lua uses, in
plain Lua, for Lua emulators that lack it (fakeredis). Never loaded by a real Redis: the
loader (cluster_risk/state/redis.py) puts it in front of a script only when the server has
no `struct`.

KEYS / ARGV: none.
  struct.pack(fmt, ...)         -> string
  struct.unpack(fmt, s[, pos])  -> values..., next position
fmt: "<" (little endian, the only order supported), "B" (1 byte), "I<n>" (n-byte unsigned);
values are non-negative integers below 2^53.
]]

local struct = {}

local function sizes(fmt)
  local out = {}
  for kind, n in string.gmatch(fmt, '([BI])(%d*)') do
    out[#out + 1] = kind == 'B' and 1 or tonumber(n)
  end
  return out
end

function struct.pack(fmt, ...)
  local args, out = {...}, {}
  for i, n in ipairs(sizes(fmt)) do
    local v = args[i]
    for _ = 1, n do
      out[#out + 1] = string.char(v % 256)
      v = math.floor(v / 256)
    end
  end
  return table.concat(out)
end

function struct.unpack(fmt, s, pos)
  pos = pos or 1
  local out = {}
  for _, n in ipairs(sizes(fmt)) do
    local v, mul = 0, 1
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
